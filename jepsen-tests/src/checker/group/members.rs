//! `zombie-commit` and `late-commit`: commits of members the coordinator has let go.
//!
//! - `zombie-commit`: the coordinator answered `FENCED` to a heartbeat or commit of member `m`
//!   with epoch `e` (the member is unknown, or `e` is stale), and a later commit of `m` with
//!   an epoch at most `e`, begun after that answer, succeeded; or `m` left (an `ok` leave)
//!   and a commit of `m` begun after that succeeded. Member ids are never reused and epochs
//!   only grow, so nothing can make that commit legitimate again.
//! - `late-commit` (allowed): a commit of `m` succeeded although it began more than the session
//!   timeout plus the slack after the end of `m`'s last successful heartbeat or commit, with no
//!   heartbeat or commit of `m` of unknown outcome before it (which could have been served
//!   late). The coordinator should have removed `m` by then; but a new coordinator starts
//!   every member's session again (Kafka's at its election, Chat4All's at its last contact
//!   with the old one), which the client cannot see, so this is reported, not judged.

use super::Timeouts;
use super::exchanges::Exchanges;
use crate::anomaly::Anomaly;
use crate::op::{LEAVE_EPOCH, OpType};

/// `zombie-commit`, by member, then by commit.
pub(super) fn zombie_commits(exchanges: &Exchanges<'_>) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for (member, mine) in exchanges.by_member() {
        // (end, highest epoch it voids, index) of each FENCED answer and `ok` leave.
        let fenced: Vec<(u64, i64, u64)> = mine
            .heartbeats
            .iter()
            .chain(&mine.commits)
            .filter_map(|e| {
                let epoch = match (e.kind, e.code(), e.heartbeat(), e.commit()) {
                    (OpType::Fail, Some("FENCED"), Some(hb), _) => hb.epoch,
                    (OpType::Fail, Some("FENCED"), _, Some(c)) => c.epoch,
                    (OpType::Ok, _, Some(hb), _) if hb.epoch == LEAVE_EPOCH => i64::MAX,
                    _ => return None,
                };
                Some((e.end, epoch, e.index))
            })
            .collect();
        for commit in mine.commits.iter().filter(|c| c.kind == OpType::Ok) {
            let Some(value) = commit.commit() else {
                continue;
            };
            let first = fenced
                .iter()
                .filter(|&&(end, epoch, _)| end < commit.start && value.epoch <= epoch)
                .min_by_key(|&&(end, _, _)| end);
            if let Some(&(_, _, index)) = first {
                found.push(Anomaly::ZombieCommit {
                    member: member.to_owned(),
                    epoch: value.epoch,
                    ops: [index, commit.index],
                });
            }
        }
    }
    found
}

/// `late-commit`, by member, then by commit.
pub(super) fn late_commits(exchanges: &Exchanges<'_>, timeouts: &Timeouts) -> Vec<Anomaly> {
    let mut found = Vec::new();
    for (member, mine) in exchanges.by_member() {
        let all = || mine.heartbeats.iter().chain(&mine.commits);
        for commit in mine.commits.iter().filter(|c| c.kind == OpType::Ok) {
            let Some(value) = commit.commit() else {
                continue;
            };
            if all().any(|e| e.kind == OpType::Info && e.start < commit.start) {
                continue;
            }
            let last = all()
                .filter(|e| e.kind == OpType::Ok && e.end < commit.start)
                .max_by_key(|e| e.end);
            let Some(last) = last else {
                continue;
            };
            let silent = commit.start - last.end;
            if silent > timeouts.surely_expired() {
                found.push(Anomaly::LateCommit {
                    member: member.to_owned(),
                    epoch: value.epoch,
                    silent_ms: silent / 1_000_000,
                    ops: [last.index, commit.index],
                });
            }
        }
    }
    found
}
