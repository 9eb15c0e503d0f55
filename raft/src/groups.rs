//! The multi-Raft registry: every Raft group this node is a member of, and the transport
//! handler that routes incoming RPCs to the right group by the group id in their header.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chat4all_storage::Db;
use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::Snapshot;
use openraft::error::{InitializeError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest};

use crate::Error;
use crate::log_store::{FsyncObserver, LogStore, WalSyncer};
use crate::network::{GroupNetwork, RaftReply, decode, encode};
use crate::sm::controller::ControllerStateMachine;
use crate::sm::partition::{PartitionKind, PartitionStateMachine};
use crate::snapshot::{ChunkRequest, Inbound, SnapshotData};
use crate::transport::{RpcClient, RpcHandler, RpcHeader, RpcKind};
use crate::types::{GroupId, NodeId, NodeInfo, Raft, TypeConfig};

/// Serves requests that other nodes forward to this one (the node crate implements it).
pub trait ForwardHandler: Send + Sync + 'static {
    /// Handles one forwarded request body and returns the response body.
    fn handle_forward(&self, body: Bytes) -> BoxFuture<'static, Bytes>;
}

/// The state machine behind a group, for local reads.
#[derive(Clone)]
pub enum GroupState {
    /// The controller group.
    Controller(ControllerStateMachine),
    /// A partition group.
    Partition(PartitionStateMachine),
}

/// A running group on this node.
#[derive(Clone)]
pub struct Group {
    /// The group id.
    pub id: GroupId,
    /// Its Raft instance.
    pub raft: Raft,
    /// Its state machine (shared with the Raft instance).
    pub state: GroupState,
    /// The last leader this replica accepted an AppendEntries or snapshot from, and when.
    contact: Arc<std::sync::Mutex<Contact>>,
    /// While a snapshot streams in: when its last chunk came (see
    /// [`Group::hold_elections_for_snapshot`]).
    snapshot_hold: Arc<std::sync::Mutex<Option<Instant>>>,
}

/// See [`Group::leader_silent_for`].
#[derive(Default)]
struct Contact {
    leader: Option<NodeId>,
    at: Option<Instant>,
}

impl Group {
    /// The leader this replica knows of. After a restart a node's metrics name the leader of its
    /// last committed vote, possibly itself, until it hears from the current leader; it counts
    /// itself only when it really leads.
    pub fn leader(&self) -> Option<NodeId> {
        known_leader(&self.raft.metrics().borrow())
    }

    /// How long this replica, while not leading, has not heard from any leader, if that is
    /// longer than `longer_than`. A follower that knows a leader but has not heard from it
    /// past the lease (`election_timeout_max`) is cut off or facing a dead leader; one that has
    /// been without a leader for several election timeouts is most likely on the minority
    /// side of a partition. Either way forwarding or waiting would only end in a timeout.
    /// `None` until the replica has heard from a leader once since it started (a new group's
    /// or a restarted node's first election may take a while; that is not silence), and
    /// right after it learns of a new leader (the AppendEntries that told it may still be in
    /// progress).
    pub fn leader_silent_for(&self, longer_than: Duration) -> Option<Duration> {
        let known = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state.is_leader() {
                return None;
            }
            known_leader(&m)
        };
        let mut contact = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        let at = contact.at?;
        if known.is_some() && known != contact.leader {
            *contact = Contact {
                leader: known,
                at: Some(Instant::now()),
            };
            return None;
        }
        let since = at.elapsed();
        (since > longer_than).then_some(since)
    }

    /// Keeps this replica from standing for election while a leader streams it a snapshot
    /// and while it installs it, until [`Group::end_snapshot_hold`] or no chunk for
    /// [`SNAPSHOT_HOLD`].
    ///
    /// A replica that needs a snapshot cannot win an election (its log ends before the
    /// leader's snapshot point, so every voter that has the leader's log refuses it), but its
    /// candidacy raises the term, which deposes the leader that is sending, and the next
    /// leader starts the transfer over. On a loaded machine a large transfer starves the
    /// replica's heartbeats (measured: a 600 MB partition, 370 transfers begun and none
    /// finished in 13 minutes, the term at 739), so the transfer itself stands in for them.
    ///
    /// The election switch is flipped under the same lock as the hold, so the two always
    /// agree: flipped after the lock, a hold that began just as another ended could leave
    /// elections off with no hold to turn them on again. (A CI run had a replica that never
    /// stood for election again in a group after two transfers to it overlapped; this race
    /// is how that can happen.)
    /// Returns whether this call began the hold (none was on).
    fn hold_elections_for_snapshot(&self) -> bool {
        let mut hold = self.snapshot_hold.lock().unwrap_or_else(|p| p.into_inner());
        if hold.replace(Instant::now()).is_some() {
            return false;
        }
        self.raft.runtime_config().elect(false);
        drop(hold);
        let (raft, hold, group) = (self.raft.clone(), self.snapshot_hold.clone(), self.id);
        tokio::spawn(async move {
            loop {
                let last = {
                    let mut h = hold.lock().unwrap_or_else(|p| p.into_inner());
                    match *h {
                        None => return,
                        Some(last) if last.elapsed() >= SNAPSHOT_HOLD => {
                            *h = None;
                            raft.runtime_config().elect(true);
                            drop(h);
                            tracing::warn!(%group, "no snapshot chunk for {SNAPSHOT_HOLD:?}: elections allowed again");
                            return;
                        }
                        Some(last) => last,
                    }
                };
                tokio::time::sleep_until((last + SNAPSHOT_HOLD).into()).await;
            }
        });
        true
    }

    /// Whether a snapshot is streaming in and this replica holds off elections meanwhile.
    pub fn holding_elections_for_snapshot(&self) -> bool {
        self.snapshot_hold
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Ends [`Group::hold_elections_for_snapshot`]: the transfer is installed or refused.
    fn end_snapshot_hold(&self) {
        let mut hold = self.snapshot_hold.lock().unwrap_or_else(|p| p.into_inner());
        if hold.take().is_some() {
            self.raft.runtime_config().elect(true);
        }
    }

    /// When this replica last heard from a leader (AppendEntries or a snapshot), whatever its
    /// role now: on a newly elected leader, about when its predecessor went silent.
    pub fn last_leader_contact(&self) -> Option<Instant> {
        self.contact.lock().unwrap_or_else(|p| p.into_inner()).at
    }

    /// The lease a follower grants its leader (`election_timeout_max`).
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.raft.config().election_timeout_max)
    }

    fn heard_from_leader(&self) {
        let leader = self.leader();
        *self.contact.lock().unwrap_or_else(|p| p.into_inner()) = Contact {
            leader,
            at: Some(Instant::now()),
        };
    }

    /// Whether this replica is in touch with its group's current leader: it leads and has
    /// heard from a majority within the lease, or it follows a leader it has heard from
    /// within the lease. What such a replica has applied is a committed prefix of the log at
    /// most about a lease behind the leader's; one that is not in touch may be cut off and
    /// its state arbitrarily old.
    pub fn in_contact(&self) -> bool {
        let lease = self.lease();
        let (leading, known) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let quorum_recent = m
                .millis_since_quorum_ack
                .is_some_and(|ms| Duration::from_millis(ms) <= lease);
            (
                m.state.is_leader().then_some(quorum_recent),
                known_leader(&m),
            )
        };
        if let Some(quorum_recent) = leading {
            return quorum_recent;
        }
        let contact = self.contact.lock().unwrap_or_else(|p| p.into_inner());
        known.is_some()
            && contact.leader == known
            && contact.at.is_some_and(|at| at.elapsed() <= lease)
    }

    /// How long this replica, while leading, has not heard from a majority, if that is longer
    /// than the lease a follower grants its leader (`election_timeout_max`). Past the lease
    /// the followers may have elected someone else, and nothing this leader proposes can
    /// commit until it hears from a majority again, so callers should refuse new work at once
    /// (a definite "unavailable") rather than propose it and time out with an unknown outcome.
    /// openraft refreshes the figure on every tick of the group (at most one heartbeat old).
    pub fn quorum_lost_for(&self) -> Option<Duration> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let since = Duration::from_millis(m.millis_since_quorum_ack?);
        (m.state.is_leader() && since > self.lease()).then_some(since)
    }
}

/// [`Group::leader`] over a metrics snapshot.
pub fn known_leader(m: &openraft::RaftMetrics<NodeId, NodeInfo>) -> Option<NodeId> {
    match m.current_leader {
        Some(l) if l == m.id && !m.state.is_leader() => None,
        other => other,
    }
}

/// How long after a snapshot chunk a replica still holds off elections (see
/// [`Group::hold_elections_for_snapshot`]): several election timeouts, as a chunk of a few MiB
/// can take a while on a loaded machine, yet a dead sender is noticed within seconds.
const SNAPSHOT_HOLD: Duration = Duration::from_secs(2);

/// Every group on this node.
pub struct Groups {
    node_id: NodeId,
    db: Db,
    transport: OnceLock<Arc<dyn RpcClient>>,
    /// Serializes group starts, so one group never gets two Raft instances over one store.
    starting: tokio::sync::Mutex<()>,
    config: Arc<openraft::Config>,
    groups: RwLock<HashMap<GroupId, Group>>,
    forward: OnceLock<Arc<dyn ForwardHandler>>,
    syncer: Arc<WalSyncer>,
    /// Snapshots being received from leaders.
    inbound: Arc<Inbound>,
}

/// When a replica of a new group initializes it (and so campaigns).
enum Initialize {
    /// At start.
    AtOnce,
    /// Only if no leader or entry has reached it within a few election timeouts.
    AsFallback,
}

async fn initialize_group(raft: &Raft, members: BTreeMap<NodeId, NodeInfo>) -> Result<(), Error> {
    match raft.initialize(members).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Raft timing (in ms) and log compaction shared by every group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftSettings {
    /// How often a leader sends heartbeats.
    pub heartbeat_ms: u64,
    /// Election timeouts are drawn from `election_min_ms..election_max_ms` once per group.
    pub election_min_ms: u64,
    /// See `election_min_ms`; also the length of a follower's leader lease.
    pub election_max_ms: u64,
    /// A group is snapshotted every this many log entries, and its log purged up to the
    /// snapshot, less `log_kept_after_snapshot` entries.
    pub snapshot_every: u64,
    /// Entries kept before a snapshot's point, so that a follower a little behind catches up
    /// from the log instead of a whole snapshot.
    pub log_kept_after_snapshot: u64,
    /// Bytes of rows per message when a snapshot is sent to a follower.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftSettings {
    /// openraft 0.9 gives a follower that has heard from a leader a lease of
    /// `election_max_ms`: it refuses votes until the lease expires and stands for election only
    /// after lease + its own timeout. A killed leader is therefore replaced after
    /// `election_max_ms + rand(election_min_ms..election_max_ms)` = 0.6-0.8 s here. A node
    /// whose candidacy was refused for its shorter log (common under writes: one survivor is a
    /// few entries behind) waits another `2 x election_max_ms` before its next one, so the
    /// worst case is about 1.6 s (with 300-600 it was 2.4 s, with 500-1000 4 s). Seven missed
    /// heartbeats still fit before a follower stands, so a busy 2-core machine does not depose
    /// leaders that are alive. Note that openraft gives each AppendEntries RPC one heartbeat
    /// interval to complete, fsync included.
    fn default() -> Self {
        RaftSettings {
            heartbeat_ms: 100,
            election_min_ms: 200,
            election_max_ms: 400,
            snapshot_every: 20_000,
            log_kept_after_snapshot: 2_000,
            snapshot_chunk_bytes: crate::snapshot::DEFAULT_CHUNK_BYTES as u64,
        }
    }
}

/// The openraft configuration of every group.
pub fn raft_config(settings: RaftSettings) -> Result<openraft::Config, Error> {
    let config = openraft::Config {
        cluster_name: "chat4all".into(),
        heartbeat_interval: settings.heartbeat_ms,
        election_timeout_min: settings.election_min_ms,
        election_timeout_max: settings.election_max_ms,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 512,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
        max_in_snapshot_log_to_keep: settings.log_kept_after_snapshot,
        snapshot_max_chunk_size: settings.snapshot_chunk_bytes,
        ..Default::default()
    };
    Ok(config.validate()?)
}

impl Groups {
    /// An empty registry. The transport is attached later (it needs the registry as handler).
    pub fn new(
        node_id: NodeId,
        db: Db,
        config: openraft::Config,
        observer: Option<Arc<dyn FsyncObserver>>,
    ) -> Arc<Groups> {
        let syncer = WalSyncer::start(db.clone(), observer);
        let inbound = Arc::new(Inbound::new(&db));
        Arc::new(Groups {
            inbound,
            node_id,
            db,
            transport: OnceLock::new(),
            starting: tokio::sync::Mutex::new(()),
            config: Arc::new(config),
            groups: RwLock::new(HashMap::new()),
            forward: OnceLock::new(),
            syncer,
        })
    }

    /// The database every group on this node keeps its log and state in.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Attaches the transport used to reach peers (once).
    pub fn set_transport(&self, transport: Arc<dyn RpcClient>) {
        let _ = self.transport.set(transport);
    }

    /// The transport, if the node has peers.
    pub fn transport(&self) -> Option<Arc<dyn RpcClient>> {
        self.transport.get().cloned()
    }

    /// Sets who serves forwarded requests (once).
    pub fn set_forward_handler(&self, handler: Arc<dyn ForwardHandler>) {
        let _ = self.forward.set(handler);
    }

    /// The group, if this node runs it.
    pub fn get(&self, id: GroupId) -> Option<Group> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every group this node runs.
    pub fn all(&self) -> Vec<Group> {
        self.groups
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Starts the controller group (idempotent), initializing it with `voters` if it is new.
    pub async fn start_controller(
        &self,
        voters: BTreeMap<NodeId, NodeInfo>,
    ) -> Result<Group, Error> {
        let sm = ControllerStateMachine::open(self.db.clone())?;
        self.start(
            GroupId::CONTROLLER,
            GroupState::Controller(sm.clone()),
            voters,
            sm,
            Initialize::AtOnce,
        )
        .await
    }

    /// Starts a partition group (idempotent), initializing it with `replicas` if it is new.
    /// A new group's first leader is `preferred` when that replica is up: it campaigns at
    /// once, the others only if no leader has appeared after a few election timeouts. (openraft
    /// 0.9 has no leader transfer, so where a partition's leadership starts is where it stays
    /// until a failure; spreading the preferred replicas spreads the leaders' work.)
    /// `kind` says what the partition keeps besides its log (a property of its topic).
    pub async fn start_partition(
        &self,
        id: GroupId,
        replicas: BTreeMap<NodeId, NodeInfo>,
        preferred: Option<NodeId>,
        kind: PartitionKind,
    ) -> Result<Group, Error> {
        if let Some(g) = self.get(id) {
            return Ok(g);
        }
        let sm = PartitionStateMachine::open_with(self.db.clone(), id, kind)?;
        let initialize = match preferred {
            Some(p) if p != self.node_id && replicas.contains_key(&p) => Initialize::AsFallback,
            _ => Initialize::AtOnce,
        };
        self.start(
            id,
            GroupState::Partition(sm.clone()),
            replicas,
            sm,
            initialize,
        )
        .await
    }

    async fn start<SM>(
        &self,
        id: GroupId,
        state: GroupState,
        members: BTreeMap<NodeId, NodeInfo>,
        sm: SM,
        initialize: Initialize,
    ) -> Result<Group, Error>
    where
        SM: openraft::storage::RaftStateMachine<TypeConfig>,
    {
        let _starting = self.starting.lock().await;
        if let Some(g) = self.get(id) {
            return Ok(g);
        }
        let log = LogStore::with_syncer(self.db.clone(), id, self.syncer.clone());
        let pristine = log.is_pristine()?;
        let network = GroupNetwork::new(self.transport.get().cloned(), id);
        let raft = Raft::new(self.node_id, self.config.clone(), network, log, sm).await?;
        if pristine {
            // Every replica initializes with the same membership, so whichever runs first, the
            // logs agree; a replica that already has state never re-initializes. Initializing
            // starts an election at once.
            match initialize {
                Initialize::AtOnce => initialize_group(&raft, members).await?,
                Initialize::AsFallback => {
                    // Give the preferred replica a head start: initialize only if nothing
                    // reached this replica (no leader, no entry) within a few timeouts.
                    let (raft, grace) = (
                        raft.clone(),
                        Duration::from_millis(self.config.election_timeout_max * 4),
                    );
                    tokio::spawn(async move {
                        let heard = raft
                            .wait(Some(grace))
                            .metrics(
                                |m| m.current_leader.is_some() || m.last_log_index.is_some(),
                                "a leader or an entry",
                            )
                            .await;
                        if heard.is_err()
                            && let Err(e) = initialize_group(&raft, members).await
                        {
                            tracing::warn!("cannot initialize a group: {e}");
                        }
                    });
                }
            }
        }
        let group = Group {
            id,
            raft,
            state,
            contact: Arc::default(),
            snapshot_hold: Arc::default(),
        };
        let mut map = self.groups.write().unwrap_or_else(|p| p.into_inner());
        Ok(map.entry(id).or_insert(group).clone())
    }

    /// Stops every group's Raft instance.
    pub async fn shutdown(&self) {
        let groups = self.all();
        for g in groups {
            if let Err(e) = g.raft.shutdown().await {
                tracing::warn!(group = %g.id, "raft shutdown: {e}");
            }
        }
    }

    async fn serve(self: Arc<Self>, header: RpcHeader, body: Bytes) -> Bytes {
        if header.kind == RpcKind::Forward {
            return match self.forward.get() {
                Some(f) => f.handle_forward(body).await,
                None => reply::<(), ()>(RaftReply::UnknownGroup),
            };
        }
        let Some(group) = self.get(GroupId(header.group)) else {
            return reply::<(), ()>(RaftReply::UnknownGroup);
        };
        match header.kind {
            RpcKind::AppendEntries => match decode::<AppendEntriesRequest<TypeConfig>>(&body) {
                Ok(req) => {
                    let res = group.raft.append_entries(req).await;
                    if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                        group.heard_from_leader();
                    }
                    reply(result(res))
                }
                Err(e) => reply::<(), ()>(RaftReply::BadRequest(e.to_string())),
            },
            RpcKind::Vote => match decode::<VoteRequest<NodeId>>(&body) {
                Ok(req) => reply(result(group.raft.vote(req).await)),
                Err(e) => reply::<(), ()>(RaftReply::BadRequest(e.to_string())),
            },
            RpcKind::SnapshotChunk => match decode::<ChunkRequest>(&body) {
                Ok(req) => self.receive_snapshot_chunk(&group, req).await,
                Err(e) => reply::<(), ()>(RaftReply::BadRequest(e.to_string())),
            },
            RpcKind::Forward => reply::<(), ()>(RaftReply::UnknownGroup),
        }
    }
}

impl Groups {
    /// Stages one snapshot chunk from a leader; with the last one, installs the snapshot.
    /// Chunks from a leader older than the vote this replica holds are refused with that vote
    /// (the sender steps down when it sees it).
    async fn receive_snapshot_chunk(&self, group: &Group, req: ChunkRequest) -> Bytes {
        // Hold elections before looking at the vote and staging the chunk (which takes a
        // while): with the switch flipped after, a replica whose timer ran out meanwhile stood
        // for election while the chunk it had accepted was being written (found by the
        // memory_cluster slow-snapshot test, about 1 run in 8). A chunk refused here ends a
        // hold it began, not one an earlier chunk of a live transfer holds.
        let began = group.hold_elections_for_snapshot();
        let refuse = |r: Bytes| {
            if began {
                group.end_snapshot_hold();
            }
            r
        };
        let vote = group.raft.metrics().borrow().vote;
        if req.vote < vote {
            return refuse(reply::<_, ()>(RaftReply::Ok(SnapshotResponse { vote })));
        }
        let (inbound, id) = (self.inbound.clone(), group.id);
        let staged =
            tokio::task::spawn_blocking(move || inbound.receive(id, &req).map(|path| (req, path)))
                .await;
        let (req, path) = match staged {
            Ok(Ok(staged)) => staged,
            Ok(Err(msg)) => return refuse(reply::<(), ()>(RaftReply::BadRequest(msg))),
            Err(e) => return refuse(reply::<(), ()>(RaftReply::BadRequest(e.to_string()))),
        };
        group.heard_from_leader();
        let Some(path) = path else {
            return reply::<_, ()>(RaftReply::Ok(SnapshotResponse { vote }));
        };
        let snapshot = Snapshot {
            meta: req.meta,
            snapshot: Box::new(SnapshotData::Received(path.clone())),
        };
        // The install writes every row (seconds for a large partition): the hold lasts
        // through it, as the replica still cannot win an election.
        let install = group.raft.install_full_snapshot(req.vote, snapshot);
        tokio::pin!(install);
        let mut refresh = tokio::time::interval(SNAPSHOT_HOLD / 2);
        let res = loop {
            tokio::select! {
                res = &mut install => break res,
                _ = refresh.tick() => {
                    group.hold_elections_for_snapshot();
                }
            }
        };
        group.end_snapshot_hold();
        if res.is_ok() {
            self.inbound.discard(&path);
        }
        reply(result(res))
    }
}

fn result<T, E>(r: Result<T, E>) -> RaftReply<T, E> {
    match r {
        Ok(t) => RaftReply::Ok(t),
        Err(e) => RaftReply::Err(e),
    }
}

fn reply<T: serde::Serialize, E: serde::Serialize>(r: RaftReply<T, E>) -> Bytes {
    encode(&r).unwrap_or_else(|e| {
        tracing::error!("cannot encode a raft reply: {e}");
        Bytes::new()
    })
}

/// Routes the transport's incoming RPCs to the registry.
pub struct GroupsHandler(pub Arc<Groups>);

impl RpcHandler for GroupsHandler {
    fn handle(&self, header: RpcHeader, body: Bytes) -> BoxFuture<'static, Bytes> {
        self.0.clone().serve(header, body).boxed()
    }
}
