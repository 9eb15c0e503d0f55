//! `chat4all bench`: measurements of a cluster through its public API, each printing one JSON
//! line on stdout (diagnostics on stderr), comparable with the NATS peer's `natsbench` lines.
//!
//! - `produce`: acknowledged-write throughput and latency at a fixed number of requests in
//!   flight, and, given the nodes' pids, bytes written to disk per byte acknowledged.
//! - `failover`: spawns its own cluster, SIGKILLs a partition's leader again and again, and
//!   times how long until a write to that partition succeeds again.

mod failover;
mod produce;
mod spawn;

use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// The bench subcommands.
#[derive(clap::Subcommand)]
pub enum BenchCommand {
    /// Produces records and reports throughput and acknowledgement latency.
    Produce(produce::ProduceArgs),
    /// Kills partition leaders of a cluster it spawns and reports the time to recover.
    Failover(failover::FailoverArgs),
}

/// Runs one bench subcommand.
pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    let line = match cmd {
        BenchCommand::Produce(args) => produce::run(args).await?,
        BenchCommand::Failover(args) => failover::run(args).await?,
    };
    println!("{line}");
    Ok(())
}

/// Creates `topic` through `url` unless it exists, then waits until every partition has a
/// leader (bounded).
async fn ensure_topic(
    http: &reqwest::Client,
    url: &str,
    topic: &str,
    partitions: u32,
    rf: u32,
) -> anyhow::Result<()> {
    let body = json!({"name": topic, "partitions": partitions, "replication_factor": rf});
    let r = http
        .post(format!("{url}/v1/topics"))
        .json(&body)
        .send()
        .await
        .context("create topic")?;
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if status != 201 && v["error"]["code"] != "TOPIC_EXISTS" {
        bail!("creating topic {topic} answered {status}: {v}");
    }
    leaders(http, url, topic, Duration::from_secs(30))
        .await
        .map(|_| ())
}

/// The leader of each partition of `topic` as `url` reports it, once all are known (bounded).
async fn leaders(
    http: &reqwest::Client,
    url: &str,
    topic: &str,
    limit: Duration,
) -> anyhow::Result<Vec<u64>> {
    let start = std::time::Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{url}/v1/topics/{topic}")).send().await
            && let Ok(v) = r.json::<Value>().await
            && let Some(parts) = v["partitions"].as_array()
        {
            let ls: Vec<u64> = parts.iter().filter_map(|p| p["leader"].as_u64()).collect();
            if !parts.is_empty() && ls.len() == parts.len() {
                return Ok(ls);
            }
        }
        if start.elapsed() > limit {
            bail!("partitions of {topic} have no leader after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value at percentile `p` of a latency histogram, in milliseconds.
fn ms(h: &hdrhistogram::Histogram<u64>, p: f64) -> f64 {
    (h.value_at_quantile(p / 100.0) as f64 / 1000.0 * 100.0).round() / 100.0
}
