//! The chat domain inside a `chat.messages` partition: conversations, their participants,
//! messages, each message's status, and the per-conversation history index.
//!
//! A conversation and all its messages live in the partition its id hashes to, so they are
//! totally ordered by the partition's offsets. Every rule that concurrent requests could
//! break (one `message_id` stored once, only participants send, status only moves forward) is
//! decided here, in the apply, so every replica reaches the same decision. An accepted command
//! appends exactly one record (the event, as the proposer wrote it) at the next offset and
//! updates the rows below in the same RocksDB batch; a refused one writes nothing.

use chat4all_storage::{StoredRecord, keys};
use serde::{Deserialize, Serialize};

mod inbox;
mod reader;
pub(crate) mod stream;
mod watch;

pub use inbox::InboxState;
pub use reader::{ChatReader, HistoryPage};
pub use watch::UserWatch;

use super::RowTxn;
use crate::types::{GroupId, RaftStorageError};

/// Most participants a group conversation may have.
pub const MAX_PARTICIPANTS: usize = 100;

/// Direct (two people) or group.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    /// Exactly two participants, fixed.
    Direct,
    /// Up to [`MAX_PARTICIPANTS`], who may be added and removed.
    Group,
}

/// A participant of a conversation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// The user.
    pub user_id: String,
    /// The offset of the event that added them: they see messages after it.
    pub joined_offset: u64,
    /// When they joined, ms since the epoch.
    pub joined_at_ms: i64,
}

/// A conversation as stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Conversation {
    /// Its id (the partitioning key of `chat.messages`).
    pub id: String,
    /// Direct or group.
    pub kind: ConversationKind,
    /// A title, for groups.
    pub title: Option<String>,
    /// The channel outbound messages prefer (`WHATSAPP`, `TELEGRAM`, ...), if set.
    pub primary_channel: Option<String>,
    /// Who created it.
    pub created_by: String,
    /// When, ms since the epoch.
    pub created_at_ms: i64,
    /// Current participants, in join order.
    pub participants: Vec<Participant>,
    /// Messages sent in it.
    pub message_count: u64,
    /// When the last message was sent.
    pub last_message_at_ms: Option<i64>,
    /// Offset of its latest event.
    pub last_offset: u64,
}

impl Conversation {
    /// The participant `user_id`, if they are one.
    pub fn participant(&self, user_id: &str) -> Option<&Participant> {
        self.participants.iter().find(|p| p.user_id == user_id)
    }
}

/// A message's delivery status.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MessageStatus {
    /// Accepted and stored; not yet handed to any recipient.
    Pending,
    /// Handed to the recipients' inboxes or accepted by the external platform.
    Sent,
    /// A recipient's device or the platform reports it arrived.
    Delivered,
    /// A recipient read it.
    Read,
    /// Delivery failed for good.
    Failed,
    /// An inbound message from an external platform.
    Received,
}

impl MessageStatus {
    fn rank(self) -> u8 {
        match self {
            MessageStatus::Pending => 0,
            MessageStatus::Sent | MessageStatus::Received => 1,
            MessageStatus::Delivered => 2,
            MessageStatus::Read => 3,
            MessageStatus::Failed => 4,
        }
    }

    /// Whether a message in this status may move to `next`: status only moves forward
    /// (PENDING → SENT → DELIVERED → READ, RECEIVED → DELIVERED → READ, steps may be skipped),
    /// FAILED is reachable from any status but READ and is final.
    pub fn can_move_to(self, next: MessageStatus) -> bool {
        match (self, next) {
            (MessageStatus::Failed, _) => false,
            (MessageStatus::Read, MessageStatus::Failed) => false,
            (_, MessageStatus::Failed) => true,
            (_, MessageStatus::Pending | MessageStatus::Received) => false,
            (from, to) => to.rank() > from.rank(),
        }
    }
}

/// One status change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    /// The new status.
    pub status: MessageStatus,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Who reported it (a recipient), or `None` for the system.
    pub by: Option<String>,
}

/// A message's state as stored (its content is in the record at `offset`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MessageState {
    /// The message id.
    pub message_id: String,
    /// Its conversation.
    pub conversation_id: String,
    /// The offset of its record in the partition.
    pub offset: u64,
    /// Who sent it.
    pub sender_id: String,
    /// When it was accepted, ms since the epoch.
    pub timestamp_ms: i64,
    /// The current status.
    pub status: MessageStatus,
    /// Every status it had, oldest first.
    pub history: Vec<StatusChange>,
}

/// Chat commands (a kind of partition command, for `chat.messages` partitions only).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ChatCommand {
    /// Creates a conversation (participants' `joined_offset` is set by the apply).
    CreateConversation {
        /// The conversation, without counters.
        conversation: Conversation,
        /// The event to append.
        record: StoredRecord,
    },
    /// Adds a participant to a group conversation.
    AddParticipant {
        /// The conversation.
        conversation_id: String,
        /// The user to add.
        user_id: String,
        /// Who asks: must be a participant. `None` for an administrator.
        by: Option<String>,
        /// The proposer's clock.
        at_ms: i64,
        /// The event to append.
        record: StoredRecord,
    },
    /// Removes a participant from a group conversation (or they leave).
    RemoveParticipant {
        /// The conversation.
        conversation_id: String,
        /// The user to remove.
        user_id: String,
        /// Who asks: must be a participant. `None` for an administrator.
        by: Option<String>,
        /// The proposer's clock.
        at_ms: i64,
        /// The event to append.
        record: StoredRecord,
    },
    /// Sends a message. A `message_id` already stored answers the stored message.
    Send {
        /// The message id (the client's, or made by the node).
        message_id: String,
        /// The conversation.
        conversation_id: String,
        /// The sender: must be a participant.
        sender_id: String,
        /// The proposer's clock.
        at_ms: i64,
        /// The first status (PENDING for messages sent here, RECEIVED for inbound ones).
        status: MessageStatus,
        /// The event to append.
        record: StoredRecord,
    },
    /// Moves a message's status forward; a move that is not forward changes nothing.
    SetStatus {
        /// The message.
        message_id: String,
        /// The new status.
        status: MessageStatus,
        /// The recipient reporting it (a participant other than the sender), or `None` for
        /// the system.
        by: Option<String>,
        /// The proposer's clock.
        at_ms: i64,
        /// The event to append.
        record: StoredRecord,
    },
    /// Several commands in one Raft entry, applied in order exactly as if each were its own
    /// (the router's batches); answered by [`ChatResponse::Many`].
    Many(Vec<ChatCommand>),
    /// Delivers one `chat.messages` event to the inboxes of `users` (an inbox-kind partition
    /// only, such as `chat.deliveries`): each inbox that has not had this event (an event at
    /// or below the highest `source_offset` delivered from `source_partition`) gets a copy
    /// keyed by its owner, with the inbox's next sequence number. Repeats from a router that
    /// restarted therefore add nothing: each event is in each inbox once, in the source's
    /// order.
    Deliver {
        /// The `chat.messages` partition of the event.
        source_partition: u32,
        /// Its offset there.
        source_offset: u64,
        /// The recipients whose inboxes are in this partition.
        users: Vec<String>,
        /// The event.
        record: StoredRecord,
    },
    /// Sets `name = value` for `owner` (an inbox's key) in an inbox-kind partition, with no
    /// record: small facts the partition's consumers look up by key, such as the platform id
    /// of a message a channel sent to a contact, or when the contact last wrote.
    Note {
        /// The key the note belongs to (a user, or a channel's contact).
        owner: String,
        /// The note's name.
        name: String,
        /// Its value.
        value: String,
    },
}

/// The record header an accepted `chat.messages` event carries: the ids of the users it is
/// for (the participants when it was applied; for a removal, also the one removed), comma
/// separated. Stamped by the apply, so every replica and the router agree on them.
pub const RECIPIENTS_HEADER: &str = "c4a-recipients";

/// The record header of an inbox event: the event's sequence number in the user's inbox.
pub const SEQ_HEADER: &str = "c4a-seq";

/// Results of chat commands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ChatResponse {
    /// The conversation after the command, and the offset of the event written (`None` when
    /// the command changed nothing, such as adding a present participant).
    Conversation {
        /// The conversation now.
        conversation: Conversation,
        /// The event's offset.
        offset: Option<u64>,
    },
    /// A conversation with that id exists (returned as it is).
    ConversationExists(Conversation),
    /// The message as stored; `duplicate` when it was stored before and nothing was written.
    Message {
        /// The message's state.
        state: MessageState,
        /// Whether this was a repeat of a stored message.
        duplicate: bool,
    },
    /// The message's status after the command; `changed` false when the move was not forward.
    Status {
        /// The message's state now.
        state: MessageState,
        /// Whether the status changed (and an event was written).
        changed: bool,
    },
    /// No conversation with that id in this partition.
    UnknownConversation,
    /// The user named is not a participant (the sender, the requester, or the one to remove).
    NotParticipant,
    /// A recipient tried to report the status of their own message.
    OwnMessage,
    /// Participants of a direct conversation cannot change.
    NotAGroup,
    /// The group would have more than [`MAX_PARTICIPANTS`].
    TooManyParticipants,
    /// No message with that id in this partition.
    UnknownMessage,
    /// What a delivery appended: `(user, sequence number)` for each inbox that got the event.
    Delivered(Vec<(String, u64)>),
    /// The answers to a [`ChatCommand::Many`], in its order.
    Many(Vec<ChatResponse>),
    /// The message id is used by a message of another conversation.
    MessageIdTaken,
    /// A note was stored.
    Noted,
    /// The command does not belong in this kind of partition.
    NotChat,
}

const CONVERSATION: &[u8] = b"c/";
const MESSAGE: &[u8] = b"m/";
const HISTORY: &[u8] = b"h/";
const MEMBER: &[u8] = b"u/";

fn key(group: GroupId, prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut k = prefix.to_vec();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // Ids hold no NUL (the API refuses control characters), so NUL separates parts.
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    keys::group_bytes(group.0, &k)
}

/// The first key after every `prefix` row of `owner` (`owner\0...` keys): the end of a scan
/// of that owner's rows.
fn after_rows_of(g: GroupId, prefix: &[u8], owner: &str) -> Vec<u8> {
    let mut end = key(g, prefix, &[owner.as_bytes()]);
    end.push(1);
    end
}

fn conversation_key(g: GroupId, id: &str) -> Vec<u8> {
    key(g, CONVERSATION, &[id.as_bytes()])
}

fn message_key(g: GroupId, id: &str) -> Vec<u8> {
    key(g, MESSAGE, &[id.as_bytes()])
}

fn history_key(g: GroupId, conversation: &str, offset: u64) -> Vec<u8> {
    key(
        g,
        HISTORY,
        &[conversation.as_bytes(), &offset.to_be_bytes()],
    )
}

fn member_key(g: GroupId, user: &str, conversation: &str) -> Vec<u8> {
    key(g, MEMBER, &[user.as_bytes(), conversation.as_bytes()])
}

fn with_recipients<'a>(
    mut record: StoredRecord,
    users: impl IntoIterator<Item = &'a str>,
) -> StoredRecord {
    let list: Vec<&str> = users.into_iter().collect();
    record
        .headers
        .push((RECIPIENTS_HEADER.to_string(), list.join(",").into_bytes()));
    record
}

/// The recipients a `chat.messages` event record was stamped with.
pub fn recipients(record: &StoredRecord) -> Vec<String> {
    record
        .headers
        .iter()
        .find(|(k, _)| k == RECIPIENTS_HEADER)
        .map(|(_, v)| {
            String::from_utf8_lossy(v)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Applies one chat command of partition `g` (an inbox partition when `inbox`) whose next
/// offset is `next_offset`: the answer, and the records to append from `next_offset` on
/// (none when the command was refused).
pub(crate) fn apply(
    txn: &mut RowTxn<'_>,
    g: GroupId,
    inbox: bool,
    next_offset: u64,
    cmd: ChatCommand,
) -> Result<(ChatResponse, Vec<StoredRecord>), RaftStorageError> {
    let refused = |r| Ok((r, Vec::new()));
    if let ChatCommand::Many(cmds) = cmd {
        let mut answers = Vec::with_capacity(cmds.len());
        let mut records = Vec::new();
        for c in cmds {
            let (a, mut r) = apply(txn, g, inbox, next_offset + records.len() as u64, c)?;
            answers.push(a);
            records.append(&mut r);
        }
        return Ok((ChatResponse::Many(answers), records));
    }
    if inbox != matches!(cmd, ChatCommand::Deliver { .. } | ChatCommand::Note { .. }) {
        return refused(ChatResponse::NotChat);
    }
    match cmd {
        ChatCommand::Many(_) => refused(ChatResponse::NotChat),
        ChatCommand::Note { owner, name, value } => inbox::note(txn, g, &owner, &name, value),
        ChatCommand::Deliver {
            source_partition,
            source_offset,
            users,
            record,
        } => inbox::deliver(
            txn,
            g,
            next_offset,
            (source_partition, source_offset),
            users,
            record,
        ),
        ChatCommand::CreateConversation {
            mut conversation,
            record,
        } => {
            let ck = conversation_key(g, &conversation.id);
            if let Some(c) = txn.get::<Conversation>(&ck)? {
                return refused(ChatResponse::ConversationExists(c));
            }
            if conversation.participants.len() > MAX_PARTICIPANTS {
                return refused(ChatResponse::TooManyParticipants);
            }
            for p in &mut conversation.participants {
                p.joined_offset = next_offset;
                txn.put(member_key(g, &p.user_id, &conversation.id), &())?;
            }
            conversation.message_count = 0;
            conversation.last_message_at_ms = None;
            conversation.last_offset = next_offset;
            txn.put(ck, &conversation)?;
            let record = with_recipients(
                record,
                conversation.participants.iter().map(|p| p.user_id.as_str()),
            );
            Ok((
                ChatResponse::Conversation {
                    conversation,
                    offset: Some(next_offset),
                },
                vec![record],
            ))
        }
        ChatCommand::AddParticipant {
            conversation_id,
            user_id,
            by,
            at_ms,
            record,
        } => {
            let ck = conversation_key(g, &conversation_id);
            let mut c = match group_to_change(txn, &ck, by.as_deref())? {
                Ok(c) => c,
                Err(refusal) => return refused(refusal),
            };
            if c.participant(&user_id).is_some() {
                return refused(ChatResponse::Conversation {
                    conversation: c,
                    offset: None,
                });
            }
            if c.participants.len() >= MAX_PARTICIPANTS {
                return refused(ChatResponse::TooManyParticipants);
            }
            c.participants.push(Participant {
                user_id: user_id.clone(),
                joined_offset: next_offset,
                joined_at_ms: at_ms,
            });
            c.last_offset = next_offset;
            txn.put(member_key(g, &user_id, &conversation_id), &())?;
            txn.put(ck, &c)?;
            let record = with_recipients(record, c.participants.iter().map(|p| p.user_id.as_str()));
            Ok((
                ChatResponse::Conversation {
                    conversation: c,
                    offset: Some(next_offset),
                },
                vec![record],
            ))
        }
        ChatCommand::RemoveParticipant {
            conversation_id,
            user_id,
            by,
            at_ms: _,
            record,
        } => {
            let ck = conversation_key(g, &conversation_id);
            let mut c = match group_to_change(txn, &ck, by.as_deref())? {
                Ok(c) => c,
                Err(refusal) => return refused(refusal),
            };
            if c.participant(&user_id).is_none() {
                return refused(ChatResponse::NotParticipant);
            }
            // The one removed hears of it too.
            let record = with_recipients(record, c.participants.iter().map(|p| p.user_id.as_str()));
            c.participants.retain(|p| p.user_id != user_id);
            c.last_offset = next_offset;
            txn.delete(member_key(g, &user_id, &conversation_id));
            txn.put(ck, &c)?;
            Ok((
                ChatResponse::Conversation {
                    conversation: c,
                    offset: Some(next_offset),
                },
                vec![record],
            ))
        }
        ChatCommand::Send {
            message_id,
            conversation_id,
            sender_id,
            at_ms,
            status,
            record,
        } => {
            let mk = message_key(g, &message_id);
            if let Some(m) = txn.get::<MessageState>(&mk)? {
                if m.conversation_id != conversation_id {
                    return refused(ChatResponse::MessageIdTaken);
                }
                return refused(ChatResponse::Message {
                    state: m,
                    duplicate: true,
                });
            }
            let ck = conversation_key(g, &conversation_id);
            let Some(mut c) = txn.get::<Conversation>(&ck)? else {
                return refused(ChatResponse::UnknownConversation);
            };
            if c.participant(&sender_id).is_none() {
                return refused(ChatResponse::NotParticipant);
            }
            let state = MessageState {
                message_id: message_id.clone(),
                conversation_id: conversation_id.clone(),
                offset: next_offset,
                sender_id,
                timestamp_ms: at_ms,
                status,
                history: vec![StatusChange {
                    status,
                    at_ms,
                    by: None,
                }],
            };
            c.message_count += 1;
            c.last_message_at_ms = Some(at_ms);
            c.last_offset = next_offset;
            txn.put(mk, &state)?;
            txn.put(history_key(g, &conversation_id, next_offset), &message_id)?;
            txn.put(ck, &c)?;
            let record = with_recipients(record, c.participants.iter().map(|p| p.user_id.as_str()));
            Ok((
                ChatResponse::Message {
                    state,
                    duplicate: false,
                },
                vec![record],
            ))
        }
        ChatCommand::SetStatus {
            message_id,
            status,
            by,
            at_ms,
            record,
        } => {
            let mk = message_key(g, &message_id);
            let Some(mut m) = txn.get::<MessageState>(&mk)? else {
                return refused(ChatResponse::UnknownMessage);
            };
            let c = txn.get::<Conversation>(&conversation_key(g, &m.conversation_id))?;
            if let Some(b) = &by {
                if c.as_ref().is_none_or(|c| c.participant(b).is_none()) {
                    return refused(ChatResponse::NotParticipant);
                }
                if *b == m.sender_id {
                    return refused(ChatResponse::OwnMessage);
                }
            }
            if !m.status.can_move_to(status) {
                return refused(ChatResponse::Status {
                    state: m,
                    changed: false,
                });
            }
            // A status change concerns the message's sender, and the recipient who reported
            // it (so their other devices learn it too); the rest of a group does not see
            // each other's receipts. The sender may have left since: then only the reporter.
            let mut users: Vec<&str> = Vec::with_capacity(2);
            let member = |u: &str| c.as_ref().is_some_and(|c| c.participant(u).is_some());
            if member(&m.sender_id) {
                users.push(&m.sender_id);
            }
            if let Some(b) = by.as_deref() {
                users.push(b);
            }
            let record = with_recipients(record, users);
            m.status = status;
            m.history.push(StatusChange { status, at_ms, by });
            txn.put(mk, &m)?;
            Ok((
                ChatResponse::Status {
                    state: m,
                    changed: true,
                },
                vec![record],
            ))
        }
    }
}

/// The group conversation at `ck` whose participants `by` (a participant, or `None` for an
/// admin) may change, or why not.
fn group_to_change(
    txn: &RowTxn<'_>,
    ck: &[u8],
    by: Option<&str>,
) -> Result<Result<Conversation, ChatResponse>, RaftStorageError> {
    let Some(c) = txn.get::<Conversation>(ck)? else {
        return Ok(Err(ChatResponse::UnknownConversation));
    };
    if by.is_some_and(|b| c.participant(b).is_none()) {
        return Ok(Err(ChatResponse::NotParticipant));
    }
    if c.kind == ConversationKind::Direct {
        return Ok(Err(ChatResponse::NotAGroup));
    }
    Ok(Ok(c))
}

/// The chat rows of partition `g`'s key range.
pub(crate) fn range(g: GroupId) -> (Vec<u8>, Vec<u8>) {
    let end = keys::group_end(g.0)
        .map(|k| k.to_vec())
        .unwrap_or_else(|| vec![0xff; 9]);
    (keys::group_start(g.0).to_vec(), end)
}

#[cfg(test)]
mod tests {
    use super::MessageStatus::*;

    #[test]
    fn status_only_moves_forward_and_failed_is_final() {
        assert!(Pending.can_move_to(Sent));
        assert!(Pending.can_move_to(Read));
        assert!(Sent.can_move_to(Delivered));
        assert!(Delivered.can_move_to(Read));
        assert!(Received.can_move_to(Read));
        assert!(!Read.can_move_to(Delivered));
        assert!(!Delivered.can_move_to(Sent));
        assert!(!Sent.can_move_to(Sent));
        assert!(!Sent.can_move_to(Pending));
        assert!(!Pending.can_move_to(Received));
        assert!(Pending.can_move_to(Failed));
        assert!(Delivered.can_move_to(Failed));
        assert!(!Read.can_move_to(Failed));
        for s in [Pending, Sent, Delivered, Read, Failed, Received] {
            assert!(!Failed.can_move_to(s));
        }
    }
}
