//! The group operations of a history as exchanges: each invocation with its outcome, its start
//! and end times, and its value.

use std::collections::{BTreeMap, BTreeSet};

use crate::history::History;
use crate::ids::{Key, Offset, Process};
use crate::op::{Call, Commit, Heartbeat, Op, OpType};

/// One group operation from invocation to completion.
#[derive(Clone, Copy, Debug)]
pub(super) struct Exchange<'h> {
    /// The completion's index (the invocation's if it never completed).
    pub index: u64,
    /// The process.
    pub process: Process,
    /// Invocation time, ns.
    pub start: u64,
    /// Completion time, ns; `u64::MAX` if it never completed.
    pub end: u64,
    /// `ok`, `fail` or `info` (never completed counts as `info`).
    pub kind: OpType,
    /// The completion's value (the invocation's if it never completed).
    pub call: &'h Call,
}

impl<'h> Exchange<'h> {
    fn of(invoke: &'h Op, completion: Option<&'h Op>) -> Exchange<'h> {
        match completion {
            Some(done) => Exchange {
                index: done.index,
                process: invoke.process,
                start: invoke.time,
                end: done.time,
                kind: done.kind,
                call: &done.call,
            },
            None => Exchange {
                index: invoke.index,
                process: invoke.process,
                start: invoke.time,
                end: u64::MAX,
                kind: OpType::Info,
                call: &invoke.call,
            },
        }
    }

    /// The heartbeat value, if this is one.
    pub fn heartbeat(&self) -> Option<&'h Heartbeat> {
        match self.call {
            Call::Heartbeat(hb) => Some(hb),
            _ => None,
        }
    }

    /// The commit value, if this is one.
    pub fn commit(&self) -> Option<&'h Commit> {
        match self.call {
            Call::Commit(c) => Some(c),
            _ => None,
        }
    }

    /// The member this exchange speaks for: the id sent, or, for a join, the id its `ok` reply
    /// gave. `None` for a join without an answer and for reads.
    pub fn member(&self) -> Option<&'h str> {
        match self.call {
            Call::Heartbeat(hb) => hb
                .member
                .as_deref()
                .or(hb.reply.as_ref().map(|r| r.member.as_str())),
            Call::Commit(c) => Some(&c.member),
            _ => None,
        }
    }

    /// The error code of a refusal.
    pub fn code(&self) -> Option<&'h str> {
        match self.call {
            Call::Heartbeat(hb) => hb.code.as_deref(),
            Call::Commit(c) => c.code.as_deref(),
            _ => None,
        }
    }
}

/// One successful read of committed offsets: an `ok` `offsets` operation (which shows every
/// key: a key it lacks has no committed offset) or an `ok` heartbeat reply (which shows the
/// keys it assigns).
#[derive(Clone, Debug)]
pub(super) struct Read {
    pub index: u64,
    pub start: u64,
    pub end: u64,
    /// Per key shown, the committed offset (`None`: none).
    pub shown: BTreeMap<Key, Option<Offset>>,
    /// Whether keys not in `shown` were shown to have no committed offset.
    pub complete: bool,
}

impl Read {
    /// What the read showed for `key`, if it showed it.
    pub fn get(&self, key: Key) -> Option<Option<Offset>> {
        match self.shown.get(&key) {
            Some(offset) => Some(*offset),
            None if self.complete => Some(None),
            None => None,
        }
    }
}

/// The group operations of a history.
pub(super) struct Exchanges<'h> {
    /// Heartbeats (joins, stays and leaves), in invocation order.
    pub heartbeats: Vec<Exchange<'h>>,
    /// Commits, in invocation order.
    pub commits: Vec<Exchange<'h>>,
    /// Successful reads of committed offsets, in invocation order.
    pub reads: Vec<Read>,
}

impl<'h> Exchanges<'h> {
    /// Gathers them from `history`.
    pub fn gather(history: &'h History) -> Exchanges<'h> {
        let mut exchanges = Exchanges {
            heartbeats: Vec::new(),
            commits: Vec::new(),
            reads: Vec::new(),
        };
        for (invoke, completion) in history.pairs() {
            let exchange = Exchange::of(invoke, completion);
            let ok = exchange.kind == OpType::Ok;
            match exchange.call {
                Call::Heartbeat(hb) => {
                    if let (true, Some(reply)) = (ok, &hb.reply) {
                        exchanges.reads.push(Read {
                            index: exchange.index,
                            start: exchange.start,
                            end: exchange.end,
                            shown: reply.committed.clone(),
                            complete: false,
                        });
                    }
                    exchanges.heartbeats.push(exchange);
                }
                Call::Commit(_) => exchanges.commits.push(exchange),
                Call::Offsets(read) if ok => exchanges.reads.push(Read {
                    index: exchange.index,
                    start: exchange.start,
                    end: exchange.end,
                    shown: read.offsets.iter().map(|(k, o)| (*k, Some(*o))).collect(),
                    complete: true,
                }),
                _ => {}
            }
        }
        exchanges
    }

    /// Whether the history judged anything: a commit and a read of `offsets` that succeeded.
    pub fn observed(&self) -> bool {
        self.commits.iter().any(|c| c.kind == OpType::Ok) && self.reads.iter().any(|r| r.complete)
    }

    /// Every key a commit or a read names.
    pub fn keys(&self) -> BTreeSet<Key> {
        let committed = self
            .commits
            .iter()
            .filter_map(Exchange::commit)
            .flat_map(|c| c.offsets.keys().copied());
        let read = self.reads.iter().flat_map(|r| r.shown.keys().copied());
        committed.chain(read).collect()
    }

    /// The processes that spoke for a member (heartbeats and commits): the group's consumers.
    pub fn member_processes(&self) -> BTreeSet<Process> {
        self.heartbeats
            .iter()
            .chain(&self.commits)
            .map(|e| e.process)
            .collect()
    }

    /// Heartbeats and commits by member id, each list in invocation order.
    pub fn by_member(&self) -> BTreeMap<&'h str, MemberExchanges<'h>> {
        let mut by_member: BTreeMap<&'h str, MemberExchanges<'h>> = BTreeMap::new();
        for hb in &self.heartbeats {
            if let Some(member) = hb.member() {
                by_member.entry(member).or_default().heartbeats.push(*hb);
            }
        }
        for commit in &self.commits {
            if let Some(member) = commit.member() {
                by_member.entry(member).or_default().commits.push(*commit);
            }
        }
        by_member
    }
}

/// One member's heartbeats and commits.
#[derive(Default)]
pub(super) struct MemberExchanges<'h> {
    pub heartbeats: Vec<Exchange<'h>>,
    pub commits: Vec<Exchange<'h>>,
}
