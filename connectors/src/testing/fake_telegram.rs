//! The fake Telegram Bot API: `getMe` and `sendMessage` at `/bot{token}/{method}`, with the
//! real envelope, error codes and descriptions.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use super::server::{Shared, now_s};
use super::{FakeFailure, FakeSent, TELEGRAM_BOT_TOKEN};
use crate::telegram::MAX_CHARS;

/// The routes. Method names are case-insensitive, as on Telegram.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/{bot}/{method}", any(handle))
        .with_state(shared)
}

/// `{"ok":false,…}` with the HTTP status mirroring `error_code`.
fn error(code: u16, description: &str) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    let body = json!({ "ok": false, "error_code": code, "description": description });
    (status, axum::Json(body)).into_response()
}

fn ok(result: Value) -> Response {
    axum::Json(json!({ "ok": true, "result": result })).into_response()
}

/// The bot behind [`TELEGRAM_BOT_TOKEN`]: its id is the token's number.
fn bot_user() -> Value {
    let id: i64 = TELEGRAM_BOT_TOKEN
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    json!({
        "id": id, "is_bot": true, "first_name": "Chat4All Test", "username": "chat4all_test_bot",
        "can_join_groups": true, "can_read_all_group_messages": false,
        "supports_inline_queries": false
    })
}

/// Telegram's token shape `<digits>:<letters, digits, _ and ->`: anything else is not a bot
/// path at all (404), where a well-formed unknown token is 401.
fn well_formed(token: &str) -> bool {
    token.split_once(':').is_some_and(|(id, secret)| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_digit())
            && !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((bot, method)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let method = method.to_ascii_lowercase();
    let is_send = method == "sendmessage";
    if is_send {
        shared.count_request();
    }
    let Some(token) = bot.strip_prefix("bot").filter(|t| well_formed(t)) else {
        return error(404, "Not Found");
    };
    if token != TELEGRAM_BOT_TOKEN {
        return error(401, "Unauthorized");
    }
    match method.as_str() {
        "getme" => ok(bot_user()),
        "sendmessage" => send_message(&shared, &body).await,
        _ => error(404, "Not Found: method not found"),
    }
}

/// The answer to a scripted failure, if it is one that answers at once.
fn scripted(failure: &FakeFailure) -> Option<Response> {
    match failure {
        FakeFailure::RateLimited { retry_after_s } => {
            let body = json!({
                "ok": false, "error_code": 429,
                "description": format!("Too Many Requests: retry after {retry_after_s}"),
                "parameters": { "retry_after": retry_after_s },
            });
            Some((StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response())
        }
        FakeFailure::ServerError => Some(error(500, "Internal Server Error")),
        FakeFailure::Reject { code } => {
            let code = u16::try_from(*code)
                .ok()
                .filter(|c| (400..600).contains(c))
                .unwrap_or(400);
            let description = match code {
                401 => "Unauthorized",
                403 => "Forbidden: bot was blocked by the user",
                404 => "Not Found",
                409 => "Conflict: terminated by other long poll or webhook",
                500..=599 => "Internal Server Error",
                _ => "Bad Request: chat not found",
            };
            Some(error(code, description))
        }
        FakeFailure::AcceptThenDrop => None,
    }
}

/// A stable negative id for a `@channel`, as Telegram resolves one (`-100…`).
fn channel_id(name: &str) -> i64 {
    // FNV-1a, reduced to 10 digits after the `-100` prefix.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let tail = i64::try_from(hash % 10_000_000_000).unwrap_or(0);
    -1_000_000_000_000 - tail
}

async fn send_message(shared: &Shared, body: &[u8]) -> Response {
    let failure = shared.next_failure();
    if let Some(answer) = failure.as_ref().and_then(scripted) {
        return answer;
    }
    let Ok(params) = serde_json::from_slice::<Value>(body) else {
        return error(400, "Bad Request: message text is empty");
    };
    let chat = match params.get("chat_id") {
        Some(Value::Number(n)) => n.as_i64().map(|id| (id, id.to_string(), None)),
        Some(Value::String(s)) => match s.parse::<i64>() {
            Ok(id) => Some((id, s.clone(), None)),
            Err(_) if s.len() > 1 && s.starts_with('@') => {
                Some((channel_id(s), s.clone(), Some(s[1..].to_owned())))
            }
            Err(_) => None,
        },
        None => return error(400, "Bad Request: chat_id is empty"),
        Some(_) => None,
    };
    let Some((chat_id, to, username)) = chat else {
        return error(400, "Bad Request: chat not found");
    };
    let text = params.get("text").and_then(Value::as_str).unwrap_or("");
    // Telegram trims the text before looking at it.
    if text.trim().is_empty() {
        return error(400, "Bad Request: message text is empty");
    }
    if text.chars().count() > MAX_CHARS {
        return error(400, "Bad Request: message is too long");
    }
    let message_id = shared.next_id();
    let remote_id = format!("{chat_id}:{message_id}");
    shared.record(FakeSent {
        to,
        text: text.to_owned(),
        callback_data: None,
        remote_id,
        body: params.clone(),
    });
    if failure == Some(FakeFailure::AcceptThenDrop) {
        return shared.hold().await;
    }
    let chat = match username {
        Some(name) => json!({ "id": chat_id, "type": "channel", "title": name, "username": name }),
        None if chat_id < 0 => json!({ "id": chat_id, "type": "supergroup", "title": "Group" }),
        None => json!({ "id": chat_id, "type": "private", "first_name": "Contact" }),
    };
    ok(json!({
        "message_id": message_id,
        "from": bot_user(),
        "chat": chat,
        "date": now_s(),
        "text": text,
    }))
}
