//! `group-poll-skip`: at-least-once delivery through the group. The committed offset is where
//! the next owner of a key starts, so every record below the highest committed offset of a key
//! (written by an `ok` commit or shown by a read) must have been returned by an `ok` poll of
//! some member of the group: members commit only positions their polls reached, and start
//! where the coordinator says (the committed offset, or the log start). A record below it that
//! no member polled was skipped by the group, though a later reader (the final drain) may
//! still find it in the log.
//!
//! The group's members are the processes that sent heartbeats or commits; the records that
//! exist are those `ok` sends placed at a known offset and those any `ok` poll returned.

use std::collections::{BTreeMap, BTreeSet};

use super::exchanges::Exchanges;
use super::offsets::highest;
use crate::anomaly::Anomaly;
use crate::history::History;
use crate::ids::{Key, Offset, Value};
use crate::op::OpType;

/// By key, then offset.
pub(super) fn group_poll_skips(history: &History, exchanges: &Exchanges<'_>) -> Vec<Anomaly> {
    let members = exchanges.member_processes();
    let mut exist: BTreeMap<Key, BTreeMap<Offset, Value>> = BTreeMap::new();
    let mut polled: BTreeMap<Key, BTreeSet<Offset>> = BTreeMap::new();
    for op in history.ops().iter().filter(|op| op.kind == OpType::Ok) {
        for send in op.sends() {
            if let Some(offset) = send.offset {
                exist
                    .entry(send.key)
                    .or_default()
                    .entry(offset)
                    .or_insert(send.value);
            }
        }
        let member = members.contains(&op.process);
        for (key, records) in op.poll().map(|p| &p.records).into_iter().flatten() {
            for record in records {
                exist
                    .entry(*key)
                    .or_default()
                    .entry(record.offset)
                    .or_insert(record.value);
                if member {
                    polled.entry(*key).or_default().insert(record.offset);
                }
            }
        }
    }
    let mut found = Vec::new();
    for (key, records) in exist {
        let Some((committed, op)) = highest(exchanges, key) else {
            continue;
        };
        let seen = polled.remove(&key).unwrap_or_default();
        for (&offset, &value) in records.range(..committed) {
            if !seen.contains(&offset) {
                found.push(Anomaly::GroupPollSkip {
                    key,
                    offset,
                    value,
                    committed,
                    op,
                });
            }
        }
    }
    found
}
