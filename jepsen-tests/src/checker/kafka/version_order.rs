//! Per-key version orders (Jepsen's `version-orders`) and the two anomalies read straight off
//! them: `inconsistent-offsets` and `duplicate`.
//!
//! A key's log maps offsets to the set of values seen there, from
//!
//! - every poll, whatever its outcome: Kafka pollers must only ever return safe data;
//! - the sends of operations that must have committed (`ok`, or `info` with a value read by an
//!   `ok` poll), when the completion knows the offset.
//!
//! Offsets are then compressed into dense *indices* (offsets holding no value are skipped, since
//! transaction markers and other control records leave holes), so "adjacent" means adjacent
//! among the values that exist.

use std::collections::{BTreeMap, BTreeSet};

use super::facts::Facts;
use crate::anomaly::Anomaly;
use crate::ids::{Key, Offset, Value};

/// One key's version order.
pub(super) struct KeyOrder {
    /// The offsets holding at least one value, ascending, with those values. A position in this
    /// vector is a dense index.
    log: Vec<(Offset, BTreeSet<Value>)>,
    /// One value per index: the smallest, where an offset holds several (Jepsen picks one
    /// arbitrarily; the choice only matters once offsets are already inconsistent).
    by_index: Vec<Value>,
    /// Index of each value of `by_index`; a value at several indices maps to the last.
    by_value: BTreeMap<Value, usize>,
}

impl KeyOrder {
    fn new(log: BTreeMap<Offset, BTreeSet<Value>>) -> Self {
        let log: Vec<(Offset, BTreeSet<Value>)> = log.into_iter().collect();
        let by_index: Vec<Value> = log
            .iter()
            .filter_map(|(_, values)| values.first().copied())
            .collect();
        let by_value = by_index
            .iter()
            .enumerate()
            .map(|(index, value)| (*value, index))
            .collect();
        KeyOrder {
            log,
            by_index,
            by_value,
        }
    }

    /// Every value with the first index it appears at (across all values of each offset).
    pub fn first_indices(&self) -> BTreeMap<Value, usize> {
        let mut first = BTreeMap::new();
        for (index, (_, values)) in self.log.iter().enumerate() {
            for value in values {
                first.entry(*value).or_insert(index);
            }
        }
        first
    }

    /// For each index, the values whose *last* appearance is at that index.
    pub fn last_appearances(&self) -> Vec<Vec<Value>> {
        let mut last = BTreeMap::new();
        for (index, (_, values)) in self.log.iter().enumerate() {
            for value in values {
                last.insert(*value, index);
            }
        }
        let mut by_index = vec![Vec::new(); self.log.len()];
        for (value, index) in last {
            by_index[index].push(value);
        }
        by_index
    }
}

/// The version orders of every key.
pub(super) struct VersionOrders {
    keys: BTreeMap<Key, KeyOrder>,
}

impl VersionOrders {
    /// Builds the version orders from the history's polls and committed sends.
    pub fn build(facts: &Facts<'_>) -> Self {
        let mut logs: BTreeMap<Key, BTreeMap<Offset, BTreeSet<Value>>> = BTreeMap::new();
        for op in &facts.ops {
            if facts.must_have_committed(op) {
                for send in op.sends() {
                    if let Some(offset) = send.offset {
                        logs.entry(send.key)
                            .or_default()
                            .entry(offset)
                            .or_default()
                            .insert(send.value);
                    }
                }
            }
            for (key, records) in op.poll().map(|poll| &poll.records).into_iter().flatten() {
                let log = logs.entry(*key).or_default();
                for record in records {
                    log.entry(record.offset).or_default().insert(record.value);
                }
            }
        }
        VersionOrders {
            keys: logs
                .into_iter()
                .map(|(key, log)| (key, KeyOrder::new(log)))
                .collect(),
        }
    }

    /// The version order of `key`, if anything is known about it.
    pub fn get(&self, key: Key) -> Option<&KeyOrder> {
        self.keys.get(&key)
    }

    /// The index of `value` in `key`'s order, if known.
    pub fn index_of(&self, key: Key, value: Value) -> Option<usize> {
        self.keys.get(&key)?.by_value.get(&value).copied()
    }

    /// The values of `key` strictly between two indices.
    pub fn between(&self, key: Key, after: usize, before: usize) -> Vec<Value> {
        match self.keys.get(&key) {
            Some(order) if after < before => order.by_index[after + 1..before].to_vec(),
            _ => Vec::new(),
        }
    }

    /// `inconsistent-offsets`: offsets holding two or more values, by key then offset.
    pub fn inconsistent_offsets(&self) -> Vec<Anomaly> {
        let mut found = Vec::new();
        for (key, order) in &self.keys {
            for (index, (offset, values)) in order.log.iter().enumerate() {
                if values.len() > 1 {
                    found.push(Anomaly::InconsistentOffset {
                        key: *key,
                        offset: *offset,
                        index,
                        values: values.iter().copied().collect(),
                    });
                }
            }
        }
        found
    }

    /// `duplicate`: values at two or more offsets of one key, by key then value.
    pub fn duplicates(&self) -> Vec<Anomaly> {
        let mut found = Vec::new();
        for (key, order) in &self.keys {
            let mut offsets: BTreeMap<Value, Vec<Offset>> = BTreeMap::new();
            for (offset, values) in &order.log {
                for value in values {
                    offsets.entry(*value).or_default().push(*offset);
                }
            }
            for (value, offsets) in offsets {
                if offsets.len() > 1 {
                    found.push(Anomaly::Duplicate {
                        key: *key,
                        value,
                        count: offsets.len(),
                        offsets,
                    });
                }
            }
        }
        found
    }
}

/// How far `later` is from `earlier` in index terms; 1 (adjacent, no anomaly) when either index
/// is unknown, as in Jepsen: without an index there is nothing to compare.
pub(super) fn delta(earlier: Option<usize>, later: Option<usize>) -> i64 {
    match (earlier, later) {
        (Some(earlier), Some(later)) => signed(later) - signed(earlier),
        _ => 1,
    }
}

fn signed(index: usize) -> i64 {
    i64::try_from(index).unwrap_or(i64::MAX)
}
