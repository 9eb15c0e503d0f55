//! `chat4all bench produce`: `inflight` workers keep one produce request each in flight until
//! `records` records are acknowledged; latency is from sending a request to reading its 200.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};

use super::{ensure_topic, ms, node_id, round2};

/// Options of `bench produce`.
#[derive(clap::Args)]
pub struct ProduceArgs {
    /// Node API URLs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8081")]
    url: Vec<String>,
    /// Topic to write (created if missing).
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Partitions of the topic, if it is created (an existing topic keeps its own).
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
    /// Records acknowledged before timing starts (opens the connections, fills caches).
    #[arg(long, default_value_t = 1_000)]
    warmup: u64,
    /// Node pids: report bytes they wrote to disk per byte acknowledged (Linux /proc).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Which node each request goes to.
    #[arg(long, value_enum, default_value_t = Connect::Any)]
    connect: Connect,
    /// Give up (exit non-zero) when the timed phase takes longer than this.
    #[arg(long, default_value_t = 900)]
    max_seconds: u64,
    /// Free text copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
    /// An API key with the `admin` scope, sent as `X-API-Key` (not needed when the cluster
    /// sets `[auth] log_api = "open"`).
    #[arg(long, env = "CHAT4ALL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Each worker writes as its own idempotent producer (`POST /v1/producers`), with
    /// per-partition sequences; a failed request makes it start a new producer.
    #[arg(long)]
    idempotent: bool,
}

/// Where requests go.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Connect {
    /// Round-robin over --url, independently of the partition (followers forward).
    Any,
    /// Each partition's requests to its leader at the start, as a partition-aware client does
    /// (the leader's URL must be in --url; found with `GET /health`).
    Leader,
}

impl Connect {
    fn name(self) -> &'static str {
        match self {
            Connect::Any => "any",
            Connect::Leader => "leader",
        }
    }
}

/// What every worker reads: where to send, and what.
struct Plan {
    /// Produce URLs per partition; requests for partition `p` cycle through `targets[p]`.
    targets: Vec<Vec<String>>,
    /// Distinct random values, so storage compression cannot shrink repeats.
    values: Vec<String>,
    batch: usize,
    /// `POST /v1/producers` URL, when workers are idempotent producers.
    producers: Option<String>,
}

/// A worker's idempotent producer: id, epoch, and the next sequence per partition.
struct Producer {
    id: i64,
    epoch: i64,
    next: Vec<u64>,
}

impl Producer {
    async fn new(http: &reqwest::Client, url: &str, partitions: usize) -> anyhow::Result<Self> {
        let v: Value = http
            .post(url)
            .json(&json!({}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(Producer {
            id: v["id"].as_i64().context("producer id")?,
            epoch: v["epoch"].as_i64().context("producer epoch")?,
            next: vec![0; partitions],
        })
    }
}

/// One timed (or warmup) phase.
struct Phase {
    acked: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

/// Runs the benchmark and returns its JSON line.
pub async fn run(a: ProduceArgs) -> anyhow::Result<Value> {
    if a.url.is_empty() || a.batch == 0 || a.inflight == 0 || a.records == 0 || a.size == 0 {
        bail!("--url, --batch, --inflight, --records and --size must be non-empty / positive");
    }
    let urls: Vec<String> = a
        .url
        .iter()
        .map(|u| u.trim_end_matches('/').to_string())
        .collect();
    disk_bytes(&a.pids).context("--pids")?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &a.api_key {
        let mut value = reqwest::header::HeaderValue::from_str(key).context("--api-key")?;
        value.set_sensitive(true);
        headers.insert("x-api-key", value);
    }
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(a.inflight)
        .tcp_nodelay(true)
        .build()?;
    let leaders = ensure_topic(
        &http,
        &urls[0],
        &a.topic,
        a.partitions,
        a.replication_factor,
    )
    .await?;
    let partitions = leaders.len();
    let records_url = |u: &str| format!("{u}/v1/topics/{}/records", a.topic);
    let targets: Vec<Vec<String>> = match a.connect {
        Connect::Any => vec![urls.iter().map(|u| records_url(u)).collect(); partitions],
        Connect::Leader => {
            let mut by_id = BTreeMap::new();
            for u in &urls {
                by_id.insert(node_id(&http, u).await?, u.clone());
            }
            let mut t = Vec::new();
            for (p, l) in leaders.iter().enumerate() {
                let u = by_id.get(l).with_context(|| {
                    format!("partition {p}'s leader, node {l}, is not among --url")
                })?;
                t.push(vec![records_url(u)]);
            }
            t
        }
    };
    let plan = Arc::new(Plan {
        targets,
        values: (0..1024)
            .map(|_| {
                rand::rng()
                    .sample_iter(&Alphanumeric)
                    .take(a.size)
                    .map(char::from)
                    .collect()
            })
            .collect(),
        batch: a.batch,
        producers: a.idempotent.then(|| format!("{}/v1/producers", urls[0])),
    });
    eprintln!(
        "bench: topic {} has {partitions} partitions (leaders {leaders:?}); {} requests in flight, {} records each",
        a.topic, a.inflight, a.batch
    );
    let limit = Duration::from_secs(a.max_seconds);
    if a.warmup > 0 {
        let w = phase(&http, &plan, a.warmup, a.inflight, limit).await?;
        eprintln!(
            "bench: warmup acknowledged {} records in {:.2?} (errors {:?})",
            w.acked, w.elapsed, w.errors
        );
    }
    let disk_before = disk_bytes(&a.pids)?;
    let p = phase(&http, &plan, a.records, a.inflight, limit).await?;
    let disk_after = disk_bytes(&a.pids)?;
    let secs = p.elapsed.as_secs_f64().max(1e-9);
    let acked_bytes = p.acked * a.size as u64;
    let mut line = json!({
        "tool": "chat4all-bench",
        "bench": "produce",
        "label": a.label,
        "records": a.records,
        "acked": p.acked,
        "size": a.size,
        "inflight": a.inflight,
        "batch": a.batch,
        "partitions": partitions,
        "replication_factor": a.replication_factor,
        "warmup": a.warmup,
        "connect": a.connect.name(),
        "idempotent": a.idempotent,
        "elapsed_s": (secs * 1000.0).round() / 1000.0,
        "records_per_s": (p.acked as f64 / secs).round(),
        "mb_per_s": round2(acked_bytes as f64 / secs / 1e6),
        "p50_ms": ms(&p.latency_us, 50.0),
        "p95_ms": ms(&p.latency_us, 95.0),
        "p99_ms": ms(&p.latency_us, 99.0),
        "max_ms": ms(&p.latency_us, 100.0),
        "errors": p.errors,
    });
    if let (Some(before), Some(after)) = (disk_before, disk_after) {
        let written = after.saturating_sub(before);
        line["disk_bytes_written"] = json!(written);
        line["write_amplification"] = json!(round2(written as f64 / acked_bytes.max(1) as f64));
    }
    Ok(line)
}

/// Keeps `inflight` requests going until `target` records are acknowledged. Failed requests
/// are counted by error code and not retried as such (the next request carries new records);
/// more failed requests than `target` ends the phase with an error, as does `limit`.
async fn phase(
    http: &reqwest::Client,
    plan: &Arc<Plan>,
    target: u64,
    inflight: usize,
    limit: Duration,
) -> anyhow::Result<Phase> {
    let acked = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + limit;
    let workers: Vec<_> = (0..inflight)
        .map(|_| {
            let (http, plan) = (http.clone(), plan.clone());
            let (acked, issued, failed) = (acked.clone(), issued.clone(), failed.clone());
            tokio::spawn(async move {
                let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                let partitions = plan.targets.len();
                let mut producer = match &plan.producers {
                    Some(u) => Some(Producer::new(&http, u, partitions).await?),
                    None => None,
                };
                while acked.load(Ordering::Relaxed) < target
                    && failed.load(Ordering::Relaxed) <= target
                    && Instant::now() < deadline
                {
                    let i = issued.fetch_add(1, Ordering::Relaxed) as usize;
                    let partition = i % plan.targets.len();
                    let urls = &plan.targets[partition];
                    // `i / partitions` so that, with as many URLs as partitions, every
                    // partition still goes to every URL in turn.
                    let url = &urls[(i / plan.targets.len()) % urls.len()];
                    let records: Vec<Value> = (0..plan.batch)
                        .map(|j| {
                            let value = &plan.values[(i * plan.batch + j) % plan.values.len()];
                            json!({"value": value, "partition": partition})
                        })
                        .collect();
                    let mut body = json!({ "records": records });
                    if let Some(p) = &producer {
                        body["producer"] =
                            json!({"id": p.id, "epoch": p.epoch, "sequence": p.next[partition]});
                    }
                    let sent = Instant::now();
                    let res = http.post(url).json(&body).send().await;
                    let code = match res {
                        Ok(r) if r.status().is_success() => match r.bytes().await {
                            Ok(_) => {
                                latency.saturating_record(sent.elapsed().as_micros() as u64);
                                acked.fetch_add(plan.batch as u64, Ordering::Relaxed);
                                if let Some(p) = &mut producer {
                                    p.next[partition] += plan.batch as u64;
                                }
                                continue;
                            }
                            Err(_) => "RESPONSE_BODY".to_string(),
                        },
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let v: Value = r.json().await.unwrap_or(Value::Null);
                            v["error"]["code"]
                                .as_str()
                                .map_or_else(|| format!("HTTP_{status}"), str::to_string)
                        }
                        Err(e) if e.is_timeout() => "CLIENT_TIMEOUT".to_string(),
                        Err(e) if e.is_connect() => "CLIENT_CONNECT".to_string(),
                        Err(_) => "CLIENT_REQUEST".to_string(),
                    };
                    *errors.entry(code).or_default() += 1;
                    failed.fetch_add(1, Ordering::Relaxed);
                    // The failed batch may or may not have been written: its sequence cannot
                    // be reused for other records, so start over as a new producer.
                    if let (Some(u), Some(_)) = (&plan.producers, &producer) {
                        producer = Some(Producer::new(&http, u, partitions).await?);
                    }
                    // An election answers 503 at once: pace retries rather than spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                anyhow::Ok((latency, errors))
            })
        })
        .collect();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        let (h, e) = w.await.context("produce worker")??;
        latency_us.add(h)?;
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    let acked = acked.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    if failed > target {
        bail!(
            "{failed} failed requests (more than {target}), {acked} records acknowledged; errors: {errors:?}"
        );
    }
    if acked < target {
        bail!("only {acked} of {target} records acknowledged within {limit:?}; errors: {errors:?}");
    }
    Ok(Phase {
        acked,
        elapsed: started.elapsed(),
        latency_us,
        errors,
    })
}

/// The sum of `write_bytes` in `/proc/<pid>/io`: bytes the processes caused to be sent to the
/// storage layer, so RocksDB's WAL, flushes and compactions all count.
fn disk_bytes(pids: &[u32]) -> anyhow::Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    let mut total = 0;
    for pid in pids {
        let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
            .with_context(|| format!("read /proc/{pid}/io"))?;
        let bytes = io
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes:"))
            .with_context(|| format!("no write_bytes in /proc/{pid}/io"))?;
        total += bytes
            .trim()
            .parse::<u64>()
            .with_context(|| format!("write_bytes in /proc/{pid}/io"))?;
    }
    Ok(Some(total))
}
