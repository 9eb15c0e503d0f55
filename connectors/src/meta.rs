//! What WhatsApp and Instagram share as Meta Graph APIs: the error envelope and its
//! classification by `code`, the `X-Hub-Signature-256` check, the `hub.*` subscription
//! handshake; and the constant-time comparison and hex encoding those need.

use std::collections::BTreeMap;

use ring::hmac;
use serde::Deserialize;
use serde_json::Value;

use crate::call::{self, Answer, CallKind};
use crate::{ChannelSettings, ConnectorError, Secret};

/// A Graph API client for one object (a WhatsApp phone number, an Instagram account): the
/// settings, URLs, token and answers that WhatsApp and Instagram handle alike.
#[derive(Debug)]
pub(crate) struct Graph {
    /// The channel's settings.
    pub(crate) settings: ChannelSettings,
    http: reqwest::Client,
    /// The credential naming the object (`phone_number_id`, `ig_id`).
    object: &'static str,
}

impl Graph {
    /// A client for the object named by the credential `object`.
    pub(crate) fn new(
        settings: ChannelSettings,
        http: reqwest::Client,
        object: &'static str,
    ) -> Graph {
        Graph {
            settings,
            http,
            object,
        }
    }

    /// A credential, or the configuration error naming it.
    pub(crate) fn credential(&self, field: &str) -> Result<&str, ConnectorError> {
        self.settings
            .credentials
            .get(field)
            .map(|s| s.expose())
            .ok_or_else(|| {
                ConnectorError::Config(format!(
                    "this {} channel needs `{field}`",
                    self.settings.platform
                ))
            })
    }

    /// `{base_url}/{version}/{object id}{suffix}`.
    fn url(&self, suffix: &str) -> Result<String, ConnectorError> {
        Ok(format!(
            "{}/{}/{}{suffix}",
            self.settings.base_url.trim_end_matches('/'),
            self.settings.api_version,
            self.credential(self.object)?
        ))
    }

    /// Sends `request` with the token and reads the Graph answer.
    async fn call(
        &self,
        request: reqwest::RequestBuilder,
        kind: CallKind,
        what: &str,
    ) -> Result<Value, ConnectorError> {
        let request = request
            .bearer_auth(self.credential("access_token")?)
            .timeout(self.settings.timeout);
        let answer = call::execute(request, kind, what).await?;
        read_answer(&answer, kind, what)
    }

    /// `GET` of the object (`suffix` holds the query): a read.
    pub(crate) async fn get(&self, suffix: &str, what: &str) -> Result<Value, ConnectorError> {
        // reqwest's `query` needs a feature we do without; our values need no escaping.
        let request = self.http.get(self.url(suffix)?);
        self.call(request, CallKind::Read, what).await
    }

    /// `POST {object}/messages` with `body`: a send.
    pub(crate) async fn post_message(&self, body: &Value) -> Result<Value, ConnectorError> {
        let request = self.http.post(self.url("/messages")?).json(body);
        self.call(request, CallKind::Send, "send").await
    }

    /// Checks a webhook's `X-Hub-Signature-256` with the app secret.
    pub(crate) fn authenticate(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<(), ConnectorError> {
        verify_signature(self.settings.webhook_secret.as_ref(), headers, body)
    }

    /// Answers the subscription handshake with the verify token.
    pub(crate) fn handshake(
        &self,
        query: &BTreeMap<String, String>,
    ) -> Result<String, ConnectorError> {
        handshake(self.settings.verify_token.as_ref(), query)
    }
}

/// The header carrying `sha256=<hex HMAC-SHA256(app secret, raw body)>`.
pub(crate) const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Graph's `{"error":{...}}` envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: GraphError,
}

/// One Graph error. `error_subcode` is deprecated (absent from v16.0) and only logged.
#[derive(Debug, Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    code: i64,
    #[serde(default)]
    error_subcode: Option<i64>,
    #[serde(default)]
    error_data: Option<Value>,
}

impl GraphError {
    /// The message, the subcode and `error_data.details`, for logs.
    fn description(&self) -> String {
        let mut s = self.message.clone();
        if let Some(sub) = self.error_subcode {
            s.push_str(&format!(" (subcode {sub})"));
        }
        let details = self
            .error_data
            .as_ref()
            .and_then(|d| d.get("details"))
            .and_then(Value::as_str);
        if let Some(details) = details {
            s.push_str(&format!(": {details}"));
        }
        s
    }
}

/// Classifies a Graph error by its `code` (never by HTTP status alone: Meta answers most errors
/// with 400, whatever they mean). `retry_after` comes from the `Retry-After` header.
pub(crate) fn classify(
    code: i64,
    description: String,
    retry_after: Option<std::time::Duration>,
    kind: CallKind,
) -> ConnectorError {
    match code {
        // Application, WABA, throughput and pair rate limits: refused, so not processed.
        4 | 613 | 80007 | 130429 | 131056 => ConnectorError::RateLimited {
            code,
            description,
            retry_after,
        },
        // Unknown or temporary errors Meta documents as "retry later", and a number in a
        // throughput upgrade.
        1 | 2 | 1200 | 131057 => ConnectorError::Unavailable(format!("code {code}: {description}")),
        0 | 190 => ConnectorError::Unauthorized(format!("code {code}: {description}")),
        // "Something went wrong": on a send the message may have gone out.
        131000 => kind.ambiguous(format!("code {code}: {description}")),
        _ => ConnectorError::Rejected { code, description },
    }
}

/// Reads a Graph answer: the JSON of a success, or the classified error.
pub(crate) fn read_answer(
    answer: &Answer,
    kind: CallKind,
    what: &str,
) -> Result<Value, ConnectorError> {
    let json: Option<Value> = serde_json::from_slice(&answer.body).ok();
    if let Some(envelope) = json
        .as_ref()
        .filter(|v| v.get("error").is_some())
        .and_then(|v| Envelope::deserialize(v).ok())
    {
        let e = envelope.error;
        return Err(classify(e.code, e.description(), answer.retry_after, kind));
    }
    let status = answer.status;
    match json {
        Some(value) if status.is_success() => Ok(value),
        // Accepted but unreadable: a send may have gone out.
        _ if status.is_success() => match kind {
            CallKind::Send => Err(ConnectorError::Indeterminate(format!(
                "{what}: HTTP {status} with a body that is not JSON: {}",
                answer.snippet()
            ))),
            CallKind::Read => Err(ConnectorError::Protocol(format!(
                "{what}: HTTP {status} with a body that is not JSON: {}",
                answer.snippet()
            ))),
        },
        // A gateway's 429 without Graph's envelope still means "refused, come back later".
        _ if status == http::StatusCode::TOO_MANY_REQUESTS => Err(ConnectorError::RateLimited {
            code: 429,
            description: format!("{what}: HTTP 429: {}", answer.snippet()),
            retry_after: answer.retry_after,
        }),
        _ if status.is_server_error() => {
            Err(kind.ambiguous(format!("{what}: HTTP {status}: {}", answer.snippet())))
        }
        _ => Err(ConnectorError::Protocol(format!(
            "{what}: HTTP {status} without a Graph error: {}",
            answer.snippet()
        ))),
    }
}

/// Checks `X-Hub-Signature-256` over the raw body with the app secret, in constant time
/// (`ring::hmac::verify`). No secret configured: refused, never accepted unchecked.
pub(crate) fn verify_signature(
    app_secret: Option<&Secret>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), ConnectorError> {
    let secret = app_secret.ok_or(ConnectorError::BadSignature)?;
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or(ConnectorError::BadSignature)?;
    let hex_tag = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(ConnectorError::BadSignature)?;
    let tag = unhex(hex_tag).ok_or(ConnectorError::BadSignature)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes());
    hmac::verify(&key, body, &tag).map_err(|_| ConnectorError::BadSignature)
}

/// `sha256=<hex>` for `body` signed with `app_secret`, as Meta sends it.
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
pub(crate) fn signature(app_secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, app_secret.as_bytes());
    format!("sha256={}", hex(hmac::sign(&key, body).as_ref()))
}

/// The subscription handshake: `hub.mode=subscribe` and our `hub.verify_token` give back
/// `hub.challenge`.
pub(crate) fn handshake(
    verify_token: Option<&Secret>,
    query: &BTreeMap<String, String>,
) -> Result<String, ConnectorError> {
    let expected = verify_token.ok_or(ConnectorError::HandshakeRefused)?;
    let mode_ok = query.get("hub.mode").is_some_and(|m| m == "subscribe");
    let token_ok = query
        .get("hub.verify_token")
        .is_some_and(|t| constant_time_eq(t.as_bytes(), expected.expose().as_bytes()));
    match query.get("hub.challenge") {
        Some(challenge) if mode_ok && token_ok => Ok(challenge.clone()),
        _ => Err(ConnectorError::HandshakeRefused),
    }
}

/// Compares two secrets in time independent of where they differ (only their lengths may
/// leak). ring's own helper is deprecated for outside use, hence this fold.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Lower-case hex of `bytes`.
#[cfg_attr(not(any(test, feature = "testing")), allow(dead_code))]
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Decodes hex (either case); `None` for an odd length or a non-hex digit.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? << 4) | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const VECTOR: &str = "0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914";

    fn headers(sig: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(SIGNATURE_HEADER, sig.parse().expect("header value"));
        h
    }

    #[test]
    fn hmac_test_vector() {
        assert_eq!(signature("secret", b"test"), format!("sha256={VECTOR}"));
        let secret = Secret::new("secret");
        verify_signature(
            Some(&secret),
            &headers(&format!("sha256={VECTOR}")),
            b"test",
        )
        .expect("the reference vector verifies");
        // Upper-case hex is the same signature.
        let upper = format!("sha256={}", VECTOR.to_uppercase());
        verify_signature(Some(&secret), &headers(&upper), b"test").expect("upper-case hex");
    }

    #[test]
    fn wrong_missing_or_malformed_signature_is_refused() {
        let secret = Secret::new("secret");
        let cases = [
            format!("sha256={VECTOR}"), // right signature, other body below
            format!("sha1={VECTOR}"),
            "sha256=zz".to_owned(),
            format!("sha256={}", &VECTOR[1..]),
        ];
        for (i, sig) in cases.iter().enumerate() {
            let body: &[u8] = if i == 0 { b"tesT" } else { b"test" };
            let r = verify_signature(Some(&secret), &headers(sig), body);
            assert!(matches!(r, Err(ConnectorError::BadSignature)), "{sig}");
        }
        let r = verify_signature(Some(&secret), &http::HeaderMap::new(), b"test");
        assert!(matches!(r, Err(ConnectorError::BadSignature)));
        let r = verify_signature(None, &headers(&format!("sha256={VECTOR}")), b"test");
        assert!(
            matches!(r, Err(ConnectorError::BadSignature)),
            "no secret: refused"
        );
    }

    #[test]
    fn handshake_answers_the_challenge_only_to_our_token() {
        let token = Secret::new("verify-test");
        let q = |mode: &str, tok: &str| {
            BTreeMap::from([
                ("hub.mode".to_owned(), mode.to_owned()),
                ("hub.verify_token".to_owned(), tok.to_owned()),
                ("hub.challenge".to_owned(), "1158201444".to_owned()),
            ])
        };
        assert_eq!(
            handshake(Some(&token), &q("subscribe", "verify-test")).expect("accepted"),
            "1158201444"
        );
        for query in [
            q("subscribe", "nope"),
            q("unsubscribe", "verify-test"),
            BTreeMap::new(),
        ] {
            assert!(matches!(
                handshake(Some(&token), &query),
                Err(ConnectorError::HandshakeRefused)
            ));
        }
        assert!(handshake(None, &q("subscribe", "verify-test")).is_err());
    }

    #[test]
    fn codes_classify_as_the_reference_says() {
        let c = |code| classify(code, String::new(), None, CallKind::Send);
        for code in [4, 613, 80007, 130429, 131056] {
            assert!(
                matches!(c(code), ConnectorError::RateLimited { .. }),
                "{code}"
            );
        }
        for code in [1, 2, 1200, 131057] {
            assert!(matches!(c(code), ConnectorError::Unavailable(_)), "{code}");
        }
        for code in [0, 190] {
            assert!(matches!(c(code), ConnectorError::Unauthorized(_)), "{code}");
        }
        assert!(c(131000).is_indeterminate());
        let read = classify(131000, String::new(), None, CallKind::Read);
        assert!(read.is_retryable());
        for code in [100, 131047, 131026, 131051, 368, 131031, 131048, 551, 10] {
            assert!(matches!(c(code), ConnectorError::Rejected { .. }), "{code}");
        }
    }

    #[test]
    fn hex_round_trip() {
        let bytes = [0u8, 1, 0x7f, 0x80, 0xff];
        assert_eq!(hex(&bytes), "00017f80ff");
        assert_eq!(unhex("00017F80ff").expect("hex"), bytes);
        assert!(unhex("0").is_none());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
