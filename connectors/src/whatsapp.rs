//! The WhatsApp Business Cloud API (Meta Graph): sends to
//! `POST {base_url}/{version}/{phone_number_id}/messages` with a Bearer token, and webhooks of
//! `whatsapp_business_account` changes carrying `messages[]` or `statuses[]`.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::meta::Graph;
use crate::{
    Account, ChannelSettings, Connector, ConnectorError, InboundEvent, InboundMessage, Platform,
    RemoteStatus, Sent, StatusUpdate, Template,
};

/// The longest text body, in characters.
pub const MAX_CHARS: usize = 4096;

/// The customer service window: free text only within 24 hours of the contact's last message.
pub const SERVICE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// A WhatsApp Business phone number.
#[derive(Debug)]
pub struct Whatsapp {
    graph: Graph,
}

impl Whatsapp {
    /// A client for the phone number and token in `settings`. Nothing is checked here:
    /// [`Connector::verify`] asks Meta.
    pub fn new(settings: ChannelSettings, http: reqwest::Client) -> Whatsapp {
        Whatsapp {
            graph: Graph::new(settings, http, "phone_number_id"),
        }
    }

    /// `POST /{phone-number-id}/messages` with `content` (`type` and its object) to `to`.
    async fn post_message(
        &self,
        to: &str,
        mut body: Value,
        callback_data: &str,
    ) -> Result<Sent, ConnectorError> {
        body["messaging_product"] = json!("whatsapp");
        body["recipient_type"] = json!("individual");
        body["to"] = json!(to);
        // Echoed in every status webhook of this message: how a send whose outcome was
        // unknown is reconciled. Left out when there is nothing to echo.
        if !callback_data.is_empty() {
            body["biz_opaque_callback_data"] = json!(callback_data);
        }
        let answer = self.graph.post_message(&body).await?;
        let wamid = answer
            .pointer("/messages/0/id")
            .and_then(Value::as_str)
            // Accepted (2xx) but we cannot name it: it may well be on its way.
            .ok_or_else(|| ConnectorError::Indeterminate("send: no messages[0].id".into()))?;
        Ok(Sent {
            remote_id: wamid.to_owned(),
        })
    }
}

impl Connector for Whatsapp {
    fn platform(&self) -> Platform {
        Platform::Whatsapp
    }

    fn verify(&self) -> BoxFuture<'_, Result<Account, ConnectorError>> {
        Box::pin(async move {
            let number = self
                .graph
                .get("?fields=verified_name,display_phone_number", "phone number")
                .await?;
            let id = number.get("id").and_then(Value::as_str).map_or_else(
                || self.graph.credential("phone_number_id").map(str::to_owned),
                |id| Ok(id.to_owned()),
            )?;
            let name = number
                .get("verified_name")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(Account { id, name })
        })
    }

    fn split_text(&self, text: &str) -> Vec<String> {
        crate::text::split_chars(text, MAX_CHARS)
    }

    fn send_text<'a>(
        &'a self,
        to: &'a str,
        text: &'a str,
        callback_data: &'a str,
    ) -> BoxFuture<'a, Result<Sent, ConnectorError>> {
        Box::pin(async move {
            crate::text::check(
                Platform::Whatsapp,
                text,
                MAX_CHARS,
                crate::text::Measure::Chars,
            )?;
            let body = json!({ "type": "text", "text": { "preview_url": false, "body": text } });
            self.post_message(to, body, callback_data).await
        })
    }

    fn free_text_allowed(&self, since_last_inbound: Option<std::time::Duration>) -> bool {
        since_last_inbound.is_some_and(|d| d < SERVICE_WINDOW)
    }

    fn send_template<'a>(
        &'a self,
        to: &'a str,
        template: &'a Template,
        callback_data: &'a str,
    ) -> BoxFuture<'a, Result<Sent, ConnectorError>> {
        Box::pin(async move {
            let parameters: Vec<Value> = template
                .body_parameters
                .iter()
                .map(|t| json!({ "type": "text", "text": t }))
                .collect();
            let body = json!({
                "type": "template",
                "template": {
                    "name": template.name,
                    "language": { "code": template.language },
                    "components": [{ "type": "body", "parameters": parameters }],
                },
            });
            self.post_message(to, body, callback_data).await
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

/// A webhook notification: `entry[].changes[]`.
#[derive(Debug, Deserialize)]
struct Notification {
    object: String,
    entry: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct Change {
    field: String,
    #[serde(default)]
    value: Value,
}

/// A `messages` change's value: messages from contacts, or statuses of ours.
#[derive(Debug, Default, Deserialize)]
struct ChangeValue {
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    statuses: Vec<Status>,
}

#[derive(Debug, Deserialize)]
struct Contact {
    wa_id: String,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Debug, Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    id: String,
    from: String,
    timestamp: Value,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    context: Option<Context>,
    #[serde(flatten)]
    content: BTreeMap<String, Value>,
}

#[derive(Debug, Deserialize)]
struct Context {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Status {
    id: String,
    status: String,
    timestamp: Value,
    recipient_id: String,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    errors: Vec<StatusError>,
}

#[derive(Debug, Deserialize)]
struct StatusError {
    code: i64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Meta's timestamps are strings of Unix seconds (numbers accepted too); ms since the epoch.
fn seconds_to_ms(v: &Value) -> Result<i64, ConnectorError> {
    let secs = match v {
        Value::String(s) => s.parse::<i64>().ok(),
        other => other.as_i64(),
    };
    secs.map(|s| s.saturating_mul(1000))
        .ok_or_else(|| ConnectorError::BadPayload(format!("bad timestamp {v}")))
}

/// The text and the attachment description of one message by its `type`. `None` for kinds
/// that are not messages to show (reactions, system notices).
fn content(m: &Message) -> Option<(Option<String>, Option<String>)> {
    let field = |path: &str| {
        m.content
            .get(&m.kind)
            .and_then(|c| c.pointer(path))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    Some(match m.kind.as_str() {
        "text" => (field("/body"), None),
        "image" | "video" | "sticker" => (field("/caption"), Some(format!("[{}]", m.kind))),
        "audio" => {
            let voice = m.content.get("audio").and_then(|a| a.get("voice"));
            let kind = if voice == Some(&Value::Bool(true)) {
                "voice"
            } else {
                "audio"
            };
            (None, Some(format!("[{kind}]")))
        }
        "document" => {
            let name = field("/filename")
                .map_or_else(|| "[document]".into(), |n| format!("[document: {n}]"));
            (field("/caption"), Some(name))
        }
        "location" => {
            let name =
                field("/name").map_or_else(|| "[location]".into(), |n| format!("[location: {n}]"));
            (None, Some(name))
        }
        "button" => (field("/text"), None),
        "interactive" => {
            let title = field("/button_reply/title").or_else(|| field("/list_reply/title"));
            (title, None)
        }
        "reaction" | "system" | "ephemeral" => return None,
        other => (None, Some(format!("[{other}]"))),
    })
}

/// Parses a notification into events; changes other than `messages` are left out.
fn parse_notification(body: &[u8]) -> Result<Vec<InboundEvent>, ConnectorError> {
    let n: Notification = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::BadPayload(format!("not a WhatsApp notification: {e}")))?;
    if n.object != "whatsapp_business_account" {
        return Err(ConnectorError::BadPayload(format!(
            "object `{}` is not whatsapp_business_account",
            n.object
        )));
    }
    let mut events = Vec::new();
    for change in n.entry.iter().flat_map(|e| &e.changes) {
        if change.field != "messages" {
            continue;
        }
        let value = ChangeValue::deserialize(&change.value)
            .map_err(|e| ConnectorError::BadPayload(format!("bad `messages` change: {e}")))?;
        for m in &value.messages {
            let Some((text, attachment)) = content(m) else {
                continue;
            };
            let contact_name = value
                .contacts
                .iter()
                .find(|c| c.wa_id == m.from)
                .and_then(|c| c.profile.as_ref()?.name.clone());
            events.push(InboundEvent::Message(InboundMessage {
                platform_message_id: m.id.clone(),
                contact_id: m.from.clone(),
                contact_name,
                text,
                attachment,
                timestamp_ms: seconds_to_ms(&m.timestamp)?,
                reply_to: m.context.as_ref().and_then(|c| c.id.clone()),
            }));
        }
        for s in &value.statuses {
            let status = match s.status.as_str() {
                "sent" => RemoteStatus::Sent,
                "delivered" => RemoteStatus::Delivered,
                "read" => RemoteStatus::Read,
                "failed" => RemoteStatus::Failed,
                // `deleted`, `warning` and later additions: nothing to record.
                _ => continue,
            };
            let error = s.errors.first().map(|e| {
                let title = e.title.as_deref().or(e.message.as_deref()).unwrap_or("");
                format!("{}: {title}", e.code)
            });
            events.push(InboundEvent::Status(StatusUpdate {
                remote_id: s.id.clone(),
                contact_id: s.recipient_id.clone(),
                status,
                callback_data: s.biz_opaque_callback_data.clone(),
                timestamp_ms: seconds_to_ms(&s.timestamp)?,
                error,
            }));
        }
    }
    Ok(events)
}
