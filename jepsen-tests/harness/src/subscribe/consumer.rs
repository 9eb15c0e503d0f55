//! One consumer of the subscribe workload: its loop and the requests it makes (join,
//! heartbeat, commit, leave, pause), each recorded as an operation.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat4all_jepsen::{
    Assign, Call, Commit, Heartbeat, HeartbeatReply, JOIN_EPOCH, LEAVE_EPOCH, Offset, OpType,
    Process,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value as Json, json};

use super::{
    BRIEF_PAUSE_MS, CHURN_EVERY_MS, COMMIT_EVERY, DEFAULT_HEARTBEAT_MS, GROUP, GroupConsumer,
    GroupStats, MAX_STEPS, OWN_ID_JOINS, PAUSE_EXTRA_MS, REBALANCE_TIMEOUT_MS, Reply,
    SESSION_TIMEOUT_MS, key, partition_list,
};
use crate::api::Answer;
use crate::log::ConsumerStats;
use crate::queue::{Workload, backoff};
use crate::schedule::NodeId;

/// How a commit ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Committed {
    Ok,
    Fenced,
    Refused,
    Unknown,
    Nothing,
}

/// One consumer's loop state.
struct Runner<'w> {
    w: &'w Workload,
    consumer: u64,
    rng: StdRng,
    process: Process,
    state: GroupConsumer,
    stats: &'w ConsumerStats,
    group: &'w GroupStats,
    interval: Duration,
    next_heartbeat: Instant,
    /// When the member's last `ok` heartbeat or commit was answered.
    last_heard: Instant,
    /// The id of a join whose outcome was unknown, to retry it with.
    retry_join: Option<String>,
}

impl Runner<'_> {
    fn node(&mut self) -> NodeId {
        self.rng.random_range(1..=self.w.nodes)
    }

    /// After an unknown outcome: a new process, and a heartbeat first.
    fn retire(&mut self) {
        self.process = self.w.new_process();
        self.stats.register(self.process);
        self.next_heartbeat = Instant::now();
    }

    fn record_assign(&self, assign: Option<Assign>) {
        if let Some(assign) = assign {
            let call = Call::Assign(assign);
            self.w
                .record(self.process, OpType::Invoke, call.clone(), None);
            self.w.record(self.process, OpType::Ok, call, None);
        }
    }

    /// A heartbeat answered 200.
    fn replied(&mut self, sent: Heartbeat, node: NodeId, body: &Json) -> bool {
        match Reply::parse(body, &self.w.topic) {
            Ok(reply) => {
                let done = Heartbeat {
                    reply: Some(reply.recorded()),
                    ..sent
                };
                self.w
                    .record(self.process, OpType::Ok, Call::Heartbeat(done), None);
                let assign = self.state.apply(&reply);
                self.record_assign(assign);
                self.interval = Duration::from_millis(reply.interval_ms.max(50));
                self.last_heard = Instant::now();
                self.next_heartbeat = self.last_heard + self.interval;
                true
            }
            Err(e) => {
                let error = format!("n{node}: 200 with an unexpected body ({e}): {body}");
                self.w.note(format!("consumer {}: {error}", self.consumer));
                self.w.record(
                    self.process,
                    OpType::Info,
                    Call::Heartbeat(sent),
                    Some(error),
                );
                self.retire();
                false
            }
        }
    }

    /// A heartbeat not answered 200: `fail` with its code, or `info`. Returns the code of a
    /// definite refusal.
    fn unanswered(&mut self, sent: Heartbeat, node: NodeId, answer: Answer) -> Option<String> {
        match answer {
            Answer::Definite { status, code } => {
                let error = format!("n{node}: {status} {code}");
                if status != 503 && code != "FENCED" {
                    self.w.note(format!(
                        "consumer {}: heartbeat (epoch {}) refused: {error}",
                        self.consumer, sent.epoch
                    ));
                }
                let done = Heartbeat {
                    code: Some(code.clone()),
                    ..sent
                };
                self.w.record(
                    self.process,
                    OpType::Fail,
                    Call::Heartbeat(done),
                    Some(error),
                );
                Some(code)
            }
            other => {
                let error = format!("n{node}: {}", other.describe());
                self.w.record(
                    self.process,
                    OpType::Info,
                    Call::Heartbeat(sent),
                    Some(error),
                );
                self.retire();
                None
            }
        }
    }

    /// Joins as a new member: 3 times in 4 with an id of its own (KIP-1082), never used
    /// before, except that a join whose outcome was unknown is retried with the same id (so
    /// that it stays one member); otherwise the coordinator picks the id.
    async fn join(&mut self) -> bool {
        let node = self.node();
        let id = self.retry_join.take().or_else(|| {
            self.rng.random_bool(OWN_ID_JOINS).then(|| {
                let tag: u64 = self.rng.random();
                format!("c{}-{tag:016x}", self.consumer)
            })
        });
        let sent = Heartbeat {
            member: id.clone(),
            epoch: JOIN_EPOCH,
            node: Some(node),
            ..Heartbeat::default()
        };
        self.w.record(
            self.process,
            OpType::Invoke,
            Call::Heartbeat(sent.clone()),
            None,
        );
        let mut body = json!({
            "member_epoch": JOIN_EPOCH,
            "topics": [self.w.topic],
            "rebalance_timeout_ms": REBALANCE_TIMEOUT_MS,
        });
        if let Some(id) = &id {
            body["member_id"] = json!(id);
        }
        let path = format!("/v1/groups/{GROUP}/heartbeat");
        match self.w.api.post(node, &path, &body).await {
            Answer::Ok(body) => {
                let joined = self.replied(sent, node, &body);
                if joined {
                    self.group.count("joins");
                    if let Some(id) = id
                        && body["member_id"].as_str() != Some(id.as_str())
                    {
                        self.w.note(format!(
                            "consumer {}: joined with its own id {id}, answered {}",
                            self.consumer, body["member_id"]
                        ));
                    }
                }
                joined
            }
            other => {
                if self.unanswered(sent, node, other).is_none() {
                    // Unknown outcome: the same id again, so as not to leave a second member.
                    self.retry_join = id;
                    if self.retry_join.is_some() {
                        self.group.count("joins retried with the same id");
                    }
                }
                false
            }
        }
    }

    async fn heartbeat(&mut self) {
        let Some((member, epoch)) = self.state.member() else {
            return;
        };
        let node = self.node();
        let owned = self.state.owned();
        let sent = Heartbeat {
            member: Some(member.clone()),
            epoch,
            owned: owned.iter().map(|&p| key(p)).collect(),
            node: Some(node),
            ..Heartbeat::default()
        };
        self.w.record(
            self.process,
            OpType::Invoke,
            Call::Heartbeat(sent.clone()),
            None,
        );
        let body = json!({
            "member_id": member,
            "member_epoch": epoch,
            "owned": partition_list(&self.w.topic, &owned),
        });
        let path = format!("/v1/groups/{GROUP}/heartbeat");
        match self.w.api.post(node, &path, &body).await {
            Answer::Ok(body) => {
                self.replied(sent, node, &body);
            }
            other => {
                if self.unanswered(sent, node, other).as_deref() == Some("FENCED") {
                    self.group.count("heartbeats answered FENCED");
                    self.fenced(member, epoch).await;
                } else {
                    self.next_heartbeat = Instant::now() + backoff(&mut self.rng);
                }
            }
        }
    }

    /// The coordinator fenced the member: one commit with the old identity (a zombie's, which
    /// must be refused), then it owns nothing and rejoins.
    async fn fenced(&mut self, member: String, epoch: i64) {
        let offsets = self.state.to_commit(true);
        if !offsets.is_empty() {
            match self.commit_as(member, epoch, offsets).await {
                Committed::Ok => self.group.count("commits after FENCED accepted"),
                Committed::Fenced => self.group.count("commits after FENCED refused"),
                _ => {}
            }
        }
        let assign = self.state.reset();
        self.record_assign(assign);
    }

    /// Commits the positions that moved (all of them if `all`).
    async fn commit(&mut self, all: bool) -> Committed {
        let Some((member, epoch)) = self.state.member() else {
            return Committed::Nothing;
        };
        let offsets = self.state.to_commit(all);
        if offsets.is_empty() {
            return Committed::Nothing;
        }
        self.commit_as(member, epoch, offsets).await
    }

    async fn commit_as(
        &mut self,
        member: String,
        epoch: i64,
        offsets: BTreeMap<u32, u64>,
    ) -> Committed {
        let node = self.node();
        let sent = Commit {
            member: member.clone(),
            epoch,
            offsets: offsets.iter().map(|(&p, &o)| (key(p), Offset(o))).collect(),
            code: None,
            node: Some(node),
        };
        self.w.record(
            self.process,
            OpType::Invoke,
            Call::Commit(sent.clone()),
            None,
        );
        let list: Vec<Json> = offsets
            .iter()
            .map(|(p, o)| json!({"topic": self.w.topic, "partition": p, "offset": o}))
            .collect();
        let body = json!({"member_id": member, "member_epoch": epoch, "offsets": list});
        let path = format!("/v1/groups/{GROUP}/offsets");
        match self.w.api.post(node, &path, &body).await {
            Answer::Ok(_) => {
                self.w
                    .record(self.process, OpType::Ok, Call::Commit(sent), None);
                if self.state.member() == Some((member, epoch)) {
                    self.state.committed(&offsets);
                    self.last_heard = Instant::now();
                }
                Committed::Ok
            }
            Answer::Definite { status, code } => {
                let error = format!("n{node}: {status} {code}");
                if status != 503 && code != "FENCED" {
                    self.w.note(format!(
                        "consumer {}: commit refused: {error}",
                        self.consumer
                    ));
                }
                let fenced = code == "FENCED";
                let done = Commit {
                    code: Some(code),
                    ..sent
                };
                self.w
                    .record(self.process, OpType::Fail, Call::Commit(done), Some(error));
                if fenced {
                    // The heartbeat will tell whether the member is gone.
                    self.next_heartbeat = Instant::now();
                    Committed::Fenced
                } else {
                    Committed::Refused
                }
            }
            other => {
                let error = format!("n{node}: {}", other.describe());
                self.w
                    .record(self.process, OpType::Info, Call::Commit(sent), Some(error));
                self.retire();
                Committed::Unknown
            }
        }
    }

    /// Leaves the group (a heartbeat with epoch -1, or the DELETE); once it has left, one
    /// commit with the old identity (which must be refused); then it owns nothing.
    async fn leave(&mut self) {
        let Some((member, epoch)) = self.state.member() else {
            return;
        };
        let node = self.node();
        let sent = Heartbeat {
            member: Some(member.clone()),
            epoch: LEAVE_EPOCH,
            node: Some(node),
            ..Heartbeat::default()
        };
        self.w.record(
            self.process,
            OpType::Invoke,
            Call::Heartbeat(sent.clone()),
            None,
        );
        let answer = if self.rng.random_bool(0.5) {
            let path = format!("/v1/groups/{GROUP}/members/{member}");
            self.w.api.delete(node, &path).await
        } else {
            let path = format!("/v1/groups/{GROUP}/heartbeat");
            let body = json!({"member_id": member, "member_epoch": LEAVE_EPOCH});
            self.w.api.post(node, &path, &body).await
        };
        match answer {
            Answer::Ok(body) => {
                let reply = HeartbeatReply {
                    member: body["member_id"].as_str().unwrap_or(&member).to_owned(),
                    epoch: body["member_epoch"].as_i64().unwrap_or(LEAVE_EPOCH),
                    ..HeartbeatReply::default()
                };
                let done = Heartbeat {
                    reply: Some(reply),
                    ..sent
                };
                self.w
                    .record(self.process, OpType::Ok, Call::Heartbeat(done), None);
                self.group.count("leaves");
                let offsets = self.state.to_commit(true);
                if !offsets.is_empty() && Instant::now() < self.w.deadline {
                    match self.commit_as(member, epoch, offsets).await {
                        Committed::Ok => self.group.count("commits after a leave accepted"),
                        Committed::Fenced => self.group.count("commits after a leave refused"),
                        _ => {}
                    }
                }
            }
            other => {
                self.unanswered(sent, node, other);
            }
        }
        let assign = self.state.reset();
        self.record_assign(assign);
    }

    /// Stops everything for longer than the session timeout, then acts as a zombie would:
    /// commits with its old identity, then heartbeats.
    async fn pause(&mut self) {
        let ms = SESSION_TIMEOUT_MS + self.rng.random_range(PAUSE_EXTRA_MS);
        self.group.count("long pauses");
        let until = (Instant::now() + Duration::from_millis(ms)).min(self.w.deadline);
        tokio::time::sleep_until(until.into()).await;
        if Instant::now() >= self.w.deadline {
            return;
        }
        match self.commit(true).await {
            Committed::Ok => self.group.count("commits after a long pause accepted"),
            Committed::Fenced => self.group.count("commits after a long pause refused"),
            _ => {}
        }
        self.heartbeat().await;
    }

    /// Stops everything until just around the session timeout after the coordinator last heard
    /// from the member (-100..+300 ms), then heartbeats: the coordinator removes silent members
    /// on a timer, so this lands now and then between the session's end and the removal.
    async fn brief_pause(&mut self) {
        self.group.count("brief pauses");
        let ms = self.rng.random_range(BRIEF_PAUSE_MS);
        let session_end = self.last_heard + Duration::from_millis(SESSION_TIMEOUT_MS);
        let off = Duration::from_millis(ms.unsigned_abs());
        let until = if ms >= 0 {
            session_end + off
        } else {
            session_end - off
        };
        let until = until.min(self.w.deadline);
        tokio::time::sleep_until(until.into()).await;
        if Instant::now() < self.w.deadline {
            self.heartbeat().await;
        }
    }
}

impl Workload {
    /// One consumer of the group until the deadline; then it commits and leaves. Every process
    /// it uses is registered in `stats`.
    pub async fn group_consumer(
        self: Arc<Self>,
        consumer: u64,
        stats: Arc<ConsumerStats>,
        group: Arc<GroupStats>,
    ) {
        let rng = StdRng::seed_from_u64(
            self.seed ^ (consumer + 1).wrapping_mul(0xA24B_AED4_963E_E407) ^ 0x0073_7562,
        );
        let process = self.new_process();
        stats.register(process);
        let mut r = Runner {
            w: &self,
            consumer,
            rng,
            process,
            state: GroupConsumer::default(),
            stats: &stats,
            group: &group,
            interval: Duration::from_millis(DEFAULT_HEARTBEAT_MS),
            next_heartbeat: Instant::now(),
            last_heard: Instant::now(),
            retry_join: None,
        };
        let mut next_commit = Instant::now() + COMMIT_EVERY;
        let mut next_churn =
            Instant::now() + Duration::from_millis(r.rng.random_range(CHURN_EVERY_MS));
        for _ in 0..MAX_STEPS {
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            if r.state.member().is_none() {
                if !r.join().await {
                    tokio::time::sleep(backoff(&mut r.rng)).await;
                }
                continue;
            }
            if now >= next_churn {
                next_churn = now + Duration::from_millis(r.rng.random_range(CHURN_EVERY_MS));
                match r.rng.random_range(0..10) {
                    0..=2 => {
                        r.commit(false).await;
                        r.leave().await;
                        let wait = r.rng.random_range(0..=1_000);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                    }
                    3..=4 => r.pause().await,
                    5..=6 => r.brief_pause().await,
                    _ => {}
                }
                continue;
            }
            if r.state.releasing() {
                r.commit(false).await;
                r.state.released();
                r.heartbeat().await;
                continue;
            }
            if now >= r.next_heartbeat {
                r.heartbeat().await;
                continue;
            }
            if now >= next_commit {
                next_commit = now + COMMIT_EVERY;
                r.commit(false).await;
                continue;
            }
            if r.state.polled().assigned().is_empty() {
                let wait = r.next_heartbeat.saturating_duration_since(now);
                tokio::time::sleep(wait.min(Duration::from_millis(100))).await;
                continue;
            }
            let Runner {
                state,
                rng,
                process,
                ..
            } = &mut r;
            if !self
                .poll(consumer, *process, state.polled(), rng, &stats)
                .await
            {
                tokio::time::sleep(backoff(&mut r.rng)).await;
            }
        }
        if r.state.member().is_some() {
            r.commit(false).await;
            r.leave().await;
        }
    }
}
