//! The chat domain as the API sees it: the `chat.messages` topic, input rules, the event
//! records appended for each accepted command, and the JSON shapes of conversations and
//! messages. The rules that must hold across replicas are decided in the partition state
//! machine (`chat4all_raft::sm::chat`); this module checks what can be checked before
//! proposing, so bad input is refused without a round trip.

use chat4all_raft::sm::chat::{
    ChatCommand, Conversation, ConversationKind, MessageState, MessageStatus, Participant,
};
use chat4all_storage::{Payload, PayloadFormat, StoredRecord};
use serde_json::{Value, json};

use crate::api::rfc3339;

/// The topic holding conversations, messages and status changes, keyed by conversation id.
pub const MESSAGES_TOPIC: &str = "chat.messages";

/// Longest message text, in characters (FR-003).
pub const MAX_CONTENT_CHARS: usize = 10_000;

/// Most file ids on one message.
pub const MAX_FILE_IDS: usize = 10;

/// Content types a message may have (the first Chat4All's list).
pub const CONTENT_TYPES: [&str; 8] = [
    "TEXT", "IMAGE", "VIDEO", "AUDIO", "DOCUMENT", "LOCATION", "CONTACT", "TEMPLATE",
];

/// Where a conversation or a message goes: our own users only, or one platform.
pub const CHANNELS: [&str; 4] = ["INTERNAL", "WHATSAPP", "TELEGRAM", "INSTAGRAM"];

/// `c` (any case) as a channel name, upper case, with `ALL` (every platform) too when `all`;
/// otherwise the message of a 400 `INVALID_CHANNEL`.
pub fn parse_channel(c: &str, all: bool) -> Result<String, String> {
    let c = c.to_ascii_uppercase();
    if CHANNELS.contains(&c.as_str()) || (all && c == "ALL") {
        return Ok(c);
    }
    let names = CHANNELS.join(", ");
    let or_all = if all { " or ALL" } else { "" };
    Err(format!("unknown channel `{c}`; use {names}{or_all}"))
}

/// Whether `s` can be an id in a path, a key or a cursor: 1 to 128 bytes of letters, digits
/// and `-_.:`, so it is safe in URLs and holds no separator byte of the stored keys.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The id of the direct conversation between two users: derived from the pair, so creating
/// it twice, from either side, finds the same conversation.
pub fn direct_conversation_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    let mut input = Vec::with_capacity(x.len() + y.len() + 1);
    input.extend_from_slice(x.as_bytes());
    input.push(0);
    input.extend_from_slice(y.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("d-{hex}")
}

/// An event record for `chat.messages`: key = conversation id, value = the event as JSON.
pub fn event(conversation_id: &str, at_ms: i64, value: &Value) -> StoredRecord {
    StoredRecord {
        timestamp_ms: at_ms,
        key: Some(Payload {
            format: PayloadFormat::Text,
            bytes: conversation_id.as_bytes().to_vec(),
        }),
        value: Payload {
            format: PayloadFormat::Json,
            bytes: value.to_string().into_bytes(),
        },
        headers: Vec::new(),
    }
}

/// What a new conversation needs besides its participants.
pub struct NewConversation {
    /// Its id.
    pub id: String,
    /// Direct or group.
    pub kind: ConversationKind,
    /// A title.
    pub title: Option<String>,
    /// The platform outbound messages prefer.
    pub primary_channel: Option<String>,
    /// Who creates it.
    pub created_by: String,
}

/// The command that creates a conversation with `participants` (joining now), with its
/// `conversation_created` event.
pub fn create_conversation(
    new: NewConversation,
    participants: &[String],
    at_ms: i64,
) -> ChatCommand {
    let conversation = Conversation {
        id: new.id,
        kind: new.kind,
        title: new.title,
        primary_channel: new.primary_channel,
        created_by: new.created_by,
        created_at_ms: at_ms,
        participants: participants
            .iter()
            .map(|u| Participant {
                user_id: u.clone(),
                joined_offset: 0,
                joined_at_ms: at_ms,
            })
            .collect(),
        message_count: 0,
        last_message_at_ms: None,
        last_offset: 0,
    };
    let record = event(
        &conversation.id,
        at_ms,
        &json!({
            "type": "conversation_created",
            "conversation": conversation_json(&conversation),
            "timestamp": rfc3339(at_ms),
        }),
    );
    ChatCommand::CreateConversation {
        conversation,
        record,
    }
}

/// The command that moves a message's status to `status`, reported by `by` (a recipient) or
/// by the system (`None`), with its `status` event.
pub fn set_status(
    message_id: &str,
    conversation_id: &str,
    status: MessageStatus,
    by: Option<&str>,
    at_ms: i64,
) -> ChatCommand {
    let record = event(
        conversation_id,
        at_ms,
        &json!({"type": "status", "message_id": message_id, "conversation_id": conversation_id,
                "status": status, "by": by, "timestamp": rfc3339(at_ms)}),
    );
    ChatCommand::SetStatus {
        message_id: message_id.to_string(),
        status,
        by: by.map(str::to_string),
        at_ms,
        record,
    }
}

/// A message's content fields, as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageContent {
    /// The text (or caption).
    pub content: String,
    /// One of [`CONTENT_TYPES`].
    pub content_type: String,
    /// Attached files.
    pub file_ids: Vec<String>,
    /// The channel asked for, if any.
    pub channel: Option<String>,
    /// Free-form metadata.
    pub metadata: Value,
}

/// The `message` event.
pub fn message_event(
    message_id: &str,
    conversation_id: &str,
    sender_id: &str,
    at_ms: i64,
    c: &MessageContent,
) -> Value {
    json!({
        "type": "message",
        "message_id": message_id,
        "conversation_id": conversation_id,
        "sender_id": sender_id,
        "content": c.content,
        "content_type": c.content_type,
        "file_ids": c.file_ids,
        "channel": c.channel,
        "metadata": c.metadata,
        "timestamp": rfc3339(at_ms),
    })
}

/// A conversation as the API shows it.
pub fn conversation_json(c: &Conversation) -> Value {
    json!({
        "id": c.id,
        "type": c.kind,
        "title": c.title,
        "primary_channel": c.primary_channel,
        "participants": c.participants.iter().map(|p| json!({
            "user_id": p.user_id,
            "joined_at": rfc3339(p.joined_at_ms),
        })).collect::<Vec<_>>(),
        "created_by": c.created_by,
        "created_at": rfc3339(c.created_at_ms),
        "message_count": c.message_count,
        "last_message_at": c.last_message_at_ms.map(rfc3339),
    })
}

/// A message's status as `GET /v1/messages/{id}/status` shows it.
pub fn status_json(m: &MessageState) -> Value {
    json!({
        "message_id": m.message_id,
        "conversation_id": m.conversation_id,
        "current_status": m.status,
        "status_history": m.history.iter().map(|h| json!({
            "status": h.status,
            "timestamp": rfc3339(h.at_ms),
            "by": h.by,
        })).collect::<Vec<_>>(),
    })
}

/// A message with its content (from its event record) and its current status.
pub fn message_json(m: &MessageState, record: Option<&StoredRecord>) -> Value {
    let event: Value = record
        .and_then(|r| serde_json::from_slice(&r.value.bytes).ok())
        .unwrap_or(Value::Null);
    json!({
        "message_id": m.message_id,
        "conversation_id": m.conversation_id,
        "sender_id": m.sender_id,
        "content": event["content"],
        "content_type": event["content_type"],
        "file_ids": event["file_ids"],
        "channel": event["channel"],
        "metadata": event["metadata"],
        "status": m.status,
        "offset": m.offset,
        "timestamp": rfc3339(m.timestamp_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_ids_do_not_depend_on_who_starts() {
        let a = direct_conversation_id("u1", "u2");
        assert_eq!(a, direct_conversation_id("u2", "u1"));
        assert_ne!(a, direct_conversation_id("u1", "u3"));
        // "u1"+"2" and "u"+"12" must not collide: the separator keeps pairs apart.
        assert_ne!(
            direct_conversation_id("u1", "2"),
            direct_conversation_id("u", "12")
        );
        assert!(is_valid_id(&a));
    }

    #[test]
    fn ids_are_url_and_key_safe() {
        assert!(is_valid_id("0192f0c3-7b1e-7cc0-a2b4-5d2f3e4a5b6c"));
        assert!(is_valid_id("wamid.HBgL:1"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a\0b"));
        assert!(!is_valid_id(&"x".repeat(129)));
    }
}
