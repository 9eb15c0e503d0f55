//! A checker's verdict: valid, invalid or unknown, with per-anomaly counts and a few examples
//! each, serialisable to JSON for the results folder.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::anomaly::{Anomaly, AnomalyKind};

/// Jepsen's `:valid?`: serialised as `true`, `false` or `"unknown"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validity {
    /// No anomaly outside the allowed kinds, and the history observed something.
    Valid,
    /// At least one anomaly of a kind that is not allowed.
    Invalid,
    /// No disallowed anomaly, but the history acknowledged nothing the checker could judge (for
    /// example every operation failed), so it proves nothing. A harness should not pass it.
    Unknown,
}

impl Validity {
    /// Combines the validity of two checks of one run: invalid wins, then unknown.
    pub fn and(self, other: Validity) -> Validity {
        match (self, other) {
            (Validity::Invalid, _) | (_, Validity::Invalid) => Validity::Invalid,
            (Validity::Unknown, _) | (_, Validity::Unknown) => Validity::Unknown,
            (Validity::Valid, Validity::Valid) => Validity::Valid,
        }
    }

    /// Whether this is [`Validity::Valid`].
    pub fn is_valid(self) -> bool {
        self == Validity::Valid
    }
}

const UNKNOWN: &str = "unknown";

impl Serialize for Validity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::Valid => serializer.serialize_bool(true),
            Validity::Invalid => serializer.serialize_bool(false),
            Validity::Unknown => serializer.serialize_str(UNKNOWN),
        }
    }
}

impl<'de> Deserialize<'de> for Validity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValidityVisitor;
        impl Visitor<'_> for ValidityVisitor {
            type Value = Validity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or \"unknown\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Validity, E> {
                Ok(if v {
                    Validity::Valid
                } else {
                    Validity::Invalid
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Validity, E> {
                if v == UNKNOWN {
                    Ok(Validity::Unknown)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(ValidityVisitor)
    }
}

/// How often one anomaly kind occurred, with the first few instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnomalyReport {
    /// Number of occurrences (total-queue values count with their multiplicity).
    pub count: usize,
    /// Up to the configured number of instances, in a deterministic order (by key, then log or
    /// history order).
    pub examples: Vec<Anomaly>,
}

/// How the completions of one function ended; invocations that never completed count as `info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Completions of type `ok`.
    pub ok: u64,
    /// Completions of type `fail`.
    pub fail: u64,
    /// Completions of type `info`, and invocations that never completed.
    pub info: u64,
}

/// What a checker found in one history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    /// Which checker: `"total-queue"` or `"kafka"`.
    pub checker: String,
    /// The overall verdict.
    pub valid: Validity,
    /// The kinds found that are not allowed (Jepsen's `:bad-error-types`), sorted.
    pub bad: Vec<AnomalyKind>,
    /// Every kind found, allowed or not.
    pub anomalies: BTreeMap<AnomalyKind, AnomalyReport>,
    /// Client operations by `f`, and how they ended.
    pub ops: BTreeMap<String, OutcomeCounts>,
}

impl Verdict {
    /// Assembles a verdict: groups `found` by kind keeping at most `max_examples` instances of
    /// each, marks the kinds not in `allowed` as bad, and decides validity (`observed` says
    /// whether the history acknowledged anything the checker could judge).
    pub fn new(
        checker: &str,
        found: Vec<Anomaly>,
        allowed: &[AnomalyKind],
        observed: bool,
        ops: BTreeMap<String, OutcomeCounts>,
        max_examples: usize,
    ) -> Verdict {
        let mut anomalies: BTreeMap<AnomalyKind, AnomalyReport> = BTreeMap::new();
        for anomaly in found {
            let report = anomalies.entry(anomaly.kind()).or_insert(AnomalyReport {
                count: 0,
                examples: Vec::new(),
            });
            report.count += anomaly.occurrences();
            if report.examples.len() < max_examples {
                report.examples.push(anomaly);
            }
        }
        let bad: Vec<AnomalyKind> = anomalies
            .keys()
            .copied()
            .filter(|kind| !allowed.contains(kind))
            .collect();
        let valid = if !bad.is_empty() {
            Validity::Invalid
        } else if observed {
            Validity::Valid
        } else {
            Validity::Unknown
        };
        Verdict {
            checker: checker.to_owned(),
            valid,
            bad,
            anomalies,
            ops,
        }
    }

    /// Occurrences of `kind`, 0 if none.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.get(&kind).map_or(0, |report| report.count)
    }

    /// The examples kept for `kind`, empty if none.
    pub fn examples(&self, kind: AnomalyKind) -> &[Anomaly] {
        self.anomalies
            .get(&kind)
            .map_or(&[], |report| &report.examples)
    }

    /// The kinds found, allowed or not, sorted.
    pub fn kinds(&self) -> Vec<AnomalyKind> {
        self.anomalies.keys().copied().collect()
    }
}
