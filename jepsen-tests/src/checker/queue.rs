//! Jepsen's `total-queue` checker (§4.2 of the reference; `jepsen.checker/total-queue`).
//!
//! All collections are multisets of values:
//!
//! ```text
//! attempts   = every invoked enqueue            enqueues = ok enqueues
//! dequeues   = ok dequeues + every value of ok drains
//! lost       = enqueues − dequeues                          invalid
//! unexpected = dequeues of values never attempted           invalid
//! duplicated = (dequeues − attempts) − unexpected           reported, allowed
//! recovered  = (dequeues ∩ attempts) − enqueues             reported, allowed
//! ```
//!
//! An `info` enqueue may or may not have happened: it counts as an attempt, so dequeuing it is
//! fine (it is "recovered"), and never dequeuing it is fine too. The check only means something
//! if the history drains the queue at the end.

use std::collections::BTreeMap;

use crate::anomaly::{Anomaly, AnomalyKind};
use crate::checker::{CheckConfig, outcome_counts};
use crate::error::HistoryError;
use crate::history::History;
use crate::ids::Value;
use crate::op::{Call, OpType};
use crate::verdict::Verdict;

/// The checker's name in verdicts.
pub const NAME: &str = "total-queue";

/// Kinds reported without making the history invalid: duplicates are legal under at-least-once
/// delivery, and recovered values are indeterminate enqueues that did happen.
pub const ALLOWED: &[AnomalyKind] = &[AnomalyKind::Duplicated, AnomalyKind::Recovered];

/// A multiset of values: value to multiplicity, never holding a zero.
type Multiset = BTreeMap<Value, usize>;

/// Checks a queue history (`enqueue`, `dequeue`, `drain` operations; others are ignored).
///
/// Fails with [`HistoryError::IndeterminateDrain`] if a drain ended `info` or never completed:
/// which values it removed is unknowable, and Jepsen refuses such histories too.
pub fn check(history: &History, config: &CheckConfig) -> Result<Verdict, HistoryError> {
    let mut attempts = Multiset::new();
    let mut enqueues = Multiset::new();
    let mut dequeues = Multiset::new();
    let mut observed = false;
    for op in history.ops() {
        match (&op.call, op.kind) {
            (Call::Enqueue(value), OpType::Invoke) => add(&mut attempts, *value, 1),
            (Call::Enqueue(value), OpType::Ok) => add(&mut enqueues, *value, 1),
            (Call::Dequeue(Some(value)), OpType::Ok) => add(&mut dequeues, *value, 1),
            (Call::Drain(values), OpType::Ok) => {
                values
                    .iter()
                    .for_each(|value| add(&mut dequeues, *value, 1));
            }
            (Call::Drain(_), OpType::Info) => {
                return Err(HistoryError::IndeterminateDrain { index: op.index });
            }
            _ => {}
        }
        let queue_op = matches!(
            op.call,
            Call::Enqueue(_) | Call::Dequeue(_) | Call::Drain(_)
        );
        observed |= queue_op && op.kind == OpType::Ok;
    }
    if let Some(drain) = history
        .pending()
        .find(|op| matches!(op.call, Call::Drain(_)))
    {
        return Err(HistoryError::IndeterminateDrain { index: drain.index });
    }

    let ok = intersect(&dequeues, &attempts);
    let unexpected: Multiset = dequeues
        .iter()
        .filter(|(value, _)| !attempts.contains_key(value))
        .map(|(v, n)| (*v, *n))
        .collect();
    let duplicated = minus(&minus(&dequeues, &attempts), &unexpected);
    let lost = minus(&enqueues, &dequeues);
    let recovered = minus(&ok, &enqueues);

    let mut found = Vec::new();
    found.extend(
        lost.into_iter()
            .map(|(value, count)| Anomaly::Lost { value, count }),
    );
    found.extend(
        unexpected
            .into_iter()
            .map(|(value, count)| Anomaly::Unexpected { value, count }),
    );
    found.extend(
        duplicated
            .into_iter()
            .map(|(value, count)| Anomaly::Duplicated { value, count }),
    );
    found.extend(
        recovered
            .into_iter()
            .map(|(value, count)| Anomaly::Recovered { value, count }),
    );
    Ok(Verdict::new(
        NAME,
        found,
        ALLOWED,
        observed,
        outcome_counts(history),
        config.max_examples,
    ))
}

fn add(set: &mut Multiset, value: Value, count: usize) {
    if count > 0 {
        *set.entry(value).or_insert(0) += count;
    }
}

/// `a − b`: each value's multiplicity in `a` less its multiplicity in `b`, dropping zeros.
fn minus(a: &Multiset, b: &Multiset) -> Multiset {
    let mut out = Multiset::new();
    for (value, n) in a {
        add(
            &mut out,
            *value,
            n.saturating_sub(b.get(value).copied().unwrap_or(0)),
        );
    }
    out
}

/// `a ∩ b`: each value's smaller multiplicity.
fn intersect(a: &Multiset, b: &Multiset) -> Multiset {
    let mut out = Multiset::new();
    for (value, n) in a {
        add(
            &mut out,
            *value,
            (*n).min(b.get(value).copied().unwrap_or(0)),
        );
    }
    out
}

#[cfg(test)]
mod tests;
