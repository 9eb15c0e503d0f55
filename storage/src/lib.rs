//! Chat4All's storage layer: one RocksDB instance per node, shared by every Raft group.
//!
//! It owns the column families, the key codecs and the stored record shapes. It must never
//! depend on tokio, openraft, the network or the REST layer: its API is synchronous, and async
//! callers move blocking calls (above all `sync` writes, which fsync the WAL) off the runtime.
//!
//! ```text
//!   raft log store ──┐                      ┌── log_entry   (group, index)  → raft entry
//!   state machines ──┼── Db (one RocksDB) ──┼── raft_state  (group, tag)    → vote, committed, purged
//!   controller     ──┘   one shared WAL     ├── group_meta  (group, tag)    → applied state, snapshot
//!                                           ├── record      (group, offset) → StoredRecord
//!                                           └── producer    (group, pid)    → producer state
//! ```
//!
//! Every key starts with the 8-byte big-endian group id, so one group's data is one contiguous
//! range and iteration order is numeric order. Because all groups share one WAL, concurrent
//! synchronous writes from many partitions are fsynced together (RocksDB's write-group commit).

mod db;
mod error;
pub mod keys;
mod record;
mod view;

pub use db::{Batch, Cf, CfStats, DEFAULT_MAX_WAL_BYTES, Db, DbConfig, RawRow, Verified};
pub use error::StorageError;
pub use record::{Payload, PayloadFormat, StoredRecord};
pub use view::View;
