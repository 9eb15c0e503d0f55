//! A partition's snapshot: the rows it carries, read from a point-in-time view as a follower
//! needs them, and their install on the follower.

use std::sync::Arc;

use openraft::SnapshotMeta;
use openraft::storage::Snapshot;

use super::{PartitionState, PartitionStateMachine, load};
use crate::sm::{encode, snapshot_err, snapshot_meta};
use crate::snapshot::{InstallTarget, Installed, RowRange, SnapshotData, SnapshotSource};
use crate::types::{GroupId, NodeId, NodeInfo, RaftStorageError, TypeConfig};
use chat4all_storage::{Cf, Db};

/// The rows a partition's snapshot carries, and that installing one replaces: every row of
/// the group in each column family a partition writes.
fn snapshot_ranges(group: GroupId) -> Vec<RowRange> {
    [
        Cf::OffsetRecord,
        Cf::ProducerState,
        Cf::KeyOffset,
        Cf::ChatRow,
    ]
    .into_iter()
    .map(|cf| RowRange::group(cf, group))
    .collect()
}

/// Finishes an install that a crash cut short (see [`crate::snapshot::resume_install`]),
/// before the partition is opened.
pub(super) fn resume_install(db: &Db, group: GroupId) -> Result<(), RaftStorageError> {
    let ranges = snapshot_ranges(group);
    let mut target = InstallTarget::<PartitionState>::new(db, group, &ranges);
    if let Some(done) = crate::snapshot::resume_install(&mut target)? {
        tracing::info!(%group, chunks = done.chunks, rows = done.rows, "resumed and finished a snapshot install");
    }
    Ok(())
}

impl PartitionStateMachine {
    /// The partition as a follower installs it, with its meta: its state now, and a view of
    /// its rows (records, producers, compacted keys, chat rows) at this point, read chunk by
    /// chunk while it is sent. Cheap: nothing is read until a chunk is.
    pub(super) fn current_snapshot(&self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let state = self.lock_read().0.clone();
        let g = self.inner.group;
        let meta = snapshot_meta(g, &state.applied);
        let source = SnapshotSource::new(&self.inner.db, encode(&state)?, snapshot_ranges(g));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::Source(Arc::new(source))),
        })
    }

    /// Replaces the partition with a snapshot's, off the runtime (it writes every row).
    pub(super) async fn install(
        &self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        data: SnapshotData,
    ) -> Result<(), RaftStorageError> {
        let (db, group, m) = (self.inner.db.clone(), self.inner.group, meta.clone());
        let done: Installed = tokio::task::spawn_blocking(move || {
            let ranges = snapshot_ranges(group);
            InstallTarget::<PartitionState>::new(&db, group, &ranges).install(&m, data)
        })
        .await
        .map_err(snapshot_err)??;
        let (state, producers) = load(&self.inner.db, group)?;
        tracing::info!(
            %group,
            last_log_id = ?meta.last_log_id,
            records = state.next_offset - state.log_start_offset,
            chunks = done.chunks,
            rows = done.rows,
            bytes = done.bytes,
            "installed a snapshot"
        );
        let hw = state.next_offset;
        *self.inner.state.write().unwrap_or_else(|p| p.into_inner()) = (state, producers);
        self.inner.hw.send_replace(hw);
        self.inner.user_watch.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chat4all_storage::{Db, DbConfig, Payload, PayloadFormat, StoredRecord, keys};
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::sm::load_snapshot;
    use crate::types::{AppendBatch, Command, PartitionCommand, ProducerBatch};

    const G: GroupId = GroupId(5);

    fn append(index: u64, producer: Option<ProducerBatch>, value: String) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Command::Partition(PartitionCommand::Append(
                AppendBatch {
                    producer,
                    records: vec![StoredRecord {
                        timestamp_ms: index as i64,
                        key: None,
                        value: Payload {
                            format: PayloadFormat::Text,
                            bytes: value.into_bytes(),
                        },
                        headers: Vec::new(),
                    }],
                },
            ))),
        }
    }

    fn records(sm: &PartitionStateMachine) -> Vec<(u64, StoredRecord)> {
        sm.read(0, usize::MAX, u64::MAX)
            .expect("read")
            .expect("in range")
            .records
    }

    /// A replica killed part-way through installing a snapshot (after 3 of its many chunks)
    /// opens to the snapshot's whole state, not to a mix of its old rows and some new ones:
    /// the install resumes from the staged file, which is then removed.
    #[tokio::test]
    async fn an_install_cut_short_by_a_crash_is_finished_when_the_replica_opens() {
        let leader_dir = tempfile::tempdir().expect("tempdir");
        let leader_db = Db::open(&DbConfig::new(leader_dir.path())).expect("open");
        let mut leader = PartitionStateMachine::open(leader_db, G).expect("open sm");
        let entries: Vec<_> = (1..=200)
            .map(|i| {
                let producer = (i % 2 == 0).then_some(ProducerBatch {
                    id: 7,
                    epoch: 0,
                    base_sequence: (i / 2 - 1) as i32,
                });
                append(
                    i,
                    producer,
                    format!("leader record {i} {}", "x".repeat(100)),
                )
            })
            .collect();
        leader.apply(entries).await.expect("apply");
        leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
        let snap = leader
            .get_current_snapshot()
            .await
            .expect("current")
            .expect("built");
        let SnapshotData::Source(source) = *snap.snapshot else {
            panic!("a current snapshot is read from the live state");
        };

        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = Db::open(&DbConfig::new(dir.path())).expect("open");
            let mut stale = PartitionStateMachine::open(db.clone(), G).expect("open sm");
            let old: Vec<_> = (1..=30)
                .map(|i| append(i, None, format!("stale {i}")))
                .collect();
            stale.apply(old).await.expect("apply");
            drop(stale);
            let ranges = snapshot_ranges(G);
            crate::snapshot::interrupt_install(
                &mut InstallTarget::<PartitionState>::new(&db, G, &ranges),
                &snap.meta,
                &source,
                1024,
                3,
            )
            .expect("a partial install");
            let partial = db
                .scan_raw(Cf::OffsetRecord, &keys::group_start(G.0), &[0xff; 8])
                .expect("scan");
            assert!(
                !partial.is_empty() && partial.len() < 200,
                "the crash left part of the records: {}",
                partial.len()
            );
        }

        let db = Db::open(&DbConfig::new(dir.path())).expect("reopen");
        let replica = PartitionStateMachine::open(db.clone(), G).expect("open sm");
        assert_eq!(replica.state(), leader.state());
        assert_eq!(records(&replica), records(&leader));
        assert_eq!(replica.lock_read().1, leader.lock_read().1, "producers");
        assert_eq!(
            load_snapshot(&db, G).expect("marker").map(|s| s.meta),
            Some(snap.meta),
        );
        let left = std::fs::read_dir(crate::snapshot::staging_dir(&db))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "the staged file is removed once installed");
    }
}
