//! The consumer-group checker: what a history of `heartbeat`, `commit`, `offsets` and `poll`
//! operations says about the group coordinator. Not one of Jepsen's checkers (its kafka workload
//! only allows the skips a rebalance may cause); its kinds follow the guarantees of Kafka's
//! consumer groups (KIP-848), each a pure function of the history.
//!
//! ```text
//!  History ──► Exchanges (each group operation: start, end, outcome, value)
//!                 │
//!                 ├──► committed offsets ──► committed-offset-regression, lost-commit
//!                 ├──► ownership segments ─► double-assignment
//!                 ├──► per member ─────────► zombie-commit, late-commit (allowed)
//!                 └──► with the polls ─────► group-poll-skip
//! ```
//!
//! Times are the history's: an operation *started* when it was invoked and *ended* when it
//! completed; one that never completed ends never. The coordinator's timers are assumed to run
//! on the same clock as the history's (the harness and the nodes share one machine), give or
//! take [`Timeouts::slack_ms`].

mod exchanges;
mod members;
mod offsets;
mod ownership;
mod skips;

use self::exchanges::Exchanges;
use crate::anomaly::AnomalyKind;
use crate::checker::{CheckConfig, outcome_counts};
use crate::history::History;
use crate::verdict::Verdict;

/// The checker's name in verdicts.
pub const NAME: &str = "group";

/// The group's timing, as the harness configured it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// The group's session timeout: a member not heard from for longer is removed.
    pub session_ms: u64,
    /// The members' rebalance timeout: a member that holds revoked keys for longer is removed.
    pub rebalance_ms: u64,
    /// How far the coordinator's timers may be off the history's clock, either way.
    pub slack_ms: u64,
}

impl Timeouts {
    fn ns(ms: u64) -> u64 {
        ms.saturating_mul(1_000_000)
    }

    /// The session timeout less the slack, in ns: how long a member surely stays after the
    /// coordinator last heard from it.
    pub(super) fn sure_session(&self) -> u64 {
        Self::ns(self.session_ms.saturating_sub(self.slack_ms))
    }

    /// The rebalance timeout less the slack, in ns.
    pub(super) fn sure_rebalance(&self) -> u64 {
        Self::ns(self.rebalance_ms.saturating_sub(self.slack_ms))
    }

    /// The session timeout plus the slack, in ns: after this long without a word, a member is
    /// surely gone (unless a new coordinator restarted its session).
    pub(super) fn surely_expired(&self) -> u64 {
        Self::ns(self.session_ms.saturating_add(self.slack_ms))
    }
}

/// Kinds reported without making the history invalid: `late-commit`, since a new coordinator
/// starts every member's session again, which the client cannot see.
pub fn allowed() -> Vec<AnomalyKind> {
    vec![AnomalyKind::LateCommit]
}

/// The functions this checker reads (its verdict counts their outcomes).
const FUNCTIONS: [&str; 3] = ["heartbeat", "commit", "offsets"];

/// Checks the consumer-group operations of a history (`heartbeat`, `commit`, `offsets`, and
/// the `poll`s and `send`s for `group-poll-skip`). The verdict is `unknown` unless some commit
/// and some read of the committed offsets succeeded.
pub fn check(history: &History, timeouts: &Timeouts, config: &CheckConfig) -> Verdict {
    let exchanges = Exchanges::gather(history);
    let mut found = offsets::regressions(&exchanges);
    found.extend(ownership::double_assignments(&exchanges, timeouts));
    found.extend(members::zombie_commits(&exchanges));
    found.extend(members::late_commits(&exchanges, timeouts));
    found.extend(skips::group_poll_skips(history, &exchanges));
    let mut ops = outcome_counts(history);
    ops.retain(|f, _| FUNCTIONS.contains(&f.as_str()));
    Verdict::new(
        NAME,
        found,
        &allowed(),
        exchanges.observed(),
        ops,
        config.max_examples,
    )
}

#[cfg(test)]
mod tests;
