//! Telegram webhook bodies: one `Update` each, of which only `message` becomes an event.

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::{ConnectorError, InboundEvent, InboundMessage};

/// An `Update`: only `message` is handled (edits, channel posts, callbacks… are left out).
#[derive(Debug, Deserialize)]
struct Update {
    // Required although unused here: a body without it is not an Update (BadPayload).
    #[serde(rename = "update_id")]
    _update_id: i64,
    #[serde(default)]
    message: Option<Message>,
}

/// The `Message` fields that matter.
#[derive(Debug, Deserialize)]
struct Message {
    message_id: i64,
    chat: Chat,
    date: i64,
    #[serde(default)]
    from: Option<User>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    reply_to_message: Option<Reply>,
    #[serde(default)]
    document: Option<Document>,
    #[serde(default)]
    sticker: Option<Sticker>,
    #[serde(default)]
    photo: Option<IgnoredAny>,
    #[serde(default)]
    animation: Option<IgnoredAny>,
    #[serde(default)]
    audio: Option<IgnoredAny>,
    #[serde(default)]
    voice: Option<IgnoredAny>,
    #[serde(default)]
    video: Option<IgnoredAny>,
    #[serde(default)]
    video_note: Option<IgnoredAny>,
    #[serde(default)]
    location: Option<IgnoredAny>,
    #[serde(default)]
    venue: Option<IgnoredAny>,
    #[serde(default)]
    contact: Option<IgnoredAny>,
    #[serde(default)]
    poll: Option<IgnoredAny>,
}

/// The replied-to message; its `chat` is the replying message's when absent.
#[derive(Debug, Deserialize)]
struct Reply {
    message_id: i64,
    #[serde(default)]
    chat: Option<Chat>,
}

/// A chat, by its id.
#[derive(Debug, Deserialize)]
pub(super) struct Chat {
    /// The chat id (ids exceed 32 bits).
    pub(super) id: i64,
}

#[derive(Debug, Deserialize)]
struct User {
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    #[serde(default)]
    username: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Document {
    #[serde(default)]
    file_name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Sticker {
    #[serde(default)]
    emoji: Option<String>,
}

impl Message {
    /// Non-text content, described for people. `animation` comes before `document`: Telegram
    /// sends both for a GIF.
    fn attachment(&self) -> Option<String> {
        let named = |kind: &str, name: Option<&String>| match name {
            Some(n) => format!("[{kind}: {n}]"),
            None => format!("[{kind}]"),
        };
        let plain: [(&Option<IgnoredAny>, &str); 10] = [
            (&self.photo, "photo"),
            (&self.animation, "animation"),
            (&self.audio, "audio"),
            (&self.voice, "voice"),
            (&self.video, "video"),
            (&self.video_note, "video note"),
            (&self.venue, "venue"),
            (&self.location, "location"),
            (&self.contact, "contact"),
            (&self.poll, "poll"),
        ];
        if let Some((_, kind)) = plain.iter().find(|(field, _)| field.is_some()) {
            return Some(format!("[{kind}]"));
        }
        if let Some(d) = &self.document {
            return Some(named("document", d.file_name.as_ref()));
        }
        self.sticker
            .as_ref()
            .map(|s| named("sticker", s.emoji.as_ref()))
    }

    /// `first_name last_name`, else the username.
    fn sender_name(&self) -> Option<String> {
        let from = self.from.as_ref()?;
        match (&from.first_name, &from.last_name) {
            (Some(first), Some(last)) => Some(format!("{first} {last}")),
            (Some(first), None) => Some(first.clone()),
            _ => from.username.clone(),
        }
    }
}

/// Parses one webhook `Update`.
pub(super) fn parse(body: &[u8]) -> Result<Vec<InboundEvent>, ConnectorError> {
    let update: Update = serde_json::from_slice(body)
        .map_err(|e| ConnectorError::BadPayload(format!("not a Telegram Update: {e}")))?;
    let Some(message) = update.message else {
        return Ok(Vec::new());
    };
    let text = message.text.clone().or_else(|| message.caption.clone());
    let attachment = message.attachment();
    if text.is_none() && attachment.is_none() {
        // Service messages (joins, pins, title changes) are not something a contact wrote.
        return Ok(Vec::new());
    }
    let reply_to = message.reply_to_message.as_ref().map(|r| {
        let chat = r.chat.as_ref().map_or(message.chat.id, |c| c.id);
        format!("{chat}:{}", r.message_id)
    });
    Ok(vec![InboundEvent::Message(InboundMessage {
        platform_message_id: format!("{}:{}", message.chat.id, message.message_id),
        contact_id: message.chat.id.to_string(),
        contact_name: message.sender_name(),
        text,
        attachment,
        timestamp_ms: message.date.saturating_mul(1000),
        reply_to,
    })])
}
