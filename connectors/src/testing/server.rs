//! The fake's state and its HTTP server: binding (again, on the same port), graceful
//! shutdown, and what every platform's handlers share (recording sends, scripted failures,
//! holding an answer back).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::response::Response;
use rand::Rng;
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{FakeFailure, FakeSent};
use crate::Platform;

/// How long an `AcceptThenDrop` answer is held back at most (unless the fake stops first):
/// longer than any client timeout a test sets, short enough not to outlive a test run.
const HOLD_MAX: Duration = Duration::from_secs(60);

/// What the fake remembers across stops and restarts.
#[derive(Debug, Default)]
struct State {
    sent: Vec<FakeSent>,
    failures: VecDeque<FakeFailure>,
    requests: usize,
    next_id: u64,
}

/// The state every handler sees.
#[derive(Debug)]
pub(super) struct Shared {
    /// Which platform this fake plays.
    pub(super) platform: Platform,
    state: Mutex<State>,
    /// The number of recorded sends, for waiting on it without polling.
    sent_count: watch::Sender<usize>,
    /// `true` from `stop` until `restart`: ends the server and every held answer.
    pub(super) down: watch::Sender<bool>,
}

impl Shared {
    pub(super) fn new(platform: Platform) -> Shared {
        Shared {
            platform,
            state: Mutex::new(State::default()),
            sent_count: watch::Sender::new(0),
            down: watch::Sender::new(false),
        }
    }

    /// The state; a handler that panicked cannot leave it half-written (every update is one
    /// statement), so a poisoned lock is still good.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one send request (answered or refused).
    pub(super) fn count_request(&self) {
        self.lock().requests += 1;
    }

    /// Send requests seen so far.
    pub(super) fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Queues scripted failures.
    pub(super) fn push_failures(&self, failures: Vec<FakeFailure>) {
        self.lock().failures.extend(failures);
    }

    /// The next scripted failure, consumed.
    pub(super) fn next_failure(&self) -> Option<FakeFailure> {
        self.lock().failures.pop_front()
    }

    /// A fresh number for message ids (1, 2, …).
    pub(super) fn next_id(&self) -> u64 {
        let mut state = self.lock();
        state.next_id += 1;
        state.next_id
    }

    /// Records an accepted send and wakes `wait_sent`.
    pub(super) fn record(&self, sent: FakeSent) {
        let count = {
            let mut state = self.lock();
            state.sent.push(sent);
            state.sent.len()
        };
        self.sent_count.send_replace(count);
    }

    /// Every accepted send, oldest first.
    pub(super) fn sent(&self) -> Vec<FakeSent> {
        self.lock().sent.clone()
    }

    /// The accepted send with this remote id.
    pub(super) fn find_sent(&self, remote_id: &str) -> Option<FakeSent> {
        self.lock()
            .sent
            .iter()
            .find(|s| s.remote_id == remote_id)
            .cloned()
    }

    /// Waits until at least `n` sends are recorded or `timeout` passes.
    pub(super) async fn wait_sent(&self, n: usize, timeout: Duration) -> Vec<FakeSent> {
        let mut count = self.sent_count.subscribe();
        // `wait_for` looks at the current value first: no wake-up is lost.
        let _ = tokio::time::timeout(timeout, count.wait_for(|c| *c >= n)).await;
        self.sent()
    }

    /// Never answers while the fake is up; once it stops (or after [`HOLD_MAX`]), starts an
    /// answer whose body fails, so the connection is cut mid-response. The client sees its
    /// timeout or a lost connection: it cannot tell whether the send went through.
    pub(super) async fn hold(&self) -> Response {
        let mut down = self.down.subscribe();
        let _ = tokio::time::timeout(HOLD_MAX, down.wait_for(|d| *d)).await;
        let cut = futures::stream::once(async {
            Err::<Bytes, io::Error>(io::Error::other("connection dropped by the fake"))
        });
        Response::new(Body::from_stream(cut))
    }
}

/// Binds `addr` (port 0: any) with `SO_REUSEADDR`, so that a restart gets the same port back
/// although the old connections linger in TIME_WAIT, and serves `app` until `down` turns true.
/// Returns the bound address and the server task, which ends once every connection is closed.
pub(super) fn serve(
    shared: &Arc<Shared>,
    addr: SocketAddr,
    app: Router,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let local = listener.local_addr()?;
    let mut down = shared.down.subscribe();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = down.wait_for(|d| *d).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::warn!(error = %e, "fake platform server failed");
        }
    });
    Ok((local, task))
}

/// Seconds since the epoch.
pub(super) fn now_s() -> i64 {
    now_ms() / 1000
}

/// Milliseconds since the epoch.
pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `len` random letters and digits (Graph's `fbtrace_id`, the random tail of message ids).
pub(super) fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
