//! Chat4All's Jepsen-style history checker: the operation model of a partition-tolerance test,
//! JSON-lines history files, and the checkers that judge a history (§4 of
//! `kafka-semantics-and-jepsen.md`).
//!
//! It owns the history model and the analyses, nothing else: the harness (hosts, nemeses,
//! workloads, CLI) records into a [`Recorder`] and calls a checker. It must never depend on
//! `chat4all-storage`, `chat4all-raft` or `chat4all-node` (a checker that shares code with what it
//! checks shares its bugs; `.ci/check-crate-edges.py` enforces this), nor on an async runtime:
//! checkers are pure functions of the history.
//!
//! ```text
//!  clients, nemesis ──invoke/complete──► Recorder ──► History ──write_file──► history.jsonl
//!                                                       ▲  │
//!                                         read_file ────┘  ├──► checker::queue::check ──┐
//!                                                          ├──► checker::kafka::check ──┼─► Verdict
//!                                                          ├──► checker::group::check ──┤   (JSON)
//!                                                          └──► checker::chat::check ───┘
//! ```

pub mod anomaly;
pub mod checker;
mod error;
pub mod history;
mod ids;
mod op;
mod recorder;
pub mod verdict;

#[cfg(test)]
mod testing;

pub use anomaly::{Anomaly, AnomalyKind};
pub use checker::CheckConfig;
pub use error::HistoryError;
pub use history::History;
pub use ids::{Key, Offset, Process, Value};
pub use op::{
    Assign, Call, ChatEvent, ChatEvents, ChatMessage, ChatRead, ChatSend, Commit, Heartbeat,
    HeartbeatReply, JOIN_EPOCH, LEAVE_EPOCH, Offsets, Op, OpType, Poll, Record, Send,
};
pub use recorder::Recorder;
pub use verdict::{AnomalyReport, OutcomeCounts, Validity, Verdict};
