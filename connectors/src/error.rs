//! The one error type of the crate, with the classification the delivery workers act on.

use std::time::Duration;

/// What went wrong talking to a platform or reading its webhook.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// The platform refused the call because of a rate limit (Telegram 429, Meta 4, 613,
    /// 80007, 130429, 131056). The request was not processed: safe to retry after the wait.
    #[error("rate limited by the platform (code {code}): {description}")]
    RateLimited {
        /// The platform's error code.
        code: i64,
        /// The platform's description, for logs.
        description: String,
        /// How long the platform asks us to wait (`retry_after`, `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The request provably did not reach the platform or was refused as temporary:
    /// connection refused, DNS or connect failure, Meta 1, 2, 1200, 131057. Safe to retry.
    #[error("platform unavailable: {0}")]
    Unavailable(String),
    /// The request may have been processed: a timeout after the request was sent, a
    /// connection lost mid-response, a 5xx answer to a send. Never re-sent blindly.
    #[error("outcome unknown: {0}")]
    Indeterminate(String),
    /// A definite rejection (bad recipient, blocked, outside the 24-hour window, invalid
    /// parameter). Retrying cannot help.
    #[error("rejected by the platform (code {code}): {description}")]
    Rejected {
        /// The platform's error code.
        code: i64,
        /// The platform's description.
        description: String,
    },
    /// The platform refused the credentials (Telegram 401, Meta 0 and 190).
    #[error("the platform refused the credentials: {0}")]
    Unauthorized(String),
    /// A text part is over the platform's limit.
    #[error("the text is {len} {unit} long; {platform} takes at most {max}")]
    TooLong {
        /// The platform.
        platform: &'static str,
        /// The part's length.
        len: usize,
        /// The limit.
        max: usize,
        /// `characters` or `bytes`.
        unit: &'static str,
    },
    /// A webhook request whose secret token or signature is missing or wrong.
    #[error("the webhook signature or secret token is missing or wrong")]
    BadSignature,
    /// A webhook body that is not the platform's JSON.
    #[error("the webhook body is not a valid payload: {0}")]
    BadPayload(String),
    /// A subscription handshake with the wrong mode or verify token.
    #[error("the webhook handshake was refused")]
    HandshakeRefused,
    /// The platform answered something this client cannot read.
    #[error("unexpected answer from the platform: {0}")]
    Protocol(String),
    /// The channel's settings are incomplete or invalid.
    #[error("channel configuration: {0}")]
    Config(String),
}

impl ConnectorError {
    /// Whether the same call may be made again without risk of a duplicate.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. } | ConnectorError::Unavailable(_)
        )
    }

    /// Whether the platform may have processed the call although we saw no success.
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ConnectorError::Indeterminate(_))
    }

    /// How long the platform asked us to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A stable upper-snake code.
    pub fn code(&self) -> &'static str {
        match self {
            ConnectorError::RateLimited { .. } => "PLATFORM_RATE_LIMITED",
            ConnectorError::Unavailable(_) => "PLATFORM_UNAVAILABLE",
            ConnectorError::Indeterminate(_) => "OUTCOME_UNKNOWN",
            ConnectorError::Rejected { .. } => "PLATFORM_REJECTED",
            ConnectorError::Unauthorized(_) => "PLATFORM_UNAUTHORIZED",
            ConnectorError::TooLong { .. } => "TEXT_TOO_LONG",
            ConnectorError::BadSignature => "BAD_SIGNATURE",
            ConnectorError::BadPayload(_) => "BAD_PAYLOAD",
            ConnectorError::HandshakeRefused => "HANDSHAKE_REFUSED",
            ConnectorError::Protocol(_) => "PLATFORM_PROTOCOL",
            ConnectorError::Config(_) => "CHANNEL_CONFIG",
        }
    }
}
