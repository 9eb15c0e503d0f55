//! Retention by time and by size: each partition's leader decides how far the log start may
//! advance and proposes it through Raft, so every replica deletes exactly the same records.

use std::sync::Arc;
use std::time::Duration;

use chat4all_raft::groups::{GroupState, Groups};
use chat4all_raft::sm::controller::ControllerStateMachine;
use chat4all_raft::types::{Command, PartitionCommand};
use chat4all_storage::{Cf, Db, keys};
use tokio_util::sync::CancellationToken;

/// Periodically applies each topic's retention on the partitions this node leads.
pub struct RetentionWorker {
    /// The node's groups.
    pub groups: Arc<Groups>,
    /// Topic retention settings come from here.
    pub controller: ControllerStateMachine,
    /// For compacting deleted ranges away.
    pub db: Db,
    /// How often to check.
    pub interval: Duration,
}

impl RetentionWorker {
    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.check_all().await,
                _ = shutdown.cancelled() => return,
            }
        }
    }

    async fn check_all(&self) {
        let me = self.groups.node_id();
        let state = self.controller.state();
        for topic in state.topics.values() {
            if topic.retention_ms.is_none() && topic.retention_bytes.is_none() {
                continue;
            }
            for (i, p) in topic.partitions.iter().enumerate() {
                let Some(g) = self.groups.get(p.group) else {
                    continue;
                };
                if g.leader() != Some(me) {
                    continue;
                }
                let GroupState::Partition(sm) = &g.state else {
                    continue;
                };
                let now = now_ms();
                let start = sm.state().log_start_offset;
                let target = match sm.retention_target(
                    now,
                    topic.retention_ms,
                    topic.retention_bytes,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(topic = %topic.name, partition = i, "retention scan failed: {e}");
                        continue;
                    }
                };
                if target <= start {
                    continue;
                }
                let cmd = Command::Partition(PartitionCommand::AdvanceLogStart { offset: target });
                match tokio::time::timeout(Duration::from_secs(10), g.raft.client_write(cmd)).await
                {
                    Ok(Ok(_)) => {
                        tracing::info!(topic = %topic.name, partition = i, from = start, to = target, "retention advanced log start");
                        // Deleted ranges are tombstones until compaction; compact them now so
                        // the space is actually freed.
                        let db = self.db.clone();
                        let (from, to) = (
                            keys::group_u64(p.group.0, 0),
                            keys::group_u64(p.group.0, target),
                        );
                        let _ = tokio::task::spawn_blocking(move || {
                            db.compact_range(Cf::OffsetRecord, &from, &to)
                        })
                        .await;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(topic = %topic.name, partition = i, "retention proposal failed: {e}")
                    }
                    Err(_) => {
                        tracing::warn!(topic = %topic.name, partition = i, "retention proposal timed out")
                    }
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
