//! Three nodes in one process: real openraft, real RocksDB stores and state machines, with the
//! network replaced by an in-memory router whose links can be cut (the fault knob). Shows that a
//! partition's offsets stay dense and identical on every replica across a leader isolation, that
//! an isolated leader never commits, and that idempotent-producer state follows the leader.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat4all_raft::groups::{Group, GroupState, Groups, GroupsHandler, RaftSettings, raft_config};
use chat4all_raft::transport::{RpcClient, RpcHandler, RpcHeader, RpcKind, TransportError};
use chat4all_raft::types::{
    AppendBatch, Command, CommandResponse, GroupId, NodeId, NodeInfo, PartitionCommand,
    PartitionResponse, ProducerBatch,
};
use chat4all_storage::{Db, DbConfig, Payload, PayloadFormat, StoredRecord};
use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::error::{ClientWriteError, RaftError};

const PARTITION: GroupId = GroupId(7);

/// Routes requests between in-process nodes; a cut link fails like an unreachable peer.
#[derive(Default)]
struct MemNet {
    handlers: RwLock<BTreeMap<SocketAddr, Arc<dyn RpcHandler>>>,
    cut: Mutex<HashSet<(SocketAddr, SocketAddr)>>,
    /// Requests of a kind to a node that never get sent, as on a link so busy that they miss
    /// their deadline.
    starved: Mutex<Vec<(SocketAddr, RpcKind)>>,
    /// How long each snapshot chunk takes to cross.
    chunk_delay: Mutex<Duration>,
}

impl MemNet {
    fn isolate(&self, node: SocketAddr, peers: &[SocketAddr]) {
        let mut cut = self.cut.lock().expect("lock");
        for &p in peers.iter().filter(|&&p| p != node) {
            cut.insert((node, p));
            cut.insert((p, node));
        }
    }

    fn heal(&self) {
        self.cut.lock().expect("lock").clear();
    }

    fn starve(&self, node: SocketAddr, kind: RpcKind) {
        self.starved.lock().expect("lock").push((node, kind));
    }
}

struct MemClient {
    me: SocketAddr,
    net: Arc<MemNet>,
}

impl RpcClient for MemClient {
    fn call(
        &self,
        addr: SocketAddr,
        header: RpcHeader,
        body: Bytes,
        deadline: Duration,
    ) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        async move {
            if self
                .net
                .cut
                .lock()
                .map_err(|_| TransportError::Closed)?
                .contains(&(self.me, addr))
            {
                return Err(TransportError::Connect(format!(
                    "link {} -> {addr} is cut",
                    self.me
                )));
            }
            if self
                .net
                .starved
                .lock()
                .map_err(|_| TransportError::Closed)?
                .contains(&(addr, header.kind))
            {
                return Err(TransportError::NotSent(format!("{addr}: link busy")));
            }
            if header.kind == RpcKind::SnapshotChunk {
                let delay = *self
                    .net
                    .chunk_delay
                    .lock()
                    .map_err(|_| TransportError::Closed)?;
                tokio::time::sleep(delay).await;
            }
            let handler = self
                .net
                .handlers
                .read()
                .map_err(|_| TransportError::Closed)?
                .get(&addr)
                .cloned();
            let handler =
                handler.ok_or_else(|| TransportError::Connect(format!("{addr}: nobody there")))?;
            let reply = tokio::time::timeout(deadline, handler.handle(header, body))
                .await
                .map_err(|_| TransportError::Timeout)?;
            // A link cut while the request was served loses the answer.
            if self
                .net
                .cut
                .lock()
                .map_err(|_| TransportError::Closed)?
                .contains(&(addr, self.me))
            {
                return Err(TransportError::Stream("link cut before the answer".into()));
            }
            Ok(reply)
        }
        .boxed()
    }
}

struct Node {
    addr: SocketAddr,
    groups: Arc<Groups>,
    _dir: tempfile::TempDir,
}

fn addr(id: NodeId) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, id as u8], 7000))
}

async fn cluster(net: &Arc<MemNet>) -> anyhow::Result<Vec<Node>> {
    let members: BTreeMap<NodeId, NodeInfo> = (1..=3)
        .map(|id| {
            (
                id,
                NodeInfo {
                    raft_addr: addr(id).to_string(),
                    api_addr: String::new(),
                },
            )
        })
        .collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let dir = tempfile::tempdir()?;
        let db = Db::open(&DbConfig::new(dir.path().join("db")))?;
        // Small snapshot chunks, so that a snapshot crosses in many messages.
        let settings = RaftSettings {
            snapshot_chunk_bytes: 256,
            ..RaftSettings::default()
        };
        let groups = Groups::new(id, db, raft_config(settings)?, None);
        groups.set_transport(Arc::new(MemClient {
            me: addr(id),
            net: net.clone(),
        }));
        net.handlers
            .write()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .insert(addr(id), Arc::new(GroupsHandler(groups.clone())));
        nodes.push(Node {
            addr: addr(id),
            groups,
            _dir: dir,
        });
    }
    for n in &nodes {
        n.groups
            .start_partition(
                PARTITION,
                members.clone(),
                None,
                chat4all_raft::sm::partition::PartitionKind::Log,
            )
            .await?;
    }
    Ok(nodes)
}

fn group(n: &Node) -> anyhow::Result<Group> {
    n.groups
        .get(PARTITION)
        .ok_or_else(|| anyhow::anyhow!("partition not running"))
}

/// Polls until some node in `among` leads the partition, as that node itself reports.
async fn leader(nodes: &[Node], among: &[usize]) -> anyhow::Result<usize> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        for &i in among {
            let m = group(&nodes[i])?.raft.metrics().borrow().clone();
            if m.current_leader == Some(i as NodeId + 1) && m.state.is_leader() {
                return Ok(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("no leader among {among:?} within 20 s")
}

fn record(v: &str) -> StoredRecord {
    StoredRecord {
        timestamp_ms: 1,
        key: None,
        value: Payload {
            format: PayloadFormat::Text,
            bytes: v.as_bytes().to_vec(),
        },
        headers: Vec::new(),
    }
}

async fn append(
    g: &Group,
    values: &[&str],
    producer: Option<ProducerBatch>,
) -> anyhow::Result<PartitionResponse> {
    let cmd = PartitionCommand::Append(AppendBatch {
        producer,
        records: values.iter().map(|v| record(v)).collect(),
    });
    match g.raft.client_write(Command::Partition(cmd)).await?.data {
        CommandResponse::Partition(r) => Ok(r),
        other => anyhow::bail!("unexpected {other:?}"),
    }
}

/// Appends through whichever node in `among` leads. A node that lost the leadership between
/// `leader` and the write refuses it without proposing it (ForwardToLeader), so the write is
/// sent again to the new leader: elections can repeat under load (three replicas of a new group
/// campaign at once, and the timeouts are 200-400 ms).
async fn append_on_leader(
    nodes: &[Node],
    among: &[usize],
    values: &[&str],
    producer: Option<ProducerBatch>,
) -> anyhow::Result<PartitionResponse> {
    for _ in 0..20 {
        let i = leader(nodes, among).await?;
        match append(&group(&nodes[i])?, values, producer).await {
            Err(e)
                if matches!(
                    e.downcast_ref::<RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>>(),
                    Some(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))
                ) =>
            {
                continue;
            }
            other => return other,
        }
    }
    anyhow::bail!("the leadership of {among:?} kept moving")
}

fn values(n: &Node) -> anyhow::Result<Vec<(u64, String)>> {
    let GroupState::Partition(sm) = &group(n)?.state else {
        anyhow::bail!("not a partition")
    };
    let read = sm
        .read(0, 10_000, u64::MAX)?
        .map_err(|r| anyhow::anyhow!("out of range {r:?}"))?;
    Ok(read
        .records
        .into_iter()
        .map(|(o, r)| (o, String::from_utf8_lossy(&r.value.bytes).into_owned()))
        .collect())
}

/// Waits (at most 10 s) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !cond() {
        anyhow::ensure!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until every node has applied `count` records, then returns node 0's.
async fn converged(nodes: &[Node], count: usize) -> anyhow::Result<Vec<(u64, String)>> {
    let start = Instant::now();
    loop {
        let all: Vec<_> = nodes.iter().map(values).collect::<Result<_, _>>()?;
        if all.iter().all(|v| v.len() == count) {
            for v in &all[1..] {
                assert_eq!(v, &all[0], "replicas disagree");
            }
            return Ok(all[0].clone());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "not converged: {:?}",
            all.iter().map(Vec::len).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_never_commits_and_replicas_agree_after_healing() -> anyhow::Result<()> {
    let net = Arc::new(MemNet::default());
    let nodes = cluster(&net).await?;
    let all: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let producer = |seq| {
        Some(ProducerBatch {
            id: 1,
            epoch: 0,
            base_sequence: seq,
        })
    };
    let r = append_on_leader(&nodes, &[0, 1, 2], &["a", "b"], producer(0)).await?;
    let first = leader(&nodes, &[0, 1, 2]).await?;
    assert_eq!(
        r,
        PartitionResponse::Appended {
            base_offset: 0,
            count: 2,
            duplicate: false
        }
    );

    // Cut the leader off. Its proposal can never reach a majority.
    net.isolate(nodes[first].addr, &all);
    let stale = group(&nodes[first])?;
    let lost = tokio::spawn(async move { append(&stale, &["lost"], None).await });
    let rest: Vec<usize> = (0..3).filter(|&i| i != first).collect();
    leader(&nodes, &rest).await?;
    // The new leader knows the producer: a retry of its first batch is a duplicate.
    let r = append_on_leader(&nodes, &rest, &["a", "b"], producer(0)).await?;
    assert_eq!(
        r,
        PartitionResponse::Appended {
            base_offset: 0,
            count: 2,
            duplicate: true
        }
    );
    let r = append_on_leader(&nodes, &rest, &["c"], producer(2)).await?;
    assert_eq!(
        r,
        PartitionResponse::Appended {
            base_offset: 2,
            count: 1,
            duplicate: false
        }
    );
    let r = append_on_leader(&nodes, &rest, &["x"], producer(9)).await?;
    assert_eq!(r, PartitionResponse::OutOfOrderSequence { expected: 3 });
    assert!(
        !lost.is_finished(),
        "the isolated leader answered a write it cannot have committed"
    );
    // The cut-off leader stops counting itself in touch (its replica may fall behind without
    // bound, so it must not serve replica reads); the majority side is in touch.
    let stale = group(&nodes[first])?;
    eventually("the isolated leader out of touch", || !stale.in_contact()).await?;
    for &i in &rest {
        let g = group(&nodes[i])?;
        eventually("the majority side in touch", || g.in_contact()).await?;
    }

    // Heal: the old leader's entry is truncated and its proposer learns it was not written.
    net.heal();
    let outcome = tokio::time::timeout(Duration::from_secs(20), lost).await??;
    assert!(
        outcome.is_err(),
        "the isolated write must fail, got {outcome:?}"
    );
    let r = append_on_leader(&nodes, &[0, 1, 2], &["d"], None).await?;
    assert_eq!(
        r,
        PartitionResponse::Appended {
            base_offset: 3,
            count: 1,
            duplicate: false
        }
    );
    let got = converged(&nodes, 4).await?;
    let want: Vec<(u64, String)> = ["a", "b", "c", "d"]
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.to_string()))
        .collect();
    assert_eq!(got, want);
    for n in &nodes {
        n.groups.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_side_cannot_elect_or_commit() -> anyhow::Result<()> {
    let net = Arc::new(MemNet::default());
    let nodes = cluster(&net).await?;
    let all: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    append_on_leader(&nodes, &[0, 1, 2], &["kept"], None).await?;
    let first = leader(&nodes, &[0, 1, 2]).await?;
    // Isolate a follower: it may campaign, but never wins, and the majority keeps writing.
    let follower = (0..3).find(|&i| i != first).unwrap_or(0);
    net.isolate(nodes[follower].addr, &all);
    let majority: Vec<usize> = (0..3).filter(|&i| i != follower).collect();
    for i in 0..20 {
        append_on_leader(&nodes, &majority, &[&format!("w{i}")], None).await?;
    }
    let m = group(&nodes[follower])?.raft.metrics().borrow().clone();
    assert!(!m.state.is_leader(), "an isolated follower became leader");
    assert!(
        values(&nodes[follower])?.len() <= 1,
        "the isolated follower cannot have applied more"
    );
    net.heal();
    let got = converged(&nodes, 21).await?;
    assert!(
        got.iter().enumerate().all(|(i, (o, _))| *o == i as u64),
        "dense offsets"
    );
    for n in &nodes {
        n.groups.shutdown().await;
    }
    Ok(())
}

/// A follower cut off while the other two snapshot and purge their logs catches up from a
/// snapshot, then from the log after it. Building a snapshot only marks the point; the data
/// is read from the leader's live state when the follower needs it. Every replica ends with the
/// same dense offsets, and the follower's records came through a snapshot.
/// Isolates a follower, appends 40 records without it, has both other nodes snapshot and
/// purge their logs, and appends 5 more: the follower can only catch up from a snapshot once
/// healed. Returns the follower, the other two, and the lowest snapshot index of the two.
async fn leave_one_behind_a_purged_log(
    net: &MemNet,
    nodes: &[Node],
) -> anyhow::Result<(usize, Vec<usize>, u64)> {
    let all: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    append_on_leader(nodes, &[0, 1, 2], &["a0", "a1"], None).await?;
    converged(nodes, 2).await?;

    let behind = (leader(nodes, &[0, 1, 2]).await? + 1) % 3;
    net.isolate(nodes[behind].addr, &all);
    let rest: Vec<usize> = (0..3).filter(|&i| i != behind).collect();
    for i in 0..40 {
        append_on_leader(nodes, &rest, &[&format!("b{i}")], None).await?;
    }
    // Both nodes that kept up snapshot and purge: whichever of them leads after the healing
    // (the returning node's candidacies can move the leadership), it no longer has the log
    // the follower misses.
    let mut upto = u64::MAX;
    for &i in &rest {
        let raft = group(&nodes[i])?.raft;
        raft.trigger().snapshot().await?;
        eventually("a snapshot built", || {
            raft.metrics().borrow().snapshot.is_some()
        })
        .await?;
        let at = raft
            .metrics()
            .borrow()
            .snapshot
            .map(|s| s.index)
            .unwrap_or_default();
        raft.trigger().purge_log(at).await?;
        eventually("the log purged", || {
            raft.metrics()
                .borrow()
                .purged
                .is_some_and(|p| p.index >= at)
        })
        .await?;
        upto = upto.min(at);
    }
    for i in 0..5 {
        append_on_leader(nodes, &rest, &[&format!("c{i}")], None).await?;
    }
    Ok((behind, rest, upto))
}

/// The 47 records of [`leave_one_behind_a_purged_log`] at their offsets.
fn expected_after_purge() -> Vec<(u64, String)> {
    ["a0", "a1"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..40).map(|i| format!("b{i}")))
        .chain((0..5).map(|i| format!("c{i}")))
        .enumerate()
        .map(|(o, s)| (o as u64, s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_behind_a_purged_log_catches_up_from_a_snapshot() -> anyhow::Result<()> {
    let net = Arc::new(MemNet::default());
    let nodes = cluster(&net).await?;
    let (behind, _, upto) = leave_one_behind_a_purged_log(&net, &nodes).await?;

    net.heal();
    assert_eq!(converged(&nodes, 47).await?, expected_after_purge());
    let follower = group(&nodes[behind])?.raft;
    eventually(
        "the follower reports the snapshot it caught up from",
        || {
            follower
                .metrics()
                .borrow()
                .snapshot
                .is_some_and(|s| s.index >= upto)
        },
    )
    .await?;
    Ok(())
}

/// A replica that catches up from a snapshot does not stand for election while the snapshot
/// streams in, even when the leader's heartbeats to it are starved and the transfer takes
/// several election timeouts (each chunk takes 500 ms here). Its candidacy could not win
/// (its log is behind), but the higher term would depose the leader that is sending, and the
/// next leader would start the transfer over: a large partition never got across that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_receiving_a_slow_snapshot_without_heartbeats_does_not_depose_its_leader()
-> anyhow::Result<()> {
    let net = Arc::new(MemNet::default());
    let nodes = cluster(&net).await?;
    let (behind, rest, upto) = leave_one_behind_a_purged_log(&net, &nodes).await?;
    *net.chunk_delay.lock().expect("lock") = Duration::from_millis(500);

    net.heal();
    let follower = group(&nodes[behind])?;
    eventually("a snapshot streams to the follower", || {
        follower.holding_elections_for_snapshot()
    })
    .await?;
    // From here on the follower hears of the leader only through the chunks.
    net.starve(nodes[behind].addr, RpcKind::AppendEntries);
    let sender = leader(&nodes, &rest).await?;
    let term = group(&nodes[sender])?.raft.metrics().borrow().current_term;

    let start = Instant::now();
    let installed = || {
        follower
            .raft
            .metrics()
            .borrow()
            .snapshot
            .is_some_and(|s| s.index >= upto)
    };
    while !installed() {
        let m = group(&nodes[sender])?.raft.metrics().borrow().clone();
        let f = follower.raft.metrics().borrow().clone();
        assert!(
            m.state.is_leader() && m.current_term == term,
            "the leader sending the snapshot was deposed: node {} is {:?} in term {} (was \
             {term}); the follower is {:?} in term {}, snapshot {:?}, holding elections: {}",
            sender + 1,
            m.state,
            m.current_term,
            f.state,
            f.current_term,
            f.snapshot,
            follower.holding_elections_for_snapshot()
        );
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the snapshot never got across"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() > Duration::from_millis(800),
        "the transfer took {:?}, less than an election timeout: it tested nothing",
        start.elapsed()
    );
    net.starved.lock().expect("lock").clear();
    assert_eq!(converged(&nodes, 47).await?, expected_after_purge());
    Ok(())
}
