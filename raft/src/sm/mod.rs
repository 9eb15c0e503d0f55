//! State machines and what they share: the applied-state record and snapshot persistence.
//!
//! A state machine's applied state is written in the same RocksDB batch as the data an apply
//! produced, without fsync: the Raft log is the durable copy, and after a crash openraft
//! re-applies every entry after the persisted `last_applied`.

pub mod chat;
pub mod controller;
pub mod directory;
pub mod partition;

use std::collections::BTreeMap;

use chat4all_storage::{Batch, Cf, Db, StorageError, keys};
use openraft::{LogId, SnapshotMeta, StorageIOError, StoredMembership};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::types::{GroupId, NodeId, NodeInfo, RaftStorageError};

pub(crate) const TAG_APPLIED: u8 = 1;
pub(crate) const TAG_SNAPSHOT: u8 = 2;

/// A stored snapshot: its meta and, from older versions, its encoded data (now always empty:
/// a state machine's snapshot is its live state; see [`partition::PartitionSnapshotBuilder`]).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, NodeInfo>,
    pub data: Vec<u8>,
}

/// Raft bookkeeping every state machine keeps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct AppliedMeta {
    /// The last entry applied.
    pub last_applied: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub membership: StoredMembership<NodeId, NodeInfo>,
}

pub(crate) fn read_err(e: StorageError) -> RaftStorageError {
    StorageIOError::read_state_machine(openraft::AnyError::new(&e)).into()
}

pub(crate) fn write_err(e: StorageError) -> RaftStorageError {
    StorageIOError::write_state_machine(openraft::AnyError::new(&e)).into()
}

pub(crate) fn snapshot_err(e: impl std::error::Error + 'static) -> RaftStorageError {
    StorageIOError::write_snapshot(None, openraft::AnyError::new(&e)).into()
}

/// Loads the stored snapshot of `group`.
pub(crate) fn load_snapshot(
    db: &Db,
    group: GroupId,
) -> Result<Option<StoredSnapshot>, RaftStorageError> {
    db.get(Cf::GroupMeta, &keys::group_tag(group.0, TAG_SNAPSHOT))
        .map_err(read_err)
}

/// Stores `snapshot` as the current snapshot of `group`; `sync` fsyncs it first.
pub(crate) fn save_snapshot(
    db: &Db,
    group: GroupId,
    snapshot: &StoredSnapshot,
    sync: bool,
) -> Result<(), RaftStorageError> {
    let mut b = db.batch();
    b.put(
        Cf::GroupMeta,
        &keys::group_tag(group.0, TAG_SNAPSHOT),
        snapshot,
    )
    .map_err(write_err)?;
    db.write(b, sync).map_err(write_err)
}

/// What a state machine whose snapshot is its live state stores as its current snapshot: the
/// meta, no data (see [`partition::PartitionSnapshotBuilder`]).
pub(crate) fn marker(meta: &SnapshotMeta<NodeId, NodeInfo>) -> StoredSnapshot {
    StoredSnapshot {
        meta: meta.clone(),
        data: Vec::new(),
    }
}

/// A snapshot id unique per group and log position.
pub(crate) fn snapshot_id(group: GroupId, last: &Option<LogId<NodeId>>) -> String {
    match last {
        Some(l) => format!(
            "{group}-{}-{}-{}",
            l.leader_id.term, l.leader_id.node_id, l.index
        ),
        None => format!("{group}-empty"),
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, RaftStorageError> {
    bincode::serde::encode_to_vec(v, bincode::config::standard()).map_err(snapshot_err)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RaftStorageError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StorageIOError::read_snapshot(None, openraft::AnyError::new(&e)).into())
}

/// The rows of one column family that one apply call reads and writes: writes stay in an
/// overlay (later entries of the same call read them) and go to RocksDB in the apply's batch.
pub(crate) struct RowTxn<'a> {
    db: &'a Db,
    cf: Cf,
    overlay: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> RowTxn<'a> {
    pub(crate) fn new(db: &'a Db, cf: Cf) -> RowTxn<'a> {
        RowTxn {
            db,
            cf,
            overlay: BTreeMap::new(),
        }
    }

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, RaftStorageError> {
        match self.overlay.get(key) {
            Some(Some(bytes)) => decode(bytes).map(Some),
            Some(None) => Ok(None),
            None => self.db.get(self.cf, key).map_err(read_err),
        }
    }

    pub(crate) fn put<T: Serialize>(
        &mut self,
        key: Vec<u8>,
        value: &T,
    ) -> Result<(), RaftStorageError> {
        self.overlay.insert(key, Some(encode(value)?));
        Ok(())
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.overlay.insert(key, None);
    }

    /// Adds the writes to `batch`.
    pub(crate) fn write_into(self, batch: &mut Batch<'_>) {
        for (k, v) in self.overlay {
            match v {
                Some(v) => batch.put_raw(self.cf, &k, &v),
                None => batch.delete(self.cf, &k),
            }
        }
    }
}
