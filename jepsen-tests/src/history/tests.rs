use std::io::Cursor;

use super::*;
use crate::ids::{Key, Offset, Value};
use crate::op::{Assign, Commit, Heartbeat, HeartbeatReply, Offsets, Poll, Record, Send};
use crate::testing::{Script, poll_call, send_call};

fn op(index: u64, time: u64, process: Process, kind: OpType, call: Call) -> Op {
    Op {
        index,
        time,
        process,
        kind,
        call,
        error: None,
    }
}

fn client(n: u64) -> Process {
    Process::Client(n)
}

fn fault() -> Call {
    Call::Nemesis(serde_json::json!({"fault": "partition", "nodes": ["n1"]}))
}

#[test]
fn operations_serialise_as_flat_jepsen_like_json() {
    let invoke = op(0, 5, client(1), OpType::Invoke, send_call(&[(0, 7, None)]));
    let ok = op(1, 9, client(1), OpType::Ok, send_call(&[(0, 7, Some(3))]));
    let poll = op(
        2,
        10,
        client(2),
        OpType::Ok,
        poll_call(&[(4, &[(3, 7), (5, 8)])]),
    );
    let nemesis = Op {
        error: Some("timed out".into()),
        ..op(3, 11, Process::Nemesis, OpType::Info, fault())
    };
    let lines: Vec<String> = [invoke, ok, poll, nemesis]
        .iter()
        .map(|op| serde_json::to_string(op).expect("encode"))
        .collect();
    assert_eq!(
        lines,
        [
            r#"{"index":0,"time":5,"process":1,"type":"invoke","f":"send","value":[{"key":0,"value":7}]}"#,
            r#"{"index":1,"time":9,"process":1,"type":"ok","f":"send","value":[{"key":0,"value":7,"offset":3}]}"#,
            r#"{"index":2,"time":10,"process":2,"type":"ok","f":"poll","value":{"records":{"4":[[3,7],[5,8]]}}}"#,
            r#"{"index":3,"time":11,"process":"nemesis","type":"info","f":"nemesis","value":{"fault":"partition","nodes":["n1"]},"error":"timed out"}"#,
        ]
    );
}

/// An `ok` heartbeat with every field.
fn group_heartbeat() -> Call {
    Call::Heartbeat(Heartbeat {
        member: Some("m1".into()),
        epoch: 2,
        owned: vec![Key(1), Key(2)],
        reply: Some(HeartbeatReply {
            member: "m1".into(),
            epoch: 3,
            assignment: vec![Key(1)],
            revoking: vec![Key(2)],
            committed: [(Key(1), Some(Offset(4))), (Key(5), None)].into(),
        }),
        code: None,
        node: Some(1),
    })
}

#[test]
fn group_operations_serialise_with_keys_as_map_keys() {
    let ok = op(1, 9, client(1), OpType::Ok, group_heartbeat());
    assert_eq!(
        serde_json::to_string(&ok).expect("encode"),
        r#"{"index":1,"time":9,"process":1,"type":"ok","f":"heartbeat","value":{"member":"m1","epoch":2,"owned":[1,2],"reply":{"member":"m1","epoch":3,"assignment":[1],"revoking":[2],"committed":{"1":4,"5":null}},"node":1}}"#
    );
}

/// One operation of every call kind, in a valid order.
fn every_call_kind() -> History {
    let assign = Call::Assign(Assign {
        keys: vec![Key(1), Key(2)],
        seek_to_beginning: true,
    });
    let rebalanced_poll = Call::Poll(Poll {
        records: [(
            Key(1),
            vec![Record {
                offset: Offset(0),
                value: Value(10),
            }],
        )]
        .into(),
        rebalanced: [Key(1)].into(),
    });
    let calls = [
        (
            OpType::Ok,
            Call::Send(vec![Send {
                key: Key(1),
                value: Value(10),
                offset: Some(Offset(0)),
            }]),
        ),
        (OpType::Ok, rebalanced_poll),
        (OpType::Ok, assign),
        (OpType::Ok, Call::Subscribe(vec![Key(3)])),
        (OpType::Ok, Call::Enqueue(Value(4))),
        (OpType::Ok, Call::Dequeue(Some(Value(4)))),
        (OpType::Ok, Call::Dequeue(None)),
        (OpType::Fail, Call::Drain(vec![Value(5), Value(6)])),
        (OpType::Ok, group_heartbeat()),
        (
            OpType::Fail,
            Call::Commit(Commit {
                member: "m1".into(),
                epoch: 3,
                offsets: [(Key(1), Offset(4))].into(),
                code: Some("FENCED".into()),
                node: Some(2),
            }),
        ),
        (
            OpType::Ok,
            Call::Offsets(Offsets {
                offsets: [(Key(1), Offset(4))].into(),
                missing: false,
                node: None,
            }),
        ),
        (OpType::Info, Call::Crash),
    ];
    let mut ops = Vec::new();
    for (kind, call) in calls {
        let index = ops.len() as u64;
        ops.push(op(index, index, client(0), OpType::Invoke, call.clone()));
        ops.push(op(index + 1, index + 1, client(0), kind, call));
    }
    let index = ops.len() as u64;
    ops.push(op(index, index, Process::Nemesis, OpType::Invoke, fault()));
    ops.push(op(
        index + 1,
        index + 1,
        Process::Nemesis,
        OpType::Info,
        fault(),
    ));
    History::from_ops(ops).expect("valid")
}

#[test]
fn jsonl_round_trip_preserves_every_call_kind() {
    let history = every_call_kind();
    let mut buffer = Vec::new();
    history.write_jsonl(&mut buffer).expect("write");
    let text = String::from_utf8(buffer.clone()).expect("utf-8");
    assert_eq!(text.lines().count(), history.len());
    let back = History::read_jsonl(Cursor::new(buffer)).expect("read");
    assert_eq!(back.ops(), history.ops());
}

#[test]
fn history_files_round_trip() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("history.jsonl");
    let history = every_call_kind();
    history.write_file(&path).expect("write");
    assert_eq!(
        History::read_file(&path).expect("read").ops(),
        history.ops()
    );
}

#[test]
fn blank_lines_are_skipped_and_parse_errors_name_the_line() {
    let good = "\n{\"index\":0,\"time\":0,\"process\":0,\"type\":\"invoke\",\"f\":\"crash\"}\n\n";
    assert_eq!(
        History::read_jsonl(Cursor::new(good)).expect("read").len(),
        1
    );
    let bad = format!("{good}{{\"index\":1,\"type\":\"ok\"}}\n");
    match History::read_jsonl(Cursor::new(bad)) {
        Err(error @ HistoryError::Parse { line: 4, .. }) => {
            assert_eq!(error.code(), "HISTORY_PARSE")
        }
        other => panic!("expected a parse error on line 4, got {other:?}"),
    }
}

#[test]
fn a_file_that_breaks_the_model_is_refused() {
    let text = "{\"index\":0,\"time\":0,\"process\":0,\"type\":\"ok\",\"f\":\"crash\"}\n";
    assert!(matches!(
        History::read_jsonl(Cursor::new(text)),
        Err(HistoryError::NoPendingInvoke {
            index: 0,
            process: Process::Client(0)
        })
    ));
}

#[test]
fn push_refuses_each_rule_violation_and_leaves_the_history_unchanged() {
    let mut history = History::new();
    history
        .push(op(0, 10, client(0), OpType::Invoke, Call::Crash))
        .expect("invoke");
    let refused = [
        (
            op(2, 10, client(1), OpType::Invoke, Call::Crash),
            "INDEX_OUT_OF_ORDER",
        ),
        (
            op(1, 9, client(1), OpType::Invoke, Call::Crash),
            "TIME_WENT_BACKWARDS",
        ),
        (
            op(1, 10, client(0), OpType::Invoke, Call::Crash),
            "ALREADY_PENDING",
        ),
        (
            op(1, 10, client(1), OpType::Ok, Call::Crash),
            "NO_PENDING_INVOKE",
        ),
        (
            op(1, 10, client(0), OpType::Ok, Call::Enqueue(Value(1))),
            "MISMATCHED_F",
        ),
        (
            op(1, 10, client(1), OpType::Invoke, fault()),
            "WRONG_PROCESS",
        ),
        (
            op(1, 10, Process::Nemesis, OpType::Invoke, Call::Crash),
            "WRONG_PROCESS",
        ),
    ];
    for (bad, code) in refused {
        let error = history.push(bad.clone()).expect_err("must be refused");
        assert_eq!(error.code(), code, "{bad:?}");
        assert_eq!(history.len(), 1);
    }
    history
        .push(op(1, 10, client(0), OpType::Info, Call::Crash))
        .expect("info completion");
    assert!(history.is_retired(client(0)));
    let error = history
        .push(op(2, 11, client(0), OpType::Invoke, Call::Crash))
        .expect_err("retired");
    assert!(matches!(
        error,
        HistoryError::RetiredProcess {
            index: 2,
            process: Process::Client(0)
        }
    ));
}

#[test]
fn fail_does_not_retire_a_process_and_info_does_not_retire_the_nemesis() {
    let mut script = Script::new();
    script.enqueue(0, OpType::Fail, 1);
    script.enqueue(0, OpType::Ok, 2);
    let mut history = script.history();
    assert!(!history.is_retired(client(0)));
    for kind in [OpType::Invoke, OpType::Info, OpType::Invoke, OpType::Info] {
        let index = history.next_index();
        history
            .push(op(index, index, Process::Nemesis, kind, fault()))
            .expect("nemesis op");
    }
    assert!(!history.is_retired(Process::Nemesis));
}

#[test]
fn completions_make_pending_invocations_info_at_the_end() {
    let mut script = Script::new();
    script.push(0, OpType::Invoke, send_call(&[(0, 1, None)]));
    script.ok_send(1, &[(0, 2, 0)]);
    script.push(2, OpType::Invoke, Call::Enqueue(Value(9)));
    let history = script.history();
    assert_eq!(
        history.pending().map(|op| op.index).collect::<Vec<_>>(),
        [0, 3]
    );

    let completions = history.completions();
    let summary: Vec<(u64, OpType, u64, Option<&str>)> = completions
        .iter()
        .map(|op| (op.index, op.kind, op.time, op.error.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (2, OpType::Ok, 2, None),
            (0, OpType::Info, 3, Some(NO_COMPLETION)),
            (3, OpType::Info, 3, Some(NO_COMPLETION)),
        ]
    );
    assert_eq!(completions[1].call, send_call(&[(0, 1, None)]));
}

#[test]
fn pairs_and_invocation_of_match_invocations_with_completions() {
    let mut script = Script::new();
    script.push(0, OpType::Invoke, Call::Enqueue(Value(1)));
    script.push(1, OpType::Invoke, Call::Enqueue(Value(2)));
    script.push(1, OpType::Ok, Call::Enqueue(Value(2)));
    let history = script.history();
    let pairs: Vec<(u64, Option<u64>)> = history
        .pairs()
        .map(|(invoke, completion)| (invoke.index, completion.map(|c| c.index)))
        .collect();
    assert_eq!(pairs, [(0, None), (1, Some(2))]);
    assert_eq!(
        history.invocation_of(&history.ops()[2]).map(|op| op.index),
        Some(1)
    );
    assert_eq!(history.invocation_of(&history.ops()[0]), None);
}
