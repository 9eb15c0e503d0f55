//! The log workload (Jepsen's `kafka` workload with `assign`): producers send as in the queue
//! workload ([`Workload::worker`]) while consumers read the partitions during the whole run.
//!
//! ```text
//!  consumer ── assign [random non-empty subset of the partitions]     (recorded ok)
//!      │        kept partitions keep their position, new ones start at the log start
//!      │        (Kafka's `assign` with `auto.offset.reset = earliest` and no commits)
//!      ├─ poll: one fetch per assigned partition, each to a random node,
//!      │        GET …/partitions/{p}/records?offset=<position>&max_records=200&max_wait_ms=100
//!      │        every fetch 200 ─► ok poll {p: [[offset, value], …]}, positions move to last + 1
//!      │        any fetch not 200 (416 OFFSET_OUT_OF_RANGE included) ─► fail poll, no position
//!      │        moves (a fetch changes nothing, so a failed poll is `fail`, never `info`)
//!      └─ every 3-7 s: assign a new random subset
//! ```
//!
//! The kafka checker's `poll-skip` and `nonmonotonic-poll` compare each poll's first record of
//! a key with the last record the process's previous `ok` poll of that key returned, as long
//! as the key stayed assigned: exactly what the consumer's positions promise.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat4all_jepsen::{Assign, Call, Key, Offset, OpType, Poll, Process, Record, Value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;

use crate::api::Answer;
use crate::queue::{Workload, backoff};

/// Records per fetch.
pub const POLL_MAX_RECORDS: u32 = 200;
/// How long a fetch at the high watermark waits for new records.
pub const POLL_MAX_WAIT_MS: u32 = 100;
/// 416 answers noted one by one, at most (the rest are counted).
const MAX_416_NOTES: u64 = 20;
/// Polls of one consumer, at most (the time limit ends them long before).
const MAX_POLLS_PER_CONSUMER: u64 = 10_000_000;

/// One consumer's assignment and positions: the bookkeeping the poll operations record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consumer {
    /// Assigned partition → next offset to read (`None`: from the log start).
    positions: BTreeMap<u32, Option<u64>>,
}

/// What one successful fetch of a partition returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// The records, in the order the node returned them.
    pub records: Vec<Record>,
}

impl Consumer {
    /// Replaces the assignment by `partitions`: those kept keep their position, the new ones
    /// start at the log start. Returns the `assign` operation's value (no seek to the beginning:
    /// the checker keeps comparing the kept partitions' polls).
    pub fn assign(&mut self, partitions: &BTreeSet<u32>) -> Assign {
        self.positions.retain(|p, _| partitions.contains(p));
        for &p in partitions {
            self.positions.entry(p).or_insert(None);
        }
        Assign {
            keys: partitions.iter().map(|&p| Key(u64::from(p))).collect(),
            seek_to_beginning: false,
        }
    }

    /// Replaces the assignment by `partitions`, as a consumer group's coordinator hands it out:
    /// those kept keep their position, the new ones start where the coordinator says (`None`:
    /// the log start). Returns the `assign` operation's value.
    pub fn assign_at(&mut self, partitions: &BTreeMap<u32, Option<u64>>) -> Assign {
        self.positions.retain(|p, _| partitions.contains_key(p));
        for (&p, &position) in partitions {
            self.positions.entry(p).or_insert(position);
        }
        Assign {
            keys: partitions.keys().map(|&p| Key(u64::from(p))).collect(),
            seek_to_beginning: false,
        }
    }

    /// The assigned partitions, ascending.
    pub fn assigned(&self) -> Vec<u32> {
        self.positions.keys().copied().collect()
    }

    /// The next offset to read from `partition` (`None`: the log start, or not assigned).
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.positions.get(&partition).copied().flatten()
    }

    /// The fetch of `partition` at its position.
    pub fn fetch_path(&self, topic: &str, partition: u32) -> String {
        let base = format!("/v1/topics/{topic}/partitions/{partition}/records");
        let wait = format!("max_records={POLL_MAX_RECORDS}&max_wait_ms={POLL_MAX_WAIT_MS}");
        match self.position(partition) {
            Some(offset) => format!("{base}?offset={offset}&{wait}"),
            None => format!("{base}?{wait}"),
        }
    }

    /// Applies a poll whose every fetch succeeded: each partition's position moves past the
    /// last record returned (or stays). Returns the `ok` poll's value.
    pub fn apply(&mut self, fetched: BTreeMap<u32, Fetched>) -> Poll {
        let mut poll = Poll::default();
        for (partition, fetch) in fetched {
            let Some(position) = self.positions.get_mut(&partition) else {
                continue;
            };
            if let Some(last) = fetch.records.last() {
                *position = Some(last.offset.0 + 1);
                poll.records
                    .insert(Key(u64::from(partition)), fetch.records);
            }
        }
        poll
    }
}

/// The records of a fetch's body; the second value counts records that are not `(offset,
/// integer value)` pairs (the workload never writes anything else), with one of them.
pub fn parse_records(body: &Json) -> (Vec<Record>, u64, Option<Json>) {
    let mut records = Vec::new();
    let (mut foreign, mut example) = (0, None);
    for record in body["records"].as_array().into_iter().flatten() {
        match (record["offset"].as_u64(), record["value"].as_u64()) {
            (Some(offset), Some(value)) => records.push(Record {
                offset: Offset(offset),
                value: Value(value),
            }),
            _ => {
                foreign += 1;
                example = Some(record.clone());
            }
        }
    }
    (records, foreign, example)
}

/// A random non-empty subset of `0..partitions`.
fn random_subset(rng: &mut StdRng, partitions: u32) -> BTreeSet<u32> {
    loop {
        let subset: BTreeSet<u32> = (0..partitions).filter(|_| rng.random_bool(0.5)).collect();
        if !subset.is_empty() {
            return subset;
        }
    }
}

/// What the consumers share besides the workload: their processes, 416 answers seen.
#[derive(Default)]
pub struct ConsumerStats {
    out_of_range: AtomicU64,
    processes: Mutex<BTreeSet<Process>>,
}

impl ConsumerStats {
    /// Registers a process that reads (left out of the total-queue view).
    pub fn register(&self, process: Process) {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(process);
    }

    /// The consumers' processes (each consumer has one for the whole run).
    pub fn processes(&self) -> BTreeSet<Process> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// 416 `OFFSET_OUT_OF_RANGE` answers to consumer fetches.
    pub fn out_of_range(&self) -> u64 {
        self.out_of_range.load(Ordering::SeqCst)
    }
}

impl Workload {
    /// One consumer: assigns itself random partitions and polls them until the deadline,
    /// reassigning every 3-7 s. It has one process for the whole run (polls are never
    /// indeterminate), registered in `stats`.
    pub async fn consumer(self: Arc<Self>, consumer: u64, stats: Arc<ConsumerStats>) {
        let mut rng = StdRng::seed_from_u64(
            self.seed ^ (consumer + 1).wrapping_mul(0xD1B5_4A32_D192_ED03) ^ 0x006C_6F67,
        );
        let process = self.new_process();
        stats.register(process);
        let mut state = Consumer::default();
        let mut reassign_at = Instant::now();
        for _ in 0..MAX_POLLS_PER_CONSUMER {
            let now = Instant::now();
            if now >= self.deadline {
                break;
            }
            if now >= reassign_at {
                let call = Call::Assign(state.assign(&random_subset(&mut rng, self.partitions)));
                self.record(process, OpType::Invoke, call.clone(), None);
                self.record(process, OpType::Ok, call, None);
                reassign_at = now + Duration::from_millis(rng.random_range(3_000..=7_000));
            }
            if !self
                .poll(consumer, process, &mut state, &mut rng, &stats)
                .await
            {
                tokio::time::sleep(backoff(&mut rng)).await;
            }
        }
    }

    /// One `poll` operation of `consumer`: one fetch per assigned partition, each to a random
    /// node. Returns whether it was `ok` (positions then moved past the records returned).
    pub(crate) async fn poll(
        &self,
        consumer: u64,
        process: Process,
        state: &mut Consumer,
        rng: &mut StdRng,
        stats: &ConsumerStats,
    ) -> bool {
        self.record(process, OpType::Invoke, Call::Poll(Poll::default()), None);
        let mut fetched = BTreeMap::new();
        let mut errors = Vec::new();
        for partition in state.assigned() {
            let node = rng.random_range(1..=self.nodes);
            let path = state.fetch_path(&self.topic, partition);
            match self.api.get(node, &path).await {
                Answer::Ok(body) => {
                    let records = self.records_of(partition, node, &body);
                    fetched.insert(partition, Fetched { records });
                }
                other => {
                    let position = state.position(partition);
                    let at = position.map_or("the log start".to_owned(), |o| o.to_string());
                    let answer = other.describe();
                    if matches!(other, Answer::Definite { status: 416, .. }) {
                        let seen = stats.out_of_range.fetch_add(1, Ordering::SeqCst) + 1;
                        if seen <= MAX_416_NOTES {
                            self.note(format!(
                                "consumer {consumer} (process {process:?}): n{node} answered {answer} to a fetch of partition {partition} at offset {at}"
                            ));
                        }
                    }
                    errors.push(format!("p{partition} at {at}: n{node}: {answer}"));
                }
            }
        }
        if errors.is_empty() {
            let poll = state.apply(fetched);
            self.record(process, OpType::Ok, Call::Poll(poll), None);
            true
        } else {
            self.record(
                process,
                OpType::Fail,
                Call::Poll(Poll::default()),
                Some(errors.join("; ")),
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use chat4all_jepsen::checker::kafka;
    use chat4all_jepsen::{AnomalyKind, CheckConfig, Recorder, Send, Validity};
    use serde_json::json;

    use super::*;

    fn records(pairs: &[(u64, u64)]) -> Vec<Record> {
        pairs
            .iter()
            .map(|&(o, v)| Record {
                offset: Offset(o),
                value: Value(v),
            })
            .collect()
    }

    fn set(ps: &[u32]) -> BTreeSet<u32> {
        ps.iter().copied().collect()
    }

    #[test]
    fn kept_partitions_keep_their_position_and_new_ones_start_at_the_log_start() {
        let mut c = Consumer::default();
        let assign = c.assign(&set(&[0, 2]));
        assert_eq!(assign.keys, [Key(0), Key(2)]);
        assert!(!assign.seek_to_beginning);
        assert_eq!(
            c.fetch_path("t", 0),
            "/v1/topics/t/partitions/0/records?max_records=200&max_wait_ms=100"
        );
        let poll = c.apply(BTreeMap::from([
            (
                0,
                Fetched {
                    records: records(&[(0, 10), (1, 11)]),
                },
            ),
            (2, Fetched::default()),
        ]));
        assert_eq!(poll.records.len(), 1, "an empty fetch adds no key");
        assert_eq!(poll.records[&Key(0)], records(&[(0, 10), (1, 11)]));
        assert_eq!(c.position(0), Some(2));
        assert_eq!(c.position(2), None);
        assert_eq!(
            c.fetch_path("t", 0),
            "/v1/topics/t/partitions/0/records?offset=2&max_records=200&max_wait_ms=100"
        );
        // Reassign: 0 kept (position 2), 2 dropped, 1 new (log start).
        c.assign(&set(&[0, 1]));
        assert_eq!(c.assigned(), [0, 1]);
        assert_eq!((c.position(0), c.position(1)), (Some(2), None));
        // 2 again: its old position is forgotten.
        c.apply(BTreeMap::from([(
            2,
            Fetched {
                records: records(&[(5, 1)]),
            },
        )]));
        c.assign(&set(&[2]));
        assert_eq!(c.position(2), None);
    }

    #[test]
    fn foreign_records_are_counted_not_recorded() {
        let body = json!({"records": [
            {"offset": 3, "value": 7},
            {"offset": 4, "value": "hello"},
        ], "high_watermark": 5, "log_start_offset": 0});
        let (records, foreign, example) = parse_records(&body);
        assert_eq!(records, super::tests::records(&[(3, 7)]));
        assert_eq!(foreign, 1);
        assert_eq!(example.expect("one")["value"], "hello");
    }

    /// The consumer's polls, as recorded, let the kafka checker find a node that skips a record
    /// and one that goes back, across a reassignment that keeps the partition.
    #[test]
    fn the_checker_sees_skips_and_regressions_in_the_consumers_polls() {
        let check = |third: &[(u64, u64)]| {
            let r = Recorder::new();
            let (producer, consumer) = (Process::Client(0), Process::Client(1));
            for (offset, value) in [(0, 10), (1, 11), (2, 12), (3, 13)] {
                let send = |offset| {
                    Call::Send(vec![Send {
                        key: Key(0),
                        value: Value(value),
                        offset,
                    }])
                };
                r.invoke(producer, send(None)).expect("invoke");
                r.complete(producer, OpType::Ok, send(Some(Offset(offset))), None)
                    .expect("ok");
            }
            let mut c = Consumer::default();
            let poll = |c: &mut Consumer, fetched: &[(u64, u64)]| {
                r.invoke(consumer, Call::Poll(Poll::default()))
                    .expect("invoke");
                let poll = c.apply(BTreeMap::from([(
                    0,
                    Fetched {
                        records: records(fetched),
                    },
                )]));
                r.complete(consumer, OpType::Ok, Call::Poll(poll), None)
                    .expect("ok");
            };
            let assign = |c: &mut Consumer, ps: &[u32]| {
                let call = Call::Assign(c.assign(&set(ps)));
                r.invoke(consumer, call.clone()).expect("invoke");
                r.complete(consumer, OpType::Ok, call, None).expect("ok");
            };
            assign(&mut c, &[0]);
            poll(&mut c, &[(0, 10), (1, 11)]);
            assign(&mut c, &[0, 1]);
            poll(&mut c, third);
            // The final read.
            let all = Call::Assign(Assign {
                keys: vec![Key(0), Key(1)],
                seek_to_beginning: true,
            });
            r.invoke(consumer, all.clone()).expect("invoke");
            r.complete(consumer, OpType::Ok, all, None).expect("ok");
            let mut fin = Poll::default();
            fin.records
                .insert(Key(0), records(&[(0, 10), (1, 11), (2, 12), (3, 13)]));
            r.invoke(consumer, Call::Poll(Poll::default()))
                .expect("invoke");
            r.complete(consumer, OpType::Ok, Call::Poll(fin), None)
                .expect("ok");
            kafka::check(&r.into_history(), &CheckConfig::default())
        };
        let good = check(&[(2, 12), (3, 13)]);
        assert_eq!(good.valid, Validity::Valid, "{good:?}");
        let skip = check(&[(3, 13)]);
        assert_eq!(skip.bad, [AnomalyKind::PollSkip]);
        let back = check(&[(1, 11), (2, 12)]);
        assert_eq!(back.bad, [AnomalyKind::NonmonotonicPoll]);
    }
}
