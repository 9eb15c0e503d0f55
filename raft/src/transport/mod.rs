//! Node-to-node RPC over QUIC with mutual TLS: one request and one response per bidirectional
//! stream, one connection per peer, many streams in flight on it (no head-of-line blocking
//! between Raft groups).
//!
//! ```text
//! request stream:  u32 BE header length │ bincode RpcHeader │ body ........ FIN
//! response stream: status u8 (0 ok, 1 refused) │ body (ok) or UTF-8 reason (refused) FIN
//! ```
//!
//! Error classes matter to callers: [`TransportError::Connect`] means the request surely did
//! not reach the peer's handler (it was never completely sent), every other failure after
//! sending leaves the outcome unknown.

mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::certs::{self, NODE_SERVER_NAME, TlsFiles};

/// Bumped whenever the framing or a message shape changes incompatibly.
pub const PROTOCOL_VERSION: u16 = 1;

/// The largest request or response accepted (a full partition snapshot travels in one message).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// Headers are small; anything larger is garbage.
const MAX_HEADER_BYTES: u32 = 1024;

/// What an RPC asks for.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcKind {
    /// Raft AppendEntries (also heartbeats).
    AppendEntries,
    /// Raft RequestVote.
    Vote,
    /// Raft InstallSnapshot, the whole snapshot in one message.
    FullSnapshot,
    /// A client request forwarded to the node that can serve it.
    Forward,
}

/// The header in front of every request.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpcHeader {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u16,
    /// The Raft group addressed.
    pub group: u64,
    /// What is asked.
    pub kind: RpcKind,
    /// How long the sender waits for the answer.
    pub deadline_ms: u32,
}

/// Serves incoming requests: given the header and body, returns the response body.
pub trait RpcHandler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, header: RpcHeader, body: Bytes) -> BoxFuture<'static, Bytes>;
}

/// Sends requests to peers. [`Transport`] does it over QUIC; tests may route in memory.
pub trait RpcClient: Send + Sync + 'static {
    /// Sends one request to `addr` and waits up to `deadline` for its response body.
    fn call(
        &self,
        addr: SocketAddr,
        header: RpcHeader,
        body: Bytes,
        deadline: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>>;
}

impl RpcClient for Transport {
    fn call(
        &self,
        addr: SocketAddr,
        header: RpcHeader,
        body: Bytes,
        deadline: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(Transport::call(self, addr, header, body, deadline))
    }
}

/// How a node's transport is set up.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// The UDP address to listen on.
    pub bind: SocketAddr,
    /// The cluster CA and this node's certificate.
    pub tls: TlsFiles,
    /// The largest request or response accepted.
    pub max_message_bytes: usize,
}

/// Transport failures.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint could not be set up.
    #[error("transport setup: {0}")]
    Setup(String),
    /// The request was not delivered: no connection, or it broke before the request was sent.
    #[error("connect: {0}")]
    Connect(String),
    /// The stream broke after the request was sent: the peer may have handled it.
    #[error("stream: {0}")]
    Stream(String),
    /// No answer before the deadline, after the request was sent.
    #[error("no answer before the deadline")]
    Timeout,
    /// The peer refused the request (bad header, wrong version, too large).
    #[error("peer refused: {0}")]
    Refused(String),
    /// A message over the size limit.
    #[error("message of {size} bytes is over the {max} byte limit")]
    TooLarge {
        /// The size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// This node's transport is shut down.
    #[error("transport closed")]
    Closed,
    /// Certificates could not be loaded.
    #[error(transparent)]
    Cert(#[from] certs::CertError),
}

impl TransportError {
    /// A stable upper-snake code.
    pub fn code(&self) -> &'static str {
        match self {
            TransportError::Setup(_) => "TRANSPORT_SETUP",
            TransportError::Connect(_) => "PEER_UNREACHABLE",
            TransportError::Stream(_) => "STREAM_BROKEN",
            TransportError::Timeout => "TIMEOUT",
            TransportError::Refused(_) => "PEER_REFUSED",
            TransportError::TooLarge { .. } => "MESSAGE_TOO_LARGE",
            TransportError::Closed => "TRANSPORT_CLOSED",
            TransportError::Cert(e) => e.code(),
        }
    }

    /// Whether the request certainly did not reach the peer's handler, so resending it cannot
    /// apply it twice.
    pub fn not_delivered(&self) -> bool {
        matches!(
            self,
            TransportError::Connect(_) | TransportError::Closed | TransportError::TooLarge { .. }
        )
    }
}

/// One connection slot per peer; the async mutex makes concurrent callers share one handshake.
type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

/// A node's QUIC endpoint: serves peers' requests and sends its own.
pub struct Transport {
    endpoint: Endpoint,
    peers: Mutex<HashMap<SocketAddr, Slot>>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish()
    }
}

fn quic_transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // A SIGKILLed peer is noticed within 3 s; keep-alives keep healthy idle links open.
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(3_000).into()));
    t.keep_alive_interval(Some(Duration::from_millis(1_000)));
    // Every in-flight produce forwarded to a leader is a stream of its own.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4_096));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    Arc::new(t)
}

/// The key this node signs QUIC stateless resets with, the same across restarts.
///
/// When a node is SIGKILLed and restarted, its peers still hold connections to the old process;
/// the new one answers their packets with a stateless reset, but peers accept a reset only if its
/// token is the one the old process announced, and quinn derives tokens from a key it draws at
/// random per endpoint. With that default, peers kept sending into the dead connection until the
/// idle timeout (3 s): every Raft RPC to the restarted node timed out meanwhile, it fell behind
/// and started elections with a stale log, which measurably doubled failover times (1.2 s to
/// 2.5 s). Deriving the key from the node's private key (secret, stable, already on disk) makes
/// a restarted node's resets valid, so peers drop the dead connection and reconnect at once.
fn stateless_reset_key(tls: &TlsFiles) -> Result<Arc<ring::hmac::Key>, TransportError> {
    let secret = std::fs::read(&tls.key)
        .map_err(|e| TransportError::Setup(format!("read {}: {e}", tls.key.display())))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"chat4all quic stateless reset key\0");
    ctx.update(&secret);
    Ok(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        ctx.finish().as_ref(),
    )))
}

impl Transport {
    /// Binds the endpoint and starts serving requests with `handler` until `shutdown`.
    pub async fn bind(
        config: &TransportConfig,
        handler: Arc<dyn RpcHandler>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Transport>, TransportError> {
        let tls_server = certs::server_config(&config.tls)?;
        let tls_client = certs::client_config(&config.tls)?;
        let quic_server = QuicServerConfig::try_from(tls_server)
            .map_err(|e| TransportError::Setup(format!("quic server tls: {e}")))?;
        let quic_client = QuicClientConfig::try_from(tls_client)
            .map_err(|e| TransportError::Setup(format!("quic client tls: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic_server));
        server.transport_config(quic_transport_config());
        let mut client = quinn::ClientConfig::new(Arc::new(quic_client));
        client.transport_config(quic_transport_config());
        let bind_err =
            |e: std::io::Error| TransportError::Setup(format!("bind {}: {e}", config.bind));
        let socket = std::net::UdpSocket::bind(config.bind).map_err(bind_err)?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Setup("no async runtime for QUIC".into()))?;
        let endpoint_config = quinn::EndpointConfig::new(stateless_reset_key(&config.tls)?);
        let mut endpoint =
            Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let transport = Arc::new(Transport {
            endpoint: endpoint.clone(),
            peers: Mutex::new(HashMap::new()),
            max_message_bytes: config.max_message_bytes,
            shutdown: shutdown.clone(),
        });
        tokio::spawn(server::accept_loop(
            endpoint,
            handler,
            config.max_message_bytes,
            shutdown,
        ));
        Ok(transport)
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.endpoint
            .local_addr()
            .map_err(|e| TransportError::Setup(e.to_string()))
    }

    /// Sends one request to `addr` and waits up to `deadline` for its response body.
    pub async fn call(
        &self,
        addr: SocketAddr,
        header: RpcHeader,
        body: Bytes,
        deadline: Duration,
    ) -> Result<Bytes, TransportError> {
        if self.shutdown.is_cancelled() {
            return Err(TransportError::Closed);
        }
        if body.len() > self.max_message_bytes {
            return Err(TransportError::TooLarge {
                size: body.len(),
                max: self.max_message_bytes,
            });
        }
        let sent = AtomicBool::new(false);
        let used = OnceLock::new();
        match tokio::time::timeout(deadline, self.exchange(addr, header, body, &sent, &used)).await
        {
            Ok(result) => result,
            Err(_) if sent.load(Ordering::Acquire) => {
                // No answer on a connection may mean its peer process is gone (SIGKILLed and
                // restarted, or paused) while the connection still looks open: QUIC notices only
                // at the idle timeout (3 s), and during that time every request on it would
                // time out too. The next request opens a fresh connection instead, which reaches
                // a restarted peer at once; requests still in flight keep the old one alive.
                if let Some(conn) = used.get() {
                    self.forget(addr, conn);
                }
                Err(TransportError::Timeout)
            }
            Err(_) => Err(TransportError::Connect(format!(
                "{addr}: not sent within {deadline:?}"
            ))),
        }
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        header: RpcHeader,
        body: Bytes,
        sent: &AtomicBool,
        used: &OnceLock<Connection>,
    ) -> Result<Bytes, TransportError> {
        let header = bincode::serde::encode_to_vec(header, bincode::config::standard())
            .map_err(|e| TransportError::Connect(format!("encode header: {e}")))?;
        let mut head = BytesMut::with_capacity(4 + header.len());
        head.put_u32(u32::try_from(header.len()).unwrap_or(u32::MAX));
        head.put_slice(&header);
        let head = head.freeze();

        // A cached connection may have died since it was used: one retry on a fresh one, which is
        // safe because nothing was sent on the dead one.
        let mut attempt = 0;
        let (mut send, mut recv) = loop {
            let conn = self.connection(addr).await?;
            match conn.open_bi().await {
                Ok(streams) => {
                    let _ = used.set(conn);
                    break streams;
                }
                Err(e) => {
                    self.forget(addr, &conn);
                    attempt += 1;
                    if attempt >= 2 {
                        return Err(TransportError::Connect(format!("{addr}: open stream: {e}")));
                    }
                }
            }
        };
        let unsent =
            |e: &dyn std::fmt::Display| TransportError::Connect(format!("{addr}: send: {e}"));
        send.write_all(&head).await.map_err(|e| unsent(&e))?;
        send.write_chunk(body).await.map_err(|e| unsent(&e))?;
        // From here on the peer may receive the whole request.
        sent.store(true, Ordering::Release);
        send.finish()
            .map_err(|e| TransportError::Stream(format!("{addr}: finish: {e}")))?;
        let response = recv
            .read_to_end(self.max_message_bytes.saturating_add(1))
            .await
            .map_err(|e| TransportError::Stream(format!("{addr}: read response: {e}")))?;
        match response.split_first() {
            Some((0, rest)) => Ok(Bytes::copy_from_slice(rest)),
            Some((_, reason)) => Err(TransportError::Refused(
                String::from_utf8_lossy(reason).into_owned(),
            )),
            None => Err(TransportError::Stream(format!("{addr}: empty response"))),
        }
    }

    /// The live connection to `addr`, connecting if there is none.
    async fn connection(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let slot = {
            let mut peers = self.peers.lock().map_err(|_| TransportError::Closed)?;
            peers.entry(addr).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        if self.shutdown.is_cancelled() {
            return Err(TransportError::Closed);
        }
        let connecting = self
            .endpoint
            .connect(addr, NODE_SERVER_NAME)
            .map_err(|e| TransportError::Connect(format!("{addr}: {e}")))?;
        let conn = connecting
            .await
            .map_err(|e| TransportError::Connect(format!("{addr}: handshake: {e}")))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    fn forget(&self, addr: SocketAddr, dead: &Connection) {
        let slot = self.peers.lock().ok().and_then(|p| p.get(&addr).cloned());
        if let Some(slot) = slot
            && let Ok(mut guard) = slot.try_lock()
            && guard
                .as_ref()
                .is_some_and(|c| c.stable_id() == dead.stable_id())
        {
            *guard = None;
        }
    }

    /// Stops serving and closes every connection.
    pub async fn close(&self) {
        self.shutdown.cancel();
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
