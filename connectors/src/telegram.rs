//! The Telegram Bot API: `POST {base_url}/bot{token}/{method}` with JSON bodies, answers in the
//! `{"ok":…,"result"|"error_code","description","parameters"}` envelope, and webhooks that
//! carry one `Update` each, authenticated by the `X-Telegram-Bot-Api-Secret-Token` header.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::call::{self, Answer, CallKind};
use crate::meta::constant_time_eq;
use crate::{Account, ChannelSettings, Connector, ConnectorError, InboundEvent, Platform, Sent};

mod update;

use update::Chat;

/// The longest text `sendMessage` takes, in characters.
pub const MAX_CHARS: usize = 4096;

/// The header every webhook request carries when `setWebhook` was given a `secret_token`.
pub const SECRET_TOKEN_HEADER: &str = "x-telegram-bot-api-secret-token";

/// A Telegram bot.
#[derive(Debug)]
pub struct Telegram {
    settings: ChannelSettings,
    http: reqwest::Client,
}

impl Telegram {
    /// A client for the bot whose `bot_token` is in `settings`. Nothing is checked here:
    /// [`Connector::verify`] asks Telegram.
    pub fn new(settings: ChannelSettings, http: reqwest::Client) -> Telegram {
        Telegram { settings, http }
    }

    /// Calls `method` with a JSON body and returns its `result`.
    async fn call(
        &self,
        method: &str,
        body: Value,
        kind: CallKind,
    ) -> Result<Value, ConnectorError> {
        let token =
            self.settings.credentials.get("bot_token").ok_or_else(|| {
                ConnectorError::Config("a TELEGRAM channel needs `bot_token`".into())
            })?;
        let url = format!(
            "{}/bot{}/{method}",
            self.settings.base_url.trim_end_matches('/'),
            token.expose()
        );
        let request = self
            .http
            .post(url)
            .timeout(self.settings.timeout)
            .json(&body);
        let answer = call::execute(request, kind, method).await?;
        read_answer(&answer, kind, method)
    }
}

/// The Bot API's answer envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<Value>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Parameters>,
}

/// `ResponseParameters`: why a request failed and what to do.
#[derive(Debug, Default, Deserialize)]
struct Parameters {
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    migrate_to_chat_id: Option<i64>,
}

/// Turns an answer into `result` or a classified error. Telegram's `error_code` mirrors the
/// HTTP status; it and `parameters` are what to branch on, `description` is for people.
fn read_answer(answer: &Answer, kind: CallKind, method: &str) -> Result<Value, ConnectorError> {
    let status = answer.status;
    let Ok(envelope) = serde_json::from_slice::<Envelope>(&answer.body) else {
        let what = format!("{method}: HTTP {status}: {}", answer.snippet());
        return Err(
            if status.is_server_error() || (status.is_success() && kind == CallKind::Send) {
                // A proxy's 502 page, or an accepted send we cannot read: it may have gone out.
                kind.ambiguous(what)
            } else {
                ConnectorError::Protocol(what)
            },
        );
    };
    if envelope.ok {
        return envelope.result.ok_or_else(|| match kind {
            CallKind::Send => {
                ConnectorError::Indeterminate(format!("{method}: ok without a result"))
            }
            CallKind::Read => ConnectorError::Protocol(format!("{method}: ok without a result")),
        });
    }
    let code = envelope
        .error_code
        .unwrap_or_else(|| i64::from(status.as_u16()));
    let mut description = envelope.description.unwrap_or_default();
    let parameters = envelope.parameters.unwrap_or_default();
    Err(match code {
        429 => ConnectorError::RateLimited {
            code,
            description,
            retry_after: parameters
                .retry_after
                .map(Duration::from_secs)
                .or(answer.retry_after),
        },
        // 404 is what Telegram answers for a malformed token (no such bot path).
        401 | 404 => ConnectorError::Unauthorized(format!("{code} {description}")),
        500..=599 => kind.ambiguous(format!("{method}: {code} {description}")),
        _ => {
            if let Some(chat) = parameters.migrate_to_chat_id {
                description.push_str(&format!(" (the group is now chat {chat})"));
            }
            ConnectorError::Rejected { code, description }
        }
    })
}

/// Refuses what Telegram would refuse for its text alone, before any call.
fn check_text(text: &str) -> Result<(), ConnectorError> {
    // Telegram trims the text: whitespace alone is "message text is empty".
    let text = if text.trim().is_empty() { "" } else { text };
    crate::text::check(
        Platform::Telegram,
        text,
        MAX_CHARS,
        crate::text::Measure::Chars,
    )
}

impl Connector for Telegram {
    fn platform(&self) -> Platform {
        Platform::Telegram
    }

    fn verify(&self) -> BoxFuture<'_, Result<Account, ConnectorError>> {
        Box::pin(async move {
            let me = self.call("getMe", json!({}), CallKind::Read).await?;
            let id = me
                .get("id")
                .and_then(Value::as_i64)
                .ok_or_else(|| ConnectorError::Protocol("getMe: no id in the result".into()))?;
            let name = me
                .get("username")
                .and_then(Value::as_str)
                .map(str::to_owned);
            Ok(Account {
                id: id.to_string(),
                name,
            })
        })
    }

    fn split_text(&self, text: &str) -> Vec<String> {
        // A whitespace-only part would be refused as empty, and Telegram would trim it off
        // the message anyway: leaving it out loses nothing a reader sees.
        crate::text::split_chars(text, MAX_CHARS)
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .collect()
    }

    fn send_text<'a>(
        &'a self,
        to: &'a str,
        text: &'a str,
        _callback_data: &'a str,
    ) -> BoxFuture<'a, Result<Sent, ConnectorError>> {
        Box::pin(async move {
            check_text(text)?;
            // Numeric ids go as integers (ids exceed 32 bits: i64); `@channel` as a string.
            let chat_id = to.parse::<i64>().map_or_else(|_| json!(to), |id| json!(id));
            let body = json!({ "chat_id": chat_id, "text": text });
            let result = self.call("sendMessage", body, CallKind::Send).await?;
            let message: MessageRef = serde_json::from_value(result).map_err(|e| {
                // Telegram said ok: the message went out, we just cannot name it.
                ConnectorError::Indeterminate(format!("sendMessage: unreadable result: {e}"))
            })?;
            Ok(Sent {
                remote_id: message.key(),
            })
        })
    }

    fn authenticate_webhook(
        &self,
        headers: &http::HeaderMap,
        _body: &[u8],
    ) -> Result<(), ConnectorError> {
        let secret = self
            .settings
            .webhook_secret
            .as_ref()
            .ok_or(ConnectorError::BadSignature)?;
        let got = headers
            .get(SECRET_TOKEN_HEADER)
            .ok_or(ConnectorError::BadSignature)?;
        if constant_time_eq(got.as_bytes(), secret.expose().as_bytes()) {
            Ok(())
        } else {
            Err(ConnectorError::BadSignature)
        }
    }

    fn handshake(&self, _query: &BTreeMap<String, String>) -> Result<String, ConnectorError> {
        Err(ConnectorError::HandshakeRefused)
    }

    fn parse_webhook(&self, body: &[u8]) -> Result<Vec<InboundEvent>, ConnectorError> {
        update::parse(body)
    }
}

/// A sent message, named by its chat and id.
#[derive(Debug, Deserialize)]
struct MessageRef {
    message_id: i64,
    chat: Chat,
}

impl MessageRef {
    /// `chat_id:message_id`: message ids are unique only within a chat.
    fn key(&self) -> String {
        format!("{}:{}", self.chat.id, self.message_id)
    }
}
