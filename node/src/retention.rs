//! Retention by time and by size: each partition's leader decides how far the log start may
//! advance and proposes it through Raft, so every replica deletes exactly the same records.
//! Compacted topics (the node's `__` topics) are compacted instead: their leader proposes a
//! compaction that drops every record superseded by a later one of its key.

use std::sync::Arc;
use std::time::Duration;

use chat4all_raft::groups::{Group, GroupState, Groups};
use chat4all_raft::sm::controller::ControllerStateMachine;
use chat4all_raft::sm::partition::PartitionStateMachine;
use chat4all_raft::types::{
    Command, CommandResponse, GroupId, PartitionCommand, PartitionMeta, TopicMeta,
};
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
    /// The high watermark each compacted partition this node leads was last compacted at.
    pub compacted_at: std::sync::Mutex<std::collections::HashMap<GroupId, u64>>,
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
        let state = self.controller.state();
        for topic in state.topics.values() {
            if crate::groups::partition_kind(&topic.name)
                == chat4all_raft::sm::partition::PartitionKind::Compacted
            {
                self.compact(topic).await;
            } else if topic.retention_ms.is_some() || topic.retention_bytes.is_some() {
                self.retain(topic).await;
            }
        }
    }

    /// The partitions of `topic` this node leads, with their index, meta, group and state
    /// machine.
    fn led_partitions<'t>(
        &self,
        topic: &'t TopicMeta,
    ) -> Vec<(usize, &'t PartitionMeta, Group, PartitionStateMachine)> {
        let me = self.groups.node_id();
        topic
            .partitions
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let g = self.groups.get(p.group)?;
                if g.leader() != Some(me) {
                    return None;
                }
                let GroupState::Partition(sm) = &g.state else {
                    return None;
                };
                let sm = sm.clone();
                Some((i, p, g, sm))
            })
            .collect()
    }

    /// Proposes `cmd` on a partition this node leads; `None` (logged) if it did not commit.
    async fn propose(
        &self,
        g: &Group,
        cmd: PartitionCommand,
        topic: &str,
        partition: usize,
        what: &str,
    ) -> Option<CommandResponse> {
        let write = g.raft.client_write(Command::Partition(cmd));
        match tokio::time::timeout(Duration::from_secs(10), write).await {
            Ok(Ok(r)) => Some(r.data),
            Ok(Err(e)) => {
                tracing::warn!(topic, partition, "{what} proposal failed: {e}");
                None
            }
            Err(_) => {
                tracing::warn!(topic, partition, "{what} proposal timed out");
                None
            }
        }
    }

    /// Advances the log start of each partition of `topic` this node leads past the records
    /// its retention no longer keeps.
    async fn retain(&self, topic: &TopicMeta) {
        for (i, p, g, sm) in self.led_partitions(topic) {
            let start = sm.state().log_start_offset;
            let target = match sm.retention_target(
                now_ms(),
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
            let cmd = PartitionCommand::AdvanceLogStart { offset: target };
            if self
                .propose(&g, cmd, &topic.name, i, "retention")
                .await
                .is_none()
            {
                continue;
            }
            tracing::info!(topic = %topic.name, partition = i, from = start, to = target, "retention advanced log start");
            // Deleted ranges are tombstones until compaction; compact them now so the space is
            // actually freed.
            let db = self.db.clone();
            let (from, to) = (
                keys::group_u64(p.group.0, 0),
                keys::group_u64(p.group.0, target),
            );
            let _ =
                tokio::task::spawn_blocking(move || db.compact_range(Cf::OffsetRecord, &from, &to))
                    .await;
        }
    }

    /// Proposes a compaction of each partition of `topic` this node leads that has grown since
    /// its last one.
    async fn compact(&self, topic: &TopicMeta) {
        for (i, p, g, sm) in self.led_partitions(topic) {
            let hw = sm.state().next_offset;
            let last = self
                .compacted_at
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&p.group)
                .copied();
            if last.is_some_and(|l| l >= hw) || hw == 0 {
                continue;
            }
            let cmd = PartitionCommand::Compact { below: hw };
            if let Some(r) = self.propose(&g, cmd, &topic.name, i, "compaction").await {
                self.compacted_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(p.group, hw);
                tracing::debug!(topic = %topic.name, partition = i, below = hw, response = ?r, "compacted");
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
