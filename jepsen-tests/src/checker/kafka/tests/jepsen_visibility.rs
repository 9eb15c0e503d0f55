//! Cases ported from Jepsen's `jepsen/test/jepsen/tests/kafka_test.clj` about which values were
//! seen (version orders, lost writes, duplicates, unseen), asserting the same errors. Keys x and
//! y are 0 and 1; values :a, :b, :c, ... are 1, 2, 3, ...
//!
//! Adaptations: Jepsen's tests reuse a process after an `info` completion, which our histories
//! refuse (the process is retired), so those steps use an `ok` completion or another process;
//! `:txn` polls are plain polls, and an op with several poll mops is one poll whose records are
//! concatenated.

use super::*;
use crate::anomaly::AnomalyKind;
use crate::op::OpType;

#[test]
fn version_orders_real_world_two_acknowledged_sends_at_one_offset() {
    let mut s = Script::new();
    s.ok_send(379, &[(11, 641, 537)]);
    s.ok_send(363, &[(11, 645, 537)]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::InconsistentOffsets),
        [Anomaly::InconsistentOffset {
            key: key(11),
            offset: Offset(537),
            index: 0,
            values: vec![val(641), val(645)]
        }]
    );
}

#[test]
fn inconsistent_offsets_info_conflicts_only_once_the_info_send_is_proven() {
    let mut s = Script::new();
    s.send(0, OpType::Info, &[(X, 1, Some(0)), (Y, 1, None)]);
    s.ok_send(1, &[(X, 2, 0)]);
    // The info send may not have happened, so its offset claim conflicts with nothing.
    assert_eq!(checked(&s).examples(AnomalyKind::InconsistentOffsets), []);
    // A read of its send to y proves it committed: now offset 0 of x holds 1 and 2.
    s.poll(2, OpType::Ok, &[(Y, &[(5, 1)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::InconsistentOffsets),
        [Anomaly::InconsistentOffset {
            key: key(X),
            offset: Offset(0),
            index: 0,
            values: vec![val(1), val(2)]
        }]
    );
}

#[test]
fn g1a_reading_a_failed_write() {
    let mut s = Script::new();
    let writer = s.send(0, OpType::Fail, &[(X, 2, None), (Y, 3, None)]);
    let reader = s.poll(1, OpType::Ok, &[(X, &[(0, 2)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::G1a),
        [Anomaly::AbortedRead {
            key: key(X),
            value: val(2),
            writer,
            reader
        }]
    );
}

#[test]
fn lost_write_consistent() {
    let mut s = Script::new();
    let send_a = s.ok_send(0, &[(X, A, 0)]);
    let send_bd = s.ok_send(0, &[(X, B, 1), (X, D, 3)]);
    s.send(1, OpType::Info, &[(X, C, None)]);
    let poll = s.poll(0, OpType::Ok, &[(X, &[(2, C)])]);
    let lost = |value, writer| Anomaly::LostWrite {
        key: key(X),
        value: val(value),
        index: (value - 1) as usize,
        max_read_index: 2,
        writer,
        max_read: poll,
    };
    assert_eq!(
        checked(&s).examples(AnomalyKind::LostWrite),
        [lost(A, send_a), lost(B, send_bd)]
    );
}

#[test]
fn lost_write_inconsistent() {
    // a is sent at offset 0 but b overwrites it there; c is at 2. Reading b and c means a should
    // have been read too, whichever of a and b the version order keeps at offset 0.
    let mut s = Script::new();
    let send_a = s.ok_send(0, &[(X, A, 0)]);
    s.ok_send(0, &[(X, B, 0), (X, C, 2)]);
    let read_bc = s.poll(0, OpType::Ok, &[(X, &[(0, B), (2, C)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::LostWrite),
        [Anomaly::LostWrite {
            key: key(X),
            value: val(A),
            index: 0,
            max_read_index: 1,
            writer: send_a,
            max_read: read_bc
        }]
    );
}

#[test]
fn lost_write_atomic_an_info_send_counts_once_any_of_its_values_is_read() {
    let history = |with_poll_of_a: bool| {
        let mut s = Script::new();
        let send_ab = s.send(0, OpType::Info, &[(X, A, None), (Y, B, Some(0))]);
        s.send(1, OpType::Info, &[(Y, C, None)]);
        if with_poll_of_a {
            s.poll(2, OpType::Ok, &[(X, &[(0, A)])]);
        }
        let poll_c = s.poll(3, OpType::Ok, &[(Y, &[(1, C)])]);
        (checked(&s), send_ab, poll_c)
    };
    let (verdict, _, _) = history(false);
    assert_eq!(verdict.examples(AnomalyKind::LostWrite), []);
    let (verdict, send_ab, poll_c) = history(true);
    assert_eq!(
        verdict.examples(AnomalyKind::LostWrite),
        [Anomaly::LostWrite {
            key: key(Y),
            value: val(B),
            index: 0,
            max_read_index: 1,
            writer: send_ab,
            max_read: poll_c
        }]
    );
}

#[test]
fn duplicate_basic() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, A, 1)]);
    s.send(1, OpType::Info, &[(X, B, None)]);
    s.poll(2, OpType::Ok, &[(X, &[(2, B), (3, A)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::Duplicate),
        [Anomaly::Duplicate {
            key: key(X),
            value: val(A),
            count: 2,
            offsets: vec![Offset(1), Offset(3)]
        }]
    );
}

#[test]
fn duplicate_and_inconsistent_offsets_hash_insensitive() {
    let mut s = Script::new();
    for value in 0..10 {
        s.ok_send(0, &[(X, value, 0)]);
        s.poll(1, OpType::Ok, &[(X, &[(1, value)])]);
    }
    let verdict = check(&s.history(), &CheckConfig { max_examples: 100 });
    let duplicated: Vec<Value> = verdict
        .examples(AnomalyKind::Duplicate)
        .iter()
        .filter_map(|a| match a {
            Anomaly::Duplicate { value, .. } => Some(*value),
            _ => None,
        })
        .collect();
    assert_eq!(duplicated, (0..10).map(val).collect::<Vec<_>>());
    let all: Vec<Value> = (0..10).map(val).collect();
    assert_eq!(
        verdict.examples(AnomalyKind::InconsistentOffsets),
        [
            Anomaly::InconsistentOffset {
                key: key(X),
                offset: Offset(0),
                index: 0,
                values: all.clone()
            },
            Anomaly::InconsistentOffset {
                key: key(X),
                offset: Offset(1),
                index: 1,
                values: all
            },
        ]
    );
}

#[test]
fn duplicate_from_an_aborted_poll_but_not_of_a_failed_send() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 0, 1)]);
    // The failed send carries an offset, but failed sends never enter the version order.
    s.send(0, OpType::Fail, &[(X, 1, Some(2))]);
    s.poll(1, OpType::Fail, &[(X, &[(11, 0), (12, 1)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::Duplicate),
        [Anomaly::Duplicate {
            key: key(X),
            value: val(0),
            count: 2,
            offsets: vec![Offset(1), Offset(11)]
        }]
    );
}

#[test]
fn unseen_empties_once_everything_sent_was_polled() {
    let mut s = Script::new();
    s.poll(0, OpType::Ok, &[]);
    let send = s.ok_send(0, &[(X, A, 0), (X, B, 1)]);
    s.poll(0, OpType::Ok, &[(X, &[(0, A)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::Unseen),
        [Anomaly::Unseen {
            key: key(X),
            value: val(B),
            writer: send
        }]
    );
    s.poll(0, OpType::Ok, &[(X, &[(1, B)])]);
    assert_eq!(checked(&s).examples(AnomalyKind::Unseen), []);
}

#[test]
fn an_empty_history_is_not_valid() {
    let mut s = Script::new();
    s.assign(0, &[X], false);
    assert!(!checked(&s).valid.is_valid());
}
