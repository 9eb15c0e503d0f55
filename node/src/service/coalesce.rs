//! The queues behind group commit ([`super::batcher`]) and joined forwards
//! ([`super::forward_batch`]): one bounded queue and worker per key, and a worker that takes
//! whatever queued up while it waited for room, up to a byte budget.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Why an item was not queued (so it was not sent: a definite failure).
pub enum NotQueued {
    /// The key's worker has stopped.
    Closed,
    /// The queue stayed full until the deadline.
    Full,
    /// The queue map's lock is poisoned.
    Poisoned,
}

/// One queue of at most `depth` items per key, each drained by a worker started on first use.
pub struct Queues<K, T> {
    depth: usize,
    queues: Mutex<HashMap<K, mpsc::Sender<T>>>,
}

impl<K: Hash + Eq + Copy, T> Queues<K, T> {
    /// No queues yet; each will hold at most `depth` items.
    pub fn new(depth: usize) -> Queues<K, T> {
        Queues {
            depth,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `item` for `key`, waiting for room until `deadline`. Without a running worker
    /// for `key`, `start` is given a new queue's receiving end to start one.
    pub async fn send(
        &self,
        key: K,
        item: T,
        deadline: Instant,
        start: impl FnOnce(mpsc::Receiver<T>),
    ) -> Result<(), NotQueued> {
        let queue = {
            let mut queues = self.queues.lock().map_err(|_| NotQueued::Poisoned)?;
            match queues.get(&key).filter(|q| !q.is_closed()) {
                Some(q) => q.clone(),
                None => {
                    let (tx, rx) = mpsc::channel(self.depth);
                    start(rx);
                    queues.insert(key, tx.clone());
                    tx
                }
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, queue.send(item)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(NotQueued::Closed),
            Err(_) => Err(NotQueued::Full),
        }
    }
}

/// A worker's next run: waits for an item, then for one of `permits` (whatever queues up
/// meanwhile joins the run), then takes what is queued until the items weigh `max_bytes`
/// (by `bytes`). `None` once the queue is closed and empty, or the permits are gone.
pub async fn next_run<T>(
    rx: &mut mpsc::Receiver<T>,
    permits: &Arc<Semaphore>,
    max_bytes: u64,
    bytes: impl Fn(&T) -> u64,
) -> Option<(OwnedSemaphorePermit, Vec<T>)> {
    let first = rx.recv().await?;
    let permit = permits.clone().acquire_owned().await.ok()?;
    let mut weight = bytes(&first);
    let mut items = vec![first];
    while weight < max_bytes {
        match rx.try_recv() {
            Ok(item) => {
                weight += bytes(&item);
                items.push(item);
            }
            Err(_) => break,
        }
    }
    Some((permit, items))
}
