//! Cases ported from Jepsen's `jepsen/test/jepsen/tests/kafka_test.clj` about order (poll and send
//! skips and regressions), asserting the same errors. Keys x and y are 0 and 1; values :a, :b,
//! :c, ... are 1, 2, 3, ...
//!
//! Adaptations: Jepsen's tests reuse a process after an `info` completion, which our histories
//! refuse (the process is retired), so those steps use an `ok` completion or another process;
//! `:txn` polls are plain polls, and an op with several poll mops is one poll whose records are
//! concatenated.

use super::*;
use crate::anomaly::AnomalyKind;
use crate::op::OpType;

/// Jepsen's `poll-skip-test`: process 0 reads offsets 1, 2, then 4, then 7, while other reads
/// and writes show that 3 and 6 exist. `between_first_polls` and `between_last_polls` are
/// assignments process 0 makes between its polls.
fn poll_skip_history(
    between_first_polls: Option<&[u64]>,
    between_last_polls: Option<&[u64]>,
) -> (Verdict, [u64; 3]) {
    let mut s = Script::new();
    let poll_12 = s.poll(0, OpType::Ok, &[(X, &[(1, A), (2, B)])]);
    s.poll(1, OpType::Ok, &[(X, &[(3, C)])]);
    if let Some(keys) = between_first_polls {
        s.subscribe(0, keys);
    }
    let poll_4 = s.poll(0, OpType::Ok, &[(X, &[(4, D)])]);
    if let Some(keys) = between_last_polls {
        s.assign(0, keys, false);
    }
    s.ok_send(2, &[(X, F, 6)]);
    let poll_7 = s.poll(0, OpType::Ok, &[(X, &[(7, G)])]);
    s.send(
        3,
        OpType::Info,
        &[
            (X, A, None),
            (X, B, None),
            (X, C, None),
            (X, D, None),
            (X, G, None),
        ],
    );
    (checked(&s), [poll_12, poll_4, poll_7])
}

#[test]
fn poll_skip_between_polls_of_one_process_unless_it_was_assigned_away() {
    let skip = |values: [u64; 2], skipped: u64, ops: [u64; 2]| Anomaly::PollSkip {
        key: key(X),
        process: client(0),
        values: values.map(val),
        delta: 2,
        skipped: vec![val(skipped)],
        ops,
    };
    let (verdict, [p12, p4, p7]) = poll_skip_history(None, None);
    assert_eq!(
        verdict.examples(AnomalyKind::PollSkip),
        [skip([B, D], C, [p12, p4]), skip([D, G], F, [p4, p7])]
    );

    let (verdict, _) = poll_skip_history(Some(&[Y]), Some(&[Y]));
    assert_eq!(verdict.examples(AnomalyKind::PollSkip), []);

    let (verdict, [p12, p4, p7]) = poll_skip_history(Some(&[X, Y]), Some(&[X, Y]));
    assert_eq!(
        verdict.examples(AnomalyKind::PollSkip),
        [skip([B, D], C, [p12, p4]), skip([D, G], F, [p4, p7])]
    );
}

/// Values 0..=5 at offsets 0..=5 of x, then process 1 polls 0.
fn six_values_then_poll_of_the_first() -> (Script, u64) {
    let mut s = Script::new();
    let sends: Vec<(u64, u64, u64)> = (0..6).map(|v| (X, 10 + v, v)).collect();
    s.ok_send(0, &sends);
    let first = s.poll(1, OpType::Ok, &[(X, &[(0, 10)])]);
    (s, first)
}

#[test]
fn aborted_polls_leave_the_position_where_it_was() {
    let (mut s, _) = six_values_then_poll_of_the_first();
    s.poll(1, OpType::Fail, &[(X, &[(1, 11), (2, 12)])]);
    s.poll(1, OpType::Ok, &[(X, &[(1, 11), (2, 12)])]);
    assert_eq!(checked(&s).examples(AnomalyKind::PollSkip), []);
}

#[test]
fn an_aborted_poll_that_does_not_rewind_is_a_poll_skip() {
    let (mut s, first) = six_values_then_poll_of_the_first();
    s.poll(1, OpType::Fail, &[(X, &[(1, 11), (2, 12)])]);
    let failed = s.poll(1, OpType::Fail, &[(X, &[(3, 13), (4, 14)])]);
    let ok = s.poll(1, OpType::Ok, &[(X, &[(5, 15)])]);
    let skip = |to: u64, skipped: &[u64], op: u64| Anomaly::PollSkip {
        key: key(X),
        process: client(1),
        values: [val(10), val(to)],
        delta: (to - 10) as i64,
        skipped: skipped.iter().map(|v| val(*v)).collect(),
        ops: [first, op],
    };
    assert_eq!(
        checked(&s).examples(AnomalyKind::PollSkip),
        [skip(13, &[11, 12], failed), skip(15, &[11, 12, 13, 14], ok)]
    );
}

#[test]
fn an_info_poll_can_be_a_poll_skip() {
    let (mut s, first) = six_values_then_poll_of_the_first();
    s.poll(1, OpType::Fail, &[(X, &[(1, 11), (2, 12)])]);
    let info = s.poll(1, OpType::Info, &[(X, &[(3, 13), (4, 14)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::PollSkip),
        [Anomaly::PollSkip {
            key: key(X),
            process: client(1),
            values: [val(10), val(13)],
            delta: 3,
            skipped: vec![val(11), val(12)],
            ops: [first, info],
        }]
    );
}

/// Jepsen's `nonmonotonic-poll-test`: process 0 polls 1 2 3, then 2 3 4, with `between` in
/// between (true: subscribe, false: assign, to the given keys).
fn nonmonotonic_poll_history(between: Option<(bool, &[u64])>) -> (Verdict, [u64; 2]) {
    let mut s = Script::new();
    s.send(
        0,
        OpType::Ok,
        &[(X, A, None), (X, B, None), (X, C, None), (X, D, None)],
    );
    let poll_123 = s.poll(0, OpType::Ok, &[(X, &[(1, A), (2, B), (3, C)])]);
    match between {
        Some((true, keys)) => drop(s.subscribe(0, keys)),
        Some((false, keys)) => drop(s.assign(0, keys, false)),
        None => {}
    }
    let poll_234 = s.poll(0, OpType::Ok, &[(X, &[(2, B), (3, C), (4, D)])]);
    (checked(&s), [poll_123, poll_234])
}

#[test]
fn nonmonotonic_poll_unless_assigned_away() {
    let error = |ops| Anomaly::NonmonotonicPoll {
        key: key(X),
        process: client(0),
        values: [val(C), val(B)],
        delta: -1,
        ops,
    };
    let (verdict, ops) = nonmonotonic_poll_history(None);
    assert_eq!(
        verdict.examples(AnomalyKind::NonmonotonicPoll),
        [error(ops)]
    );
    for subscribe in [true, false] {
        let (verdict, _) = nonmonotonic_poll_history(Some((subscribe, &[Y])));
        assert_eq!(verdict.examples(AnomalyKind::NonmonotonicPoll), []);
        let (verdict, ops) = nonmonotonic_poll_history(Some((subscribe, &[X, Y])));
        assert_eq!(
            verdict.examples(AnomalyKind::NonmonotonicPoll),
            [error(ops)]
        );
    }
}

/// Jepsen's `nonmonotonic-send-test`: process 0 sends c, d at offsets 3, 4, then a, b at 1, 2.
fn nonmonotonic_send_history(between: Option<(bool, &[u64])>) -> (Verdict, [u64; 2]) {
    let mut s = Script::new();
    let send_34 = s.ok_send(0, &[(X, C, 3), (X, D, 4)]);
    match between {
        Some((true, keys)) => drop(s.subscribe(0, keys)),
        Some((false, keys)) => drop(s.assign(0, keys, false)),
        None => {}
    }
    let send_12 = s.ok_send(0, &[(X, A, 1), (X, B, 2)]);
    (checked(&s), [send_34, send_12])
}

#[test]
fn nonmonotonic_send_unless_assigned_away() {
    let error = |ops| Anomaly::NonmonotonicSend {
        key: key(X),
        process: client(0),
        values: [val(D), val(A)],
        delta: -3,
        ops,
    };
    let (verdict, ops) = nonmonotonic_send_history(None);
    assert_eq!(
        verdict.examples(AnomalyKind::NonmonotonicSend),
        [error(ops)]
    );
    for subscribe in [true, false] {
        let (verdict, _) = nonmonotonic_send_history(Some((subscribe, &[Y])));
        assert_eq!(verdict.examples(AnomalyKind::NonmonotonicSend), []);
        let (verdict, ops) = nonmonotonic_send_history(Some((subscribe, &[X, Y])));
        assert_eq!(
            verdict.examples(AnomalyKind::NonmonotonicSend),
            [error(ops)]
        );
    }
}

#[test]
fn int_poll_skip() {
    let mut s = Script::new();
    s.send(1, OpType::Info, &[(X, A, None), (X, B, None), (X, D, None)]);
    let op = s.poll(0, OpType::Ok, &[(X, &[(1, A), (4, D)])]);
    s.poll(2, OpType::Ok, &[(X, &[(2, B)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::IntPollSkip),
        [Anomaly::IntPollSkip {
            key: key(X),
            values: [val(A), val(D)],
            delta: 2,
            skipped: vec![val(B)],
            op
        }]
    );
}

#[test]
fn int_send_skip() {
    let mut s = Script::new();
    let op = s.send(0, OpType::Ok, &[(X, A, Some(1)), (X, C, None)]);
    s.send(1, OpType::Info, &[(X, B, None)]);
    s.poll(2, OpType::Ok, &[(X, &[(2, B), (3, C)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::IntSendSkip),
        [Anomaly::IntSendSkip {
            key: key(X),
            values: [val(A), val(C)],
            delta: 2,
            skipped: vec![val(B)],
            op
        }]
    );
}

#[test]
fn int_nonmonotonic_poll() {
    let mut s = Script::new();
    s.send(0, OpType::Info, &[(X, A, None), (X, B, None), (X, C, None)]);
    let poll_31 = s.poll(1, OpType::Ok, &[(X, &[(3, C), (1, A)])]);
    // Two polls in one op: [2 b] [3 c], then [3 c] again.
    let poll_33 = s.poll(1, OpType::Ok, &[(X, &[(2, B), (3, C), (3, C)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::IntNonmonotonicPoll),
        [
            Anomaly::IntNonmonotonicPoll {
                key: key(X),
                values: [val(C), val(A)],
                delta: -2,
                op: poll_31
            },
            Anomaly::IntNonmonotonicPoll {
                key: key(X),
                values: [val(C), val(C)],
                delta: 0,
                op: poll_33
            },
        ]
    );
}

#[test]
fn int_nonmonotonic_send() {
    let mut s = Script::new();
    // Offsets directly out of order.
    let send_31 = s.ok_send(0, &[(X, C, 3), (X, A, 1)]);
    // Or an order contradicted by a poll.
    let send_42 = s.send(1, OpType::Info, &[(Y, D, None), (Y, B, None)]);
    s.send(2, OpType::Info, &[(Y, C, None)]);
    s.poll(3, OpType::Ok, &[(Y, &[(2, B), (3, C), (4, D)])]);
    assert_eq!(
        checked(&s).examples(AnomalyKind::IntNonmonotonicSend),
        [
            Anomaly::IntNonmonotonicSend {
                key: key(X),
                values: [val(C), val(A)],
                delta: -1,
                op: send_31
            },
            Anomaly::IntNonmonotonicSend {
                key: key(Y),
                values: [val(D), val(B)],
                delta: -2,
                op: send_42
            },
        ]
    );
}
