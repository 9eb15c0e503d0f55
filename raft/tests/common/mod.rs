//! What the state-machine tests share: a partition on a fresh RocksDB, and a replica made from
//! a snapshot of another.

use chat4all_raft::sm::partition::{PartitionKind, PartitionStateMachine};
use chat4all_raft::types::GroupId;
use chat4all_storage::{Db, DbConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};

/// A `kind` partition state machine on a fresh RocksDB in a temporary directory.
pub fn open(kind: PartitionKind) -> (tempfile::TempDir, PartitionStateMachine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&DbConfig::new(dir.path())).expect("open db");
    let sm = PartitionStateMachine::open_with(db, GroupId(5), kind).expect("open sm");
    (dir, sm)
}

/// A fresh `kind` partition with `sm`'s snapshot installed, the way openraft ships one: built
/// (which marks the point), then read as the current snapshot and sent.
pub async fn replica_of(
    sm: &mut PartitionStateMachine,
    kind: PartitionKind,
) -> (tempfile::TempDir, PartitionStateMachine) {
    let built = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let snap = sm
        .get_current_snapshot()
        .await
        .expect("read snapshot")
        .expect("a snapshot once one is built");
    assert_eq!(snap.meta, built.meta, "nothing was applied in between");
    let (dir, mut replica) = open(kind);
    replica
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    (dir, replica)
}
