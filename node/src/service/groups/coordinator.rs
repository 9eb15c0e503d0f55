//! The coordinator's memory (one shard of groups per `__consumer_offsets` partition this
//! node leads, per term), loading a group from the compacted view, writing it back, and
//! removing members whose session or rebalance timeout has passed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat4all_raft::groups::{Group as RaftGroup, GroupState};
use chat4all_raft::types::{AppendBatch, GroupId, PartitionResponse};
use chat4all_storage::StoredRecord;
use openraft::error::{CheckIsLeaderError, RaftError};

use super::{GroupOp, GroupReply};
use crate::error::ServiceError;
use crate::groups::model::{Group, GroupStateName, Tp};
use crate::groups::stored::{self, Committed};
use crate::retention::now_ms;
use crate::service::{Proposed, Service};

/// One group as its coordinator holds it.
pub(super) struct Loaded {
    /// `None` while the group does not exist.
    pub(super) group: Option<Group>,
    pub(super) offsets: BTreeMap<Tp, Committed>,
    /// When each member was last heard from.
    pub(super) last_seen: HashMap<String, Instant>,
    /// When each member was first asked to release partitions it still holds.
    pub(super) revoking_since: HashMap<String, Instant>,
}

pub(super) type Slot = Arc<tokio::sync::Mutex<Option<Loaded>>>;

/// The groups of one `__consumer_offsets` partition, for one leadership term.
pub(super) struct Shard {
    pub(super) term: u64,
    pub(super) groups: Mutex<HashMap<String, Slot>>,
}

/// The coordinator's memory: one shard per `__consumer_offsets` partition this node leads.
#[derive(Default)]
pub(crate) struct Coordinator {
    shards: Mutex<HashMap<GroupId, Arc<Shard>>>,
}

impl Coordinator {
    /// The shard of `group` for `term`; a new term starts from nothing (loads from disk).
    pub(super) fn shard(&self, group: GroupId, term: u64) -> Arc<Shard> {
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

    pub(super) fn drop_shard(&self, group: GroupId) {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&group);
    }

    pub(super) fn all(&self) -> Vec<(GroupId, Arc<Shard>)> {
        self.shards
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(g, s)| (*g, s.clone()))
            .collect()
    }
}

impl Shard {
    pub(super) fn slot(&self, name: &str) -> Slot {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    pub(super) fn slots(&self) -> Vec<(String, Slot)> {
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect()
    }
}

impl Service {
    pub(super) async fn coordinate(
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
    pub(super) async fn load(
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

    pub(super) fn list_local(
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
    pub(super) async fn append_group_records(
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
    pub(super) async fn expire_now(
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
    pub(super) async fn write_group(
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

    pub(super) fn partition_counts(&self) -> impl Fn(&str) -> Option<u32> + use<> {
        let meta = self.metadata();
        move |t: &str| meta.topics.get(t).map(|t| t.partitions.len() as u32)
    }
}

/// Removes from `group` the members whose session timed out or who held revoked partitions
/// past their rebalance timeout. Returns whether any was removed.
pub(super) fn expire(
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
