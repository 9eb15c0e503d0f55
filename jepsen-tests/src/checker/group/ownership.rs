//! `double-assignment`: no key owned by two members at once, as far as the client can tell.
//!
//! A member owns the keys of a heartbeat reply (its `assignment`, and its `revoking` keys until
//! it reports them released) from the moment the reply arrives. What the client knows for sure
//! ends earlier than the ownership may:
//!
//! - at the member's next heartbeat or leave (its `owned` may release keys; it may be fenced);
//! - at the reply's heartbeat's start plus the session timeout (less the slack): the
//!   coordinator cannot have heard from it earlier, and removes it no sooner than that after;
//! - for a `revoking` key, at the member's first heartbeat's start plus the rebalance timeout
//!   (less the slack): the coordinator's revocation timer cannot have started earlier. A
//!   revoking key is not counted at all once a heartbeat of the member with an unknown outcome
//!   that did not list it as owned came before the reply: that request may be served late and
//!   release it.
//!
//! Each reply so gives, per key, a segment of time in which the member surely owned it (commits
//! count for nothing). Two segments of one key from different members that overlap are a
//! double assignment: the coordinator's state then had the key in two members' `assignment ∪
//! revoking`, which it must never have.

use std::collections::BTreeMap;

use super::Timeouts;
use super::exchanges::Exchanges;
use crate::anomaly::Anomaly;
use crate::ids::Key;
use crate::op::{LEAVE_EPOCH, OpType};

/// A span of time in which a member surely owned a key.
struct Segment<'h> {
    member: &'h str,
    /// The reply's completion: index and time.
    op: u64,
    start: u64,
    end: u64,
}

/// Every pair of overlapping segments of different members, by key, then by the later
/// segment's start.
pub(super) fn double_assignments(exchanges: &Exchanges<'_>, timeouts: &Timeouts) -> Vec<Anomaly> {
    let mut by_key: BTreeMap<Key, Vec<Segment<'_>>> = BTreeMap::new();
    for (member, mine) in exchanges.by_member() {
        let heartbeats = &mine.heartbeats;
        let Some(first) = heartbeats.first() else {
            continue;
        };
        let rebalance_end = first.start.saturating_add(timeouts.sure_rebalance());
        for (i, hb) in heartbeats.iter().enumerate() {
            let Some(value) = hb.heartbeat() else {
                continue;
            };
            let Some(reply) = value.reply.as_ref().filter(|_| hb.kind == OpType::Ok) else {
                continue;
            };
            if value.epoch == LEAVE_EPOCH || reply.epoch < 0 {
                continue;
            }
            let next = heartbeats[i + 1..]
                .iter()
                .map(|n| n.start)
                .filter(|&start| start > hb.start)
                .min()
                .unwrap_or(u64::MAX);
            let end = next.min(hb.start.saturating_add(timeouts.sure_session()));
            for key in &reply.assignment {
                by_key.entry(*key).or_default().push(Segment {
                    member,
                    op: hb.index,
                    start: hb.end,
                    end,
                });
            }
            for key in &reply.revoking {
                let unsure = heartbeats[..i].iter().any(|earlier| {
                    earlier.kind == OpType::Info
                        && earlier.heartbeat().is_some_and(|h| !h.owned.contains(key))
                });
                if !unsure {
                    by_key.entry(*key).or_default().push(Segment {
                        member,
                        op: hb.index,
                        start: hb.end,
                        end: end.min(rebalance_end),
                    });
                }
            }
        }
    }
    let mut found = Vec::new();
    for (key, mut segments) in by_key {
        segments.retain(|s| s.start < s.end);
        segments.sort_by_key(|s| (s.start, s.end, s.op));
        for (j, later) in segments.iter().enumerate() {
            for earlier in &segments[..j] {
                if earlier.member != later.member && earlier.end > later.start {
                    let until = earlier.end.min(later.end);
                    found.push(Anomaly::DoubleAssignment {
                        key,
                        members: [earlier.member.to_owned(), later.member.to_owned()],
                        ops: [earlier.op, later.op],
                        window_ms: [later.start / 1_000_000, until / 1_000_000],
                    });
                }
            }
        }
    }
    found
}
