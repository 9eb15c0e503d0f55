//! `committed-offset-regression` and `lost-commit`: the committed offset of a key, read back,
//! must never be below what an earlier read showed or an earlier `ok` commit wrote, unless a
//! commit of exactly the lower offset may have taken effect in between.
//!
//! Each key's committed offset is treated as a register, the coordinator serving every read
//! and commit of a group one at a time. If `a` (a read of `x`, or an `ok` commit of `x`) ended
//! before the read `b` began and `b` shows `y < x` (or none), some write of `y` must take
//! effect between the two: a commit of `y` to that key, `ok` or of unknown outcome, that began
//! before `b` ended and did not end before `a` began. If there is none, the offset went back.
//! For each read and key, the earlier operation compared is the one that began last among
//! those that show more (the hardest to explain).

use super::exchanges::{Exchange, Exchanges, Read};
use crate::anomaly::Anomaly;
use crate::ids::{Key, Offset};
use crate::op::OpType;

/// Both kinds, by key, then by read in invocation order.
pub(super) fn regressions(exchanges: &Exchanges<'_>) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for key in exchanges.keys() {
        // Commits of this key that may have taken effect: (offset, start, end); one of
        // unknown outcome may take effect at any time after it began.
        let writes: Vec<(Offset, u64, u64)> = exchanges
            .commits
            .iter()
            .filter(|c| c.kind != OpType::Fail)
            .filter_map(|c| {
                let end = if c.kind == OpType::Ok {
                    c.end
                } else {
                    u64::MAX
                };
                Some((*c.commit()?.offsets.get(&key)?, c.start, end))
            })
            .collect();
        let ok_commits: Vec<(&Exchange<'_>, Offset)> = exchanges
            .commits
            .iter()
            .filter(|c| c.kind == OpType::Ok)
            .filter_map(|c| Some((c, *c.commit()?.offsets.get(&key)?)))
            .collect();
        for b in &exchanges.reads {
            let Some(shown) = b.get(key) else {
                continue;
            };
            // Whether a write of `shown` may have taken effect after something that began at
            // `after` and before `b` ended.
            let explained = |after: u64| {
                shown.is_some_and(|y| {
                    writes
                        .iter()
                        .any(|&(offset, start, end)| offset == y && start < b.end && end > after)
                })
            };
            let earlier_read = exchanges
                .reads
                .iter()
                .filter(|a| a.end < b.start)
                .filter_map(|a| Some((a, a.get(key).filter(|x| *x > shown)?)))
                .max_by_key(|(a, _)| a.start);
            if let Some((a, x)) = earlier_read
                && !explained(a.start)
            {
                found.push(Anomaly::CommittedOffsetRegression {
                    key,
                    offsets: [x, shown],
                    ops: [a.index, b.index],
                });
            }
            let earlier_commit = ok_commits
                .iter()
                .filter(|(c, x)| c.end < b.start && Some(*x) > shown)
                .max_by_key(|(c, _)| c.start);
            if let Some((c, x)) = earlier_commit
                && !explained(c.start)
            {
                found.push(Anomaly::LostCommit {
                    key,
                    member: c.member().unwrap_or_default().to_owned(),
                    offsets: [Some(*x), shown],
                    ops: [c.index, b.index],
                });
            }
        }
    }
    found
}

/// The highest committed offset of `key` that an `ok` commit wrote or a read showed, with the
/// operation that did.
pub(super) fn highest(exchanges: &Exchanges<'_>, key: Key) -> Option<(Offset, u64)> {
    let committed = exchanges
        .commits
        .iter()
        .filter(|c| c.kind == OpType::Ok)
        .filter_map(|c| Some((*c.commit()?.offsets.get(&key)?, c.index)));
    let read = exchanges
        .reads
        .iter()
        .filter_map(|r: &Read| Some((r.get(key)??, r.index)));
    committed
        .chain(read)
        .max_by_key(|&(offset, index)| (offset, std::cmp::Reverse(index)))
}
