//! Snapshots that stream: a leader sends a follower its state in chunks of bounded size, read
//! from a point-in-time view of RocksDB, and the follower stages them in a file before it
//! installs them. Neither side ever holds a whole snapshot in memory, so a partition of any size
//! can be brought to a replica that fell behind the purged log.
//!
//! ```text
//!  leader: get_current_snapshot ─ SnapshotSource (View + header + row ranges)
//!            └─ network: ChunkReader ─ chunk 0 (header, rows) ─ chunk 1 ─ … ─ chunk n (done)
//!  follower: Inbound ─ <db>/snapshots/<group>.part ─ fsync, rename ─ <group>.snapshot
//!            └─ install_full_snapshot ─ state machine: install() ─ RocksDB
//! ```
//!
//! An install writes in several batches (a partition can be far larger than one batch should
//! be), so it is made restartable: the first batch clears the group's rows and records an
//! "installing" marker with the staged file's path, synced; the last writes the state machine's
//! state, the snapshot marker, and removes the installing marker, synced. A state machine that
//! opens with the installing marker set redoes the install from the file (see
//! [`resume_install`]), which is kept until the install is complete.

use std::fmt;
use std::io::{Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chat4all_storage::{Cf, Db, View, keys};
use openraft::{SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::sm::{
    AppliedMeta, AppliedState, TAG_APPLIED, TAG_INSTALLING, TAG_SNAPSHOT, decode, encode, marker,
    read_err, snapshot_err, write_err,
};
use crate::types::{GroupId, NodeId, NodeInfo, RaftStorageError};

/// How many bytes of rows a chunk carries by default (`[raft] snapshot_chunk_bytes`).
pub const DEFAULT_CHUNK_BYTES: usize = 4 << 20;

/// A snapshot's data, as openraft passes it around (the `SnapshotData` of our type config).
#[derive(Clone)]
pub enum SnapshotData {
    /// No data: what building a snapshot returns (openraft keeps only the meta of a built
    /// snapshot; the data is read when a follower needs it).
    Empty,
    /// A sender's snapshot: a state machine at one applied point, streamed in chunks.
    Source(Arc<SnapshotSource>),
    /// A receiver's snapshot: every chunk received and fsynced, in a staging file.
    Received(PathBuf),
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapshotData::Empty => write!(f, "Empty"),
            SnapshotData::Source(_) => write!(f, "Source"),
            SnapshotData::Received(p) => write!(f, "Received({})", p.display()),
        }
    }
}

/// The rows of one column family with `start <= key < end`.
#[derive(Clone, Debug)]
pub(crate) struct RowRange {
    pub cf: Cf,
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl RowRange {
    /// Every row of `group` in `cf`.
    pub(crate) fn group(cf: Cf, group: GroupId) -> RowRange {
        RowRange {
            cf,
            start: keys::group_start(group.0).to_vec(),
            end: keys::group_end(group.0)
                .map(|k| k.to_vec())
                .unwrap_or_else(|| vec![0xff; 17]),
        }
    }

    fn contains(&self, cf: Cf, key: &[u8]) -> bool {
        self.cf == cf && self.start.as_slice() <= key && key < self.end.as_slice()
    }
}

/// What a state machine ships: its own state, encoded by it (the header), and the rows of some
/// ranges, copied as stored, all as of one point.
pub struct SnapshotSource {
    view: View,
    header: Vec<u8>,
    ranges: Vec<RowRange>,
}

impl SnapshotSource {
    /// Takes the view now: call it where nothing is applied between reading the state that
    /// `header` encodes and this call (a state machine's `get_current_snapshot`).
    pub(crate) fn new(db: &Db, header: Vec<u8>, ranges: Vec<RowRange>) -> SnapshotSource {
        SnapshotSource {
            view: db.view(),
            header,
            ranges,
        }
    }

    /// Reads the snapshot as chunks of about `chunk_bytes` of rows each.
    pub fn reader(self: &Arc<Self>, chunk_bytes: usize) -> ChunkReader {
        ChunkReader {
            source: self.clone(),
            chunk_bytes: chunk_bytes.max(1),
            range: 0,
            from: self.ranges.first().map(|r| r.start.clone()),
            started: false,
            finished: false,
        }
    }
}

/// One piece of a snapshot, as it travels and as it is staged.
#[derive(Serialize, Deserialize, Default)]
struct Chunk {
    /// The state machine's own state: in the first chunk only.
    header: Option<ByteBuf>,
    /// `(column family code, key, value)`, in range and key order.
    rows: Vec<(u8, ByteBuf, ByteBuf)>,
}

/// Reads a [`SnapshotSource`] chunk by chunk. Its reads are blocking RocksDB reads: run
/// [`ChunkReader::next_chunk`] where blocking is allowed.
pub struct ChunkReader {
    source: Arc<SnapshotSource>,
    chunk_bytes: usize,
    range: usize,
    /// Where the current range resumes.
    from: Option<Vec<u8>>,
    started: bool,
    finished: bool,
}

impl ChunkReader {
    /// The next chunk, encoded, and whether it is the last; `None` after the last.
    pub fn next_chunk(&mut self) -> Result<Option<(Vec<u8>, bool)>, RaftStorageError> {
        if self.finished {
            return Ok(None);
        }
        let src = &self.source;
        let mut chunk = Chunk::default();
        let mut bytes = 0;
        if !self.started {
            self.started = true;
            bytes += src.header.len();
            chunk.header = Some(ByteBuf::from(src.header.clone()));
        }
        while bytes < self.chunk_bytes
            && let Some(range) = src.ranges.get(self.range)
        {
            let from = self.from.take().unwrap_or_else(|| range.start.clone());
            let rows = src
                .view
                .scan_raw(range.cf, &from, &range.end, self.chunk_bytes - bytes)
                .map_err(read_err)?;
            match rows.last() {
                None => {
                    self.range += 1;
                    self.from = None;
                }
                Some((last, _)) => {
                    // The next key after `last` in bytewise order.
                    let mut next = last.clone();
                    next.push(0);
                    self.from = Some(next);
                }
            }
            for (k, v) in rows {
                bytes += k.len() + v.len();
                chunk
                    .rows
                    .push((range.cf.code(), ByteBuf::from(k), ByteBuf::from(v)));
            }
        }
        self.finished = self.range >= src.ranges.len();
        Ok(Some((encode(&chunk)?, self.finished)))
    }
}

/// Where a node stages the snapshots it receives (inside the database's directory, so that
/// every database has its own).
pub fn staging_dir(db: &Db) -> PathBuf {
    db.path().join("snapshots")
}

/// Appends one chunk to a staging file: its length (u32, little-endian), then its bytes.
fn write_frame(file: &mut impl Write, chunk: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(chunk.len())
        .map_err(|_| std::io::Error::other("a snapshot chunk over 4 GiB"))?;
    file.write_all(&len.to_le_bytes())?;
    file.write_all(chunk)
}

/// The next chunk of a staging file, `None` at its end.
fn read_frame(file: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match file.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut chunk = vec![0u8; u32::from_le_bytes(len) as usize];
    file.read_exact(&mut chunk)?;
    Ok(Some(chunk))
}

/// Makes a file's directory entry durable (after creating or renaming the file).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes every chunk of `source` to a staging file of `group`, fsynced: for installing a
/// snapshot that did not come over the network (tests, or a local copy).
fn stage(
    db: &Db,
    group: GroupId,
    source: &Arc<SnapshotSource>,
    chunk_bytes: usize,
) -> std::io::Result<PathBuf> {
    let dir = staging_dir(db);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{}-local.snapshot", group.0));
    let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let mut reader = source.reader(chunk_bytes);
    while let Some((chunk, _)) = reader.next_chunk().map_err(std::io::Error::other)? {
        write_frame(&mut file, &chunk)?;
    }
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    sync_dir(&dir)?;
    Ok(path)
}

/// A snapshot install in progress, recorded before its first batch.
#[derive(Serialize, Deserialize)]
struct Installing {
    meta: SnapshotMeta<NodeId, NodeInfo>,
    path: PathBuf,
}

/// What an install wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Installed {
    pub chunks: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// How a state machine takes a snapshot: the ranges it replaces (every row of the snapshot
/// must fall in one), and its own state `S`, which the snapshot's header encodes and the
/// install's last batch stores under the snapshot's meta.
pub(crate) struct InstallTarget<'a, S> {
    pub db: &'a Db,
    pub group: GroupId,
    pub ranges: &'a [RowRange],
    pub state: PhantomData<S>,
}

impl<'a, S: AppliedState> InstallTarget<'a, S> {
    pub(crate) fn new(db: &'a Db, group: GroupId, ranges: &'a [RowRange]) -> Self {
        InstallTarget {
            db,
            group,
            ranges,
            state: PhantomData,
        }
    }

    /// Installs `data` as the group's state under `meta`. Blocking.
    pub(crate) fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        data: SnapshotData,
    ) -> Result<Installed, RaftStorageError> {
        let path = match data {
            SnapshotData::Received(path) => path,
            SnapshotData::Source(source) => {
                stage(self.db, self.group, &source, DEFAULT_CHUNK_BYTES).map_err(snapshot_err)?
            }
            SnapshotData::Empty => {
                return Err(snapshot_err(std::io::Error::other(
                    "asked to install a snapshot without data",
                )));
            }
        };
        let installing = self.begin(meta, path)?;
        self.write_rows(&installing, None)
    }

    /// The install's first batch, synced: clears the ranges and records the install.
    fn begin(
        &self,
        meta: &SnapshotMeta<NodeId, NodeInfo>,
        path: PathBuf,
    ) -> Result<Installing, RaftStorageError> {
        let installing = Installing {
            meta: meta.clone(),
            path,
        };
        let mut b = self.db.batch();
        for r in self.ranges {
            b.delete_range(r.cf, &r.start, &r.end);
        }
        b.put(
            Cf::GroupMeta,
            &keys::group_tag(self.group.0, TAG_INSTALLING),
            &installing,
        )
        .map_err(write_err)?;
        self.db.write(b, true).map_err(write_err)?;
        Ok(installing)
    }

    /// Writes the staged rows and the state, and ends the install; with `stop_after`, stops
    /// after that many chunks as a crash would (for tests of [`resume_install`]).
    fn write_rows(
        &mut self,
        installing: &Installing,
        stop_after: Option<u64>,
    ) -> Result<Installed, RaftStorageError> {
        let mut file =
            std::io::BufReader::new(std::fs::File::open(&installing.path).map_err(snapshot_err)?);
        let mut done = Installed::default();
        let mut header = None;
        while let Some(frame) = read_frame(&mut file).map_err(snapshot_err)? {
            if stop_after == Some(done.chunks) {
                return Ok(done);
            }
            let chunk: Chunk = decode(&frame)?;
            if let Some(h) = chunk.header {
                header = Some(h.into_vec());
            }
            let mut b = self.db.batch();
            for (code, k, v) in &chunk.rows {
                let cf = Cf::from_code(*code)
                    .filter(|cf| self.ranges.iter().any(|r| r.contains(*cf, k)))
                    .ok_or_else(|| {
                        snapshot_err(std::io::Error::other(format!(
                            "a snapshot row outside group {} (column family code {code})",
                            self.group
                        )))
                    })?;
                b.put_raw(cf, k, v);
                done.bytes += (k.len() + v.len()) as u64;
            }
            done.rows += chunk.rows.len() as u64;
            done.chunks += 1;
            self.db.write(b, false).map_err(write_err)?;
        }
        let header = header.ok_or_else(|| {
            snapshot_err(std::io::Error::other("a snapshot without its header chunk"))
        })?;
        let mut b = self.db.batch();
        let g = self.group.0;
        let mut state: S = decode(&header)?;
        *state.applied_mut() = AppliedMeta {
            last_applied: installing.meta.last_log_id,
            membership: installing.meta.last_membership.clone(),
        };
        b.put(Cf::GroupMeta, &keys::group_tag(g, TAG_APPLIED), &state)
            .map_err(write_err)?;
        b.put(
            Cf::GroupMeta,
            &keys::group_tag(g, TAG_SNAPSHOT),
            &marker(&installing.meta),
        )
        .map_err(write_err)?;
        b.delete(Cf::GroupMeta, &keys::group_tag(g, TAG_INSTALLING));
        self.db.write(b, true).map_err(write_err)?;
        if let Err(e) = std::fs::remove_file(&installing.path) {
            tracing::warn!(path = %installing.path.display(), "cannot remove an installed snapshot: {e}");
        }
        Ok(done)
    }
}

/// Finishes an install that a crash interrupted, from its staged file; call it when a state
/// machine opens, before it reads its state. Returns what the install wrote, if there was one.
pub(crate) fn resume_install<S: AppliedState>(
    target: &mut InstallTarget<'_, S>,
) -> Result<Option<Installed>, RaftStorageError> {
    let key = keys::group_tag(target.group.0, TAG_INSTALLING);
    let Some(installing) = target
        .db
        .get::<Installing>(Cf::GroupMeta, &key)
        .map_err(read_err)?
    else {
        return Ok(None);
    };
    tracing::warn!(group = %target.group, last_log_id = ?installing.meta.last_log_id, "resuming a snapshot install that was interrupted");
    // The first batch may have been cut short too: clear again (rows are written again).
    let mut b = target.db.batch();
    for r in target.ranges {
        b.delete_range(r.cf, &r.start, &r.end);
    }
    target.db.write(b, false).map_err(write_err)?;
    target.write_rows(&installing, None).map(Some)
}

/// Starts installing `source` as an install does, in chunks of `chunk_bytes`, and stops after
/// `after_chunks` of them as a crash would: what [`resume_install`] must finish.
#[cfg(test)]
pub(crate) fn interrupt_install<S: AppliedState>(
    target: &mut InstallTarget<'_, S>,
    meta: &SnapshotMeta<NodeId, NodeInfo>,
    source: &Arc<SnapshotSource>,
    chunk_bytes: usize,
    after_chunks: u64,
) -> Result<(), RaftStorageError> {
    let path = stage(target.db, target.group, source, chunk_bytes).map_err(snapshot_err)?;
    let installing = target.begin(meta, path)?;
    target
        .write_rows(&installing, Some(after_chunks))
        .map(|_| ())
}

/// One chunk of a snapshot sent to a follower.
#[derive(Serialize, Deserialize, Debug)]
pub struct ChunkRequest {
    /// The leader's vote.
    pub vote: Vote<NodeId>,
    /// What the snapshot covers.
    pub meta: SnapshotMeta<NodeId, NodeInfo>,
    /// The chunk's position in the snapshot, from 0.
    pub seq: u64,
    /// Whether this is the last chunk: the follower installs the snapshot once it has it.
    pub done: bool,
    /// The encoded chunk.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// A transfer being received: chunks so far, in its own `.part` file.
struct Transfer {
    vote: Vote<NodeId>,
    snapshot_id: String,
    next_seq: u64,
    /// Unique per transfer, so that two leaders streaming to one follower at once (an old
    /// one that has not noticed yet, and the new one) never write into one file.
    serial: u64,
    file: std::fs::File,
}

/// A follower's snapshot transfers in progress, one per group (a new one replaces the one in
/// progress).
pub struct Inbound {
    dir: PathBuf,
    serial: std::sync::atomic::AtomicU64,
    transfers: Mutex<std::collections::HashMap<GroupId, Transfer>>,
}

impl Inbound {
    /// Receives into `db`'s staging directory. Removes what earlier runs left there, except the
    /// files of installs that a crash interrupted (their state machines resume them).
    pub fn new(db: &Db) -> Inbound {
        let dir = staging_dir(db);
        let keep: Vec<PathBuf> = db
            .scan_raw(Cf::GroupMeta, &[], &[0xff; 10])
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k.len() == 9 && k[8] == TAG_INSTALLING)
            .filter_map(|(_, v)| decode::<Installing>(&v).ok())
            .map(|i| i.path)
            .collect();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if !keep.contains(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Inbound {
            dir,
            serial: std::sync::atomic::AtomicU64::new(0),
            transfers: Mutex::default(),
        }
    }

    fn path(&self, group: GroupId, serial: u64, suffix: &str) -> PathBuf {
        self.dir.join(format!("{}-{serial}.{suffix}", group.0))
    }

    /// Takes one chunk for `group`. Returns the staged file once the last chunk is in (fsynced,
    /// ready to install), `None` before; an error for a chunk out of order, after which the
    /// sender starts over. Blocking (file writes, and an fsync at the end).
    pub fn receive(&self, group: GroupId, req: &ChunkRequest) -> Result<Option<PathBuf>, String> {
        let mut transfer = if req.seq == 0 {
            std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
            let serial = self
                .serial
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let file = std::fs::File::create(self.path(group, serial, "part"))
                .map_err(|e| format!("cannot stage a snapshot: {e}"))?;
            Transfer {
                vote: req.vote,
                snapshot_id: req.meta.snapshot_id.clone(),
                next_seq: 0,
                serial,
                file,
            }
        } else {
            let mut map = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&group) {
                Some(t)
                    if t.vote == req.vote
                        && t.snapshot_id == req.meta.snapshot_id
                        && t.next_seq == req.seq =>
                {
                    map.remove(&group).ok_or("vanished")?
                }
                _ => {
                    return Err(format!(
                        "snapshot chunk {} of {} is not the one expected; start over",
                        req.seq, req.meta.snapshot_id
                    ));
                }
            }
        };
        let part = self.path(group, transfer.serial, "part");
        let written = write_frame(&mut transfer.file, &req.data)
            .map_err(|e| format!("cannot stage a snapshot chunk: {e}"));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        transfer.next_seq += 1;
        if !req.done {
            let mut map = self.transfers.lock().unwrap_or_else(|p| p.into_inner());
            // A transfer that started meanwhile (another sender's chunk 0) wins.
            if let Some(newer) = map.get(&group)
                && newer.serial > transfer.serial
            {
                let _ = std::fs::remove_file(&part);
                return Err("a newer snapshot transfer replaced this one".into());
            }
            if let Some(older) = map.insert(group, transfer) {
                let _ = std::fs::remove_file(self.path(group, older.serial, "part"));
            }
            return Ok(None);
        }
        let ready = self.path(group, transfer.serial, "snapshot");
        let staged = transfer
            .file
            .sync_all()
            .and_then(|()| std::fs::rename(&part, &ready))
            .and_then(|()| sync_dir(&self.dir));
        if let Err(e) = staged {
            let _ = std::fs::remove_file(&part);
            return Err(format!("cannot stage a snapshot: {e}"));
        }
        Ok(Some(ready))
    }

    /// Removes a staged snapshot that openraft did not install (it had a newer state, or the
    /// leader's vote was stale). Call it only after the install call returned without error:
    /// a failed install keeps its file for the resume at the next start.
    pub fn discard(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove a staged snapshot: {e}")
            }
        }
    }
}
