//! Which nodes lead the topic's partitions, as the first running node that answers sees it:
//! the targets of the faults aimed at leaders.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::Nemesis;
use crate::api::Answer;
use crate::schedule::NodeId;

impl Nemesis {
    /// The topic as the first node outside `held` that answers describes it.
    pub(super) async fn topic(&self, held: &BTreeSet<NodeId>) -> anyhow::Result<Value> {
        let path = format!("/v1/topics/{}", self.topic);
        for node in (1..=self.hosts.nodes()).filter(|n| !held.contains(n)) {
            if let Answer::Ok(body) = self.api.probe(node, &path, Duration::from_secs(2)).await {
                return Ok(body);
            }
        }
        anyhow::bail!("no running node answered {path}")
    }

    /// The current leader of every partition of the topic.
    pub(super) async fn leaders(&self, held: &BTreeSet<NodeId>) -> anyhow::Result<Vec<NodeId>> {
        let body = self.topic(held).await?;
        let mut leaders: Vec<NodeId> = body["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["leader"].as_u64())
            .filter_map(|l| NodeId::try_from(l).ok())
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        Ok(leaders)
    }

    /// The current leader of `partition`, as a running node sees it.
    pub(super) async fn leader_of(
        &self,
        partition: u32,
        held: &BTreeSet<NodeId>,
    ) -> anyhow::Result<NodeId> {
        let body = self.topic(held).await?;
        body["partitions"][partition as usize]["leader"]
            .as_u64()
            .and_then(|l| NodeId::try_from(l).ok())
            .ok_or_else(|| anyhow::anyhow!("partition {partition} has no leader now: {body}"))
    }
}
