//! Channels: the node's side of the connectors. A channel (one bot, one WhatsApp number, one
//! Instagram account) is stored in the directory; this module turns it into a
//! [`Connector`], names the topics that carry work to and from the platforms, and derives the
//! ids that make inbound processing idempotent.
//!
//! ```text
//!  chat.messages ─router─▶ chat.deliveries ─deliver.<channel> group─▶ platform
//!                                 │ (last attempt failed)
//!                                 ▼
//!                          chat.deliveries.dlq ─redrive─▶ chat.deliveries
//!  platform ─webhook─▶ chat.inbound ─inbound group─▶ chat.messages (RECEIVED, status changes)
//! ```

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chat4all_connectors::{ChannelSettings, Connector, ConnectorError, Platform, Secret};
use chat4all_raft::sm::directory::{self, Channel};

mod config;
pub mod retry;

pub use config::ConnectorsConfig;

/// Outbound work, keyed by [`delivery_key`]: an inbox-kind topic, so the router's
/// repeats add nothing (see `chat4all_raft::sm::chat::ChatCommand::Deliver`).
pub const DELIVERIES_TOPIC: &str = "chat.deliveries";
/// Deliveries whose last attempt failed, keyed by channel.
pub const DLQ_TOPIC: &str = "chat.deliveries.dlq";
/// Verified webhook events, keyed by [`delivery_key`] of their contact.
pub const INBOUND_TOPIC: &str = "chat.inbound";
/// The record header naming the user a delivery is for.
pub const USER_HEADER: &str = "c4a-user";
/// The record header of a redriven delivery: how many of its text parts went out before it
/// failed (they are not sent again).
pub const PARTS_SENT_HEADER: &str = "c4a-parts-sent";
/// The `chat.deliveries` note (per contact) holding when the contact last wrote, ms since the
/// epoch: WhatsApp's 24-hour window.
pub const LAST_INBOUND_NOTE: &str = "last_inbound";
/// `chat.deliveries` notes named `remote:<platform id>` hold our delivery id of a message the
/// platform reports on by its own id only (Instagram reads).
pub const REMOTE_NOTE_PREFIX: &str = "remote:";
/// Redriven deliveries name `REDRIVE_SOURCE + dlq partition` as their source partition and the
/// dead letter's offset as their source offset, so redriving one entry twice delivers once.
pub const REDRIVE_SOURCE: u32 = 1 << 20;

/// The raft crate's platform for a connectors one (the directory stores its own enum, since
/// `raft` must not depend on `connectors`).
pub fn to_directory(p: Platform) -> directory::Platform {
    match p {
        Platform::Telegram => directory::Platform::Telegram,
        Platform::Whatsapp => directory::Platform::Whatsapp,
        Platform::Instagram => directory::Platform::Instagram,
    }
}

/// The connectors crate's platform for a directory one.
pub fn from_directory(p: directory::Platform) -> Platform {
    match p {
        directory::Platform::Telegram => Platform::Telegram,
        directory::Platform::Whatsapp => Platform::Whatsapp,
        directory::Platform::Instagram => Platform::Instagram,
    }
}

/// Whether `s` can name a channel: 1 to 64 of `a-z 0-9 _ -` (it is in URLs, record keys and
/// consumer group names).
pub fn is_valid_channel_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// The key of work for one contact of one channel: `<channel>/<contact id>`. Channel names
/// hold no `/`, so the split is unambiguous.
pub fn delivery_key(channel: &str, contact_id: &str) -> String {
    format!("{channel}/{contact_id}")
}

/// Splits a [`delivery_key`].
pub fn split_delivery_key(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

fn digest_hex(parts: &[&str]) -> String {
    let mut input = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            input.push(0);
        }
        input.extend_from_slice(p.as_bytes());
    }
    let d = ring::digest::digest(&ring::digest::SHA256, &input);
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The user id made for an external contact on its first message: derived from the identity,
/// so processing that message twice (on two nodes, or after a crash) makes one user.
pub fn contact_user_id(platform: Platform, contact_id: &str) -> String {
    format!("x-{}", digest_hex(&[platform.as_str(), contact_id]))
}

/// The conversation a channel opens with a contact.
pub fn contact_conversation_id(channel: &str, contact_id: &str) -> String {
    format!("c-{}", digest_hex(&[channel, contact_id]))
}

/// The message id of an inbound platform message: one per platform id and channel, so a
/// webhook delivered twice makes one message.
pub fn inbound_message_id(channel: &str, platform_message_id: &str) -> String {
    format!("in-{}", digest_hex(&[channel, platform_message_id]))
}

/// Resolves a stored secret: `env:NAME` reads the node's environment, `file:PATH` a file
/// (trailing newline dropped), anything else is the value itself.
pub fn resolve_secret(stored: &str) -> Result<Secret, ConnectorError> {
    if let Some(name) = stored.strip_prefix("env:") {
        return std::env::var(name).map(Secret::new).map_err(|_| {
            ConnectorError::Config(format!("environment variable {name} is not set"))
        });
    }
    if let Some(path) = stored.strip_prefix("file:") {
        return std::fs::read_to_string(path)
            .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
            .map_err(|e| ConnectorError::Config(format!("cannot read {path}: {e}")));
    }
    Ok(Secret::new(stored))
}

/// The connector settings of a stored channel, its secrets resolved on this node.
pub fn settings(
    cfg: &ConnectorsConfig,
    platform: Platform,
    credentials: &[(String, String)],
    webhook_secret: Option<&str>,
    verify_token: Option<&str>,
) -> Result<ChannelSettings, ConnectorError> {
    let mut creds = BTreeMap::new();
    for (k, v) in credentials {
        creds.insert(k.clone(), resolve_secret(v)?);
    }
    Ok(ChannelSettings {
        platform,
        base_url: cfg.base_url(platform).to_string(),
        api_version: cfg.graph_api_version.clone(),
        credentials: creds,
        webhook_secret: webhook_secret.map(resolve_secret).transpose()?,
        verify_token: verify_token.map(resolve_secret).transpose()?,
        timeout: cfg.timeout(),
    })
}

/// This node's connectors, one per channel, made on first use. A channel never changes once
/// created (it is removed and created again), so an entry is valid while its channel's
/// creation time is the same.
pub struct Channels {
    config: ConnectorsConfig,
    /// The platforms' HTTP client, or why there is none (no CA certificates on the system:
    /// every channel is then unavailable, and the node serves everything else).
    http: Result<reqwest::Client, String>,
    cache: Mutex<HashMap<String, Cached>>,
}

/// A channel's connector and the creation time of the channel it was made for.
type Cached = (i64, Arc<dyn Connector>);

impl Channels {
    /// No connectors yet.
    pub fn new(config: ConnectorsConfig) -> Channels {
        let http = reqwest::Client::builder()
            .timeout(config.timeout())
            .connect_timeout(config.timeout())
            .build()
            .map_err(|e| {
                let why = format!(
                    "no HTTP client for the platforms ({}); install the system's CA \
                     certificates or point SSL_CERT_FILE at a bundle, and restart the node",
                    chat4all_connectors::describe_http_error(&e)
                );
                tracing::error!("{why}");
                why
            });
        Channels {
            config,
            http,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ConnectorsConfig {
        &self.config
    }

    /// A connector for settings not stored yet (checking a new channel's credentials).
    pub fn connector_for(
        &self,
        settings: ChannelSettings,
    ) -> Result<Arc<dyn Connector>, ConnectorError> {
        let http = self.http.clone().map_err(ConnectorError::Unavailable)?;
        chat4all_connectors::connector(settings, http)
    }

    /// The connector of a stored channel.
    pub fn connector(&self, channel: &Channel) -> Result<Arc<dyn Connector>, ConnectorError> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((created, c)) = cache.get(&channel.name)
            && *created == channel.created_at_ms
        {
            return Ok(c.clone());
        }
        let s = settings(
            &self.config,
            from_directory(channel.platform),
            &channel.credentials,
            channel.webhook_secret.as_deref(),
            channel.verify_token.as_deref(),
        )?;
        let c = self.connector_for(s)?;
        cache.insert(channel.name.clone(), (channel.created_at_ms, c.clone()));
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_are_stable_valid_and_distinct() {
        let u = contact_user_id(Platform::Telegram, "111");
        assert_eq!(u, contact_user_id(Platform::Telegram, "111"));
        assert_ne!(u, contact_user_id(Platform::Whatsapp, "111"));
        assert!(crate::chat::is_valid_id(&u));
        let c = contact_conversation_id("tg", "111");
        assert_ne!(c, contact_conversation_id("tg", "1110"));
        assert!(crate::chat::is_valid_id(&c));
        // "a"+"b/c" and "a/b"+"c" must not meet: the separator keeps them apart.
        assert_ne!(
            inbound_message_id("a", "b/c"),
            inbound_message_id("a/b", "c")
        );
    }

    #[test]
    fn channel_names_are_url_and_key_safe() {
        assert!(is_valid_channel_name("support-tg_1"));
        assert!(!is_valid_channel_name(""));
        assert!(!is_valid_channel_name("Support"));
        assert!(!is_valid_channel_name("a/b"));
        assert!(!is_valid_channel_name(&"x".repeat(65)));
        assert_eq!(
            split_delivery_key(&delivery_key("wa", "155")),
            Some(("wa", "155"))
        );
    }

    #[test]
    fn secrets_resolve_from_values_env_and_files() {
        assert_eq!(
            resolve_secret("abc").map(|s| s.expose().to_string()).ok(),
            Some("abc".into())
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").expect("write");
        let got = resolve_secret(&format!("file:{}", f.display())).expect("file");
        assert_eq!(got.expose(), "s3cret");
        assert!(resolve_secret("env:CHAT4ALL_TEST_SURELY_UNSET_VAR").is_err());
        assert!(resolve_secret("file:/nonexistent/x").is_err());
    }
}
