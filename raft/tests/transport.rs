//! The QUIC transport between real endpoints on loopback: round trips, large messages,
//! deadlines, reconnection after a peer restarts, and mutual TLS refusing foreign certificates.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chat4all_raft::certs::{TlsFiles, ensure_cluster_certs, generate_cluster_certs};
use chat4all_raft::transport::{
    DEFAULT_MAX_MESSAGE_BYTES, PROTOCOL_VERSION, RpcHandler, RpcHeader, RpcKind, Transport,
    TransportConfig, TransportError,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

/// Answers `Vote` with the body reversed, never answers `Forward`, counts calls and the
/// `Forward` handlers still running.
struct Echo {
    calls: AtomicUsize,
    open: Arc<AtomicUsize>,
}

/// Counts a running handler until it is dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl RpcHandler for Echo {
    fn handle(&self, header: RpcHeader, body: Bytes) -> BoxFuture<'static, Bytes> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let open = self.open.clone();
        async move {
            if header.kind == RpcKind::Forward {
                open.fetch_add(1, Ordering::SeqCst);
                let _open = Open(open);
                futures::future::pending::<()>().await;
            }
            let mut v = body.to_vec();
            v.reverse();
            v.extend_from_slice(&header.group.to_be_bytes());
            Bytes::from(v)
        }
        .boxed()
    }
}

fn header(kind: RpcKind) -> RpcHeader {
    RpcHeader {
        version: PROTOCOL_VERSION,
        group: 42,
        kind,
        deadline_ms: 10_000,
    }
}

async fn node(
    dir: &Path,
    id: u64,
    bind: SocketAddr,
) -> anyhow::Result<(Arc<Transport>, Arc<Echo>)> {
    let echo = Arc::new(Echo {
        calls: AtomicUsize::new(0),
        open: Arc::default(),
    });
    let config = TransportConfig {
        bind,
        tls: TlsFiles::for_node(dir, id),
        max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
    };
    let t = Transport::bind(&config, echo.clone(), CancellationToken::new()).await?;
    Ok((t, echo))
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test]
async fn round_trip_small_and_large_messages() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    generate_cluster_certs(dir.path(), &[1, 2])?;
    let (a, _) = node(dir.path(), 1, any_port()).await?;
    let (b, echo_b) = node(dir.path(), 2, any_port()).await?;
    let to_b = b.local_addr()?;

    let reply = a
        .call(
            to_b,
            header(RpcKind::Vote),
            Bytes::from_static(b"abc"),
            Duration::from_secs(5),
        )
        .await?;
    assert_eq!(&reply[..3], b"cba");
    assert_eq!(&reply[3..], &42u64.to_be_bytes());

    // 24 MiB, bigger than any flow-control window, arrives intact.
    let big: Vec<u8> = (0..24 * 1024 * 1024)
        .map(|i: u32| (i % 251) as u8)
        .collect();
    let reply = a
        .call(
            to_b,
            header(RpcKind::AppendEntries),
            Bytes::from(big.clone()),
            Duration::from_secs(30),
        )
        .await?;
    let mut expected = big;
    expected.reverse();
    assert_eq!(&reply[..expected.len()], &expected[..]);

    // Many calls at once share one connection.
    let calls = (0..200u32).map(|i| {
        let a = a.clone();
        async move {
            a.call(
                to_b,
                header(RpcKind::Vote),
                Bytes::from(i.to_be_bytes().to_vec()),
                Duration::from_secs(10),
            )
            .await
        }
    });
    for (i, r) in futures::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        let mut want = (i as u32).to_be_bytes().to_vec();
        want.reverse();
        assert_eq!(&r?[..4], &want[..]);
    }
    assert_eq!(echo_b.calls.load(Ordering::SeqCst), 202);
    a.close().await;
    b.close().await;
    Ok(())
}

#[tokio::test]
async fn a_call_without_answer_times_out_as_unknown_outcome() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    generate_cluster_certs(dir.path(), &[1, 2])?;
    let (a, _) = node(dir.path(), 1, any_port()).await?;
    let (b, echo_b) = node(dir.path(), 2, any_port()).await?;
    let err = a
        .call(
            b.local_addr()?,
            header(RpcKind::Forward),
            Bytes::from_static(b"x"),
            Duration::from_millis(300),
        )
        .await
        .err();
    // The request reached the handler, so the outcome is unknown, not "not delivered".
    assert!(matches!(err, Some(TransportError::Timeout)), "{err:?}");
    assert_eq!(echo_b.calls.load(Ordering::SeqCst), 1);
    // The caller gave up long before the deadline in the header (10 s): the peer drops the
    // work instead of carrying it on for nobody.
    let given_up = std::time::Instant::now();
    while echo_b.open.load(Ordering::SeqCst) > 0 {
        assert!(
            given_up.elapsed() < Duration::from_secs(5),
            "the handler still runs after its caller gave up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test]
async fn unreachable_peer_is_not_delivered_and_restart_reconnects() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    generate_cluster_certs(dir.path(), &[1, 2])?;
    let (a, _) = node(dir.path(), 1, any_port()).await?;
    let (b, _) = node(dir.path(), 2, any_port()).await?;
    let to_b = b.local_addr()?;
    a.call(
        to_b,
        header(RpcKind::Vote),
        Bytes::from_static(b"1"),
        Duration::from_secs(5),
    )
    .await?;

    b.close().await;
    drop(b);
    let err = a
        .call(
            to_b,
            header(RpcKind::Vote),
            Bytes::from_static(b"2"),
            Duration::from_millis(500),
        )
        .await
        .err();
    assert!(
        err.as_ref().is_some_and(TransportError::not_delivered),
        "{err:?}"
    );

    // The peer comes back on the same address; the next calls reconnect by themselves.
    let (b2, echo_b2) = node(dir.path(), 2, to_b).await?;
    let mut answered = false;
    for _ in 0..100 {
        if a.call(
            to_b,
            header(RpcKind::Vote),
            Bytes::from_static(b"3"),
            Duration::from_millis(500),
        )
        .await
        .is_ok()
        {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "no answer from the restarted peer within 100 attempts"
    );
    assert!(echo_b2.calls.load(Ordering::SeqCst) >= 1);
    b2.close().await;
    Ok(())
}

/// A peer killed without a word (SIGKILL: no CONNECTION_CLOSE, its socket just gone) and
/// restarted on the same address. The caller's connection to the dead process still looks open
/// until QUIC's idle timeout (3 s). The restarted peer must reset it: a call on it fails as
/// `PeerRestarted`, not by the idle timeout (its deadline is longer), and the next call
/// reaches the new process. (Without the reset every request on the old connection hung until
/// the idle timeout: forwarded writes and Raft RPCs alike.)
#[tokio::test]
async fn a_peer_killed_and_restarted_resets_the_old_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    generate_cluster_certs(dir.path(), &[1, 2])?;
    let (a, _) = node(dir.path(), 1, any_port()).await?;
    // B runs on a runtime of its own, so that dropping the runtime kills it mid-flight.
    let b_dir = dir.path().to_path_buf();
    let to_b = std::thread::spawn(
        move || -> anyhow::Result<(tokio::runtime::Runtime, SocketAddr)> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()?;
            let addr = rt.block_on(async {
                let (b, _) = node(&b_dir, 2, any_port()).await?;
                b.local_addr().map_err(anyhow::Error::from)
            })?;
            Ok((rt, addr))
        },
    )
    .join()
    .map_err(|_| anyhow::anyhow!("B's thread panicked"))??;
    let (b_runtime, to_b) = to_b;
    a.call(
        to_b,
        header(RpcKind::Vote),
        Bytes::from_static(b"1"),
        Duration::from_secs(5),
    )
    .await?;
    // The kill: B's tasks and socket vanish without closing anything. (Waits until the worker
    // threads are gone, so the socket is closed before B2 binds the same port.)
    std::thread::spawn(move || b_runtime.shutdown_timeout(Duration::from_secs(10)))
        .join()
        .map_err(|_| anyhow::anyhow!("B's shutdown panicked"))?;

    let (b2, echo_b2) = node(dir.path(), 2, to_b).await?;
    // The deadline is well past the idle timeout, so only a reset can end the first call
    // early. (It may also succeed: a keep-alive sent before it can have drawn the reset.)
    let call = |i: u8| {
        a.call(
            to_b,
            header(RpcKind::Vote),
            Bytes::from(vec![i]),
            Duration::from_secs(10),
        )
    };
    let first = call(1).await;
    assert!(
        matches!(first, Ok(_) | Err(TransportError::PeerRestarted(_))),
        "the call on the dead process's connection: {first:?}"
    );
    if first.is_err() {
        call(2).await?;
    }
    assert!(echo_b2.calls.load(Ordering::SeqCst) >= 1);
    b2.close().await;
    Ok(())
}

/// A slow answer from a live peer is a timeout, but its connection, which every Raft group to
/// that peer shares, stays: the peer's QUIC stack acknowledged the request. (When one timeout
/// dropped the connection, a loaded node's slow AppendEntries answer cost every group a new
/// handshake, and their heartbeats stalled into elections.)
#[tokio::test]
async fn a_slow_answer_keeps_the_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    generate_cluster_certs(dir.path(), &[1, 2])?;
    let (a, _) = node(dir.path(), 1, any_port()).await?;
    let (b, echo_b) = node(dir.path(), 2, any_port()).await?;
    let to_b = b.local_addr()?;
    let vote = |i: u8| {
        a.call(
            to_b,
            header(RpcKind::Vote),
            Bytes::from(vec![i]),
            Duration::from_secs(5),
        )
    };
    vote(1).await?;
    let err = a
        .call(
            to_b,
            header(RpcKind::Forward),
            Bytes::from_static(b"never answered"),
            Duration::from_millis(300),
        )
        .await
        .err();
    assert!(matches!(err, Some(TransportError::Timeout)), "{err:?}");
    vote(2).await?;
    assert_eq!(echo_b.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        a.handshakes(),
        1,
        "the connection was dropped after a slow answer"
    );
    Ok(())
}

/// Forwards datagrams between one client and `server`, each `delay` late: a link whose round
/// trip is twice `delay`. Returns the address the client sends to.
async fn delaying_link(server: SocketAddr, delay: Duration) -> anyhow::Result<SocketAddr> {
    let socket = Arc::new(tokio::net::UdpSocket::bind(any_port()).await?);
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut client = None;
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let to = if from == server {
                match client {
                    Some(c) => c,
                    None => continue,
                }
            } else {
                client = Some(from);
                server
            };
            let (socket, datagram) = (socket.clone(), buf[..n].to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&datagram, to).await;
            });
        }
    });
    Ok(addr)
}

/// Over a link with a 60 ms round trip, a handshake and one request take longer than a 100 ms
/// deadline (Raft's heartbeat deadline), a request alone does not. The handshake that the first
/// callers gave up on still completes and the later ones use it. (When every call started its
/// own handshake and dropped it at its deadline, none completed: such a peer, or a loaded one,
/// stayed unreachable.) A call whose deadline passes before its request is sent is "not sent":
/// not delivered, and no sign that the peer is down.
#[tokio::test]
async fn a_handshake_outlives_the_calls_that_gave_up_on_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    generate_cluster_certs(dir.path(), &[1, 2])?;
    let (a, _) = node(dir.path(), 1, any_port()).await?;
    let (b, echo_b) = node(dir.path(), 2, any_port()).await?;
    let far_b = delaying_link(b.local_addr()?, Duration::from_millis(30)).await?;

    let call = |deadline_ms: u64| {
        a.call(
            far_b,
            header(RpcKind::Vote),
            Bytes::from_static(b"x"),
            Duration::from_millis(deadline_ms),
        )
    };
    let err = call(20).await.err();
    assert!(
        matches!(err, Some(TransportError::NotSent(_))),
        "a call that ends during the handshake: {err:?}"
    );
    assert!(err.as_ref().is_some_and(TransportError::not_delivered));
    let mut results = Vec::new();
    for _ in 0..10 {
        let r = call(100).await;
        let ok = r.is_ok();
        results.push(r.map(|_| ()));
        if ok {
            break;
        }
    }
    assert!(
        results.last().is_some_and(Result::is_ok),
        "never answered over a 60 ms link with 100 ms deadlines: {results:?}"
    );
    assert_eq!(a.handshakes(), 1, "{results:?}");
    assert!(echo_b.calls.load(Ordering::SeqCst) >= 1);
    Ok(())
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_both_ways() -> anyhow::Result<()> {
    let ours = tempfile::tempdir()?;
    let theirs = tempfile::tempdir()?;
    generate_cluster_certs(ours.path(), &[1, 2])?;
    generate_cluster_certs(theirs.path(), &[3])?;
    let (member, echo_member) = node(ours.path(), 1, any_port()).await?;
    let (intruder, echo_intruder) = node(theirs.path(), 3, any_port()).await?;

    // The intruder calls a member: the member refuses its client certificate.
    let err = intruder
        .call(
            member.local_addr()?,
            header(RpcKind::Vote),
            Bytes::from_static(b"x"),
            Duration::from_secs(3),
        )
        .await
        .err();
    assert!(
        err.as_ref().is_some_and(TransportError::not_delivered),
        "{err:?}"
    );
    // A member calls the intruder: the member refuses the intruder's server certificate.
    let err = member
        .call(
            intruder.local_addr()?,
            header(RpcKind::Vote),
            Bytes::from_static(b"x"),
            Duration::from_secs(3),
        )
        .await
        .err();
    assert!(
        err.as_ref().is_some_and(TransportError::not_delivered),
        "{err:?}"
    );
    assert_eq!(echo_member.calls.load(Ordering::SeqCst), 0);
    assert_eq!(echo_intruder.calls.load(Ordering::SeqCst), 0);

    // A second member of our cluster is served.
    let (peer, _) = node(ours.path(), 2, any_port()).await?;
    peer.call(
        member.local_addr()?,
        header(RpcKind::Vote),
        Bytes::from_static(b"x"),
        Duration::from_secs(3),
    )
    .await?;
    assert_eq!(echo_member.calls.load(Ordering::SeqCst), 1);
    Ok(())
}

#[test]
fn nodes_generating_certificates_at_once_agree_on_one_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let certs = dir.path().join("certs");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let certs = certs.clone();
            std::thread::spawn(move || {
                ensure_cluster_certs(&certs, &[1, 2, 3]).map_err(|e| e.to_string())
            })
        })
        .collect();
    let mut winners = 0;
    for t in threads {
        if t.join()
            .map_err(|_| anyhow::anyhow!("thread panicked"))?
            .map_err(anyhow::Error::msg)?
        {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one caller generates the set");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers,
        vec![std::ffi::OsString::from("certs")],
        "no temporary directories left behind"
    );
    Ok(())
}
