//! The consumer group coordinator. A group's coordinator is the leader of the group's
//! `__consumer_offsets` partition; any node takes a group request and forwards it there.
//!
//! The coordinator keeps each group it serves in memory, loaded from the partition's compacted
//! view the first time it is asked in a term, and changes it only by appending the new state
//! to the partition and waiting for the commit: what it answers is always what a majority has
//! on disk, and a new coordinator loads exactly that. Requests to one group run one at a time.
//!
//! Session and revocation timers are the only state kept in memory alone: a new coordinator
//! starts every member's timers afresh (as Kafka does), so a leader change never expires a
//! member early.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat4all_raft::groups::{Group as RaftGroup, GroupState};
use chat4all_raft::types::{
    AppendBatch, ControllerCommand, ControllerResponse, GroupId, NodeId, PartitionResponse,
    TopicMeta,
};
use chat4all_storage::StoredRecord;
use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{ForwardRequest, ForwardResponse, MAX_HOPS, Proposed, Route, Service};
use crate::error::ServiceError;
use crate::groups::model::{
    Group, GroupConfig, GroupError, GroupStateName, Heartbeat, HeartbeatReply, OffsetReset,
    SESSION_TIMEOUT_MS, Tp,
};
use crate::groups::stored::{self, Committed};
use crate::groups::{OFFSETS_TOPIC, offsets_partition, validate_group_name};

/// How often it refreshes the lag metric.
const LAG_EVERY: Duration = Duration::from_secs(5);
/// Longest offset metadata string (Kafka's `offset.metadata.max.bytes`).
pub const MAX_METADATA_BYTES: usize = 4096;

/// A request to a group's coordinator. Crosses the wire when forwarded.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum GroupOp {
    /// Join, stay, reconcile, or leave.
    Heartbeat(Heartbeat),
    /// Commit offsets.
    Commit {
        /// `(member id, member epoch)`; `None` only while the group has no members.
        member: Option<(String, i32)>,
        /// What to commit.
        offsets: Vec<(Tp, Committed)>,
    },
    /// Read the committed offsets.
    Offsets,
    /// The group's state, members and offsets.
    Describe,
    /// Create the group or change its settings.
    Configure {
        /// New session timeout.
        session_timeout_ms: Option<u64>,
        /// New reset policy.
        auto_offset_reset: Option<OffsetReset>,
    },
    /// Every group of one `__consumer_offsets` partition (the group name is ignored).
    List,
    /// Delete an empty group and its committed offsets.
    Delete,
}

/// The coordinator's answers.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub enum GroupReply {
    /// A heartbeat's outcome.
    Heartbeat {
        /// The member's state.
        reply: HeartbeatReply,
        /// How often to heartbeat.
        heartbeat_interval_ms: u64,
        /// The group's committed offset of each assigned partition.
        committed: Vec<(Tp, Option<u64>)>,
        /// The group's reset policy.
        auto_offset_reset: OffsetReset,
    },
    /// Offsets were committed.
    Committed,
    /// Committed offsets.
    Offsets(Vec<(Tp, Committed)>),
    /// A group.
    Described(GroupView),
    /// Settings after a `Configure`.
    Configured(GroupConfig),
    /// Groups of one partition.
    Listed(Vec<(String, GroupStateName, usize)>),
    /// The group is gone.
    Deleted,
}

/// A group as `GET /v1/groups/{group}` shows it (lag is added at the edge).
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct GroupView {
    /// The group.
    pub group: Group,
    /// Its state name.
    pub state: GroupStateName,
    /// Committed offsets.
    pub offsets: Vec<(Tp, Committed)>,
    /// The node coordinating it.
    pub coordinator: NodeId,
}

/// One group as its coordinator holds it.
struct Loaded {
    /// `None` while the group does not exist.
    group: Option<Group>,
    offsets: BTreeMap<Tp, Committed>,
    /// When each member was last heard from.
    last_seen: HashMap<String, Instant>,
    /// When each member was first asked to release partitions it still holds.
    revoking_since: HashMap<String, Instant>,
}

type Slot = Arc<tokio::sync::Mutex<Option<Loaded>>>;

/// The groups of one `__consumer_offsets` partition, for one leadership term.
struct Shard {
    term: u64,
    groups: Mutex<HashMap<String, Slot>>,
}

/// The coordinator's memory: one shard per `__consumer_offsets` partition this node leads.
#[derive(Default)]
pub(super) struct Coordinator {
    shards: Mutex<HashMap<GroupId, Arc<Shard>>>,
}

impl Coordinator {
    /// The shard of `group` for `term`; a new term starts from nothing (loads from disk).
    fn shard(&self, group: GroupId, term: u64) -> Arc<Shard> {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        match shards.get(&group) {
            Some(s) if s.term == term => s.clone(),
            _ => {
                let s = Arc::new(Shard {
                    term,
                    groups: Mutex::new(HashMap::new()),
                });
                shards.insert(group, s.clone());
                s
            }
        }
    }

    fn drop_shard(&self, group: GroupId) {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    fn all(&self) -> Vec<(GroupId, Arc<Shard>)> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(g, s)| (*g, s.clone()))
            .collect()
    }
}

impl Shard {
    fn slot(&self, name: &str) -> Slot {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn slots(&self) -> Vec<(String, Slot)> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }
}

fn group_err(e: GroupError) -> ServiceError {
    match e {
        GroupError::Fenced(m) => ServiceError::MemberFenced(m),
        GroupError::Invalid(code, m) => ServiceError::invalid(code, m),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Service {
    /// Runs `op` on group `name`'s coordinator, wherever it is.
    pub async fn group_request(&self, name: &str, op: GroupOp) -> Result<GroupReply, ServiceError> {
        validate_group_name(name)?;
        let creates = matches!(op, GroupOp::Heartbeat(_) | GroupOp::Configure { .. });
        let topic = if creates {
            self.offsets_topic().await?
        } else {
            match self.topic_synced(OFFSETS_TOPIC).await {
                Ok(t) => t,
                Err(ServiceError::UnknownTopic(_)) => {
                    return Err(ServiceError::UnknownGroup(name.to_string()));
                }
                Err(e) => return Err(e),
            }
        };
        let partition = offsets_partition(name, topic.partitions.len() as u32);
        self.group_call(partition, name.to_string(), op, 0).await
    }

    /// Settings of a group created now.
    fn new_group_config(&self) -> GroupConfig {
        GroupConfig {
            session_timeout_ms: self.groups_config.session_timeout_ms,
            ..GroupConfig::default()
        }
    }

    /// Where a partition without a committed offset starts, by a group's reset policy; `None`
    /// if its leader cannot be asked right now.
    pub async fn start_position(&self, topic: &str, p: u32, reset: OffsetReset) -> Option<u64> {
        let meta = self.partition(topic, p).ok()?;
        let st = self.partition_status(&meta, 0).await?;
        Some(match reset {
            OffsetReset::Earliest => st.log_start_offset,
            OffsetReset::Latest => st.high_watermark,
        })
    }

    /// Every group, from every `__consumer_offsets` partition's coordinator.
    pub async fn list_groups(&self) -> Result<Vec<(String, GroupStateName, usize)>, ServiceError> {
        let topic = match self.topic_synced(OFFSETS_TOPIC).await {
            Ok(t) => t,
            Err(ServiceError::UnknownTopic(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let calls = (0..topic.partitions.len() as u32)
            .map(|p| self.group_call(p, String::new(), GroupOp::List, 0));
        let mut out = Vec::new();
        for r in futures::future::join_all(calls).await {
            match r? {
                GroupReply::Listed(l) => out.extend(l),
                other => {
                    return Err(ServiceError::Internal(format!("list answered {other:?}")));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// `__consumer_offsets`, created on first use with the configured partition count.
    async fn offsets_topic(&self) -> Result<TopicMeta, ServiceError> {
        match self.topic_synced(OFFSETS_TOPIC).await {
            Err(ServiceError::UnknownTopic(_)) => {}
            found => return found,
        }
        let spec = self.topic_spec(
            OFFSETS_TOPIC,
            self.groups_config.offsets_partitions.max(1) as usize,
            self.members.len().min(3),
            None,
            None,
        );
        match self
            .controller_write(ControllerCommand::CreateTopic(spec), 0)
            .await?
        {
            ControllerResponse::TopicCreated(meta) => {
                tracing::info!(
                    partitions = meta.partitions.len(),
                    "created {OFFSETS_TOPIC}"
                );
                Ok(meta)
            }
            // Another node created it first.
            ControllerResponse::TopicExists => self.topic_synced(OFFSETS_TOPIC).await,
            other => Err(ServiceError::Internal(format!(
                "controller answered {other:?}"
            ))),
        }
    }

    /// Runs `op` on the leader of `__consumer_offsets` partition `partition`.
    pub(super) async fn group_call(
        &self,
        partition: u32,
        name: String,
        op: GroupOp,
        hops: u8,
    ) -> Result<GroupReply, ServiceError> {
        let meta = self.partition_synced(OFFSETS_TOPIC, partition).await?;
        let deadline =
            std::time::Instant::now() + Duration::from_millis(self.limits.write_timeout_ms);
        let mut hint = None;
        for _ in 0..=MAX_HOPS {
            let route = match hint.take() {
                Some(n) if n != self.node_id => Route::Remote(n),
                _ => self.route(meta.group, &meta.replicas, deadline).await?,
            };
            match route {
                Route::Local(g) => match self.coordinate(&g, &name, op.clone(), deadline).await? {
                    Proposed::Done(r) => return Ok(r),
                    Proposed::NotLeader(l) => {
                        hint = l;
                        if l.is_none() {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                },
                Route::Remote(n) => {
                    let req = ForwardRequest::Group {
                        partition,
                        name: name.clone(),
                        op: op.clone(),
                        hops: hops + 1,
                    };
                    return match self.forward(n, meta.group, req, hops, deadline).await? {
                        ForwardResponse::Group(r) => Ok(r),
                        other => Err(ServiceError::Internal(format!(
                            "unexpected forward answer {other:?}"
                        ))),
                    };
                }
            }
        }
        Err(ServiceError::Unavailable(format!(
            "the coordinator of group '{name}' keeps moving; retry"
        )))
    }

    /// Serves `op` as the coordinator, if this node leads `g`.
    async fn coordinate(
        &self,
        g: &RaftGroup,
        name: &str,
        op: GroupOp,
        deadline: Instant,
    ) -> Result<Proposed<GroupReply>, ServiceError> {
        let metrics = g.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(self.node_id) {
            return Ok(Proposed::NotLeader(metrics.current_leader));
        }
        let term = metrics.current_term;
        // Confirm the leadership with a quorum before answering from memory: a deposed
        // coordinator must not hand out partitions its successor may have moved.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, g.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                self.coordinator.drop_shard(g.id);
                return Ok(Proposed::NotLeader(
                    f.leader_id.filter(|l| *l != self.node_id),
                ));
            }
            Ok(Err(e)) => {
                return Err(ServiceError::Unavailable(format!(
                    "the coordinator cannot confirm its leadership: {e}"
                )));
            }
            Err(_) => {
                return Err(ServiceError::Unavailable(
                    "the coordinator cannot confirm its leadership (no majority reachable?)".into(),
                ));
            }
        }
        let shard = self.coordinator.shard(g.id, term);
        if let GroupOp::List = op {
            return self
                .list_local(g)
                .map(|l| Proposed::Done(GroupReply::Listed(l)));
        }
        let slot = shard.slot(name);
        let mut held = slot.lock().await;
        if held.is_none() {
            *held = Some(self.load(g, name, deadline).await?);
        }
        let Some(loaded) = held.as_mut() else {
            return Err(ServiceError::Internal("group not loaded".into()));
        };
        let outcome = self.execute(g, name, loaded, op, deadline).await;
        match outcome {
            Ok(Proposed::NotLeader(l)) => {
                self.coordinator.drop_shard(g.id);
                Ok(Proposed::NotLeader(l))
            }
            Err(e) if !e.is_definite() => {
                // The write may yet commit: reload before the next request.
                *held = None;
                Err(e)
            }
            other => other,
        }
    }

    /// Reads a group from the partition's compacted view, after everything in this leader's
    /// log (its predecessors' entries and any write of its own whose outcome was unknown) is
    /// applied.
    async fn load(
        &self,
        g: &RaftGroup,
        name: &str,
        deadline: Instant,
    ) -> Result<Loaded, ServiceError> {
        let last = g.raft.metrics().borrow().last_log_index;
        let left = deadline.saturating_duration_since(Instant::now());
        g.raft
            .wait(Some(left))
            .applied_index_at_least(last, "coordinator load")
            .await
            .map_err(|e| ServiceError::Unavailable(format!("cannot load group '{name}': {e}")))?;
        let GroupState::Partition(sm) = &g.state else {
            return Err(ServiceError::Internal(
                "offsets group is not a partition".into(),
            ));
        };
        let storage = |e: chat4all_storage::StorageError| {
            ServiceError::Internal(format!("reading group '{name}': {e}"))
        };
        let group = match sm
            .latest_with_prefix(stored::group_key(name).as_bytes())
            .map_err(storage)?
            .into_iter()
            .find(|(k, _, _)| k == stored::group_key(name).as_bytes())
        {
            Some((_, _, r)) => Some(stored::decode_group(&r).map_err(ServiceError::Internal)?),
            None => None,
        };
        let mut offsets = BTreeMap::new();
        for (k, _, r) in sm
            .latest_with_prefix(stored::offsets_prefix(name).as_bytes())
            .map_err(storage)?
        {
            if let Some(tp) = stored::parse_offset_key(name, &k) {
                offsets.insert(
                    tp,
                    stored::decode_offset(&r).map_err(ServiceError::Internal)?,
                );
            }
        }
        // Members' sessions run from when the previous coordinator was last heard of (they
        // may have been silent since), but each gets at least half a session to find this
        // one: a failover never expires a live member that keeps heartbeating.
        let now = Instant::now();
        let start = match (&group, g.last_leader_contact()) {
            (Some(grp), Some(contact)) => {
                let half = Duration::from_millis(grp.config.session_timeout_ms / 2);
                contact.max(now.checked_sub(half).unwrap_or(now)).min(now)
            }
            _ => now,
        };
        let last_seen = group
            .iter()
            .flat_map(|g| g.members.keys())
            .map(|id| (id.clone(), start))
            .collect();
        let revoking_since = group
            .iter()
            .flat_map(|g| g.members.values())
            .filter(|m| !m.revoking.is_empty())
            .map(|m| (m.id.clone(), now))
            .collect();
        Ok(Loaded {
            group,
            offsets,
            last_seen,
            revoking_since,
        })
    }

    fn list_local(
        &self,
        g: &RaftGroup,
    ) -> Result<Vec<(String, GroupStateName, usize)>, ServiceError> {
        let GroupState::Partition(sm) = &g.state else {
            return Err(ServiceError::Internal(
                "offsets group is not a partition".into(),
            ));
        };
        let rows = sm
            .latest_with_prefix(stored::GROUP_PREFIX.as_bytes())
            .map_err(|e| ServiceError::Internal(format!("listing groups: {e}")))?;
        let mut out = Vec::new();
        for (k, _, r) in rows {
            let name = String::from_utf8_lossy(&k[stored::GROUP_PREFIX.len()..]).to_string();
            let group = stored::decode_group(&r).map_err(ServiceError::Internal)?;
            out.push((name, group.state(), group.members.len()));
        }
        Ok(out)
    }

    /// Appends records to `__consumer_offsets` partition `g` (this node leads it) and waits
    /// for the commit.
    async fn append_group_records(
        &self,
        g: &RaftGroup,
        records: Vec<StoredRecord>,
        deadline: Instant,
    ) -> Result<Proposed<()>, ServiceError> {
        let batch = AppendBatch {
            producer: None,
            records,
        };
        match self.batcher.propose(g.id, &g.raft, batch, deadline).await? {
            Proposed::Done(PartitionResponse::Appended { .. }) => Ok(Proposed::Done(())),
            Proposed::Done(other) => Err(ServiceError::Internal(format!(
                "group append answered {other:?}"
            ))),
            Proposed::NotLeader(l) => Ok(Proposed::NotLeader(l)),
        }
    }

    /// Removes the members whose session or rebalance timeout has passed, and writes that
    /// down, before a request is judged: an answer (FENCED to a heartbeat, or a refused
    /// commit) must never rest on a removal the group's record does not have yet, or the
    /// member could still commit, and be kept, until the sweeper came by.
    async fn expire_now(
        &self,
        g: &RaftGroup,
        name: &str,
        loaded: &mut Loaded,
        deadline: Instant,
    ) -> Result<Proposed<()>, ServiceError> {
        let Some(group) = &loaded.group else {
            return Ok(Proposed::Done(()));
        };
        let mut next = group.clone();
        let counts = self.partition_counts();
        if !expire(&mut next, loaded, &counts, Instant::now()) {
            return Ok(Proposed::Done(()));
        }
        if let Proposed::NotLeader(l) = self.write_group(g, name, &next, deadline).await? {
            return Ok(Proposed::NotLeader(l));
        }
        tracing::info!(group = %name, epoch = next.epoch, "expired members removed");
        loaded.group = Some(next);
        Ok(Proposed::Done(()))
    }

    /// Writes a group's new state (its record in the compacted partition).
    async fn write_group(
        &self,
        g: &RaftGroup,
        name: &str,
        group: &Group,
        deadline: Instant,
    ) -> Result<Proposed<()>, ServiceError> {
        let rec = stored::record(stored::group_key(name), group, now_ms())
            .map_err(ServiceError::Internal)?;
        self.append_group_records(g, vec![rec], deadline).await
    }

    fn partition_counts(&self) -> impl Fn(&str) -> Option<u32> + use<> {
        let meta = self.metadata();
        move |t: &str| meta.topics.get(t).map(|t| t.partitions.len() as u32)
    }

    async fn execute(
        &self,
        g: &RaftGroup,
        name: &str,
        loaded: &mut Loaded,
        op: GroupOp,
        deadline: Instant,
    ) -> Result<Proposed<GroupReply>, ServiceError> {
        match op {
            GroupOp::Heartbeat(hb) => {
                if hb.member_epoch < 0 && loaded.group.is_none() {
                    return Err(ServiceError::UnknownGroup(name.to_string()));
                }
                if let Proposed::NotLeader(l) = self.expire_now(g, name, loaded, deadline).await? {
                    return Ok(Proposed::NotLeader(l));
                }
                let mut group = loaded
                    .group
                    .clone()
                    .unwrap_or_else(|| Group::new(self.new_group_config()));
                let counts = self.partition_counts();
                let reply = group
                    .heartbeat(hb, &counts, &mut || {
                        format!("{:032x}", rand::random::<u128>())
                    })
                    .map_err(group_err)?;
                if loaded.group.as_ref() != Some(&group)
                    && let Proposed::NotLeader(l) =
                        self.write_group(g, name, &group, deadline).await?
                {
                    return Ok(Proposed::NotLeader(l));
                }
                let now = Instant::now();
                if reply.member_epoch < 0 {
                    if !group.members.contains_key(&reply.member_id) {
                        loaded.last_seen.remove(&reply.member_id);
                    }
                    loaded.revoking_since.remove(&reply.member_id);
                } else {
                    loaded.last_seen.insert(reply.member_id.clone(), now);
                    if reply.revoking.is_empty() {
                        loaded.revoking_since.remove(&reply.member_id);
                    } else {
                        loaded
                            .revoking_since
                            .entry(reply.member_id.clone())
                            .or_insert(now);
                    }
                }
                loaded
                    .last_seen
                    .retain(|id, _| group.members.contains_key(id));
                let committed = reply
                    .assigned
                    .iter()
                    .map(|tp| (tp.clone(), loaded.offsets.get(tp).map(|c| c.offset)))
                    .collect();
                let interval = group.config.heartbeat_interval_ms();
                let reset = group.config.auto_offset_reset;
                loaded.group = Some(group);
                Ok(Proposed::Done(GroupReply::Heartbeat {
                    reply,
                    heartbeat_interval_ms: interval,
                    committed,
                    auto_offset_reset: reset,
                }))
            }
            GroupOp::Commit { member, offsets } => {
                if let Proposed::NotLeader(l) = self.expire_now(g, name, loaded, deadline).await? {
                    return Ok(Proposed::NotLeader(l));
                }
                let Some(group) = &loaded.group else {
                    return Err(ServiceError::UnknownGroup(name.to_string()));
                };
                let tps: Vec<Tp> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
                group
                    .check_commit(member.as_ref().map(|(id, e)| (id.as_str(), *e)), &tps)
                    .map_err(group_err)?;
                let mut records = Vec::with_capacity(offsets.len());
                for (tp, c) in &offsets {
                    records.push(
                        stored::record(stored::offset_key(name, tp), c, c.committed_at_ms)
                            .map_err(ServiceError::Internal)?,
                    );
                }
                if let Proposed::NotLeader(l) =
                    self.append_group_records(g, records, deadline).await?
                {
                    return Ok(Proposed::NotLeader(l));
                }
                // (A commit does not extend the member's session: only heartbeats do, as in
                // Kafka.)
                loaded.offsets.extend(offsets);
                Ok(Proposed::Done(GroupReply::Committed))
            }
            GroupOp::Delete => {
                let Some(group) = &loaded.group else {
                    return Err(ServiceError::UnknownGroup(name.to_string()));
                };
                if !group.members.is_empty() {
                    return Err(ServiceError::GroupNotEmpty(format!(
                        "group '{name}' has {} members; they must leave (or time out) first",
                        group.members.len()
                    )));
                }
                // Tombstones: the compacted view forgets the keys.
                let now = now_ms();
                let mut records = vec![
                    stored::record(stored::group_key(name), &serde_json::Value::Null, now)
                        .map_err(ServiceError::Internal)?,
                ];
                for tp in loaded.offsets.keys() {
                    records.push(
                        stored::record(stored::offset_key(name, tp), &serde_json::Value::Null, now)
                            .map_err(ServiceError::Internal)?,
                    );
                }
                if let Proposed::NotLeader(l) =
                    self.append_group_records(g, records, deadline).await?
                {
                    return Ok(Proposed::NotLeader(l));
                }
                loaded.group = None;
                loaded.offsets.clear();
                loaded.last_seen.clear();
                loaded.revoking_since.clear();
                Ok(Proposed::Done(GroupReply::Deleted))
            }
            GroupOp::Offsets => {
                if loaded.group.is_none() {
                    return Err(ServiceError::UnknownGroup(name.to_string()));
                }
                Ok(Proposed::Done(GroupReply::Offsets(
                    loaded.offsets.clone().into_iter().collect(),
                )))
            }
            GroupOp::Describe => {
                let Some(group) = &loaded.group else {
                    return Err(ServiceError::UnknownGroup(name.to_string()));
                };
                Ok(Proposed::Done(GroupReply::Described(GroupView {
                    state: group.state(),
                    group: group.clone(),
                    offsets: loaded.offsets.clone().into_iter().collect(),
                    coordinator: self.node_id,
                })))
            }
            GroupOp::Configure {
                session_timeout_ms,
                auto_offset_reset,
            } => {
                if let Some(t) = session_timeout_ms
                    && !SESSION_TIMEOUT_MS.contains(&t)
                {
                    return Err(ServiceError::invalid(
                        "INVALID_SESSION_TIMEOUT",
                        format!(
                            "session_timeout_ms must be {}..={}",
                            SESSION_TIMEOUT_MS.start(),
                            SESSION_TIMEOUT_MS.end()
                        ),
                    ));
                }
                let mut group = loaded
                    .group
                    .clone()
                    .unwrap_or_else(|| Group::new(self.new_group_config()));
                if let Some(t) = session_timeout_ms {
                    group.config.session_timeout_ms = t;
                }
                if let Some(r) = auto_offset_reset {
                    group.config.auto_offset_reset = r;
                }
                if loaded.group.as_ref() != Some(&group)
                    && let Proposed::NotLeader(l) =
                        self.write_group(g, name, &group, deadline).await?
                {
                    return Ok(Proposed::NotLeader(l));
                }
                let config = group.config.clone();
                loaded.group = Some(group);
                Ok(Proposed::Done(GroupReply::Configured(config)))
            }
            GroupOp::List => Err(ServiceError::Internal("list reached a group".into())),
        }
    }

    /// Removes members whose session or rebalance timeout passed, in every group this node
    /// coordinates, and refreshes the lag metric. Runs until `shutdown`.
    pub async fn run_group_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.groups_config.sweep_interval_ms.max(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_lag = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            self.sweep_once().await;
            if last_lag.elapsed() >= LAG_EVERY {
                last_lag = Instant::now();
                self.refresh_lag().await;
            }
        }
    }

    async fn sweep_once(&self) {
        for (gid, shard) in self.coordinator.all() {
            let Some(g) = self.groups.get(gid) else {
                self.coordinator.drop_shard(gid);
                continue;
            };
            let m = g.raft.metrics().borrow().clone();
            if m.current_leader != Some(self.node_id) || m.current_term != shard.term {
                self.coordinator.drop_shard(gid);
                continue;
            }
            for (name, slot) in shard.slots() {
                // A busy group is being served; its request expires members itself.
                let Ok(mut held) = slot.try_lock() else {
                    continue;
                };
                let Some(loaded) = held.as_mut() else {
                    continue;
                };
                let Some(group) = &loaded.group else {
                    continue;
                };
                let mut next = group.clone();
                let counts = self.partition_counts();
                if !expire(&mut next, loaded, &counts, Instant::now()) {
                    continue;
                }
                let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms);
                match self.write_group(&g, &name, &next, deadline).await {
                    Ok(Proposed::Done(())) => {
                        tracing::info!(group = %name, epoch = next.epoch, "expired members removed");
                        loaded.group = Some(next);
                    }
                    Ok(Proposed::NotLeader(_)) => {
                        self.coordinator.drop_shard(gid);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(group = %name, "cannot remove expired members: {e}");
                        *held = None;
                    }
                }
            }
        }
    }

    /// Sets `chat4all_consumer_group_lag` for every group this node coordinates.
    async fn refresh_lag(&self) {
        let mut rows: Vec<(String, Tp, u64)> = Vec::new();
        for (_, shard) in self.coordinator.all() {
            for (name, slot) in shard.slots() {
                let Ok(held) = slot.try_lock() else {
                    continue;
                };
                if let Some(l) = held.as_ref() {
                    rows.extend(
                        l.offsets
                            .iter()
                            .map(|(tp, c)| (name.clone(), tp.clone(), c.offset)),
                    );
                }
            }
        }
        let mut values = Vec::with_capacity(rows.len());
        for (name, (topic, p), committed) in rows {
            let Ok(meta) = self.partition(&topic, p) else {
                continue;
            };
            if let Some(st) = self.partition_status(&meta, 0).await {
                values.push((name, topic, p, st.high_watermark.saturating_sub(committed)));
            }
        }
        let gauge = &self.metrics.consumer_group_lag;
        gauge.reset();
        for (name, topic, p, lag) in values {
            gauge
                .with_label_values(&[name.as_str(), topic.as_str(), &p.to_string()])
                .set(lag as i64);
        }
    }
}

/// Removes from `group` the members whose session timed out or who held revoked partitions
/// past their rebalance timeout. Returns whether any was removed.
fn expire(
    group: &mut Group,
    loaded: &mut Loaded,
    counts: &dyn Fn(&str) -> Option<u32>,
    now: Instant,
) -> bool {
    let session = Duration::from_millis(group.config.session_timeout_ms);
    let gone: BTreeSet<String> = group
        .members
        .values()
        .filter(|m| {
            let silent = loaded
                .last_seen
                .get(&m.id)
                .is_none_or(|t| now.duration_since(*t) > session);
            let stuck = loaded.revoking_since.get(&m.id).is_some_and(|t| {
                now.duration_since(*t) > Duration::from_millis(m.rebalance_timeout_ms)
            });
            silent || stuck
        })
        .map(|m| m.id.clone())
        .collect();
    for id in &gone {
        group.remove_member(id, counts);
        loaded.last_seen.remove(id);
        loaded.revoking_since.remove(id);
    }
    // A topic created after members subscribed to it.
    let epoch = group.epoch;
    group.refresh_target(false, counts);
    !gone.is_empty() || group.epoch != epoch
}
