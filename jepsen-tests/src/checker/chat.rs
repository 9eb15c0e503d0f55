//! The chat checker: what a chat's users must be able to rely on, judged from `chat-send`
//! attempts and `chat-read`s of every conversation's whole history through every node (after
//! the faults healed).
//!
//! | kind | what |
//! |---|---|
//! | `chat-lost-ack` | an acknowledged message (202, or 200 for a retry) missing from its conversation's history on a node |
//! | `chat-duplicate` | one `message_id` twice in a history (a retry of an unknown outcome must never write it again) |
//! | `chat-order-divergence` | two nodes' histories of one conversation differ (order, content or length): SC-004, one order for every reader |
//! | `chat-sender-order` | a client's acknowledged message `a`, acknowledged before the client first sent `b` to the same conversation, after `b` in a history |
//! | `chat-phantom` | a message in a history that no attempt sent to that conversation |
//! | `chat-failed-visible` | a message whose every attempt was definitely refused (4xx other than 429, first attempt) in a history |
//! | `chat-event-lost` | an acknowledged message of a conversation missing from a participant's event stream (read from cursor 0 after the heal) |
//! | `chat-event-duplicate` | one message twice in an event stream (it promises exactly once) |
//! | `chat-event-order` | two messages of one conversation in a stream in another order than the conversation's history (as the lowest node returned it) |
//! | `chat-event-cursor` | a stream's cursors not 1, 2, 3, ... after the one asked for |
//!
//! Every kind is invalid. Each read is judged on its own, so an anomaly present on every node
//! counts once per node. Only the last `ok` read of each (conversation, node) counts. The
//! verdict is `unknown` when nothing was acknowledged or a conversation with acknowledged
//! messages was never read completely.

use std::collections::BTreeMap;

use crate::anomaly::Anomaly;
use crate::checker::{CheckConfig, outcome_counts};
use crate::history::History;
use crate::op::{Call, ChatEvents, ChatRead, OpType};
use crate::verdict::Verdict;

/// What the history says about one `message_id`.
#[derive(Debug, Default)]
struct Message {
    conversation: String,
    client: u64,
    /// Index of its first attempt's invocation.
    first_invoke: u64,
    /// Index of its first `ok` completion.
    ack: Option<u64>,
    /// Index of a `fail` completion.
    refused: Option<u64>,
    /// Some attempt ended `info` (or never ended).
    unknown: bool,
}

/// Checks a chat history.
pub fn check(history: &History, config: &CheckConfig) -> Verdict {
    let mut messages: BTreeMap<String, Message> = BTreeMap::new();
    for op in history.ops() {
        if let (OpType::Invoke, Call::ChatSend(send)) = (op.kind, &op.call) {
            messages
                .entry(send.message_id.clone())
                .or_insert_with(|| Message {
                    conversation: send.conversation.clone(),
                    client: send.client,
                    first_invoke: op.index,
                    ..Message::default()
                });
        }
    }
    // The last ok read of each conversation through each node: (read index, read).
    let mut reads: BTreeMap<String, BTreeMap<u32, (u64, ChatRead)>> = BTreeMap::new();
    let mut streams: Vec<(u64, ChatEvents)> = Vec::new();
    for op in history.completions() {
        match &op.call {
            Call::ChatSend(send) => {
                let Some(m) = messages.get_mut(&send.message_id) else {
                    continue;
                };
                match op.kind {
                    OpType::Ok => {
                        m.ack.get_or_insert(op.index);
                    }
                    OpType::Fail => m.refused = Some(op.index),
                    _ => m.unknown = true,
                }
            }
            Call::ChatRead(read) if op.kind == OpType::Ok => {
                reads
                    .entry(read.conversation.clone())
                    .or_default()
                    .insert(read.node, (op.index, read.clone()));
            }
            Call::ChatEvents(stream) if op.kind == OpType::Ok => {
                streams.push((op.index, stream.clone()));
            }
            _ => {}
        }
    }

    let mut found = Vec::new();
    let mut acked_by_conversation: BTreeMap<&str, Vec<(&str, &Message)>> = BTreeMap::new();
    for (id, m) in &messages {
        if m.ack.is_some() {
            acked_by_conversation
                .entry(&m.conversation)
                .or_default()
                .push((id, m));
        }
    }
    let mut observed = !acked_by_conversation.is_empty();
    for conversation in acked_by_conversation.keys() {
        if !reads.contains_key(*conversation) {
            observed = false;
        }
    }
    let no_acks = Vec::new();
    for (conversation, by_node) in &reads {
        let acked = acked_by_conversation
            .get(conversation.as_str())
            .unwrap_or(&no_acks);
        for (&node, (read_op, read)) in by_node {
            check_read(
                conversation,
                node,
                *read_op,
                read,
                &messages,
                acked,
                &mut found,
            );
        }
        // Every node's history against the lowest node's.
        let mut nodes = by_node.iter();
        if let Some((&first, (first_op, reference))) = nodes.next() {
            for (&node, (op, read)) in nodes {
                if let Some(anomaly) = divergence(
                    conversation,
                    [first, node],
                    [*first_op, *op],
                    reference,
                    read,
                ) {
                    found.push(anomaly);
                }
            }
        }
    }
    // Each conversation's history as the lowest node returned it: message id -> position.
    let reference: BTreeMap<&str, BTreeMap<&str, usize>> = reads
        .iter()
        .filter_map(|(c, by_node)| {
            let (_, (_, read)) = by_node.iter().next()?;
            let positions = read
                .messages
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id.as_str(), i))
                .rev()
                .collect();
            Some((c.as_str(), positions))
        })
        .collect();
    for (op, stream) in &streams {
        check_stream(
            *op,
            stream,
            &messages,
            &acked_by_conversation,
            &reference,
            &mut found,
        );
    }
    Verdict::new(
        "chat",
        found,
        &[],
        observed,
        outcome_counts(history),
        config.max_examples,
    )
}

/// Lost acknowledgements, duplicates, phantoms, refused messages and per-sender order in one
/// node's history of `conversation`.
fn check_read(
    conversation: &str,
    node: u32,
    read_op: u64,
    read: &ChatRead,
    messages: &BTreeMap<String, Message>,
    acked: &[(&str, &Message)],
    found: &mut Vec<Anomaly>,
) {
    // Each id's positions and offsets, in history order.
    let mut at: BTreeMap<&str, Vec<(usize, u64)>> = BTreeMap::new();
    for (position, message) in read.messages.iter().enumerate() {
        at.entry(&message.id)
            .or_default()
            .push((position, message.offset));
    }
    for (id, places) in &at {
        if places.len() > 1 {
            found.push(Anomaly::ChatDuplicate {
                conversation: conversation.to_owned(),
                message_id: (*id).to_owned(),
                node,
                offsets: places.iter().map(|&(_, offset)| offset).collect(),
                read: read_op,
            });
        }
        match messages.get(*id) {
            Some(m) if m.conversation == conversation => {
                if let (Some(refused), None, false) = (m.refused, m.ack, m.unknown) {
                    found.push(Anomaly::ChatFailedVisible {
                        conversation: conversation.to_owned(),
                        message_id: (*id).to_owned(),
                        node,
                        op: refused,
                        read: read_op,
                    });
                }
            }
            other => found.push(Anomaly::ChatPhantom {
                conversation: conversation.to_owned(),
                message_id: (*id).to_owned(),
                node,
                sent_to: other.map(|m| m.conversation.clone()),
                read: read_op,
            }),
        }
    }
    for (id, m) in acked {
        if !at.contains_key(id) {
            found.push(Anomaly::ChatLostAck {
                conversation: conversation.to_owned(),
                message_id: (*id).to_owned(),
                client: m.client,
                node,
                op: m.ack.unwrap_or_default(),
                read: read_op,
            });
        }
    }
    // Per client, its acknowledged messages present here, in the order of their acks.
    let mut by_client: BTreeMap<u64, Vec<(u64, &str, &Message)>> = BTreeMap::new();
    for (id, m) in acked {
        if let Some(ack) = m.ack
            && at.contains_key(id)
        {
            by_client.entry(m.client).or_default().push((ack, id, m));
        }
    }
    for (client, mut list) in by_client {
        list.sort_by_key(|&(ack, _, _)| ack);
        for pair in list.windows(2) {
            let ((ack_a, id_a, _), (ack_b, id_b, b)) = (pair[0], pair[1]);
            // Only when `a` was acknowledged before `b` was first sent.
            if ack_a >= b.first_invoke {
                continue;
            }
            let (pos_a, pos_b) = (at[id_a][0].0, at[id_b][0].0);
            if pos_a > pos_b {
                found.push(Anomaly::ChatSenderOrder {
                    conversation: conversation.to_owned(),
                    client,
                    node,
                    message_ids: [id_a.to_owned(), id_b.to_owned()],
                    positions: [pos_a, pos_b],
                    ops: [ack_a, ack_b],
                });
            }
        }
    }
}

/// Whether the stream cursor `next` is one event past `prev`: each is the next offset to read
/// in every `chat.messages` partition, joined by `-`, and exactly one partition's position moved
/// forward (by any amount: the partition holds other users' events too) while none moved back.
/// `prev` may be the start cursor `0`, which stands for every position at 0.
fn advances(prev: &str, next: &str) -> bool {
    let parse = |c: &str| -> Option<Vec<u64>> { c.split('-').map(|p| p.parse().ok()).collect() };
    let (Some(b), Some(mut a)) = (parse(next), parse(prev)) else {
        return false;
    };
    if a == [0] {
        a = vec![0; b.len()];
    }
    a.len() == b.len()
        && a.iter().zip(&b).filter(|(x, y)| x != y).count() == 1
        && a.iter().zip(&b).all(|(x, y)| y >= x)
}

/// Cursors, duplicates, phantoms, lost acknowledged messages and per-conversation order in one
/// user's event stream.
fn check_stream(
    read: u64,
    stream: &ChatEvents,
    messages: &BTreeMap<String, Message>,
    acked: &BTreeMap<&str, Vec<(&str, &Message)>>,
    reference: &BTreeMap<&str, BTreeMap<&str, usize>>,
    found: &mut Vec<Anomaly>,
) {
    let (user, node) = (stream.user.clone(), stream.node);
    let mut previous = stream.after.as_str();
    for event in &stream.events {
        if !advances(previous, &event.cursor) {
            found.push(Anomaly::ChatEventCursor {
                user: user.clone(),
                node,
                cursors: [previous.to_owned(), event.cursor.clone()],
                read,
            });
        }
        previous = &event.cursor;
    }
    // Message events: id -> (conversation, cursors).
    let mut seen: BTreeMap<&str, (&str, Vec<String>)> = BTreeMap::new();
    // Per conversation, the last message so far with its cursor and history position.
    let mut last: BTreeMap<&str, (&str, &str, usize)> = BTreeMap::new();
    for event in &stream.events {
        let (Some(id), Some(conversation)) = (&event.message_id, &event.conversation) else {
            continue;
        };
        let entry = seen
            .entry(id)
            .or_insert_with(|| (conversation.as_str(), Vec::new()));
        entry.1.push(event.cursor.clone());
        if entry.1.len() > 1 {
            continue;
        }
        match messages.get(id.as_str()) {
            Some(m) if &m.conversation == conversation => {}
            other => found.push(Anomaly::ChatPhantom {
                conversation: conversation.clone(),
                message_id: id.clone(),
                node,
                sent_to: other.map(|m| m.conversation.clone()),
                read,
            }),
        }
        let Some(position) = reference
            .get(conversation.as_str())
            .and_then(|positions| positions.get(id.as_str()))
        else {
            continue;
        };
        if let Some(&(before, cursor, before_position)) = last.get(conversation.as_str())
            && before_position > *position
        {
            found.push(Anomaly::ChatEventOrder {
                user: user.clone(),
                conversation: conversation.clone(),
                node,
                message_ids: [before.to_owned(), id.clone()],
                cursors: [cursor.to_owned(), event.cursor.clone()],
                positions: [before_position, *position],
                read,
            });
        }
        last.insert(conversation, (id, &event.cursor, *position));
    }
    for (id, (_, cursors)) in &seen {
        if cursors.len() > 1 {
            found.push(Anomaly::ChatEventDuplicate {
                user: user.clone(),
                message_id: (*id).to_owned(),
                node,
                cursors: cursors.clone(),
                read,
            });
        }
    }
    for conversation in &stream.conversations {
        for (id, m) in acked.get(conversation.as_str()).into_iter().flatten() {
            if !seen.contains_key(id) {
                found.push(Anomaly::ChatEventLost {
                    user: user.clone(),
                    conversation: conversation.clone(),
                    message_id: (*id).to_owned(),
                    node,
                    op: m.ack.unwrap_or_default(),
                    read,
                });
            }
        }
    }
}

/// The first position where two nodes' histories of `conversation` differ, if they do.
fn divergence(
    conversation: &str,
    nodes: [u32; 2],
    reads: [u64; 2],
    a: &ChatRead,
    b: &ChatRead,
) -> Option<Anomaly> {
    let (ids_a, ids_b): (Vec<&str>, Vec<&str>) = (
        a.messages.iter().map(|m| m.id.as_str()).collect(),
        b.messages.iter().map(|m| m.id.as_str()).collect(),
    );
    if ids_a == ids_b {
        return None;
    }
    let position = ids_a
        .iter()
        .zip(&ids_b)
        .position(|(x, y)| x != y)
        .unwrap_or(ids_a.len().min(ids_b.len()));
    let id = |ids: &[&str]| ids.get(position).map(|s| (*s).to_owned());
    Some(Anomaly::ChatOrderDivergence {
        conversation: conversation.to_owned(),
        nodes,
        position,
        ids: [id(&ids_a), id(&ids_b)],
        lengths: [ids_a.len(), ids_b.len()],
        reads,
    })
}

#[cfg(test)]
mod tests;
