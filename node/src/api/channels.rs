//! `/v1/channels` (admin only): configure a platform channel, with its credentials checked
//! against the platform first; and `/v1/dlq`: deliveries whose last attempt failed, listed and
//! redriven.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat4all_connectors::{ConnectorError, Platform};
use chat4all_raft::sm::directory::{Channel, DirectoryCommand, DirectoryResponse};
use serde_json::{Value, json};

use super::{ApiError, AppState, parse_json, rfc3339};
use crate::auth::{ADMIN, Caller};
use crate::channels::{is_valid_channel_name, settings, to_directory};
use crate::retention::now_ms;

pub(super) fn channel_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CHANNEL_NOT_FOUND",
        format!("no channel named `{name}`"),
    )
}

/// A channel as the API shows it: never its secrets, only which fields are set.
pub(super) fn channel_json(c: &Channel) -> Value {
    let platform = crate::channels::from_directory(c.platform);
    json!({
        "name": c.name,
        "platform": platform.as_str(),
        "credentials": c.credentials.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        "webhook_secret_set": c.webhook_secret.is_some(),
        "verify_token_set": c.verify_token.is_some(),
        "agents": c.agents,
        "template": c.template,
        "account": {"id": c.account_id, "name": c.account_name},
        "webhook_path": format!("/v1/webhooks/{}/{}", platform.as_str().to_lowercase(), c.name),
        "created_at": rfc3339(c.created_at_ms),
        "created_by": c.created_by,
    })
}

fn bad(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

fn opt_secret(body: &Value, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 4096 => Ok(Some(s.clone())),
        Some(_) => Err(bad(
            "INVALID_FIELD",
            format!("`{field}` must be a non-empty string (a value, `env:NAME` or `file:PATH`)"),
        )),
    }
}

/// Telegram's `secret_token`: 1-256 of `A-Z a-z 0-9 _ -` (references are checked once
/// resolved).
fn check_telegram_secret(s: &str) -> Result<(), ApiError> {
    let ok = s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(bad(
            "INVALID_WEBHOOK_SECRET",
            "a Telegram webhook secret is 1 to 256 of A-Z, a-z, 0-9, _ and -",
        ))
    }
}

/// What the platform said about the credentials, as an API error.
fn verify_error(e: ConnectorError) -> ApiError {
    match e {
        ConnectorError::Config(m) => bad("CHANNEL_CONFIG", m),
        ConnectorError::Unauthorized(_) | ConnectorError::Rejected { .. } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "CREDENTIALS_REJECTED",
            format!("the platform refused the credentials: {e}"),
        ),
        other => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "PLATFORM_UNAVAILABLE",
            format!("the platform could not check the credentials: {other}"),
        ),
    }
}

/// `POST /v1/channels` `{"platform","name","credentials":{..},"webhook_secret"?,
/// "verify_token"?,"agents"?,"template"?}` → 201.
pub async fn post_channel(
    State(svc): State<AppState>,
    caller: Caller,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(ADMIN)?;
    let body = parse_json(body)?;
    let platform = body
        .get("platform")
        .and_then(Value::as_str)
        .and_then(Platform::parse)
        .ok_or_else(|| {
            bad(
                "INVALID_PLATFORM",
                "`platform` is required: TELEGRAM, WHATSAPP or INSTAGRAM",
            )
        })?;
    let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
    if !is_valid_channel_name(name) {
        return Err(bad(
            "INVALID_CHANNEL_NAME",
            "`name` is required: 1 to 64 of a-z, 0-9, _ and -",
        ));
    }
    let Some(creds) = body.get("credentials").and_then(Value::as_object) else {
        return Err(bad(
            "MISSING_CREDENTIAL",
            format!(
                "`credentials` is required: an object with {}",
                platform.required_credentials().join(", ")
            ),
        ));
    };
    let mut credentials = BTreeMap::new();
    for (k, v) in creds {
        if !platform.required_credentials().contains(&k.as_str()) {
            return Err(bad(
                "UNKNOWN_CREDENTIAL",
                format!(
                    "a {platform} channel takes the credentials {}; `{k}` is not one",
                    platform.required_credentials().join(", ")
                ),
            ));
        }
        match v.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 4096 => {
                credentials.insert(k.clone(), s.to_string());
            }
            _ => {
                return Err(bad(
                    "INVALID_CREDENTIAL",
                    format!("credential `{k}` must be a non-empty string"),
                ));
            }
        }
    }
    if let Some(missing) = platform
        .required_credentials()
        .iter()
        .find(|f| !credentials.contains_key(**f))
    {
        return Err(bad(
            "MISSING_CREDENTIAL",
            format!("a {platform} channel needs the credential `{missing}`"),
        ));
    }
    let webhook_secret = opt_secret(&body, "webhook_secret")?;
    let verify_token = opt_secret(&body, "verify_token")?;
    let template = opt_secret(&body, "template")?;
    let mut agents = Vec::new();
    if let Some(list) = body.get("agents") {
        let ids = list
            .as_array()
            .ok_or_else(|| bad("INVALID_FIELD", "`agents` must be a list of user ids"))?;
        for a in ids {
            let id = a.as_str().unwrap_or_default();
            if svc.user(id).await?.is_none() {
                return Err(bad("UNKNOWN_USER", format!("agent `{id}` is not a user")));
            }
            if !agents.iter().any(|x| x == id) {
                agents.push(id.to_string());
            }
        }
    }
    let credentials: Vec<(String, String)> = credentials.into_iter().collect();
    // Resolve the references on this node and ask the platform whose credentials they are.
    let s = settings(
        svc.channels().config(),
        platform,
        &credentials,
        webhook_secret.as_deref(),
        verify_token.as_deref(),
    )
    .map_err(verify_error)?;
    if platform == Platform::Telegram
        && let Some(secret) = &s.webhook_secret
    {
        check_telegram_secret(secret.expose())?;
    }
    let connector = svc.channels().connector_for(s).map_err(verify_error)?;
    let account = connector.verify().await.map_err(verify_error)?;
    // The topics the channel's work goes through exist before its first message does.
    svc.deliveries_topic().await?;
    svc.dlq_topic().await?;
    svc.inbound_topic().await?;
    let channel = Channel {
        name: name.to_string(),
        platform: to_directory(platform),
        credentials,
        webhook_secret,
        verify_token,
        agents,
        template,
        account_id: account.id,
        account_name: account.name,
        created_at_ms: now_ms(),
        created_by: Some(caller.user_id.clone()),
    };
    tracing::info!(channel = %channel.name, %platform, "channel created");
    match svc
        .directory_write(DirectoryCommand::PutChannel(Box::new(channel)))
        .await?
    {
        DirectoryResponse::Channel(c) => {
            Ok((StatusCode::CREATED, axum::Json(channel_json(&c))).into_response())
        }
        DirectoryResponse::ChannelExists(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "CHANNEL_EXISTS",
            format!("a channel named `{name}` exists; delete it first to change it"),
        )),
        other => Err(ApiError::from(crate::error::ServiceError::Internal(
            format!("directory answered {other:?}"),
        ))),
    }
}

/// `GET /v1/channels`.
pub async fn list_channels(
    State(svc): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    caller.require(ADMIN)?;
    let channels = svc.directory_synced(|d| d.channels()).await?;
    let list: Vec<Value> = channels.iter().map(channel_json).collect();
    Ok(axum::Json(json!({ "channels": list })).into_response())
}

/// `GET /v1/channels/{name}`.
pub async fn get_channel(
    State(svc): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(ADMIN)?;
    match svc.channel_synced(&name).await? {
        Some(c) => Ok(axum::Json(channel_json(&c)).into_response()),
        None => Err(channel_not_found(&name)),
    }
}

/// `DELETE /v1/channels/{name}`: no more deliveries or webhooks through it; its queued work
/// stays in `chat.deliveries` for a channel made again with the same name.
pub async fn delete_channel(
    State(svc): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(ADMIN)?;
    let cmd = DirectoryCommand::DeleteChannel {
        name: name.clone(),
        at_ms: now_ms(),
        actor: Some(caller.user_id.clone()),
    };
    match svc.directory_write(cmd).await? {
        DirectoryResponse::Channel(c) => Ok(axum::Json(channel_json(&c)).into_response()),
        _ => Err(channel_not_found(&name)),
    }
}
