//! The chat domain inside a `chat.messages` partition: conversations, their participants,
//! messages, each message's status, and the per-conversation history index.
//!
//! A conversation and all its messages live in the partition its id hashes to, so they are
//! totally ordered by the partition's offsets. Every rule that concurrent requests could
//! break (one `message_id` stored once, only participants send, status only moves forward) is
//! decided here, in the apply, so every replica reaches the same decision. An accepted command
//! appends exactly one record (the event, as the proposer wrote it) at the next offset and
//! updates the rows below in the same RocksDB batch; a refused one writes nothing.

use chat4all_storage::{Cf, Db, StorageError, StoredRecord, keys};
use serde::{Deserialize, Serialize};

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
    /// Delivers one `chat.messages` event to the inboxes of `users` (a `chat.inbox` partition
    /// only): each user whose inbox has not had this event (an event at or below the highest
    /// `source_offset` delivered from `source_partition`) gets a copy keyed by their id, with
    /// the next sequence number of their inbox. Repeats from a router that restarted
    /// therefore add nothing: each event is in each inbox once, in the source's order.
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
    /// The command does not belong in this kind of partition.
    NotChat,
}

const CONVERSATION: &[u8] = b"c/";
const MESSAGE: &[u8] = b"m/";
const HISTORY: &[u8] = b"h/";
const MEMBER: &[u8] = b"u/";
const INBOX: &[u8] = b"q/";
const INBOX_EVENT: &[u8] = b"e/";

/// A user's inbox, in a `chat.inbox` partition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxState {
    /// The sequence number of the last event (0: none yet; the first is 1).
    pub last_seq: u64,
    /// The highest source offset delivered, per `chat.messages` partition.
    pub delivered: Vec<(u32, u64)>,
}

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

fn inbox_key(g: GroupId, user: &str) -> Vec<u8> {
    key(g, INBOX, &[user.as_bytes()])
}

fn inbox_event_key(g: GroupId, user: &str, seq: u64) -> Vec<u8> {
    key(g, INBOX_EVENT, &[user.as_bytes(), &seq.to_be_bytes()])
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
    if inbox != matches!(cmd, ChatCommand::Deliver { .. }) {
        return refused(ChatResponse::NotChat);
    }
    match cmd {
        ChatCommand::Many(_) => refused(ChatResponse::NotChat),
        ChatCommand::Deliver {
            source_partition,
            source_offset,
            users,
            record,
        } => {
            let mut out = Vec::new();
            let mut records = Vec::new();
            for user in users {
                let ik = inbox_key(g, &user);
                let mut st = txn.get::<InboxState>(&ik)?.unwrap_or_default();
                let seen = st
                    .delivered
                    .iter()
                    .find(|(p, _)| *p == source_partition)
                    .map(|(_, o)| *o);
                if seen.is_some_and(|o| source_offset <= o) {
                    continue;
                }
                st.last_seq += 1;
                match st
                    .delivered
                    .iter_mut()
                    .find(|(p, _)| *p == source_partition)
                {
                    Some(d) => d.1 = source_offset,
                    None => st.delivered.push((source_partition, source_offset)),
                }
                let offset = next_offset + records.len() as u64;
                txn.put(inbox_event_key(g, &user, st.last_seq), &offset)?;
                txn.put(ik, &st)?;
                let mut r = record.clone();
                r.key = Some(chat4all_storage::Payload {
                    format: chat4all_storage::PayloadFormat::Text,
                    bytes: user.as_bytes().to_vec(),
                });
                r.headers
                    .push((SEQ_HEADER.to_string(), st.last_seq.to_string().into_bytes()));
                records.push(r);
                out.push((user, st.last_seq));
            }
            Ok((ChatResponse::Delivered(out), records))
        }
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
            let Some(mut c) = txn.get::<Conversation>(&ck)? else {
                return refused(ChatResponse::UnknownConversation);
            };
            if by.as_deref().is_some_and(|b| c.participant(b).is_none()) {
                return refused(ChatResponse::NotParticipant);
            }
            if c.kind == ConversationKind::Direct {
                return refused(ChatResponse::NotAGroup);
            }
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
            let Some(mut c) = txn.get::<Conversation>(&ck)? else {
                return refused(ChatResponse::UnknownConversation);
            };
            if by.as_deref().is_some_and(|b| c.participant(b).is_none()) {
                return refused(ChatResponse::NotParticipant);
            }
            if c.kind == ConversationKind::Direct {
                return refused(ChatResponse::NotAGroup);
            }
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
            m.status = status;
            m.history.push(StatusChange { status, at_ms, by });
            txn.put(mk, &m)?;
            let users = c
                .iter()
                .flat_map(|c| c.participants.iter().map(|p| p.user_id.as_str()));
            let record = with_recipients(record, users);
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

/// The chat rows of partition `g`'s key range.
pub(crate) fn range(g: GroupId) -> (Vec<u8>, Vec<u8>) {
    let end = keys::group_end(g.0)
        .map(|k| k.to_vec())
        .unwrap_or_else(|| vec![0xff; 9]);
    (keys::group_start(g.0).to_vec(), end)
}

/// Reads of one chat partition as this replica applied it.
#[derive(Clone)]
pub struct ChatReader {
    pub(crate) db: Db,
    pub(crate) group: GroupId,
}

/// Which part of a conversation's history to read.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryPage {
    /// The newest messages below `before` (all when `None`), newest first.
    Before(Option<u64>),
    /// The oldest messages above `after`, oldest first.
    After(u64),
}

impl ChatReader {
    /// A conversation by id.
    pub fn conversation(&self, id: &str) -> Result<Option<Conversation>, StorageError> {
        self.db.get(Cf::ChatRow, &conversation_key(self.group, id))
    }

    /// A message's state by id.
    pub fn message(&self, id: &str) -> Result<Option<MessageState>, StorageError> {
        self.db.get(Cf::ChatRow, &message_key(self.group, id))
    }

    /// History of `conversation` as `(offset, message id)`, at most `limit`, not below
    /// `floor` (a participant sees messages from when they joined).
    pub fn history(
        &self,
        conversation: &str,
        page: HistoryPage,
        floor: u64,
        limit: usize,
    ) -> Result<Vec<(u64, String)>, StorageError> {
        let lo = history_key(self.group, conversation, floor);
        let hi = {
            let mut p = key(self.group, HISTORY, &[conversation.as_bytes()]);
            p.push(1); // after every `conversation\0<offset>` key
            p
        };
        let decode = |rows: Vec<(Vec<u8>, String)>| {
            rows.into_iter()
                .filter_map(|(k, id)| {
                    let off = k.get(k.len().checked_sub(8)?..)?;
                    Some((u64::from_be_bytes(off.try_into().ok()?), id))
                })
                .collect()
        };
        match page {
            HistoryPage::Before(before) => {
                let end = match before {
                    Some(b) => history_key(self.group, conversation, b),
                    None => hi,
                };
                Ok(decode(self.db.scan_rev(Cf::ChatRow, &lo, &end, limit)?))
            }
            HistoryPage::After(after) => {
                let start =
                    history_key(self.group, conversation, after.saturating_add(1).max(floor));
                Ok(decode(self.db.scan(Cf::ChatRow, &start, &hi, limit)?))
            }
        }
    }

    /// Events of `user`'s inbox after sequence number `after`, as `(seq, offset)`, at most
    /// `limit`, oldest first.
    pub fn inbox(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StorageError> {
        let start = inbox_event_key(self.group, user, after.saturating_add(1));
        let mut end = key(self.group, INBOX_EVENT, &[user.as_bytes()]);
        end.push(1);
        Ok(self
            .db
            .scan::<u64>(Cf::ChatRow, &start, &end, limit)?
            .into_iter()
            .filter_map(|(k, off)| {
                let seq = k.get(k.len().checked_sub(8)?..)?;
                Some((u64::from_be_bytes(seq.try_into().ok()?), off))
            })
            .collect())
    }

    /// The sequence number of `user`'s last inbox event (0 when there is none).
    pub fn inbox_last_seq(&self, user: &str) -> Result<u64, StorageError> {
        Ok(self
            .db
            .get::<InboxState>(Cf::ChatRow, &inbox_key(self.group, user))?
            .map_or(0, |s| s.last_seq))
    }

    /// Ids of the conversations `user` is in, in id order after `after`, at most `limit`.
    pub fn conversations_of(
        &self,
        user: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StorageError> {
        let mut prefix = key(self.group, MEMBER, &[user.as_bytes()]);
        prefix.push(0);
        let end = keys::prefix_end(&prefix).unwrap_or_else(|| range(self.group).1);
        let start = match after {
            Some(a) => {
                let mut k = member_key(self.group, user, a);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        Ok(self
            .db
            .scan::<()>(Cf::ChatRow, &start, &end, limit)?
            .into_iter()
            .filter_map(|(k, ())| {
                k.get(prefix.len()..)
                    .map(|id| String::from_utf8_lossy(id).into_owned())
            })
            .collect())
    }
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
