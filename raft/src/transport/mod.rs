//! Node-to-node RPC over QUIC with mutual TLS: one request and one response per bidirectional
//! stream, one connection per peer, many streams in flight on it (no head-of-line blocking
//! between Raft groups).
//!
//! ```text
//! request stream:  u32 BE header length │ bincode RpcHeader │ body ........ FIN
//! response stream: status u8 (0 ok, 1 refused) │ body (ok) or UTF-8 reason (refused) FIN
//! ```
//!
//! Error classes matter to callers: [`TransportError::Connect`] and [`TransportError::NotSent`]
//! mean the request surely did not reach the peer's handler (it was never completely sent; a
//! request cut off mid-write is reset, not delivered truncated), every other failure after
//! sending leaves the outcome unknown. `Connect` also says the peer could not be reached,
//! `NotSent` only that the deadline came first.
//!
//! One connection per peer carries every Raft group's traffic, so losing it is expensive: a
//! handshake, once started, runs to its end whoever waits for it, and a connection is dropped
//! after a timeout only if the peer's QUIC stack did not even acknowledge the request.

mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, Endpoint};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::certs::{self, NODE_SERVER_NAME, TlsFiles};

/// Bumped whenever the framing or a message shape changes incompatibly (3: event streams read
/// `chat.messages`, a forwarded chat read changed shape; 4: forwarded produce requests travel
/// together, `ProduceMany`).
pub const PROTOCOL_VERSION: u16 = 4;

/// The largest request or response accepted (an AppendEntries of up to 512 entries; a
/// snapshot travels in chunks of `[raft] snapshot_chunk_bytes`).
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
    /// One chunk of a Raft snapshot (see [`crate::snapshot`]).
    SnapshotChunk,
    /// A client request forwarded to the node that can serve it.
    Forward,
}

impl RpcKind {
    /// Every kind.
    pub const ALL: [RpcKind; 4] = [
        RpcKind::AppendEntries,
        RpcKind::Vote,
        RpcKind::SnapshotChunk,
        RpcKind::Forward,
    ];

    /// Its name in metrics.
    pub fn name(self) -> &'static str {
        match self {
            RpcKind::AppendEntries => "append_entries",
            RpcKind::Vote => "vote",
            RpcKind::SnapshotChunk => "snapshot_chunk",
            RpcKind::Forward => "forward",
        }
    }

    fn slot(self) -> usize {
        self as usize
    }
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

    /// Requests sent so far, by kind (counted when sent, whatever their outcome).
    fn requests_sent(&self) -> Vec<(RpcKind, u64)> {
        Vec::new()
    }
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

    fn requests_sent(&self) -> Vec<(RpcKind, u64)> {
        RpcKind::ALL
            .into_iter()
            .map(|k| (k, self.sent[k.slot()].load(Ordering::Relaxed)))
            .collect()
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
    /// The deadline passed before the request was sent: the connection's handshake or the
    /// stream's flow control was still pending (a busy or distant peer, or one still being
    /// reached). Not delivered, but the peer is not known to be down: unlike
    /// [`TransportError::Connect`], no reason to back off.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The stream broke after the request was sent: the peer may have handled it.
    #[error("stream: {0}")]
    Stream(String),
    /// After the request was sent, the peer's address answered with a QUIC stateless reset:
    /// the process the connection led to is gone and a new one runs there (a restarted node).
    /// The old process may have handled the request before it died; the next request opens a
    /// connection to the new one.
    #[error("peer restarted: {0}")]
    PeerRestarted(String),
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
            TransportError::NotSent(_) => "NOT_SENT",
            TransportError::Stream(_) => "STREAM_BROKEN",
            TransportError::PeerRestarted(_) => "PEER_RESTARTED",
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
            TransportError::Connect(_)
                | TransportError::NotSent(_)
                | TransportError::Closed
                | TransportError::TooLarge { .. }
        )
    }
}

/// A handshake in progress, which every caller that needs the peer meanwhile awaits.
type Handshake = Shared<BoxFuture<'static, Result<Connection, String>>>;

/// What a node has towards one peer.
#[derive(Clone)]
enum Link {
    Up(Connection),
    /// A handshake and when it started.
    Connecting(Handshake, Instant),
}

/// How long callers wait on one handshake before a new one starts. A peer that was not yet
/// listening (restarting) drops the first packets, and QUIC sends them again only after its
/// first round-trip estimate (333 ms) and then backs off: up to seconds. A fresh handshake
/// reaches it at once. Long enough that a handshake on a loaded machine finishes (each call's
/// deadline, 100 ms for a heartbeat, is not).
const HANDSHAKE_PATIENCE: Duration = Duration::from_millis(500);

/// A request that has been sent: on which connection, when, and whether the peer's QUIC stack
/// has acknowledged all of it.
struct Sent {
    conn: Connection,
    at: Instant,
    acked: AtomicBool,
}

impl Sent {
    /// Whether the peer has not acknowledged the request over a window in which a live peer
    /// would have: three round trips plus its acknowledgement delay (25 ms). QUIC acknowledges
    /// below the application, so a busy peer still does; only a dead, paused or replaced
    /// process stays silent.
    fn peer_silent(&self) -> bool {
        let window = self.conn.rtt() * 3 + Duration::from_millis(25);
        !self.acked.load(Ordering::Acquire) && self.at.elapsed() > window
    }
}

/// A node's QUIC endpoint: serves peers' requests and sends its own.
pub struct Transport {
    endpoint: Endpoint,
    peers: Arc<Mutex<HashMap<SocketAddr, Link>>>,
    handshakes: AtomicU64,
    /// Requests sent, by [`RpcKind::slot`].
    sent: [AtomicU64; RpcKind::ALL.len()],
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
    // The first round-trip estimate of a new connection (QUIC's default, 333 ms, is for the
    // Internet). Lost handshake packets are sent again after about three of them: a peer that
    // was not listening yet (all nodes restarting at once) was reached only a second later.
    t.initial_rtt(Duration::from_millis(20));
    // Every in-flight produce forwarded to a leader is a stream of its own.
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(4_096));
    t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    t.stream_receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    Arc::new(t)
}

/// Bytes asked for each of the QUIC socket's kernel buffers. With Linux's default (208 KiB) the
/// kernel drops datagrams whenever a node stops reading for a moment while a peer streams to
/// it (a snapshot, a burst of forwarded writes): 2,652 drops in one 200 MB snapshot catch-up
/// on this machine. Each loss shrinks QUIC's congestion window, and every Raft group's
/// heartbeats on that connection wait behind it. The kernel caps the size at
/// `net.core.rmem_max` / `wmem_max`.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Asks for [`SOCKET_BUFFER_BYTES`] of receive and send buffer, and logs what the kernel gave.
fn enlarge_buffers(socket: &std::net::UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s.set_recv_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::warn!("cannot size the QUIC socket's receive buffer: {e}");
    }
    if let Err(e) = s.set_send_buffer_size(SOCKET_BUFFER_BYTES) {
        tracing::warn!("cannot size the QUIC socket's send buffer: {e}");
    }
    // Linux reports twice what it reserved for the payload (the rest is bookkeeping).
    let recv = s.recv_buffer_size().unwrap_or(0);
    let send = s.send_buffer_size().unwrap_or(0);
    if recv < SOCKET_BUFFER_BYTES {
        tracing::warn!(
            recv,
            send,
            "the QUIC socket's receive buffer is smaller than the {SOCKET_BUFFER_BYTES} bytes asked \
             (raise net.core.rmem_max): datagrams may be dropped under load"
        );
    } else {
        tracing::debug!(recv, send, "QUIC socket buffers");
    }
}

/// The keys that let a restarted node answer its peers' packets on connections to the process
/// it replaced with a stateless reset, so the peers drop those connections at once.
///
/// When a node is SIGKILLed and restarted, its peers still hold connections to the old process.
/// Unless the new process resets them, peers keep sending into them until QUIC's idle timeout
/// (3 s), and every request on them (Raft RPCs, forwarded client writes) hangs meanwhile. The
/// new process sends a reset only for a packet whose connection ID it recognizes as one it
/// could have issued, and the peer accepts the reset only if its token is the one the old
/// process announced for that ID. quinn draws both keys at random per endpoint by default, so
/// neither holds across a restart:
///
/// - Tokens: with a random reset key, peers ignored the new process's resets. Every Raft RPC
///   to a restarted node timed out, it fell behind and started elections with a stale log,
///   which measurably doubled failover times (1.2 s to 2.5 s).
/// - Connection IDs: quinn's default generator signs each ID with a random key and silently
///   drops packets whose ID it cannot verify, so with only the reset key stable no reset was
///   ever sent. A forwarded write then hung on the dead connection until its idle timeout: in
///   `bench failover`, 5 of 30 leader kills took 2.2-3.1 s instead of about 0.8 s, each right
///   after the node it forwarded to had been restarted.
///
/// Both keys are derived from the node's private key (secret, stable, already on disk).
struct RestartKeys {
    reset: Arc<ring::hmac::Key>,
    connection_ids: u64,
}

fn restart_keys(tls: &TlsFiles) -> Result<RestartKeys, TransportError> {
    let secret = std::fs::read(&tls.key)
        .map_err(|e| TransportError::Setup(format!("read {}: {e}", tls.key.display())))?;
    let derive = |label: &[u8]| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(&secret);
        ctx.finish()
    };
    let reset = derive(b"chat4all quic stateless reset key\0");
    let cids = derive(b"chat4all quic connection id key\0");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cids.as_ref()[..8]);
    Ok(RestartKeys {
        reset: Arc::new(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            reset.as_ref(),
        )),
        connection_ids: u64::from_le_bytes(cid_key),
    })
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
        enlarge_buffers(&socket);
        let runtime = quinn::default_runtime()
            .ok_or_else(|| TransportError::Setup("no async runtime for QUIC".into()))?;
        let keys = restart_keys(&config.tls)?;
        let mut endpoint_config = quinn::EndpointConfig::new(keys.reset);
        let cid_key = keys.connection_ids;
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let mut endpoint =
            Endpoint::new(endpoint_config, Some(server), socket, runtime).map_err(bind_err)?;
        endpoint.set_default_client_config(client);
        let transport = Arc::new(Transport {
            endpoint: endpoint.clone(),
            peers: Arc::default(),
            handshakes: AtomicU64::new(0),
            sent: Default::default(),
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
        self.sent[header.kind.slot()].fetch_add(1, Ordering::Relaxed);
        let sent = OnceLock::new();
        match tokio::time::timeout(deadline, self.exchange(addr, header, body, &sent)).await {
            Ok(result) => result,
            Err(_) => match sent.get() {
                Some(sent) => {
                    // No answer on a connection may mean its peer process is gone (SIGKILLed
                    // and restarted, or paused) while the connection still looks open: QUIC
                    // notices only at the idle timeout (3 s), and every request on it would
                    // time out meanwhile. If the peer has acknowledged nothing since, the next
                    // request opens a fresh connection, which reaches a restarted peer at once
                    // (requests in flight keep the old one alive). A peer that acknowledges is
                    // alive but slow: its connection, which every Raft group shares, is kept, or
                    // one slow answer under load would cost every group a new handshake.
                    if sent.peer_silent() {
                        self.forget(addr, &sent.conn);
                    }
                    Err(TransportError::Timeout)
                }
                None => Err(TransportError::NotSent(format!(
                    "{addr}: not sent within {deadline:?}"
                ))),
            },
        }
    }

    async fn exchange(
        &self,
        addr: SocketAddr,
        header: RpcHeader,
        body: Bytes,
        sent: &OnceLock<Sent>,
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
        let (conn, send, mut recv) = loop {
            let conn = self.connection(addr).await?;
            match conn.open_bi().await {
                Ok((send, recv)) => break (conn, send, recv),
                Err(e) => {
                    self.forget(addr, &conn);
                    attempt += 1;
                    if attempt >= 2 {
                        return Err(TransportError::Connect(format!("{addr}: open stream: {e}")));
                    }
                }
            }
        };
        let mut request = Request {
            stream: send,
            finished: false,
        };
        let unsent =
            |e: &dyn std::fmt::Display| TransportError::Connect(format!("{addr}: send: {e}"));
        request
            .stream
            .write_all(&head)
            .await
            .map_err(|e| unsent(&e))?;
        request
            .stream
            .write_chunk(body)
            .await
            .map_err(|e| unsent(&e))?;
        request
            .stream
            .finish()
            .map_err(|e| TransportError::Stream(format!("{addr}: finish: {e}")))?;
        request.finished = true;
        // From here on the peer may receive the whole request.
        let sent = sent.get_or_init(|| Sent {
            conn,
            at: Instant::now(),
            acked: AtomicBool::new(false),
        });
        let response = recv.read_to_end(self.max_message_bytes.saturating_add(1));
        // Resolves with `None` once the peer has acknowledged every byte of the request.
        let acknowledged = request.stream.stopped();
        tokio::pin!(response, acknowledged);
        let mut watching = true;
        let response = loop {
            tokio::select! {
                r = &mut response => break r,
                a = &mut acknowledged, if watching => {
                    watching = false;
                    if matches!(a, Ok(None)) {
                        sent.acked.store(true, Ordering::Release);
                    }
                }
            }
        }
        .map_err(|e| match e {
            quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::Reset,
            )) => TransportError::PeerRestarted(format!("{addr}: the connection was reset")),
            e => TransportError::Stream(format!("{addr}: read response: {e}")),
        })?;
        match response.split_first() {
            Some((0, rest)) => Ok(Bytes::copy_from_slice(rest)),
            Some((_, reason)) => Err(TransportError::Refused(
                String::from_utf8_lossy(reason).into_owned(),
            )),
            None => Err(TransportError::Stream(format!("{addr}: empty response"))),
        }
    }

    /// The live connection to `addr`: the cached one, the handshake already under way, or a
    /// new handshake.
    ///
    /// A handshake runs to its end even when every caller's deadline passes first, and later
    /// callers join it (for [`HANDSHAKE_PATIENCE`]; then they start a fresh one). Under load, or over a link whose round trip is a good part of a Raft
    /// heartbeat's deadline (100 ms), a handshake can take longer than one call may wait; when
    /// each call started its own and dropped it at its deadline, none ever finished, and the
    /// peer looked unreachable for as long as the load lasted.
    async fn connection(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let handshake = {
            let mut peers = self.peers.lock().map_err(|_| TransportError::Closed)?;
            match peers.get(&addr) {
                Some(Link::Up(conn)) if conn.close_reason().is_none() => return Ok(conn.clone()),
                Some(Link::Connecting(handshake, started))
                    if started.elapsed() < HANDSHAKE_PATIENCE =>
                {
                    handshake.clone()
                }
                _ => {
                    if self.shutdown.is_cancelled() {
                        return Err(TransportError::Closed);
                    }
                    let connecting = self
                        .endpoint
                        .connect(addr, NODE_SERVER_NAME)
                        .map_err(|e| TransportError::Connect(format!("{addr}: {e}")))?;
                    self.handshakes.fetch_add(1, Ordering::Relaxed);
                    let handshake: Handshake =
                        async move { connecting.await.map_err(|e| e.to_string()) }
                            .boxed()
                            .shared();
                    peers.insert(addr, Link::Connecting(handshake.clone(), Instant::now()));
                    tokio::spawn(settle(self.peers.clone(), addr, handshake.clone()));
                    handshake
                }
            }
        };
        handshake
            .await
            .map_err(|e| TransportError::Connect(format!("{addr}: handshake: {e}")))
    }

    /// How many handshakes this node has started as a client (each new connection to a peer).
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    fn forget(&self, addr: SocketAddr, dead: &Connection) {
        if let Ok(mut peers) = self.peers.lock()
            && matches!(peers.get(&addr), Some(Link::Up(c)) if c.stable_id() == dead.stable_id())
        {
            peers.remove(&addr);
        }
    }

    /// Stops serving and closes every connection.
    pub async fn close(&self) {
        self.shutdown.cancel();
        self.endpoint.close(quinn::VarInt::from_u32(0), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Drives a handshake to its end and caches its connection (or forgets the failed attempt),
/// unless the peer's link has been replaced meanwhile.
async fn settle(
    peers: Arc<Mutex<HashMap<SocketAddr, Link>>>,
    addr: SocketAddr,
    handshake: Handshake,
) {
    let result = handshake.clone().await;
    let Ok(mut peers) = peers.lock() else {
        return;
    };
    if !matches!(peers.get(&addr), Some(Link::Connecting(h, _)) if h.ptr_eq(&handshake)) {
        return;
    }
    match result {
        Ok(conn) => peers.insert(addr, Link::Up(conn)),
        Err(_) => peers.remove(&addr),
    };
}

/// A request being written. quinn finishes a send stream that is dropped unfinished, which
/// would hand the peer a truncated request when a call's deadline passes mid-write; this resets
/// it instead, so that an unsent request is surely not delivered. (Only while unfinished: a
/// reset after `finish` would abandon a request already on its way.)
struct Request {
    stream: quinn::SendStream,
    finished: bool,
}

impl Drop for Request {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.stream.reset(quinn::VarInt::from_u32(0));
        }
    }
}
