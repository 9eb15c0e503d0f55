//! A consumer group's state and the coordinator's rules, as a pure and deterministic model
//! (KIP-848: the coordinator computes the assignment; members reconcile incrementally).
//!
//! The coordinator persists a [`Group`] after every change and applies the same rules to the
//! same state on any node, so a new coordinator carries on where the old one stopped. Time is
//! not part of the model: session and revocation timers live in the coordinator's memory and
//! end in [`Group::remove_member`].
//!
//! The invariant everything here keeps: a partition is in at most one member's
//! `assigned ∪ revoking`. A partition taken from a member moves to `revoking` until the member
//! reports it no longer owns it (or is removed); only then may another member get it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A topic and partition number.
pub type Tp = (String, u32);

/// Member epoch a member sends to join.
pub const JOIN_EPOCH: i32 = 0;
/// Member epoch a member sends to leave for good.
pub const LEAVE_EPOCH: i32 = -1;
/// Member epoch a static member sends to leave for a restart, keeping its assignment until its
/// session times out.
pub const LEAVE_STATIC_EPOCH: i32 = -2;
/// Bounds of a group's session timeout (Kafka's default is 45 s; ours 10 s).
pub const SESSION_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=300_000;
/// The default session timeout.
pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;
/// The default and bounds of a member's rebalance timeout: how long it may take to release
/// revoked partitions before it is fenced.
pub const DEFAULT_REBALANCE_TIMEOUT_MS: u64 = 30_000;
/// Bounds of the rebalance timeout.
pub const REBALANCE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1_000..=600_000;

/// Where a member starts reading a partition the group never committed an offset for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The log start offset.
    #[default]
    Earliest,
    /// The high watermark: only records produced from now on.
    Latest,
}

/// Per-group settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// A member that has not heartbeated for this long is removed.
    pub session_timeout_ms: u64,
    /// Where to start a partition with no committed offset.
    pub auto_offset_reset: OffsetReset,
}

impl Default for GroupConfig {
    fn default() -> GroupConfig {
        GroupConfig {
            session_timeout_ms: DEFAULT_SESSION_TIMEOUT_MS,
            auto_offset_reset: OffsetReset::Earliest,
        }
    }
}

impl GroupConfig {
    /// How often members should heartbeat: a fifth of the session, at most 500 ms. Members
    /// learn of partitions freed by an expired member at their next heartbeat, so this bounds
    /// how long after the session timeout its partitions are picked up. (A heartbeat that
    /// changes nothing costs a quorum check, no write.)
    pub fn heartbeat_interval_ms(&self) -> u64 {
        (self.session_timeout_ms / 5).clamp(100, 500)
    }
}

/// One member of a group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Chosen by the coordinator when the member joins.
    pub id: String,
    /// A static member's stable id (Kafka's `group.instance.id`).
    pub instance_id: Option<String>,
    /// The member's epoch: the group epoch whose assignment it has reconciled to.
    pub epoch: i32,
    /// Its epoch before the last bump; a heartbeat or commit with it is still accepted (the
    /// response that carried the new epoch may have been lost).
    pub previous_epoch: i32,
    /// Subscribed topics.
    pub topics: BTreeSet<String>,
    /// Partitions the member may own now.
    pub assigned: BTreeSet<Tp>,
    /// Partitions taken from the member that it has not yet reported released.
    pub revoking: BTreeSet<Tp>,
    /// How long it may take to release revoked partitions.
    pub rebalance_timeout_ms: u64,
    /// A static member that left with [`LEAVE_STATIC_EPOCH`]: its partitions wait for it.
    pub left: bool,
}

/// A consumer group, as persisted after every change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Group {
    /// Settings.
    pub config: GroupConfig,
    /// Bumped whenever the target assignment's inputs change (members, subscriptions,
    /// partition counts).
    pub epoch: i32,
    /// Members by id.
    pub members: BTreeMap<String, Member>,
    /// The assignment the group converges to, by member id.
    pub target: BTreeMap<String, BTreeSet<Tp>>,
    /// Partition counts of the subscribed topics the target was computed with.
    pub partition_counts: BTreeMap<String, u32>,
}

/// A heartbeat, as the coordinator needs it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// The member's id; on a join, absent to let the coordinator pick one, or the member's
    /// own (then a retried join is idempotent).
    pub member_id: Option<String>,
    /// For static membership.
    pub instance_id: Option<String>,
    /// 0 to join, -1 to leave, -2 for a static member's temporary leave, else the member's
    /// current epoch.
    pub member_epoch: i32,
    /// The subscription; required to join, absent when unchanged.
    pub topics: Option<BTreeSet<String>>,
    /// Absent when unchanged.
    pub rebalance_timeout_ms: Option<u64>,
    /// The partitions the member still owns; absent when unchanged. Reporting a revoked
    /// partition absent releases it.
    pub owned: Option<BTreeSet<Tp>>,
}

/// What a heartbeat answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatReply {
    /// The member's id.
    pub member_id: String,
    /// Its epoch now (-1 or -2 after a leave).
    pub member_epoch: i32,
    /// The partitions it may own now; it must stop using any other.
    pub assigned: BTreeSet<Tp>,
    /// Partitions it must release (stop using, commit, then report not owned).
    pub revoking: BTreeSet<Tp>,
}

/// Why the coordinator refused a member's request. Both mean "rejoin with epoch 0, owning
/// nothing".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member is unknown (never joined, left, or removed after its session timed out) or
    /// its epoch is stale.
    #[error("{0}")]
    Fenced(String),
    /// The request itself is wrong.
    #[error("{1}")]
    Invalid(&'static str, String),
}

/// The state a group is in, as Kafka names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GroupStateName {
    /// No members.
    Empty,
    /// Some member has not reconciled to the current target yet.
    Reconciling,
    /// Every member owns its target.
    Stable,
}

impl Group {
    /// A new, empty group.
    pub fn new(config: GroupConfig) -> Group {
        Group {
            config,
            ..Group::default()
        }
    }

    /// The state name.
    pub fn state(&self) -> GroupStateName {
        if self.members.is_empty() {
            return GroupStateName::Empty;
        }
        let settled = self.members.values().all(|m| {
            m.epoch == self.epoch
                && m.revoking.is_empty()
                && self.target.get(&m.id).is_none_or(|t| *t == m.assigned)
        });
        if settled {
            GroupStateName::Stable
        } else {
            GroupStateName::Reconciling
        }
    }

    /// The member that currently owns `tp` (assigned or still revoking), if any.
    pub fn owner(&self, tp: &Tp) -> Option<&Member> {
        self.members
            .values()
            .find(|m| m.assigned.contains(tp) || m.revoking.contains(tp))
    }

    /// Applies a heartbeat. `partitions` gives a topic's partition count (`None`: no such
    /// topic yet); `new_id` makes a fresh member id.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        partitions: &dyn Fn(&str) -> Option<u32>,
        new_id: &mut dyn FnMut() -> String,
    ) -> Result<HeartbeatReply, GroupError> {
        if let Some(t) = hb.rebalance_timeout_ms
            && !REBALANCE_TIMEOUT_MS.contains(&t)
        {
            return Err(GroupError::Invalid(
                "INVALID_REBALANCE_TIMEOUT",
                format!(
                    "rebalance_timeout_ms must be {}..={}",
                    REBALANCE_TIMEOUT_MS.start(),
                    REBALANCE_TIMEOUT_MS.end()
                ),
            ));
        }
        let mut inputs_changed = false;
        let id = match hb.member_epoch {
            LEAVE_EPOCH | LEAVE_STATIC_EPOCH => return self.leave(&hb, partitions),
            JOIN_EPOCH => {
                let topics = match &hb.topics {
                    Some(t) if !t.is_empty() => t.clone(),
                    _ => {
                        return Err(GroupError::Invalid(
                            "INVALID_SUBSCRIPTION",
                            "joining (member_epoch 0) needs a non-empty \"topics\" list".into(),
                        ));
                    }
                };
                let rebalance_timeout_ms = hb
                    .rebalance_timeout_ms
                    .unwrap_or(DEFAULT_REBALANCE_TIMEOUT_MS);
                let static_prev = hb.instance_id.as_ref().and_then(|i| {
                    self.members
                        .values()
                        .find(|m| m.instance_id.as_ref() == Some(i))
                        .map(|m| m.id.clone())
                });
                // A member id rejoining with epoch 0 lost its state (it restarted, was fenced,
                // or never saw the reply to its join): it owns nothing any more.
                if let Some(old) = &hb.member_id
                    && static_prev.as_ref() != Some(old)
                    && self.members.contains_key(old)
                {
                    self.drop_member(old);
                    inputs_changed = true;
                }
                // A member may choose its own id (as KIP-1082 clients do), so a join retried
                // after a lost reply is the same member, not a second one.
                let id = hb.member_id.clone().unwrap_or_else(&mut *new_id);
                match static_prev.and_then(|old| self.members.remove(&old)) {
                    Some(mut prev) => {
                        // A static member back within its session: it takes over its
                        // previous incarnation's partitions without a rebalance. That
                        // incarnation is gone (instance ids are unique), so what it was still
                        // releasing is released.
                        if let Some(t) = self.target.remove(&prev.id) {
                            self.target.insert(id.clone(), t);
                        }
                        prev.revoking.clear();
                        if prev.topics != topics {
                            inputs_changed = true;
                        }
                        prev.id = id.clone();
                        prev.topics = topics;
                        prev.left = false;
                        prev.rebalance_timeout_ms = rebalance_timeout_ms;
                        self.members.insert(id.clone(), prev);
                    }
                    None => {
                        self.members.insert(
                            id.clone(),
                            Member {
                                id: id.clone(),
                                instance_id: hb.instance_id.clone(),
                                epoch: 0,
                                previous_epoch: 0,
                                topics,
                                assigned: BTreeSet::new(),
                                revoking: BTreeSet::new(),
                                rebalance_timeout_ms,
                                left: false,
                            },
                        );
                        inputs_changed = true;
                    }
                }
                id
            }
            epoch => {
                let id = hb.member_id.clone().ok_or_else(|| {
                    GroupError::Invalid(
                        "INVALID_MEMBER",
                        "member_id is required unless joining with member_epoch 0".into(),
                    )
                })?;
                let m = self.members.get_mut(&id).ok_or_else(|| {
                    GroupError::Fenced(format!(
                        "member {id} is not in the group (its session timed out, it left, or it \
                         never joined); rejoin with member_epoch 0 owning no partitions"
                    ))
                })?;
                if m.left {
                    return Err(GroupError::Fenced(format!(
                        "member {id} left the group; rejoin with member_epoch 0"
                    )));
                }
                if epoch != m.epoch && epoch != m.previous_epoch {
                    return Err(GroupError::Fenced(format!(
                        "member {id} sent epoch {epoch} but its epoch is {}; rejoin with \
                         member_epoch 0 owning no partitions",
                        m.epoch
                    )));
                }
                if let Some(t) = &hb.topics
                    && !t.is_empty()
                    && *t != m.topics
                {
                    m.topics = t.clone();
                    inputs_changed = true;
                }
                if let Some(t) = hb.rebalance_timeout_ms {
                    m.rebalance_timeout_ms = t;
                }
                if let Some(owned) = &hb.owned {
                    m.revoking.retain(|tp| owned.contains(tp));
                }
                id
            }
        };
        self.refresh_target(inputs_changed, partitions);
        self.reconcile(&id);
        let m = &self.members[&id];
        Ok(HeartbeatReply {
            member_id: id.clone(),
            member_epoch: m.epoch,
            assigned: m.assigned.clone(),
            revoking: m.revoking.clone(),
        })
    }

    fn leave(
        &mut self,
        hb: &Heartbeat,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<HeartbeatReply, GroupError> {
        let id = hb.member_id.clone().ok_or_else(|| {
            GroupError::Invalid("INVALID_MEMBER", "leaving needs member_id".into())
        })?;
        let Some(m) = self.members.get_mut(&id) else {
            // Leaving twice is fine: the member is out either way.
            return Ok(HeartbeatReply {
                member_id: id,
                member_epoch: LEAVE_EPOCH,
                assigned: BTreeSet::new(),
                revoking: BTreeSet::new(),
            });
        };
        if hb.member_epoch == LEAVE_STATIC_EPOCH && m.instance_id.is_some() {
            m.left = true;
            return Ok(HeartbeatReply {
                member_id: id,
                member_epoch: LEAVE_STATIC_EPOCH,
                assigned: BTreeSet::new(),
                revoking: BTreeSet::new(),
            });
        }
        self.remove_member(&id, partitions);
        Ok(HeartbeatReply {
            member_id: id,
            member_epoch: LEAVE_EPOCH,
            assigned: BTreeSet::new(),
            revoking: BTreeSet::new(),
        })
    }

    /// Removes a member (it left, its session timed out, or it kept revoked partitions past
    /// its rebalance timeout): its partitions are free at once. Returns whether it was there.
    pub fn remove_member(&mut self, id: &str, partitions: &dyn Fn(&str) -> Option<u32>) -> bool {
        if !self.drop_member(id) {
            return false;
        }
        self.refresh_target(true, partitions);
        true
    }

    fn drop_member(&mut self, id: &str) -> bool {
        self.target.remove(id);
        self.members.remove(id).is_some()
    }

    /// Recomputes the target when its inputs changed: `members_changed`, or a subscribed
    /// topic's partition count (a topic created after members subscribed to it).
    pub fn refresh_target(
        &mut self,
        members_changed: bool,
        partitions: &dyn Fn(&str) -> Option<u32>,
    ) {
        let subscribed: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.topics.iter())
            .collect();
        let counts: BTreeMap<String, u32> = subscribed
            .into_iter()
            .filter_map(|t| partitions(t).map(|n| (t.clone(), n)))
            .collect();
        if !members_changed && counts == self.partition_counts {
            return;
        }
        self.partition_counts = counts;
        self.epoch += 1;
        self.target = self.compute_target();
    }

    /// A sticky, balanced assignment: every member keeps what it had (up to an even share),
    /// the rest go to the least loaded subscriber, then partitions move from the most to the
    /// least loaded member until no move can even them out further (with different
    /// subscriptions, a partition only moves to a member subscribed to its topic).
    /// Deterministic: the same group always gets the same target.
    fn compute_target(&self) -> BTreeMap<String, BTreeSet<Tp>> {
        let mut target: BTreeMap<String, BTreeSet<Tp>> = self
            .members
            .keys()
            .map(|id| (id.clone(), BTreeSet::new()))
            .collect();
        let eligible = |id: &str, topic: &str| {
            self.members
                .get(id)
                .is_some_and(|m| m.topics.contains(topic))
        };
        let all: BTreeSet<Tp> = self
            .partition_counts
            .iter()
            .filter(|(t, _)| self.members.values().any(|m| m.topics.contains(*t)))
            .flat_map(|(t, n)| (0..*n).map(move |p| (t.clone(), p)))
            .collect();
        if self.members.is_empty() || all.is_empty() {
            return target;
        }
        let share = all.len().div_ceil(self.members.len());
        let mut owned: BTreeSet<Tp> = BTreeSet::new();
        for (id, previous) in &self.target {
            let Some(mine) = target.get_mut(id) else {
                continue;
            };
            for tp in previous {
                if mine.len() < share
                    && all.contains(tp)
                    && eligible(id, &tp.0)
                    && owned.insert(tp.clone())
                {
                    mine.insert(tp.clone());
                }
            }
        }
        for tp in all.iter().filter(|tp| !owned.contains(*tp)) {
            let pick = target
                .iter()
                .filter(|(id, _)| eligible(id, &tp.0))
                .min_by_key(|(id, t)| (t.len(), (*id).clone()))
                .map(|(id, _)| id.clone());
            if let Some(id) = pick {
                target.entry(id).or_default().insert(tp.clone());
            }
        }
        // Even out: each move narrows the gap between two members, so this ends.
        for _ in 0..=all.len() {
            let mut by_load: Vec<(usize, String)> =
                target.iter().map(|(id, t)| (t.len(), id.clone())).collect();
            by_load.sort();
            let moved = by_load.iter().rev().find_map(|(donor_n, donor)| {
                by_load.iter().find_map(|(recv_n, recv)| {
                    if *donor_n <= recv_n + 1 {
                        return None;
                    }
                    target[donor]
                        .iter()
                        .rev()
                        .find(|tp| eligible(recv, &tp.0))
                        .map(|tp| (donor.clone(), recv.clone(), tp.clone()))
                })
            });
            let Some((donor, recv, tp)) = moved else {
                break;
            };
            target.entry(donor).or_default().remove(&tp);
            target.entry(recv).or_default().insert(tp);
        }
        target
    }

    /// Moves a member one step toward its target: first revoke what it must give up; once
    /// nothing is left to release, take the new epoch and every target partition no other
    /// member still owns (the rest follow as their owners release them).
    fn reconcile(&mut self, id: &str) {
        let target = self.target.get(id).cloned().unwrap_or_default();
        let epoch = self.epoch;
        let Some(m) = self.members.get_mut(id) else {
            return;
        };
        if m.epoch != epoch {
            let revoke: Vec<Tp> = m.assigned.difference(&target).cloned().collect();
            for tp in revoke {
                m.assigned.remove(&tp);
                m.revoking.insert(tp);
            }
            if m.revoking.is_empty() {
                m.previous_epoch = m.epoch;
                m.epoch = epoch;
            }
        }
        if m.epoch != epoch {
            return;
        }
        let wanted: Vec<Tp> = target
            .iter()
            .filter(|tp| !self.members[id].assigned.contains(*tp))
            .filter(|tp| {
                !self
                    .members
                    .values()
                    .any(|o| o.id != id && (o.assigned.contains(*tp) || o.revoking.contains(*tp)))
            })
            .cloned()
            .collect();
        if let Some(m) = self.members.get_mut(id) {
            m.assigned.extend(wanted);
        }
    }

    /// Checks that an offset commit may be applied: from a current member (its epoch, or the
    /// one before) for partitions it owns, or with no member while the group has none (a
    /// consumer that assigns partitions itself).
    pub fn check_commit(&self, member: Option<(&str, i32)>, tps: &[Tp]) -> Result<(), GroupError> {
        let Some((id, epoch)) = member else {
            if self.members.is_empty() {
                return Ok(());
            }
            return Err(GroupError::Fenced(
                "the group has members: a commit needs member_id and member_epoch".into(),
            ));
        };
        let m = self.members.get(id).ok_or_else(|| {
            GroupError::Fenced(format!(
                "member {id} is not in the group (its session timed out or it left); its \
                 commits are refused"
            ))
        })?;
        if m.left || (epoch != m.epoch && epoch != m.previous_epoch) {
            return Err(GroupError::Fenced(format!(
                "member {id} committed with epoch {epoch} but its epoch is {}",
                m.epoch
            )));
        }
        if let Some((t, p)) = tps
            .iter()
            .find(|tp| !m.assigned.contains(*tp) && !m.revoking.contains(*tp))
        {
            return Err(GroupError::Fenced(format!(
                "partition {p} of '{t}' is not assigned to member {id}"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
