//! The queue workload: idempotent producers send unique values to the topic's partitions while
//! the nemesis works; at the end every partition is drained from its log start.
//!
//! It is recorded in the kafka checker's terms, each partition being a key:
//!
//! ```text
//!  worker ── send [{key: p, value: v}] ──► any node ──► 200 {offset}     ok   (sequence + 1)
//!                                                  ├──► 4xx, 503 UNAVAILABLE fail (same sequence, next value)
//!                                                  └──► timeout, 503 OUTCOME_UNKNOWN, 5xx
//!                                                        info: retire the process, and retry the
//!                                                        SAME batch (value, sequence) under a new one
//!  drain ── assign [all keys, seek to beginning], then polls of each partition up to the end
//! ```
//!
//! [`crate::view::queue_view`] turns the same history into `enqueue`/`drain` operations for the
//! total-queue checker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat4all_jepsen::{
    Assign, Call, Key, Offset, OpType, Poll, Process, Record, Recorder, Send, Value,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::api::{Answer, Api};
use crate::schedule::NodeId;

/// Attempts of one batch before the worker gives up on it (and on its producer).
const MAX_ATTEMPTS: u32 = 30;
/// Operations of one worker, at most (the time limit ends them long before).
const MAX_OPS_PER_WORKER: u64 = 1_000_000;
/// Fetches per partition in the final drain, at most.
const MAX_DRAIN_FETCHES: u32 = 2_000;
/// Records per fetch in the drain.
const DRAIN_PAGE: u32 = 1_000;

/// What every worker shares.
pub struct Workload {
    /// The cluster.
    pub api: Api,
    /// Where operations go.
    pub recorder: Arc<Recorder>,
    /// The topic; partition `p` is key `p`.
    pub topic: String,
    /// Its partition count.
    pub partitions: u32,
    /// Node count; requests go to a random node.
    pub nodes: u32,
    /// Seed of the workers' choices (partition, node).
    pub seed: u64,
    /// No new batch starts after this.
    pub deadline: Instant,
    next_process: AtomicU64,
    next_value: AtomicU64,
    foreign: AtomicU64,
    notes: Mutex<Vec<String>>,
}

/// An idempotent producer session.
struct Producer {
    id: i64,
    epoch: i64,
    /// Next sequence per partition.
    sequences: BTreeMap<u32, u64>,
}

impl Workload {
    /// A workload on `topic`.
    pub fn new(
        api: Api,
        recorder: Arc<Recorder>,
        topic: &str,
        partitions: u32,
        nodes: u32,
        seed: u64,
        deadline: Instant,
    ) -> Self {
        Workload {
            api,
            recorder,
            topic: topic.to_owned(),
            partitions,
            nodes,
            seed,
            deadline,
            next_process: AtomicU64::new(0),
            next_value: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            notes: Mutex::new(Vec::new()),
        }
    }

    /// Things the workers saw that the protocol says should not happen (a retry of an
    /// indeterminate batch refused, a fenced producer): not anomalies of the checker, but worth
    /// reading next to the history.
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records the drain returned that the workload never wrote (not integers): corruption,
    /// which the history cannot represent, so it is counted here and makes the run invalid.
    pub fn foreign_records(&self) -> u64 {
        self.foreign.load(Ordering::SeqCst)
    }

    /// The records of a fetch's `body` from `node`. Those that are not `(offset, integer)` are
    /// left out, counted as foreign and noted: the harness only ever writes integers, so
    /// anything else is corruption.
    pub(crate) fn records_of(
        &self,
        partition: u32,
        node: NodeId,
        body: &serde_json::Value,
    ) -> Vec<Record> {
        let (records, foreign, example) = crate::log::parse_records(body);
        if let Some(record) = example {
            self.foreign.fetch_add(foreign, Ordering::SeqCst);
            self.note(format!(
                "partition {partition} (n{node}): {foreign} records that are not ours, e.g. {record}"
            ));
        }
        records
    }

    pub(crate) fn note(&self, note: String) {
        tracing::warn!("{note}");
        self.notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(note);
    }

    pub(crate) fn new_process(&self) -> Process {
        Process::Client(self.next_process.fetch_add(1, Ordering::SeqCst))
    }

    pub(crate) fn record(&self, process: Process, kind: OpType, call: Call, error: Option<String>) {
        let result = match kind {
            OpType::Invoke => self.recorder.invoke(process, call),
            _ => self.recorder.complete(process, kind, call, error),
        };
        // The workers never break the history's rules; if one did, the history would be
        // refused when checked, so this only logs.
        if let Err(e) = result {
            tracing::error!("cannot record: {e}");
        }
    }

    /// One client: produces until the deadline.
    pub async fn worker(self: Arc<Self>, worker: u64) {
        let mut rng =
            StdRng::seed_from_u64(self.seed ^ (worker + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut process = self.new_process();
        let mut producer: Option<Producer> = None;
        let records = format!("/v1/topics/{}/records", self.topic);
        for _ in 0..MAX_OPS_PER_WORKER {
            if Instant::now() >= self.deadline {
                break;
            }
            let Some(session) = producer.as_mut() else {
                producer = self.open_producer(&mut rng).await;
                if producer.is_none() {
                    tokio::time::sleep(backoff(&mut rng)).await;
                }
                continue;
            };
            let partition = rng.random_range(0..self.partitions);
            let value = self.next_value.fetch_add(1, Ordering::SeqCst);
            let sequence = *session.sequences.entry(partition).or_insert(0);
            let body = Api::produce_body(partition, value, (session.id, session.epoch), sequence);
            let invocation = Call::Send(vec![send(partition, value, None)]);
            let mut indeterminate = false;
            let mut settled = false;
            let mut keep_producer = true;
            for attempt in 0..MAX_ATTEMPTS {
                if attempt > 0 && Instant::now() >= self.deadline {
                    break;
                }
                let node = rng.random_range(1..=self.nodes);
                self.record(process, OpType::Invoke, invocation.clone(), None);
                let answer = self.api.post(node, &records, &body).await;
                match answer {
                    Answer::Ok(body) => {
                        let offset = body["offsets"][0]["offset"].as_u64();
                        let in_partition = body["offsets"][0]["partition"].as_u64();
                        if let (Some(offset), Some(p)) = (offset, in_partition)
                            && p == u64::from(partition)
                        {
                            let done = Call::Send(vec![send(partition, value, Some(offset))]);
                            self.record(process, OpType::Ok, done, None);
                            *session.sequences.entry(partition).or_insert(0) += 1;
                            settled = true;
                            break;
                        }
                        let error = format!("n{node}: 200 with an unexpected body: {body}");
                        self.note(format!("value {value}: {error}"));
                        self.record(process, OpType::Info, invocation.clone(), Some(error));
                        process = self.new_process();
                        keep_producer = false;
                        break;
                    }
                    Answer::Definite { status, code } if !indeterminate => {
                        let error = format!("n{node}: {status} {code}");
                        self.record(process, OpType::Fail, invocation.clone(), Some(error));
                        settled = true;
                        if code != "UNAVAILABLE" {
                            // A producer the cluster refuses (fenced, out of order) is replaced.
                            self.note(format!(
                                "value {value} (partition {partition}, producer {} seq {sequence}): first attempt refused with {status} {code}",
                                session.id
                            ));
                            keep_producer = false;
                        } else {
                            tokio::time::sleep(backoff(&mut rng)).await;
                        }
                        break;
                    }
                    Answer::Definite { status, code } => {
                        // This attempt wrote nothing, but an earlier one may have: still unknown.
                        let error = format!(
                            "n{node}: {status} {code} on a retry; an earlier attempt's outcome is unknown"
                        );
                        self.record(process, OpType::Info, invocation.clone(), Some(error));
                        process = self.new_process();
                        if code != "UNAVAILABLE" {
                            self.note(format!(
                                "value {value} (partition {partition}, producer {} seq {sequence}): retry of an indeterminate batch refused with {status} {code}",
                                session.id
                            ));
                            keep_producer = false;
                            break;
                        }
                        tokio::time::sleep(backoff(&mut rng)).await;
                    }
                    Answer::Unknown { reason } => {
                        self.record(
                            process,
                            OpType::Info,
                            invocation.clone(),
                            Some(format!("n{node}: {reason}")),
                        );
                        process = self.new_process();
                        indeterminate = true;
                        tokio::time::sleep(backoff(&mut rng)).await;
                    }
                }
            }
            if !settled {
                // Gave up on an indeterminate batch: its sequence can no longer be trusted.
                keep_producer = false;
            }
            if !keep_producer {
                producer = None;
            }
        }
    }

    async fn open_producer(&self, rng: &mut StdRng) -> Option<Producer> {
        let node = rng.random_range(1..=self.nodes);
        match self.api.post(node, "/v1/producers", &json!({})).await {
            Answer::Ok(body) => Some(Producer {
                id: body["id"].as_i64()?,
                epoch: body["epoch"].as_i64()?,
                sequences: BTreeMap::new(),
            }),
            _ => None,
        }
    }

    /// Reads every partition from its log start to its high watermark, recorded as one
    /// `assign` (every key, from the beginning) and `poll`s. A fetch that fails is a `fail`ed
    /// poll (fetches change nothing) and is retried at the same offset. Returns whether every
    /// partition was read to its end before `deadline`.
    pub async fn drain(&self, deadline: Instant) -> bool {
        let process = self.new_process();
        let keys: Vec<Key> = (0..self.partitions).map(|p| Key(u64::from(p))).collect();
        let assign = Call::Assign(Assign {
            keys,
            seek_to_beginning: true,
        });
        self.record(process, OpType::Invoke, assign.clone(), None);
        self.record(process, OpType::Ok, assign, None);
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut complete = true;
        for partition in 0..self.partitions {
            let done = self
                .drain_partition(process, partition, deadline, &mut rng)
                .await;
            if !done {
                self.note(format!(
                    "drain of partition {partition} did not reach its end"
                ));
            }
            complete &= done;
        }
        complete
    }

    async fn drain_partition(
        &self,
        process: Process,
        partition: u32,
        deadline: Instant,
        rng: &mut StdRng,
    ) -> bool {
        let base = format!("/v1/topics/{}/partitions/{partition}/records", self.topic);
        // `None`: from the log start (the first fetch without an offset starts there).
        let mut next: Option<u64> = None;
        for _ in 0..MAX_DRAIN_FETCHES {
            if Instant::now() >= deadline {
                return false;
            }
            let node: NodeId = rng.random_range(1..=self.nodes);
            let path = match next {
                Some(offset) => format!("{base}?offset={offset}&max_records={DRAIN_PAGE}"),
                None => format!("{base}?max_records={DRAIN_PAGE}"),
            };
            self.record(process, OpType::Invoke, Call::Poll(Poll::default()), None);
            let body = match self.api.get(node, &path).await {
                Answer::Ok(body) => body,
                other => {
                    let call = Call::Poll(Poll::default());
                    self.record(
                        process,
                        OpType::Fail,
                        call,
                        Some(format!("n{node}: {}", other.describe())),
                    );
                    tokio::time::sleep(backoff(rng)).await;
                    continue;
                }
            };
            let records = self.records_of(partition, node, &body);
            let high_watermark = body["high_watermark"].as_u64().unwrap_or(0);
            let last = records.last().map(|r| r.offset.0);
            let mut poll = Poll::default();
            if !records.is_empty() {
                poll.records.insert(Key(u64::from(partition)), records);
            }
            self.record(process, OpType::Ok, Call::Poll(poll), None);
            let position = match (last, next) {
                (Some(last), _) => last + 1,
                (None, Some(offset)) => offset,
                (None, None) => body["log_start_offset"].as_u64().unwrap_or(0),
            };
            next = Some(position);
            if position >= high_watermark {
                return true;
            }
        }
        false
    }
}

fn send(partition: u32, value: u64, offset: Option<u64>) -> Send {
    Send {
        key: Key(u64::from(partition)),
        value: Value(value),
        offset: offset.map(Offset),
    }
}

/// 100-300 ms between retries.
pub(crate) fn backoff(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.random_range(100..=300))
}
