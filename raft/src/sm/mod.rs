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
use openraft::storage::{RaftSnapshotBuilder, Snapshot};
use openraft::{LogId, SnapshotMeta, StorageIOError, StoredMembership};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::snapshot::SnapshotData;
use crate::types::{GroupId, NodeId, NodeInfo, RaftStorageError, TypeConfig};

pub(crate) const TAG_APPLIED: u8 = 1;
pub(crate) const TAG_SNAPSHOT: u8 = 2;
/// A snapshot install in progress (see [`crate::snapshot`]).
pub(crate) const TAG_INSTALLING: u8 = 3;

/// A stored snapshot: its meta and, from older versions, its encoded data (now always empty:
/// a state machine's snapshot is its live state; see [`MarkerSnapshotBuilder`]).
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

/// A state machine's own state, stored at [`TAG_APPLIED`] with what it has applied: what a
/// snapshot's header carries and an install stores under the snapshot's meta.
pub(crate) trait AppliedState: Serialize + DeserializeOwned {
    fn applied_mut(&mut self) -> &mut AppliedMeta;
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
/// meta, no data (see [`MarkerSnapshotBuilder`]).
pub(crate) fn marker(meta: &SnapshotMeta<NodeId, NodeInfo>) -> StoredSnapshot {
    StoredSnapshot {
        meta: meta.clone(),
        data: Vec::new(),
    }
}

/// The snapshot meta of `group` at the applied point `applied`.
pub(crate) fn snapshot_meta(
    group: GroupId,
    applied: &AppliedMeta,
) -> SnapshotMeta<NodeId, NodeInfo> {
    SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
        snapshot_id: snapshot_id(group, &applied.last_applied),
    }
}

/// Builds a snapshot of a partition or the controller: marks the point that openraft asked
/// for the builder at.
///
/// A state machine's state is already in RocksDB, applied in log order, so "building" a
/// snapshot copies nothing: it records the snapshot's meta (`last_applied` and membership when
/// asked). Copying the whole partition instead, as this did before, cost time in proportion to
/// the partition's size on a runtime worker every 20,000 entries; under sustained load several
/// groups reached that point together and the node stopped answering heartbeats for hundreds
/// of milliseconds, which started elections. The data a follower needs is read when one needs
/// it (each state machine's `get_current_snapshot`).
///
/// Durability: openraft purges the log up to (a little before) the snapshot once this returns.
/// The marker and that purge are written after the applies they rely on, to the same RocksDB
/// write-ahead log, which recovers a prefix of what was written: the purge cannot survive a
/// crash that loses the applies before it. So neither needs an fsync of its own.
pub struct MarkerSnapshotBuilder {
    db: Db,
    group: GroupId,
    meta: Option<SnapshotMeta<NodeId, NodeInfo>>,
}

impl MarkerSnapshotBuilder {
    pub(crate) fn new(db: Db, group: GroupId, applied: &AppliedMeta) -> MarkerSnapshotBuilder {
        MarkerSnapshotBuilder {
            db,
            group,
            meta: Some(snapshot_meta(group, applied)),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MarkerSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let meta = self
            .meta
            .take()
            .ok_or_else(|| snapshot_err(std::io::Error::other("snapshot builder used twice")))?;
        save_snapshot(&self.db, self.group, &marker(&meta), false)?;
        // openraft takes only the meta of a built snapshot; a follower gets the data from
        // `get_current_snapshot`.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::Empty),
        })
    }
}

/// A snapshot id unique per group and log position.
fn snapshot_id(group: GroupId, last: &Option<LogId<NodeId>>) -> String {
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
