//! What the analyses need to know about the history, gathered in one pass: completions, who
//! wrote and who read each value, and which sends must have committed.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use crate::history::History;
use crate::ids::{Key, Process, Value};
use crate::op::{Call, Op, OpType};

/// Per key, a set of values.
pub(super) type ValuesByKey = BTreeMap<Key, BTreeSet<Value>>;

/// Facts about a kafka history. Positions (`usize`) point into `ops`.
pub(super) struct Facts<'h> {
    /// Completions in history order, then made-up `info` completions for invocations that never
    /// completed (see [`History::completions`]).
    pub ops: Vec<Cow<'h, Op>>,
    /// Values returned by `ok` polls.
    pub ok_reads: ValuesByKey,
    /// Values whose send definitely failed.
    pub failed_writes: ValuesByKey,
    /// Values some operation tried to send, from invocations and completions alike.
    pub attempts: ValuesByKey,
    /// The last completion that sent each value (Jepsen's `writer-of`).
    pub writer_of: BTreeMap<(Key, Value), usize>,
    /// The first completion of any type whose poll returned each value.
    pub first_reader: BTreeMap<(Key, Value), usize>,
    /// The first `ok` poll that returned each value.
    pub first_ok_reader: BTreeMap<(Key, Value), usize>,
    /// Whether any consumer used `subscribe`, which makes skips between polls legitimate.
    pub uses_subscribe: bool,
    /// Whether anything was acknowledged: an `ok` send or poll.
    pub observed: bool,
}

impl<'h> Facts<'h> {
    /// Gathers the facts of `history`.
    pub fn gather(history: &'h History) -> Self {
        let mut facts = Facts {
            ops: history.completions(),
            ok_reads: ValuesByKey::new(),
            failed_writes: ValuesByKey::new(),
            attempts: ValuesByKey::new(),
            writer_of: BTreeMap::new(),
            first_reader: BTreeMap::new(),
            first_ok_reader: BTreeMap::new(),
            uses_subscribe: false,
            observed: false,
        };
        for op in history.ops() {
            facts.uses_subscribe |= matches!(op.call, Call::Subscribe(_));
            for send in op.sends() {
                facts
                    .attempts
                    .entry(send.key)
                    .or_default()
                    .insert(send.value);
            }
        }
        for (position, op) in facts.ops.iter().enumerate() {
            let ok = op.kind == OpType::Ok;
            facts.observed |= ok && matches!(op.call, Call::Send(_) | Call::Poll(_));
            for send in op.sends() {
                facts.writer_of.insert((send.key, send.value), position);
                if op.kind == OpType::Fail {
                    facts
                        .failed_writes
                        .entry(send.key)
                        .or_default()
                        .insert(send.value);
                }
            }
            for (key, records) in op.poll().map(|poll| &poll.records).into_iter().flatten() {
                for record in records {
                    facts
                        .first_reader
                        .entry((*key, record.value))
                        .or_insert(position);
                    if ok {
                        facts
                            .first_ok_reader
                            .entry((*key, record.value))
                            .or_insert(position);
                        facts.ok_reads.entry(*key).or_default().insert(record.value);
                    }
                }
            }
        }
        facts
    }

    /// Jepsen's `must-have-committed?`: the operation is `ok`, or it is `info` and an `ok` poll
    /// returned one of the values it sent (then all of its sends count as committed).
    pub fn must_have_committed(&self, op: &Op) -> bool {
        match op.kind {
            OpType::Ok => true,
            OpType::Info => op
                .sends()
                .iter()
                .any(|send| self.was_read_ok(send.key, send.value)),
            OpType::Fail | OpType::Invoke => false,
        }
    }

    /// Whether an `ok` poll returned `value` from `key`.
    pub fn was_read_ok(&self, key: Key, value: Value) -> bool {
        self.ok_reads
            .get(&key)
            .is_some_and(|values| values.contains(&value))
    }

    /// The completion that sent `value` to `key`, if any did.
    pub fn writer(&self, key: Key, value: Value) -> Option<&Op> {
        self.writer_of
            .get(&(key, value))
            .map(|&position| self.ops[position].as_ref())
    }

    /// The history index of the operation at `position`.
    pub fn index(&self, position: usize) -> u64 {
        self.ops[position].index
    }

    /// Each client process's completions, in history order.
    pub fn by_process(&self) -> BTreeMap<Process, Vec<&Op>> {
        let mut by_process: BTreeMap<Process, Vec<&Op>> = BTreeMap::new();
        for op in self.ops.iter().filter(|op| op.process.is_client()) {
            by_process.entry(op.process).or_default().push(op.as_ref());
        }
        by_process
    }
}
