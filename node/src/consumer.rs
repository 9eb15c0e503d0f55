//! The node's own consumer: a member of a consumer group with Kafka's semantics, for the
//! workers that run inside every node (the chat router next). It speaks to the coordinator
//! through [`Service`], so it works the same whichever node coordinates its group.
//!
//! Delivery is at least once: records are handed out by [`Consumer::poll`], and the positions
//! after them are committed by [`Consumer::commit`]. A partition taken away is released only
//! at the next `poll` (after the caller has handled what the previous poll returned and
//! committed), so it is never processed by two members at once while both are live.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat4all_storage::StoredRecord;

use crate::error::ServiceError;
use crate::groups::model::{Heartbeat, JOIN_EPOCH, LEAVE_EPOCH, Tp};
use crate::groups::stored::Committed;
use crate::retention::now_ms;
use crate::service::{FetchRequest, GroupOp, HeartbeatAnswer, Service};

/// A record with where it came from.
#[derive(Clone, Debug)]
pub struct Consumed {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The record.
    pub record: StoredRecord,
}

impl Consumed {
    /// Its topic and partition.
    pub fn tp(&self) -> Tp {
        (self.topic.clone(), self.partition)
    }
}

/// A consumer group member.
pub struct Consumer {
    service: Arc<Service>,
    group: String,
    topics: BTreeSet<String>,
    instance_id: Option<String>,
    member_id: Option<String>,
    epoch: i32,
    /// Assigned partitions and the next offset to read (`None`: not resolved yet).
    positions: BTreeMap<Tp, Option<u64>>,
    /// Positions already committed.
    committed: BTreeMap<Tp, u64>,
    /// Where [`Consumer::rewind`] goes back to: the last committed position, or where the
    /// partition started when it was assigned.
    rewind_to: BTreeMap<Tp, Option<u64>>,
    interval: Duration,
    next_heartbeat: Instant,
    /// Rotates which partition a poll long-polls on.
    turn: usize,
    /// Whether a revoked partition's position is committed as it is released: right for a
    /// caller that handles every record of a poll before it polls again, wrong for one that
    /// finishes with them later (see [`Consumer::with_own_commits`]).
    commit_on_revoke: bool,
    /// A partition revoked during [`Consumer::keep_alive`] waits for the next heartbeat.
    release_pending: bool,
}

impl Consumer {
    /// A consumer of `topics` in `group`; it joins at its first poll.
    pub fn new(
        service: Arc<Service>,
        group: &str,
        topics: &[String],
        instance_id: Option<String>,
    ) -> Consumer {
        Consumer {
            service,
            group: group.to_string(),
            topics: topics.iter().cloned().collect(),
            instance_id,
            // Its own id, so a join retried after a lost reply is still one member.
            member_id: Some(format!("{:032x}", rand::random::<u128>())),
            epoch: JOIN_EPOCH,
            positions: BTreeMap::new(),
            committed: BTreeMap::new(),
            rewind_to: BTreeMap::new(),
            interval: Duration::from_secs(1),
            next_heartbeat: Instant::now(),
            turn: 0,
            commit_on_revoke: true,
            release_pending: false,
        }
    }

    /// For a caller that commits positions itself once it has handled the records before
    /// them ([`Consumer::commit_at`], [`Consumer::commit_positions`]): a partition revoked
    /// meanwhile is released with nothing more committed for it, as the position polled runs
    /// past records the caller has not finished with, which the next owner must read.
    pub fn with_own_commits(mut self) -> Consumer {
        self.commit_on_revoke = false;
        self
    }

    /// Whether this member owns `tp` now.
    pub fn owns(&self, tp: &Tp) -> bool {
        self.positions.contains_key(tp)
    }

    /// The partitions this member owns now.
    pub fn assignment(&self) -> BTreeSet<Tp> {
        self.positions.keys().cloned().collect()
    }

    /// Heartbeats: joins, reports what it owns (releasing what was revoked) and takes the
    /// assignment the coordinator returns. A fenced member rejoins owning nothing.
    pub async fn heartbeat(&mut self) -> Result<(), ServiceError> {
        self.heartbeat_holding(false).await
    }

    /// Heartbeats if one is due, keeping any partition revoked meanwhile until the next
    /// [`Consumer::heartbeat`]: for a caller in the middle of an effect it cannot take back
    /// (a platform call), which must keep its session but must not hand its partition over
    /// before it has stored the outcome. The coordinator waits for the release up to the
    /// member's rebalance timeout.
    pub async fn keep_alive(&mut self) -> Result<(), ServiceError> {
        if Instant::now() < self.next_heartbeat {
            return Ok(());
        }
        self.heartbeat_holding(true).await
    }

    async fn heartbeat_holding(&mut self, hold: bool) -> Result<(), ServiceError> {
        if !hold {
            self.release_pending = false;
        }
        let joining = self.epoch == JOIN_EPOCH;
        let hb = Heartbeat {
            member_id: self.member_id.clone(),
            instance_id: self.instance_id.clone(),
            member_epoch: self.epoch,
            topics: joining.then(|| self.topics.clone()),
            rebalance_timeout_ms: None,
            owned: Some(self.assignment()),
        };
        let answer = match self.service.group_heartbeat(&self.group, hb).await {
            Ok(a) => a,
            Err(ServiceError::MemberFenced(why)) => {
                tracing::warn!(group = %self.group, "fenced: {why}; rejoining");
                self.reset();
                return Err(ServiceError::MemberFenced(why));
            }
            Err(e) => return Err(e),
        };
        let HeartbeatAnswer {
            reply,
            heartbeat_interval_ms,
            committed,
            auto_offset_reset,
        } = answer;
        self.member_id = Some(reply.member_id);
        self.epoch = reply.member_epoch;
        self.interval = Duration::from_millis(heartbeat_interval_ms);
        self.next_heartbeat = Instant::now() + self.interval;
        // Revoked partitions: commit how far this member got (unless it commits itself), then
        // release them (it holds nothing between polls); the next heartbeat reports them
        // released. A holding heartbeat keeps them, reported as owned, until the next plain
        // one, which the caller makes as soon as it is done ([`Consumer::heartbeat_if_due`],
        // `poll`).
        let revoked: BTreeSet<Tp> = self
            .positions
            .keys()
            .filter(|tp| reply.revoking.contains(*tp))
            .cloned()
            .collect();
        let held = hold && !revoked.is_empty();
        if held {
            self.release_pending = true;
        } else if !revoked.is_empty()
            && self.commit_on_revoke
            && let Err(e) = self.commit_partitions(|tp| revoked.contains(tp)).await
        {
            tracing::warn!(group = %self.group, "commit before release: {e}");
        }
        let keep = |tp: &Tp| reply.assigned.contains(tp) || (held && revoked.contains(tp));
        self.positions.retain(|tp, _| keep(tp));
        self.committed.retain(|tp, _| keep(tp));
        self.rewind_to.retain(|tp, _| keep(tp));
        if !held && !reply.revoking.is_empty() {
            // Tell the coordinator right away, so the partitions move without waiting a
            // heartbeat interval.
            self.next_heartbeat = Instant::now();
        }
        for (tp, c) in committed {
            if self.positions.contains_key(&tp) {
                continue;
            }
            let pos = match c {
                Some(o) => Some(o),
                None => {
                    self.service
                        .start_position(&tp.0, tp.1, auto_offset_reset)
                        .await
                }
            };
            if let Some(o) = c {
                self.committed.insert(tp.clone(), o);
            }
            self.rewind_to.insert(tp.clone(), pos);
            self.positions.insert(tp, pos);
        }
        Ok(())
    }

    /// Heartbeats if one is due: for a caller that spends a while on one poll's records, so
    /// that its session does not run out (and its partitions go to another member, who would
    /// repeat what it is doing) before its next poll. A partition revoked here is released;
    /// see [`Consumer::owns`].
    pub async fn heartbeat_if_due(&mut self) -> Result<(), ServiceError> {
        if !self.heartbeat_due() {
            return Ok(());
        }
        self.heartbeat().await
    }

    /// Whether the interval is up, or a partition held by [`Consumer::keep_alive`] waits to
    /// be released.
    fn heartbeat_due(&self) -> bool {
        Instant::now() >= self.next_heartbeat || self.release_pending
    }

    /// Goes back to the last committed position of every owned partition (or where it
    /// started, if nothing was committed since): for a caller that could not handle what the
    /// last polls returned and must not skip it.
    pub fn rewind(&mut self) {
        for (tp, pos) in &self.rewind_to {
            if let Some(p) = self.positions.get_mut(tp) {
                *p = *pos;
            }
        }
    }

    fn reset(&mut self) {
        self.epoch = JOIN_EPOCH;
        self.positions.clear();
        self.committed.clear();
        self.rewind_to.clear();
        self.release_pending = false;
        self.next_heartbeat = Instant::now();
    }

    /// Returns up to `max_records` records of the owned partitions, waiting up to `max_wait`
    /// when there are none. Heartbeats when one is due.
    pub async fn poll(
        &mut self,
        max_records: u32,
        max_wait: Duration,
    ) -> Result<Vec<Consumed>, ServiceError> {
        if self.heartbeat_due() {
            match self.heartbeat().await {
                Ok(()) | Err(ServiceError::MemberFenced(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let tps: Vec<Tp> = self.positions.keys().cloned().collect();
        if tps.is_empty() {
            let nap = max_wait.min(
                self.next_heartbeat
                    .saturating_duration_since(Instant::now()),
            );
            tokio::time::sleep(nap).await;
            return Ok(Vec::new());
        }
        let until_heartbeat = self
            .next_heartbeat
            .saturating_duration_since(Instant::now());
        // First what is there now, from every partition (rotating who goes first, so a busy
        // partition cannot starve the others of `max_records`).
        let mut out = Vec::new();
        self.turn = self.turn.wrapping_add(1);
        let n = tps.len();
        for i in 0..n {
            let tp = &tps[(self.turn + i) % n];
            let left = max_records.saturating_sub(out.len() as u32);
            if left == 0 {
                break;
            }
            let req = self.fetch_request(tp, left, Duration::ZERO);
            let res = self.service.fetch_replica(req.clone()).await;
            out.extend(self.absorb(tp, &req, res)?);
        }
        let wait = max_wait.min(until_heartbeat);
        if !out.is_empty() || wait.is_zero() {
            return Ok(out);
        }
        // Nothing: long-poll every partition at once and take the first that has records
        // (the others' polls are dropped), so a record in any partition wakes the member.
        let mut polls = futures::stream::FuturesUnordered::new();
        for tp in tps {
            let req = self.fetch_request(&tp, max_records, wait);
            let service = self.service.clone();
            polls.push(async move {
                let res = service.fetch_replica(req.clone()).await;
                (tp, req, res)
            });
        }
        while let Some((tp, req, res)) = futures::StreamExt::next(&mut polls).await {
            let got = self.absorb(&tp, &req, res)?;
            if !got.is_empty() {
                return Ok(got);
            }
        }
        Ok(out)
    }

    fn fetch_request(&self, tp: &Tp, max_records: u32, wait: Duration) -> FetchRequest {
        FetchRequest {
            topic: tp.0.clone(),
            partition: tp.1,
            offset: self.positions.get(tp).copied().flatten(),
            max_records,
            max_wait_ms: wait.as_millis() as u64,
        }
    }

    /// Takes a fetch's records and moves the partition's position past them.
    fn absorb(
        &mut self,
        tp: &Tp,
        req: &FetchRequest,
        res: Result<crate::service::FetchResult, ServiceError>,
    ) -> Result<Vec<Consumed>, ServiceError> {
        let position = req.offset;
        let res = match res {
            Ok(r) => r,
            Err(ServiceError::OffsetOutOfRange {
                log_start_offset, ..
            }) => {
                // Retention deleted records this group never consumed: go on from the
                // oldest left (Kafka's auto.offset.reset=earliest after truncation).
                tracing::warn!(group = %self.group, topic = %tp.0, partition = tp.1, "position gone; skipping to {log_start_offset}");
                self.positions.insert(tp.clone(), Some(log_start_offset));
                return Ok(Vec::new());
            }
            Err(ServiceError::Unavailable(why)) => {
                tracing::debug!(group = %self.group, "fetch unavailable: {why}");
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        // The partition may have been revoked, or its position moved (rewind), while the
        // fetch was out: then these records are not the next ones, so drop them.
        if self.positions.get(tp) != Some(&position) {
            return Ok(Vec::new());
        }
        let mut next = position.unwrap_or(res.log_start_offset);
        let out: Vec<Consumed> = res
            .records
            .into_iter()
            .map(|(offset, record)| {
                next = offset + 1;
                Consumed {
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset,
                    record,
                }
            })
            .collect();
        self.positions.insert(tp.clone(), Some(next));
        Ok(out)
    }

    /// Commits the position of every owned partition that moved since the last commit.
    pub async fn commit(&mut self) -> Result<(), ServiceError> {
        self.commit_partitions(|_| true).await
    }

    /// The position of every owned partition (the offset after the last record polled), to
    /// commit later with [`Consumer::commit_positions`].
    pub fn positions(&self) -> Vec<(Tp, u64)> {
        self.positions
            .iter()
            .filter_map(|(tp, p)| p.map(|p| (tp.clone(), p)))
            .collect()
    }

    /// Commits positions taken earlier by [`Consumer::positions`], for a caller whose records
    /// are handled only some time after they were polled: those of partitions this member
    /// still owns and that moved since the last commit.
    pub async fn commit_positions(
        &mut self,
        positions: Vec<(Tp, u64)>,
    ) -> Result<(), ServiceError> {
        let now = now_ms();
        let offsets: Vec<(Tp, Committed)> = positions
            .into_iter()
            .filter(|(tp, p)| self.positions.contains_key(tp) && self.committed.get(tp) != Some(p))
            .map(|(tp, offset)| {
                (
                    tp,
                    Committed {
                        offset,
                        metadata: None,
                        committed_at_ms: now,
                    },
                )
            })
            .collect();
        self.send_commit(offsets).await
    }

    async fn commit_partitions(&mut self, which: impl Fn(&Tp) -> bool) -> Result<(), ServiceError> {
        let mut positions = self.positions();
        positions.retain(|(tp, _)| which(tp));
        self.commit_positions(positions).await
    }

    /// Commits `next` (the offset after the last record handled) as the position of one
    /// partition: for a worker whose every record has an effect outside the log (a platform
    /// call), so that a crash repeats at most the record in hand, not the rest of its poll.
    pub async fn commit_at(
        &mut self,
        topic: &str,
        partition: u32,
        next: u64,
    ) -> Result<(), ServiceError> {
        let tp: Tp = (topic.to_string(), partition);
        if !self.owns(&tp) {
            // Revoked, or this member was fenced: the next owner starts at the last commit.
            return Err(ServiceError::MemberFenced(format!(
                "{topic}/{partition} is no longer assigned to this member"
            )));
        }
        if self.committed.get(&tp) == Some(&next) {
            return Ok(());
        }
        let c = Committed {
            offset: next,
            metadata: None,
            committed_at_ms: now_ms(),
        };
        self.send_commit(vec![(tp, c)]).await
    }

    async fn send_commit(&mut self, offsets: Vec<(Tp, Committed)>) -> Result<(), ServiceError> {
        let Some(member_id) = self.member_id.clone() else {
            return Ok(());
        };
        if offsets.is_empty() || self.epoch <= 0 {
            return Ok(());
        }
        let op = GroupOp::Commit {
            member: Some((member_id, self.epoch)),
            offsets: offsets.clone(),
        };
        match self.service.group_request(&self.group, op).await {
            Ok(_) => {
                for (tp, c) in offsets {
                    self.rewind_to.insert(tp.clone(), Some(c.offset));
                    self.committed.insert(tp, c.offset);
                }
                Ok(())
            }
            Err(ServiceError::MemberFenced(why)) => {
                self.reset();
                Err(ServiceError::MemberFenced(why))
            }
            Err(e) => Err(e),
        }
    }

    /// Leaves the group: its partitions go to the other members at once.
    pub async fn close(mut self) {
        let Some(id) = self.member_id.take().filter(|_| self.epoch > 0) else {
            return;
        };
        let hb = Heartbeat {
            member_id: Some(id),
            member_epoch: LEAVE_EPOCH,
            ..Heartbeat::default()
        };
        if let Err(e) = self.service.group_heartbeat(&self.group, hb).await {
            tracing::debug!(group = %self.group, "leave: {e}");
        }
    }
}
