//! The subscribe workload (Jepsen's `kafka` workload with `subscribe`, through the node's
//! consumer groups): producers send as in the queue workload while consumers join one group,
//! poll what the coordinator assigns them, commit, and churn.
//!
//! ```text
//!  consumer ── join: heartbeat {member_epoch 0, topics, rebalance_timeout_ms}  ─► member id, epoch
//!      │        assignment ─► recorded as an `assign`; a new partition starts at the reply's
//!      │        `position` (the committed offset, or the log start)
//!      ├─ every heartbeat_interval_ms: heartbeat {member_id, epoch, owned}
//!      │        200: new assignment (recorded `assign` when the polled set changes);
//!      │             `revoking`: stop polling them, commit them, heartbeat without them
//!      │        409 FENCED: one zombie commit with the old identity (must be refused),
//!      │             `assign []`, rejoin as a new member
//!      ├─ poll: as the log workload (one fetch per polled partition, random nodes)
//!      ├─ every ~1 s: commit the positions that moved (member id and epoch)
//!      └─ every 4-10 s (seeded), one of:
//!               leave (heartbeat epoch -1 or DELETE), commit with the old identity (must be
//!               refused), rejoin;
//!               long pause: session timeout + 1.5-3 s without heartbeat, poll or commit,
//!               then commit with the old identity and heartbeat (both must be 409 FENCED);
//!               brief pause: until the session's end -100..+300 ms, then heartbeat;
//!               nothing
//!  offsets reader ── GET /v1/groups/{g}/offsets every 250-500 ms, random nodes
//! ```
//!
//! Every heartbeat, commit and read is recorded (`heartbeat`, `commit`, `offsets`) for the
//! group checker; polls and assigns for the kafka checker, as in the log workload. A consumer
//! whose request had an unknown outcome continues under a new process, starting with a
//! heartbeat; a leave or a fence is recorded as `assign []` and the rejoin as a new `assign`,
//! so that positions moving back to the committed offset are not compared with earlier polls.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use chat4all_jepsen::checker::group::Timeouts;
use chat4all_jepsen::{Assign, Call, HeartbeatReply, Key, Offset, Offsets, OpType, Process};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};

use crate::api::{Answer, Api};
use crate::log::{Consumer, ConsumerStats};
use crate::queue::Workload;
use crate::schedule::NodeId;

mod consumer;

/// The consumer group.
pub const GROUP: &str = "jepsen-group";
/// The group's session timeout: short, so that a paused consumer is fenced within the run.
pub const SESSION_TIMEOUT_MS: u64 = 3_000;
/// The members' rebalance timeout: the node's maximum, so that it never fences a member within
/// a run (the consumers release revoked partitions at once) and ownership stays checkable.
pub const REBALANCE_TIMEOUT_MS: u64 = 600_000;
/// How far the coordinator's timers may be off the history's clock. Its sweeper runs every
/// 100-200 ms and removing a member is a replicated write (late side); a new coordinator
/// counts sessions from its last contact with the old one, but from no more than half a
/// session (1.5 s) before it loads the group, and it is elected no sooner than a Raft lease
/// (0.6 s) after the old one last confirmed its leadership: so a member's session there may
/// start up to 0.9 s before the old coordinator last heard from it (early side).
pub const SLACK_MS: u64 = 1_500;
/// The share of joins with an id of the consumer's own (the others let the coordinator pick).
const OWN_ID_JOINS: f64 = 0.75;
/// How often a consumer commits positions that moved.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// Heartbeat interval until the coordinator says otherwise.
const DEFAULT_HEARTBEAT_MS: u64 = 750;
/// How often the offsets reader asks which node coordinates the group.
const COORDINATOR_EVERY: Duration = Duration::from_secs(2);
/// Pause between two reads of the committed offsets.
const OFFSETS_READ_EVERY_MS: RangeInclusive<u64> = 250..=500;
/// Time between two churn decisions of a consumer.
const CHURN_EVERY_MS: RangeInclusive<u64> = 4_000..=10_000;
/// How much longer than the session timeout a long pause lasts.
const PAUSE_EXTRA_MS: RangeInclusive<u64> = 1_500..=3_000;
/// Where a brief pause ends, from the session timeout after the member was last heard from.
const BRIEF_PAUSE_MS: RangeInclusive<i64> = -100..=300;
/// Steps of one consumer, at most (the time limit ends them long before).
const MAX_STEPS: u64 = 10_000_000;

/// The group checker's timing.
pub fn timeouts() -> Timeouts {
    Timeouts {
        session_ms: SESSION_TIMEOUT_MS,
        rebalance_ms: REBALANCE_TIMEOUT_MS,
        slack_ms: SLACK_MS,
    }
}

/// A 200 heartbeat reply, as a consumer uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The member id.
    pub member: String,
    /// The member epoch.
    pub epoch: i64,
    /// How often to heartbeat.
    pub interval_ms: u64,
    /// Assigned partition → (committed offset, position to start at).
    pub assignment: BTreeMap<u32, (Option<u64>, Option<u64>)>,
    /// Partitions to release.
    pub revoking: BTreeSet<u32>,
}

impl Reply {
    /// Parses a heartbeat's 200 body; partitions of other topics are an error (the group
    /// subscribes to `topic` only).
    pub fn parse(body: &Json, topic: &str) -> Result<Reply, String> {
        let member = body["member_id"].as_str().ok_or("no member_id")?.to_owned();
        let epoch = body["member_epoch"].as_i64().ok_or("no member_epoch")?;
        let interval_ms = body["heartbeat_interval_ms"]
            .as_u64()
            .unwrap_or(DEFAULT_HEARTBEAT_MS);
        let mut assignment = BTreeMap::new();
        for entry in body["assignment"].as_array().into_iter().flatten() {
            let partition = partition_of(entry, topic)?;
            let committed = entry["committed_offset"].as_u64();
            let position = entry["position"].as_u64();
            assignment.insert(partition, (committed, position));
        }
        let mut revoking = BTreeSet::new();
        for entry in body["revoking"].as_array().into_iter().flatten() {
            revoking.insert(partition_of(entry, topic)?);
        }
        Ok(Reply {
            member,
            epoch,
            interval_ms,
            assignment,
            revoking,
        })
    }

    /// The reply as the history records it.
    pub fn recorded(&self) -> HeartbeatReply {
        HeartbeatReply {
            member: self.member.clone(),
            epoch: self.epoch,
            assignment: self.assignment.keys().map(|&p| key(p)).collect(),
            revoking: self.revoking.iter().map(|&p| key(p)).collect(),
            committed: self
                .assignment
                .iter()
                .map(|(&p, &(committed, _))| (key(p), committed.map(Offset)))
                .collect(),
        }
    }
}

fn partition_of(entry: &Json, topic: &str) -> Result<u32, String> {
    if entry["topic"].as_str() != Some(topic) {
        return Err(format!("a partition of another topic: {entry}"));
    }
    entry["partition"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| format!("no partition number: {entry}"))
}

fn key(partition: u32) -> Key {
    Key(u64::from(partition))
}

/// `[{"topic", "partition"}, …]`.
fn partition_list(topic: &str, partitions: &[u32]) -> Json {
    partitions
        .iter()
        .map(|p| json!({"topic": topic, "partition": p}))
        .collect()
}

/// The committed offsets of `topic` in a `GET /v1/groups/{g}/offsets` body.
pub fn offsets_of(body: &Json, topic: &str) -> Result<BTreeMap<Key, Offset>, String> {
    let list = body["offsets"].as_array().ok_or("no offsets list")?;
    let mut offsets = BTreeMap::new();
    for entry in list {
        let partition = partition_of(entry, topic)?;
        let offset = entry["offset"]
            .as_u64()
            .ok_or_else(|| format!("no offset: {entry}"))?;
        offsets.insert(key(partition), Offset(offset));
    }
    Ok(offsets)
}

/// One consumer's membership, the partitions it polls and those it is releasing.
#[derive(Clone, Debug, Default)]
pub struct GroupConsumer {
    /// Member id and epoch, while a member.
    member: Option<(String, i64)>,
    /// The assigned partitions and positions.
    polled: Consumer,
    /// Revoked partitions not yet released, with their positions.
    releasing: BTreeMap<u32, Option<u64>>,
    /// What the member last committed, or was told was committed, per partition.
    committed: BTreeMap<u32, u64>,
}

impl GroupConsumer {
    /// Member id and epoch.
    pub fn member(&self) -> Option<(String, i64)> {
        self.member.clone()
    }

    /// The partitions to report as owned: the assignment and those still being released.
    pub fn owned(&self) -> Vec<u32> {
        let mut owned: BTreeSet<u32> = self.polled.assigned().into_iter().collect();
        owned.extend(self.releasing.keys());
        owned.into_iter().collect()
    }

    /// Whether revoked partitions wait to be committed and released.
    pub fn releasing(&self) -> bool {
        !self.releasing.is_empty()
    }

    /// Applies a 200 reply: polled partitions that are revoked move to the releasing set, the
    /// others not assigned any more are dropped, new ones start at the reply's position.
    /// Returns the `assign` operation's value if the polled partitions changed.
    pub fn apply(&mut self, reply: &Reply) -> Option<Assign> {
        self.member = Some((reply.member.clone(), reply.epoch));
        let before = self.polled.assigned();
        for &p in &before {
            if !reply.assignment.contains_key(&p) && reply.revoking.contains(&p) {
                self.releasing.insert(p, self.polled.position(p));
            }
        }
        for &p in &reply.revoking {
            self.releasing.entry(p).or_insert(None);
        }
        // What the coordinator no longer lists as revoking is released already.
        self.releasing.retain(|p, _| reply.revoking.contains(p));
        for (&p, &(committed, _)) in &reply.assignment {
            if !before.contains(&p)
                && let Some(offset) = committed
            {
                self.committed.insert(p, offset);
            }
        }
        let positions = reply
            .assignment
            .iter()
            .map(|(&p, &(_, position))| (p, position))
            .collect();
        let assign = self.polled.assign_at(&positions);
        (self.polled.assigned() != before).then_some(assign)
    }

    /// The offsets to commit: the known positions of polled and releasing partitions that
    /// differ from what was last committed (all of them if `all`).
    pub fn to_commit(&self, all: bool) -> BTreeMap<u32, u64> {
        let polled = self
            .polled
            .assigned()
            .into_iter()
            .filter_map(|p| Some((p, self.polled.position(p)?)));
        let releasing = self
            .releasing
            .iter()
            .filter_map(|(&p, &position)| Some((p, position?)));
        polled
            .chain(releasing)
            .filter(|(p, position)| all || self.committed.get(p) != Some(position))
            .collect()
    }

    /// Records a successful commit.
    pub fn committed(&mut self, offsets: &BTreeMap<u32, u64>) {
        self.committed.extend(offsets);
    }

    /// The revoked partitions were committed (or that was tried): the next heartbeat reports
    /// them not owned.
    pub fn released(&mut self) {
        self.releasing.clear();
    }

    /// The member left or was fenced: it owns nothing. Returns the value of an `assign` of
    /// nothing if it polled anything.
    pub fn reset(&mut self) -> Option<Assign> {
        let polled = !self.polled.assigned().is_empty();
        *self = GroupConsumer::default();
        polled.then(Assign::default)
    }

    /// The partitions polled, with their positions.
    pub fn polled(&mut self) -> &mut Consumer {
        &mut self.polled
    }
}

/// Counts of what the consumers did and were told, for the notes.
#[derive(Default)]
pub struct GroupStats {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl GroupStats {
    fn count(&self, what: &'static str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(what)
            .or_default() += 1;
    }

    /// `what: n` for each count.
    pub fn summary(&self) -> String {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("group consumers: {}", parts.join(", "))
    }
}

impl Workload {
    /// Reads the committed offsets every 250-500 ms until the deadline, under one process
    /// (reads are never indeterminate), which it registers in `stats` and returns. About every
    /// 2 s it also asks a node which node coordinates the group, and notes each change (not
    /// recorded in the history: it is only there to read the history with).
    pub async fn offsets_reader(self: Arc<Self>, stats: Arc<ConsumerStats>) -> Process {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x006F_6666_7365_7473);
        let process = self.new_process();
        stats.register(process);
        let start = Instant::now();
        let mut next_describe = start;
        let mut coordinators: Vec<(f64, u64)> = Vec::new();
        while Instant::now() < self.deadline {
            let node = rng.random_range(1..=self.nodes);
            self.read_offsets(process, node).await;
            if Instant::now() >= next_describe {
                next_describe = Instant::now() + COORDINATOR_EVERY;
                let path = format!("/v1/groups/{GROUP}");
                if let Answer::Ok(group) = self.api.get(node, &path).await
                    && let Some(coordinator) = group["coordinator"].as_u64()
                    && coordinators.last().map(|&(_, c)| c) != Some(coordinator)
                {
                    coordinators.push((start.elapsed().as_secs_f64(), coordinator));
                }
            }
            let wait = rng.random_range(OFFSETS_READ_EVERY_MS);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        let seen: Vec<String> = coordinators
            .iter()
            .map(|(at, node)| format!("n{node} from {at:.1} s"))
            .collect();
        self.note(format!(
            "group coordinator as seen about every 2 s (s since the workload started): {}",
            seen.join(", ")
        ));
        process
    }

    /// One read of the committed offsets on `node`, recorded as an `offsets` operation: `ok`
    /// with the offsets (404 `GROUP_NOT_FOUND` is an `ok` read of none), `fail` otherwise (a
    /// read changes nothing).
    pub async fn read_offsets(&self, process: Process, node: NodeId) {
        let sent = Offsets {
            node: Some(node),
            ..Offsets::default()
        };
        self.record(process, OpType::Invoke, Call::Offsets(sent.clone()), None);
        let path = format!("/v1/groups/{GROUP}/offsets");
        match self.api.get(node, &path).await {
            Answer::Ok(body) => match offsets_of(&body, &self.topic) {
                Ok(offsets) => {
                    let done = Offsets { offsets, ..sent };
                    self.record(process, OpType::Ok, Call::Offsets(done), None);
                }
                Err(e) => {
                    let error = format!("n{node}: 200 with an unexpected body ({e}): {body}");
                    self.note(format!("offsets read: {error}"));
                    self.record(process, OpType::Fail, Call::Offsets(sent), Some(error));
                }
            },
            Answer::Definite { status: 404, code } if code == "GROUP_NOT_FOUND" => {
                let done = Offsets {
                    missing: true,
                    ..sent
                };
                self.record(
                    process,
                    OpType::Ok,
                    Call::Offsets(done),
                    Some(format!("n{node}: 404 {code}")),
                );
            }
            other => {
                let error = format!("n{node}: {}", other.describe());
                self.record(process, OpType::Fail, Call::Offsets(sent), Some(error));
            }
        }
    }
}

/// Creates the group with the session timeout and `earliest` (retrying until `deadline`);
/// returns the node's answer.
pub async fn configure(api: &Api, nodes: u32, deadline: Instant) -> anyhow::Result<Json> {
    let body = json!({
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "auto_offset_reset": "earliest",
    });
    let path = format!("/v1/groups/{GROUP}/config");
    let mut node = 1;
    let mut last = String::new();
    while Instant::now() < deadline {
        match api.put(node, &path, &body).await {
            Answer::Ok(answer) => {
                if answer["session_timeout_ms"].as_u64() != Some(SESSION_TIMEOUT_MS) {
                    bail!("group {GROUP} configured, but the node answered {answer}");
                }
                return Ok(answer);
            }
            Answer::Definite { status: 404, code } if code == "NOT_FOUND" || code.is_empty() => {
                bail!("the node has no consumer groups (PUT {path}: 404 {code})");
            }
            other => last = other.describe(),
        }
        node = node % nodes + 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("group {GROUP} not configured in time: {last}")
}

/// `GET /v1/groups/{g}` from the first node that answers.
pub async fn describe(api: &Api, nodes: u32) -> Option<Json> {
    for node in 1..=nodes {
        if let Answer::Ok(body) = api.get(node, &format!("/v1/groups/{GROUP}")).await {
            return Some(body);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Fetched;

    fn reply(body: Json) -> Reply {
        Reply::parse(&body, "t").expect("parses")
    }

    fn hb(assignment: &[(u32, Option<u64>, Option<u64>)], revoking: &[u32]) -> Json {
        json!({
            "member_id": "m1",
            "member_epoch": 4,
            "heartbeat_interval_ms": 750,
            "auto_offset_reset": "earliest",
            "assignment": assignment.iter().map(|(p, c, pos)| json!({
                "topic": "t", "partition": p, "committed_offset": c, "position": pos,
            })).collect::<Vec<_>>(),
            "revoking": revoking.iter().map(|p| json!({"topic": "t", "partition": p})).collect::<Vec<_>>(),
        })
    }

    #[test]
    fn replies_parse_and_record_as_the_history_wants() {
        let r = reply(hb(&[(0, Some(5), Some(5)), (2, None, Some(0))], &[1]));
        assert_eq!(r.member, "m1");
        assert_eq!(r.epoch, 4);
        assert_eq!(r.assignment[&2], (None, Some(0)));
        let recorded = r.recorded();
        assert_eq!(recorded.assignment, [Key(0), Key(2)]);
        assert_eq!(recorded.revoking, [Key(1)]);
        assert_eq!(recorded.committed[&Key(0)], Some(Offset(5)));
        assert_eq!(recorded.committed[&Key(2)], None);
        let other = json!({"member_id": "m", "member_epoch": 1,
            "assignment": [{"topic": "x", "partition": 0}], "revoking": []});
        assert!(Reply::parse(&other, "t").is_err());
        let offsets = json!({"group": "g", "offsets": [
            {"topic": "t", "partition": 1, "offset": 7, "metadata": null, "committed_at_ms": 1}]});
        assert_eq!(
            offsets_of(&offsets, "t").expect("parses"),
            BTreeMap::from([(Key(1), Offset(7))])
        );
    }

    #[test]
    fn new_partitions_start_at_the_coordinators_position_and_revoked_ones_are_released() {
        let mut c = GroupConsumer::default();
        let assign = c.apply(&reply(hb(&[(0, Some(5), Some(5)), (1, None, None)], &[])));
        assert_eq!(assign.expect("changed").keys, [Key(0), Key(1)]);
        assert_eq!(c.member(), Some(("m1".to_owned(), 4)));
        assert_eq!(c.polled().position(0), Some(5));
        assert_eq!(c.polled().position(1), None);
        // Nothing moved: nothing to commit (5 is what the group has).
        assert!(c.to_commit(false).is_empty());
        assert_eq!(c.to_commit(true), BTreeMap::from([(0, 5)]));
        // The same assignment again: no assign recorded, positions kept.
        assert!(
            c.apply(&reply(hb(&[(0, Some(5), Some(5)), (1, None, None)], &[])))
                .is_none()
        );
        // Partition 1 is revoked: no longer polled, still owned until released.
        let assign = c.apply(&reply(hb(&[(0, Some(5), Some(5))], &[1])));
        assert_eq!(assign.expect("changed").keys, [Key(0)]);
        assert!(c.releasing());
        assert_eq!(c.owned(), [0, 1]);
        c.released();
        assert_eq!(c.owned(), [0]);
        // A poll moves partition 0 to 7: that is what to commit, once.
        let record = chat4all_jepsen::Record {
            offset: Offset(6),
            value: chat4all_jepsen::Value(60),
        };
        c.polled().apply(BTreeMap::from([(
            0,
            Fetched {
                records: vec![record],
            },
        )]));
        assert_eq!(c.to_commit(false), BTreeMap::from([(0, 7)]));
        c.committed(&BTreeMap::from([(0, 7)]));
        assert!(c.to_commit(false).is_empty());
        // Fenced: an empty assign, nothing owned.
        assert_eq!(c.reset(), Some(Assign::default()));
        assert_eq!(c.member(), None);
        assert!(c.owned().is_empty());
        assert_eq!(c.reset(), None);
    }
}
