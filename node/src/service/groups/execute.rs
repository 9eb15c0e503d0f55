//! What each group request does, on the coordinator, to the group it holds.

use std::time::Instant;

use chat4all_raft::groups::Group as RaftGroup;

use super::coordinator::Loaded;
use super::{GroupOp, GroupReply, GroupView, HeartbeatAnswer, group_err};
use crate::error::ServiceError;
use crate::groups::model::{Group, SESSION_TIMEOUT_MS, Tp};
use crate::groups::stored;
use crate::retention::now_ms;
use crate::service::{Proposed, Service};

impl Service {
    /// Runs one request against the group this coordinator holds, writing any change to the
    /// group's partition before answering.
    pub(super) async fn execute(
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
                Ok(Proposed::Done(GroupReply::Heartbeat(HeartbeatAnswer {
                    reply,
                    heartbeat_interval_ms: interval,
                    committed,
                    auto_offset_reset: reset,
                })))
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
}
