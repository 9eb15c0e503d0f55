//! The controller group's state machine: topics, their partition groups and replicas, and
//! idempotent-producer ids. Small and rarely written, so it lives in memory and is persisted
//! whole on every apply. The directory (users, identities, API keys), which grows with the
//! user base, is stored row by row instead (see [`super::directory`]); both are written in
//! one batch per apply and travel together in snapshots.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, RwLock};

use chat4all_storage::{Batch, Cf, Db, keys};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, LogId, OptionalSend, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::directory::{self, DirectoryCounters, DirectoryReader};
use super::{
    AppliedMeta, MarkerSnapshotBuilder, RowTxn, TAG_APPLIED, decode, encode, load_snapshot, marker,
    read_err, save_snapshot, snapshot_meta, write_err,
};
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

/// A controller snapshot: the in-memory state and the directory's rows.
#[derive(Serialize, Deserialize)]
struct ControllerSnapshotData {
    state: ControllerState,
    directory: Vec<(serde_bytes::ByteBuf, serde_bytes::ByteBuf)>,
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
        let state: ControllerState = db
            .get(
                Cf::GroupMeta,
                &keys::group_tag(GroupId::CONTROLLER.0, TAG_APPLIED),
            )
            .map_err(read_err)?
            .unwrap_or_default();
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let ControllerSnapshotData {
            mut state,
            directory,
        } = decode(&data)?;
        state.applied = AppliedMeta {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let mut b = self.db.batch();
        let (start, end) = directory::range();
        b.delete_range(Cf::DirectoryRow, &start, &end);
        for (k, v) in &directory {
            b.put_raw(Cf::DirectoryRow, k, v);
        }
        let topics = state.topics.len();
        self.replace(b, state)?;
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            topics,
            directory_rows = directory.len(),
            "installed a controller snapshot"
        );
        // Synced: it makes the installed state durable too (written before it).
        save_snapshot(&self.db, GroupId::CONTROLLER, &marker(meta), true)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        // Called in order with `apply`: the state read here is one point, under its meta.
        if load_snapshot(&self.db, GroupId::CONTROLLER)?.is_none() {
            return Ok(None);
        }
        let state = self.state();
        let (start, end) = directory::range();
        let rows = self
            .db
            .scan_raw(Cf::DirectoryRow, &start, &end)
            .map_err(read_err)?;
        let data = encode(&ControllerSnapshotData {
            state: (*state).clone(),
            directory: rows
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        })?;
        Ok(Some(Snapshot {
            meta: snapshot_meta(GroupId::CONTROLLER, &state.applied),
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}
