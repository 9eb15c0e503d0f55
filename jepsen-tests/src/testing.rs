//! Builders for hand-written histories in unit tests. Every operation's time is its index, as in
//! Jepsen's own checker tests.

use std::collections::BTreeMap;

use crate::anomaly::Anomaly;
use crate::history::History;
use crate::ids::{Key, Offset, Process, Value};
use crate::op::{Assign, Call, Op, OpType, Poll, Record, Send};
use crate::verdict::Verdict;

/// A history under construction; `history()` checks it.
#[derive(Default)]
pub struct Script {
    ops: Vec<Op>,
}

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one operation; returns its index.
    pub fn push(&mut self, process: u64, kind: OpType, call: Call) -> u64 {
        let index = self.ops.len() as u64;
        self.push_at(process, kind, call, index)
    }

    /// Appends one operation at `time` (ns; never before the previous operation's); returns its
    /// index.
    pub fn push_at(&mut self, process: u64, kind: OpType, call: Call, time: u64) -> u64 {
        let index = self.ops.len() as u64;
        let process = Process::Client(process);
        self.ops.push(Op {
            index,
            time,
            process,
            kind,
            call,
            error: None,
        });
        index
    }

    /// An invocation and its completion; returns the completion's index.
    pub fn pair(&mut self, process: u64, kind: OpType, invoke: Call, complete: Call) -> u64 {
        self.push(process, OpType::Invoke, invoke);
        self.push(process, kind, complete)
    }

    /// A send of `(key, value, offset)` triples; the invocation carries no offsets.
    pub fn send(&mut self, process: u64, kind: OpType, sends: &[(u64, u64, Option<u64>)]) -> u64 {
        let unknown: Vec<(u64, u64, Option<u64>)> =
            sends.iter().map(|&(k, v, _)| (k, v, None)).collect();
        self.pair(process, kind, send_call(&unknown), send_call(sends))
    }

    /// An `ok` send whose completion knows every offset: `(key, value, offset)`.
    pub fn ok_send(&mut self, process: u64, sends: &[(u64, u64, u64)]) -> u64 {
        let sends: Vec<(u64, u64, Option<u64>)> =
            sends.iter().map(|&(k, v, o)| (k, v, Some(o))).collect();
        self.send(process, OpType::Ok, &sends)
    }

    /// A poll completing with `(key, [(offset, value)])` records.
    pub fn poll(&mut self, process: u64, kind: OpType, records: &[(u64, &[(u64, u64)])]) -> u64 {
        self.pair(
            process,
            kind,
            Call::Poll(Poll::default()),
            poll_call(records),
        )
    }

    /// An `ok` assign.
    pub fn assign(&mut self, process: u64, keys: &[u64], seek_to_beginning: bool) -> u64 {
        let call = Call::Assign(Assign {
            keys: keys.iter().map(|k| Key(*k)).collect(),
            seek_to_beginning,
        });
        self.pair(process, OpType::Ok, call.clone(), call)
    }

    /// An `ok` subscribe.
    pub fn subscribe(&mut self, process: u64, keys: &[u64]) -> u64 {
        let call = Call::Subscribe(keys.iter().map(|k| Key(*k)).collect());
        self.pair(process, OpType::Ok, call.clone(), call)
    }

    /// An enqueue of `value` completing as `kind`.
    pub fn enqueue(&mut self, process: u64, kind: OpType, value: u64) -> u64 {
        self.pair(
            process,
            kind,
            Call::Enqueue(Value(value)),
            Call::Enqueue(Value(value)),
        )
    }

    /// A dequeue completing as `kind` with `value`.
    pub fn dequeue(&mut self, process: u64, kind: OpType, value: Option<u64>) -> u64 {
        self.pair(
            process,
            kind,
            Call::Dequeue(None),
            Call::Dequeue(value.map(Value)),
        )
    }

    /// A drain completing as `kind` with `values`.
    pub fn drain(&mut self, process: u64, kind: OpType, values: &[u64]) -> u64 {
        let values = values.iter().map(|v| Value(*v)).collect();
        self.pair(process, kind, Call::Drain(Vec::new()), Call::Drain(values))
    }

    /// The checked history.
    pub fn history(&self) -> History {
        History::from_ops(self.ops.clone()).expect("hand-built history obeys the model")
    }
}

/// A `send` call of `(key, value, offset)` triples.
pub fn send_call(sends: &[(u64, u64, Option<u64>)]) -> Call {
    Call::Send(
        sends
            .iter()
            .map(|&(key, value, offset)| Send {
                key: Key(key),
                value: Value(value),
                offset: offset.map(Offset),
            })
            .collect(),
    )
}

/// A `poll` call returning `(key, [(offset, value)])` records.
pub fn poll_call(records: &[(u64, &[(u64, u64)])]) -> Call {
    let records: BTreeMap<Key, Vec<Record>> = records
        .iter()
        .map(|(key, pairs)| {
            let pairs = pairs
                .iter()
                .map(|&(o, v)| Record {
                    offset: Offset(o),
                    value: Value(v),
                })
                .collect();
            (Key(*key), pairs)
        })
        .collect();
    Call::Poll(Poll {
        records,
        rebalanced: Default::default(),
    })
}

/// Every anomaly instance a verdict kept, ordered by kind.
pub fn all_found(verdict: &Verdict) -> Vec<Anomaly> {
    verdict
        .anomalies
        .values()
        .flat_map(|report| report.examples.clone())
        .collect()
}
