//! The copy worker: every record of one topic, copied to another, at least once. The first
//! worker built on [`Consumer`]; the chat router will have the same shape (poll, write what
//! the records imply, commit).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chat4all_storage::StoredRecord;
use tokio_util::sync::CancellationToken;

use crate::config::CopyWorkerConfig;
use crate::consumer::{Consumed, Consumer};
use crate::error::ServiceError;
use crate::partitioner::partition_for_key;
use crate::service::{ProduceBatch, Service};

/// How long to wait after an error before trying again.
const BACKOFF: Duration = Duration::from_millis(250);
/// Records per poll.
const MAX_RECORDS: u32 = 500;

/// Copies `from` to `to` as a member of `group`.
pub struct CopyWorker {
    /// The node's services.
    pub service: Arc<Service>,
    /// What to copy.
    pub config: CopyWorkerConfig,
}

impl CopyWorker {
    /// Runs until `shutdown`, then leaves the group.
    pub async fn run(self, shutdown: CancellationToken) {
        let c = &self.config;
        // A static member per node: a node restarting within the session timeout gets its
        // partitions back without moving them twice.
        let instance = format!("{}-node-{}", c.group, self.service.node_id());
        let mut consumer = Consumer::new(
            self.service.clone(),
            &c.group,
            std::slice::from_ref(&c.from),
            Some(instance),
        );
        tracing::info!(group = %c.group, from = %c.from, to = %c.to, "copy worker started");
        loop {
            let step = tokio::select! {
                step = self.step(&mut consumer) => step,
                _ = shutdown.cancelled() => break,
            };
            if let Err(e) = step {
                tracing::debug!(group = %c.group, "copy worker: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(BACKOFF) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
        }
        // Leaving moves the partitions at once instead of after the session timeout; bounded,
        // so a node stopping without a majority still stops.
        let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
    }

    /// One poll, its records written, their positions committed.
    async fn step(&self, consumer: &mut Consumer) -> Result<(), ServiceError> {
        let records = consumer.poll(MAX_RECORDS, Duration::from_secs(1)).await?;
        if records.is_empty() {
            return Ok(());
        }
        let n = records.len();
        let last = records
            .last()
            .map(|c| format!("{}/{}@{}", c.topic, c.partition, c.offset));
        if let Err(e) = self.write(records).await {
            // Not all written: read them again rather than skip them (at least once).
            consumer.rewind();
            return Err(e);
        }
        consumer.commit().await?;
        tracing::debug!(group = %self.config.group, n, last = ?last, "copied");
        Ok(())
    }

    /// Writes records to `to`, retrying each partition's batch until it is acknowledged (a
    /// retry after an unknown outcome may duplicate it: at least once).
    async fn write(&self, records: Vec<Consumed>) -> Result<(), ServiceError> {
        let to = self.service.topic_synced(&self.config.to).await?;
        let partitions = to.partitions.len() as u32;
        let mut by_partition: BTreeMap<u32, Vec<StoredRecord>> = BTreeMap::new();
        for c in records {
            let p = match &c.record.key {
                Some(k) => partition_for_key(&k.bytes, partitions),
                None => c.partition % partitions.max(1),
            };
            by_partition.entry(p).or_default().push(c.record);
        }
        for (partition, records) in by_partition {
            let batch = ProduceBatch {
                topic: self.config.to.clone(),
                partition,
                records,
                producer: None,
            };
            self.service.produce_batch(batch, 0).await?;
        }
        Ok(())
    }
}
