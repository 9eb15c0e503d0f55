//! The fake Graph APIs of WhatsApp (`/{version}/{phone_number_id}`) and Instagram
//! (`/{version}/{ig_id}`): the account read and `POST …/messages`, with Graph's error envelope.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::server::{Shared, random_token};
use super::{
    FakeFailure, FakeSent, INSTAGRAM_ACCESS_TOKEN, INSTAGRAM_ID, WHATSAPP_ACCESS_TOKEN,
    WHATSAPP_PHONE_NUMBER_ID,
};
use crate::Platform;

/// The routes, for `shared.platform` (WhatsApp or Instagram).
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{version}/{id}", get(read_object))
        .route("/{version}/{id}/messages", post(send))
        .with_state(shared)
}

/// A Graph error: `{"error":{"message","type","code",["error_subcode"],"fbtrace_id"}}`.
#[derive(Debug)]
struct GraphError {
    status: StatusCode,
    code: i64,
    subcode: Option<i64>,
    message: String,
}

impl GraphError {
    fn new(status: StatusCode, code: i64, subcode: Option<i64>, message: &str) -> GraphError {
        GraphError {
            status,
            code,
            subcode,
            message: message.to_owned(),
        }
    }

    /// Code 100 "invalid parameter", the answer to every malformed send.
    fn invalid(message: &str) -> GraphError {
        GraphError::new(StatusCode::BAD_REQUEST, 100, None, message)
    }
}

impl IntoResponse for GraphError {
    fn into_response(self) -> Response {
        let kind = if self.code == 100 && self.subcode == Some(33) {
            "GraphMethodException"
        } else {
            "OAuthException"
        };
        let mut error = json!({
            "message": self.message,
            "type": kind,
            "code": self.code,
            "fbtrace_id": random_token(27),
        });
        if let Some(sub) = self.subcode {
            error["error_subcode"] = json!(sub);
        }
        (self.status, axum::Json(json!({ "error": error }))).into_response()
    }
}

/// Checks the Bearer token and the object id; `Err` is the answer Graph gives otherwise.
fn check_access(
    shared: &Shared,
    headers: &HeaderMap,
    version: &str,
    id: &str,
) -> Result<(), GraphError> {
    let (token, object) = match shared.platform {
        Platform::Instagram => (INSTAGRAM_ACCESS_TOKEN, INSTAGRAM_ID),
        _ => (WHATSAPP_ACCESS_TOKEN, WHATSAPP_PHONE_NUMBER_ID),
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(token) {
        return Err(GraphError::new(
            StatusCode::UNAUTHORIZED,
            190,
            None,
            "Invalid OAuth access token - Cannot parse access token",
        ));
    }
    if !version.starts_with('v') {
        return Err(GraphError::invalid(&format!(
            "Unknown path components: /{version}"
        )));
    }
    let me = shared.platform == Platform::Instagram && id == "me";
    if id != object && !me {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            100,
            Some(33),
            &format!(
                "Unsupported request. Object with ID '{id}' does not exist, cannot be loaded due \
                 to missing permissions, or does not support this operation. Please read the \
                 Graph API documentation at https://developers.facebook.com/docs/graph-api"
            ),
        ));
    }
    Ok(())
}

/// `GET /{version}/{id}?fields=…`: the phone number or the Instagram account, with the asked
/// fields (and `id`, which Graph always adds).
async fn read_object(
    State(shared): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(answer) = check_access(&shared, &headers, &version, &id) {
        return answer.into_response();
    }
    let full = match shared.platform {
        Platform::Instagram => json!({
            "id": INSTAGRAM_ID, "user_id": INSTAGRAM_ID, "username": "chat4all_test",
            "name": "Chat4All Test", "account_type": "Business",
        }),
        _ => json!({
            "id": WHATSAPP_PHONE_NUMBER_ID, "verified_name": "Chat4All Test",
            "display_phone_number": "+1 555-078-3881", "quality_rating": "GREEN",
        }),
    };
    let Some(fields) = query.get("fields") else {
        return axum::Json(full).into_response();
    };
    let mut out = Map::new();
    for field in fields.split(',').map(str::trim).chain(["id"]) {
        if let Some(v) = full.get(field) {
            out.insert(field.to_owned(), v.clone());
        }
    }
    axum::Json(Value::Object(out)).into_response()
}

/// The answer to a scripted failure, if it is one that answers at once.
fn scripted(platform: Platform, failure: &FakeFailure) -> Option<Response> {
    match failure {
        FakeFailure::RateLimited { retry_after_s } => {
            let (code, subcode, message) = match platform {
                Platform::Instagram => (4, Some(2_018_022), "(#4) Too many send requests to users"),
                _ => (130_429, None, "(#130429) Rate limit hit"),
            };
            let mut answer = GraphError::new(StatusCode::TOO_MANY_REQUESTS, code, subcode, message)
                .into_response();
            answer.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(*retry_after_s),
            );
            Some(answer)
        }
        // WhatsApp's own "something went wrong"; Instagram's 500s seen through a proxy carry
        // no Graph envelope. Either way the send may have gone out.
        FakeFailure::ServerError => Some(match platform {
            Platform::Instagram => (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/html")],
                "<html><body><h1>500 Internal Server Error</h1></body></html>",
            )
                .into_response(),
            _ => GraphError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                131_000,
                None,
                "Something went wrong",
            )
            .into_response(),
        }),
        FakeFailure::Reject { code } => {
            let (status, message) = match code {
                0 | 190 => (StatusCode::UNAUTHORIZED, "Invalid OAuth access token"),
                1 => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "An unknown error occurred",
                ),
                2 => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "An unexpected error has occurred. Please retry your request later.",
                ),
                131_000 => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong"),
                1200 => (
                    StatusCode::BAD_REQUEST,
                    "Temporary send message failure. Please try again later.",
                ),
                10 => (
                    StatusCode::BAD_REQUEST,
                    "This message is sent outside of allowed window.",
                ),
                131_047 => (StatusCode::BAD_REQUEST, "Re-engagement message"),
                131_026 => (StatusCode::BAD_REQUEST, "Message Undeliverable"),
                131_051 => (StatusCode::BAD_REQUEST, "Unsupported message type"),
                551 => (
                    StatusCode::BAD_REQUEST,
                    "This person isn't available right now.",
                ),
                _ => (StatusCode::BAD_REQUEST, "Invalid parameter"),
            };
            Some(
                GraphError::new(status, *code, None, &format!("(#{code}) {message}"))
                    .into_response(),
            )
        }
        FakeFailure::AcceptThenDrop => None,
    }
}

/// `POST /{version}/{id}/messages`.
async fn send(
    State(shared): State<Arc<Shared>>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.count_request();
    if let Err(answer) = check_access(&shared, &headers, &version, &id) {
        return answer.into_response();
    }
    let failure = shared.next_failure();
    if let Some(answer) = failure.as_ref().and_then(|f| scripted(shared.platform, f)) {
        return answer.into_response();
    }
    let Ok(params) = serde_json::from_slice::<Value>(&body) else {
        return GraphError::invalid("(#100) Invalid parameter").into_response();
    };
    let accepted = match shared.platform {
        Platform::Instagram => instagram_send(&shared, &params),
        _ => whatsapp_send(&shared, &params),
    };
    let (sent, answer) = match accepted {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal.into_response(),
    };
    shared.record(sent);
    if failure == Some(FakeFailure::AcceptThenDrop) {
        return shared.hold().await;
    }
    axum::Json(answer).into_response()
}

/// Validates a WhatsApp text send; the send to record and the answer.
fn whatsapp_send(shared: &Shared, p: &Value) -> Result<(FakeSent, Value), GraphError> {
    let str_at = |path: &str| p.pointer(path).and_then(Value::as_str);
    match str_at("/messaging_product") {
        Some("whatsapp") => {}
        None => {
            return Err(GraphError::invalid(
                "(#100) The parameter messaging_product is required.",
            ));
        }
        Some(other) => {
            return Err(GraphError::invalid(&format!(
                "(#100) Param messaging_product must be one of {{WHATSAPP}} - got \"{other}\"."
            )));
        }
    }
    let to = str_at("/to").unwrap_or("");
    if to.is_empty() || to.len() > 15 || !to.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GraphError::invalid(
            "(#100) Invalid parameter: to must be a phone number in digits",
        ));
    }
    // A template is recorded as `template:<name>:<language>:<parameters joined by |>`.
    let text = match str_at("/type").unwrap_or("text") {
        "text" => {
            let text = str_at("/text/body").unwrap_or("");
            if text.is_empty() {
                return Err(GraphError::invalid(
                    "(#100) The parameter text['body'] is required.",
                ));
            }
            if text.chars().count() > crate::whatsapp::MAX_CHARS {
                return Err(GraphError::invalid(
                    "(#100) Param text['body'] must be at most 4096 characters long.",
                ));
            }
            text.to_owned()
        }
        "template" => {
            let (Some(name), Some(lang)) =
                (str_at("/template/name"), str_at("/template/language/code"))
            else {
                return Err(GraphError::invalid(
                    "(#100) The parameters template['name'] and template['language'] are required.",
                ));
            };
            let params: Vec<&str> = p
                .pointer("/template/components/0/parameters")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x["text"].as_str()).collect())
                .unwrap_or_default();
            format!("template:{name}:{lang}:{}", params.join("|"))
        }
        _ => {
            return Err(GraphError::invalid(
                "(#100) The fake takes only types \"text\" and \"template\"",
            ));
        }
    };
    let callback_data = match p.get("biz_opaque_callback_data") {
        None => None,
        Some(Value::String(s)) if s.len() <= 512 => Some(s.clone()),
        Some(_) => {
            return Err(GraphError::invalid(
                "(#100) Param biz_opaque_callback_data must be a string of at most 512 bytes.",
            ));
        }
    };
    let wamid = format!(
        "wamid.HBgL{}{:08X}{}",
        to,
        shared.next_id(),
        random_token(12).to_uppercase()
    );
    let answer = json!({
        "messaging_product": "whatsapp",
        "contacts": [{ "input": to, "wa_id": to }],
        "messages": [{ "id": wamid }],
    });
    let sent = FakeSent {
        to: to.to_owned(),
        text,
        callback_data,
        remote_id: wamid,
        body: p.clone(),
    };
    Ok((sent, answer))
}

/// Validates an Instagram text send; the send to record and the answer.
fn instagram_send(shared: &Shared, p: &Value) -> Result<(FakeSent, Value), GraphError> {
    let to = p
        .pointer("/recipient/id")
        .and_then(Value::as_str)
        .unwrap_or("");
    if to.is_empty() || !to.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GraphError::new(
            StatusCode::BAD_REQUEST,
            100,
            Some(2_018_001),
            "(#100) No matching user found",
        ));
    }
    let text = p
        .pointer("/message/text")
        .and_then(Value::as_str)
        .unwrap_or("");
    if text.is_empty() {
        return Err(GraphError::invalid(
            "(#100) Param message must contain text or an attachment",
        ));
    }
    if text.len() > crate::instagram::MAX_BYTES {
        return Err(GraphError::invalid(
            "(#100) Length of param message[text] must be less than or equal to 1000",
        ));
    }
    let mid = format!(
        "aWdfZAG1faXRlbToxOklH{:08x}{}",
        shared.next_id(),
        random_token(16)
    );
    let answer = json!({ "recipient_id": to, "message_id": mid });
    let sent = FakeSent {
        to: to.to_owned(),
        text: text.to_owned(),
        callback_data: None,
        remote_id: mid,
        body: p.clone(),
    };
    Ok((sent, answer))
}
