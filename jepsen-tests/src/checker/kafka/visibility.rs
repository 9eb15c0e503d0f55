//! Which values were seen: `lost-write`, `unseen`, `unexpected` and `G1a` (aborted read).

use std::collections::{BTreeMap, BTreeSet};

use super::facts::Facts;
use super::version_order::VersionOrders;
use crate::anomaly::Anomaly;
use crate::ids::{Key, Value};
use crate::op::OpType;

/// `lost-write` (Jepsen's `lost-write-cases`). For each key an `ok` poll read, take the highest
/// index at which some value read by an `ok` poll *first* appears: every value whose *last*
/// appearance is at or below it should have been read by some `ok` poll. Those that were not
/// are lost, provided their writer must have committed (an `info` send nobody read may simply
/// not have happened). Using first and last appearances keeps the result stable when offsets
/// are inconsistent or values duplicated.
pub(super) fn lost_writes(facts: &Facts<'_>, orders: &VersionOrders) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for (key, read) in &facts.ok_reads {
        let Some(order) = orders.get(*key) else {
            continue;
        };
        let first = order.first_indices();
        // The highest first index of a value read, and the (smallest) value that reached it.
        let mut bound: Option<(usize, Value)> = None;
        for value in read {
            if let Some(&index) = first.get(value)
                && bound.is_none_or(|(highest, _)| index > highest)
            {
                bound = Some((index, *value));
            }
        }
        let Some((max_read_index, bound_value)) = bound else {
            continue;
        };
        let Some(&max_read) = facts.first_ok_reader.get(&(*key, bound_value)) else {
            continue;
        };
        let last = order.last_appearances();
        for value in last[..=max_read_index].iter().flatten() {
            if read.contains(value) {
                continue;
            }
            // A value without a writer is `unexpected`, reported on its own.
            let Some(writer) = facts.writer(*key, *value) else {
                continue;
            };
            if facts.must_have_committed(writer) {
                found.push(Anomaly::LostWrite {
                    key: *key,
                    value: *value,
                    index: first[value],
                    max_read_index,
                    writer: writer.index,
                    max_read: facts.index(max_read),
                });
            }
        }
    }
    found
}

/// `unseen`: values acknowledged by `ok` sends that no `ok` poll returned by the end of the
/// history, by key then value. After a final drain this must be empty; otherwise values were lost
/// or consumers are stuck.
pub(super) fn unseen(facts: &Facts<'_>) -> Vec<Anomaly> {
    let mut sent: BTreeMap<(Key, Value), u64> = BTreeMap::new();
    for op in facts.ops.iter().filter(|op| op.kind == OpType::Ok) {
        for send in op.sends() {
            sent.entry((send.key, send.value)).or_insert(op.index);
        }
    }
    sent.into_iter()
        .filter(|((key, value), _)| !facts.was_read_ok(*key, *value))
        .map(|((key, value), writer)| Anomaly::Unseen { key, value, writer })
        .collect()
}

/// `unexpected`: values some poll returned (whatever its outcome) that no operation ever tried
/// to send to that key, by key then value, naming the first reader.
pub(super) fn unexpected(facts: &Facts<'_>) -> Vec<Anomaly> {
    facts
        .first_reader
        .iter()
        .filter(|((key, value), _)| {
            !facts
                .attempts
                .get(key)
                .is_some_and(|sent| sent.contains(value))
        })
        .map(|(&(key, value), &reader)| Anomaly::UnexpectedPoll {
            key,
            value,
            reader: facts.index(reader),
        })
        .collect()
}

/// `G1a` (Jepsen's `g1a-cases`): an `ok` poll returned a value whose send failed, in history
/// order of the polls.
pub(super) fn aborted_reads(facts: &Facts<'_>) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for op in facts.ops.iter().filter(|op| op.kind == OpType::Ok) {
        for (key, records) in op.poll().map(|poll| &poll.records).into_iter().flatten() {
            let Some(failed) = facts.failed_writes.get(key) else {
                continue;
            };
            let read: BTreeSet<Value> = records.iter().map(|record| record.value).collect();
            for value in read.intersection(failed) {
                if let Some(writer) = facts.writer(*key, *value) {
                    found.push(Anomaly::AbortedRead {
                        key: *key,
                        value: *value,
                        writer: writer.index,
                        reader: op.index,
                    });
                }
            }
        }
    }
    found
}
