//! The Raft log of one group, in the node's shared RocksDB.
//!
//! Entries are written to RocksDB when openraft appends them (readable at once), and openraft
//! is told they are durable only after the write-ahead log has been fsynced past them, by the
//! node's [`WalSyncer`]: a leader counts its own log toward a majority only then, so no write is
//! acknowledged before a majority has it on disk. Not waiting for the fsync in `append` (as
//! openraft's storage API asks) lets the leader replicate to its followers while its own fsync
//! runs, and one fsync covers every group's appends that arrived meanwhile (group commit across
//! partitions). Votes are written with a synchronous write before they are answered.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, mpsc};
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

/// Syncs the write-ahead log for appends that did not wait for it, on a thread of its own,
/// and tells openraft they are durable. Appends that arrive while an fsync runs share the next
/// one. Appends are written before they are queued, so each fsync covers every append queued
/// before it started. The thread ends when every [`LogStore`] using it is gone.
pub struct WalSyncer {
    /// `None` once dropped.
    queue: std::sync::Mutex<Option<mpsc::Sender<LogFlushed<TypeConfig>>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    observer: Option<Arc<dyn FsyncObserver>>,
}

impl WalSyncer {
    /// Starts the syncing thread for `db`.
    pub fn start(db: Db, observer: Option<Arc<dyn FsyncObserver>>) -> Arc<WalSyncer> {
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let obs = observer.clone();
        let spawned = std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(rx.try_iter());
                    let start = Instant::now();
                    let res = db.sync_wal();
                    if let Some(o) = &obs {
                        o.observe_fsync(start.elapsed().as_secs_f64());
                    }
                    for cb in waiting {
                        cb.log_io_completed(
                            res.as_ref()
                                .map(|_| ())
                                .map_err(|e| std::io::Error::other(e.to_string())),
                        );
                    }
                }
            });
        let thread = match spawned {
            Ok(t) => Some(t),
            Err(e) => {
                // Without the thread no append would ever be reported durable: the groups
                // would stall, never acknowledge falsely. Say why loudly.
                tracing::error!("cannot start the WAL sync thread: {e}");
                None
            }
        };
        Arc::new(WalSyncer {
            queue: std::sync::Mutex::new(Some(tx)),
            thread: std::sync::Mutex::new(thread),
            observer,
        })
    }

    fn submit(&self, callback: LogFlushed<TypeConfig>) -> Result<(), std::io::Error> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the WAL sync thread has stopped"))?
            .send(callback)
            .map_err(|_| std::io::Error::other("the WAL sync thread has stopped"))
    }
}

impl Drop for WalSyncer {
    /// Closes the queue and waits for the thread, which reports what is still queued and then
    /// drops its handle on the database. So when the last log store goes, the database closes
    /// here, not later on a detached thread: RocksDB closing while the process exits aborted
    /// a test binary once ("pthread lock: Invalid argument").
    fn drop(&mut self) {
        drop(
            self.queue
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
        if let Some(t) = self
            .thread
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

/// The log store of one group. Cheap to clone; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    group: GroupId,
    syncer: Arc<WalSyncer>,
}

fn io_err(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}

impl LogStore {
    /// The log of `group` in `db`, with a WAL syncer of its own.
    pub fn new(db: Db, group: GroupId, observer: Option<Arc<dyn FsyncObserver>>) -> LogStore {
        let syncer = WalSyncer::start(db.clone(), observer);
        LogStore::with_syncer(db, group, syncer)
    }

    /// The log of `group` in `db`, sharing the node's WAL syncer.
    pub fn with_syncer(db: Db, group: GroupId, syncer: Arc<WalSyncer>) -> LogStore {
        LogStore { db, group, syncer }
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
        let observer = self.syncer.observer.clone();
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
        // Written now, in order (openraft calls append one at a time per group), so readable
        // when this returns and never leaving a hole; durable once the syncer's fsync covers
        // it. A write without sync only appends to the WAL buffer and the memtable.
        let mut b = self.db.batch();
        for e in entries {
            b.put(Cf::LogEntry, &keys::group_u64(group, e.log_id.index), &e)
                .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        }
        self.db
            .write(b, false)
            .map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        self.syncer
            .submit(callback)
            .map_err(|e| StorageIOError::write_logs(io_err(e)).into())
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
