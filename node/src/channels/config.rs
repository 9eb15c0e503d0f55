//! `[connectors]`: where the platforms are and how hard to try them.

use std::time::Duration;

use serde::Deserialize;

/// How the node talks to the messaging platforms. Secrets are never here: a channel's
/// credentials are given when it is created (`POST /v1/channels`), as values or as `env:NAME`
/// / `file:PATH` references each node resolves.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConnectorsConfig {
    /// The Telegram Bot API (a local Bot API server, or a fake in tests).
    #[serde(default = "default_telegram_url")]
    pub telegram_base_url: String,
    /// The Graph API host for WhatsApp.
    #[serde(default = "default_graph_url")]
    pub whatsapp_base_url: String,
    /// The Graph API host for Instagram (`https://graph.facebook.com` for the Messenger
    /// Platform flavour).
    #[serde(default = "default_instagram_url")]
    pub instagram_base_url: String,
    /// The Graph API version.
    #[serde(default = "default_graph_version")]
    pub graph_api_version: String,
    /// How long one platform call may take, in ms.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts per delivery before it goes to `chat.deliveries.dlq` (FR-008: 3).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The first retry's wait, in ms; each next one doubles, with full jitter.
    #[serde(default = "default_backoff_base_ms")]
    pub backoff_base_ms: u64,
    /// The longest wait between attempts, in ms (a platform's `retry_after` may be longer and
    /// is honoured).
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Consecutive retryable failures that open a channel's circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one trial call, in ms.
    #[serde(default = "default_breaker_open_ms")]
    pub breaker_open_ms: u64,
    /// Sends per second per channel and node (a token bucket). Unset: the platform's own
    /// limit (Telegram about 30/s in bulk, WhatsApp 80/s per number by default, Instagram
    /// 300/s for text).
    #[serde(default)]
    pub rate_per_s: Option<u32>,
}

fn default_telegram_url() -> String {
    chat4all_connectors::Platform::Telegram
        .default_base_url()
        .into()
}

fn default_graph_url() -> String {
    chat4all_connectors::Platform::Whatsapp
        .default_base_url()
        .into()
}

fn default_instagram_url() -> String {
    chat4all_connectors::Platform::Instagram
        .default_base_url()
        .into()
}

fn default_graph_version() -> String {
    "v23.0".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

fn default_max_attempts() -> u32 {
    3
}

fn default_backoff_base_ms() -> u64 {
    1_000
}

fn default_backoff_max_ms() -> u64 {
    60_000
}

fn default_breaker_failures() -> u32 {
    5
}

fn default_breaker_open_ms() -> u64 {
    30_000
}

impl Default for ConnectorsConfig {
    fn default() -> Self {
        ConnectorsConfig {
            telegram_base_url: default_telegram_url(),
            whatsapp_base_url: default_graph_url(),
            instagram_base_url: default_instagram_url(),
            graph_api_version: default_graph_version(),
            timeout_ms: default_timeout_ms(),
            max_attempts: default_max_attempts(),
            backoff_base_ms: default_backoff_base_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            breaker_failures: default_breaker_failures(),
            breaker_open_ms: default_breaker_open_ms(),
            rate_per_s: None,
        }
    }
}

impl ConnectorsConfig {
    /// The base URL of `platform`'s API, without a trailing slash.
    pub fn base_url(&self, platform: chat4all_connectors::Platform) -> &str {
        use chat4all_connectors::Platform;
        let url = match platform {
            Platform::Telegram => &self.telegram_base_url,
            Platform::Whatsapp => &self.whatsapp_base_url,
            Platform::Instagram => &self.instagram_base_url,
        };
        url.trim_end_matches('/')
    }

    /// Sends per second a channel of `platform` is paced to.
    pub fn rate_per_s(&self, platform: chat4all_connectors::Platform) -> u32 {
        use chat4all_connectors::Platform;
        self.rate_per_s.unwrap_or(match platform {
            Platform::Telegram => 30,
            Platform::Whatsapp => 80,
            Platform::Instagram => 300,
        })
    }

    /// One platform call's time limit.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}
