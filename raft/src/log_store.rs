//! The Raft log of one group, in the node's shared RocksDB.
//!
//! Every entry and vote is written with a synchronous (fsynced) write before openraft is told it
//! is durable: a leader counts its own log toward a majority only after that, so no write is
//! acknowledged before a majority has it on disk. Many groups' fsyncs share RocksDB's WAL, so
//! concurrent appends of different partitions are committed by one fsync (group commit).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::time::Instant;

use chat4all_storage::{Cf, Db, StorageError, keys};
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{LogId, OptionalSend, StorageIOError, Vote};

use crate::types::{Entry, GroupId, NodeId, RaftStorageError, TypeConfig};

const TAG_VOTE: u8 = 1;
const TAG_COMMITTED: u8 = 2;
const TAG_PURGED: u8 = 3;

/// Observes how long synchronous log writes take (the fsync latency metric).
pub trait FsyncObserver: Send + Sync + 'static {
    /// Called after every synchronous write with its duration in seconds.
    fn observe_fsync(&self, seconds: f64);
}

/// The log store of one group. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    group: GroupId,
    observer: Option<std::sync::Arc<dyn FsyncObserver>>,
}

fn io_err(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}

impl LogStore {
    /// The log of `group` in `db`.
    pub fn new(
        db: Db,
        group: GroupId,
        observer: Option<std::sync::Arc<dyn FsyncObserver>>,
    ) -> LogStore {
        LogStore {
            db,
            group,
            observer,
        }
    }

    /// Whether this group has never stored anything (no vote, no entry): a fresh replica.
    pub fn is_pristine(&self) -> Result<bool, StorageError> {
        let vote: Option<Vote<NodeId>> = self
            .db
            .get(Cf::GroupRaftState, &keys::group_tag(self.group.0, TAG_VOTE))?;
        let purged: Option<LogId<NodeId>> = self.db.get(
            Cf::GroupRaftState,
            &keys::group_tag(self.group.0, TAG_PURGED),
        )?;
        Ok(vote.is_none() && purged.is_none() && self.last_entry()?.is_none())
    }

    fn last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let g = self.group.0;
        let end = keys::group_u64(g, u64::MAX);
        Ok(self
            .db
            .last_in::<Entry>(Cf::LogEntry, &keys::group_start(g), &end)?
            .map(|(_, e)| e))
    }

    fn index_key(&self, index: u64) -> [u8; keys::GROUP_U64_KEY_LEN] {
        keys::group_u64(self.group.0, index)
    }

    /// Runs a synchronous write off the async runtime and records its latency.
    async fn write_sync(
        &self,
        build: impl FnOnce(&Db) -> Result<chat4all_storage::Batch<'_>, StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        let db = self.db.clone();
        let observer = self.observer.clone();
        let res = tokio::task::spawn_blocking(move || {
            let batch = build(&db)?;
            let start = Instant::now();
            db.write(batch, true)?;
            if let Some(o) = observer {
                o.observe_fsync(start.elapsed().as_secs_f64());
            }
            Ok(())
        })
        .await;
        match res {
            Ok(r) => r,
            Err(join) => Err(StorageError::Corrupt {
                cf: "log",
                key: Vec::new(),
                reason: format!("blocking write task failed: {join}"),
            }),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => self.index_key(e + 1),
            Bound::Excluded(&e) => self.index_key(e),
            Bound::Unbounded => self.index_key(u64::MAX),
        };
        let rows: Vec<(Vec<u8>, Entry)> = self
            .db
            .scan(Cf::LogEntry, &self.index_key(start), &end, usize::MAX)
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        Ok(rows.into_iter().map(|(_, e)| e).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let purged: Option<LogId<NodeId>> = self
            .db
            .get(
                Cf::GroupRaftState,
                &keys::group_tag(self.group.0, TAG_PURGED),
            )
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let last = self
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(io_err(e)))?
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), RaftStorageError> {
        let key = keys::group_tag(self.group.0, TAG_VOTE);
        let vote = *vote;
        self.write_sync(move |db| {
            let mut b = db.batch();
            b.put(Cf::GroupRaftState, &key, &vote)?;
            Ok(b)
        })
        .await
        .map_err(|e| StorageIOError::write_vote(io_err(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, RaftStorageError> {
        self.db
            .get(Cf::GroupRaftState, &keys::group_tag(self.group.0, TAG_VOTE))
            .map_err(|e| StorageIOError::read_vote(io_err(e)).into())
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), RaftStorageError> {
        // Not fsynced: a lost committed id is recomputed by the next leader's heartbeat; it only
        // lets a restarted node apply what it knows to be committed sooner.
        let mut b = self.db.batch();
        b.put(
            Cf::GroupRaftState,
            &keys::group_tag(self.group.0, TAG_COMMITTED),
            &committed,
        )
        .map_err(|e| StorageIOError::write(io_err(e)))?;
        self.db
            .write(b, false)
            .map_err(|e| StorageIOError::write(io_err(e)).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, RaftStorageError> {
        let c: Option<Option<LogId<NodeId>>> = self
            .db
            .get(
                Cf::GroupRaftState,
                &keys::group_tag(self.group.0, TAG_COMMITTED),
            )
            .map_err(|e| StorageIOError::read(io_err(e)))?;
        Ok(c.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let group = self.group.0;
        let entries: Vec<Entry> = entries.into_iter().collect();
        let res = self
            .write_sync(move |db| {
                let mut b = db.batch();
                for e in &entries {
                    b.put(Cf::LogEntry, &keys::group_u64(group, e.log_id.index), e)?;
                }
                Ok(b)
            })
            .await;
        match res {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(io_err(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        let (from, to) = (self.index_key(log_id.index), self.index_key(u64::MAX));
        self.write_sync(move |db| {
            let mut b = db.batch();
            b.delete_range(Cf::LogEntry, &from, &to);
            Ok(b)
        })
        .await
        .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), RaftStorageError> {
        let g = self.group.0;
        let (from, to) = (self.index_key(0), self.index_key(log_id.index + 1));
        let mut b = self.db.batch();
        b.put(Cf::GroupRaftState, &keys::group_tag(g, TAG_PURGED), &log_id)
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        b.delete_range(Cf::LogEntry, &from, &to);
        // Not fsynced: if the purge is lost in a crash, the entries simply remain until the next.
        self.db
            .write(b, false)
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
    }
}
