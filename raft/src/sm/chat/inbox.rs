//! Inboxes in inbox-kind partitions (`chat.deliveries`, one inbox per channel recipient): each
//! event of a conversation delivered once to each inbox, numbered per inbox, whatever the
//! router repeats.

use chat4all_storage::{Cf, StorageError, StoredRecord};
use serde::{Deserialize, Serialize};

use super::{ChatReader, ChatResponse, RowTxn, SEQ_HEADER, after_rows_of, key};
use crate::types::{GroupId, RaftStorageError};

const INBOX: &[u8] = b"q/";
const INBOX_EVENT: &[u8] = b"e/";
const NOTE: &[u8] = b"n/";

fn note_key(g: GroupId, owner: &str, name: &str) -> Vec<u8> {
    key(g, NOTE, &[owner.as_bytes(), name.as_bytes()])
}

/// Applies a note: `name = value` for `owner` (see [`super::ChatCommand::Note`]).
pub(super) fn note(
    txn: &mut RowTxn<'_>,
    g: GroupId,
    owner: &str,
    name: &str,
    value: String,
) -> Result<(ChatResponse, Vec<StoredRecord>), RaftStorageError> {
    txn.put(note_key(g, owner, name), &value)?;
    Ok((ChatResponse::Noted, Vec::new()))
}

/// An inbox (a user's or a channel contact's), in an inbox-kind partition.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct InboxState {
    /// The sequence number of the last event (0: none yet; the first is 1).
    pub last_seq: u64,
    /// The highest source offset delivered, per `chat.messages` partition.
    pub delivered: Vec<(u32, u64)>,
}

fn inbox_key(g: GroupId, user: &str) -> Vec<u8> {
    key(g, INBOX, &[user.as_bytes()])
}

fn inbox_event_key(g: GroupId, user: &str, seq: u64) -> Vec<u8> {
    key(g, INBOX_EVENT, &[user.as_bytes(), &seq.to_be_bytes()])
}

/// Applies a delivery of the event at `source` (`chat.messages` partition, offset) to the inboxes
/// of `users`: the answer, and the records to append from `next_offset` on, one per user
/// whose inbox did not have the event yet.
pub(super) fn deliver(
    txn: &mut RowTxn<'_>,
    g: GroupId,
    next_offset: u64,
    (source_partition, source_offset): (u32, u64),
    users: Vec<String>,
    record: StoredRecord,
) -> Result<(ChatResponse, Vec<StoredRecord>), RaftStorageError> {
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

impl ChatReader {
    /// Events of `user`'s inbox after sequence number `after`, as `(seq, offset)`, at most
    /// `limit`, oldest first.
    pub fn inbox(
        &self,
        user: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, u64)>, StorageError> {
        let start = inbox_event_key(self.group, user, after.saturating_add(1));
        let end = after_rows_of(self.group, INBOX_EVENT, user);
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

    /// A note of `owner` (see [`super::ChatCommand::Note`]).
    pub fn note(&self, owner: &str, name: &str) -> Result<Option<String>, StorageError> {
        self.db.get(Cf::ChatRow, &note_key(self.group, owner, name))
    }

    /// The sequence number of `user`'s last inbox event (0 when there is none).
    pub fn inbox_last_seq(&self, user: &str) -> Result<u64, StorageError> {
        Ok(self
            .db
            .get::<InboxState>(Cf::ChatRow, &inbox_key(self.group, user))?
            .map_or(0, |s| s.last_seq))
    }
}
