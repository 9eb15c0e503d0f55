//! Identifier newtypes of the history model: keys, values, offsets and processes.
//!
//! All of them serialise as bare JSON numbers (a process may also be the string `"nemesis"`), so
//! a history file reads like Jepsen's EDN histories.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A key of the kafka workload: one topic-partition, mapped one-to-one by the harness.
///
/// Offsets are per key. Keys are integers, as in Jepsen, so a history does not depend on topic
/// names; the harness owns the mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Key(pub u64);

// Hand-written because keys are JSON object keys in polls (`{"3": [[0, 7]]}`): serde_json hands
// them over as strings, and serde's buffering for `#[serde(flatten)]` (used by `Op`) does not
// convert strings back to integers on its own.
impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer key, as a number or a decimal string")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Key, E> {
                Ok(Key(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Key, E> {
                u64::try_from(v).map(Key).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                v.parse().map(Key).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A value written by the workload: unique per key in the kafka workload, unique overall in the
/// queue workload. Uniqueness is what lets the checkers tell one write from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Value(pub u64);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An offset in one key's (partition's) log, as returned by a send or a poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Who performed an operation: a logical client process, or the nemesis (the fault injector).
///
/// As in Jepsen, a client process that gets an `info` completion is retired: its client may still
/// have the request in flight, so the harness opens a fresh client under a new process number.
/// Serialises as the bare number, or as `"nemesis"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Process {
    /// A client process; numbers are never reused after the process is retired.
    Client(u64),
    /// The nemesis, which records fault windows; checkers ignore its operations.
    Nemesis,
}

impl Process {
    /// Whether this is a client process (as opposed to the nemesis).
    pub fn is_client(self) -> bool {
        matches!(self, Process::Client(_))
    }
}

const NEMESIS: &str = "nemesis";

impl Serialize for Process {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Client(n) => serializer.serialize_u64(*n),
            Process::Nemesis => serializer.serialize_str(NEMESIS),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProcessVisitor;
        impl Visitor<'_> for ProcessVisitor {
            type Value = Process;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a client process number or \"nemesis\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Process, E> {
                Ok(Process::Client(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Process, E> {
                u64::try_from(v).map(Process::Client).map_err(E::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Process, E> {
                if v == NEMESIS {
                    Ok(Process::Nemesis)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &self))
                }
            }
        }
        deserializer.deserialize_any(ProcessVisitor)
    }
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(n) => write!(f, "{n}"),
            Process::Nemesis => f.write_str(NEMESIS),
        }
    }
}
