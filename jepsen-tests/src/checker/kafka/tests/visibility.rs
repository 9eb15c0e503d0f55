//! One history per anomaly about which values were seen, each producing that anomaly alone (or
//! with the anomalies it implies, asserted too), with the exact offending keys, values, offsets
//! and operations.

use super::*;
use crate::anomaly::AnomalyKind;
use crate::op::OpType;

#[test]
fn lost_write_an_acknowledged_value_below_what_a_poll_read_is_missing() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0)]);
    let writer = s.ok_send(0, &[(X, 2, 1)]);
    s.ok_send(0, &[(X, 3, 2)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    let max_read = s.poll(2, OpType::Ok, &[(X, &[(2, 3)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Invalid);
    assert_eq!(verdict.bad, [AnomalyKind::LostWrite, AnomalyKind::Unseen]);
    assert_eq!(
        all_found(&verdict),
        [
            Anomaly::LostWrite {
                key: key(X),
                value: val(2),
                index: 1,
                max_read_index: 2,
                writer,
                max_read
            },
            Anomaly::Unseen {
                key: key(X),
                value: val(2),
                writer
            },
        ]
    );
}

#[test]
fn unexpected_a_polled_value_nobody_sent() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0)]);
    let reader = s.poll(1, OpType::Ok, &[(X, &[(0, 1), (1, 99)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::Unexpected]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::UnexpectedPoll {
            key: key(X),
            value: val(99),
            reader
        }]
    );
}

#[test]
fn duplicate_one_value_at_two_offsets() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0)]);
    s.ok_send(1, &[(X, 2, 1)]);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1)])]);
    s.poll(3, OpType::Ok, &[(X, &[(1, 2)])]);
    // The log repeats value 1 at offset 2.
    s.poll(4, OpType::Ok, &[(X, &[(2, 1)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::Duplicate]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::Duplicate {
            key: key(X),
            value: val(1),
            count: 2,
            offsets: vec![Offset(0), Offset(2)]
        }]
    );
}

#[test]
fn inconsistent_offsets_one_offset_holding_two_values() {
    let mut s = Script::new();
    // Both sends are acknowledged without offsets; the polls disagree about offset 0.
    s.send(0, OpType::Ok, &[(X, 1, None)]);
    s.send(1, OpType::Ok, &[(X, 2, None)]);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1)])]);
    s.poll(3, OpType::Ok, &[(X, &[(0, 2)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::InconsistentOffsets]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::InconsistentOffset {
            key: key(X),
            offset: Offset(0),
            index: 0,
            values: vec![val(1), val(2)]
        }]
    );
}

#[test]
fn inconsistent_offsets_two_acknowledged_sends_claiming_one_offset() {
    let mut s = Script::new();
    let first = s.ok_send(0, &[(X, 1, 0)]);
    s.ok_send(1, &[(X, 2, 0)]);
    let reader = s.poll(2, OpType::Ok, &[(X, &[(0, 2)])]);
    let verdict = checked(&s);
    // The poll of 2 at index 0 proves 1, which shares that index, should have been read too.
    assert_eq!(
        verdict.bad,
        [
            AnomalyKind::InconsistentOffsets,
            AnomalyKind::LostWrite,
            AnomalyKind::Unseen
        ]
    );
    assert_eq!(
        all_found(&verdict),
        [
            Anomaly::InconsistentOffset {
                key: key(X),
                offset: Offset(0),
                index: 0,
                values: vec![val(1), val(2)]
            },
            Anomaly::LostWrite {
                key: key(X),
                value: val(1),
                index: 0,
                max_read_index: 0,
                writer: first,
                max_read: reader,
            },
            Anomaly::Unseen {
                key: key(X),
                value: val(1),
                writer: first
            },
        ]
    );
}

#[test]
fn g1a_an_ok_poll_reads_a_value_whose_send_failed() {
    let mut s = Script::new();
    let writer = s.send(0, OpType::Fail, &[(X, 2, None)]);
    s.ok_send(1, &[(X, 1, 0)]);
    let reader = s.poll(2, OpType::Ok, &[(X, &[(0, 1), (1, 2)])]);
    // Only `ok` polls count: a failed poll returning another failed write is not a G1a.
    s.send(3, OpType::Fail, &[(X, 4, None)]);
    s.poll(4, OpType::Fail, &[(X, &[(2, 4)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::G1a]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::AbortedRead {
            key: key(X),
            value: val(2),
            writer,
            reader
        }]
    );
}

#[test]
fn unseen_an_acknowledged_value_no_poll_ever_returned() {
    let mut s = Script::new();
    s.ok_send(0, &[(X, 1, 0)]);
    let writer = s.ok_send(0, &[(Y, 5, 0)]);
    s.poll(1, OpType::Ok, &[(X, &[(0, 1)])]);
    // A failed or indeterminate poll that returned it does not count.
    s.poll(2, OpType::Fail, &[(Y, &[(0, 5)])]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::Unseen]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::Unseen {
            key: key(Y),
            value: val(5),
            writer
        }]
    );
}

#[test]
fn examples_are_capped_but_counts_are_exact() {
    let mut s = Script::new();
    for value in 1..=5 {
        s.ok_send(0, &[(X, value, value - 1)]);
    }
    let verdict = check(&s.history(), &CheckConfig { max_examples: 2 });
    assert_eq!(verdict.count(AnomalyKind::Unseen), 5);
    assert_eq!(
        verdict.examples(AnomalyKind::Unseen),
        [
            Anomaly::Unseen {
                key: key(X),
                value: val(1),
                writer: 1
            },
            Anomaly::Unseen {
                key: key(X),
                value: val(2),
                writer: 3
            }
        ]
    );
}

#[test]
fn the_verdict_serialises_with_jepsen_names_and_reads_back() {
    let mut s = Script::new();
    s.send(0, OpType::Fail, &[(X, 2, None)]);
    s.ok_send(1, &[(X, 1, 0)]);
    s.poll(2, OpType::Ok, &[(X, &[(0, 1), (1, 2)])]);
    let verdict = checked(&s);
    let json = serde_json::to_value(&verdict).expect("encode");
    assert_eq!(json["checker"], "kafka");
    assert_eq!(json["valid"], false);
    assert_eq!(json["bad"], serde_json::json!(["G1a"]));
    assert_eq!(
        json["anomalies"]["G1a"],
        serde_json::json!({"count": 1, "examples": [
            {"type": "aborted-read", "key": 0, "value": 2, "writer": 1, "reader": 5}
        ]})
    );
    let back: Verdict = serde_json::from_value(json).expect("decode");
    assert_eq!(back, verdict);
}
