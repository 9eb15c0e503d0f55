//! One operation of a history (Jepsen's `{index, time, process, type, f, value, error}`) and the
//! typed `f`/`value` pairs of the queue and kafka workloads, and of consumer groups.
//!
//! One JSON line per operation, for example:
//!
//! ```text
//! {"index":4,"time":1200,"process":1,"type":"invoke","f":"send","value":[{"key":0,"value":7}]}
//! {"index":5,"time":9100,"process":1,"type":"ok","f":"send","value":[{"key":0,"value":7,"offset":3}]}
//! {"index":6,"time":9300,"process":2,"type":"ok","f":"poll","value":{"records":{"0":[[3,7]]}}}
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{Key, Offset, Process, Value};

/// The type of an operation: its invocation, or how it completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpType {
    /// The client is about to issue the request.
    Invoke,
    /// The operation definitely happened, with the completion's value as its result.
    Ok,
    /// The operation definitely did not happen.
    Fail,
    /// Indeterminate: it may or may not have happened (timeouts, lost connections, crashes).
    /// The process is retired afterwards.
    Info,
}

/// One operation: an invocation or a completion.
///
/// A completion carries the same `f` as its invocation and its own `value`: for a send, the
/// offsets the broker assigned; for a poll, the records it returned; for an `info` or `fail`
/// completion, usually the invocation's value unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0 without gaps.
    pub index: u64,
    /// Nanoseconds since the start of the test, non-decreasing along the history.
    pub time: u64,
    /// The process that performed the operation.
    pub process: Process,
    /// Invocation or completion type.
    #[serde(rename = "type")]
    pub kind: OpType,
    /// The function and its value (`"f"` and `"value"` in JSON).
    #[serde(flatten)]
    pub call: Call,
    /// Why the operation failed or is indeterminate, for people reading the history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Op {
    /// The sends of a `send` operation; empty for every other function.
    pub fn sends(&self) -> &[Send] {
        match &self.call {
            Call::Send(sends) => sends,
            _ => &[],
        }
    }

    /// The poll result of a `poll` operation; `None` for every other function.
    pub fn poll(&self) -> Option<&Poll> {
        match &self.call {
            Call::Poll(poll) => Some(poll),
            _ => None,
        }
    }
}

/// The function of an operation (`f`) with its value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "f", content = "value", rename_all = "kebab-case")]
pub enum Call {
    /// Kafka workload: send values to keys, in order, through one producer.
    Send(Vec<Send>),
    /// Kafka workload: one consumer poll. Empty at invocation.
    Poll(Poll),
    /// Kafka workload: assign the consumer these keys, replacing its assignment.
    Assign(Assign),
    /// Kafka workload: subscribe the consumer to the topics of these keys (consumer groups); the
    /// cluster then picks the partitions, so skips between polls become legitimate.
    Subscribe(Vec<Key>),
    /// Close and replace the client. Record its completion as `info`.
    Crash,
    /// Queue workload: enqueue one value.
    Enqueue(Value),
    /// Queue workload: dequeue one value; an `ok` completion with `null` means the queue was empty.
    Dequeue(Option<Value>),
    /// Queue workload: dequeue everything that is left; the `ok` completion lists it all.
    Drain(Vec<Value>),
    /// A fault injected or healed by the nemesis, free-form (for example
    /// `{"fault": "partition", "nodes": ["n1"]}`); checkers ignore it, plots use it.
    Nemesis(serde_json::Value),
    /// Consumer groups: one heartbeat of a member (join, stay or leave).
    Heartbeat(Heartbeat),
    /// Consumer groups: a member commits offsets.
    Commit(Commit),
    /// Consumer groups: a read of the group's committed offsets.
    Offsets(Offsets),
    /// Chat workload: one attempt to send a message (retries keep its `message_id`).
    ChatSend(ChatSend),
    /// Chat workload: a conversation's whole history, read through one node.
    ChatRead(ChatRead),
    /// Chat workload: a user's event stream (`GET /v1/events`) from its start, through one node.
    ChatEvents(ChatEvents),
}

impl Call {
    /// The function's name as written in `f`.
    pub fn f(&self) -> &'static str {
        match self {
            Call::Send(_) => "send",
            Call::Poll(_) => "poll",
            Call::Assign(_) => "assign",
            Call::Subscribe(_) => "subscribe",
            Call::Crash => "crash",
            Call::Enqueue(_) => "enqueue",
            Call::Dequeue(_) => "dequeue",
            Call::Drain(_) => "drain",
            Call::Nemesis(_) => "nemesis",
            Call::Heartbeat(_) => "heartbeat",
            Call::Commit(_) => "commit",
            Call::Offsets(_) => "offsets",
            Call::ChatSend(_) => "chat-send",
            Call::ChatRead(_) => "chat-read",
            Call::ChatEvents(_) => "chat-events",
        }
    }
}

/// One send inside a `send` operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Send {
    /// The key (topic-partition) written to.
    pub key: Key,
    /// The unique value written.
    pub value: Value,
    /// The offset the broker assigned, when the completion knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<Offset>,
}

/// The result of one poll: per key, the records returned in the order the consumer saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Poll {
    /// Records per key, in delivery order.
    #[serde(default)]
    pub records: BTreeMap<Key, Vec<Record>>,
    /// Keys whose assignment changed during the poll (Jepsen's `:rebalance-log`); ordering checks
    /// inside this poll skip them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub rebalanced: BTreeSet<Key>,
}

/// One record returned by a poll; serialised as `[offset, value]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(Offset, Value)", into = "(Offset, Value)")]
pub struct Record {
    /// The record's offset in its key's log.
    pub offset: Offset,
    /// The value stored at that offset.
    pub value: Value,
}

impl From<(Offset, Value)> for Record {
    fn from((offset, value): (Offset, Value)) -> Self {
        Record { offset, value }
    }
}

impl From<Record> for (Offset, Value) {
    fn from(record: Record) -> Self {
        (record.offset, record.value)
    }
}

/// The value of an `assign` operation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assign {
    /// The keys assigned; they replace the previous assignment.
    pub keys: Vec<Key>,
    /// Whether the consumer then seeks to the beginning of every assigned key (the final reads).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seek_to_beginning: bool,
}

/// Member epoch sent to join a group.
pub const JOIN_EPOCH: i64 = 0;
/// Member epoch sent to leave a group.
pub const LEAVE_EPOCH: i64 = -1;

/// The value of a `heartbeat` operation (KIP-848's `ConsumerGroupHeartbeat`): what the member
/// sent, and, on an `ok` completion, what the coordinator answered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The member id sent (none when joining).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// The member epoch sent: [`JOIN_EPOCH`], [`LEAVE_EPOCH`], or the epoch the member's last
    /// reply carried.
    pub epoch: i64,
    /// The keys the member reported it still owns (a stay heartbeat; the others send none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned: Vec<Key>,
    /// On an `ok` completion: the coordinator's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<HeartbeatReply>,
    /// On a `fail` completion: the refusal's error code (`FENCED`, `UNAVAILABLE`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The node the request went to (for people reading the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
}

/// A heartbeat's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The member's id (chosen by the coordinator when it joined).
    pub member: String,
    /// The member's epoch now (-1 after a leave).
    pub epoch: i64,
    /// The keys the member may own now; it must stop using any other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assignment: Vec<Key>,
    /// Keys taken from the member: it still owns them until a heartbeat of its no longer lists
    /// them as owned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoking: Vec<Key>,
    /// The group's committed offset of each assigned key (`null`: none yet), as the coordinator
    /// read it while answering.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub committed: BTreeMap<Key, Option<Offset>>,
}

/// The value of a `commit` operation: a member commits, per key, the next offset to read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// The committing member.
    pub member: String,
    /// Its epoch, as its last heartbeat reply gave it.
    pub epoch: i64,
    /// Per key, the next offset to read.
    pub offsets: BTreeMap<Key, Offset>,
    /// On a `fail` completion: the refusal's error code (`FENCED`, `UNAVAILABLE`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The node the request went to (for people reading the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
}

/// The value of an `offsets` operation: the group's committed offsets, read back. Empty at
/// invocation; on an `ok` completion, every key with a committed offset (a key missing has
/// none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offsets {
    /// Per key, the committed offset (the next offset to read).
    #[serde(default)]
    pub offsets: BTreeMap<Key, Offset>,
    /// The coordinator answered that the group does not exist (so it has no offsets).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// The node the request went to (for people reading the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
}

/// The value of a `chat-send` operation: one attempt to send a message. Every attempt of a
/// message carries the same `message_id` (the node stores an id once: a retry is answered with
/// the original), so the attempts of one message are one logical write.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatSend {
    /// The conversation sent to.
    pub conversation: String,
    /// The client-chosen id (a UUID), unique in the run.
    pub message_id: String,
    /// The workload client that sends it (sequentially, one message at a time); it keeps its
    /// number when its process is retired.
    pub client: u64,
    /// On an `ok` completion: the offset the node answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The node the attempt went to (for people reading the history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<u32>,
}

/// One message of a conversation's history as a read returned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Its `message_id`.
    pub id: String,
    /// Its offset in the conversation's partition.
    pub offset: u64,
}

/// The value of a `chat-read` operation: a conversation's whole history read through one node,
/// oldest first, page after page. Empty at invocation; an `ok` completion has every page.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRead {
    /// The conversation read.
    pub conversation: String,
    /// The node every page was read from.
    pub node: u32,
    /// On an `ok` completion: the history, oldest first.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
}

/// One event of a user's stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvent {
    /// Its `id:`: the stream's cursor after it, the next offset to read in each
    /// `chat.messages` partition, joined by `-`.
    pub cursor: String,
    /// Its `event:` (`message`, `status`, `conversation_created`, ...).
    pub kind: String,
    /// Its conversation, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<String>,
    /// For a `message` event: the message's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// The value of a `chat-events` operation: a user's event stream read from `after` (`0`: from
/// the start) through one node. An `ok` completion has the events received before the reader
/// stopped (the stream never ends by itself).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEvents {
    /// The user whose stream it is.
    pub user: String,
    /// The node streamed from.
    pub node: u32,
    /// The cursor asked for (`?cursor=`).
    pub after: String,
    /// The conversations the user is in: every acknowledged message of these must arrive.
    pub conversations: Vec<String>,
    /// On an `ok` completion: the events, in arrival order.
    #[serde(default)]
    pub events: Vec<ChatEvent>,
}
