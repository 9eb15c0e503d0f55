//! Appending a batch to a partition: on its leader, or forwarded there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chat4all_raft::types::{AppendBatch, PartitionResponse, ProducerBatch};
use chat4all_storage::StoredRecord;
use serde::{Deserialize, Serialize};

use super::{ForwardRequest, ForwardResponse, Proposed, Service};
use crate::error::ServiceError;

/// Records bound for one partition, validated and timestamped.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct ProduceBatch {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// The records, in order.
    pub records: Vec<StoredRecord>,
    /// Idempotent producer fields, if any.
    pub producer: Option<ProducerBatch>,
}

impl Service {
    /// Appends `batch`, returning its first offset and count once a majority has it on disk.
    pub async fn produce_batch(
        &self,
        batch: ProduceBatch,
        hops: u8,
    ) -> Result<(u64, u32), ServiceError> {
        let started = Instant::now();
        let res = self.produce_inner(batch, hops).await;
        let outcome = match &res {
            Ok(_) => "ok",
            Err(e) if e.is_definite() => "error",
            Err(_) => "unknown",
        };
        if hops == 0 {
            self.metrics
                .produce_requests
                .with_label_values(&[outcome])
                .inc();
            self.metrics
                .produce_latency
                .observe(started.elapsed().as_secs_f64());
        }
        res
    }

    async fn produce_inner(
        &self,
        batch: ProduceBatch,
        hops: u8,
    ) -> Result<(u64, u32), ServiceError> {
        let meta = self.partition_synced(&batch.topic, batch.partition).await?;
        let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms);
        // Only the node that proposes checks the producer, once: the check costs a controller
        // round (see `producer_epoch_synced`).
        let producer_checked = AtomicBool::new(false);
        let local = |g: chat4all_raft::groups::Group| {
            let (producer_checked, batch) = (&producer_checked, &batch);
            async move {
                if !producer_checked.load(Ordering::Relaxed) {
                    self.check_producer(batch.producer).await?;
                    producer_checked.store(true, Ordering::Relaxed);
                }
                let append = AppendBatch {
                    producer: batch.producer,
                    records: batch.records.clone(),
                };
                Ok(
                    match self
                        .batcher
                        .propose(g.id, &g.raft, append, deadline)
                        .await?
                    {
                        Proposed::Done(r) => Proposed::Done(answer(r, batch.producer)?),
                        Proposed::NotLeader(l) => Proposed::NotLeader(l),
                    },
                )
            }
        };
        let remote = |n: chat4all_raft::types::NodeId| {
            let batch = batch.clone();
            async move {
                if hops == 0 {
                    // From this node's own client: joined with the others bound there.
                    return self.forwards.forward(n, meta.group, batch, deadline).await;
                }
                let req = ForwardRequest::Produce {
                    batch,
                    hops: hops + 1,
                };
                match self.forward(n, meta.group, req, hops, deadline).await? {
                    ForwardResponse::Produced { base_offset, count } => Ok((base_offset, count)),
                    other => Err(ServiceError::Internal(format!(
                        "unexpected forward answer {other:?}"
                    ))),
                }
            }
        };
        if let Some(r) = self
            .on_leader(meta.group, &meta.replicas, hops, deadline, local, remote)
            .await?
        {
            return Ok(r);
        }
        Err(ServiceError::Unavailable(format!(
            "partition {} of '{}' keeps changing leader; retry",
            batch.partition, batch.topic
        )))
    }
}

impl Service {
    /// Refuses a batch from a producer the controller never issued, or from an epoch that is
    /// not the producer's current one, as of every controller entry committed before the call.
    async fn check_producer(&self, producer: Option<ProducerBatch>) -> Result<(), ServiceError> {
        let Some(p) = producer else {
            return Ok(());
        };
        // The controller allocates producer ids and epochs; a partition only sees batches.
        match self.producer_epoch_synced(p.id, p.epoch).await? {
            None => Err(ServiceError::UnknownProducer(p.id)),
            Some(current) if p.epoch < current => Err(ServiceError::Fenced {
                got: p.epoch,
                current,
            }),
            Some(current) if p.epoch > current => Err(ServiceError::invalid(
                "INVALID_PRODUCER_EPOCH",
                format!(
                    "producer {} has epoch {current}; {} was never issued",
                    p.id, p.epoch
                ),
            )),
            Some(_) => Ok(()),
        }
    }
}

fn answer(
    r: PartitionResponse,
    producer: Option<ProducerBatch>,
) -> Result<(u64, u32), ServiceError> {
    match r {
        PartitionResponse::Appended {
            base_offset, count, ..
        } => Ok((base_offset, count)),
        PartitionResponse::OutOfOrderSequence { expected } => {
            Err(ServiceError::OutOfOrderSequence {
                got: producer.map_or(0, |p| p.base_sequence),
                expected,
            })
        }
        PartitionResponse::Fenced { current_epoch } => Err(ServiceError::Fenced {
            got: producer.map_or(0, |p| p.epoch),
            current: current_epoch,
        }),
        other => Err(ServiceError::Internal(format!("append answered {other:?}"))),
    }
}
