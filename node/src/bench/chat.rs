//! `chat4all bench chat`: send-to-receive latency of chat messages, and the first Chat4All's
//! load test, on a cluster it spawns.
//!
//! `pairs` senders each talk to one receiver in a direct conversation; each receiver listens
//! on `GET /v1/events` through a different node than its sender writes to. Messages go out at
//! a fixed total rate (an open loop: a send starts on schedule whether or not earlier ones
//! finished), and a message's latency runs from the start of its `POST` to the moment its
//! receiver's stream delivers it: acceptance by a majority, the apply on the replica the
//! stream reads, and the stream's read. The rates are stepped up; the
//! highest with p99 under 50 ms is reported. Then the load test: a constant 167 requests/s
//! (50% send, 30% history, 20% health) with P95, P99 and the error rate.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::spawn::with_cluster_env;
use super::{ms, round2};

/// Options of `bench chat`.
#[derive(clap::Args)]
pub struct ChatArgs {
    /// The chat4all binary to run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Sender/receiver pairs (conversations).
    #[arg(long, default_value_t = 20)]
    pairs: usize,
    /// Message rates to step through, messages/s.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,150,200,250,500,1000,1500"
    )]
    rates: Vec<u32>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Steps per rate, one after another on the same cluster: a rate counts as held (for
    /// `best_rate_p99_under_50ms`) only if every one of its steps passed. A short step can hide
    /// what a cluster cannot sustain.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    hold: u32,
    /// Seconds of the 167 requests/s load test (the first Chat4All ran it for 300).
    #[arg(long, default_value_t = 300)]
    load_secs: u64,
    /// TOML added to the nodes' cluster file, for A/B runs of a setting (for example
    /// `$'[storage]\nmemtable_mb = 8\n'`); it must not have an `[auth]` table.
    #[arg(long, default_value = "")]
    node_config: String,
    /// Users with an open event stream who get no messages, spread over the nodes: what the
    /// streams of users who are online but not chatting cost the rest.
    #[arg(long, default_value_t = 0)]
    idle_streams: usize,
}

type Sent = Arc<Mutex<HashMap<String, Instant>>>;
type Hist = Arc<Mutex<hdrhistogram::Histogram<u64>>>;

struct Pair {
    sender_token: String,
    conversation: String,
    sender_url: String,
}

/// A latency histogram in microseconds, up to 10 minutes.
fn hist() -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    Ok(hdrhistogram::Histogram::new_with_bounds(1, 600_000_000, 3)?)
}

pub(super) async fn token(
    http: &reqwest::Client,
    url: &str,
    email: &str,
    pw: &str,
) -> anyhow::Result<(String, String)> {
    let start = Instant::now();
    loop {
        let r = http
            .post(format!("{url}/v1/auth/token"))
            .json(&json!({"grant_type": "password", "username": email, "password": pw}))
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 200
        {
            let v: Value = r.json().await?;
            return Ok((
                v["access_token"].as_str().context("token")?.to_string(),
                v["user_id"].as_str().context("user id")?.to_string(),
            ));
        }
        if start.elapsed() > Duration::from_secs(30) {
            bail!("cannot log in {email}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let r = http
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .json(body)
        .send()
        .await?;
    let s = r.status().as_u16();
    Ok((s, r.json().await.unwrap_or(Value::Null)))
}

/// A user without a password and an API key for their own stream; answers the key.
async fn idle_user(
    http: &reqwest::Client,
    url: &str,
    admin: &str,
    i: usize,
) -> anyhow::Result<String> {
    let body = json!({"display_name": format!("idle {i}"), "user_type": "CUSTOMER"});
    let (s, v) = post(http, &format!("{url}/v1/users"), admin, &body).await?;
    if s != 201 {
        bail!("create idle user: {s} {v}");
    }
    let body = json!({"user_id": v["id"], "name": "stream", "scopes": ["messages:read"]});
    let (s, v) = post(http, &format!("{url}/v1/api-keys"), admin, &body).await?;
    if s != 201 {
        bail!("create API key: {s} {v}");
    }
    Ok(v["key"].as_str().context("key")?.to_string())
}

/// Holds an event stream open and reads whatever comes (nothing, for a user nobody writes to).
async fn idle_stream(http: reqwest::Client, url: String, key: String) {
    let Ok(mut r) = http
        .get(format!("{url}/v1/events"))
        .header("x-api-key", key)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
    else {
        return;
    };
    while let Ok(Some(_)) = r.chunk().await {}
}

/// Reads a receiver's stream, recording each message's latency (from its `sent` entry). A
/// stream that ends or breaks (its node lost its partition's leader, say) is reopened after
/// the last event seen, as a client does; runs until aborted.
async fn receive(http: reqwest::Client, url: String, token: String, sent: Sent, h: Hist) {
    let mut last_id: Option<String> = None;
    loop {
        let mut req = http
            .get(format!("{url}/v1/events"))
            .header("authorization", format!("Bearer {token}"))
            .timeout(Duration::from_secs(3600));
        if let Some(id) = &last_id {
            req = req.header("last-event-id", id.as_str());
        }
        if let Ok(mut r) = req.send().await.and_then(|r| r.error_for_status()) {
            let mut buf = String::new();
            while let Ok(Some(chunk)) = r.chunk().await {
                let now = Instant::now();
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    if let Some(id) = frame.lines().find_map(|l| l.strip_prefix("id:")) {
                        last_id = Some(id.trim().to_string());
                    }
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if v["type"] != "message" {
                        continue;
                    }
                    let Some(id) = v["message_id"].as_str() else {
                        continue;
                    };
                    if let Some(t0) = sent.lock().unwrap_or_else(|p| p.into_inner()).remove(id) {
                        let us = now.duration_since(t0).as_micros() as u64;
                        let _ = h
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .record(us.max(1));
                    }
                }
            }
        }
        // Not a timing: a pause so a node that refuses streams is not asked in a busy loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(args: ChatArgs) -> anyhow::Result<Value> {
    let extra = format!("[auth]\nrate_limit_per_s = 0\n\n{}", args.node_config);
    let env = [
        ("CHAT4ALL_ADMIN_EMAIL", "bench@example.com"),
        ("CHAT4ALL_ADMIN_PASSWORD", "bench-password"),
    ];
    with_cluster_env(args.binary.as_deref(), args.nodes, &extra, &env, async |c, http| {
        let n = args.nodes;
        for id in 1..=n {
            c.wait_ready(http, id, Duration::from_secs(60)).await?;
        }
        let url = |i: u64| c.url(i % n + 1).to_string();
        let (admin, _) = token(http, &url(0), "bench@example.com", "bench-password").await?;
        let mut pairs = Vec::new();
        let sent: Sent = Arc::default();
        let h: Hist = Arc::new(Mutex::new(hist()?));
        let mut receivers = Vec::new();
        for i in 0..args.pairs {
            let mut ids = Vec::new();
            for role in ["s", "r"] {
                let email = format!("{role}{i}@example.com");
                let body = json!({"display_name": email, "user_type": "CUSTOMER", "email": email, "password": "password-123"});
                let (s, v) = post(http, &format!("{}/v1/users", url(0)), &admin, &body).await?;
                if s != 201 {
                    bail!("create user: {s} {v}");
                }
                ids.push(token(http, &url(0), &email, "password-123").await?);
            }
            let (sender, receiver) = (ids[0].clone(), ids[1].clone());
            let body = json!({"type": "direct", "participants": [receiver.1]});
            let (s, v) = post(http, &format!("{}/v1/conversations", url(0)), &sender.0, &body).await?;
            if s != 201 {
                bail!("create conversation: {s} {v}");
            }
            let conversation = v["id"].as_str().context("id")?.to_string();
            // The receiver listens through the node after the sender's.
            receivers.push(tokio::spawn(receive(
                http.clone(),
                url(i as u64 + 1),
                receiver.0.clone(),
                sent.clone(),
                h.clone(),
            )));
            pairs.push(Pair {
                sender_token: sender.0,
                conversation,
                sender_url: url(i as u64),
            });
        }
        for i in 0..args.idle_streams {
            let key = idle_user(http, &url(0), &admin, i).await?;
            receivers.push(tokio::spawn(idle_stream(http.clone(), url(i as u64), key)));
        }
        let pairs = Arc::new(pairs);
        // Let the streams open and the router group settle before measuring.
        warm_up(http, &pairs, &sent).await?;

        let mut steps = Vec::new();
        let mut best: Option<u32> = None;
        for &rate in &args.rates {
            let mut held = true;
            for _ in 0..args.hold {
                let step = run_step(http, c, &pairs, &sent, &h, rate, args.step_secs).await?;
                held &= step.ok;
                steps.push(step.json);
            }
            // The highest rate that held, whatever the rates around it did.
            if held {
                best = best.max(Some(rate));
            }
        }
        let load = load_test(http, &pairs, args.load_secs).await?;
        for r in receivers {
            r.abort();
        }
        Ok(json!({"bench": "chat", "nodes": n, "pairs": args.pairs, "hold": args.hold,
            "step_secs": args.step_secs, "idle_streams": args.idle_streams, "node_config": args.node_config, "steps": steps,
            "best_rate_p99_under_50ms": best, "load_test": load}))
    })
    .await
}

/// One step's result: whether it passed (p99 under 50 ms, no error, nothing lost, the rate
/// achieved) and its JSON.
struct Step {
    ok: bool,
    json: serde_json::Value,
}

/// Sends at `rate` for `secs` and measures the step.
async fn run_step(
    http: &reqwest::Client,
    c: &super::spawn::LocalCluster,
    pairs: &Arc<Vec<Pair>>,
    sent: &Sent,
    h: &Hist,
    rate: u32,
    secs: u64,
) -> anyhow::Result<Step> {
    *h.lock().unwrap_or_else(|p| p.into_inner()) = hist()?;
    let counts_before = raft_counts(http, c).await;
    let (cpu_before, started) = (cpu_secs(&c.pids()), Instant::now());
    let (sent_n, errors) = send_at(http, pairs, sent, rate, secs).await;
    // Wait (bounded) for what is still on its way.
    let drain = Instant::now();
    while !sent.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
        && drain.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // CPU the nodes used per message sent (while sending and draining), and on average.
    let cpu = cpu_secs(&c.pids()).zip(cpu_before).map(|(b, a)| b - a);
    let cpu_ms_per_msg = cpu.map(|s| round2(s * 1000.0 / sent_n.max(1) as f64));
    let cpu_cores = cpu.map(|s| round2(s / started.elapsed().as_secs_f64()));
    let per_msg = |n: f64| round2(n / sent_n.max(1) as f64);
    let counts = raft_counts(http, c).await.delta(&counts_before);
    let entries_per_msg: BTreeMap<&String, f64> = counts
        .entries
        .iter()
        .map(|(t, n)| (t, per_msg(*n)))
        .collect();
    let requests_per_msg: BTreeMap<&String, f64> = counts
        .requests
        .iter()
        .map(|(k, n)| (k, per_msg(*n)))
        .collect();
    let lost = sent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain()
        .count();
    let hh = h.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let p99 = ms(&hh, 99.0);
    let achieved = round2(sent_n as f64 / secs as f64);
    eprintln!(
        "rate {rate}/s: sent {sent_n}, errors {errors:?}, not received {lost}, p50 {} ms, p99 {p99} ms, node CPU {cpu_ms_per_msg:?} ms/message",
        ms(&hh, 50.0)
    );
    let n_errors: u64 = errors.values().sum();
    Ok(Step {
        ok: p99 < 50.0 && n_errors == 0 && lost == 0 && achieved >= 0.95 * f64::from(rate),
        json: json!({"rate": rate, "achieved": achieved, "sent": sent_n, "errors": errors,
            "not_received": lost, "p50_ms": ms(&hh, 50.0), "p99_ms": p99, "max_ms": ms(&hh, 100.0),
            "node_cpu_ms_per_msg": cpu_ms_per_msg, "node_cpu_cores": cpu_cores,
            "raft_entries_per_msg": entries_per_msg, "fsyncs_per_msg": per_msg(counts.fsyncs),
            "quic_requests_per_msg": requests_per_msg}),
    })
}

/// Raft entries committed so far by topic (each partition's highest commit index over the
/// nodes, summed), and fsyncs so far over every node, from the nodes' metrics. Nodes that do
/// not answer count nothing.
#[derive(Default)]
struct RaftCounts {
    entries: BTreeMap<String, f64>,
    fsyncs: f64,
    /// Requests the nodes sent each other over QUIC, by kind.
    requests: BTreeMap<String, f64>,
}

impl RaftCounts {
    fn delta(mut self, before: &RaftCounts) -> RaftCounts {
        for (t, n) in &mut self.entries {
            *n -= before.entries.get(t).copied().unwrap_or(0.0);
        }
        self.fsyncs -= before.fsyncs;
        for (k, n) in &mut self.requests {
            *n -= before.requests.get(k).copied().unwrap_or(0.0);
        }
        self
    }
}

async fn raft_counts(http: &reqwest::Client, c: &super::spawn::LocalCluster) -> RaftCounts {
    let mut commit: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut out = RaftCounts::default();
    for id in c.live() {
        let Ok(r) = http.get(format!("{}/metrics", c.url(id))).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        for line in text.lines() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if series == "chat4all_storage_fsync_seconds_count" {
                out.fsyncs += value;
            } else if let Some(kind) = series
                .strip_prefix("chat4all_transport_requests_total{kind=\"")
                .and_then(|k| k.strip_suffix("\"}"))
            {
                *out.requests.entry(kind.to_string()).or_default() += value;
            } else if let Some(labels) = series.strip_prefix("chat4all_partition_commit_index{") {
                let label = |name: &str| {
                    labels
                        .split(',')
                        .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                        .map(|v| v.trim_end_matches(['"', '}']).to_string())
                };
                if let (Some(t), Some(p)) = (label("topic"), label("partition")) {
                    let e = commit.entry((t, p)).or_default();
                    *e = e.max(value);
                }
            }
        }
    }
    for ((topic, _), n) in commit {
        *out.entries.entry(topic).or_default() += n;
    }
    out
}

/// CPU time (user and system, every thread) the processes `pids` used so far, in seconds;
/// `None` if one cannot be read. `/proc` counts it in USER_HZ ticks, 100 a second on Linux.
fn cpu_secs(pids: &[u32]) -> Option<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) in parentheses: state is
        // the 1st, utime the 12th, stime the 13th.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(ticks as f64 / 100.0)
}

/// One message per pair, waiting (bounded) until each arrives.
async fn warm_up(
    http: &reqwest::Client,
    pairs: &Arc<Vec<Pair>>,
    sent: &Sent,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        for p in pairs.iter() {
            let id = uuid::Uuid::new_v4().to_string();
            sent.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), Instant::now());
            let body = json!({"message_id": id, "content": "warm-up"});
            post(
                http,
                &format!(
                    "{}/v1/conversations/{}/messages",
                    p.sender_url, p.conversation
                ),
                &p.sender_token,
                &body,
            )
            .await?;
        }
        let wait = Instant::now();
        while !sent.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
            && wait.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if sent.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
            return Ok(());
        }
        sent.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if start.elapsed() > Duration::from_secs(60) {
            bail!("warm-up messages are not received");
        }
    }
}

type Errors = Arc<Mutex<std::collections::BTreeMap<String, u64>>>;

/// Sends `rate` messages/s over the pairs for `secs` (open loop); returns (sent, errors by
/// kind: the HTTP status and error code, or the transport error).
async fn send_at(
    http: &reqwest::Client,
    pairs: &Arc<Vec<Pair>>,
    sent: &Sent,
    rate: u32,
    secs: u64,
) -> (u64, std::collections::BTreeMap<String, u64>) {
    let total = u64::from(rate) * secs;
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let errors: Errors = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let p = &pairs[i as usize % pairs.len()];
        let url = format!(
            "{}/v1/conversations/{}/messages",
            p.sender_url, p.conversation
        );
        let (http, token, sent, errors) = (
            http.clone(),
            p.sender_token.clone(),
            sent.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let id = uuid::Uuid::new_v4().to_string();
            sent.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.clone(), Instant::now());
            let body = json!({"message_id": id, "content": format!("m{i}")});
            let kind = match post(&http, &url, &token, &body).await {
                Ok((202, _)) => return,
                Ok((s, v)) => format!("{s} {}", v["error"]["code"].as_str().unwrap_or("")),
                Err(e) => format!("transport: {e}"),
            };
            sent.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            *errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(kind)
                .or_default() += 1;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    (total, errors)
}

/// The first Chat4All's load test: a constant 167 requests/s, 50% send, 30% history, 20%
/// health, for `secs`; request latency percentiles and the error rate.
async fn load_test(
    http: &reqwest::Client,
    pairs: &Arc<Vec<Pair>>,
    secs: u64,
) -> anyhow::Result<Value> {
    if secs == 0 {
        return Ok(Value::Null);
    }
    let rate = 167u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let h: Hist = Arc::new(Mutex::new(hist()?));
    let errors: Errors = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..rate * secs {
        tick.tick().await;
        let p = &pairs[i as usize % pairs.len()];
        let kind = i % 10;
        let (http, token, h, errors) = (
            http.clone(),
            p.sender_token.clone(),
            h.clone(),
            errors.clone(),
        );
        let base = format!(
            "{}/v1/conversations/{}/messages",
            p.sender_url, p.conversation
        );
        let health = format!("{}/health", p.sender_url);
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let (what, r) = match kind {
                0..5 => (
                    "send",
                    http.post(&base)
                        .header("authorization", format!("Bearer {token}"))
                        .json(&json!({"content": format!("load {i}")}))
                        .send()
                        .await,
                ),
                5..8 => (
                    "history",
                    http.get(format!("{base}?limit=50"))
                        .header("authorization", format!("Bearer {token}"))
                        .send()
                        .await,
                ),
                _ => ("health", http.get(&health).send().await),
            };
            let failed = match r {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r.json().await.unwrap_or(Value::Null);
                    let code = v["error"]["code"].as_str().unwrap_or("").to_string();
                    Some(format!("{what}: {status} {code}"))
                }
                Err(e) => Some(format!("{what}: transport: {e}")),
            };
            let _ = h
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record((t0.elapsed().as_micros() as u64).max(1));
            if let Some(kind) = failed {
                *errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(kind)
                    .or_default() += 1;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let hh = h.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let n = rate * secs;
    let errors = errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let n_errors: u64 = errors.values().sum();
    Ok(
        json!({"rate": rate, "secs": secs, "requests": n, "errors": n_errors,
        "errors_by_kind": errors,
        "error_rate": round2(100.0 * n_errors as f64 / n as f64),
        "p50_ms": ms(&hh, 50.0), "p95_ms": ms(&hh, 95.0), "p99_ms": ms(&hh, 99.0), "max_ms": ms(&hh, 100.0)}),
    )
}
