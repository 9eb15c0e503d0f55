//! Fake Telegram, WhatsApp and Instagram servers for tests (feature `testing`): plain HTTP on
//! 127.0.0.1 with the real paths, bodies, error envelopes and rate-limit answers, so that a
//! connector (or a whole node) pointed at [`FakePlatform::base_url`] cannot tell the difference
//! for what it uses.
//!
//! ```text
//!   test ──fail_next / stop / restart──▶ FakePlatform ◀──HTTP── connector under test
//!   test ◀──sent / wait_sent / requests── FakePlatform ──post_status (signed webhook)──▶ node
//! ```
//!
//! A fake checks credentials like the platform ([`TELEGRAM_BOT_TOKEN`], [`WHATSAPP_ACCESS_TOKEN`]
//! …; anything else is refused the platform's way), records every send it accepts, and plays
//! scripted [`FakeFailure`]s, one per send request.

mod fake_graph;
mod fake_telegram;
mod payloads;
mod server;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::task::JoinHandle;

pub use payloads::{
    WABA_ID, instagram_message, instagram_read, meta_signature, telegram_update, whatsapp_message,
    whatsapp_status,
};

use crate::{ChannelSettings, Platform, Secret};
use server::Shared;

/// The fake Telegram bot's token.
pub const TELEGRAM_BOT_TOKEN: &str = "123456:TESTTOKEN";
/// The fake WhatsApp access token.
pub const WHATSAPP_ACCESS_TOKEN: &str = "EAAtest";
/// The fake WhatsApp phone number id.
pub const WHATSAPP_PHONE_NUMBER_ID: &str = "106540352242922";
/// The fake Instagram access token.
pub const INSTAGRAM_ACCESS_TOKEN: &str = "IGtest";
/// The fake Instagram professional account id.
pub const INSTAGRAM_ID: &str = "17841400000000";
/// The Telegram `secret_token` and the Meta app secret of the fake's webhooks.
pub const WEBHOOK_SECRET: &str = "whsec-test";
/// The Meta `hub.verify_token` of the fake's subscriptions.
pub const VERIFY_TOKEN: &str = "verify-test";
/// The Graph API version of [`FakePlatform::settings`].
pub const API_VERSION: &str = "v23.0";

/// A send the fake accepted (it answered success, or was told to drop the answer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeSent {
    /// The recipient as sent: Telegram `chat_id` (`"111"`, `"@channel"`), WhatsApp `to`,
    /// Instagram `recipient.id`.
    pub to: String,
    /// The text as sent.
    pub text: String,
    /// WhatsApp's `biz_opaque_callback_data`, when sent.
    pub callback_data: Option<String>,
    /// The id the fake gave the message (what the connector returns as `Sent::remote_id`).
    pub remote_id: String,
    /// The JSON body exactly as received.
    pub body: serde_json::Value,
}

/// A scripted answer to one send request, consumed in order by the send requests that pass
/// the credential check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FakeFailure {
    /// Refused for a rate limit, nothing recorded: Telegram 429 with `parameters.retry_after`;
    /// WhatsApp code 130429, Instagram code 4, both HTTP 429 with `Retry-After`.
    RateLimited {
        /// The wait asked for, in seconds.
        retry_after_s: u64,
    },
    /// HTTP 500, nothing recorded: Telegram's JSON `Internal Server Error`; WhatsApp code
    /// 131000 "Something went wrong"; Instagram an HTML 500 page (no Graph envelope).
    ServerError,
    /// Refused with this platform error code, nothing recorded (Telegram: the HTTP status and
    /// `error_code`; Graph: `error.code`, HTTP 401 for 0/190, 5xx for 1/2/131000, else 400).
    Reject {
        /// The error code.
        code: i64,
    },
    /// The send is validated and recorded as delivered, but no answer comes until the fake
    /// stops (or a minute passes); then the connection is cut. The client sees its timeout.
    AcceptThenDrop,
}

/// One fake platform server. Dropping it shuts the server down.
#[derive(Debug)]
pub struct FakePlatform {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The server task while up; `None` while stopped.
    server: Mutex<Option<JoinHandle<()>>>,
    /// Posts webhooks to the code under test (plain HTTP; TLS is never used).
    http: reqwest::Client,
}

impl FakePlatform {
    /// Starts a fake of `platform` on 127.0.0.1 and a free port.
    ///
    /// # Panics
    /// When no loopback port can be bound (a broken test machine).
    pub async fn start(platform: Platform) -> FakePlatform {
        let shared = Arc::new(Shared::new(platform));
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let (addr, task) = server::serve(&shared, any_port, router(&shared))
            .unwrap_or_else(|e| panic!("the fake {platform} cannot bind 127.0.0.1: {e}"));
        FakePlatform {
            shared,
            addr,
            server: Mutex::new(Some(task)),
            http: webhook_client(),
        }
    }

    /// The platform this fake plays.
    pub fn platform(&self) -> Platform {
        self.shared.platform
    }

    /// `http://127.0.0.1:<port>`: the `base_url` of a channel on this fake.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Channel settings with this fake's valid credentials, [`WEBHOOK_SECRET`],
    /// [`VERIFY_TOKEN`], [`API_VERSION`] and a 5 s timeout.
    pub fn settings(&self) -> ChannelSettings {
        let credentials: &[(&str, &str)] = match self.platform() {
            Platform::Telegram => &[("bot_token", TELEGRAM_BOT_TOKEN)],
            Platform::Whatsapp => &[
                ("access_token", WHATSAPP_ACCESS_TOKEN),
                ("phone_number_id", WHATSAPP_PHONE_NUMBER_ID),
            ],
            Platform::Instagram => &[
                ("access_token", INSTAGRAM_ACCESS_TOKEN),
                ("ig_id", INSTAGRAM_ID),
            ],
        };
        ChannelSettings {
            platform: self.platform(),
            base_url: self.base_url(),
            api_version: API_VERSION.to_owned(),
            credentials: credentials
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Secret::new(*v)))
                .collect::<BTreeMap<_, _>>(),
            webhook_secret: Some(Secret::new(WEBHOOK_SECRET)),
            verify_token: Some(Secret::new(VERIFY_TOKEN)),
            timeout: Duration::from_secs(5),
        }
    }

    /// Every send accepted so far, oldest first.
    pub fn sent(&self) -> Vec<FakeSent> {
        self.shared.sent()
    }

    /// Waits until at least `n` sends are accepted, or `timeout` passes; returns them all
    /// (fewer than `n` on timeout).
    pub async fn wait_sent(&self, n: usize, timeout: Duration) -> Vec<FakeSent> {
        self.shared.wait_sent(n, timeout).await
    }

    /// Scripts the answers to the next send requests, after any still queued.
    pub fn fail_next(&self, failures: Vec<FakeFailure>) {
        self.shared.push_failures(failures);
    }

    /// Send requests seen, accepted or refused (reads like `getMe` are not counted).
    pub fn requests(&self) -> usize {
        self.shared.requests()
    }

    /// Stops the server: the port is closed (new connections are refused), idle connections
    /// are closed, held answers are cut. Returns once every connection is gone. Recorded
    /// sends and scripted failures are kept.
    pub async fn stop(&self) {
        let task = self
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(task) = task else { return };
        self.shared.down.send_replace(true);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "fake platform server task failed");
        }
    }

    /// Serves again on the same port after [`FakePlatform::stop`]; nothing when already up.
    ///
    /// # Panics
    /// When the port was taken by something else in between.
    pub async fn restart(&self) {
        let mut server = self.server.lock().unwrap_or_else(PoisonError::into_inner);
        if server.is_some() {
            return;
        }
        self.shared.down.send_replace(false);
        let (_, task) = server::serve(&self.shared, self.addr, router(&self.shared))
            .unwrap_or_else(|e| panic!("the fake cannot bind {} again: {e}", self.addr));
        *server = Some(task);
    }

    /// Posts `body` to `webhook_url` as this platform would: with the Telegram secret token
    /// header, or signed with [`WEBHOOK_SECRET`] in `X-Hub-Signature-256`. Returns the status.
    pub async fn post_webhook(
        &self,
        webhook_url: &str,
        body: Vec<u8>,
    ) -> reqwest::Result<reqwest::StatusCode> {
        let request = self
            .http
            .post(webhook_url)
            .header(http::header::CONTENT_TYPE, "application/json");
        let request = match self.platform() {
            Platform::Telegram => {
                request.header(crate::telegram::SECRET_TOKEN_HEADER, WEBHOOK_SECRET)
            }
            _ => request.header(
                crate::meta::SIGNATURE_HEADER,
                meta_signature(WEBHOOK_SECRET, &body),
            ),
        };
        Ok(request.body(body).send().await?.status())
    }

    /// WhatsApp: posts a signed status webhook (`sent`, `delivered`, `read`, `failed`) for the
    /// accepted send `remote_id`, to its recipient and with its callback data, dated now.
    ///
    /// # Panics
    /// When this fake is not WhatsApp or never accepted `remote_id` (a bug in the test).
    pub async fn post_status(
        &self,
        webhook_url: &str,
        remote_id: &str,
        status: &str,
    ) -> reqwest::Result<reqwest::StatusCode> {
        assert_eq!(
            self.platform(),
            Platform::Whatsapp,
            "post_status is WhatsApp's"
        );
        let sent = self.accepted(remote_id);
        let body = whatsapp_status(
            WHATSAPP_PHONE_NUMBER_ID,
            remote_id,
            status,
            &sent.to,
            sent.callback_data.as_deref(),
            server::now_s(),
        );
        self.post_webhook(webhook_url, body).await
    }

    /// Instagram: posts a signed `messaging_seen` webhook: the recipient of the accepted send
    /// `remote_id` read it, now.
    ///
    /// # Panics
    /// When this fake is not Instagram or never accepted `remote_id` (a bug in the test).
    pub async fn post_instagram_read(
        &self,
        webhook_url: &str,
        remote_id: &str,
    ) -> reqwest::Result<reqwest::StatusCode> {
        assert_eq!(
            self.platform(),
            Platform::Instagram,
            "post_instagram_read is Instagram's"
        );
        let sent = self.accepted(remote_id);
        let body = instagram_read(INSTAGRAM_ID, &sent.to, remote_id, server::now_ms());
        self.post_webhook(webhook_url, body).await
    }

    fn accepted(&self, remote_id: &str) -> FakeSent {
        self.shared
            .find_sent(remote_id)
            .unwrap_or_else(|| panic!("the fake never accepted a send with id {remote_id}"))
    }
}

impl Drop for FakePlatform {
    fn drop(&mut self) {
        // The server task ends on its own once it sees this.
        self.shared.down.send_replace(true);
    }
}

/// The routes of `shared.platform`.
///
/// Every answer says `Connection: close`, so a client never keeps an idle connection to the
/// fake. With keep-alive, a request right after [`FakePlatform::stop`] could be written on a
/// pooled connection the client has not yet seen closed (hyper retries only when it notices
/// before writing) and fail as a lost connection, for a send indeterminate, instead of being
/// refused: "stopped" must mean refused by construction, not by timing.
fn router(shared: &Arc<Shared>) -> axum::Router {
    let routes = match shared.platform {
        Platform::Telegram => fake_telegram::router(Arc::clone(shared)),
        Platform::Whatsapp | Platform::Instagram => fake_graph::router(Arc::clone(shared)),
    };
    routes.layer(axum::middleware::map_response(close_connection))
}

async fn close_connection(mut response: axum::response::Response) -> axum::response::Response {
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    response
}

/// A reqwest client for plain-HTTP webhooks. reqwest is built without a default TLS crypto
/// provider; giving it a TLS configuration of its own (ring, no roots: it never makes a TLS
/// connection) keeps the fake from installing a process-wide provider behind a test's back.
fn webhook_client() -> reqwest::Client {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    let built = match tls {
        Ok(tls) => builder.tls_backend_preconfigured(tls).build(),
        Err(e) => panic!("ring supports TLS 1.2 and 1.3: {e}"),
    };
    built.unwrap_or_else(|e| panic!("a plain reqwest client builds: {e}"))
}
