//! Instagram Messaging (Instagram API with Instagram Login, or the Messenger Platform's host):
//! sends to `POST {base_url}/{version}/{ig_id}/messages` with a Bearer token, and webhooks of
//! `instagram` entries carrying `messaging[]` events (messages, echoes, reads).

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::meta::Graph;
use crate::{
    Account, ChannelSettings, Connector, ConnectorError, InboundEvent, InboundMessage, Platform,
    RemoteStatus, Sent, StatusUpdate,
};

/// The longest text, in UTF-8 bytes.
pub const MAX_BYTES: usize = 1000;

/// An Instagram professional account.
#[derive(Debug)]
pub struct Instagram {
    graph: Graph,
}

impl Instagram {
    /// A client for the account and token in `settings`. Nothing is checked here:
    /// [`Connector::verify`] asks Meta.
    pub fn new(settings: ChannelSettings, http: reqwest::Client) -> Instagram {
        Instagram {
            graph: Graph::new(settings, http, "ig_id"),
        }
    }
}

/// A Graph id that may come as a string or a number.
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Connector for Instagram {
    fn platform(&self) -> Platform {
        Platform::Instagram
    }

    fn verify(&self) -> BoxFuture<'_, Result<Account, ConnectorError>> {
        Box::pin(async move {
            let account = self
                .graph
                .get("?fields=user_id,username", "account")
                .await?;
            // `user_id` is the professional account's id (what webhooks name); `id` may be
            // app-scoped.
            let id = ["user_id", "id"]
                .iter()
                .find_map(|k| account.get(*k).and_then(id_string))
                .ok_or_else(|| ConnectorError::Protocol("account: no user_id or id".into()))?;
            let name = account
                .get("username")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(Account { id, name })
        })
    }

    fn split_text(&self, text: &str) -> Vec<String> {
        crate::text::split_bytes(text, MAX_BYTES)
    }

    fn send_text<'a>(
        &'a self,
        to: &'a str,
        text: &'a str,
        _callback_data: &'a str,
    ) -> BoxFuture<'a, Result<Sent, ConnectorError>> {
        Box::pin(async move {
            crate::text::check(
                Platform::Instagram,
                text,
                MAX_BYTES,
                crate::text::Measure::Bytes,
            )?;
            let body = json!({ "recipient": { "id": to }, "message": { "text": text } });
            let answer = self.graph.post_message(&body).await?;
            let mid = answer
                .get("message_id")
                .and_then(Value::as_str)
                // Accepted (2xx) but we cannot name it: it may well be on its way.
                .ok_or_else(|| ConnectorError::Indeterminate("send: no message_id".into()))?;
            Ok(Sent {
                remote_id: mid.to_owned(),
            })
        })
    }

    fn authenticate_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(), ConnectorError> {
        self.graph.authenticate(headers, body)
    }

    fn handshake(&self, query: &BTreeMap<String, String>) -> Result<String, ConnectorError> {
        self.graph.handshake(query)
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ConnectorError> {
        parse_notification(body)
    }
}

#[derive(Debug, Deserialize)]
struct Notification {
    object: String,
    entry: Vec<Entry>,
}

/// An entry: events in `messaging[]`, or (the dashboard's test sends, some versions) one event
/// per `changes[].value` of the `messages` and `messaging_seen` fields.
#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    messaging: Vec<Messaging>,
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct Change {
    field: String,
    #[serde(default)]
    value: Value,
}

#[derive(Debug, Deserialize)]
struct Messaging {
    sender: Party,
    timestamp: Value,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    read: Option<Read>,
}

#[derive(Debug, Deserialize)]
struct Party {
    id: String,
}

#[derive(Debug, Deserialize)]
struct Message {
    mid: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    attachments: Vec<Attachment>,
    #[serde(default)]
    reply_to: Option<ReplyTo>,
    #[serde(default)]
    is_echo: bool,
    #[serde(default)]
    is_deleted: bool,
}

#[derive(Debug, Deserialize)]
struct Attachment {
    #[serde(rename = "type")]
    kind: String,
}

/// `reply_to`: `{"mid"}` for a message, `{"story":{…}}` for a story reply (no message id).
#[derive(Debug, Deserialize)]
struct ReplyTo {
    #[serde(default)]
    mid: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Read {
    #[serde(default)]
    mid: Option<String>,
}

/// Instagram's timestamps are integers of ms (strings accepted too).
fn millis(v: &Value) -> Result<i64, ConnectorError> {
    match v {
        Value::String(s) => s.parse::<i64>().ok(),
        other => other.as_i64(),
    }
    .ok_or_else(|| ConnectorError::BadPayload(format!("bad timestamp {v}")))
}

/// One `messaging` event: a contact's message, or a read of ours. Echoes of our own sends,
/// deletions and other kinds (reactions, postbacks) give nothing.
fn event(m: &Messaging) -> Result<Option<InboundEvent>, ConnectorError> {
    let timestamp_ms = millis(&m.timestamp)?;
    if let Some(msg) = &m.message {
        if msg.is_echo || msg.is_deleted {
            return Ok(None);
        }
        let attachment = (!msg.attachments.is_empty()).then(|| {
            let kinds: Vec<String> = msg
                .attachments
                .iter()
                .map(|a| format!("[{}]", a.kind))
                .collect();
            kinds.join(" ")
        });
        return Ok(Some(InboundEvent::Message(InboundMessage {
            platform_message_id: msg.mid.clone(),
            contact_id: m.sender.id.clone(),
            contact_name: None,
            text: msg.text.clone(),
            attachment,
            timestamp_ms,
            reply_to: msg.reply_to.as_ref().and_then(|r| r.mid.clone()),
        })));
    }
    let Some(mid) = m.read.as_ref().and_then(|r| r.mid.clone()) else {
        return Ok(None);
    };
    Ok(Some(InboundEvent::Status(StatusUpdate {
        remote_id: mid,
        contact_id: m.sender.id.clone(),
        status: RemoteStatus::Read,
        callback_data: None,
        timestamp_ms,
        error: None,
    })))
}

fn parse_notification(body: &[u8]) -> Result<Vec<InboundEvent>, ConnectorError> {
    let n: Notification = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::BadPayload(format!("not an Instagram notification: {e}")))?;
    if n.object != "instagram" {
        return Err(ConnectorError::BadPayload(format!(
            "object `{}` is not instagram",
            n.object
        )));
    }
    let mut events = Vec::new();
    for entry in &n.entry {
        let from_changes = entry
            .changes
            .iter()
            .filter(|c| c.field == "messages" || c.field == "messaging_seen")
            .map(|c| {
                Messaging::deserialize(&c.value).map_err(|e| {
                    ConnectorError::BadPayload(format!("bad `{}` change: {e}", c.field))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for m in entry.messaging.iter().chain(&from_changes) {
            events.extend(event(m)?);
        }
    }
    Ok(events)
}
