//! `chat4all bench produce`: `inflight` workers keep one produce request each in flight until
//! `records` records are acknowledged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use super::{ensure_topic, ms};

/// Options of `bench produce`.
#[derive(clap::Args)]
pub struct ProduceArgs {
    /// Node API URLs; requests go round-robin over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    url: Vec<String>,
    /// Topic to write (created if missing).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Partitions of the topic, if it is created.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Replication factor of the topic, if it is created.
    #[arg(long, default_value_t = 3)]
    replication_factor: u32,
    /// Records to acknowledge in the timed phase.
    #[arg(long, default_value_t = 20_000)]
    records: u64,
    /// Value bytes per record.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 256)]
    inflight: usize,
    /// Records per request.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Records acknowledged before timing starts.
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Node pids: report bytes they wrote to disk per byte acknowledged (Linux /proc).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Free text copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

struct Phase {
    acked: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs the benchmark and returns its JSON line.
pub async fn run(a: ProduceArgs) -> anyhow::Result<Value> {
    if a.url.is_empty() || a.batch == 0 || a.inflight == 0 || a.records == 0 {
        bail!("--url, --batch, --inflight and --records must be non-empty / positive");
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(a.inflight)
        .build()?;
    ensure_topic(
        &http,
        &a.url[0],
        &a.topic,
        a.partitions,
        a.replication_factor,
    )
    .await?;
    let a = Arc::new(a);
    // Distinct random values, so RocksDB's block compression cannot shrink repeats.
    let values: Arc<Vec<String>> = Arc::new(
        (0..1024)
            .map(|_| {
                rand::rng()
                    .sample_iter(&Alphanumeric)
                    .take(a.size)
                    .map(char::from)
                    .collect()
            })
            .collect(),
    );
    if a.warmup > 0 {
        let w = phase(&http, &a, &values, a.warmup).await?;
        eprintln!(
            "bench: warmup acknowledged {} records in {:?}",
            w.acked, w.elapsed
        );
    }
    let disk_before = disk_bytes(&a.pids)?;
    let p = phase(&http, &a, &values, a.records).await?;
    let disk_after = disk_bytes(&a.pids)?;
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    let acked_bytes = p.acked * a.size as u64;
    let mut line = json!({
        "tool": "chat4all-bench",
        "bench": "produce",
        "label": a.label,
        "records": a.records,
        "acked": p.acked,
        "errors": p.errors,
        "size": a.size,
        "inflight": a.inflight,
        "batch": a.batch,
        "partitions": a.partitions,
        "replication_factor": a.replication_factor,
        "warmup": a.warmup,
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "records_per_s": (p.acked as f64 / secs).round(),
        "mb_per_s": ((acked_bytes as f64 / secs / 1e6) * 100.0).round() / 100.0,
        "p50_ms": ms(&p.latency_us, 50.0),
        "p95_ms": ms(&p.latency_us, 95.0),
        "p99_ms": ms(&p.latency_us, 99.0),
        "max_ms": ms(&p.latency_us, 100.0),
    });
    if let (Some(before), Some(after)) = (disk_before, disk_after) {
        let written = after.saturating_sub(before);
        line["disk_bytes_written"] = json!(written);
        line["write_amplification"] =
            json!(((written as f64 / acked_bytes.max(1) as f64) * 100.0).round() / 100.0);
    }
    Ok(line)
}

/// Keeps `inflight` requests going until `target` records are acknowledged.
async fn phase(
    http: &reqwest::Client,
    a: &Arc<ProduceArgs>,
    values: &Arc<Vec<String>>,
    target: u64,
) -> anyhow::Result<Phase> {
    let acked = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..a.inflight)
        .map(|w| {
            let (http, a, values, acked, issued) = (http.clone(), a.clone(), values.clone(), acked.clone(), issued.clone());
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).context("histogram")?;
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                loop {
                    let i = issued.fetch_add(1, Ordering::Relaxed);
                    // Stop when enough are acknowledged, or (failures) after twice as many tries.
                    if acked.load(Ordering::Relaxed) >= target || i >= 2 * target.div_ceil(a.batch as u64) + a.inflight as u64 {
                        return anyhow::Ok((latency, errors));
                    }
                    let partition = (i + w as u64) % u64::from(a.partitions.max(1));
                    let records: Vec<Value> = (0..a.batch)
                        .map(|j| json!({"value": values[(i as usize * a.batch + j) % values.len()], "partition": partition}))
                        .collect();
                    let url = format!("{}/v1/topics/{}/records", a.url[i as usize % a.url.len()], a.topic);
                    let sent = Instant::now();
                    match http.post(url).json(&json!({ "records": records })).send().await {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latency.saturating_record(sent.elapsed().as_micros() as u64);
                            acked.fetch_add(a.batch as u64, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            let code = v["error"]["code"].as_str().unwrap_or("HTTP_ERROR").to_string();
                            *errors.entry(code).or_default() += 1;
                        }
                        Err(e) => {
                            let code = if e.is_timeout() { "CLIENT_TIMEOUT" } else { "CONNECTION" };
                            *errors.entry(code.to_string()).or_default() += 1;
                        }
                    }
                }
            })
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 120_000_000, 3)?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        let (h, e) = w.await??;
        latency_us.add(h)?;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    Ok(Phase {
        acked: acked.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latency_us,
        errors,
    })
}

/// The sum of `write_bytes` in `/proc/<pid>/io` (bytes the processes caused to reach the disk).
fn disk_bytes(pids: &[u32]) -> anyhow::Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0;
    for pid in pids {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .with_context(|| format!("read /proc/{pid}/io"))?;
        let line = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .context("no write_bytes in /proc/<pid>/io")?;
        total += line.trim().parse::<u64>()?;
    }
    Ok(Some(total))
}
