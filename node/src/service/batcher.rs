//! Group commit at the leader: appends to one partition that arrive while earlier ones are being
//! fsynced and replicated become one Raft entry, so one log write, one fsync per replica and one
//! replication round serve them all.
//!
//! ```text
//! produce ─┐                      ┌ permit (≤ MAX_IN_FLIGHT entries in Raft at once)
//! produce ─┼─▶ queue ─▶ worker ───┤ drain the queue (≤ MAX_ENTRY_BYTES) ─▶ one AppendMany
//! produce ─┘   (per partition)    └ answer each caller with its own response
//! ```
//!
//! Order is kept: the worker proposes in queue order, and the state machine applies the batches
//! of an entry in order, each exactly as if it were alone (idempotent-producer rules included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat4all_raft::types::{
    AppendBatch, Command, CommandResponse, GroupId, PartitionCommand, PartitionResponse, TypeConfig,
};
use openraft::Raft;
use openraft::error::ClientWriteError;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::Proposed;
use super::coalesce::{self, NotQueued, Queues};
use crate::error::ServiceError;

/// Entries of one partition in Raft at once. More overlaps the leader's fsync with replication;
/// fewer makes bigger entries.
const MAX_IN_FLIGHT: usize = 4;
/// The most record bytes one entry carries.
const MAX_ENTRY_BYTES: u64 = 4 * 1024 * 1024;
/// Appends waiting per partition before producers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

type Reply = Result<Proposed<PartitionResponse>, ServiceError>;

struct Pending {
    batch: AppendBatch,
    bytes: u64,
    reply: oneshot::Sender<Reply>,
}

/// One queue and worker per partition this node has proposed on.
pub struct Batcher {
    queues: Queues<GroupId, Pending>,
    timeout: Duration,
}

impl Batcher {
    /// A batcher whose entries give up (as `OUTCOME_UNKNOWN`) after `timeout`.
    pub fn new(timeout: Duration) -> Batcher {
        Batcher {
            queues: Queues::new(QUEUE_DEPTH),
            timeout,
        }
    }

    /// Proposes `batch` on `raft` (this node believes it leads `group`) and waits for its own
    /// response, or until `deadline`.
    pub async fn propose(
        &self,
        group: GroupId,
        raft: &Raft<TypeConfig>,
        batch: AppendBatch,
        deadline: Instant,
    ) -> Reply {
        let bytes = batch.records.iter().map(|r| r.size_bytes()).sum();
        let (reply, rx) = oneshot::channel();
        let pending = Pending {
            batch,
            bytes,
            reply,
        };
        let timeout = self.timeout;
        let start = |rx| {
            tokio::spawn(run(group, raft.clone(), rx, timeout));
        };
        // Not enqueued means not proposed: a definite failure.
        match self.queues.send(group, pending, deadline, start).await {
            Ok(()) => {}
            Err(NotQueued::Closed) => {
                return Err(ServiceError::Unavailable(format!(
                    "group {group} is shutting down"
                )));
            }
            Err(NotQueued::Full) => {
                return Err(ServiceError::Unavailable(format!(
                    "group {group} is overloaded: too many appends queued"
                )));
            }
            Err(NotQueued::Poisoned) => {
                return Err(ServiceError::Internal("batcher lock poisoned".into()));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Err(ServiceError::OutcomeUnknown(format!(
                "group {group} stopped while the append was in flight"
            ))),
            Err(_) => Err(ServiceError::OutcomeUnknown(format!(
                "group {group} did not commit within {} ms (no majority reachable?)",
                left.as_millis()
            ))),
        }
    }
}

async fn run(
    group: GroupId,
    raft: Raft<TypeConfig>,
    mut rx: mpsc::Receiver<Pending>,
    timeout: Duration,
) {
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // Room for an entry first: whatever queues up meanwhile joins it.
    while let Some((permit, items)) =
        coalesce::next_run(&mut rx, &permits, MAX_ENTRY_BYTES, |p: &Pending| p.bytes).await
    {
        let (batches, replies): (Vec<AppendBatch>, Vec<oneshot::Sender<Reply>>) =
            items.into_iter().map(|p| (p.batch, p.reply)).unzip();
        let cmd = match <[AppendBatch; 1]>::try_from(batches) {
            Ok([one]) => PartitionCommand::Append(one),
            Err(many) => PartitionCommand::AppendMany(many),
        };
        let responder = match raft.client_write_ff(Command::Partition(cmd)).await {
            Ok(r) => r,
            Err(fatal) => {
                // The Raft core is gone; the entry never reached it.
                for r in replies {
                    let _ = r.send(Err(ServiceError::Unavailable(format!(
                        "group {group} stopped: {fatal}"
                    ))));
                }
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(timeout, responder).await;
            let answers: Vec<Reply> = match outcome {
                Ok(Ok(Ok(resp))) => match resp.data {
                    CommandResponse::Partition(PartitionResponse::Many(rs))
                        if rs.len() == replies.len() =>
                    {
                        rs.into_iter().map(|r| Ok(Proposed::Done(r))).collect()
                    }
                    CommandResponse::Partition(r) if replies.len() == 1 => {
                        vec![Ok(Proposed::Done(r))]
                    }
                    other => {
                        let e = ServiceError::Internal(format!(
                            "group {group} answered an append with {other:?}"
                        ));
                        replies.iter().map(|_| Err(e.clone())).collect()
                    }
                },
                // Truncated by a new leader, or never proposed: nothing was written.
                Ok(Ok(Err(ClientWriteError::ForwardToLeader(f)))) => replies
                    .iter()
                    .map(|_| Ok(Proposed::NotLeader(f.leader_id)))
                    .collect(),
                Ok(Ok(Err(ClientWriteError::ChangeMembershipError(e)))) => {
                    let e = ServiceError::Internal(format!("unexpected membership error: {e}"));
                    replies.iter().map(|_| Err(e.clone())).collect()
                }
                Ok(Err(_)) => {
                    let e = ServiceError::OutcomeUnknown(format!(
                        "group {group} stopped while the append was in flight"
                    ));
                    replies.iter().map(|_| Err(e.clone())).collect()
                }
                Err(_) => {
                    let e = ServiceError::OutcomeUnknown(format!(
                        "group {group} did not commit within {} ms (no majority reachable?)",
                        timeout.as_millis()
                    ));
                    replies.iter().map(|_| Err(e.clone())).collect()
                }
            };
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        });
    }
}
