//! The checkers: pure functions from a [`History`] to a [`Verdict`](crate::Verdict).
//!
//! - [`queue`]: Jepsen's `total-queue` (what goes in must come out).
//! - [`kafka`]: Jepsen's `jepsen.tests.kafka` analyses, without the Elle cycle search.
//! - [`group`]: consumer groups (committed offsets, ownership, fencing), not Jepsen's.
//! - [`chat`]: chat conversations (acknowledged messages kept once, one order on every node).

pub mod chat;
pub mod group;
pub mod kafka;
pub mod queue;

use std::collections::BTreeMap;

use crate::history::History;
use crate::op::OpType;
use crate::verdict::OutcomeCounts;

/// Settings shared by the checkers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// How many instances of each anomaly kind a verdict keeps (the count is always exact).
    pub max_examples: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig { max_examples: 16 }
    }
}

/// Client completions by `f` and type, with invocations that never completed counted as `info`.
fn outcome_counts(history: &History) -> BTreeMap<String, OutcomeCounts> {
    let mut counts: BTreeMap<String, OutcomeCounts> = BTreeMap::new();
    for op in history
        .completions()
        .iter()
        .filter(|op| op.process.is_client())
    {
        let entry = counts.entry(op.call.f().to_owned()).or_default();
        match op.kind {
            OpType::Ok => entry.ok += 1,
            OpType::Fail => entry.fail += 1,
            OpType::Info => entry.info += 1,
            OpType::Invoke => {}
        }
    }
    counts
}
