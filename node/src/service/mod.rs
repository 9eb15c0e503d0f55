//! The node's operations on topics, records and producers, each served locally when this node
//! leads the group involved and forwarded over QUIC otherwise. Any node serves any request.
//!
//! The acknowledgement contract lives here: a write is answered with success only after its
//! Raft entry is committed (a majority fsynced it) and applied; a definite failure means nothing
//! was written; anything in between is `OUTCOME_UNKNOWN`.

mod batcher;
mod channels;
pub mod chat;
mod coalesce;
mod directory;
pub mod fetch;
mod forward;
mod forward_batch;
mod groups;
mod metadata;
mod produce;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat4all_raft::groups::{Group, Groups, known_leader};
use chat4all_raft::sm::controller::{ControllerState, ControllerStateMachine};
use chat4all_raft::types::{
    Command, CommandResponse, ControllerCommand, ControllerResponse, GroupId, NodeId, NodeInfo,
    PartitionMeta, TopicMeta,
};
use openraft::error::{ClientWriteError, RaftError};

pub use fetch::{FetchRequest, FetchResult};
pub use forward::{ForwardHandlerImpl, ForwardRequest, ForwardResponse};
pub use groups::{GroupOp, GroupReply, HeartbeatAnswer, MAX_METADATA_BYTES};
pub use produce::ProduceBatch;

use crate::config::{GroupsConfig, LimitsConfig};
use crate::error::ServiceError;
use crate::metrics::Metrics;

/// Forwarding stops after this many hops (a stale leader hint can send a request around once).
const MAX_HOPS: u8 = 3;
/// How long a request waits for a group to have a leader before answering `UNAVAILABLE`.
const LEADER_WAIT: Duration = Duration::from_secs(5);
/// How many leases (`election_timeout_max`) a replica without a leader waits for one before
/// answering UNAVAILABLE at once.
const LEADERLESS_LEASES: u32 = 4;

/// Where an operation on a group runs.
enum Route {
    /// This node leads the group.
    Local(Group),
    /// Another node leads it (or is a replica that knows more).
    Remote(NodeId),
}

/// The outcome of proposing on a group this node believed it led.
enum Proposed<T> {
    Done(T),
    /// Definitely not written: this node is not the leader (maybe it knows who is).
    NotLeader(Option<NodeId>),
}

/// The node's services. Cheap to share.
pub struct Service {
    node_id: NodeId,
    members: BTreeMap<NodeId, NodeInfo>,
    groups: Arc<Groups>,
    controller: ControllerStateMachine,
    limits: LimitsConfig,
    metrics: Arc<Metrics>,
    unkeyed: std::sync::atomic::AtomicU32,
    batcher: batcher::Batcher,
    forwards: forward_batch::ForwardBatcher,
    sync_rounds: metadata::SyncRounds,
    coordinator: groups::Coordinator,
    groups_config: GroupsConfig,
    chat_config: crate::config::ChatConfig,
    auth: crate::auth::Auth,
    channels: crate::channels::Channels,
}

/// A partition's leader and offsets, as `GET /v1/topics/{name}` shows them.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq)]
pub struct PartitionStatus {
    /// The leader's node id, if known.
    pub leader: Option<NodeId>,
    /// The high watermark.
    pub high_watermark: u64,
    /// The log start offset.
    pub log_start_offset: u64,
}

impl Service {
    /// Services of node `node_id` over its groups, configured by `config`.
    pub fn new(
        node_id: NodeId,
        config: &crate::config::ClusterConfig,
        groups: Arc<Groups>,
        controller: ControllerStateMachine,
        auth: crate::auth::Auth,
        metrics: Arc<Metrics>,
    ) -> Arc<Service> {
        let limits = config.limits.clone();
        let batcher = batcher::Batcher::new(Duration::from_millis(limits.write_timeout_ms));
        Arc::new_cyclic(|service| Service {
            batcher,
            forwards: forward_batch::ForwardBatcher::new(service.clone()),
            node_id,
            members: config.members(),
            groups,
            controller,
            limits,
            metrics,
            unkeyed: std::sync::atomic::AtomicU32::new(rand::random()),
            sync_rounds: metadata::SyncRounds::default(),
            coordinator: groups::Coordinator::default(),
            groups_config: config.groups.clone(),
            chat_config: config.chat.clone(),
            auth,
            channels: crate::channels::Channels::new(config.connectors.clone()),
        })
    }

    /// Runs a request on the leader of `group` (whose replicas are `replicas`; none for the
    /// controller, which every node runs), wherever it is: `local` when this node
    /// runs the group (it answers [`Proposed::NotLeader`] if another node leads, and the
    /// request follows the hint), `remote` to forward it to the leader. `None` when the
    /// leader kept moving for `MAX_HOPS` turns.
    ///
    /// A request forwarded here (`hops > 0`) that finds the leader moved (this node's own
    /// proposal refused or truncated, or the node it went on to answering so) is answered
    /// [`ServiceError::NotLeader`] rather than passed on again: only the node the client waits
    /// on knows whether it still waits. Passing it on from here could commit a write after
    /// that node answered `OUTCOME_UNKNOWN` and its client moved on (a deposed leader resuming
    /// with the request, its entry truncated), behind writes the client made since.
    async fn on_leader<T, L, LF, R, RF>(
        &self,
        group: GroupId,
        replicas: &[NodeId],
        hops: u8,
        deadline: Instant,
        mut local: L,
        mut remote: R,
    ) -> Result<Option<T>, ServiceError>
    where
        L: FnMut(Group) -> LF,
        LF: Future<Output = Result<Proposed<T>, ServiceError>>,
        R: FnMut(NodeId) -> RF,
        RF: Future<Output = Result<T, ServiceError>>,
    {
        let mut hint = None;
        for _ in 0..=MAX_HOPS {
            let route = match hint.take() {
                Some(n) if n != self.node_id => Route::Remote(n),
                _ => self.route(group, replicas, deadline).await?,
            };
            let not_leader = match route {
                Route::Local(g) => match local(g).await? {
                    Proposed::Done(r) => return Ok(Some(r)),
                    Proposed::NotLeader(l) => l,
                },
                Route::Remote(n) => match remote(n).await {
                    Err(ServiceError::NotLeader(l)) => l,
                    done => return done.map(Some),
                },
            };
            if hops > 0 {
                return Err(ServiceError::NotLeader(not_leader));
            }
            hint = not_leader;
            if hint.is_none() {
                // An election is on: give it a moment before asking again.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(None)
    }

    /// An internal topic (`__consumer_offsets`, `chat.messages`), created with `partitions`
    /// and a replication factor of up to 3 by the first request that needs it.
    pub(crate) async fn ensure_internal_topic(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<TopicMeta, ServiceError> {
        match self.topic_synced(name).await {
            Err(ServiceError::UnknownTopic(_)) => {}
            found => return found,
        }
        let spec = self.topic_spec(
            name,
            partitions.max(1) as usize,
            self.members.len().min(3),
            None,
            None,
        );
        match self
            .controller_write(ControllerCommand::CreateTopic(spec), 0)
            .await?
        {
            ControllerResponse::TopicCreated(meta) => {
                tracing::info!(partitions = meta.partitions.len(), "created {name}");
                Ok(meta)
            }
            // Another node created it first.
            ControllerResponse::TopicExists => self.topic_synced(name).await,
            other => Err(ServiceError::Internal(format!(
                "controller answered {other:?}"
            ))),
        }
    }

    /// This node's connectors.
    pub fn channels(&self) -> &crate::channels::Channels {
        &self.channels
    }

    /// Authentication state.
    pub fn auth(&self) -> &crate::auth::Auth {
        &self.auth
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The cluster's nodes.
    pub fn members(&self) -> &BTreeMap<NodeId, NodeInfo> {
        &self.members
    }

    /// The node's request limits.
    pub fn limits(&self) -> &LimitsConfig {
        &self.limits
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The node's groups.
    pub fn groups(&self) -> &Arc<Groups> {
        &self.groups
    }

    /// The controller state machine.
    pub fn controller(&self) -> &ControllerStateMachine {
        &self.controller
    }

    /// The cluster metadata as this node has applied it.
    pub fn metadata(&self) -> Arc<ControllerState> {
        self.controller.state()
    }

    /// A new topic's spec: replicas spread over the nodes, continuing the rotation of the
    /// partitions that exist, so leaders (first replicas) stay spread.
    pub fn topic_spec(
        &self,
        name: &str,
        partitions: usize,
        rf: usize,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
    ) -> chat4all_raft::types::TopicSpec {
        let nodes: Vec<NodeId> = self.members.keys().copied().collect();
        let existing: usize = self
            .metadata()
            .topics
            .values()
            .map(|t| t.partitions.len())
            .sum();
        chat4all_raft::types::TopicSpec {
            name: name.to_string(),
            assignments: crate::api::assign_replicas(&nodes, partitions, rf, existing),
            retention_ms,
            retention_bytes,
            created_at_ms: crate::retention::now_ms(),
        }
    }

    /// A topic, or `UNKNOWN_TOPIC`.
    pub fn topic(&self, name: &str) -> Result<TopicMeta, ServiceError> {
        self.metadata()
            .topics
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::UnknownTopic(name.to_string()))
    }

    /// A topic's partition, or `UNKNOWN_TOPIC` / `UNKNOWN_PARTITION`.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<PartitionMeta, ServiceError> {
        let t = self.topic(topic)?;
        let n = t.partitions.len() as u32;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or(ServiceError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions: n,
            })
    }

    /// The next partition for a request of unkeyed records: they stick to one partition per
    /// request and move round-robin between requests (Kafka's sticky partitioning, per batch).
    pub fn next_unkeyed_partition(&self, partitions: u32) -> u32 {
        self.unkeyed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % partitions.max(1)
    }

    /// Where to run an operation on `group`, waiting (bounded) for a leader to be known.
    async fn route(
        &self,
        group: GroupId,
        replicas: &[NodeId],
        deadline: Instant,
    ) -> Result<Route, ServiceError> {
        loop {
            if let Some(g) = self.groups.get(group) {
                let leader = g.leader();
                match leader {
                    Some(l) if l == self.node_id => {
                        if let Some(lost) = g.quorum_lost_for() {
                            // Cut off from a majority: refuse before proposing, so the answer
                            // is a definite failure the client can retry elsewhere, not an
                            // OUTCOME_UNKNOWN after the whole write timeout.
                            return Err(ServiceError::Unavailable(format!(
                                "this node leads group {group} but has not heard from a majority \
                                 for {} ms (cut off?); retry through another node",
                                lost.as_millis()
                            )));
                        }
                        return Ok(Route::Local(g));
                    }
                    Some(l) => {
                        if let Some(silent) = g.leader_silent_for(g.lease() * 2) {
                            // Forwarding to a leader this node no longer hears from would
                            // only time out with an unknown outcome.
                            return Err(ServiceError::Unavailable(format!(
                                "this node has not heard from node {l}, the leader of group \
                                 {group}, for {} ms (cut off?); retry through another node",
                                silent.as_millis()
                            )));
                        }
                        return Ok(Route::Remote(l));
                    }
                    None => {
                        // An election takes about one lease; a candidate refused for a
                        // shorter log waits two more. Past that, this node is most likely on
                        // the minority side of a partition: say so at once.
                        let patience = g.lease() * LEADERLESS_LEASES;
                        // (Zero until this replica has heard from a leader once: a new
                        // group's first election, or a restarted node's, is not silence.)
                        let silent = g.leader_silent_for(Duration::ZERO).unwrap_or_default();
                        if silent > patience {
                            return Err(ServiceError::Unavailable(format!(
                                "group {group} has had no leader this node hears from for {} ms \
                                 (cut off from a majority?); retry through another node",
                                silent.as_millis()
                            )));
                        }
                        let left = deadline
                            .saturating_duration_since(Instant::now())
                            .min(LEADER_WAIT)
                            .min(patience - silent);
                        let waited = g
                            .raft
                            .wait(Some(left))
                            .metrics(|m| known_leader(m).is_some(), "leader known")
                            .await;
                        if waited.is_err() {
                            return Err(ServiceError::Unavailable(format!(
                                "group {group} has no leader (no majority reachable)"
                            )));
                        }
                    }
                }
            } else if replicas.contains(&self.node_id) || group == GroupId::CONTROLLER {
                // A replica that has not started the group yet (the topic was just created).
                if Instant::now() >= deadline {
                    return Err(ServiceError::Unavailable(format!(
                        "group {group} is not running on this node yet"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            } else {
                // Not a replica: a replica will know the leader and forward if need be.
                let pick = replicas
                    .get(self.node_id as usize % replicas.len().max(1))
                    .copied();
                return pick.map(Route::Remote).ok_or_else(|| {
                    ServiceError::Internal(format!("group {group} has no replicas"))
                });
            }
        }
    }

    /// Proposes `cmd` on a group this node leads, waiting at most until `deadline`.
    async fn propose(
        &self,
        g: &Group,
        cmd: Command,
        deadline: Instant,
    ) -> Result<Proposed<CommandResponse>, ServiceError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, g.raft.client_write(cmd)).await {
            Err(_) => Err(ServiceError::OutcomeUnknown(format!(
                "group {} did not commit within {} ms (no majority reachable?)",
                g.id,
                left.as_millis()
            ))),
            Ok(Ok(resp)) => Ok(Proposed::Done(resp.data)),
            // openraft answers ForwardToLeader before proposing, or when the entry was truncated
            // by a new leader (so it was never committed): either way nothing was written.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Ok(Proposed::NotLeader(f.leader_id))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => Err(
                ServiceError::Internal(format!("unexpected membership error: {e}")),
            ),
            Ok(Err(RaftError::Fatal(f))) => Err(ServiceError::OutcomeUnknown(format!(
                "raft group {} stopped: {f}",
                g.id
            ))),
        }
    }

    /// Proposes a controller command on the controller leader, wherever it is.
    pub async fn controller_write(
        &self,
        cmd: ControllerCommand,
        hops: u8,
    ) -> Result<ControllerResponse, ServiceError> {
        let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms);
        let local = |g: Group| {
            let cmd = Command::Controller(cmd.clone());
            async move {
                Ok(match self.propose(&g, cmd, deadline).await? {
                    Proposed::Done(CommandResponse::Controller(r)) => Proposed::Done(r),
                    Proposed::Done(other) => {
                        return Err(ServiceError::Internal(format!(
                            "controller answered {other:?}"
                        )));
                    }
                    Proposed::NotLeader(l) => Proposed::NotLeader(l),
                })
            }
        };
        let remote = |n: NodeId| {
            let req = ForwardRequest::Controller {
                cmd: cmd.clone(),
                hops: hops + 1,
            };
            async move {
                match self
                    .forward(n, GroupId::CONTROLLER, req, hops, deadline)
                    .await?
                {
                    ForwardResponse::Controller(r) => Ok(r),
                    other => Err(ServiceError::Internal(format!(
                        "unexpected forward answer {other:?}"
                    ))),
                }
            }
        };
        let group = GroupId::CONTROLLER;
        if let Some(r) = self
            .on_leader(group, &[], hops, deadline, local, remote)
            .await?
        {
            return Ok(r);
        }
        Err(ServiceError::Unavailable(
            "the controller leader keeps moving; retry".into(),
        ))
    }

    /// The leader and offsets of one partition as its leader sees them (a follower's applied
    /// state may trail), falling back to this node's replica, or any replica, when the leader
    /// cannot be asked.
    pub async fn partition_status(
        &self,
        meta: &PartitionMeta,
        hops: u8,
    ) -> Option<PartitionStatus> {
        let local = self.groups.get(meta.group).and_then(|g| {
            let chat4all_raft::groups::GroupState::Partition(sm) = &g.state else {
                return None;
            };
            let s = sm.state();
            Some(PartitionStatus {
                leader: g.leader(),
                high_watermark: s.next_offset,
                log_start_offset: s.log_start_offset,
            })
        });
        if let Some(status) = &local {
            match status.leader {
                Some(l) if l != self.node_id && hops == 0 => {
                    let deadline = Instant::now() + Duration::from_millis(500);
                    let req = ForwardRequest::Describe { group: meta.group };
                    if let Ok(ForwardResponse::Described(Some(s))) =
                        self.forward(l, meta.group, req, hops, deadline).await
                    {
                        return Some(s);
                    }
                }
                _ => {}
            }
            return local;
        }
        if hops >= 1 {
            return None;
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        for &r in &meta.replicas {
            let req = ForwardRequest::Describe { group: meta.group };
            if let Ok(ForwardResponse::Described(s)) =
                self.forward(r, meta.group, req, hops, deadline).await
            {
                return s;
            }
        }
        None
    }
}

/// The partition state machine of `g`; an internal error if `g` is the controller group.
fn partition_sm(
    g: &Group,
) -> Result<&chat4all_raft::sm::partition::PartitionStateMachine, ServiceError> {
    match &g.state {
        chat4all_raft::groups::GroupState::Partition(sm) => Ok(sm),
        _ => Err(ServiceError::Internal(format!(
            "group {} is not a partition",
            g.id
        ))),
    }
}
