//! Conversations: create, list the caller's, read one, add and remove participants.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat4all_raft::sm::chat::{
    ChatCommand, ChatResponse, Conversation, ConversationKind, MAX_PARTICIPANTS,
};
use serde_json::{Value, json};

use super::{ApiError, AppState, parse_json, query_limit, rfc3339};
use crate::auth::{self, Caller};
use crate::chat::{
    NewConversation, conversation_json, create_conversation, direct_conversation_id, event,
    is_valid_id,
};
use crate::error::ServiceError;
use crate::retention::now_ms;
use crate::service::Service;
use crate::service::chat::{ChatOp, ChatReply};

pub(super) fn bad(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

pub(super) fn conversation_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "CONVERSATION_NOT_FOUND",
        format!("no conversation with id `{id}`"),
    )
}

pub(super) fn not_participant(what: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "NOT_PARTICIPANT", what.to_string())
}

/// Maps a refusal of the chat state machine to its HTTP error.
pub(super) fn refusal(r: ChatResponse, conversation_id: &str) -> ApiError {
    match r {
        ChatResponse::UnknownConversation => conversation_not_found(conversation_id),
        ChatResponse::NotParticipant => {
            not_participant("the user is not a participant of this conversation")
        }
        ChatResponse::OwnMessage => ApiError::new(
            StatusCode::FORBIDDEN,
            "OWN_MESSAGE",
            "receipts are for recipients; the sender cannot report on their own message",
        ),
        ChatResponse::NotAGroup => bad(
            "NOT_A_GROUP",
            "the participants of a direct conversation cannot change",
        ),
        ChatResponse::TooManyParticipants => bad(
            "TOO_MANY_PARTICIPANTS",
            format!("a group has at most {MAX_PARTICIPANTS} participants"),
        ),
        ChatResponse::UnknownMessage => ApiError::new(
            StatusCode::NOT_FOUND,
            "MESSAGE_NOT_FOUND",
            "no such message",
        ),
        ChatResponse::MessageIdTaken => ApiError::new(
            StatusCode::CONFLICT,
            "MESSAGE_ID_TAKEN",
            "this message_id belongs to a message of another conversation; use a new id",
        ),
        other => ServiceError::Internal(format!("unexpected chat answer {other:?}")).into(),
    }
}

/// A conversation by id, checked: 404 if it does not exist, 403 if the caller is neither a
/// participant nor an admin.
pub(super) async fn visible_conversation(
    svc: &Service,
    caller: &Caller,
    id: &str,
) -> Result<Conversation, ApiError> {
    if !is_valid_id(id) {
        return Err(conversation_not_found(id));
    }
    let c = match svc
        .chat_read(id, ChatOp::Conversation(id.to_string()))
        .await?
    {
        ChatReply::Conversation(Some(c)) => c,
        ChatReply::Conversation(None) => return Err(conversation_not_found(id)),
        other => {
            return Err(
                ServiceError::Internal(format!("conversation read answered {other:?}")).into(),
            );
        }
    };
    if c.participant(&caller.user_id).is_none() && !caller.has(auth::ADMIN) {
        return Err(not_participant(
            "you are not a participant of this conversation",
        ));
    }
    Ok(c)
}

/// 400 `UNKNOWN_USER` unless every id names a user.
async fn check_users(svc: &Service, ids: &[String]) -> Result<(), ApiError> {
    for id in ids {
        let exists = is_valid_id(id) && svc.user(id).await?.is_some();
        if !exists {
            return Err(bad("UNKNOWN_USER", format!("no user with id `{id}`"))
                .with_detail(json!({ "user_id": id })));
        }
    }
    Ok(())
}

fn opt_string(body: &Value, field: &str, max_chars: usize) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= max_chars => Ok(Some(s.clone())),
        Some(_) => Err(bad(
            "INVALID_FIELD",
            format!("`{field}` must be a string of at most {max_chars} characters"),
        )),
    }
}

/// `POST /v1/conversations`.
pub async fn post_conversation(
    State(svc): State<AppState>,
    caller: Caller,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require("conversations:write")?;
    let body = parse_json(body)?;
    let kind = match body.get("type").and_then(Value::as_str) {
        Some("direct") | Some("DIRECT") | Some("ONE_TO_ONE") => ConversationKind::Direct,
        Some("group") | Some("GROUP") => ConversationKind::Group,
        _ => {
            return Err(bad(
                "INVALID_CONVERSATION_TYPE",
                "`type` is required: direct or group",
            ));
        }
    };
    let Some(list) = body.get("participants").and_then(Value::as_array) else {
        return Err(bad(
            "INVALID_PARTICIPANTS",
            "`participants` is required: a list of user ids",
        ));
    };
    let mut participants: Vec<String> = Vec::new();
    for p in list {
        let Some(id) = p.as_str() else {
            return Err(bad(
                "INVALID_PARTICIPANTS",
                "`participants` must hold user ids (strings)",
            ));
        };
        if !participants.iter().any(|x| x == id) {
            participants.push(id.to_string());
        }
    }
    // The creator takes part, unless an administrator sets up a conversation for others.
    if !participants.contains(&caller.user_id) && !caller.has(auth::ADMIN) {
        participants.insert(0, caller.user_id.clone());
    }
    match kind {
        ConversationKind::Direct if participants.len() != 2 => {
            return Err(bad(
                "INVALID_PARTICIPANTS",
                "a direct conversation has exactly two participants",
            ));
        }
        ConversationKind::Group if participants.len() > MAX_PARTICIPANTS => {
            return Err(bad(
                "TOO_MANY_PARTICIPANTS",
                format!(
                    "a group has at most {MAX_PARTICIPANTS} participants; {} were given",
                    participants.len()
                ),
            ));
        }
        ConversationKind::Group if participants.is_empty() => {
            return Err(bad(
                "INVALID_PARTICIPANTS",
                "a group needs at least one participant",
            ));
        }
        _ => {}
    }
    let title = opt_string(&body, "title", 200)?;
    let primary_channel = match opt_string(&body, "primary_channel", 32)? {
        None => None,
        Some(c) => {
            Some(crate::chat::parse_channel(&c, false).map_err(|m| bad("INVALID_CHANNEL", m))?)
        }
    };
    check_users(&svc, &participants).await?;
    let id = match kind {
        ConversationKind::Direct => direct_conversation_id(&participants[0], &participants[1]),
        ConversationKind::Group => uuid::Uuid::now_v7().to_string(),
    };
    let new = NewConversation {
        id: id.clone(),
        kind,
        title,
        primary_channel,
        created_by: caller.user_id.clone(),
    };
    match svc
        .chat_write(&id, create_conversation(new, &participants, now_ms()))
        .await?
    {
        ChatResponse::Conversation { conversation, .. } => Ok((
            StatusCode::CREATED,
            axum::Json(conversation_json(&conversation)),
        )
            .into_response()),
        // The direct conversation of this pair exists: it is the one.
        ChatResponse::ConversationExists(c) if c.kind == ConversationKind::Direct => {
            Ok((StatusCode::OK, axum::Json(conversation_json(&c))).into_response())
        }
        other => Err(refusal(other, &id)),
    }
}

/// `GET /v1/conversations?cursor=&limit=`: the caller's conversations, by id.
pub async fn list_conversations(
    State(svc): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("conversations:read")?;
    let limit = query_limit(&q, 50, 200)?;
    let after = q.get("cursor").filter(|c| !c.is_empty()).cloned();
    if let Some(c) = &after
        && !is_valid_id(c)
    {
        return Err(bad(
            "INVALID_CURSOR",
            "`cursor` must be a `next_cursor` value",
        ));
    }
    // Conversations live in the partitions their ids hash to: ask every partition for the
    // caller's, each in id order, and merge.
    let replies = svc
        .chat_read_all(ChatOp::ConversationsOf {
            user: caller.user_id.clone(),
            after,
            limit,
        })
        .await?;
    let mut all: Vec<Conversation> = replies
        .into_iter()
        .flat_map(|r| match r {
            ChatReply::Conversations(c) => c,
            _ => Vec::new(),
        })
        .collect();
    all.sort_by(|a, b| a.id.cmp(&b.id));
    all.truncate(limit);
    let next = (all.len() == limit)
        .then(|| all.last().map(|c| c.id.clone()))
        .flatten();
    Ok(axum::Json(json!({
        "conversations": all.iter().map(conversation_json).collect::<Vec<_>>(),
        "next_cursor": next,
    }))
    .into_response())
}

/// `GET /v1/conversations/{id}`.
pub async fn get_conversation(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require("conversations:read")?;
    let c = visible_conversation(&svc, &caller, &id).await?;
    Ok(axum::Json(conversation_json(&c)).into_response())
}

/// `POST /v1/conversations/{id}/participants` `{"user_id"}`.
pub async fn post_participant(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require("conversations:write")?;
    if !is_valid_id(&id) {
        return Err(conversation_not_found(&id));
    }
    let body = parse_json(body)?;
    let Some(user_id) = body
        .get("user_id")
        .and_then(Value::as_str)
        .map(String::from)
    else {
        return Err(bad("INVALID_FIELD", "`user_id` is required"));
    };
    check_users(&svc, std::slice::from_ref(&user_id)).await?;
    match change_participant(&svc, &caller, &id, user_id, true).await? {
        ChatResponse::Conversation { conversation, .. } => {
            Ok(axum::Json(conversation_json(&conversation)).into_response())
        }
        other => Err(refusal(other, &id)),
    }
}

/// `DELETE /v1/conversations/{id}/participants/{user_id}`: removes a participant (or the
/// caller leaves).
pub async fn delete_participant(
    State(svc): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require("conversations:write")?;
    if !is_valid_id(&id) {
        return Err(conversation_not_found(&id));
    }
    if !is_valid_id(&user_id) {
        return Err(bad("UNKNOWN_USER", format!("no user with id `{user_id}`")));
    }
    match change_participant(&svc, &caller, &id, user_id, false).await? {
        ChatResponse::Conversation { .. } => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(refusal(other, &id)),
    }
}

/// Adds (`add`) or removes `user_id` in conversation `id` on the caller's behalf, with its
/// event; the apply checks that the caller takes part, unless they are an admin.
async fn change_participant(
    svc: &Service,
    caller: &Caller,
    id: &str,
    user_id: String,
    add: bool,
) -> Result<ChatResponse, ApiError> {
    let at = now_ms();
    let by = (!caller.has(auth::ADMIN)).then(|| caller.user_id.clone());
    let kind = if add {
        "participant_added"
    } else {
        "participant_removed"
    };
    let record = event(
        id,
        at,
        &json!({"type": kind, "conversation_id": id, "user_id": user_id,
                "by": caller.user_id, "timestamp": rfc3339(at)}),
    );
    let conversation_id = id.to_string();
    let cmd = if add {
        ChatCommand::AddParticipant {
            conversation_id,
            user_id,
            by,
            at_ms: at,
            record,
        }
    } else {
        ChatCommand::RemoveParticipant {
            conversation_id,
            user_id,
            by,
            at_ms: at,
            record,
        }
    };
    Ok(svc.chat_write(id, cmd).await?)
}
