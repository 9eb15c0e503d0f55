//! Order anomalies: skips and regressions of polls and sends, between the operations of one
//! process and inside one operation.
//!
//! Every comparison is made between dense indices of the key's version order; where either
//! value has no known index, the pair counts as adjacent (Jepsen does the same).

use std::collections::BTreeMap;

use super::facts::Facts;
use super::version_order::{VersionOrders, delta};
use crate::anomaly::Anomaly;
use crate::ids::{Key, Value};
use crate::op::{Call, Op, OpType};

/// `poll-skip` and `nonmonotonic-poll` (Jepsen's `poll-skip+nonmonotonic-cases`): per process,
/// the first value a poll returns for a key must directly follow the last value the process's
/// previous `ok` poll of that key returned.
///
/// - Polls of any outcome are compared, but only `ok` polls move the process's position: a
///   failed or indeterminate poll must leave the consumer where it was.
/// - An `ok` or `info` assign or subscribe forgets the position of keys it leaves out (an
///   assign with `seek_to_beginning` forgets those it names too, since the consumer is told to
///   rewind; Jepsen's workload never needs this, as it crashes clients before its final reads).
pub(super) fn poll_order(facts: &Facts<'_>, orders: &VersionOrders) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for (process, ops) in facts.by_process() {
        // Per key: the last `ok` poll that returned records of it, and its last value.
        let mut position: BTreeMap<Key, (u64, Value)> = BTreeMap::new();
        for op in ops {
            if forget_unassigned(op, &mut position, true) {
                continue;
            }
            let Some(poll) = op.poll() else { continue };
            for (key, records) in &poll.records {
                let Some(first) = records.first() else {
                    continue;
                };
                let Some(&(previous_op, previous)) = position.get(key) else {
                    continue;
                };
                let from = orders.index_of(*key, previous);
                let to = orders.index_of(*key, first.value);
                let delta = delta(from, to);
                let values = [previous, first.value];
                let ops = [previous_op, op.index];
                if let (Some(from), Some(to)) = (from, to)
                    && delta > 1
                {
                    let skipped = orders.between(*key, from, to);
                    found.push(Anomaly::PollSkip {
                        key: *key,
                        process,
                        values,
                        delta,
                        skipped,
                        ops,
                    });
                } else if delta < 1 {
                    found.push(Anomaly::NonmonotonicPoll {
                        key: *key,
                        process,
                        values,
                        delta,
                        ops,
                    });
                }
            }
            if op.kind == OpType::Ok {
                for (key, records) in &poll.records {
                    if let Some(last) = records.last() {
                        position.insert(*key, (op.index, last.value));
                    }
                }
            }
        }
    }
    found
}

/// `nonmonotonic-send` (Jepsen's `nonmonotonic-send-cases`): per process, over its `ok` and
/// `info` operations, the first value an operation sends to a key must land after the last
/// value the process's previous send to that key sent. As in Jepsen, an assign or subscribe
/// forgets the keys it leaves out.
pub(super) fn send_order(facts: &Facts<'_>, orders: &VersionOrders) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for (process, ops) in facts.by_process() {
        let mut last_sent: BTreeMap<Key, (u64, Value)> = BTreeMap::new();
        for op in ops
            .into_iter()
            .filter(|op| matches!(op.kind, OpType::Ok | OpType::Info))
        {
            if forget_unassigned(op, &mut last_sent, false) {
                continue;
            }
            for (key, values) in sends_by_key(op) {
                let (Some(&first), Some(&last)) = (values.first(), values.last()) else {
                    continue;
                };
                if let Some(&(previous_op, previous)) = last_sent.get(&key) {
                    let delta = delta(orders.index_of(key, previous), orders.index_of(key, first));
                    if delta < 1 {
                        found.push(Anomaly::NonmonotonicSend {
                            key,
                            process,
                            values: [previous, first],
                            delta,
                            ops: [previous_op, op.index],
                        });
                    }
                }
                last_sent.insert(key, (op.index, last));
            }
        }
    }
    found
}

/// `int-poll-skip` and `int-nonmonotonic-poll`: consecutive records of a key inside one poll
/// (of any outcome) must be adjacent in the version order. Keys the poll lists as rebalanced
/// are skipped.
pub(super) fn internal_poll_order(facts: &Facts<'_>, orders: &VersionOrders) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for op in &facts.ops {
        let Some(poll) = op.poll() else { continue };
        for (key, records) in &poll.records {
            if poll.rebalanced.contains(key) {
                continue;
            }
            let values: Vec<Value> = records.iter().map(|record| record.value).collect();
            for (values, delta, skipped) in adjacent_pairs(*key, &values, orders) {
                found.push(match skipped {
                    Some(skipped) => Anomaly::IntPollSkip {
                        key: *key,
                        values,
                        delta,
                        skipped,
                        op: op.index,
                    },
                    None => Anomaly::IntNonmonotonicPoll {
                        key: *key,
                        values,
                        delta,
                        op: op.index,
                    },
                });
            }
        }
    }
    found
}

/// `int-send-skip` and `int-nonmonotonic-send`: consecutive sends to a key inside one operation
/// (of any outcome) should land adjacent and in order.
pub(super) fn internal_send_order(facts: &Facts<'_>, orders: &VersionOrders) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for op in &facts.ops {
        for (key, values) in sends_by_key(op) {
            for (values, delta, skipped) in adjacent_pairs(key, &values, orders) {
                found.push(match skipped {
                    Some(skipped) => Anomaly::IntSendSkip {
                        key,
                        values,
                        delta,
                        skipped,
                        op: op.index,
                    },
                    None => Anomaly::IntNonmonotonicSend {
                        key,
                        values,
                        delta,
                        op: op.index,
                    },
                });
            }
        }
    }
    found
}

/// The pairs of consecutive `values` of `key` that are not adjacent in the version order: with
/// the values skipped when the second lies further on (`Some`), or `None` when it does not lie
/// after the first at all.
fn adjacent_pairs(
    key: Key,
    values: &[Value],
    orders: &VersionOrders,
) -> Vec<([Value; 2], i64, Option<Vec<Value>>)> {
    let mut found = Vec::new();
    for pair in values.windows(2) {
        let (from, to) = (orders.index_of(key, pair[0]), orders.index_of(key, pair[1]));
        let delta = delta(from, to);
        if let (Some(from), Some(to)) = (from, to)
            && delta > 1
        {
            found.push((
                [pair[0], pair[1]],
                delta,
                Some(orders.between(key, from, to)),
            ));
        } else if delta < 1 {
            found.push(([pair[0], pair[1]], delta, None));
        }
    }
    found
}

/// Applies an `ok` or `info` assign or subscribe to a per-key position map, keeping only the keys
/// still assigned (and, for a consumer position after `seek_to_beginning`, none of the assigned
/// ones either). Returns whether `op` was an assignment.
fn forget_unassigned<T>(op: &Op, position: &mut BTreeMap<Key, T>, consumer: bool) -> bool {
    let (keys, rewind): (&[Key], bool) = match &op.call {
        Call::Assign(assign) => (&assign.keys, consumer && assign.seek_to_beginning),
        Call::Subscribe(keys) => (keys, false),
        _ => return false,
    };
    if matches!(op.kind, OpType::Ok | OpType::Info) {
        position.retain(|key, _| keys.contains(key) && !rewind);
    }
    true
}

/// The values an operation sends, grouped by key, in send order.
fn sends_by_key(op: &Op) -> BTreeMap<Key, Vec<Value>> {
    let mut by_key: BTreeMap<Key, Vec<Value>> = BTreeMap::new();
    for send in op.sends() {
        by_key.entry(send.key).or_default().push(send.value);
    }
    by_key
}
