//! One history per order anomaly (skips and regressions of polls and sends), each producing that
//! anomaly alone, with the exact offending keys, values, processes and operations.

use super::*;
use crate::anomaly::AnomalyKind;
use crate::op::{Call, OpType, Poll};
use crate::testing::poll_call;

/// Three values at offsets 0..2 of x, sent by process 0, and read in full by process 9.
fn three_values_read_by_another_process() -> Script {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0), (X, 2, 1), (X, 3, 2)]);
    s.poll(9, OpType::Ok, &[(X, &[(0, 1), (1, 2), (2, 3)])]);
    s
}

#[test]
fn poll_skip_a_process_jumps_over_a_value_between_two_polls() {
    let mut s = three_values_read_by_another_process();
    s.assign(1, &[X], false);
    let first = s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    let second = s.poll(1, OpType::Ok, &[(X, &[(2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::PollSkip]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::PollSkip {
            key: key(X),
            process: client(1),
            values: [val(1), val(3)],
            delta: 2,
            skipped: vec![val(2)],
            ops: [first, second],
        }]
    );
}

#[test]
fn nonmonotonic_poll_a_process_reads_again_what_it_already_read() {
    let mut s = three_values_read_by_another_process();
    let first = s.poll(1, OpType::Ok, &[(X, &[(0, 1), (1, 2)])]);
    // An assign that keeps x keeps the position.
    s.assign(1, &[X, Y], false);
    let second = s.poll(1, OpType::Ok, &[(X, &[(1, 2), (2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::NonmonotonicPoll]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::NonmonotonicPoll {
            key: key(X),
            process: client(1),
            values: [val(2), val(2)],
            delta: 0,
            ops: [first, second],
        }]
    );
}

#[test]
fn subscribe_allows_poll_skips_and_nonmonotonic_polls_but_still_reports_them() {
    let mut s = three_values_read_by_another_process();
    s.subscribe(1, &[X]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    s.poll(1, OpType::Ok, &[(X, &[(2, 3)])]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(verdict.bad, []);
    assert_eq!(
        verdict.kinds(),
        [AnomalyKind::PollSkip, AnomalyKind::NonmonotonicPoll]
    );
    assert_eq!(verdict.count(AnomalyKind::NonmonotonicPoll), 1);
}

#[test]
fn int_poll_skip_one_poll_jumps_over_a_value() {
    let mut s = three_values_read_by_another_process();
    let op = s.poll(1, OpType::Ok, &[(X, &[(0, 1), (2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::IntPollSkip]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::IntPollSkip {
            key: key(X),
            values: [val(1), val(3)],
            delta: 2,
            skipped: vec![val(2)],
            op
        }]
    );
}

#[test]
fn int_nonmonotonic_poll_one_poll_goes_backwards_unless_the_key_was_rebalanced() {
    let mut s = three_values_read_by_another_process();
    let op = s.poll(1, OpType::Ok, &[(X, &[(2, 3), (0, 1)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::IntNonmonotonicPoll]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::IntNonmonotonicPoll {
            key: key(X),
            values: [val(3), val(1)],
            delta: -2,
            op
        }]
    );

    let mut s = three_values_read_by_another_process();
    let Call::Poll(poll) = poll_call(&[(X, &[(2, 3), (0, 1)])]) else {
        unreachable!("a poll")
    };
    let rebalanced = Call::Poll(Poll {
        rebalanced: [key(X)].into(),
        ..poll
    });
    s.pair(1, OpType::Ok, Call::Poll(Poll::default()), rebalanced);
    assert_eq!(all_found(&checked(&s)), []);
}

#[test]
fn nonmonotonic_send_a_later_send_lands_before_an_earlier_one() {
    let mut s = Script::new();
    let first = s.ok_send(0, &[(X, 2, 1)]);
    let second = s.ok_send(0, &[(X, 1, 0)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1), (1, 2)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::NonmonotonicSend]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::NonmonotonicSend {
            key: key(X),
            process: client(0),
            values: [val(2), val(1)],
            delta: -1,
            ops: [first, second],
        }]
    );
}

#[test]
fn nonmonotonic_send_includes_an_indeterminate_send_that_took_effect() {
    let mut s = Script::new();
    let first = s.ok_send(0, &[(X, 2, 1)]);
    // The process's last send times out, yet a poll shows it landed before the previous one.
    let second = s.send(0, OpType::Info, &[(X, 1, None)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1), (1, 2)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::NonmonotonicSend]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::NonmonotonicSend {
            key: key(X),
            process: client(0),
            values: [val(2), val(1)],
            delta: -1,
            ops: [first, second],
        }]
    );
}

#[test]
fn int_nonmonotonic_send_two_sends_of_one_operation_land_out_of_order() {
    let mut s = Script::new();
    let op = s.ok_send(0, &[(X, 1, 1), (X, 2, 0)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 2), (1, 1)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::IntNonmonotonicSend]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::IntNonmonotonicSend {
            key: key(X),
            values: [val(1), val(2)],
            delta: -1,
            op
        }]
    );
}

#[test]
fn int_send_skip_is_reported_but_allowed() {
    let mut s = Script::new();
    let op = s.ok_send(0, &[(X, 1, 0), (X, 3, 2)]);
    s.ok_send(1, &[(X, 2, 1)]);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1), (1, 2), (2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(verdict.bad, []);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::IntSendSkip {
            key: key(X),
            values: [val(1), val(3)],
            delta: 2,
            skipped: vec![val(2)],
            op
        }]
    );
}
