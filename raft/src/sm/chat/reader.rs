//! Reads of a chat partition as this replica applied it.

use chat4all_storage::{Cf, Db, StorageError, keys};
use serde::{Deserialize, Serialize};

use super::{
    Conversation, HISTORY, MEMBER, MessageState, after_rows_of, conversation_key, history_key, key,
    member_key, message_key, range,
};
use crate::types::GroupId;

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
        let hi = after_rows_of(self.group, HISTORY, conversation);
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
