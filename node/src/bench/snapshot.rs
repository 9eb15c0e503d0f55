//! `chat4all bench snapshot`: how long a replica that missed more than its leader's log still
//! holds takes to catch up from a streamed snapshot, and how much memory the nodes use while
//! it does.
//!
//! It spawns three nodes that snapshot every 20 entries and keep no log before a snapshot,
//! makes a one-partition topic of replication factor 3, SIGKILLs node 3, writes `--mb`
//! megabytes to the partition, restarts node 3, and times from the restart until node 3 has
//! applied what the others have. Meanwhile it samples every node's resident memory
//! (`/proc/<pid>/status` `VmRSS`) every 100 ms, and node 3's high-water mark (`VmHWM`) at the
//! end. Node 3's log says how the snapshot came
//! (chunks, rows, bytes).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use serde_json::{Value, json};

use super::spawn::{LocalCluster, OPEN_LOG_API, with_cluster_env};
use super::{leaders, one_partition_topic, round2};

const TOPIC: &str = "snap";
/// The node that misses the writes.
const BEHIND: u64 = 3;

/// Options of `bench snapshot`.
#[derive(clap::Args)]
pub struct SnapshotArgs {
    /// The chat4all binary to run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Megabytes of record values written while node 3 is down.
    #[arg(long, default_value_t = 256)]
    mb: u64,
    /// Value bytes of one record.
    #[arg(long, default_value_t = 64 << 10)]
    size: usize,
    /// Records per produce request (one Raft entry).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Produce requests in flight.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// The nodes' `[raft] snapshot_chunk_bytes` (default: the node's default).
    #[arg(long)]
    chunk_bytes: Option<u64>,
    /// Longest wait for node 3 to catch up, in seconds.
    #[arg(long, default_value_t = 900)]
    catchup_limit_s: u64,
}

/// Runs the benchmark and returns its JSON line.
pub async fn run(a: SnapshotArgs) -> anyhow::Result<Value> {
    if a.size == 0 || a.batch == 0 || a.inflight == 0 {
        bail!("--size, --batch and --inflight must be positive");
    }
    let mut extra =
        format!("{OPEN_LOG_API}[raft]\nsnapshot_every_entries = 20\nlog_kept_after_snapshot = 0\n");
    if let Some(c) = a.chunk_bytes {
        extra.push_str(&format!("snapshot_chunk_bytes = {c}\n"));
    }
    with_cluster_env(
        a.binary.as_deref(),
        3,
        &extra,
        &[],
        async |cluster, http| measure(cluster, http, &a).await,
    )
    .await
}

async fn measure(
    cluster: &mut LocalCluster,
    http: &reqwest::Client,
    a: &SnapshotArgs,
) -> anyhow::Result<Value> {
    one_partition_topic(cluster, http, TOPIC).await?;
    cluster.kill(BEHIND)?;

    let (acked, produce_secs) = produce(cluster, http, a).await?;
    let leader = leaders(http, cluster.url(1), TOPIC, Duration::from_secs(30)).await?[0];
    let rss_before: Vec<u64> = [1, 2].iter().map(|&id| rss_kib(cluster, id)).collect();

    let start = Instant::now();
    cluster.spawn(BEHIND)?;
    let limit = Duration::from_secs(a.catchup_limit_s);
    let mut peak = [0u64; 3];
    loop {
        for (id, p) in (1..=3).zip(peak.iter_mut()) {
            *p = (*p).max(rss_kib(cluster, id));
        }
        let mut applied = Vec::new();
        for id in 1..=3 {
            applied.push(apply_index(http, cluster.url(id)).await);
        }
        if applied[0].is_some() && applied.iter().all(|x| *x == applied[0]) {
            break;
        }
        if start.elapsed() > limit {
            bail!("node {BEHIND} has not caught up after {limit:?} (applied: {applied:?})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catchup = start.elapsed();
    // Node 3 started for the catch-up: its high-water mark is its peak during it.
    let behind_hwm = status_kib(cluster, BEHIND, "VmHWM:");
    let install = installed(&cluster.log(BEHIND))
        .with_context(|| format!("node {BEHIND} caught up without installing a snapshot"))?;
    let mib = |kib: u64| round2(kib as f64 / 1024.0);
    Ok(json!({
        "tool": "chat4all-bench",
        "bench": "snapshot",
        "acked_mb": round2(acked as f64 / 1e6),
        "record_bytes": a.size,
        "batch": a.batch,
        "produce_secs": round2(produce_secs),
        "leader": leader,
        "catchup_ms": catchup.as_millis() as u64,
        "snapshot": install,
        "catchup_mb_per_s": round2(acked as f64 / 1e6 / catchup.as_secs_f64()),
        "rss_mib_before": {"node1": mib(rss_before[0]), "node2": mib(rss_before[1])},
        "rss_mib_peak_during": {"node1": mib(peak[0]), "node2": mib(peak[1]), "node3": mib(peak[2])},
        "node3_hwm_mib": mib(behind_hwm),
    }))
}

/// Writes `a.mb` megabytes of values to partition 0 through the live nodes in turn; the bytes
/// acknowledged and the seconds it took.
async fn produce(
    cluster: &LocalCluster,
    http: &reqwest::Client,
    a: &SnapshotArgs,
) -> anyhow::Result<(u64, f64)> {
    let value: String = rand::random_iter::<u8>()
        .map(|b| char::from(b'a' + b % 26))
        .take(a.size)
        .collect();
    let per_request = (a.size * a.batch) as u64;
    let requests = (a.mb * 1_000_000).div_ceil(per_request);
    let records: Vec<Value> = (0..a.batch)
        .map(|_| json!({"value": value, "partition": 0}))
        .collect();
    let body = json!({ "records": records });
    let urls: Vec<String> = cluster
        .live()
        .iter()
        .map(|&id| format!("{}/v1/topics/{TOPIC}/records", cluster.url(id)))
        .collect();
    let start = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..requests)
        .map(|i| {
            let (url, body) = (&urls[i as usize % urls.len()], &body);
            async move { write(http, url, body).await }
        })
        .buffer_unordered(a.inflight)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok((requests * per_request, start.elapsed().as_secs_f64()))
}

/// One produce request, sent again (bounded) while the cluster answers that nothing was
/// written (`UNAVAILABLE`, e.g. during an election).
async fn write(http: &reqwest::Client, url: &str, body: &Value) -> anyhow::Result<()> {
    for _ in 0..100 {
        let r = http
            .post(url)
            .json(body)
            .send()
            .await
            .context(url.to_string())?;
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or_default();
        match status {
            200 => return Ok(()),
            503 if v["error"]["code"] == "UNAVAILABLE" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => bail!("produce: {status} {v}"),
        }
    }
    bail!("produce: still unavailable after 100 tries")
}

/// The partition's applied Raft index on the node at `url`, from its metrics.
async fn apply_index(http: &reqwest::Client, url: &str) -> Option<u64> {
    let text = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let series = format!(r#"chat4all_partition_apply_index{{partition="0",topic="{TOPIC}"}}"#);
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Resident memory of node `id` in KiB (0 if it is not running).
fn rss_kib(cluster: &LocalCluster, id: u64) -> u64 {
    status_kib(cluster, id, "VmRSS:")
}

/// A memory field of node `id`'s `/proc/<pid>/status` in KiB (0 if it is not running).
fn status_kib(cluster: &LocalCluster, id: u64, field: &str) -> u64 {
    let Some(pid) = cluster.pid(id) else {
        return 0;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `records`, `chunks`, `rows` and `bytes` of the last snapshot install in a node's log
/// (fields a binary did not log are null: older ones logged `records` only), `None` if it
/// logged no install.
fn installed(log: &str) -> Option<Value> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("installed a snapshot"))?;
    let line = strip_ansi(line);
    let field = |name: &str| -> Option<u64> {
        line.split(&format!(" {name}="))
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some(json!({
        "records": field("records"),
        "chunks": field("chunks"),
        "rows": field("rows"),
        "bytes": field("bytes"),
    }))
}

/// `line` without terminal colour codes (`ESC [ ... m`), which older binaries wrote to logs.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_line_is_read_with_or_without_colours_and_fields() {
        let plain = "2026-12-05T00:49:20Z INFO chat4all_raft::sm::partition: installed a snapshot group=g1 last_log_id=Some(LogId { index: 382 }) records=3056 chunks=48 rows=3056 bytes=200378864";
        assert_eq!(
            installed(&format!("other\n{plain}\nlater")),
            Some(json!({"records": 3056, "chunks": 48, "rows": 3056, "bytes": 200378864}))
        );
        let coloured = "\u{1b}[32m INFO\u{1b}[0m installed a snapshot \u{1b}[3mgroup\u{1b}[0m\u{1b}[2m=\u{1b}[0mg1 \u{1b}[3mrecords\u{1b}[0m\u{1b}[2m=\u{1b}[0m3056";
        assert_eq!(
            installed(coloured),
            Some(json!({"records": 3056, "chunks": null, "rows": null, "bytes": null}))
        );
        assert_eq!(installed("no install here"), None);
    }
}
