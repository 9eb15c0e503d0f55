//! Reading committed records, with long polling: from a partition's leader for clients, from
//! this node's replica for consumers inside the node.

use std::time::{Duration, Instant};

use chat4all_raft::groups::Group;
use chat4all_raft::sm::partition::ReadBatch;
use chat4all_storage::StoredRecord;
use openraft::error::{CheckIsLeaderError, RaftError};
use serde::{Deserialize, Serialize};

use super::{ForwardRequest, ForwardResponse, Route, Service};
use crate::error::ServiceError;

/// Longest long poll a client may ask for.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Bytes a fetch collects before it stops adding records (at least one is always returned).
const FETCH_MAX_BYTES: u64 = 8 << 20;

/// A read of one partition.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct FetchRequest {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// First offset wanted; `None` means the log start.
    pub offset: Option<u64>,
    /// At most this many records.
    pub max_records: u32,
    /// Wait up to this long for records when none are available at `offset`.
    pub max_wait_ms: u64,
}

/// Records read, with the partition's offsets at the time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct FetchResult {
    /// `(offset, record)`, ascending and dense.
    pub records: Vec<(u64, StoredRecord)>,
    /// The high watermark.
    pub high_watermark: u64,
    /// The log start offset.
    pub log_start_offset: u64,
}

impl Service {
    /// Reads committed records, from the partition's leader.
    pub async fn fetch(&self, req: FetchRequest, hops: u8) -> Result<FetchResult, ServiceError> {
        let started = Instant::now();
        let res = self.fetch_inner(req, hops).await;
        if hops == 0 {
            let outcome = if res.is_ok() { "ok" } else { "error" };
            self.metrics
                .fetch_requests
                .with_label_values(&[outcome])
                .inc();
            self.metrics
                .fetch_latency
                .observe(started.elapsed().as_secs_f64());
        }
        res
    }

    async fn fetch_inner(&self, req: FetchRequest, hops: u8) -> Result<FetchResult, ServiceError> {
        let meta = self.partition_synced(&req.topic, req.partition).await?;
        let wait = Duration::from_millis(req.max_wait_ms.min(MAX_WAIT_MS));
        let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms) + wait;
        let mut route = self.route(meta.group, &meta.replicas, deadline).await?;
        if let Route::Local(g) = &route {
            // Read what is committed, not just what this replica applied so far: confirm the
            // leadership with a quorum and wait for the state machine to catch up (a freshly
            // elected leader may not have applied its predecessor's last entries yet).
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, g.raft.ensure_linearizable()).await {
                Ok(Ok(_)) => {}
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))))
                    if f.leader_id.is_some_and(|l| l != self.node_id) =>
                {
                    route = Route::Remote(f.leader_id.unwrap_or_default());
                }
                Ok(Err(e)) => {
                    return Err(ServiceError::Unavailable(format!(
                        "partition {} of '{}' cannot confirm its leader: {e}",
                        req.partition, req.topic
                    )));
                }
                Err(_) => {
                    return Err(ServiceError::Unavailable(format!(
                        "partition {} of '{}' cannot confirm its leader (no majority reachable?)",
                        req.partition, req.topic
                    )));
                }
            }
        }
        match route {
            Route::Remote(n) => {
                let fwd = ForwardRequest::Fetch {
                    req: req.clone(),
                    hops: hops + 1,
                };
                match self.forward(n, meta.group, fwd, hops, deadline).await? {
                    ForwardResponse::Fetched(r) => Ok(r),
                    other => Err(ServiceError::Internal(format!(
                        "unexpected forward answer {other:?}"
                    ))),
                }
            }
            Route::Local(g) => self.read_applied(&g, &req, wait, false).await,
        }
    }

    /// Reads committed records for a consumer inside this node (the router, the delivery
    /// and inbound workers, consumer groups), from this node's replica of the partition when
    /// it has one in touch with the leader ([`Group::in_contact`]), else as [`Service::fetch`]
    /// does.
    ///
    /// Every replica applies only committed entries, in log order, at the same offsets, so a
    /// replica's records are the leader's, possibly fewer: a consumer reading on from its
    /// position gets every record, in order, at worst a little later. The forward to the
    /// leader and the quorum round a public fetch pays (its high watermark must be the
    /// leader's, so that offsets a client saw elsewhere are in range) are saved; a position
    /// past this replica's high watermark (taken from another node) waits for the replica
    /// to catch up instead of answering `OFFSET_OUT_OF_RANGE`.
    pub async fn fetch_replica(&self, req: FetchRequest) -> Result<FetchResult, ServiceError> {
        let meta = self.partition_synced(&req.topic, req.partition).await?;
        match self.groups.get(meta.group).filter(|g| g.in_contact()) {
            Some(g) => {
                let wait = Duration::from_millis(req.max_wait_ms.min(MAX_WAIT_MS));
                self.read_applied(&g, &req, wait, true).await
            }
            None => self.fetch(req, 0).await,
        }
    }

    /// Reads what this replica of `g` has applied, waiting up to `wait` for a record at the
    /// requested offset. With `behind_ok`, an offset past the high watermark waits like one
    /// at it.
    async fn read_applied(
        &self,
        g: &Group,
        req: &FetchRequest,
        wait: Duration,
        behind_ok: bool,
    ) -> Result<FetchResult, ServiceError> {
        let sm = super::partition_sm(g)?;
        // Subscribe before the first read, so a record committed in between wakes us.
        let mut hw = sm.watch_high_watermark();
        let wait_until = tokio::time::Instant::now() + wait;
        loop {
            let offset = req.offset.unwrap_or_else(|| sm.state().log_start_offset);
            let read = sm
                .read(offset, req.max_records as usize, FETCH_MAX_BYTES)
                .map_err(|e| ServiceError::Internal(format!("read partition: {e}")))?;
            let batch = match read {
                Ok(batch) => batch,
                // Not reached by this replica yet: nothing to answer so far.
                Err(r) if behind_ok && offset > r.high_watermark => ReadBatch {
                    records: Vec::new(),
                    high_watermark: r.high_watermark,
                    log_start_offset: r.log_start_offset,
                },
                Err(r) => {
                    return Err(ServiceError::OffsetOutOfRange {
                        offset,
                        log_start_offset: r.log_start_offset,
                        high_watermark: r.high_watermark,
                    });
                }
            };
            if !batch.records.is_empty() || tokio::time::Instant::now() >= wait_until {
                return Ok(FetchResult {
                    records: batch.records,
                    high_watermark: batch.high_watermark,
                    log_start_offset: batch.log_start_offset,
                });
            }
            // Nothing yet: wait for the high watermark to move past `offset`, or time out;
            // either way the next turn reads again and answers.
            let _parked = Parked::new(&self.metrics.fetch_waiting);
            let _ = tokio::time::timeout_at(wait_until, hw.wait_for(|&h| h > offset)).await;
        }
    }
}

/// Counts a parked long poll for as long as it lives, also when the client goes away.
struct Parked<'a>(&'a prometheus::IntGauge);

impl<'a> Parked<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Parked<'a> {
        gauge.inc();
        Parked(gauge)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
