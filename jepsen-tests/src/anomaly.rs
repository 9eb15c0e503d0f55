//! The anomalies the checkers report, named as Jepsen names them (the consumer-group kinds,
//! which Jepsen does not have, in the same style), each with the exact values, keys, offsets
//! and operations (by index) that show it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Key, Offset, Process, Value};

/// The kind of an anomaly, serialised with Jepsen's keyword name (`"lost-write"`, `"G1a"`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AnomalyKind {
    /// total-queue: an acknowledged enqueue never dequeued.
    Lost,
    /// total-queue: a value dequeued that was never enqueued; kafka: a value polled that was
    /// never sent to its key.
    Unexpected,
    /// total-queue: a value dequeued more often than it was enqueued (allowed).
    Duplicated,
    /// total-queue: a value whose enqueue was indeterminate or failed, yet was dequeued (allowed).
    Recovered,
    /// kafka: one offset of a key holds two or more values.
    InconsistentOffsets,
    /// kafka: one value sits at two or more offsets of a key.
    Duplicate,
    /// kafka: a committed value below the highest index an `ok` poll read, never read by an `ok`
    /// poll.
    LostWrite,
    /// kafka: an acknowledged value no `ok` poll ever returned (at the end of the history).
    Unseen,
    /// kafka: an `ok` poll returned a value whose send failed (aborted read).
    #[serde(rename = "G1a")]
    G1a,
    /// kafka: a process's next poll of a key jumped over values that exist.
    PollSkip,
    /// kafka: a process's next poll of a key started at or before where its last poll ended.
    NonmonotonicPoll,
    /// kafka: consecutive records of a key inside one poll jump over values that exist.
    IntPollSkip,
    /// kafka: consecutive records of a key inside one poll go backwards or repeat.
    IntNonmonotonicPoll,
    /// kafka: consecutive sends to a key inside one operation land apart (allowed).
    IntSendSkip,
    /// kafka: consecutive sends to a key inside one operation land out of order.
    IntNonmonotonicSend,
    /// kafka: a process's later send to a key landed at or before its previous send.
    NonmonotonicSend,
    /// group: a read of a key's committed offset showed less than an earlier read did.
    CommittedOffsetRegression,
    /// group: a read of a key's committed offset showed less than an earlier `ok` commit.
    LostCommit,
    /// group: two members owned one key at the same time.
    DoubleAssignment,
    /// group: a commit succeeded after the coordinator had answered its member `FENCED`, or
    /// after the member left.
    ZombieCommit,
    /// group: a commit succeeded from a member silent for longer than the session timeout
    /// (allowed: a new coordinator starts every member's session again).
    LateCommit,
    /// group: a record below a committed offset that no member of the group ever polled.
    GroupPollSkip,
    /// chat: an acknowledged message missing from its conversation's history on a node.
    ChatLostAck,
    /// chat: one `message_id` twice in a conversation's history.
    ChatDuplicate,
    /// chat: two nodes return different histories (order or content) for one conversation.
    ChatOrderDivergence,
    /// chat: a client's acknowledged messages out of the order it got their acknowledgements.
    ChatSenderOrder,
    /// chat: a message in a history that was never sent to that conversation.
    ChatPhantom,
    /// chat: a message whose send was definitely refused, yet in a history.
    ChatFailedVisible,
    /// chat: an acknowledged message missing from a participant's event stream.
    ChatEventLost,
    /// chat: one message twice in a user's event stream.
    ChatEventDuplicate,
    /// chat: two messages of a conversation in a user's event stream in another order than its
    /// history.
    ChatEventOrder,
    /// chat: an event stream's cursor that does not move one partition forward and no other.
    ChatEventCursor,
}

impl AnomalyKind {
    /// Jepsen's name for the kind.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::Lost => "lost",
            AnomalyKind::Unexpected => "unexpected",
            AnomalyKind::Duplicated => "duplicated",
            AnomalyKind::Recovered => "recovered",
            AnomalyKind::InconsistentOffsets => "inconsistent-offsets",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::Unseen => "unseen",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::PollSkip => "poll-skip",
            AnomalyKind::NonmonotonicPoll => "nonmonotonic-poll",
            AnomalyKind::IntPollSkip => "int-poll-skip",
            AnomalyKind::IntNonmonotonicPoll => "int-nonmonotonic-poll",
            AnomalyKind::IntSendSkip => "int-send-skip",
            AnomalyKind::IntNonmonotonicSend => "int-nonmonotonic-send",
            AnomalyKind::NonmonotonicSend => "nonmonotonic-send",
            AnomalyKind::CommittedOffsetRegression => "committed-offset-regression",
            AnomalyKind::LostCommit => "lost-commit",
            AnomalyKind::DoubleAssignment => "double-assignment",
            AnomalyKind::ZombieCommit => "zombie-commit",
            AnomalyKind::LateCommit => "late-commit",
            AnomalyKind::GroupPollSkip => "group-poll-skip",
            AnomalyKind::ChatLostAck => "chat-lost-ack",
            AnomalyKind::ChatDuplicate => "chat-duplicate",
            AnomalyKind::ChatOrderDivergence => "chat-order-divergence",
            AnomalyKind::ChatSenderOrder => "chat-sender-order",
            AnomalyKind::ChatPhantom => "chat-phantom",
            AnomalyKind::ChatFailedVisible => "chat-failed-visible",
            AnomalyKind::ChatEventLost => "chat-event-lost",
            AnomalyKind::ChatEventDuplicate => "chat-event-duplicate",
            AnomalyKind::ChatEventOrder => "chat-event-order",
            AnomalyKind::ChatEventCursor => "chat-event-cursor",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One instance of an anomaly. Operations are named by their history index; `index` fields
/// are dense positions in a key's version order (offsets with no value removed), `delta` is the
/// difference of two such positions (1 means adjacent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Anomaly {
    /// total-queue `lost`: `value` was acknowledged `count` more times than it was dequeued.
    Lost { value: Value, count: usize },
    /// total-queue `unexpected`: `value` was dequeued `count` times but never enqueued.
    Unexpected { value: Value, count: usize },
    /// total-queue `duplicated`: `value` was dequeued `count` more times than it was attempted.
    Duplicated { value: Value, count: usize },
    /// total-queue `recovered`: `value` was dequeued `count` times without an `ok` enqueue.
    Recovered { value: Value, count: usize },
    /// kafka `unexpected`: `reader` (the first of them) polled `value` from `key`, where no
    /// operation ever tried to send it.
    UnexpectedPoll { key: Key, value: Value, reader: u64 },
    /// kafka `inconsistent-offsets`: `offset` of `key` (at `index`) holds all of `values`.
    InconsistentOffset {
        key: Key,
        offset: Offset,
        index: usize,
        values: Vec<Value>,
    },
    /// kafka `duplicate`: `value` appears at `count` offsets of `key`.
    Duplicate {
        key: Key,
        value: Value,
        count: usize,
        offsets: Vec<Offset>,
    },
    /// kafka `lost-write`: `value`, first at `index`, was written by the committed operation
    /// `writer` but no `ok` poll read it, although `max_read` read up to `max_read_index`.
    LostWrite {
        key: Key,
        value: Value,
        index: usize,
        max_read_index: usize,
        writer: u64,
        max_read: u64,
    },
    /// kafka `unseen`: `value`, acknowledged by `writer`, was never returned by an `ok` poll.
    Unseen { key: Key, value: Value, writer: u64 },
    /// kafka `G1a`: the `ok` poll `reader` returned `value`, whose send `writer` failed.
    AbortedRead {
        key: Key,
        value: Value,
        writer: u64,
        reader: u64,
    },
    /// kafka `poll-skip`: `process` polled `values[0]` of `key` in `ops[0]`, then started at
    /// `values[1]` in `ops[1]`, jumping over `skipped`.
    PollSkip {
        key: Key,
        process: Process,
        values: [Value; 2],
        delta: i64,
        skipped: Vec<Value>,
        ops: [u64; 2],
    },
    /// kafka `nonmonotonic-poll`: `process` ended a poll of `key` at `values[0]` in `ops[0]`,
    /// then started its next one at `values[1]`, at or before it.
    NonmonotonicPoll {
        key: Key,
        process: Process,
        values: [Value; 2],
        delta: i64,
        ops: [u64; 2],
    },
    /// kafka `int-poll-skip`: inside poll `op`, `values[1]` followed `values[0]`, jumping over
    /// `skipped`.
    IntPollSkip {
        key: Key,
        values: [Value; 2],
        delta: i64,
        skipped: Vec<Value>,
        op: u64,
    },
    /// kafka `int-nonmonotonic-poll`: inside poll `op`, `values[1]` followed `values[0]` though
    /// it is not after it.
    IntNonmonotonicPoll {
        key: Key,
        values: [Value; 2],
        delta: i64,
        op: u64,
    },
    /// kafka `int-send-skip`: inside send `op`, `values[1]` landed apart from `values[0]`, with
    /// `skipped` between them.
    IntSendSkip {
        key: Key,
        values: [Value; 2],
        delta: i64,
        skipped: Vec<Value>,
        op: u64,
    },
    /// kafka `int-nonmonotonic-send`: inside send `op`, `values[1]` was sent after `values[0]`
    /// but landed at or before it.
    IntNonmonotonicSend {
        key: Key,
        values: [Value; 2],
        delta: i64,
        op: u64,
    },
    /// kafka `nonmonotonic-send`: `process` sent `values[0]` to `key` last in `ops[0]`, then
    /// `values[1]` first in `ops[1]`, which landed at or before it.
    NonmonotonicSend {
        key: Key,
        process: Process,
        values: [Value; 2],
        delta: i64,
        ops: [u64; 2],
    },
    /// group `committed-offset-regression`: the read `ops[1]` showed `offsets[1]` (`null`:
    /// none) as the committed offset of `key`, below the `offsets[0]` that the read `ops[0]`,
    /// complete before `ops[1]` began, showed; and no commit of `offsets[1]` could have taken
    /// effect between them.
    CommittedOffsetRegression {
        key: Key,
        offsets: [Option<Offset>; 2],
        ops: [u64; 2],
    },
    /// group `lost-commit`: the read `ops[1]` showed `offsets[1]` (`null`: none) as the
    /// committed offset of `key`, below the `offsets[0]` that `member`'s `ok` commit `ops[0]`,
    /// complete before `ops[1]` began, committed; and no commit of `offsets[1]` could have taken
    /// effect between them.
    LostCommit {
        key: Key,
        member: String,
        offsets: [Option<Offset>; 2],
        ops: [u64; 2],
    },
    /// group `double-assignment`: `members[0]` owned `key` by the heartbeat reply `ops[0]`,
    /// `members[1]` by `ops[1]`, and both still did (as far as the client can tell) from
    /// `window_ms[0]` to `window_ms[1]` (ms since the start of the history).
    DoubleAssignment {
        key: Key,
        members: [String; 2],
        ops: [u64; 2],
        window_ms: [u64; 2],
    },
    /// group `zombie-commit`: `member` (epoch `epoch`) was answered `FENCED` by `ops[0]` (or
    /// left by it), and its commit `ops[1]`, begun after that answer, succeeded.
    ZombieCommit {
        member: String,
        epoch: i64,
        ops: [u64; 2],
    },
    /// group `late-commit`: `member`'s commit `ops[1]` succeeded although it began `silent_ms`
    /// after the member's last successful heartbeat or commit `ops[0]` ended, more than the
    /// session timeout.
    LateCommit {
        member: String,
        epoch: i64,
        silent_ms: u64,
        ops: [u64; 2],
    },
    /// group `group-poll-skip`: `value` at `offset` of `key` lies below the committed offset
    /// `committed` that `op` wrote or read, yet no `ok` poll of a group member returned it.
    GroupPollSkip {
        key: Key,
        offset: Offset,
        value: Value,
        committed: Offset,
        op: u64,
    },
    /// chat `chat-lost-ack`: `message_id`, acknowledged to `client` by `op`, is not in the
    /// history of `conversation` that `read` returned from `node`.
    ChatLostAck {
        conversation: String,
        message_id: String,
        client: u64,
        node: u32,
        op: u64,
        read: u64,
    },
    /// chat `chat-duplicate`: `message_id` appears at all of `offsets` in the history of
    /// `conversation` that `read` returned from `node`.
    ChatDuplicate {
        conversation: String,
        message_id: String,
        node: u32,
        offsets: Vec<u64>,
        read: u64,
    },
    /// chat `chat-order-divergence`: the histories of `conversation` read from `nodes[0]` and
    /// `nodes[1]` (by `reads`) first differ at `position`, where they hold `ids` (`None`: that
    /// history ends there).
    ChatOrderDivergence {
        conversation: String,
        nodes: [u32; 2],
        position: usize,
        ids: [Option<String>; 2],
        lengths: [usize; 2],
        reads: [u64; 2],
    },
    /// chat `chat-sender-order`: `client` got the acknowledgement of `message_ids[0]` (op
    /// `ops[0]`) before it first sent `message_ids[1]` (acknowledged by `ops[1]`), yet the history
    /// of `conversation` from `node` has them at `positions` in the other order.
    ChatSenderOrder {
        conversation: String,
        client: u64,
        node: u32,
        message_ids: [String; 2],
        positions: [usize; 2],
        ops: [u64; 2],
    },
    /// chat `chat-phantom`: `message_id` is in the history of `conversation` from `node`, but no
    /// operation ever sent it there (`sent_to`: the conversation it was sent to, if another).
    ChatPhantom {
        conversation: String,
        message_id: String,
        node: u32,
        sent_to: Option<String>,
        read: u64,
    },
    /// chat `chat-failed-visible`: every attempt to send `message_id` was definitely refused
    /// (`op`, the refusal), yet the history of `conversation` from `node` has it.
    ChatFailedVisible {
        conversation: String,
        message_id: String,
        node: u32,
        op: u64,
        read: u64,
    },
    /// chat `chat-event-lost`: `message_id` of `conversation`, acknowledged by `op`, is not in
    /// the event stream of `user` (a participant) that `read` got from `node`.
    ChatEventLost {
        user: String,
        conversation: String,
        message_id: String,
        node: u32,
        op: u64,
        read: u64,
    },
    /// chat `chat-event-duplicate`: `message_id` arrived at all of `cursors` in the event stream
    /// of `user` that `read` got from `node`.
    ChatEventDuplicate {
        user: String,
        message_id: String,
        node: u32,
        cursors: Vec<String>,
        read: u64,
    },
    /// chat `chat-event-order`: in the event stream of `user` from `node`, `message_ids[0]`
    /// (at `cursors[0]`) came before `message_ids[1]`, which precedes it in the history of
    /// `conversation` (at `positions`, as read from the lowest node).
    ChatEventOrder {
        user: String,
        conversation: String,
        node: u32,
        message_ids: [String; 2],
        cursors: [String; 2],
        positions: [usize; 2],
        read: u64,
    },
    /// chat `chat-event-cursor`: in the event stream of `user` from `node`, the event after
    /// cursor `cursors[0]` had cursor `cursors[1]`, which does not move exactly one
    /// partition's position forward and leave the others (a repeat, a step back, or garbage).
    ChatEventCursor {
        user: String,
        node: u32,
        cursors: [String; 2],
        read: u64,
    },
}

impl Anomaly {
    /// The kind this instance belongs to.
    pub fn kind(&self) -> AnomalyKind {
        match self {
            Anomaly::Lost { .. } => AnomalyKind::Lost,
            Anomaly::Unexpected { .. } | Anomaly::UnexpectedPoll { .. } => AnomalyKind::Unexpected,
            Anomaly::Duplicated { .. } => AnomalyKind::Duplicated,
            Anomaly::Recovered { .. } => AnomalyKind::Recovered,
            Anomaly::InconsistentOffset { .. } => AnomalyKind::InconsistentOffsets,
            Anomaly::Duplicate { .. } => AnomalyKind::Duplicate,
            Anomaly::LostWrite { .. } => AnomalyKind::LostWrite,
            Anomaly::Unseen { .. } => AnomalyKind::Unseen,
            Anomaly::AbortedRead { .. } => AnomalyKind::G1a,
            Anomaly::PollSkip { .. } => AnomalyKind::PollSkip,
            Anomaly::NonmonotonicPoll { .. } => AnomalyKind::NonmonotonicPoll,
            Anomaly::IntPollSkip { .. } => AnomalyKind::IntPollSkip,
            Anomaly::IntNonmonotonicPoll { .. } => AnomalyKind::IntNonmonotonicPoll,
            Anomaly::IntSendSkip { .. } => AnomalyKind::IntSendSkip,
            Anomaly::IntNonmonotonicSend { .. } => AnomalyKind::IntNonmonotonicSend,
            Anomaly::NonmonotonicSend { .. } => AnomalyKind::NonmonotonicSend,
            Anomaly::CommittedOffsetRegression { .. } => AnomalyKind::CommittedOffsetRegression,
            Anomaly::LostCommit { .. } => AnomalyKind::LostCommit,
            Anomaly::DoubleAssignment { .. } => AnomalyKind::DoubleAssignment,
            Anomaly::ZombieCommit { .. } => AnomalyKind::ZombieCommit,
            Anomaly::LateCommit { .. } => AnomalyKind::LateCommit,
            Anomaly::GroupPollSkip { .. } => AnomalyKind::GroupPollSkip,
            Anomaly::ChatLostAck { .. } => AnomalyKind::ChatLostAck,
            Anomaly::ChatDuplicate { .. } => AnomalyKind::ChatDuplicate,
            Anomaly::ChatOrderDivergence { .. } => AnomalyKind::ChatOrderDivergence,
            Anomaly::ChatSenderOrder { .. } => AnomalyKind::ChatSenderOrder,
            Anomaly::ChatPhantom { .. } => AnomalyKind::ChatPhantom,
            Anomaly::ChatFailedVisible { .. } => AnomalyKind::ChatFailedVisible,
            Anomaly::ChatEventLost { .. } => AnomalyKind::ChatEventLost,
            Anomaly::ChatEventDuplicate { .. } => AnomalyKind::ChatEventDuplicate,
            Anomaly::ChatEventOrder { .. } => AnomalyKind::ChatEventOrder,
            Anomaly::ChatEventCursor { .. } => AnomalyKind::ChatEventCursor,
        }
    }

    /// How many occurrences this instance stands for: the multiplicity of a total-queue value,
    /// 1 for everything else.
    pub fn occurrences(&self) -> usize {
        match self {
            Anomaly::Lost { count, .. }
            | Anomaly::Unexpected { count, .. }
            | Anomaly::Duplicated { count, .. }
            | Anomaly::Recovered { count, .. } => *count,
            _ => 1,
        }
    }
}
