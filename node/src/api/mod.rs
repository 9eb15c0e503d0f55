//! The REST API: routes, JSON shapes, and the one place where service errors become HTTP.

mod auth;
mod channels;
mod conversations;
mod dlq;
mod events;
mod groups;
mod messages;
mod ops;
mod payload;
mod records;
mod topics;
mod trace;
mod users;
mod webhooks;

pub use topics::{assign_replicas, is_legal_name};
pub use users::rfc3339;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde_json::{Value, json};

use crate::config::LogApiAuth;
use crate::error::ServiceError;
use crate::service::Service;

/// Shared state of every handler.
pub type AppState = Arc<Service>;

/// The whole HTTP surface, in one place.
pub fn router(service: Arc<Service>) -> Router {
    let body_limit = service.limits().max_request_bytes;
    // The log API: open, or for `admin` tokens only (`[auth] log_api`).
    let log = Router::new()
        .route(
            "/v1/topics",
            post(topics::post_topic).get(topics::list_topics),
        )
        .route("/v1/topics/{name}", get(topics::get_topic))
        .route("/v1/topics/{name}/records", post(records::post_records))
        .route(
            "/v1/topics/{name}/partitions/{partition}/records",
            get(records::get_records),
        )
        .route("/v1/producers", post(records::post_producer))
        .route("/v1/groups", get(groups::list_groups))
        .route(
            "/v1/groups/{group}",
            get(groups::get_group).delete(groups::delete_group),
        )
        .route("/v1/groups/{group}/heartbeat", post(groups::post_heartbeat))
        .route(
            "/v1/groups/{group}/members/{member_id}",
            delete(groups::delete_member),
        )
        .route(
            "/v1/groups/{group}/offsets",
            post(groups::post_offsets).get(groups::get_offsets),
        )
        .route("/v1/groups/{group}/config", put(groups::put_config));
    let log = match service.auth().log_api() {
        LogApiAuth::Open => log,
        LogApiAuth::Token => log.route_layer(axum::middleware::from_fn_with_state(
            service.clone(),
            require_admin,
        )),
    };
    Router::new()
        .route("/health", get(ops::get_health))
        .route("/ready", get(ops::get_ready))
        .route("/metrics", get(ops::get_metrics))
        .route("/v1/openapi.json", get(openapi))
        .merge(log)
        .route("/v1/auth/token", post(auth::post_token))
        .route("/v1/users", post(users::post_user).get(users::list_users))
        .route("/v1/users/{id}", get(users::get_user))
        .route("/v1/users/{id}/identities", post(users::post_identity))
        .route(
            "/v1/users/{id}/identities/{platform}/{platform_user_id}",
            delete(users::delete_identity),
        )
        .route("/v1/identities/resolve", get(users::resolve_identity))
        .route("/v1/audit", get(users::get_audit))
        .route("/v1/api-keys", post(users::post_api_key))
        .route("/v1/api-keys/{id}", delete(users::delete_api_key))
        .route(
            "/v1/conversations",
            post(conversations::post_conversation).get(conversations::list_conversations),
        )
        .route(
            "/v1/conversations/{id}",
            get(conversations::get_conversation),
        )
        .route(
            "/v1/conversations/{id}/participants",
            post(conversations::post_participant),
        )
        .route(
            "/v1/conversations/{id}/participants/{user_id}",
            delete(conversations::delete_participant),
        )
        .route(
            "/v1/conversations/{id}/messages",
            post(messages::post_conversation_message).get(messages::get_history),
        )
        .route("/v1/messages", post(messages::post_message))
        .route("/v1/messages/{id}", get(messages::get_message))
        .route("/v1/messages/{id}/status", get(messages::get_status))
        .route("/v1/messages/{id}/receipts", post(messages::post_receipt))
        .route("/api/messages", post(messages::post_legacy_message))
        .route("/v1/events", get(events::get_events))
        .route("/v1/ws", get(events::get_ws))
        .route(
            "/v1/channels",
            post(channels::post_channel).get(channels::list_channels),
        )
        .route(
            "/v1/channels/{name}",
            get(channels::get_channel).delete(channels::delete_channel),
        )
        .route("/v1/dlq", get(dlq::list_dlq))
        .route("/v1/dlq/{id}/redrive", post(dlq::post_redrive))
        .route(
            "/v1/webhooks/{platform}/{channel}",
            get(webhooks::get_webhook).post(webhooks::post_webhook),
        )
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(trace::with_trace_id))
        .with_state(service)
}

/// Lets a request through only with credentials holding the `admin` scope.
async fn require_admin(
    axum::extract::State(svc): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    use axum::extract::FromRequestParts;
    let (mut parts, body) = req.into_parts();
    let caller = crate::auth::Caller::from_request_parts(&mut parts, &svc).await?;
    caller.require(crate::auth::ADMIN)?;
    Ok(next
        .run(axum::extract::Request::from_parts(parts, body))
        .await)
}

/// The OpenAPI document of every route below (`openapi.json`, kept in step with the router
/// by the test `the_openapi_document_describes_every_route`).
const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> impl IntoResponse {
    ([("content-type", "application/json")], OPENAPI)
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "no such route; see the README for the API",
    )
}

/// An HTTP error: `{"error":{"code","message","details"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: String,
    message: String,
    details: Vec<Value>,
    headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// An error with a status, a stable code and a message.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// A 400 with `code`.
    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// Adds a response header (`Retry-After`, `WWW-Authenticate`).
    pub fn with_header(mut self, name: &'static str, value: &str) -> ApiError {
        self.headers.push((name, value.to_string()));
        self
    }

    /// The stable error code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// Adds a detail object.
    pub fn with_detail(mut self, detail: Value) -> ApiError {
        self.details.push(detail);
        self
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> ApiError {
        let status = match &e {
            ServiceError::Invalid { .. } | ServiceError::UnknownProducer(_) => {
                StatusCode::BAD_REQUEST
            }
            ServiceError::RecordTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServiceError::UnknownTopic(_)
            | ServiceError::UnknownPartition { .. }
            | ServiceError::UnknownGroup(_) => StatusCode::NOT_FOUND,
            ServiceError::TopicExists(_)
            | ServiceError::OutOfOrderSequence { .. }
            | ServiceError::Fenced { .. }
            | ServiceError::MemberFenced(_)
            | ServiceError::GroupNotEmpty(_) => StatusCode::CONFLICT,
            ServiceError::InternalTopic(_) => StatusCode::FORBIDDEN,
            ServiceError::OffsetOutOfRange { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ServiceError::Unavailable(_)
            | ServiceError::OutcomeUnknown(_)
            | ServiceError::NotLeader(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut err = ApiError::new(status, e.code(), e.to_string());
        match e {
            ServiceError::OffsetOutOfRange {
                log_start_offset,
                high_watermark,
                ..
            } => {
                err = err.with_detail(
                    json!({"log_start_offset": log_start_offset, "high_watermark": high_watermark}),
                );
            }
            ServiceError::OutOfOrderSequence { expected, .. } => {
                err = err.with_detail(json!({"expected_sequence": expected}))
            }
            ServiceError::Fenced { current, .. } => {
                err = err.with_detail(json!({"current_epoch": current}))
            }
            ServiceError::RecordTooLarge { index, limit, .. } => {
                err = err.with_detail(json!({"record": index, "max_record_bytes": limit}));
            }
            _ => {}
        }
        err
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = %self.code, "{}", self.message);
        }
        let mut body = json!({"error": {"code": self.code, "message": self.message}});
        if !self.details.is_empty() {
            body["error"]["details"] = Value::Array(self.details);
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        for (name, value) in self.headers {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, v);
            }
        }
        response
    }
}

/// `?limit=`: `default` when absent, else an integer in `1..=max` (400 `INVALID_LIMIT`).
pub fn query_limit(
    q: &std::collections::HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match q.get("limit") {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "INVALID_LIMIT",
                format!("`limit` must be an integer from 1 to {max}"),
            )),
        },
    }
}

/// Parses a JSON body, answering `INVALID_JSON` or `REQUEST_TOO_LARGE` as a user can act on.
pub fn parse_json(
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Value, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST_TOO_LARGE",
                format!("request body too large: {e}"),
            )
        } else {
            ApiError::bad_request("INVALID_BODY", e.to_string())
        }
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("INVALID_JSON", format!("body is not valid JSON: {e}"))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "INVALID_JSON",
            "body must be a JSON object",
        ));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::OPENAPI;

    /// `(path, method)` of every `.route(...)` in this file's router.
    fn routes() -> Vec<(String, String)> {
        let src = include_str!("mod.rs");
        let start = src.find("pub fn router(").expect("router fn");
        let end = src[start..].find("\n}\n").expect("router end") + start;
        let mut out = Vec::new();
        for chunk in src[start..end].split(".route(").skip(1) {
            let path = chunk.split('"').nth(1).expect("a quoted path").to_string();
            for m in ["get", "post", "put", "delete"] {
                let called = chunk.match_indices(&format!("{m}(")).any(|(i, _)| {
                    i == 0
                        || !chunk.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && chunk.as_bytes()[i - 1] != b'_'
                });
                if called {
                    out.push((path.clone(), m.to_string()));
                }
            }
        }
        out
    }

    #[test]
    fn the_openapi_document_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        let routes = routes();
        assert!(routes.len() > 40, "router parse found only {routes:?}");
        for (path, method) in &routes {
            assert!(
                doc["paths"][path][method].is_object(),
                "{method} {path} is routed but not in openapi.json"
            );
        }
        // And nothing described that is not routed.
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("ops").keys() {
                assert!(
                    routes.iter().any(|(p, m)| p == path && m == method),
                    "{method} {path} is in openapi.json but not routed"
                );
            }
        }
    }
}
