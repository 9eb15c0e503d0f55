//! Chat4All's connectors: clients of the Telegram Bot API, the WhatsApp Business Cloud API and
//! the Instagram Messaging API, and the parsers and signature checks of their webhooks.
//!
//! This crate knows nothing of storage, Raft or the REST API (DESIGN.md: only `node` depends
//! on it). It turns one outbound text into platform calls and one webhook request into
//! [`InboundEvent`]s, and classifies every failure ([`ConnectorError::is_retryable`],
//! [`ConnectorError::is_indeterminate`]) so that the node's delivery workers decide what to retry
//! without matching strings.
//!
//! ```text
//!   node delivery worker ──send_text──▶ Connector ──HTTP──▶ platform (or a fake, `testing`)
//!   platform ──webhook──▶ node ──authenticate_webhook + parse_webhook──▶ Vec<InboundEvent>
//! ```
//!
//! A new platform is one new [`Connector`] implementation plus a match arm in [`connector`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

mod call;
mod error;
pub mod instagram;
mod meta;
pub mod telegram;
pub mod text;
pub mod whatsapp;

#[cfg(feature = "testing")]
pub mod testing;

pub use call::describe as describe_http_error;
pub use error::ConnectorError;

/// A messaging platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    /// The Telegram Bot API.
    Telegram,
    /// The WhatsApp Business Cloud API.
    Whatsapp,
    /// Instagram Messaging (Messenger Platform / Instagram API with Instagram Login).
    Instagram,
}

impl Platform {
    /// The name in URLs and JSON: `TELEGRAM`, `WHATSAPP`, `INSTAGRAM`.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Telegram => "TELEGRAM",
            Platform::Whatsapp => "WHATSAPP",
            Platform::Instagram => "INSTAGRAM",
        }
    }

    /// Parses a name, case-insensitively.
    pub fn parse(s: &str) -> Option<Platform> {
        match s.to_ascii_uppercase().as_str() {
            "TELEGRAM" => Some(Platform::Telegram),
            "WHATSAPP" => Some(Platform::Whatsapp),
            "INSTAGRAM" => Some(Platform::Instagram),
            _ => None,
        }
    }

    /// The public API's base URL, used when the configuration names none.
    pub fn default_base_url(self) -> &'static str {
        match self {
            Platform::Telegram => "https://api.telegram.org",
            Platform::Whatsapp => "https://graph.facebook.com",
            Platform::Instagram => "https://graph.instagram.com",
        }
    }

    /// The credential fields a channel of this platform must have.
    pub fn required_credentials(self) -> &'static [&'static str] {
        match self {
            Platform::Telegram => &["bot_token"],
            Platform::Whatsapp => &["access_token", "phone_number_id"],
            Platform::Instagram => &["access_token", "ig_id"],
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret (token, app secret): its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Everything a connector needs to talk to one channel (one bot, one phone number, one
/// Instagram account).
#[derive(Clone, Debug)]
pub struct ChannelSettings {
    /// The platform.
    pub platform: Platform,
    /// The API's base URL without a trailing slash (`https://api.telegram.org`, a local Bot API
    /// server, or a fake in tests).
    pub base_url: String,
    /// The Graph API version for WhatsApp and Instagram (`v23.0`); Telegram ignores it.
    pub api_version: String,
    /// The credentials, by field name: Telegram `bot_token`; WhatsApp `access_token`,
    /// `phone_number_id`; Instagram `access_token`, `ig_id`.
    pub credentials: BTreeMap<String, Secret>,
    /// Telegram: the `secret_token` every webhook request carries; WhatsApp and Instagram: the
    /// app secret that signs webhook bodies (`X-Hub-Signature-256`). `None`: webhooks are
    /// refused (never accepted unchecked).
    pub webhook_secret: Option<Secret>,
    /// WhatsApp and Instagram: the `hub.verify_token` of the subscription handshake.
    pub verify_token: Option<Secret>,
    /// How long one platform call may take, connect included.
    pub timeout: Duration,
}

/// The account a channel's credentials belong to, as the platform reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// The platform's id of the bot, phone number or Instagram account.
    pub id: String,
    /// Its name (bot username, verified name, Instagram username), when the platform gives one.
    pub name: Option<String>,
}

/// A text the platform accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The platform's id of the message (Telegram `chat_id:message_id`, WhatsApp `wamid`,
    /// Instagram `mid`).
    pub remote_id: String,
}

/// An approved message template (WhatsApp: the only message allowed more than 24 hours after
/// the contact last wrote).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The template's name.
    pub name: String,
    /// Its language code (`en_US`).
    pub language: String,
    /// The body's text parameters, in order (their count must match the approved template).
    pub body_parameters: Vec<String>,
}

/// What a contact or the platform told us, parsed from a verified webhook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InboundEvent {
    /// A contact wrote to the channel.
    Message(InboundMessage),
    /// The platform reports on a message we sent (WhatsApp statuses, Instagram reads).
    Status(StatusUpdate),
}

/// A message from a contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboundMessage {
    /// The platform's id of this message, unique per channel: the key that deduplicates a
    /// webhook the platform delivers twice (Telegram `chat_id:message_id`, WhatsApp `wamid`,
    /// Instagram `mid`).
    pub platform_message_id: String,
    /// Who wrote: the id we answer to (Telegram chat id, WhatsApp `wa_id`, Instagram IGSID).
    pub contact_id: String,
    /// The contact's name, when the platform sends one.
    pub contact_name: Option<String>,
    /// The text (or a media caption); `None` for content without text.
    pub text: Option<String>,
    /// Media and other non-text content, described for people (`[image]`), when there is some.
    pub attachment: Option<String>,
    /// When the platform says it was sent, ms since the epoch.
    pub timestamp_ms: i64,
    /// The platform id of the message it replies to, if any.
    pub reply_to: Option<String>,
}

/// A delivery report from the platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusUpdate {
    /// The platform's id of our message (`wamid`, `mid`).
    pub remote_id: String,
    /// The contact it was sent to.
    pub contact_id: String,
    /// What happened.
    pub status: RemoteStatus,
    /// What we put in `biz_opaque_callback_data` when sending (WhatsApp only).
    pub callback_data: Option<String>,
    /// When, ms since the epoch.
    pub timestamp_ms: i64,
    /// For `Failed`: `"<code>: <title>"`.
    pub error: Option<String>,
}

/// A platform's delivery states, in the order they move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum RemoteStatus {
    /// Accepted by the platform's servers.
    Sent,
    /// On the contact's device.
    Delivered,
    /// Read by the contact.
    Read,
    /// Not delivered.
    Failed,
}

/// One platform's client and webhook handling. Implementations are cheap to share (`Arc`)
/// and safe to call from many tasks at once.
pub trait Connector: Send + Sync + fmt::Debug {
    /// The platform.
    fn platform(&self) -> Platform;

    /// Checks the credentials against the platform (Telegram `getMe`, the WhatsApp phone
    /// number, the Instagram account) and answers whose they are.
    fn verify(&self) -> BoxFuture<'_, Result<Account, ConnectorError>>;

    /// Splits a text into the parts this platform takes in one message (Telegram and WhatsApp
    /// 4096 characters, Instagram 1000 UTF-8 bytes), preferring line and word breaks. Each
    /// part can be given to [`Connector::send_text`].
    fn split_text(&self, text: &str) -> Vec<String>;

    /// Sends one text part to `to` (a chat id, a phone number, an IGSID). `callback_data` is
    /// our delivery id; WhatsApp echoes it in status webhooks (`biz_opaque_callback_data`),
    /// the others ignore it. A part over the platform's limit is refused with
    /// [`ConnectorError::TooLong`] before any call.
    fn send_text<'a>(
        &'a self,
        to: &'a str,
        text: &'a str,
        callback_data: &'a str,
    ) -> BoxFuture<'a, Result<Sent, ConnectorError>>;

    /// Whether free text may go to a contact who last wrote `since_last_inbound` ago (`None`:
    /// never): WhatsApp allows it within 24 hours only; the others do not restrict it here.
    fn free_text_allowed(&self, since_last_inbound: Option<std::time::Duration>) -> bool {
        let _ = since_last_inbound;
        true
    }

    /// Sends an approved template to `to` (WhatsApp). Platforms without templates refuse it
    /// before any call.
    fn send_template<'a>(
        &'a self,
        to: &'a str,
        template: &'a Template,
        callback_data: &'a str,
    ) -> BoxFuture<'a, Result<Sent, ConnectorError>> {
        let _ = (to, template, callback_data);
        let platform = self.platform();
        Box::pin(async move {
            Err(ConnectorError::Rejected {
                code: 0,
                description: format!("{platform} has no message templates"),
            })
        })
    }

    /// Checks that a webhook request comes from the platform: Telegram's
    /// `X-Telegram-Bot-Api-Secret-Token`, or `X-Hub-Signature-256` (HMAC-SHA256 of the raw
    /// body with the app secret, compared in constant time). Runs before anything is parsed or
    /// stored.
    fn authenticate_webhook(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(), ConnectorError>;

    /// The subscription handshake (`GET` with `hub.mode`, `hub.verify_token`, `hub.challenge`):
    /// the challenge to answer with, or [`ConnectorError::HandshakeRefused`]. Telegram has none
    /// and always refuses.
    fn handshake(&self, query: &BTreeMap<String, String>) -> Result<String, ConnectorError>;

    /// Parses an authenticated webhook body into events (echoes of our own sends and update
    /// kinds we do not handle are left out).
    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ConnectorError>;
}

/// Makes the connector for a channel. Fails with [`ConnectorError::Config`] when a required
/// credential is missing.
pub fn connector(
    settings: ChannelSettings,
    http: reqwest::Client,
) -> Result<Arc<dyn Connector>, ConnectorError> {
    for field in settings.platform.required_credentials() {
        if !settings.credentials.contains_key(*field) {
            return Err(ConnectorError::Config(format!(
                "a {} channel needs the credential `{field}`",
                settings.platform
            )));
        }
    }
    Ok(match settings.platform {
        Platform::Telegram => Arc::new(telegram::Telegram::new(settings, http)),
        Platform::Whatsapp => Arc::new(whatsapp::Whatsapp::new(settings, http)),
        Platform::Instagram => Arc::new(instagram::Instagram::new(settings, http)),
    })
}
