//! The consumer group coordinator. A group's coordinator is the leader of the group's
//! `__consumer_offsets` partition; any node takes a group request and forwards it there.
//!
//! The coordinator keeps each group it serves in memory, loaded from the partition's compacted
//! view the first time it is asked in a term, and changes it only by appending the new state
//! to the partition and waiting for the commit: what it answers is always what a majority has
//! on disk, and a new coordinator loads exactly that. Requests to one group run one at a time.
//!
//! Session and revocation timers are the only state kept in memory alone. A new coordinator
//! counts sessions from when it last heard of its predecessor, giving each member at least
//! half a session to re-attach, so a leader change never expires a live member.
//!
//! - this file: the requests and replies, and routing a request to the coordinator;
//! - [`coordinator`]: the coordinator's memory, loading a group, writing it back, expiry;
//! - [`execute`]: what each request does to a group;
//! - [`sweeper`]: removing expired members and exporting lag in the background.

mod coordinator;
mod execute;
mod sweeper;

use std::time::Duration;

use chat4all_raft::types::{NodeId, TopicMeta};
use serde::{Deserialize, Serialize};

use super::{ForwardRequest, ForwardResponse, Service};
use crate::error::ServiceError;
use crate::groups::model::{
    Group, GroupConfig, GroupError, GroupStateName, Heartbeat, HeartbeatReply, OffsetReset, Tp,
};
use crate::groups::stored::Committed;
use crate::groups::{OFFSETS_TOPIC, offsets_partition, validate_group_name};

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
    Heartbeat(HeartbeatAnswer),
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

/// What a heartbeat answers, with what a member needs to start its new partitions.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct HeartbeatAnswer {
    /// The member's state.
    pub reply: HeartbeatReply,
    /// How often to heartbeat.
    pub heartbeat_interval_ms: u64,
    /// The group's committed offset of each assigned partition.
    pub committed: Vec<(Tp, Option<u64>)>,
    /// The group's reset policy.
    pub auto_offset_reset: OffsetReset,
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

pub(crate) use coordinator::Coordinator;

pub(super) fn group_err(e: GroupError) -> ServiceError {
    match e {
        GroupError::Fenced(m) => ServiceError::MemberFenced(m),
        GroupError::Invalid(code, m) => ServiceError::invalid(code, m),
    }
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

    /// A heartbeat (join, stay or leave) of a member of group `name`.
    pub async fn group_heartbeat(
        &self,
        name: &str,
        hb: Heartbeat,
    ) -> Result<HeartbeatAnswer, ServiceError> {
        match self.group_request(name, GroupOp::Heartbeat(hb)).await? {
            GroupReply::Heartbeat(answer) => Ok(answer),
            other => Err(ServiceError::Internal(format!(
                "heartbeat answered {other:?}"
            ))),
        }
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
        self.ensure_internal_topic(OFFSETS_TOPIC, self.groups_config.offsets_partitions)
            .await
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
        let local = |g: chat4all_raft::groups::Group| {
            let (name, op) = (&name, op.clone());
            async move { self.coordinate(&g, name, op, deadline).await }
        };
        let remote = |n: chat4all_raft::types::NodeId| {
            let req = ForwardRequest::Group {
                partition,
                name: name.clone(),
                op: op.clone(),
                hops: hops + 1,
            };
            async move {
                match self.forward(n, meta.group, req, hops, deadline).await? {
                    ForwardResponse::Group(r) => Ok(r),
                    other => Err(ServiceError::Internal(format!(
                        "unexpected forward answer {other:?}"
                    ))),
                }
            }
        };
        if let Some(r) = self
            .on_leader(meta.group, &meta.replicas, hops, deadline, local, remote)
            .await?
        {
            return Ok(r);
        }
        Err(ServiceError::Unavailable(format!(
            "the coordinator of group '{name}' keeps moving; retry"
        )))
    }
}
