use super::*;
use crate::testing::{Script, all_found};
use crate::verdict::Validity;

fn checked(script: &Script) -> Verdict {
    check(&script.history(), &CheckConfig::default()).expect("checkable history")
}

#[test]
fn everything_enqueued_comes_out_of_dequeues_and_the_drain() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    s.enqueue(1, OpType::Ok, 2);
    s.enqueue(0, OpType::Ok, 3);
    s.dequeue(1, OpType::Ok, Some(2));
    s.dequeue(1, OpType::Ok, None);
    s.drain(0, OpType::Ok, &[1, 3]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert!(verdict.anomalies.is_empty());
    assert_eq!(verdict.ops["enqueue"].ok, 3);
    assert_eq!(verdict.ops["dequeue"].ok, 2);
}

#[test]
fn an_acknowledged_enqueue_never_dequeued_is_lost() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    s.enqueue(0, OpType::Ok, 2);
    s.drain(1, OpType::Ok, &[1]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Invalid);
    assert_eq!(verdict.bad, [AnomalyKind::Lost]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::Lost {
            value: Value(2),
            count: 1
        }]
    );
}

#[test]
fn a_value_never_enqueued_is_unexpected() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    s.dequeue(1, OpType::Ok, Some(1));
    s.dequeue(1, OpType::Ok, Some(99));
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Invalid);
    assert_eq!(verdict.bad, [AnomalyKind::Unexpected]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::Unexpected {
            value: Value(99),
            count: 1
        }]
    );
}

#[test]
fn a_value_dequeued_twice_is_duplicated_which_is_allowed() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    s.dequeue(1, OpType::Ok, Some(1));
    s.drain(1, OpType::Ok, &[1]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert!(verdict.bad.is_empty());
    assert_eq!(
        all_found(&verdict),
        [Anomaly::Duplicated {
            value: Value(1),
            count: 1
        }]
    );
}

#[test]
fn an_info_enqueue_that_took_effect_is_recovered_and_one_that_did_not_is_not_lost() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Info, 1); // took effect: dequeued below
    s.enqueue(1, OpType::Info, 2); // did not: never dequeued
    s.enqueue(2, OpType::Ok, 3);
    s.drain(3, OpType::Ok, &[3, 1]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::Recovered {
            value: Value(1),
            count: 1
        }]
    );
    assert_eq!(
        verdict.ops["enqueue"],
        crate::verdict::OutcomeCounts {
            ok: 1,
            fail: 0,
            info: 2
        }
    );
}

#[test]
fn a_crashed_process_with_an_enqueue_in_flight_is_indeterminate_not_lost() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    // Process 1 crashes with its enqueue in flight: no completion is ever recorded.
    s.push(1, OpType::Invoke, Call::Enqueue(Value(2)));
    s.drain(2, OpType::Ok, &[1]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert!(verdict.anomalies.is_empty());
    assert_eq!(verdict.ops["enqueue"].info, 1);
}

#[test]
fn a_failed_enqueue_that_shows_up_counts_as_recovered_as_in_jepsen() {
    // Jepsen's attempts are all invocations, so a failed enqueue that is later dequeued is
    // neither unexpected nor lost; total-queue calls it recovered.
    let mut s = Script::new();
    s.enqueue(0, OpType::Fail, 1);
    s.drain(1, OpType::Ok, &[1]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::Recovered {
            value: Value(1),
            count: 1
        }]
    );
}

#[test]
fn multiplicities_count_an_attempt_enqueued_twice_but_dequeued_once_as_lost_once() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 7);
    s.enqueue(0, OpType::Ok, 7);
    s.enqueue(0, OpType::Ok, 8);
    s.drain(1, OpType::Ok, &[7]);
    let verdict = checked(&s);
    assert_eq!(verdict.count(AnomalyKind::Lost), 2);
    assert_eq!(
        verdict.examples(AnomalyKind::Lost),
        [
            Anomaly::Lost {
                value: Value(7),
                count: 1
            },
            Anomaly::Lost {
                value: Value(8),
                count: 1
            }
        ]
    );
}

#[test]
fn failed_drains_are_ignored_and_indeterminate_drains_are_refused() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    s.drain(1, OpType::Fail, &[]);
    s.drain(1, OpType::Ok, &[1]);
    assert_eq!(checked(&s).valid, Validity::Valid);

    let info_drain = s.drain(2, OpType::Info, &[]);
    let error = check(&s.history(), &CheckConfig::default()).expect_err("info drain");
    assert!(matches!(error, HistoryError::IndeterminateDrain { index } if index == info_drain));

    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    let pending = s.push(1, OpType::Invoke, Call::Drain(Vec::new()));
    let error = check(&s.history(), &CheckConfig::default()).expect_err("pending drain");
    assert!(matches!(error, HistoryError::IndeterminateDrain { index } if index == pending));
}

#[test]
fn a_history_that_acknowledged_nothing_is_unknown_but_a_lost_value_still_invalidates() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Fail, 1);
    s.dequeue(0, OpType::Fail, None);
    assert_eq!(checked(&s).valid, Validity::Unknown);

    s.enqueue(0, OpType::Ok, 2);
    assert_eq!(checked(&s).valid, Validity::Invalid);
}

#[test]
fn examples_are_capped_but_counts_are_exact() {
    let mut s = Script::new();
    for value in 0..5 {
        s.enqueue(0, OpType::Ok, value);
    }
    s.drain(1, OpType::Ok, &[]);
    let verdict = check(&s.history(), &CheckConfig { max_examples: 2 }).expect("checkable");
    assert_eq!(verdict.count(AnomalyKind::Lost), 5);
    assert_eq!(
        verdict.examples(AnomalyKind::Lost),
        [
            Anomaly::Lost {
                value: Value(0),
                count: 1
            },
            Anomaly::Lost {
                value: Value(1),
                count: 1
            }
        ]
    );
}

#[test]
fn the_verdict_serialises_with_jepsen_names_and_reads_back() {
    let mut s = Script::new();
    s.enqueue(0, OpType::Ok, 1);
    s.enqueue(0, OpType::Info, 2);
    s.drain(1, OpType::Ok, &[2]);
    let verdict = checked(&s);
    let json = serde_json::to_value(&verdict).expect("encode");
    assert_eq!(
        json,
        serde_json::json!({
            "checker": "total-queue",
            "valid": false,
            "bad": ["lost"],
            "anomalies": {
                "lost": {"count": 1, "examples": [{"type": "lost", "value": 1, "count": 1}]},
                "recovered": {"count": 1, "examples": [{"type": "recovered", "value": 2, "count": 1}]}
            },
            "ops": {
                "drain": {"ok": 1, "fail": 0, "info": 0},
                "enqueue": {"ok": 1, "fail": 0, "info": 1}
            }
        })
    );
    let back: Verdict = serde_json::from_value(json).expect("decode");
    assert_eq!(back, verdict);
}
