//! The controller group's state machine: topics, their partition groups and replicas, and
//! idempotent-producer ids. Small and rarely written, so it lives in memory and is persisted
//! whole on every apply. The directory (users, identities, API keys), which grows with the
//! user base, is stored row by row instead (see [`super::directory`]); both are written in
//! one batch per apply and travel together in snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chat4all_storage::{Batch, Cf, Db, keys};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, LogId, OptionalSend, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::directory::{self, DirectoryCounters, DirectoryReader};
use super::{
    AppliedMeta, AppliedState, MarkerSnapshotBuilder, RowTxn, TAG_APPLIED, encode, load_snapshot,
    read_err, snapshot_err, snapshot_meta, write_err,
};
use crate::snapshot::{InstallTarget, RowRange, SnapshotData, SnapshotSource};
use crate::types::{
    Command, CommandResponse, ControllerCommand, ControllerResponse, Entry, GroupId, NodeId,
    NodeInfo, PartitionMeta, RaftStorageError, TopicMeta, TypeConfig,
};

/// Cluster metadata as applied by the controller group.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ControllerState {
    /// Raft bookkeeping.
    pub applied: AppliedMeta,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicMeta>,
    /// The next partition group id to hand out (group 0 is the controller).
    pub next_group: u64,
    /// The next producer id to hand out.
    pub next_producer_id: i64,
    /// Allocated producer ids and their current epochs.
    pub producer_epochs: BTreeMap<i64, i16>,
    /// The directory's counters and token key (its rows are in RocksDB).
    pub directory: DirectoryCounters,
}

impl AppliedState for ControllerState {
    fn applied_mut(&mut self) -> &mut AppliedMeta {
        &mut self.applied
    }
}

impl ControllerState {
    fn apply(
        &mut self,
        txn: &mut RowTxn<'_>,
        cmd: ControllerCommand,
    ) -> Result<ControllerResponse, RaftStorageError> {
        Ok(match cmd {
            ControllerCommand::Directory(cmd) => {
                ControllerResponse::Directory(self.directory.apply(txn, cmd)?)
            }
            ControllerCommand::CreateTopic(spec) => {
                if self.topics.contains_key(&spec.name) {
                    return Ok(ControllerResponse::TopicExists);
                }
                let first = self.next_group.max(1);
                let partitions: Vec<PartitionMeta> = spec
                    .assignments
                    .into_iter()
                    .enumerate()
                    .map(|(i, replicas)| PartitionMeta {
                        group: GroupId(first + i as u64),
                        replicas,
                    })
                    .collect();
                self.next_group = first + partitions.len() as u64;
                let meta = TopicMeta {
                    name: spec.name.clone(),
                    partitions,
                    retention_ms: spec.retention_ms,
                    retention_bytes: spec.retention_bytes,
                    created_at_ms: spec.created_at_ms,
                };
                self.topics.insert(spec.name, meta.clone());
                ControllerResponse::TopicCreated(meta)
            }
            ControllerCommand::AllocateProducer { bump: None } => {
                let id = self.next_producer_id;
                self.next_producer_id += 1;
                self.producer_epochs.insert(id, 0);
                ControllerResponse::Producer { id, epoch: 0 }
            }
            ControllerCommand::AllocateProducer { bump: Some(id) } => {
                match self.producer_epochs.get_mut(&id) {
                    None => ControllerResponse::UnknownProducer,
                    Some(e) if *e == i16::MAX => ControllerResponse::EpochExhausted,
                    Some(e) => {
                        *e += 1;
                        ControllerResponse::Producer { id, epoch: *e }
                    }
                }
            }
        })
    }
}

/// The rows a controller snapshot carries besides its state: the directory's.
fn snapshot_ranges() -> Vec<RowRange> {
    let (start, end) = directory::range();
    vec![RowRange {
        cf: Cf::DirectoryRow,
        start: start.to_vec(),
        end: end.to_vec(),
    }]
}

fn load(db: &Db) -> Result<ControllerState, RaftStorageError> {
    Ok(db
        .get(
            Cf::GroupMeta,
            &keys::group_tag(GroupId::CONTROLLER.0, TAG_APPLIED),
        )
        .map_err(read_err)?
        .unwrap_or_default())
}

/// The controller's state machine; clones share it.
#[derive(Clone)]
pub struct ControllerStateMachine {
    db: Db,
    state: Arc<RwLock<Arc<ControllerState>>>,
    tx: watch::Sender<Arc<ControllerState>>,
}

impl ControllerStateMachine {
    /// Opens the controller state, recovering what was applied before a restart.
    pub fn open(db: Db) -> Result<ControllerStateMachine, RaftStorageError> {
        let ranges = snapshot_ranges();
        if let Some(done) = crate::snapshot::resume_install(
            &mut InstallTarget::<ControllerState>::new(&db, GroupId::CONTROLLER, &ranges),
        )? {
            tracing::info!(
                rows = done.rows,
                "resumed and finished a controller snapshot install"
            );
        }
        let state = load(&db)?;
        let state = Arc::new(state);
        let (tx, _) = watch::channel(state.clone());
        Ok(ControllerStateMachine {
            db,
            state: Arc::new(RwLock::new(state)),
            tx,
        })
    }

    /// The metadata now.
    pub fn state(&self) -> Arc<ControllerState> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads of the directory as applied on this node.
    pub fn directory(&self) -> DirectoryReader {
        DirectoryReader {
            db: self.db.clone(),
        }
    }

    /// Subscribes to metadata changes.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ControllerState>> {
        self.tx.subscribe()
    }

    /// Persists `state` (with the directory writes in `b`) and publishes it.
    fn replace(&self, mut b: Batch<'_>, state: ControllerState) -> Result<(), RaftStorageError> {
        b.put(
            Cf::GroupMeta,
            &keys::group_tag(GroupId::CONTROLLER.0, TAG_APPLIED),
            &state,
        )
        .map_err(write_err)?;
        self.db.write(b, false).map_err(write_err)?;
        let state = Arc::new(state);
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
        self.tx.send_replace(state);
        Ok(())
    }
}

impl RaftStateMachine<TypeConfig> for ControllerStateMachine {
    type SnapshotBuilder = MarkerSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), RaftStorageError> {
        let s = self.state();
        Ok((s.applied.last_applied, s.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = (*self.state()).clone();
        let mut txn = RowTxn::new(&self.db, Cf::DirectoryRow);
        let mut responses = Vec::new();
        for entry in entries {
            state.applied.last_applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Blank => CommandResponse::None,
                EntryPayload::Membership(m) => {
                    state.applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::None
                }
                EntryPayload::Normal(Command::Controller(cmd)) => {
                    CommandResponse::Controller(state.apply(&mut txn, cmd)?)
                }
                EntryPayload::Normal(Command::Partition(_)) => {
                    tracing::error!("partition command in the controller log; ignored");
                    CommandResponse::None
                }
            });
        }
        let mut b = self.db.batch();
        txn.write_into(&mut b);
        self.replace(b, state)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        // The controller's snapshot is its live state too: the metadata and the directory rows
        // (which grow with the users), read when a follower needs them.
        MarkerSnapshotBuilder::new(self.db.clone(), GroupId::CONTROLLER, &self.state().applied)
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, RaftStorageError> {
        // Only openraft's chunked install API uses this (see the partition's).
        Ok(Box::new(SnapshotData::Empty))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), RaftStorageError> {
        let (db, m) = (self.db.clone(), meta.clone());
        let done = tokio::task::spawn_blocking(move || {
            let ranges = snapshot_ranges();
            InstallTarget::<ControllerState>::new(&db, GroupId::CONTROLLER, &ranges)
                .install(&m, *snapshot)
        })
        .await
        .map_err(snapshot_err)??;
        let state = Arc::new(load(&self.db)?);
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            topics = state.topics.len(),
            directory_rows = done.rows,
            chunks = done.chunks,
            "installed a controller snapshot"
        );
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = state.clone();
        self.tx.send_replace(state);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        // Called in order with `apply`: the state read here and the view taken right after are
        // one point, under its meta.
        if load_snapshot(&self.db, GroupId::CONTROLLER)?.is_none() {
            return Ok(None);
        }
        let state = self.state();
        let source = SnapshotSource::new(&self.db, encode(&*state)?, snapshot_ranges());
        Ok(Some(Snapshot {
            meta: snapshot_meta(GroupId::CONTROLLER, &state.applied),
            snapshot: Box::new(SnapshotData::Source(Arc::new(source))),
        }))
    }
}
