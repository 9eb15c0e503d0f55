use super::*;
use crate::anomaly::AnomalyKind;
use crate::op::{ChatEvent, ChatEvents, ChatMessage, ChatSend};
use crate::testing::{Script, all_found};
use crate::verdict::Validity;

const C: &str = "d-ab";

fn send_call(conversation: &str, id: &str, client: u64, offset: Option<u64>) -> Call {
    Call::ChatSend(ChatSend {
        conversation: conversation.to_owned(),
        message_id: id.to_owned(),
        client,
        offset,
        node: Some(1),
    })
}

/// One attempt of `id` by `client` (its process `process`) completing as `kind`.
fn attempt(s: &mut Script, process: u64, client: u64, id: &str, kind: OpType) -> u64 {
    let offset = (kind == OpType::Ok).then_some(7);
    s.pair(
        process,
        kind,
        send_call(C, id, client, None),
        send_call(C, id, client, offset),
    )
}

/// An `ok` read of `conversation` through `node` returning `ids` (offsets 10, 11, ...).
fn read(s: &mut Script, node: u32, conversation: &str, ids: &[&str]) -> u64 {
    let empty = ChatRead {
        conversation: conversation.to_owned(),
        node,
        messages: Vec::new(),
    };
    let full = ChatRead {
        messages: ids
            .iter()
            .enumerate()
            .map(|(i, id)| ChatMessage {
                id: (*id).to_owned(),
                offset: 10 + i as u64,
            })
            .collect(),
        ..empty.clone()
    };
    s.pair(
        100 + u64::from(node),
        OpType::Ok,
        Call::ChatRead(empty),
        Call::ChatRead(full),
    )
}

fn checked(s: &Script) -> Verdict {
    check(&s.history(), &CheckConfig::default())
}

#[test]
fn acknowledged_messages_once_each_in_one_order_on_every_node_are_valid() {
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Ok);
    // An unknown outcome retried with the same id, then acknowledged: written once.
    attempt(&mut s, 1, 1, "b", OpType::Info);
    attempt(&mut s, 2, 1, "b", OpType::Ok);
    attempt(&mut s, 0, 0, "c", OpType::Ok);
    // Unknown and never settled: may or may not be there.
    attempt(&mut s, 3, 1, "d", OpType::Info);
    attempt(&mut s, 4, 1, "e", OpType::Fail);
    for node in 1..=3 {
        read(&mut s, node, C, &["a", "b", "c"]);
    }
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Valid, "{:?}", verdict.anomalies);
    assert_eq!(verdict.ops["chat-send"].ok, 3);
    assert_eq!(verdict.ops["chat-send"].info, 2);
    assert_eq!(verdict.ops["chat-send"].fail, 1);
    assert_eq!(verdict.ops["chat-read"].ok, 3);
}

#[test]
fn an_acknowledged_message_missing_on_a_node_is_a_lost_ack() {
    let mut s = Script::new();
    let ack = attempt(&mut s, 0, 0, "a", OpType::Ok);
    attempt(&mut s, 0, 0, "b", OpType::Ok);
    read(&mut s, 1, C, &["a", "b"]);
    let r2 = read(&mut s, 2, C, &["b"]);
    let verdict = checked(&s);
    assert_eq!(verdict.valid, Validity::Invalid);
    assert_eq!(
        verdict.bad,
        [AnomalyKind::ChatLostAck, AnomalyKind::ChatOrderDivergence]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::ChatLostAck),
        [Anomaly::ChatLostAck {
            conversation: C.into(),
            message_id: "a".into(),
            client: 0,
            node: 2,
            op: ack,
            read: r2,
        }]
    );
}

#[test]
fn a_message_twice_in_a_history_is_a_duplicate() {
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Info);
    attempt(&mut s, 1, 0, "a", OpType::Ok);
    let r = read(&mut s, 1, C, &["a", "a"]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::ChatDuplicate]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::ChatDuplicate {
            conversation: C.into(),
            message_id: "a".into(),
            node: 1,
            offsets: vec![10, 11],
            read: r,
        }]
    );
}

#[test]
fn nodes_with_different_orders_diverge_at_the_first_difference() {
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Ok);
    attempt(&mut s, 1, 1, "b", OpType::Info);
    attempt(&mut s, 2, 2, "c", OpType::Info);
    let r1 = read(&mut s, 1, C, &["a", "b", "c"]);
    read(&mut s, 2, C, &["a", "b", "c"]);
    let r3 = read(&mut s, 3, C, &["a", "c", "b"]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::ChatOrderDivergence]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::ChatOrderDivergence {
            conversation: C.into(),
            nodes: [1, 3],
            position: 1,
            ids: [Some("b".into()), Some("c".into())],
            lengths: [3, 3],
            reads: [r1, r3],
        }]
    );
    // A shorter history (a prefix) diverges where it ends.
    let mut s = Script::new();
    attempt(&mut s, 1, 1, "b", OpType::Info);
    attempt(&mut s, 0, 0, "a", OpType::Ok);
    read(&mut s, 1, C, &["a", "b"]);
    read(&mut s, 2, C, &["a"]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::ChatOrderDivergence]);
    let found = all_found(&verdict);
    assert!(matches!(
        &found[0],
        Anomaly::ChatOrderDivergence {
            position: 1,
            ids: [Some(_), None],
            lengths: [2, 1],
            ..
        }
    ));
}

#[test]
fn a_clients_later_message_before_its_earlier_acknowledged_one_breaks_sender_order() {
    let mut s = Script::new();
    let a = attempt(&mut s, 0, 0, "a", OpType::Ok);
    let b = attempt(&mut s, 0, 0, "b", OpType::Ok);
    // Another client's messages may interleave anywhere.
    attempt(&mut s, 1, 1, "x", OpType::Ok);
    read(&mut s, 1, C, &["x", "b", "a"]);
    let verdict = checked(&s);
    assert_eq!(verdict.bad, [AnomalyKind::ChatSenderOrder]);
    assert_eq!(
        all_found(&verdict),
        [Anomaly::ChatSenderOrder {
            conversation: C.into(),
            client: 0,
            node: 1,
            message_ids: ["a".into(), "b".into()],
            positions: [2, 1],
            ops: [a, b],
        }]
    );
}

#[test]
fn concurrent_sends_of_one_client_may_land_in_either_order() {
    // `b` was first sent (and timed out) before `a` was acknowledged, then retried: the two
    // were in flight together, so either order is fine.
    let mut s = Script::new();
    s.push(0, OpType::Invoke, send_call(C, "b", 0, None));
    attempt(&mut s, 1, 0, "a", OpType::Ok);
    s.push(0, OpType::Info, send_call(C, "b", 0, None));
    attempt(&mut s, 2, 0, "b", OpType::Ok);
    read(&mut s, 1, C, &["b", "a"]);
    assert_eq!(checked(&s).valid, Validity::Valid);
}

#[test]
fn a_message_nobody_sent_there_is_a_phantom_and_a_refused_one_must_not_show() {
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Ok);
    let refused = attempt(&mut s, 1, 1, "f", OpType::Fail);
    s.pair(
        2,
        OpType::Ok,
        send_call("g-other", "o", 2, None),
        send_call("g-other", "o", 2, Some(3)),
    );
    read(&mut s, 2, "g-other", &["o"]);
    let r = read(&mut s, 1, C, &["a", "f", "zzz", "o"]);
    let verdict = checked(&s);
    assert_eq!(
        verdict.bad,
        [AnomalyKind::ChatPhantom, AnomalyKind::ChatFailedVisible]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::ChatPhantom),
        [
            Anomaly::ChatPhantom {
                conversation: C.into(),
                message_id: "o".into(),
                node: 1,
                sent_to: Some("g-other".into()),
                read: r,
            },
            Anomaly::ChatPhantom {
                conversation: C.into(),
                message_id: "zzz".into(),
                node: 1,
                sent_to: None,
                read: r,
            },
        ]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::ChatFailedVisible),
        [Anomaly::ChatFailedVisible {
            conversation: C.into(),
            message_id: "f".into(),
            node: 1,
            op: refused,
            read: r,
        }]
    );
}

#[test]
fn nothing_acknowledged_or_an_unread_conversation_is_unknown() {
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Info);
    read(&mut s, 1, C, &[]);
    assert_eq!(checked(&s).valid, Validity::Unknown);
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Ok);
    assert_eq!(checked(&s).valid, Validity::Unknown);
}

#[test]
fn only_the_last_ok_read_of_a_node_counts() {
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Ok);
    read(&mut s, 1, C, &[]);
    read(&mut s, 1, C, &["a"]);
    assert_eq!(checked(&s).valid, Validity::Valid);
}

/// An `ok` stream of user `u` (in `C`, in the first of two partitions) from cursor 0:
/// `(cursor, message id)` message events, after a `conversation_created` event at cursor
/// `1-0`.
fn stream(s: &mut Script, events: &[(&str, &str)]) -> u64 {
    let empty = ChatEvents {
        user: "u".into(),
        node: 2,
        after: "0".into(),
        conversations: vec![C.into()],
        events: Vec::new(),
    };
    let mut full = empty.clone();
    full.events.push(ChatEvent {
        cursor: "1-0".into(),
        kind: "conversation_created".into(),
        conversation: Some(C.into()),
        message_id: None,
    });
    for &(cursor, id) in events {
        full.events.push(ChatEvent {
            cursor: cursor.into(),
            kind: "message".into(),
            conversation: Some(C.into()),
            message_id: Some(id.into()),
        });
    }
    s.pair(
        200,
        OpType::Ok,
        Call::ChatEvents(empty),
        Call::ChatEvents(full),
    )
}

#[test]
fn a_stream_with_every_message_once_in_history_order_is_valid() {
    let mut s = Script::new();
    attempt(&mut s, 0, 0, "a", OpType::Ok);
    attempt(&mut s, 1, 1, "b", OpType::Info);
    read(&mut s, 1, C, &["a", "b"]);
    // Positions skip the partition's events for other users.
    stream(&mut s, &[("2-0", "a"), ("5-0", "b")]);
    assert_eq!(checked(&s).valid, Validity::Valid);
}

#[test]
fn a_cursor_moves_one_partition_forward_and_no_other() {
    assert!(advances("0", "1-0"));
    assert!(advances("0", "0-3"));
    assert!(advances("1-0", "4-0"));
    assert!(advances("4-0", "4-2"));
    assert!(!advances("1-0", "1-0"), "a repeat");
    assert!(!advances("2-0", "1-1"), "a step back");
    assert!(!advances("1-0", "2-1"), "two at once");
    assert!(!advances("1-0", "2-0-0"), "another length");
    assert!(!advances("1-0", "x"), "garbage");
    assert!(!advances("7", "1-0"), "a number alone is only 0");
}

#[test]
fn streams_must_deliver_every_acknowledged_message_once_in_order_with_advancing_cursors() {
    let mut s = Script::new();
    let a = attempt(&mut s, 0, 0, "a", OpType::Ok);
    attempt(&mut s, 0, 0, "b", OpType::Ok);
    attempt(&mut s, 0, 0, "c", OpType::Ok);
    read(&mut s, 1, C, &["a", "b", "c"]);
    // `a` missing, `c` before `b`, `c` twice at a cursor that did not move, and a message
    // nobody sent.
    let r = stream(
        &mut s,
        &[("2-0", "c"), ("3-0", "b"), ("3-0", "c"), ("4-0", "x")],
    );
    let verdict = checked(&s);
    assert_eq!(
        verdict.bad,
        [
            AnomalyKind::ChatPhantom,
            AnomalyKind::ChatEventLost,
            AnomalyKind::ChatEventDuplicate,
            AnomalyKind::ChatEventOrder,
            AnomalyKind::ChatEventCursor,
        ]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::ChatEventLost),
        [Anomaly::ChatEventLost {
            user: "u".into(),
            conversation: C.into(),
            message_id: "a".into(),
            node: 2,
            op: a,
            read: r,
        }]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::ChatEventOrder),
        [Anomaly::ChatEventOrder {
            user: "u".into(),
            conversation: C.into(),
            node: 2,
            message_ids: ["c".into(), "b".into()],
            cursors: ["2-0".into(), "3-0".into()],
            positions: [2, 1],
            read: r,
        }]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::ChatEventDuplicate),
        [Anomaly::ChatEventDuplicate {
            user: "u".into(),
            message_id: "c".into(),
            node: 2,
            cursors: vec!["2-0".into(), "3-0".into()],
            read: r,
        }]
    );
    assert_eq!(
        verdict.examples(AnomalyKind::ChatEventCursor),
        [Anomaly::ChatEventCursor {
            user: "u".into(),
            node: 2,
            cursors: ["3-0".into(), "3-0".into()],
            read: r,
        }]
    );
}
