//! Messages: send (also through the first Chat4All's `POST /api/messages`), history, status,
//! and receipts.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat4all_raft::sm::chat::{
    ChatCommand, ChatResponse, HistoryPage, MessageState, MessageStatus,
};
use chat4all_storage::StoredRecord;
use serde_json::{Value, json};

use super::conversations::{bad, conversation_not_found, refusal, visible_conversation};
use super::{ApiError, AppState, parse_json, query_limit, rfc3339};
use crate::auth::Caller;
use crate::chat::{
    CONTENT_TYPES, MAX_CONTENT_CHARS, MAX_FILE_IDS, MessageContent, event, is_valid_id,
    message_event, message_json, set_status, status_json,
};
use crate::error::ServiceError;
use crate::retention::now_ms;
use crate::service::Service;
use crate::service::chat::{ChatOp, ChatReply};

/// The fields of a send request, whichever spelling it came in.
struct SendRequest {
    message_id: Option<String>,
    conversation_id: Option<String>,
    content: MessageContent,
}

/// Reads a send body; `legacy` also accepts the first Chat4All's camelCase names.
fn parse_send(body: &Value, legacy: bool) -> Result<SendRequest, ApiError> {
    let field = |snake: &str, camel: &str| -> Option<&Value> {
        body.get(snake)
            .or_else(|| legacy.then(|| body.get(camel)).flatten())
            .filter(|v| !v.is_null())
    };
    let string = |snake: &str, camel: &str| -> Result<Option<String>, ApiError> {
        match field(snake, camel) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad("INVALID_FIELD", format!("`{snake}` must be a string"))),
        }
    };
    let message_id = string("message_id", "messageId")?;
    if let Some(id) = &message_id
        && !is_valid_id(id)
    {
        return Err(bad(
            "INVALID_MESSAGE_ID",
            "`message_id` must be 1 to 128 letters, digits or `-_.:` (a UUID is best)",
        ));
    }
    let conversation_id = string("conversation_id", "conversationId")?;
    let content_type = string("content_type", "contentType")?
        .unwrap_or_else(|| "TEXT".into())
        .to_ascii_uppercase();
    if !CONTENT_TYPES.contains(&content_type.as_str()) {
        return Err(bad(
            "INVALID_CONTENT_TYPE",
            format!(
                "unknown content_type `{content_type}`; use one of {}",
                CONTENT_TYPES.join(", ")
            ),
        ));
    }
    let content = string("content", "content")?.unwrap_or_default();
    let chars = content.chars().count();
    if chars > MAX_CONTENT_CHARS {
        return Err(bad(
            "CONTENT_TOO_LONG",
            format!("content has {chars} characters; at most {MAX_CONTENT_CHARS} are allowed"),
        )
        .with_detail(json!({"max_chars": MAX_CONTENT_CHARS, "chars": chars})));
    }
    let file_ids: Vec<String> = match field("file_ids", "fileIds") {
        None => Vec::new(),
        Some(Value::Array(a)) if a.len() <= MAX_FILE_IDS => {
            let ids: Option<Vec<String>> = a
                .iter()
                .map(|v| v.as_str().filter(|s| is_valid_id(s)).map(String::from))
                .collect();
            ids.ok_or_else(|| bad("INVALID_FILE_IDS", "`file_ids` must hold file ids"))?
        }
        Some(_) => {
            return Err(bad(
                "INVALID_FILE_IDS",
                format!("`file_ids` must be a list of at most {MAX_FILE_IDS} file ids"),
            ));
        }
    };
    if content_type == "TEXT" && content.trim().is_empty() {
        return Err(bad(
            "INVALID_CONTENT",
            "a TEXT message needs non-empty `content`",
        ));
    }
    if content.is_empty() && file_ids.is_empty() {
        return Err(bad(
            "INVALID_CONTENT",
            "a message needs `content` or `file_ids`",
        ));
    }
    let channel = match string("channel", "channel")? {
        None => None,
        Some(c) => {
            Some(crate::chat::parse_channel(&c, true).map_err(|m| bad("INVALID_CHANNEL", m))?)
        }
    };
    let metadata = match field("metadata", "metadata") {
        None => Value::Null,
        Some(m @ Value::Object(_)) if m.to_string().len() <= 16 * 1024 => m.clone(),
        Some(_) => {
            return Err(bad(
                "INVALID_METADATA",
                "`metadata` must be an object of at most 16 KiB",
            ));
        }
    };
    Ok(SendRequest {
        message_id,
        conversation_id,
        content: MessageContent {
            content,
            content_type,
            file_ids,
            channel,
            metadata,
        },
    })
}

/// A send's outcome.
struct Sent {
    /// The message as stored.
    state: MessageState,
    /// Whether it was stored before (a repeated `message_id`): then nothing was written.
    duplicate: bool,
    /// Its `chat.messages` partition.
    partition: u32,
}

impl Sent {
    /// 202 for a new message, 200 for a repeat, with `body`.
    fn answer(&self, body: Value) -> Response {
        let status = if self.duplicate {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Sends; answers the stored message, whether it was a repeat, and where it is.
async fn send(svc: &Service, caller: &Caller, req: SendRequest) -> Result<Sent, ApiError> {
    caller.require("messages:write")?;
    let Some(conversation_id) = req.conversation_id else {
        return Err(bad("INVALID_FIELD", "`conversation_id` is required"));
    };
    if !is_valid_id(&conversation_id) {
        return Err(conversation_not_found(&conversation_id));
    }
    let message_id = req
        .message_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let at = now_ms();
    let record = event(
        &conversation_id,
        at,
        &message_event(
            &message_id,
            &conversation_id,
            &caller.user_id,
            at,
            &req.content,
        ),
    );
    let cmd = ChatCommand::Send {
        message_id,
        conversation_id: conversation_id.clone(),
        sender_id: caller.user_id.clone(),
        at_ms: at,
        status: MessageStatus::Pending,
        record,
    };
    let partition = svc.chat_partition(&conversation_id).await?;
    match svc.chat_write_to(partition, cmd).await? {
        ChatResponse::Message { state, duplicate } => {
            if !duplicate {
                svc.metrics().chat_messages_accepted.inc();
            }
            Ok(Sent {
                state,
                duplicate,
                partition,
            })
        }
        other => Err(refusal(other, &conversation_id)),
    }
}

/// The answer of `/v1` sends.
fn accepted(sent: &Sent) -> Response {
    let m = &sent.state;
    sent.answer(json!({
        "message_id": m.message_id,
        "conversation_id": m.conversation_id,
        "status": m.status,
        "partition": sent.partition,
        "offset": m.offset,
        "timestamp": rfc3339(m.timestamp_ms),
        "status_url": format!("/v1/messages/{}/status", m.message_id),
    }))
}

/// `POST /v1/messages`.
pub async fn post_message(
    State(svc): State<AppState>,
    caller: Caller,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let req = parse_send(&parse_json(body)?, false)?;
    Ok(accepted(&send(&svc, &caller, req).await?))
}

/// `POST /v1/conversations/{id}/messages`.
pub async fn post_conversation_message(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let mut req = parse_send(&parse_json(body)?, false)?;
    match &req.conversation_id {
        Some(c) if *c != id => {
            return Err(bad(
                "INVALID_FIELD",
                "`conversation_id` in the body differs from the one in the path",
            ));
        }
        _ => req.conversation_id = Some(id),
    }
    Ok(accepted(&send(&svc, &caller, req).await?))
}

/// `POST /api/messages`: the first Chat4All's send, snake_case or camelCase; the sender is
/// the token's user (a `sender_id`/`senderId` in the body is ignored). Answers in its shape.
pub async fn post_legacy_message(
    State(svc): State<AppState>,
    caller: Caller,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let req = parse_send(&parse_json(body)?, true)?;
    let sent = send(&svc, &caller, req).await?;
    let m = &sent.state;
    Ok(sent.answer(json!({
        "messageId": m.message_id,
        "conversationId": m.conversation_id,
        "status": m.status,
        "acceptedAt": rfc3339(m.timestamp_ms),
        "statusUrl": format!("/v1/messages/{}/status", m.message_id),
    })))
}

/// `GET /v1/conversations/{id}/messages?before=&after=&limit=`: newest first below `before`
/// (the default), or oldest first above `after`; `next_cursor` continues in the same
/// direction. A participant sees the messages sent after they joined.
pub async fn get_history(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("messages:read")?;
    let offset = |name: &str| -> Result<Option<u64>, ApiError> {
        q.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    bad(
                        "INVALID_CURSOR",
                        format!("`{name}` must be a `next_cursor` value"),
                    )
                })
            })
            .transpose()
    };
    let (before, after) = (offset("before")?, offset("after")?);
    let page = match (before, after) {
        (Some(_), Some(_)) => {
            return Err(bad("INVALID_CURSOR", "give `before` or `after`, not both"));
        }
        (_, Some(a)) => HistoryPage::After(a),
        (b, None) => HistoryPage::Before(b),
    };
    let limit = query_limit(&q, 50, 200)?;
    let c = visible_conversation(&svc, &caller, &id).await?;
    let floor = c
        .participant(&caller.user_id)
        .map(|p| p.joined_offset)
        .unwrap_or(0);
    let op = ChatOp::History {
        conversation: id.clone(),
        page,
        floor,
        limit,
    };
    let items = match svc.chat_read(&id, op).await? {
        ChatReply::History(items) => items,
        other => {
            return Err(ServiceError::Internal(format!("history answered {other:?}")).into());
        }
    };
    let next = (items.len() == limit)
        .then(|| items.last().map(|(m, _)| m.offset.to_string()))
        .flatten();
    Ok(axum::Json(json!({
        "conversation_id": id,
        "messages": items.iter().map(|(m, r)| message_json(m, r.as_ref())).collect::<Vec<_>>(),
        "next_cursor": next,
    }))
    .into_response())
}

/// Finds a message by id: in the partition of `conversation_id` when given, else in every
/// chat partition (a message id does not say where it lives). 404 if absent, 403 if the
/// caller is neither a participant of its conversation nor an admin.
async fn find_message(
    svc: &Service,
    caller: &Caller,
    id: &str,
    conversation_id: Option<&String>,
) -> Result<(MessageState, Option<StoredRecord>), ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "MESSAGE_NOT_FOUND",
            format!("no message with id `{id}`"),
        )
    };
    if !is_valid_id(id) {
        return Err(not_found());
    }
    let op = ChatOp::Message(id.to_string());
    let replies = match conversation_id {
        Some(c) if is_valid_id(c) => vec![svc.chat_read(c, op).await?],
        _ => svc.chat_read_all(op).await?,
    };
    let found = replies.into_iter().find_map(|r| match r {
        ChatReply::Message(m) => m,
        _ => None,
    });
    let (m, r) = found.ok_or_else(not_found)?;
    visible_conversation(svc, caller, &m.conversation_id).await?;
    Ok((m, r))
}

/// `GET /v1/messages/{id}`.
pub async fn get_message(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("messages:read")?;
    let (m, r) = find_message(&svc, &caller, &id, q.get("conversation_id")).await?;
    let mut v = message_json(&m, r.as_ref());
    v["status_history"] = status_json(&m)["status_history"].clone();
    Ok(axum::Json(v).into_response())
}

/// `GET /v1/messages/{id}/status`.
pub async fn get_status(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("messages:read")?;
    let (m, _) = find_message(&svc, &caller, &id, q.get("conversation_id")).await?;
    Ok(axum::Json(status_json(&m)).into_response())
}

/// `POST /v1/messages/{id}/receipts` `{"status":"DELIVERED"|"READ"}`: a recipient reports.
/// A report that would move the status backwards changes nothing and answers the current one.
pub async fn post_receipt(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require("messages:read")?;
    let body = parse_json(body)?;
    let status = match body.get("status").and_then(Value::as_str) {
        Some("DELIVERED") => MessageStatus::Delivered,
        Some("READ") => MessageStatus::Read,
        _ => {
            return Err(bad(
                "INVALID_STATUS",
                "`status` is required: DELIVERED or READ",
            ));
        }
    };
    let (m, _) = find_message(&svc, &caller, &id, q.get("conversation_id")).await?;
    // An administrator is not a recipient; receipts always name who reports.
    let cmd = set_status(
        &m.message_id,
        &m.conversation_id,
        status,
        Some(&caller.user_id),
        now_ms(),
    );
    match svc.chat_write(&m.conversation_id, cmd).await? {
        ChatResponse::Status { state, .. } => Ok(axum::Json(status_json(&state)).into_response()),
        other => Err(refusal(other, &m.conversation_id)),
    }
}
