//! Each user's event stream, read where the events are: every `chat.messages` event is stamped
//! with its recipients by the apply ([`super::RECIPIENTS_HEADER`]), and the same apply writes
//! one index row per recipient, `(user, offset)`, in the same RocksDB batch. A user's stream in
//! a partition is those offsets in order; across partitions it is one cursor per partition.
//!
//! This costs a row per recipient and no Raft entry: before, the router copied every event
//! into a `chat.inbox` partition per recipient, one more replicated and fsynced write per
//! event (about half the Raft entries of a message at 1,000 msg/s).

use chat4all_storage::{Cf, StorageError, StoredRecord};

use super::{ChatReader, RowTxn, after_rows_of, key, recipients};
use crate::types::{GroupId, RaftStorageError};

const STREAM: &[u8] = b"s/";

fn stream_key(g: GroupId, user: &str, offset: u64) -> Vec<u8> {
    key(g, STREAM, &[user.as_bytes(), &offset.to_be_bytes()])
}

/// Indexes the event `record`, appended at `offset`, in the streams of the users it was
/// stamped with; returns those users (to wake their readers once the batch is written).
pub(crate) fn index(
    txn: &mut RowTxn<'_>,
    g: GroupId,
    offset: u64,
    record: &StoredRecord,
) -> Result<Vec<String>, RaftStorageError> {
    let users = recipients(record);
    for u in &users {
        txn.put(stream_key(g, u, offset), &offset)?;
    }
    Ok(users)
}

impl ChatReader {
    /// Offsets of `user`'s events in this partition from `from` on, at most `limit`, in order.
    pub fn stream(&self, user: &str, from: u64, limit: usize) -> Result<Vec<u64>, StorageError> {
        let start = stream_key(self.group, user, from);
        let end = after_rows_of(self.group, STREAM, user);
        Ok(self
            .db
            .scan::<u64>(Cf::ChatRow, &start, &end, limit)?
            .into_iter()
            .map(|(_, offset)| offset)
            .collect())
    }
}
