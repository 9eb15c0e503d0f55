//! One HTTP call to a platform, and what a transport failure means for it.
//!
//! The rule (reference §4): a failure is retryable only when the request provably did not
//! reach the platform (connect errors); anything after the request may have left us (a
//! timeout, a connection lost mid-answer) is indeterminate for a send and merely unavailable
//! for a read, since reading twice is harmless.

use std::error::Error as _;
use std::time::Duration;

use crate::ConnectorError;

/// Whether a call changes something on the platform: decides what an ambiguous failure means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallKind {
    /// Read-only (getMe, reading an account): any failure is safe to retry.
    Read,
    /// Sends a message: a failure after the request left us may hide a delivered message.
    Send,
}

impl CallKind {
    /// The error for a failure after the request may have been processed.
    pub(crate) fn ambiguous(self, what: String) -> ConnectorError {
        match self {
            CallKind::Send => ConnectorError::Indeterminate(what),
            CallKind::Read => ConnectorError::Unavailable(what),
        }
    }
}

/// A platform's answer, read whole.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub(crate) status: http::StatusCode,
    /// The `Retry-After` header in seconds, when there is one.
    pub(crate) retry_after: Option<Duration>,
    /// The body.
    pub(crate) body: Vec<u8>,
}

impl Answer {
    /// The start of the body, for error messages.
    pub(crate) fn snippet(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let mut s: String = text.chars().take(200).collect();
        if text.chars().nth(200).is_some() {
            s.push('…');
        }
        s
    }
}

/// Sends `request` (its timeout already set) and reads the whole answer. `what` names the call
/// in error messages (never the URL: Telegram's carries the bot token).
pub(crate) async fn execute(
    request: reqwest::RequestBuilder,
    kind: CallKind,
    what: &str,
) -> Result<Answer, ConnectorError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(e, kind, what))?;
    let status = response.status();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response
        .bytes()
        .await
        .map_err(|e| transport_error(e, kind, what))?;
    Ok(Answer {
        status,
        retry_after,
        body: body.to_vec(),
    })
}

/// Classifies a reqwest failure.
fn transport_error(err: reqwest::Error, kind: CallKind, what: &str) -> ConnectorError {
    // The URL may hold a secret (Telegram's bot token): never let it reach a log.
    let err = err.without_url();
    let detail = describe(&err);
    if err.is_builder() {
        ConnectorError::Config(format!("{what}: cannot build the request: {detail}"))
    } else if err.is_connect() {
        // No connection, so no byte of the request left us (a connect timeout lands here too).
        ConnectorError::Unavailable(format!("{what}: cannot connect: {detail}"))
    } else if err.is_timeout() {
        kind.ambiguous(format!("{what}: no answer in time: {detail}"))
    } else {
        kind.ambiguous(format!("{what}: connection lost: {detail}"))
    }
}

/// The error and its causes on one line (reqwest's own message alone is "error sending request").
/// An error about a request may name its URL, which may hold a secret: strip it first
/// (`without_url`).
pub fn describe(err: &reqwest::Error) -> String {
    let mut s = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
