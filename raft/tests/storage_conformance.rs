//! openraft's storage conformance suite against our RocksDB log store and both state machines.
// The suite's builder trait returns openraft's large StorageError; so do these tests.
#![allow(clippy::result_large_err)]

use chat4all_raft::log_store::LogStore;
use chat4all_raft::sm::controller::ControllerStateMachine;
use chat4all_raft::sm::partition::PartitionStateMachine;
use chat4all_raft::types::{GroupId, RaftStorageError, TypeConfig};
use chat4all_storage::{Db, DbConfig};
use openraft::testing::{StoreBuilder, Suite};

/// Each build opens a fresh database in its own temp dir, kept alive by the returned guard.
struct PartitionStores;
struct ControllerStores;

fn open_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&DbConfig::new(dir.path())).expect("open db");
    (dir, db)
}

impl StoreBuilder<TypeConfig, LogStore, PartitionStateMachine, tempfile::TempDir>
    for PartitionStores
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, PartitionStateMachine), RaftStorageError> {
        let (dir, db) = open_db();
        // A non-zero group id, so any key that forgets its group prefix shows up as a failure.
        let group = GroupId(7);
        Ok((
            dir,
            LogStore::new(db.clone(), group, None),
            PartitionStateMachine::open(db, group)?,
        ))
    }
}

impl StoreBuilder<TypeConfig, LogStore, ControllerStateMachine, tempfile::TempDir>
    for ControllerStores
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, ControllerStateMachine), RaftStorageError> {
        let (dir, db) = open_db();
        Ok((
            dir,
            LogStore::new(db.clone(), GroupId::CONTROLLER, None),
            ControllerStateMachine::open(db)?,
        ))
    }
}

#[test]
fn partition_store_passes_openraft_suite() -> Result<(), RaftStorageError> {
    Suite::test_all(PartitionStores)
}

#[test]
fn controller_store_passes_openraft_suite() -> Result<(), RaftStorageError> {
    Suite::test_all(ControllerStores)
}
