//! `chat4all bench`: measurements of a cluster through its public API, each printing one JSON
//! line on stdout (diagnostics on stderr), comparable with the NATS peer's `natsbench` lines.
//!
//! - `produce`: acknowledged-write throughput and latency at a fixed number of requests in
//!   flight, and, given the nodes' pids, bytes written to disk per byte acknowledged.
//! - `failover`: spawns its own cluster, SIGKILLs a partition's leader again and again, and
//!   times how long until a write to that partition succeeds again.
//! - `rebalance`: spawns its own cluster with a consumer group member per node, SIGKILLs
//!   nodes, and times how long until the survivors own the dead member's partitions.
//! - `chat`: spawns its own cluster and measures chat messages from send to receipt on
//!   another node's event stream, at stepped rates, then the first Chat4All's load test.
//! - `snapshot`: spawns its own cluster, writes a large partition while one node is down, and
//!   times the node's catch-up from a streamed snapshot, sampling every node's memory.
//! - `webhooks`: spawns its own cluster with a Telegram channel and measures how fast signed
//!   webhooks are answered at stepped rates, and how long until they are messages.
//!
//! Only the REST API is used, as a client would: nothing here links to the node's internals.

mod chat;
mod failover;
mod produce;
mod rebalance;
mod snapshot;
mod spawn;
mod webhooks;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The bench subcommands.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Produces records and reports throughput and acknowledgement latency.
    Produce(produce::ProduceArgs),
    /// Kills partition leaders of a cluster it spawns and reports the time to recover.
    Failover(failover::FailoverArgs),
    /// Kills nodes running consumer group members and reports when their partitions move.
    Rebalance(rebalance::RebalanceArgs),
    /// Chat send-to-receive latency at stepped rates, and the first Chat4All's load test.
    Chat(chat::ChatArgs),
    /// Time and memory for a replica to catch up from a snapshot of a large partition.
    Snapshot(snapshot::SnapshotArgs),
    /// Platform webhook answer latency at stepped rates, and how long processing takes.
    Webhooks(webhooks::WebhooksArgs),
}

/// Runs one bench subcommand and prints its JSON line.
///
/// Ctrl-C (or SIGTERM) ends the benchmark with an error instead of killing the process, so
/// the spawned cluster's drop guard still kills its nodes and removes its directory.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let bench = async {
        match cmd {
            BenchCommand::Produce(args) => produce::run(args).await,
            BenchCommand::Failover(args) => failover::run(args).await,
            BenchCommand::Rebalance(args) => rebalance::run(args).await,
            BenchCommand::Chat(args) => chat::run(args).await,
            BenchCommand::Snapshot(args) => snapshot::run(args).await,
            BenchCommand::Webhooks(args) => webhooks::run(args).await,
        }
    };
    let line = tokio::select! {
        line = bench => line?,
        () = interrupted() => bail!("interrupted"),
    };
    println!("{line}");
    Ok(())
}

async fn interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Creates `topic` through `url` unless it exists (201 and `TOPIC_EXISTS` are both fine),
/// then waits until every partition has a leader (bounded). Returns the leaders by partition.
async fn ensure_topic(
    http: &reqwest::Client,
    url: &str,
    topic: &str,
    partitions: u32,
    rf: u32,
) -> anyhow::Result<Vec<u64>> {
    let body = json!({"name": topic, "partitions": partitions, "replication_factor": rf});
    let r = http
        .post(format!("{url}/v1/topics"))
        .json(&body)
        .send()
        .await
        .with_context(|| format!("create topic {topic} via {url}"))?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status != 201 && v["error"]["code"] != "TOPIC_EXISTS" {
        bail!("creating topic {topic} answered {status}: {v}");
    }
    leaders(http, url, topic, Duration::from_secs(30)).await
}

/// The leader of each partition of `topic` as `url` reports it, once all are known (bounded).
async fn leaders(
    http: &reqwest::Client,
    url: &str,
    topic: &str,
    limit: Duration,
) -> anyhow::Result<Vec<u64>> {
    let start = Instant::now();
    loop {
        if let Some(ls) = leaders_once(http, url, topic).await {
            return Ok(ls);
        }
        if start.elapsed() > limit {
            bail!("partitions of {topic} have no leader (seen from {url}) after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node of `cluster` is ready, then creates `topic` with one partition
/// replicated on every node and waits until it has a leader.
async fn one_partition_topic(
    cluster: &mut spawn::LocalCluster,
    http: &reqwest::Client,
    topic: &str,
) -> anyhow::Result<()> {
    let nodes = cluster.live();
    for &id in &nodes {
        cluster
            .wait_ready(http, id, Duration::from_secs(60))
            .await?;
    }
    let body = json!({"name": topic, "partitions": 1, "replication_factor": nodes.len()});
    let r = http
        .post(format!("{}/v1/topics", cluster.url(1)))
        .json(&body)
        .send()
        .await
        .context("create topic")?;
    if r.status().as_u16() != 201 {
        bail!("create topic: {}", r.text().await.unwrap_or_default());
    }
    leaders(http, cluster.url(1), topic, Duration::from_secs(30)).await?;
    Ok(())
}

/// One look at `GET /v1/topics/{topic}`: the leaders by partition if every one is known.
async fn leaders_once(http: &reqwest::Client, url: &str, topic: &str) -> Option<Vec<u64>> {
    let r = http
        .get(format!("{url}/v1/topics/{topic}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    let v: Value = r.json().await.ok()?;
    let parts = v["partitions"].as_array()?;
    let ls: Vec<u64> = parts.iter().filter_map(|p| p["leader"].as_u64()).collect();
    (!parts.is_empty() && ls.len() == parts.len()).then_some(ls)
}

/// The node id behind an API URL, from `GET /health`.
async fn node_id(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let v: Value = http
        .get(format!("{url}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .with_context(|| format!("GET {url}/health"))?
        .json()
        .await
        .with_context(|| format!("GET {url}/health: not JSON"))?;
    v["node_id"]
        .as_u64()
        .with_context(|| format!("GET {url}/health has no node_id: {v}"))
}

/// The value at percentile `p` of a latency histogram in microseconds, in milliseconds with
/// two decimals (0 for an empty histogram).
fn ms(h: &hdrhistogram::Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    round2(h.value_at_quantile(p / 100.0) as f64 / 1000.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
