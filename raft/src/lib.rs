//! Chat4All's replication layer: many Raft groups (openraft) per node over one QUIC endpoint.
//!
//! It owns the openraft type configuration and the replicated commands ([`types`]), the log store
//! and state machines on the node's shared RocksDB ([`log_store`], [`sm`]), Kafka's idempotent
//! producer rules ([`producer_state`]), the QUIC transport with mutual TLS ([`transport`],
//! [`certs`]) and the registry that routes RPCs to groups ([`groups`]). It depends on
//! `chat4all-storage` only; it knows nothing of HTTP, JSON or the chat domain.
//!
//! ```text
//!   node ──propose──▶ Raft (group g) ──append──▶ LogStore ──sync write──▶ RocksDB
//!                         │    ▲                                            ▲
//!             AppendEntries│    │RPC for g                         apply    │
//!                         ▼    │                                            │
//!                  GroupNetwork ─▶ Transport (QUIC, mTLS) ─▶ peer's Groups ─▶ StateMachine
//! ```

// openraft's storage traits dictate `StorageError<NodeId>` (over 200 bytes) as their error type;
// the stores and their helpers return it as is rather than box it at every boundary.
#![allow(clippy::result_large_err)]

pub mod certs;
mod error;
pub mod groups;
pub mod log_store;
pub mod network;
pub mod producer_state;
pub mod sm;
pub mod snapshot;
pub mod transport;
pub mod types;

pub use error::Error;
