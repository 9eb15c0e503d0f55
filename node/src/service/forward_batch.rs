//! Produce requests this node forwards to a partition's leader travel together: those that
//! arrive while earlier ones are on the wire become one `ProduceMany` message, so one QUIC
//! stream, one encryption and one task on each side serve them all. The leader appends each
//! batch as if it had come alone (its own group commit then joins them into Raft entries).
//!
//! ```text
//! produce ─┐                           ┌ permit (≤ IN_FLIGHT messages on the wire at once)
//! produce ─┼─▶ queue per (leader, group) ─▶ drain (≤ MAX_BYTES) ─▶ one ProduceMany
//! produce ─┘                           └ answer each caller with its own result
//! ```
//!
//! Measured (3 nodes, 256 produce requests in flight, 1 KiB records, one record each): a client
//! that sends each partition's requests to its leader got 11,500 records/s, one that spreads
//! them over the nodes (two in three forwarded) 8,300, with QUIC at 17 % of the nodes' CPU.
//! Joined, about 5 requests travel per message, and the nodes spend about a tenth less CPU
//! per record (0.168 against 0.188 ms, three runs each; throughput +8 %, within this
//! machine's noise).
//!
//! Only requests from this node's own clients (`hops == 0`) are joined; a request forwarded
//! here that must go on goes alone, as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use chat4all_raft::types::{GroupId, NodeId};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{ForwardRequest, ForwardResponse, ProduceBatch, Service};
use crate::error::ServiceError;

/// Messages to one (leader, group) on the wire at once. More overlaps them; fewer makes them
/// bigger.
const IN_FLIGHT: usize = 4;
/// The most record bytes one message carries.
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// Requests waiting per (leader, group) before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

type Reply = Result<(u64, u32), ServiceError>;

struct Pending {
    batch: ProduceBatch,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// One queue and worker per (leader, group) this node has forwarded produce requests to.
pub struct ForwardBatcher {
    service: Weak<Service>,
    queues: Mutex<HashMap<(NodeId, GroupId), mpsc::Sender<Pending>>>,
}

impl ForwardBatcher {
    /// A batcher that forwards through `service` (held weakly: the service owns it).
    pub fn new(service: Weak<Service>) -> ForwardBatcher {
        ForwardBatcher {
            service,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Forwards `batch` to node `to`, which this node takes for the leader of `group`, with
    /// the requests queued meanwhile, and returns its own answer. Errors are those of
    /// [`Service::forward`], for every batch of the message alike.
    pub async fn forward(
        &self,
        to: NodeId,
        group: GroupId,
        batch: ProduceBatch,
        deadline: Instant,
    ) -> Reply {
        let (reply, rx) = oneshot::channel();
        let queue = self.queue(to, group)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let pending = Pending {
            batch,
            deadline,
            reply,
        };
        // Not enqueued means not sent: a definite failure.
        match tokio::time::timeout(left, queue.send(pending)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ServiceError::Unavailable("node is shutting down".into())),
            Err(_) => {
                return Err(ServiceError::Unavailable(format!(
                    "too many produce requests queued for node {to}"
                )));
            }
        }
        // The worker answers every request it took, by the message's deadline at the latest;
        // a dropped reply means it stopped with the request possibly sent.
        rx.await.unwrap_or_else(|_| {
            Err(ServiceError::OutcomeUnknown(format!(
                "forwarding to node {to} stopped with the request in flight"
            )))
        })
    }

    fn queue(&self, to: NodeId, group: GroupId) -> Result<mpsc::Sender<Pending>, ServiceError> {
        let mut queues = self
            .queues
            .lock()
            .map_err(|_| ServiceError::Internal("forward batcher lock poisoned".into()))?;
        if let Some(q) = queues.get(&(to, group)).filter(|q| !q.is_closed()) {
            return Ok(q.clone());
        }
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(self.service.clone(), to, group, rx));
        queues.insert((to, group), tx.clone());
        Ok(tx)
    }
}

async fn run(service: Weak<Service>, to: NodeId, group: GroupId, mut rx: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Wait for room first: whatever queues up meanwhile joins this message.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = size(&first.batch);
        let mut items = vec![first];
        while bytes < MAX_BYTES {
            match rx.try_recv() {
                Ok(p) => {
                    bytes += size(&p.batch);
                    items.push(p);
                }
                Err(_) => break,
            }
        }
        let Some(service) = service.upgrade() else {
            for p in items {
                let _ = p.reply.send(Err(ServiceError::Unavailable(
                    "node is shutting down".into(),
                )));
            }
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            send(&service, to, group, items).await;
        });
    }
}

/// Sends one message with `items` and answers each.
async fn send(service: &Service, to: NodeId, group: GroupId, items: Vec<Pending>) {
    // The message waits no longer than its most pressed request would have alone.
    let deadline = items
        .iter()
        .map(|p| p.deadline)
        .min()
        .unwrap_or_else(Instant::now);
    let (batches, replies): (Vec<ProduceBatch>, Vec<oneshot::Sender<Reply>>) =
        items.into_iter().map(|p| (p.batch, p.reply)).unzip();
    let n = batches.len();
    let req = ForwardRequest::ProduceMany { batches, hops: 1 };
    let answers: Vec<Reply> = match service.forward(to, group, req, 0, deadline).await {
        Ok(ForwardResponse::ProducedMany(rs)) if rs.len() == n => rs,
        Ok(other) => {
            let e = ServiceError::Internal(format!(
                "node {to} answered {n} forwarded batches with {other:?}"
            ));
            vec![Err(e); n]
        }
        Err(e) => vec![Err(e); n],
    };
    for (reply, answer) in replies.into_iter().zip(answers) {
        let _ = reply.send(answer);
    }
}

fn size(b: &ProduceBatch) -> usize {
    b.records
        .iter()
        .map(|r| usize::try_from(r.size_bytes()).unwrap_or(usize::MAX))
        .sum()
}
