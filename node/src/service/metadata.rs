//! Cluster metadata (topics, producer epochs) read from this node's copy of the controller
//! state machine, made fresh on demand.
//!
//! A follower applies a controller entry only after the leader tells it the entry committed, so
//! right after `POST /v1/topics` or `POST /v1/producers` answered through one node, another
//! node's copy may not have it yet. Answering `UNKNOWN_TOPIC` or `UNKNOWN_PRODUCER` from that
//! stale copy would deny a write the cluster acknowledged. So a miss is never answered from the
//! local copy alone: the node first asks the controller leader for its read index (the leader
//! confirms its leadership with a quorum, as for a linearizable read) and waits until it has
//! applied that far. Hits need no round trip: metadata only grows (topics and producer ids are
//! never removed, epochs only rise).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat4all_raft::sm::controller::ControllerState;
use chat4all_raft::types::{GroupId, PartitionMeta, TopicMeta};

use super::{ForwardRequest, ForwardResponse, Route, Service};
use crate::error::ServiceError;

/// Controller catch-up rounds shared by concurrent callers (read-index batching). A caller is
/// served by the first round that *starts* after it arrived, so it sees every controller entry
/// committed before it arrived; callers that arrive together cost one quorum round, not one
/// each. Rounds run one at a time.
#[derive(Default)]
pub(super) struct SyncRounds {
    /// Rounds started so far; the next round gets number `started + 1`.
    started: AtomicU64,
    /// Outcome of the rounds, held while a round runs.
    last: tokio::sync::Mutex<RoundOutcome>,
    /// Whether a round has succeeded since the node started (see
    /// [`Service::caught_up_with_metadata`]).
    caught_up: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct RoundOutcome {
    /// The latest round that succeeded.
    ok: u64,
    /// The latest round that failed, and why.
    failed: u64,
    why: String,
}

impl Service {
    /// Like [`Service::synced_metadata`], but concurrent callers share rounds (see
    /// [`SyncRounds`]).
    pub async fn shared_synced_metadata(&self) -> Result<Arc<ControllerState>, ServiceError> {
        let rounds = &self.sync_rounds;
        let need = rounds.started.load(Ordering::SeqCst) + 1;
        let mut last = rounds.last.lock().await;
        if last.ok >= need {
            return Ok(self.metadata());
        }
        if last.failed >= need {
            return Err(ServiceError::Unavailable(last.why.clone()));
        }
        let round = rounds.started.fetch_add(1, Ordering::SeqCst) + 1;
        match self.synced_metadata().await {
            Ok(state) => {
                last.ok = round;
                Ok(state)
            }
            Err(e) => {
                last.failed = round;
                last.why = e.to_string();
                Err(e)
            }
        }
    }

    /// Whether this node has caught up, once since it started, with every controller entry
    /// committed before it asked: what `/ready` waits for, so that a restarted node that missed
    /// topics while it was down (or learns them from a snapshot) is not ready before it knows
    /// them. Runs a shared round until one succeeds, then answers at once.
    pub async fn caught_up_with_metadata(&self) -> Result<(), ServiceError> {
        if self.sync_rounds.caught_up.load(Ordering::Acquire) {
            return Ok(());
        }
        self.shared_synced_metadata().await?;
        self.sync_rounds.caught_up.store(true, Ordering::Release);
        Ok(())
    }

    /// The metadata, including every controller entry committed before this call.
    pub async fn synced_metadata(&self) -> Result<Arc<ControllerState>, ServiceError> {
        let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms);
        let index = match self.route(GroupId::CONTROLLER, &[], deadline).await? {
            Route::Local(_) => self.controller_read_index(deadline).await?,
            Route::Remote(n) => {
                match self
                    .forward(
                        n,
                        GroupId::CONTROLLER,
                        ForwardRequest::ControllerReadIndex,
                        0,
                        deadline,
                    )
                    .await?
                {
                    ForwardResponse::ReadIndex(i) => i,
                    other => {
                        return Err(ServiceError::Internal(format!(
                            "unexpected forward answer {other:?}"
                        )));
                    }
                }
            }
        };
        let g = self.groups.get(GroupId::CONTROLLER).ok_or_else(|| {
            ServiceError::Unavailable("the controller is not running on this node yet".into())
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        g.raft
            .wait(Some(left))
            .applied_index_at_least(index, "metadata read index")
            .await
            .map_err(|e| {
                ServiceError::Unavailable(format!("cannot catch up with the controller: {e}"))
            })?;
        Ok(self.metadata())
    }

    /// The controller's read index, when this node leads the controller: the index every
    /// entry committed so far is at or below, confirmed with a quorum.
    pub(super) async fn controller_read_index(
        &self,
        deadline: Instant,
    ) -> Result<Option<u64>, ServiceError> {
        let g = self.groups.get(GroupId::CONTROLLER).ok_or_else(|| {
            ServiceError::Unavailable("the controller is not running on this node yet".into())
        })?;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, g.raft.get_read_log_id()).await {
            Ok(Ok((read, _applied))) => Ok(read.map(|l| l.index)),
            Ok(Err(e)) => Err(ServiceError::Unavailable(format!(
                "the controller cannot confirm its leader: {e}"
            ))),
            Err(_) => Err(ServiceError::Unavailable(
                "the controller cannot confirm its leader (no majority reachable?)".into(),
            )),
        }
    }

    /// A topic; `UNKNOWN_TOPIC` only if the controller has not committed it.
    pub async fn topic_synced(&self, name: &str) -> Result<TopicMeta, ServiceError> {
        match self.topic(name) {
            Err(ServiceError::UnknownTopic(_)) => {
                self.synced_metadata().await?;
                self.topic(name)
            }
            found => found,
        }
    }

    /// A topic's partition; `UNKNOWN_TOPIC` or `UNKNOWN_PARTITION` only if the controller has
    /// not committed it.
    pub async fn partition_synced(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionMeta, ServiceError> {
        match self.partition(topic, partition) {
            Err(ServiceError::UnknownTopic(_) | ServiceError::UnknownPartition { .. }) => {
                self.synced_metadata().await?;
                self.partition(topic, partition)
            }
            found => found,
        }
    }

    /// The current epoch of producer `id` (if the controller has issued it) as of every
    /// controller entry committed before this call. An `epoch` below what this node has seen
    /// is old for sure (epochs only rise); any other answer needs a controller round, shared
    /// with concurrent callers: a bump acknowledged through another node may not have been
    /// applied here yet, and answering from the local copy would let the fenced epoch write.
    pub async fn producer_epoch_synced(
        &self,
        id: i64,
        epoch: i16,
    ) -> Result<Option<i16>, ServiceError> {
        match self.metadata().producer_epochs.get(&id) {
            Some(&current) if epoch < current => Ok(Some(current)),
            _ => Ok(self
                .shared_synced_metadata()
                .await?
                .producer_epochs
                .get(&id)
                .copied()),
        }
    }
}
