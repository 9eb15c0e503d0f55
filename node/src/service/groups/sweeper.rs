//! The coordinator's background work: removing members whose session or rebalance timeout
//! has passed (a request to the group does it too), and the lag metric.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::coordinator::expire;
use crate::groups::model::Tp;
use crate::service::{Proposed, Service};

/// How often the coordinator refreshes the lag metric.
const LAG_EVERY: Duration = Duration::from_secs(5);

impl Service {
    /// Removes members whose session or rebalance timeout passed, in every group this node
    /// coordinates, and refreshes the lag metric. Runs until `shutdown`.
    pub async fn run_group_sweeper(self: Arc<Self>, shutdown: CancellationToken) {
        let every = Duration::from_millis(self.groups_config.sweep_interval_ms.max(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_lag = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            self.sweep_once().await;
            if last_lag.elapsed() >= LAG_EVERY {
                last_lag = Instant::now();
                self.refresh_lag().await;
            }
        }
    }

    async fn sweep_once(&self) {
        for (gid, shard) in self.coordinator.all() {
            let Some(g) = self.groups.get(gid) else {
                self.coordinator.drop_shard(gid);
                continue;
            };
            let m = g.raft.metrics().borrow().clone();
            if m.current_leader != Some(self.node_id) || m.current_term != shard.term {
                self.coordinator.drop_shard(gid);
                continue;
            }
            for (name, slot) in shard.slots() {
                // A busy group is being served; its request expires members itself.
                let Ok(mut held) = slot.try_lock() else {
                    continue;
                };
                let Some(loaded) = held.as_mut() else {
                    continue;
                };
                let Some(group) = &loaded.group else {
                    continue;
                };
                let mut next = group.clone();
                let counts = self.partition_counts();
                if !expire(&mut next, loaded, &counts, Instant::now()) {
                    continue;
                }
                let deadline = Instant::now() + Duration::from_millis(self.limits.write_timeout_ms);
                match self.write_group(&g, &name, &next, deadline).await {
                    Ok(Proposed::Done(())) => {
                        tracing::info!(group = %name, epoch = next.epoch, "expired members removed");
                        loaded.group = Some(next);
                    }
                    Ok(Proposed::NotLeader(_)) => {
                        self.coordinator.drop_shard(gid);
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(group = %name, "cannot remove expired members: {e}");
                        *held = None;
                    }
                }
            }
        }
    }

    /// Sets `chat4all_consumer_group_lag` for every group this node coordinates.
    async fn refresh_lag(&self) {
        let mut rows: Vec<(String, Tp, u64)> = Vec::new();
        for (_, shard) in self.coordinator.all() {
            for (name, slot) in shard.slots() {
                let Ok(held) = slot.try_lock() else {
                    continue;
                };
                if let Some(l) = held.as_ref() {
                    rows.extend(
                        l.offsets
                            .iter()
                            .map(|(tp, c)| (name.clone(), tp.clone(), c.offset)),
                    );
                }
            }
        }
        let mut values = Vec::with_capacity(rows.len());
        for (name, (topic, p), committed) in rows {
            let Ok(meta) = self.partition(&topic, p) else {
                continue;
            };
            if let Some(st) = self.partition_status(&meta, 0).await {
                values.push((name, topic, p, st.high_watermark.saturating_sub(committed)));
            }
        }
        let gauge = &self.metrics.consumer_group_lag;
        gauge.reset();
        for (name, topic, p, lag) in values {
            gauge
                .with_label_values(&[name.as_str(), topic.as_str(), &p.to_string()])
                .set(lag as i64);
        }
    }
}
