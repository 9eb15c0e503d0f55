//! `chat4all bench rebalance`: how long after a node's SIGKILL the partitions of the consumer
//! group member that ran on it are owned by the surviving members.
//!
//! One member per node, each a REST client that heartbeats only through its own node (so the
//! member dies with it) every `heartbeat_interval_ms` the coordinator asks for, releasing
//! revoked partitions at once. Each round waits until the group is stable (every partition
//! owned exactly once, every member owning some), SIGKILLs a node, alternately the group's
//! coordinator and another one, and times from the kill to the first moment the survivors'
//! latest heartbeat replies together own every partition. Then the node restarts, its member
//! rejoins, and the next round starts. The bound is session timeout + 1 s.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::spawn::{LocalCluster, with_cluster};

const TOPIC: &str = "rebalance";
const GROUP: &str = "bench-rebalance";

/// Options of `bench rebalance`.
#[derive(clap::Args)]
pub struct RebalanceArgs {
    /// The chat4all binary to run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Nodes in the cluster, one member on each (at least 3).
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Node kills to time (alternately the coordinator's node and another).
    #[arg(long, default_value_t = 6)]
    kills: u32,
    /// The group's session timeout, in ms.
    #[arg(long, default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// Partitions of the subscribed topic.
    #[arg(long, default_value_t = 6)]
    partitions: u32,
}

/// What a member's last successful heartbeat said.
#[derive(Clone, Debug, Default)]
struct Seen {
    owns: BTreeSet<u64>,
    at: Option<Instant>,
}

/// A member's loop handle; aborted on drop.
struct MemberTask {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MemberTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn partitions_of(v: &Value) -> BTreeSet<u64> {
    v["assignment"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["partition"].as_u64())
        .collect()
}

/// Heartbeats through `url` forever: joins, stays, rejoins when fenced.
async fn member_loop(http: reqwest::Client, url: String, seen: Arc<Mutex<Seen>>) {
    let endpoint = format!("{url}/v1/groups/{GROUP}/heartbeat");
    let (mut id, mut epoch, mut owns) = (None::<String>, 0i64, BTreeSet::<u64>::new());
    let mut interval = Duration::from_millis(200);
    loop {
        let owned: Vec<Value> = owns
            .iter()
            .map(|p| json!({"topic": TOPIC, "partition": p}))
            .collect();
        let body = match &id {
            None => json!({"member_epoch": 0, "topics": [TOPIC]}),
            Some(id) => json!({"member_id": id, "member_epoch": epoch, "owned": owned}),
        };
        let reply = http
            .post(&endpoint)
            .json(&body)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(r) = reply {
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if status == 200 {
                id = v["member_id"].as_str().map(str::to_string);
                epoch = v["member_epoch"].as_i64().unwrap_or(0);
                // Revoked partitions are released at once: this member does no work.
                owns = partitions_of(&v);
                interval =
                    Duration::from_millis(v["heartbeat_interval_ms"].as_u64().unwrap_or(500));
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Seen {
                    owns: owns.clone(),
                    at: Some(Instant::now()),
                };
            } else if v["error"]["code"] == "FENCED" {
                (id, epoch) = (None, 0);
                owns.clear();
                *seen.lock().unwrap_or_else(|p| p.into_inner()) = Seen::default();
                continue;
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Runs the benchmark and returns its JSON line.
pub async fn run(a: RebalanceArgs) -> anyhow::Result<Value> {
    if a.nodes < 3 {
        bail!("--nodes must be at least 3 (a killed node must leave a majority)");
    }
    let samples = with_cluster(a.binary.as_deref(), a.nodes, async |cluster, http| {
        measure(cluster, http, &a).await
    })
    .await?;
    let summary = |kind: &str| {
        let mut v: Vec<f64> = samples
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, ms)| *ms)
            .collect();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        json!({"kills": v.len(), "median_ms": median, "max_ms": v.last().copied().unwrap_or(0.0), "samples_ms": v})
    };
    Ok(json!({
        "tool": "chat4all-bench",
        "bench": "rebalance",
        "nodes": a.nodes,
        "partitions": a.partitions,
        "session_timeout_ms": a.session_timeout_ms,
        "coordinator_killed": summary("coordinator"),
        "member_only_killed": summary("member"),
    }))
}

async fn measure(
    cluster: &mut LocalCluster,
    http: &reqwest::Client,
    a: &RebalanceArgs,
) -> anyhow::Result<Vec<(String, f64)>> {
    let limit = Duration::from_millis(a.session_timeout_ms) + Duration::from_secs(60);
    for id in 1..=a.nodes {
        cluster
            .wait_ready(http, id, Duration::from_secs(60))
            .await?;
    }
    super::ensure_topic(
        http,
        cluster.url(1),
        TOPIC,
        a.partitions,
        a.nodes.min(3) as u32,
    )
    .await?;
    let r = http
        .put(format!("{}/v1/groups/{GROUP}/config", cluster.url(1)))
        .json(&json!({"session_timeout_ms": a.session_timeout_ms}))
        .send()
        .await
        .context("configure the group")?;
    if !r.status().is_success() {
        bail!(
            "configure the group: {}",
            r.text().await.unwrap_or_default()
        );
    }
    let members: Vec<MemberTask> = (1..=a.nodes)
        .map(|id| {
            let seen = Arc::new(Mutex::new(Seen::default()));
            let task = tokio::spawn(member_loop(
                http.clone(),
                cluster.url(id).to_string(),
                seen.clone(),
            ));
            MemberTask { seen, task }
        })
        .collect();
    let all: BTreeSet<u64> = (0..u64::from(a.partitions)).collect();
    let mut samples = Vec::new();
    for round in 0..a.kills {
        stable(&members, &all, limit)
            .await
            .with_context(|| format!("round {round}"))?;
        let coordinator = coordinator(http, cluster.url(cluster.live()[0])).await?;
        let (kind, victim) = if round % 2 == 0 {
            ("coordinator", coordinator)
        } else {
            let other = cluster
                .live()
                .into_iter()
                .find(|&id| id != coordinator)
                .context("a node that does not coordinate")?;
            ("member", other)
        };
        cluster.kill(victim)?;
        let killed = Instant::now();
        let survivors: Vec<&MemberTask> = members
            .iter()
            .enumerate()
            .filter(|(i, _)| *i as u64 + 1 != victim)
            .map(|(_, m)| m)
            .collect();
        loop {
            let owned: BTreeSet<u64> = survivors
                .iter()
                .flat_map(|m| {
                    let s = m.seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    // Only what a reply after the kill said.
                    s.at.filter(|t| *t >= killed)
                        .map(|_| s.owns)
                        .unwrap_or_default()
                })
                .collect();
            if owned == all {
                break;
            }
            if killed.elapsed() > limit {
                bail!(
                    "round {round}: partitions of node {victim}'s member not reassigned within {limit:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ms = killed.elapsed().as_secs_f64() * 1000.0;
        eprintln!(
            "bench: round {round}: node {victim} ({kind}) killed; its member's partitions owned by the survivors after {ms:.0} ms (session timeout {} ms)",
            a.session_timeout_ms
        );
        samples.push((kind.to_string(), (ms * 10.0).round() / 10.0));
        cluster.spawn(victim)?;
        cluster
            .wait_ready(http, victim, Duration::from_secs(60))
            .await?;
    }
    Ok(samples)
}

/// Waits until every member owns some partitions and together they own each exactly once.
async fn stable(
    members: &[MemberTask],
    all: &BTreeSet<u64>,
    limit: Duration,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let seen: Vec<Seen> = members
            .iter()
            .map(|m| m.seen.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        let total: usize = seen.iter().map(|s| s.owns.len()).sum();
        let union: BTreeSet<u64> = seen.iter().flat_map(|s| s.owns.iter().copied()).collect();
        if union == *all && total == all.len() && seen.iter().all(|s| !s.owns.is_empty()) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("the group did not settle within {limit:?}: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn coordinator(http: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let v: Value = http
        .get(format!("{url}/v1/groups/{GROUP}"))
        .send()
        .await
        .context("describe the group")?
        .json()
        .await
        .context("describe the group: not JSON")?;
    v["coordinator"]
        .as_u64()
        .with_context(|| format!("no coordinator in {v}"))
}
