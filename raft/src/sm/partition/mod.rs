//! The state machine of one topic-partition: the partition log itself, its offsets and its
//! idempotent-producer state. Offsets are assigned here, in apply, so they are dense and every
//! replica assigns the same ones; an offset is never reused because the log only moves forward.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chat4all_storage::{Cf, Db, StoredRecord, keys};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, LogId, OptionalSend, SnapshotMeta, StoredMembership};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::chat::{self, ChatReader, ChatResponse, UserWatch};
use super::{
    AppliedMeta, AppliedState, MarkerSnapshotBuilder, RowTxn, TAG_APPLIED, load_snapshot, read_err,
    write_err,
};
use crate::producer_state::{self, Decision, ProducerEntry};
use crate::snapshot::SnapshotData;
use crate::types::{
    AppendBatch, Command, CommandResponse, Entry, GroupId, NodeId, NodeInfo, PartitionCommand,
    PartitionResponse, RaftStorageError, TypeConfig,
};

mod snapshot;

/// The partition's applied state, persisted with every apply.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct PartitionState {
    /// Raft bookkeeping.
    pub applied: AppliedMeta,
    /// The first offset still in the log.
    pub log_start_offset: u64,
    /// The next offset to assign: the high watermark, since only committed entries are applied.
    pub next_offset: u64,
    /// Bytes of the records in `[log_start_offset, next_offset)`, for size retention.
    pub total_bytes: u64,
}

impl AppliedState for PartitionState {
    fn applied_mut(&mut self) -> &mut AppliedMeta {
        &mut self.applied
    }
}

/// What a partition keeps besides its log; a property of the topic, the same on every replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartitionKind {
    /// Just the log.
    Log,
    /// The latest offset of every record key (a compacted topic such as
    /// `__consumer_offsets`), so the latest value of a key is one lookup, not a log scan.
    Compacted,
    /// The chat domain (`chat.messages`): conversations, messages and their status, decided
    /// by [`crate::types::PartitionCommand::Chat`] commands, and each event indexed in the
    /// streams of the users it is for.
    Chat,
    /// Inboxes by key (`chat.deliveries`: one per channel recipient): each event in each
    /// inbox once, numbered per inbox, however often a router delivers it.
    Inbox,
}

/// Records read from a partition.
#[derive(Clone, Debug)]
pub struct ReadBatch {
    /// `(offset, record)` pairs, ascending.
    pub records: Vec<(u64, StoredRecord)>,
    /// The high watermark when read.
    pub high_watermark: u64,
    /// The log start offset when read.
    pub log_start_offset: u64,
}

/// A read outside `[log_start_offset, high_watermark]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetOutOfRange {
    /// The lowest readable offset.
    pub log_start_offset: u64,
    /// The high watermark (reading at it waits for new records).
    pub high_watermark: u64,
}

struct Inner {
    db: Db,
    group: GroupId,
    kind: PartitionKind,
    state: RwLock<(PartitionState, HashMap<i64, ProducerEntry>)>,
    hw: watch::Sender<u64>,
    /// Per-user wake-ups for stream readers (chat partitions only).
    user_watch: UserWatch,
}

/// What one apply call accumulates for chat commands: the row writes, and the users whose
/// streams got events (to wake their readers once the batch is written).
struct ChatApply<'a> {
    rows: RowTxn<'a>,
    woken: Vec<Vec<u8>>,
}

/// The state machine of one partition; clones share it (openraft owns one, readers the others).
#[derive(Clone)]
pub struct PartitionStateMachine {
    inner: Arc<Inner>,
}

fn producer_key(group: GroupId, id: i64) -> [u8; keys::GROUP_U64_KEY_LEN] {
    keys::group_i64(group.0, id)
}

/// A partition's applied state and producers as stored.
fn load(
    db: &Db,
    group: GroupId,
) -> Result<(PartitionState, HashMap<i64, ProducerEntry>), RaftStorageError> {
    let state: PartitionState = db
        .get(Cf::GroupMeta, &keys::group_tag(group.0, TAG_APPLIED))
        .map_err(read_err)?
        .unwrap_or_default();
    let end = keys::group_end(group.0)
        .map(|k| k.to_vec())
        .unwrap_or_else(|| vec![0xff; 17]);
    let rows: Vec<(Vec<u8>, ProducerEntry)> = db
        .scan(
            Cf::ProducerState,
            &keys::group_start(group.0),
            &end,
            usize::MAX,
        )
        .map_err(read_err)?;
    let producers = rows
        .into_iter()
        .filter_map(|(k, v)| keys::decode_group_i64(&k).map(|(_, id)| (id, v)))
        .collect();
    Ok((state, producers))
}

impl PartitionStateMachine {
    /// Opens the partition state of `group`, recovering what was applied before a restart.
    pub fn open(db: Db, group: GroupId) -> Result<PartitionStateMachine, RaftStorageError> {
        PartitionStateMachine::open_with(db, group, PartitionKind::Log)
    }

    /// Like [`PartitionStateMachine::open`], for a partition of `kind`. Every replica of a
    /// group must be opened alike: it is a property of the topic.
    pub fn open_with(
        db: Db,
        group: GroupId,
        kind: PartitionKind,
    ) -> Result<PartitionStateMachine, RaftStorageError> {
        snapshot::resume_install(&db, group)?;
        let (state, producers) = load(&db, group)?;
        let (hw, _) = watch::channel(state.next_offset);
        Ok(PartitionStateMachine {
            inner: Arc::new(Inner {
                db,
                group,
                kind,
                state: RwLock::new((state, producers)),
                hw,
                user_watch: UserWatch::default(),
            }),
        })
    }

    /// Reads of the chat rows (empty unless this is a chat partition).
    pub fn chat(&self) -> ChatReader {
        ChatReader {
            db: self.inner.db.clone(),
            group: self.inner.group,
        }
    }

    /// The group this state machine belongs to.
    pub fn group(&self) -> GroupId {
        self.inner.group
    }

    /// The applied state now.
    pub fn state(&self) -> PartitionState {
        self.lock_read().0.clone()
    }

    /// Subscribes to high-watermark changes (for long-polling fetches).
    pub fn watch_high_watermark(&self) -> watch::Receiver<u64> {
        self.inner.hw.subscribe()
    }

    /// Subscribes to `user`'s stream in this (chat) partition: the receiver sees a change
    /// whenever events for that user are applied, and not for anyone else's.
    pub fn watch_user(&self, user: &str) -> watch::Receiver<u64> {
        self.inner.user_watch.subscribe(user.as_bytes())
    }

    fn lock_read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, (PartitionState, HashMap<i64, ProducerEntry>)> {
        // A poisoned lock means an apply panicked half-way; the in-memory copy is still the
        // last fully applied state because it is only replaced after a successful write.
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads up to `max_records` committed records from `offset`, stopping early once
    /// `max_bytes` are collected (at least one record is returned if any is available).
    pub fn read(
        &self,
        offset: u64,
        max_records: usize,
        max_bytes: u64,
    ) -> Result<Result<ReadBatch, OffsetOutOfRange>, chat4all_storage::StorageError> {
        let (log_start_offset, high_watermark) = {
            let s = self.lock_read();
            (s.0.log_start_offset, s.0.next_offset)
        };
        if offset < log_start_offset || offset > high_watermark {
            return Ok(Err(OffsetOutOfRange {
                log_start_offset,
                high_watermark,
            }));
        }
        let g = self.inner.group.0;
        let rows: Vec<(Vec<u8>, StoredRecord)> = self.inner.db.scan(
            Cf::OffsetRecord,
            &keys::group_u64(g, offset),
            &keys::group_u64(g, high_watermark),
            max_records,
        )?;
        let mut records = Vec::with_capacity(rows.len());
        let mut bytes = 0u64;
        for (k, r) in rows {
            let Some((_, off)) = keys::decode_group_u64(&k) else {
                continue;
            };
            bytes += r.size_bytes();
            records.push((off, r));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(Ok(ReadBatch {
            records,
            high_watermark,
            log_start_offset,
        }))
    }

    /// The latest record of every key that starts with `prefix`, in key order, as
    /// `(key bytes, offset, record)`; keys whose latest record is a tombstone (a JSON `null`
    /// value) are absent. Empty unless the partition is compacted. Reads what this replica
    /// applied: a caller that needs everything committed confirms its leadership first.
    pub fn latest_with_prefix(
        &self,
        prefix: &[u8],
    ) -> Result<Vec<(Vec<u8>, u64, StoredRecord)>, chat4all_storage::StorageError> {
        if self.inner.kind != PartitionKind::Compacted {
            return Ok(Vec::new());
        }
        let g = self.inner.group.0;
        let start = keys::group_bytes(g, prefix);
        let end = keys::prefix_end(&start)
            .or_else(|| keys::group_end(g).map(|k| k.to_vec()))
            .unwrap_or_else(|| vec![0xff; 17]);
        let rows: Vec<(Vec<u8>, u64)> =
            self.inner
                .db
                .scan(Cf::KeyOffset, &start, &end, usize::MAX)?;
        let mut out = Vec::with_capacity(rows.len());
        for (k, offset) in rows {
            // A key whose record retention deleted is gone with it.
            if let Some(r) = self
                .inner
                .db
                .get::<StoredRecord>(Cf::OffsetRecord, &keys::group_u64(g, offset))?
            {
                out.push((k[8..].to_vec(), offset, r));
            }
        }
        Ok(out)
    }

    /// The offset retention should advance the log start to: the first record that is neither
    /// older than `retention_ms` (relative to `now_ms`) nor beyond `retention_bytes`. Decided by
    /// the leader and proposed, so every replica deletes the same records.
    pub fn retention_target(
        &self,
        now_ms: i64,
        retention_ms: Option<i64>,
        retention_bytes: Option<i64>,
    ) -> Result<u64, chat4all_storage::StorageError> {
        let (start, end, total) = {
            let s = self.lock_read();
            (s.0.log_start_offset, s.0.next_offset, s.0.total_bytes)
        };
        let g = self.inner.group.0;
        let mut target = start;
        let mut remaining = total;
        const CHUNK: usize = 1024;
        while target < end {
            let rows: Vec<(Vec<u8>, StoredRecord)> = self.inner.db.scan(
                Cf::OffsetRecord,
                &keys::group_u64(g, target),
                &keys::group_u64(g, end),
                CHUNK,
            )?;
            if rows.is_empty() {
                return Ok(end);
            }
            for (k, r) in &rows {
                let Some((_, off)) = keys::decode_group_u64(k) else {
                    continue;
                };
                let too_old =
                    retention_ms.is_some_and(|ms| r.timestamp_ms < now_ms.saturating_sub(ms));
                let too_big = retention_bytes.is_some_and(|b| remaining > b.max(0) as u64);
                if !too_old && !too_big {
                    return Ok(off);
                }
                remaining = remaining.saturating_sub(r.size_bytes());
                target = off + 1;
            }
        }
        Ok(target)
    }

    fn apply_command(
        &self,
        batch: &mut chat4all_storage::Batch<'_>,
        state: &mut PartitionState,
        producers: &mut HashMap<i64, ProducerEntry>,
        chat_apply: &mut ChatApply<'_>,
        cmd: PartitionCommand,
    ) -> Result<PartitionResponse, RaftStorageError> {
        let g = self.inner.group;
        match cmd {
            PartitionCommand::Chat(cmd) => {
                let inbox = match self.inner.kind {
                    PartitionKind::Chat => false,
                    PartitionKind::Inbox => true,
                    _ => return Ok(PartitionResponse::Chat(ChatResponse::NotChat)),
                };
                let (resp, records) =
                    chat::apply(&mut chat_apply.rows, g, inbox, state.next_offset, *cmd)?;
                if !inbox {
                    for (i, r) in records.iter().enumerate() {
                        let offset = state.next_offset + i as u64;
                        let users = chat::stream::index(&mut chat_apply.rows, g, offset, r)?;
                        chat_apply
                            .woken
                            .extend(users.into_iter().map(String::into_bytes));
                    }
                }
                for r in records {
                    batch
                        .put(
                            Cf::OffsetRecord,
                            &keys::group_u64(g.0, state.next_offset),
                            &r,
                        )
                        .map_err(write_err)?;
                    state.total_bytes += r.size_bytes();
                    state.next_offset += 1;
                }
                Ok(PartitionResponse::Chat(resp))
            }
            PartitionCommand::Append(AppendBatch { producer, records }) => {
                let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
                if let Some(p) = producer {
                    match producer_state::decide(
                        producers.get(&p.id),
                        p.epoch,
                        p.base_sequence,
                        count,
                    ) {
                        Decision::Append => {}
                        Decision::Duplicate(b) => {
                            return Ok(PartitionResponse::Appended {
                                base_offset: b.base_offset,
                                count: b.count,
                                duplicate: true,
                            });
                        }
                        Decision::OutOfOrder { expected } => {
                            return Ok(PartitionResponse::OutOfOrderSequence { expected });
                        }
                        Decision::Fenced { current_epoch } => {
                            return Ok(PartitionResponse::Fenced { current_epoch });
                        }
                    }
                    let entry = producer_state::record_append(
                        producers.remove(&p.id),
                        p.epoch,
                        p.base_sequence,
                        count,
                        state.next_offset,
                    );
                    batch
                        .put(Cf::ProducerState, &producer_key(g, p.id), &entry)
                        .map_err(write_err)?;
                    producers.insert(p.id, entry);
                }
                let base_offset = state.next_offset;
                for r in &records {
                    batch
                        .put(
                            Cf::OffsetRecord,
                            &keys::group_u64(g.0, state.next_offset),
                            r,
                        )
                        .map_err(write_err)?;
                    if self.inner.kind == PartitionKind::Compacted {
                        index_key(batch, g.0, state.next_offset, r)?;
                    }
                    state.total_bytes += r.size_bytes();
                    state.next_offset += 1;
                }
                Ok(PartitionResponse::Appended {
                    base_offset,
                    count,
                    duplicate: false,
                })
            }
            PartitionCommand::AppendMany(batches) => {
                let mut out = Vec::with_capacity(batches.len());
                for b in batches {
                    out.push(self.apply_command(
                        batch,
                        state,
                        producers,
                        chat_apply,
                        PartitionCommand::Append(b),
                    )?);
                }
                Ok(PartitionResponse::Many(out))
            }
            PartitionCommand::AdvanceLogStart { offset } => {
                let target = offset.min(state.next_offset);
                if target > state.log_start_offset {
                    let from = keys::group_u64(g.0, state.log_start_offset);
                    let to = keys::group_u64(g.0, target);
                    let removed: Vec<(Vec<u8>, StoredRecord)> = self
                        .inner
                        .db
                        .scan(Cf::OffsetRecord, &from, &to, usize::MAX)
                        .map_err(read_err)?;
                    let bytes: u64 = removed.iter().map(|(_, r)| r.size_bytes()).sum();
                    state.total_bytes = state.total_bytes.saturating_sub(bytes);
                    batch.delete_range(Cf::OffsetRecord, &from, &to);
                    state.log_start_offset = target;
                }
                Ok(PartitionResponse::LogStartAdvanced {
                    log_start_offset: state.log_start_offset,
                })
            }
            PartitionCommand::Compact { below } => {
                if self.inner.kind != PartitionKind::Compacted {
                    return Ok(PartitionResponse::Compacted { removed: 0 });
                }
                let end = below.min(state.next_offset);
                let rows: Vec<(Vec<u8>, StoredRecord)> = self
                    .inner
                    .db
                    .scan(
                        Cf::OffsetRecord,
                        &keys::group_u64(g.0, state.log_start_offset),
                        &keys::group_u64(g.0, end),
                        usize::MAX,
                    )
                    .map_err(read_err)?;
                let mut removed = 0;
                for (k, r) in rows {
                    let Some((_, off)) = keys::decode_group_u64(&k) else {
                        continue;
                    };
                    let latest: Option<u64> = match &r.key {
                        Some(key) => self
                            .inner
                            .db
                            .get(Cf::KeyOffset, &keys::group_bytes(g.0, &key.bytes))
                            .map_err(read_err)?,
                        None => None,
                    };
                    if latest != Some(off) {
                        batch.delete(Cf::OffsetRecord, &k);
                        state.total_bytes = state.total_bytes.saturating_sub(r.size_bytes());
                        removed += 1;
                    }
                }
                Ok(PartitionResponse::Compacted { removed })
            }
        }
    }
}

/// Points a compacted partition's key at `offset`, or forgets the key for a tombstone (a JSON
/// `null` value, as Kafka's null value). Records without a key are not indexed.
fn index_key(
    batch: &mut chat4all_storage::Batch<'_>,
    group: u64,
    offset: u64,
    r: &StoredRecord,
) -> Result<(), RaftStorageError> {
    let Some(key) = &r.key else {
        return Ok(());
    };
    let k = keys::group_bytes(group, &key.bytes);
    if is_tombstone(r) {
        batch.delete(Cf::KeyOffset, &k);
    } else {
        batch.put(Cf::KeyOffset, &k, &offset).map_err(write_err)?;
    }
    Ok(())
}

/// Whether a record deletes its key from a compacted partition.
pub fn is_tombstone(r: &StoredRecord) -> bool {
    r.value.format == chat4all_storage::PayloadFormat::Json && r.value.bytes == b"null"
}

impl RaftStateMachine<TypeConfig> for PartitionStateMachine {
    type SnapshotBuilder = MarkerSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, NodeInfo>), RaftStorageError> {
        let s = self.lock_read();
        Ok((s.0.applied.last_applied, s.0.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let (mut state, mut producers) = {
            let s = self.lock_read();
            (s.0.clone(), s.1.clone())
        };
        let db = self.inner.db.clone();
        let mut batch = db.batch();
        let mut chat_apply = ChatApply {
            rows: RowTxn::new(&db, Cf::ChatRow),
            woken: Vec::new(),
        };
        let mut responses = Vec::new();
        for entry in entries {
            state.applied.last_applied = Some(entry.log_id);
            let resp = match entry.payload {
                EntryPayload::Blank => CommandResponse::None,
                EntryPayload::Membership(m) => {
                    state.applied.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::None
                }
                EntryPayload::Normal(Command::Partition(cmd)) => {
                    if matches!(
                        cmd,
                        PartitionCommand::AdvanceLogStart { .. } | PartitionCommand::Compact { .. }
                    ) && !batch.is_empty()
                    {
                        // Retention reads the records it deletes (to account their bytes), so
                        // earlier appends of this call must be visible first: the result must
                        // not depend on how openraft grouped entries into apply calls.
                        db.write(std::mem::replace(&mut batch, db.batch()), false)
                            .map_err(write_err)?;
                    }
                    CommandResponse::Partition(self.apply_command(
                        &mut batch,
                        &mut state,
                        &mut producers,
                        &mut chat_apply,
                        cmd,
                    )?)
                }
                EntryPayload::Normal(Command::Controller(_)) => {
                    tracing::error!(group = %self.inner.group, "controller command in a partition log; ignored");
                    CommandResponse::None
                }
            };
            responses.push(resp);
        }
        chat_apply.rows.write_into(&mut batch);
        batch
            .put(
                Cf::GroupMeta,
                &keys::group_tag(self.inner.group.0, TAG_APPLIED),
                &state,
            )
            .map_err(write_err)?;
        db.write(batch, false).map_err(write_err)?;
        let hw = state.next_offset;
        *self.inner.state.write().unwrap_or_else(|p| p.into_inner()) = (state, producers);
        self.inner.hw.send_if_modified(|old| {
            let changed = *old != hw;
            *old = hw;
            changed
        });
        if !chat_apply.woken.is_empty() {
            self.inner
                .user_watch
                .notify(chat_apply.woken.iter().map(Vec::as_slice));
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MarkerSnapshotBuilder::new(
            self.inner.db.clone(),
            self.inner.group,
            &self.lock_read().0.applied,
        )
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, RaftStorageError> {
        // Only openraft's chunked install API uses this; snapshots arrive whole (staged by
        // `crate::snapshot::Inbound`) through `install_full_snapshot`.
        Ok(Box::new(SnapshotData::Empty))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), RaftStorageError> {
        self.install(meta, *snapshot).await
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        // Called in order with `apply`, so the state read here is one consistent point: the
        // snapshot is the partition as of now, under this point's meta (which may be later
        // than the last one built; any applied point is a valid snapshot).
        if load_snapshot(&self.inner.db, self.inner.group)?.is_none() {
            return Ok(None);
        }
        self.current_snapshot().map(Some)
    }
}
