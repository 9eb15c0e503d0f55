//! The cluster around a run: waiting until every node is ready, creating the test topic, and
//! removing the nodes' data directories after a valid run.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::api::{Answer, Api};
use crate::hosts::Hosts;
use crate::{Args, TOPIC, config};

/// Removes the nodes' data directories after a valid run (and, under `powercut`, the
/// `c4aj-lazyfs` backing directories `node-K.backing`, unmounted by then); damaged ones moved
/// aside by the `corrupt` fault (`data/nK.damaged-step<S>`, small) stay as evidence.
pub(crate) fn remove_data(dir: &Path, nodes: u32) -> anyhow::Result<()> {
    for id in 1..=nodes {
        let data = config::data_dir(dir, id);
        if data.exists() {
            std::fs::remove_dir_all(data)?;
        }
        let backing = dir.join(format!("node-{id}.backing"));
        if backing.exists() {
            std::fs::remove_dir_all(backing)?;
        }
    }
    // Only if nothing is left in it.
    let _ = std::fs::remove_dir(dir.join("data"));
    Ok(())
}

/// Waits until every node answers `/ready` with 200, polling each at most every 200 ms.
pub(crate) async fn wait_ready(api: &Api, hosts: &Hosts, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut waiting: Vec<u32> = (1..=hosts.nodes()).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for id in waiting {
            let answer = api.probe(id, "/ready", Duration::from_secs(1)).await;
            if !matches!(answer, Answer::Ok(_)) {
                still.push(id);
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let dead = hosts.dead();
            bail!("nodes {waiting:?} not ready after {limit:?} (not running: {dead:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Creates the topic (retrying until `deadline`) and waits until every partition has a leader.
pub(crate) async fn create_topic(api: &Api, args: &Args, deadline: Instant) -> anyhow::Result<()> {
    let body = json!({
        "name": TOPIC,
        "partitions": args.partitions,
        "replication_factor": args.nodes.min(3),
        // A week: retention must not remove anything before the drain.
        "retention_ms": 604_800_000u64,
    });
    let mut created = false;
    let mut node = 1;
    let mut last = String::new();
    while Instant::now() < deadline {
        if !created {
            match api.post(node, "/v1/topics", &body).await {
                Answer::Ok(_) => created = true,
                Answer::Definite { code, .. } if code == "TOPIC_EXISTS" => created = true,
                other => last = other.describe(),
            }
        }
        if created {
            let path = format!("/v1/topics/{TOPIC}");
            if let Answer::Ok(topic) = api.get(node, &path).await {
                let partitions = topic["partitions"].as_array().cloned().unwrap_or_default();
                if partitions.len() == args.partitions as usize
                    && partitions.iter().all(|p| p["leader"].is_u64())
                {
                    return Ok(());
                }
                last = format!("not every partition has a leader: {topic}");
            }
        }
        node = node % args.nodes + 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("topic {TOPIC} not ready in time: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_runs_data_goes_but_damaged_data_stays_as_evidence() {
        let dir = std::env::temp_dir().join(format!("c4aj-main-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "data/n1/db",
            "data/n2/db",
            "data/n3",
            "data/n2.damaged-step0/db",
            "node-1.backing/db",
        ] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        remove_data(&dir, 3).expect("remove");
        assert!(!dir.join("data/n1").exists() && !dir.join("data/n2").exists());
        assert!(!dir.join("node-1.backing").exists());
        assert!(dir.join("data/n2.damaged-step0/db").exists());
        std::fs::remove_dir_all(dir.join("data/n2.damaged-step0")).expect("clean");
        remove_data(&dir, 3).expect("remove again");
        assert!(!dir.join("data").exists(), "an empty data/ goes too");
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}
