//! Checker self-tests over hand-built histories (§7.1 item 7 of the reference).

mod jepsen_ordering;
mod jepsen_visibility;
mod ordering;
mod valid;
mod visibility;

use super::*;
use crate::anomaly::Anomaly;
use crate::ids::{Key, Offset, Process, Value};
use crate::testing::{Script, all_found};
use crate::verdict::Validity;

/// Key `x` of Jepsen's tests.
const X: u64 = 0;
/// Key `y` of Jepsen's tests.
const Y: u64 = 1;

// Values :a, :b, :c, :d, :f, :g of Jepsen's tests.
const A: u64 = 1;
const B: u64 = 2;
const C: u64 = 3;
const D: u64 = 4;
const F: u64 = 6;
const G: u64 = 7;

fn checked(script: &Script) -> Verdict {
    check(&script.history(), &CheckConfig::default())
}

fn key(n: u64) -> Key {
    Key(n)
}

fn val(n: u64) -> Value {
    Value(n)
}

fn client(n: u64) -> Process {
    Process::Client(n)
}
