//! Histories the checker must pass: clean runs, offset gaps, indeterminate operations that did
//! or did not take effect, crashed processes, rewinds.

use super::*;
use crate::op::{Call, OpType, Poll};
use crate::testing::send_call;

#[test]
fn a_clean_run_with_assign_sends_polls_and_a_final_read_is_valid() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0), (X, 2, 1), (Y, 10, 0)]);
    s.assign(1, &[X, Y], false);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    s.poll(1, OpType::Ok, &[(X, &[(1, 2)]), (Y, &[(0, 10)])]);
    s.ok_send(0, &[(X, 3, 2)]);
    s.poll(1, OpType::Ok, &[(X, &[(2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
    assert_eq!(verdict.ops["send"].ok, 2);
    assert_eq!(verdict.ops["poll"].ok, 3);
}

#[test]
fn offset_gaps_left_by_control_records_are_not_skips() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0)]);
    // Offsets 1 and 2 hold transaction markers: no value ever appears there.
    s.ok_send(0, &[(X, 2, 3)]);
    s.ok_send(0, &[(X, 3, 4)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1), (3, 2)])]);
    s.poll(1, OpType::Ok, &[(X, &[(4, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn an_info_send_that_did_not_happen_is_neither_lost_nor_unseen() {
    let mut s = Script::new();
    // The send timed out and never landed; process 0 is retired.
    s.send(0, OpType::Info, &[(X, 2, None)]);
    s.ok_send(1, &[(X, 1, 0)]);
    s.ok_send(1, &[(X, 3, 1)]);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1), (1, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
    assert_eq!(verdict.ops["send"].info, 1);
}

#[test]
fn an_info_send_whose_completion_guessed_an_offset_is_ignored_until_it_is_read() {
    // The info send claims offset 1, but nothing read it, so it is not in the version order and
    // the poll from 1 to 3 is not a skip over it.
    let mut s = Script::new();
    s.send(0, OpType::Info, &[(X, 2, Some(1))]);
    s.ok_send(1, &[(X, 1, 0)]);
    s.ok_send(1, &[(X, 3, 2)]);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1), (2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn an_info_send_that_took_effect_is_ordinary_data() {
    let mut s = Script::new();
    s.send(0, OpType::Info, &[(X, 2, None)]);
    s.ok_send(1, &[(X, 1, 0)]);
    s.ok_send(1, &[(X, 3, 2)]);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1), (1, 2), (2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn crashed_processes_and_invocations_that_never_completed_are_indeterminate() {
    let mut s = Script::new();
    // Process 0 dies with a send in flight that never lands.
    s.push(0, OpType::Invoke, send_call(&[(X, 5, None)]));
    s.ok_send(1, &[(X, 1, 0)]);
    // Process 1's client is crashed on purpose and the process retired.
    s.pair(1, OpType::Info, Call::Crash, Call::Crash);
    s.assign(2, &[X], true);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1)])]);
    s.ok_send(3, &[(X, 2, 1)]);
    // Process 4 dies with a send in flight that did land: a poll returns it.
    s.push(4, OpType::Invoke, send_call(&[(X, 3, None)]));
    s.poll(2, OpType::Ok, &[(X, &[(1, 2), (2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
    assert_eq!(verdict.ops["send"].info, 2);
    assert_eq!(verdict.ops["crash"].info, 1);
}

#[test]
fn sends_whose_place_in_the_log_is_unknown_are_not_ordering_anomalies() {
    let mut s = Script::new();
    // Acknowledged without an offset, but read: its place is known.
    s.send(0, OpType::Ok, &[(X, 1, None)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    // Then the same process sends two values that are never read: their places are unknown, so
    // neither the pair inside the op nor the step from 1 can be judged.
    s.send(0, OpType::Info, &[(X, 2, None), (X, 3, None)]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn a_value_seen_only_by_an_aborted_poll_is_not_lost_while_its_send_is_unproven() {
    // Polls of any outcome place values in the log, but lost-write only counts writes that must
    // have committed: this info send was never returned by an `ok` poll.
    let mut s = Script::new();
    s.send(0, OpType::Info, &[(X, 2, None)]);
    s.ok_send(1, &[(X, 1, 0)]);
    s.ok_send(1, &[(X, 3, 2)]);
    s.poll(2, OpType::Fail, &[(X, &[(1, 2)])]);
    s.poll(3, OpType::Ok, &[(X, &[(0, 1)])]);
    s.poll(4, OpType::Ok, &[(X, &[(2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn failed_sends_that_nobody_read_are_fine() {
    let mut s = Script::new();
    s.send(0, OpType::Fail, &[(X, 9, None)]);
    s.ok_send(0, &[(X, 1, 0)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn seek_to_beginning_and_assigning_a_key_away_reset_the_consumer_position() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0), (X, 2, 1), (X, 3, 2)]);
    s.assign(1, &[X], false);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1), (1, 2)])]);
    // The final-read pattern: rewind, read everything again.
    s.assign(1, &[X], true);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1), (1, 2), (2, 3)])]);
    // Assigning x away and back loses the position too.
    s.assign(1, &[Y], false);
    s.assign(1, &[X], false);
    s.poll(1, OpType::Ok, &[(X, &[(2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn a_poll_with_a_rebalanced_key_may_go_backwards_inside_that_key() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0), (X, 2, 1)]);
    let Call::Poll(records) = crate::testing::poll_call(&[(X, &[(1, 2), (0, 1)])]) else {
        unreachable!("poll_call builds a poll")
    };
    let rebalanced = Call::Poll(Poll {
        rebalanced: [key(X)].into(),
        ..records
    });
    s.pair(1, OpType::Ok, Call::Poll(Poll::default()), rebalanced);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(all_found(&verdict), []);
}

#[test]
fn nemesis_operations_are_ignored() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    let mut history = s.history();
    let fault = Call::Nemesis(serde_json::json!({"fault": "kill"}));
    for kind in [OpType::Invoke, OpType::Info] {
        let index = history.next_index();
        let op = crate::op::Op {
            index,
            time: index,
            process: Process::Nemesis,
            kind,
            call: fault.clone(),
            error: None,
        };
        history.push(op).expect("nemesis op");
    }
    let verdict = check(&history, &CheckConfig::default());
    assert_eq!(verdict.valid, Validity::Valid);
    assert!(!verdict.ops.contains_key("nemesis"));
}

#[test]
fn a_history_that_acknowledged_nothing_is_unknown() {
    let mut s = Script::new();
    s.assign(0, &[X], false);
    assert_eq!(checked(&s).valid, Validity::Unknown);
    s.send(1, OpType::Fail, &[(X, 1, None)]);
    s.poll(0, OpType::Fail, &[]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Unknown);
    assert_eq!(all_found(&verdict), []);
}
