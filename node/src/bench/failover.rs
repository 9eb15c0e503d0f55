//! `chat4all bench failover`: how long a partition cannot take writes after its leader is
//! SIGKILLed, seen by a client writing through a surviving node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::leaders;
use super::spawn::LocalCluster;

/// Options of `bench failover`.
#[derive(clap::Args)]
pub struct FailoverArgs {
    /// The chat4all binary to run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Leader kills to time.
    #[arg(long, default_value_t = 10)]
    kills: u32,
    /// Value bytes of the probe records.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Client timeout of one probe write, in ms (the resolution of the measurement).
    #[arg(long, default_value_t = 200)]
    probe_timeout_ms: u64,
}

/// Runs the benchmark and returns its JSON line.
pub async fn run(a: FailoverArgs) -> anyhow::Result<Value> {
    if a.nodes < 3 {
        bail!("--nodes must be at least 3 (a killed leader must leave a majority)");
    }
    let binary = match &a.binary {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("locate this binary")?,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut cluster = LocalCluster::start(&binary, a.nodes)?;
    for id in 1..=a.nodes {
        cluster
            .wait_ready(&http, id, Duration::from_secs(60))
            .await?;
    }
    let body = json!({"name": "failover", "partitions": 1, "replication_factor": a.nodes});
    let r = http
        .post(format!("{}/v1/topics", cluster.url(1)))
        .json(&body)
        .send()
        .await?;
    if r.status().as_u16() != 201 {
        bail!("create topic: {}", r.text().await.unwrap_or_default());
    }
    let value = "v".repeat(a.size);
    let record = json!({"records": [{"value": value, "partition": 0}]});
    let probe = Duration::from_millis(a.probe_timeout_ms);
    let mut samples = Vec::new();
    for kill in 0..a.kills {
        let live = cluster.live();
        let leader = leaders(
            &http,
            cluster.url(live[0]),
            "failover",
            Duration::from_secs(30),
        )
        .await?[0];
        let via = *live
            .iter()
            .find(|&&id| id != leader)
            .context("no surviving node")?;
        let url = format!("{}/v1/topics/failover/records", cluster.url(via));
        // Writes work before the kill.
        write_until_ok(&http, &url, &record, probe, Duration::from_secs(30)).await?;
        cluster.kill(leader)?;
        let killed = Instant::now();
        write_until_ok(&http, &url, &record, probe, Duration::from_secs(30))
            .await
            .with_context(|| format!("kill {kill}: writes did not recover"))?;
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "bench: kill {kill}: leader {leader} killed, writes through node {via} again after {ms:.0} ms"
        );
        samples.push((ms * 10.0).round() / 10.0);
        cluster.spawn(leader)?;
        cluster
            .wait_ready(&http, leader, Duration::from_secs(60))
            .await?;
    }
    let mut sorted = samples.clone();
    sorted.sort_by(f64::total_cmp);
    let median = if sorted.is_empty() {
        0.0
    } else if sorted.len() % 2 == 1 {
        sorted[sorted.len() / 2]
    } else {
        (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0
    };
    Ok(json!({
        "tool": "chat4all-bench",
        "bench": "failover",
        "nodes": a.nodes,
        "kills": a.kills,
        "probe_timeout_ms": a.probe_timeout_ms,
        "median_ms": median,
        "min_ms": sorted.first(),
        "max_ms": sorted.last(),
        "samples_ms": samples,
    }))
}

/// Writes `record` until one write answers 200, each try bounded by `probe` (bounded overall).
async fn write_until_ok(
    http: &reqwest::Client,
    url: &str,
    record: &Value,
    probe: Duration,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(r) = http.post(url).json(record).timeout(probe).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("no write succeeded through {url} within {limit:?}");
        }
        // A failed try may have failed at once (503): pace the retries.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
