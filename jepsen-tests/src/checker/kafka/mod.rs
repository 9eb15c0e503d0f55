//! Jepsen's kafka workload checker (§4.3 of the reference; `jepsen.tests.kafka`), without the
//! Elle dependency-graph analyses (G0, G1c and the PL cycles) and without transactions.
//!
//! ```text
//!  History ──► Facts (completions, writers, readers, committed sends)
//!                 │
//!                 ├──► VersionOrders ──► inconsistent-offsets, duplicate
//!                 │        │
//!                 │        ├──► lost-write
//!                 │        └──► poll-skip, nonmonotonic-poll, nonmonotonic-send, int-*
//!                 └──► unseen, unexpected, G1a
//! ```
//!
//! Operations with an unknown outcome are treated as Jepsen treats `info`: an `info` send counts
//! as committed only once an `ok` poll returned one of its values (then all of its sends do);
//! polls of every outcome feed the version order, but only `ok` polls count as reads for
//! `lost-write` and `unseen` and only they move a process's position; invocations that never
//! completed are `info` completions.

mod facts;
mod ordering;
mod version_order;
mod visibility;

use self::facts::Facts;
use self::version_order::VersionOrders;
use crate::anomaly::AnomalyKind;
use crate::checker::{CheckConfig, outcome_counts};
use crate::history::History;
use crate::verdict::Verdict;

/// The checker's name in verdicts.
pub const NAME: &str = "kafka";

/// Kinds reported without making the history invalid (Jepsen's `allowed-error-types`, less the
/// cycle kinds this checker does not compute): `int-send-skip` always, since other producers'
/// sends interleave; `poll-skip` and `nonmonotonic-poll` when consumers `subscribe`, since a
/// rebalance between polls legitimately moves them.
pub fn allowed(uses_subscribe: bool) -> Vec<AnomalyKind> {
    let mut allowed = vec![AnomalyKind::IntSendSkip];
    if uses_subscribe {
        allowed.extend([AnomalyKind::PollSkip, AnomalyKind::NonmonotonicPoll]);
    }
    allowed
}

/// Checks a kafka workload history (`send`, `poll`, `assign`, `subscribe`, `crash`; queue and
/// nemesis operations are ignored). Consumers count as subscribed if any `subscribe` appears.
pub fn check(history: &History, config: &CheckConfig) -> Verdict {
    let facts = Facts::gather(history);
    let orders = VersionOrders::build(&facts);
    let mut found = orders.inconsistent_offsets();
    found.extend(orders.duplicates());
    found.extend(visibility::unexpected(&facts));
    found.extend(visibility::lost_writes(&facts, &orders));
    found.extend(visibility::unseen(&facts));
    found.extend(visibility::aborted_reads(&facts));
    found.extend(ordering::poll_order(&facts, &orders));
    found.extend(ordering::internal_poll_order(&facts, &orders));
    found.extend(ordering::send_order(&facts, &orders));
    found.extend(ordering::internal_send_order(&facts, &orders));
    Verdict::new(
        NAME,
        found,
        &allowed(facts.uses_subscribe),
        facts.observed,
        outcome_counts(history),
        config.max_examples,
    )
}

#[cfg(test)]
mod tests;
