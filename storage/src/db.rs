//! The RocksDB handle: column families, typed reads and writes, batches.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{
    ColumnFamilyDescriptor, DBRecoveryMode, Direction, IteratorMode, Options, WriteOptions,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::StorageError;
use crate::view::View;

/// The column families, named `<key>_<value>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    /// `(group, index)` → a Raft log entry.
    LogEntry,
    /// `(group, tag)` → Raft's own durable state: vote, committed id, last purged id.
    GroupRaftState,
    /// `(group, tag)` → a state machine's applied state and its last snapshot.
    GroupMeta,
    /// `(group, offset)` → a [`crate::StoredRecord`].
    OffsetRecord,
    /// `(group, producer id)` → idempotent producer state.
    ProducerState,
    /// `(group, record key bytes)` → the offset of the latest record with that key, in a
    /// compacted topic's partition (Kafka's `cleanup.policy=compact` view).
    KeyOffset,
    /// `(controller group, directory key)` → a directory row: a user, an email or external
    /// identity index entry, an API key, an audit entry (see `chat4all_raft::sm::directory`).
    DirectoryRow,
    /// `(chat partition group, chat key)` → a chat row: a conversation, a message's state, a
    /// conversation's history index entry, a user's membership (see `chat4all_raft::sm::chat`).
    ChatRow,
}

impl Cf {
    /// Every column family.
    pub const ALL: [Cf; 8] = [
        Cf::LogEntry,
        Cf::GroupRaftState,
        Cf::GroupMeta,
        Cf::OffsetRecord,
        Cf::ProducerState,
        Cf::KeyOffset,
        Cf::DirectoryRow,
        Cf::ChatRow,
    ];

    /// A stable one-byte code for the column family, for formats that name one (a snapshot's
    /// rows). Never reuse a code.
    pub fn code(self) -> u8 {
        match self {
            Cf::LogEntry => 1,
            Cf::GroupRaftState => 2,
            Cf::GroupMeta => 3,
            Cf::OffsetRecord => 4,
            Cf::ProducerState => 5,
            Cf::KeyOffset => 6,
            Cf::DirectoryRow => 7,
            Cf::ChatRow => 8,
        }
    }

    /// The column family of a [`Cf::code`].
    pub fn from_code(code: u8) -> Option<Cf> {
        Cf::ALL.into_iter().find(|cf| cf.code() == code)
    }

    /// The column family's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Cf::LogEntry => "index_entry",
            Cf::GroupRaftState => "tag_raftstate",
            Cf::GroupMeta => "tag_groupmeta",
            Cf::OffsetRecord => "offset_record",
            Cf::ProducerState => "producerid_producerstate",
            Cf::KeyOffset => "key_offset",
            Cf::DirectoryRow => "dirkey_dirrow",
            Cf::ChatRow => "chatkey_chatrow",
        }
    }
}

/// See [`Db::cf_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CfStats {
    /// Entries in the memtables (active and immutable), deletions included: what a read
    /// that reaches the memtables searches.
    pub memtable_entries: u64,
    /// Point deletions among them.
    pub memtable_deletes: u64,
    /// Bytes of every memtable (active, immutable, pinned).
    pub memtable_bytes: u64,
    /// SST files in level 0, each of which a read may have to search.
    pub l0_files: u64,
    /// Bytes of the live SST files.
    pub sst_bytes: u64,
    /// RocksDB's estimate of the bytes compaction has yet to rewrite.
    pub pending_compaction_bytes: u64,
    /// RocksDB's estimate of the live keys.
    pub estimated_keys: u64,
}

/// A raw `(key, value)` pair, as stored.
pub type RawRow = (Vec<u8>, Vec<u8>);

/// How to open the database.
#[derive(Clone, Debug)]
pub struct DbConfig {
    /// The directory holding the RocksDB files.
    pub path: PathBuf,
    /// Memtable size per column family, in bytes (RocksDB's `write_buffer_size`); `None` keeps
    /// RocksDB's default (64 MiB). Data reaches SST files when a memtable fills.
    pub memtable_bytes: Option<usize>,
    /// The most bytes of write-ahead log kept (RocksDB's `max_total_wal_size`): past it,
    /// RocksDB flushes the column families that hold the oldest log file, so it can go.
    ///
    /// A WAL file stays until every column family with data in it has flushed. The columns
    /// of Raft's vote and committed id and of the groups' applied state hold a few keys each,
    /// rewritten on every commit: their memtables never fill, so without this bound no log
    /// file was ever freed (325 MB of WAL after 150,000 produced records, and RocksDB's own
    /// bound is four times the memtables, 4 GiB here), and a restart replays all of it.
    pub max_wal_bytes: u64,
}

/// [`DbConfig::max_wal_bytes`] by default: about a second of replay at start (a node that
/// replayed 325 MB was ready in 0.97 s).
pub const DEFAULT_MAX_WAL_BYTES: u64 = 256 << 20;

impl DbConfig {
    /// The defaults for a database in `path`.
    pub fn new(path: impl Into<PathBuf>) -> DbConfig {
        DbConfig {
            path: path.into(),
            memtable_bytes: None,
            max_wal_bytes: DEFAULT_MAX_WAL_BYTES,
        }
    }
}

/// What [`Db::verify`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verified {
    /// Keys read, across column families.
    pub keys: u64,
    /// Key and value bytes read.
    pub bytes: u64,
}

/// One RocksDB instance shared by every Raft group on the node. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<rocksdb::DB>,
}

/// A set of writes applied atomically by [`Db::write`].
pub struct Batch<'a> {
    db: &'a Db,
    batch: rocksdb::WriteBatch,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    Ok(bincode::serde::encode_to_vec(
        v,
        bincode::config::standard(),
    )?)
}

fn decode<T: DeserializeOwned>(cf: Cf, key: &[u8], bytes: &[u8]) -> Result<T, StorageError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| StorageError::Corrupt {
            cf: cf.name(),
            key: key.to_vec(),
            reason: e.to_string(),
        })
}

impl Db {
    /// Opens (or creates) the database with every column family.
    pub fn open(config: &DbConfig) -> Result<Db, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Checksums are verified on every read; a damaged file is an error, never silent data.
        opts.set_paranoid_checks(true);
        // Only a torn last record (a write that was never fsynced, cut by a power loss) may be
        // dropped on recovery. Anything else damaged in the WAL refuses to open: an fsynced
        // Raft entry may have been acknowledged, so losing it silently would lose a write.
        opts.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_max_total_wal_size(config.max_wal_bytes);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if let Some(bytes) = config.memtable_bytes {
                o.set_write_buffer_size(bytes);
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = rocksdb::DB::open_cf_descriptors(&opts, &config.path, cfs)?;
        Ok(Db {
            inner: Arc::new(db),
        })
    }

    /// Reads every key and value of every column family with checksums verified, bypassing
    /// the block cache, and fails with a corruption error at the first damaged block.
    /// `paranoid_checks` catches a damaged WAL or manifest and truncated files at open, but a
    /// bit flipped inside an SST data block is only seen when that block is read, which for
    /// an old partition segment may be never, or in a compaction long after the node has
    /// served and replicated from its other files. Reading everything once at start makes a
    /// damaged node refuse to join instead. (RocksDB's own `VerifyChecksum` is not exposed
    /// by the rocksdb crate; a full scan checks the same block checksums.)
    pub fn verify(&self) -> Result<Verified, StorageError> {
        let mut seen = Verified::default();
        for cf in Cf::ALL {
            let mut ro = rocksdb::ReadOptions::default();
            ro.set_verify_checksums(true);
            ro.fill_cache(false);
            for item in self
                .inner
                .iterator_cf_opt(self.handle(cf), ro, IteratorMode::Start)
            {
                let (k, v) = item?;
                seen.keys += 1;
                seen.bytes += (k.len() + v.len()) as u64;
            }
        }
        Ok(seen)
    }

    /// Writes every memtable to SST files (and waits for it).
    pub fn flush(&self) -> Result<(), StorageError> {
        for cf in Cf::ALL {
            self.inner.flush_cf(self.handle(cf))?;
        }
        Ok(())
    }

    /// The directory the database lives in.
    pub fn path(&self) -> &Path {
        self.inner.path()
    }

    fn handle(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every Cf is created by `open`; a missing one is a programming error.
        #[allow(clippy::expect_used)]
        self.inner
            .cf_handle(cf.name())
            .expect("column family created at open")
    }

    /// Reads and decodes one value.
    pub fn get<T: DeserializeOwned>(&self, cf: Cf, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.inner.get_pinned_cf(self.handle(cf), key)? {
            Some(bytes) => decode(cf, key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Calls `row` for the keys `start <= key < end`, ascending (or descending with
    /// `reverse`), at most `limit` of them: the one range walk under every scan.
    fn walk(
        &self,
        cf: Cf,
        (start, end): (&[u8], &[u8]),
        reverse: bool,
        limit: usize,
        mut row: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let mode = if reverse {
            IteratorMode::From(end, Direction::Reverse)
        } else {
            IteratorMode::From(start, Direction::Forward)
        };
        // Bounds let RocksDB stop at the range's edge. Without them, stepping past the last
        // row in range walks every deleted key beyond it until a live one: after a Raft log
        // purge, the next group's thousands of purged entries, until a compaction drops
        // them. That walk was a quarter of a node's CPU after a minute of chat load.
        // The bounds also keep every key the iterator yields in `[start, end)`, `end` itself
        // excluded when seeking back from it.
        if start >= end {
            return Ok(());
        }
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(start.to_vec());
        ro.set_iterate_upper_bound(end.to_vec());
        for item in self
            .inner
            .iterator_cf_opt(self.handle(cf), ro, mode)
            .take(limit)
        {
            let (k, v) = item?;
            row(&k, &v)?;
        }
        Ok(())
    }

    /// Decoded `(key, value)` pairs with `start <= key < end`, in key order, at most `limit`.
    pub fn scan<T: DeserializeOwned>(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, StorageError> {
        let mut out = Vec::new();
        self.walk(cf, (start, end), false, limit, |k, v| {
            out.push((k.to_vec(), decode(cf, k, v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Like [`Db::scan`], in descending key order: the last `limit` pairs with
    /// `start <= key < end`, highest first.
    pub fn scan_rev<T: DeserializeOwned>(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, StorageError> {
        let mut out = Vec::new();
        self.walk(cf, (start, end), true, limit, |k, v| {
            out.push((k.to_vec(), decode(cf, k, v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// Raw `(key, value)` pairs with `start <= key < end`, in key order: for copying a range
    /// into a snapshot without decoding it.
    pub fn scan_raw(&self, cf: Cf, start: &[u8], end: &[u8]) -> Result<Vec<RawRow>, StorageError> {
        let mut out = Vec::new();
        self.walk(cf, (start, end), false, usize::MAX, |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    }

    /// The last key (and its value) with `start <= key < end`.
    pub fn last_in<T: DeserializeOwned>(
        &self,
        cf: Cf,
        start: &[u8],
        end: &[u8],
    ) -> Result<Option<(Vec<u8>, T)>, StorageError> {
        Ok(self.scan_rev(cf, start, end, 1)?.pop())
    }

    /// A point-in-time view of the whole database (see [`View`]).
    pub fn view(&self) -> View {
        View::new(self.inner.clone())
    }

    /// Starts an atomic batch of writes.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            db: self,
            batch: rocksdb::WriteBatch::default(),
        }
    }

    /// Applies a batch atomically. With `sync` the WAL is fsynced before this returns: that is
    /// what makes a Raft entry or vote durable. Concurrent synced writes share one fsync.
    pub fn write(&self, batch: Batch<'_>, sync: bool) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.inner.write_opt(batch.batch, &wo)?;
        Ok(())
    }

    /// Makes every write so far durable: syncs the write-ahead log (writes made with
    /// `sync: false` included).
    pub fn sync_wal(&self) -> Result<(), StorageError> {
        self.inner.flush_wal(true)?;
        Ok(())
    }

    /// Flushes memtables and asks RocksDB to compact a deleted range away, freeing its space.
    pub fn compact_range(&self, cf: Cf, start: &[u8], end: &[u8]) {
        self.inner
            .compact_range_cf(self.handle(cf), Some(start), Some(end));
    }

    /// RocksDB's own figures for one column family (for metrics): what its reads and writes
    /// have to go through. Missing properties read as 0.
    pub fn cf_stats(&self, cf: Cf) -> CfStats {
        let h = self.handle(cf);
        let p = |name: &str| {
            self.inner
                .property_int_value_cf(h, name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        CfStats {
            memtable_entries: p("rocksdb.num-entries-active-mem-table")
                + p("rocksdb.num-entries-imm-mem-tables"),
            memtable_deletes: p("rocksdb.num-deletes-active-mem-table")
                + p("rocksdb.num-deletes-imm-mem-tables"),
            memtable_bytes: p("rocksdb.cur-size-all-mem-tables"),
            l0_files: p("rocksdb.num-files-at-level0"),
            sst_bytes: p("rocksdb.live-sst-files-size"),
            pending_compaction_bytes: p("rocksdb.estimate-pending-compaction-bytes"),
            estimated_keys: p("rocksdb.estimate-num-keys"),
        }
    }
}

impl Batch<'_> {
    /// Adds an encoded put.
    pub fn put<T: Serialize>(&mut self, cf: Cf, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        self.batch.put_cf(self.db.handle(cf), key, bytes);
        Ok(())
    }

    /// Adds a put of bytes encoded already (by [`Db::scan_raw`] or the same encoding).
    pub fn put_raw(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.db.handle(cf), key, value);
    }

    /// Adds a delete of one key.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.batch.delete_cf(self.db.handle(cf), key);
    }

    /// Adds a delete of every key with `start <= key < end`.
    pub fn delete_range(&mut self, cf: Cf, start: &[u8], end: &[u8]) {
        self.batch.delete_range_cf(self.db.handle(cf), start, end);
    }

    /// Number of operations in the batch.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys;

    fn open(dir: &Path) -> Db {
        Db::open(&DbConfig::new(dir)).expect("open")
    }

    /// A column family that got a single write and never fills its memtable (as Raft's vote
    /// and applied-state columns) does not keep its write-ahead log file alive once the log
    /// passes its bound: RocksDB flushes the columns holding the oldest file, and the file
    /// goes. Without the bound that file, and every byte written after, stayed (8 MiB here).
    ///
    /// (RocksDB enforces the bound when a write comes in, so how much log is left once the
    /// writes stop depends on how far flushes kept up: 3.7 MB in one CI run, under 3 MiB
    /// locally. The file that the small column family pins going is what does not depend on
    /// timing.)
    #[test]
    fn a_column_family_that_never_fills_does_not_pin_the_write_ahead_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = DbConfig::new(dir.path());
        config.max_wal_bytes = 1 << 20;
        let db = Db::open(&config).expect("open");
        let wal_files = || -> Vec<(PathBuf, u64)> {
            std::fs::read_dir(dir.path())
                .expect("read dir")
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
                .collect()
        };
        let mut b = db.batch();
        b.put(Cf::GroupMeta, b"applied", &1u64).expect("put");
        db.write(b, false).expect("write");
        let pinned: Vec<PathBuf> = wal_files().into_iter().map(|(p, _)| p).collect();
        assert!(!pinned.is_empty(), "no write-ahead log file after a write");
        let value = vec![7u8; 64 << 10];
        for i in 0..128u64 {
            let mut b = db.batch();
            b.put_raw(Cf::OffsetRecord, &keys::group_u64(1, i), &value);
            db.write(b, false).expect("write");
        }
        // Flushes and file deletions run in the background: wait for them (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while pinned.iter().any(|p| p.exists()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the first write-ahead log file is still there after 8 MiB written with a \
                 1 MiB bound: {:?}",
                wal_files()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let left: u64 = wal_files().iter().map(|(_, n)| n).sum();
        assert!(left < 8 << 20, "{left} bytes of write-ahead log left");
        let applied: Option<u64> = db.get(Cf::GroupMeta, b"applied").expect("get");
        assert_eq!(applied, Some(1));
    }

    /// A scan that reaches the end of its range stops there. Without bounds it stepped on past
    /// the range over every deleted key until a live one: here, the 20,000 entries of the
    /// next group's purged log, still in the memtable.
    #[test]
    fn a_scan_stops_at_its_range_and_never_walks_deleted_keys_beyond_it() {
        use rocksdb::perf::{PerfContext, PerfMetric, PerfStatsLevel, set_perf_stats};
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let mut b = db.batch();
        b.put(Cf::LogEntry, &keys::group_u64(1, 7), &7u64)
            .expect("put");
        for i in 0..20_000u64 {
            b.put(Cf::LogEntry, &keys::group_u64(2, i), &i)
                .expect("put");
        }
        b.put(Cf::LogEntry, &keys::group_u64(2, 20_000), &0u64)
            .expect("put");
        db.write(b, false).expect("write");
        let mut b = db.batch();
        b.delete_range(
            Cf::LogEntry,
            &keys::group_u64(2, 0),
            &keys::group_u64(2, 20_000),
        );
        db.write(b, false).expect("purge");

        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut ctx = PerfContext::default();
        ctx.reset();
        let rows: Vec<(Vec<u8>, u64)> = db
            .scan(
                Cf::LogEntry,
                &keys::group_u64(1, 0),
                &keys::group_u64(1, u64::MAX),
                usize::MAX,
            )
            .expect("scan");
        // Range-deleted keys are not counted as skipped: count the memtable steps.
        let steps = ctx.metric(PerfMetric::NextOnMemtableCount);
        set_perf_stats(PerfStatsLevel::Disable);
        assert_eq!(rows.len(), 1);
        assert!(
            steps < 100,
            "the scan stepped {steps} times in the memtable"
        );
    }

    #[test]
    fn writes_survive_reopen_and_scan_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open(dir.path());
            let mut b = db.batch();
            for i in (0..10u64).rev() {
                b.put(Cf::OffsetRecord, &keys::group_u64(7, i), &format!("v{i}"))
                    .expect("put");
            }
            b.put(
                Cf::OffsetRecord,
                &keys::group_u64(8, 0),
                &"other group".to_string(),
            )
            .expect("put");
            db.write(b, true).expect("write");
        }
        let db = open(dir.path());
        let end = keys::group_end(7).expect("end");
        let got: Vec<(Vec<u8>, String)> = db
            .scan(Cf::OffsetRecord, &keys::group_u64(7, 3), &end, 4)
            .expect("scan");
        let values: Vec<_> = got.into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, ["v3", "v4", "v5", "v6"]);
        let last: Option<(Vec<u8>, String)> = db
            .last_in(Cf::OffsetRecord, &keys::group_start(7), &end)
            .expect("last");
        assert_eq!(last.map(|(_, v)| v).as_deref(), Some("v9"));
        // Reverse: highest first, `end` excluded, stopping at `start` or the limit.
        let rev: Vec<(Vec<u8>, String)> = db
            .scan_rev(
                Cf::OffsetRecord,
                &keys::group_u64(7, 3),
                &keys::group_u64(7, 8),
                10,
            )
            .expect("scan_rev");
        let values: Vec<_> = rev.into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, ["v7", "v6", "v5", "v4", "v3"]);
        let rev: Vec<(Vec<u8>, String)> = db
            .scan_rev(Cf::OffsetRecord, &keys::group_start(7), &end, 2)
            .expect("scan_rev");
        let values: Vec<_> = rev.into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, ["v9", "v8"]);
    }

    #[test]
    fn delete_range_removes_exactly_the_range() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let mut b = db.batch();
        for i in 0..10u64 {
            b.put(Cf::LogEntry, &keys::group_u64(1, i), &i)
                .expect("put");
        }
        db.write(b, false).expect("write");
        let mut b = db.batch();
        b.delete_range(Cf::LogEntry, &keys::group_u64(1, 2), &keys::group_u64(1, 5));
        db.write(b, false).expect("write");
        let left: Vec<(Vec<u8>, u64)> = db
            .scan(
                Cf::LogEntry,
                &keys::group_start(1),
                &keys::group_start(2),
                100,
            )
            .expect("scan");
        let left: Vec<u64> = left.into_iter().map(|(_, v)| v).collect();
        assert_eq!(left, [0, 1, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn undecodable_bytes_are_reported_as_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open(dir.path());
        let mut b = db.batch();
        b.put(Cf::GroupMeta, b"k", &vec![0xffu8, 0xfe])
            .expect("put");
        db.write(b, false).expect("write");
        // Read it back as a shape it is not (invalid UTF-8 for a String): the decoder must fail
        // loudly, not invent a value.
        let err = db
            .get::<String>(Cf::GroupMeta, b"k")
            .expect_err("must not decode");
        assert!(err.is_corruption(), "{err}");
    }

    /// Flips bytes in the middle of the largest SST file of `dir`.
    fn flip_sst_bytes(dir: &Path) {
        let sst = std::fs::read_dir(dir)
            .expect("read dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .expect("an sst file");
        let mut bytes = std::fs::read(&sst).expect("read sst");
        let mid = bytes.len() / 3;
        for b in &mut bytes[mid..mid + 16] {
            *b ^= 0xff;
        }
        std::fs::write(&sst, bytes).expect("write sst");
    }

    #[test]
    fn verify_reads_everything_and_finds_a_flipped_bit_in_an_sst() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = open(dir.path());
            let mut b = db.batch();
            for i in 0..2000u64 {
                b.put(
                    Cf::OffsetRecord,
                    &keys::group_u64(3, i),
                    &vec![i as u8; 512],
                )
                .expect("put");
            }
            db.write(b, true).expect("write");
            db.flush().expect("flush");
            let seen = db.verify().expect("an intact database verifies");
            assert_eq!(seen.keys, 2000);
        }
        flip_sst_bytes(dir.path());
        // Opening checks the WAL, the manifest and file sizes, not the blocks inside an SST.
        let db = open(dir.path());
        let err = db.verify().expect_err("the flipped block is found");
        assert!(err.is_corruption(), "{err}");
    }
}
