//! `chat4all bench webhooks`: how fast platform webhooks are answered (SC-012: 99% within
//! 1 s) on a cluster it spawns, and how long the inbound workers take to turn them into
//! messages.
//!
//! A Telegram channel is configured against a stand-in for the Bot API (it answers `getMe`
//! and `sendMessage` like Telegram; nothing else is reachable from here). Signed updates from
//! `contacts` different contacts are then posted at fixed rates (an open loop: a request starts
//! on schedule whether or not earlier ones finished), round robin over the nodes. A webhook's
//! latency runs from the start of its `POST` to its 200: the secret token check, parsing, and
//! one replicated write to `chat.inbound`. After each step, the time until every update of it
//! is a stored message (`chat4all_chat_messages_accepted_total` over all nodes) is reported
//! as the drain time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::chat::token;
use super::spawn::with_cluster_env;
use super::{ms, round2};

/// Options of `bench webhooks`.
#[derive(clap::Args)]
pub struct WebhooksArgs {
    /// The chat4all binary to run (default: this one).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Webhook rates to step through, requests/s.
    #[arg(long, value_delimiter = ',', default_value = "100,250,500,1000")]
    rates: Vec<u32>,
    /// Seconds per rate step.
    #[arg(long, default_value_t = 10)]
    step_secs: u64,
    /// Distinct contacts writing (each gets a user and a conversation on first contact).
    #[arg(long, default_value_t = 200)]
    contacts: u64,
}

const SECRET: &str = "bench-webhook-secret";
const BOT_TOKEN: &str = "100:BENCH";

/// A stand-in for the Telegram Bot API on 127.0.0.1: `getMe` and `sendMessage` answered as
/// Telegram answers them.
async fn bot_api() -> anyhow::Result<String> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/{bot}/{method}",
        post(
            |axum::extract::Path((_, method)): axum::extract::Path<(String, String)>| async move {
                axum::Json(match method.as_str() {
                    "getMe" => json!({"ok": true, "result": {"id": 100, "is_bot": true,
                        "first_name": "Bench", "username": "bench_bot"}}),
                    _ => json!({"ok": true, "result": {"message_id": 1, "date": 0,
                        "chat": {"id": 1, "type": "private"}}}),
                })
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

fn update(update_id: u64, chat: u64) -> String {
    json!({"update_id": update_id, "message": {"message_id": update_id,
        "from": {"id": chat, "is_bot": false, "first_name": format!("c{chat}")},
        "chat": {"id": chat, "type": "private", "first_name": format!("c{chat}")},
        "date": 1_700_000_000, "text": format!("hello {update_id}")}})
    .to_string()
}

/// Messages accepted over all nodes.
async fn accepted(http: &reqwest::Client, urls: &[String]) -> u64 {
    let mut total = 0;
    for u in urls {
        let Ok(r) = http.get(format!("{u}/metrics")).send().await else {
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("chat4all_chat_messages_accepted_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
    }
    total
}

pub async fn run(args: WebhooksArgs) -> anyhow::Result<Value> {
    let api = bot_api().await?;
    let extra =
        format!("[auth]\nrate_limit_per_s = 0\n\n[connectors]\ntelegram_base_url = \"{api}\"\n");
    let env = [
        ("CHAT4ALL_ADMIN_EMAIL", "bench@example.com"),
        ("CHAT4ALL_ADMIN_PASSWORD", "bench-password"),
    ];
    with_cluster_env(args.binary.as_deref(), args.nodes, &extra, &env, async |c, http| {
        let n = args.nodes;
        for id in 1..=n {
            c.wait_ready(http, id, Duration::from_secs(60)).await?;
        }
        let urls: Vec<String> = (1..=n).map(|i| c.url(i).to_string()).collect();
        let (admin, _) = token(http, &urls[0], "bench@example.com", "bench-password").await?;
        let body = json!({"platform": "TELEGRAM", "name": "bench",
            "credentials": {"bot_token": BOT_TOKEN}, "webhook_secret": SECRET});
        let r = http
            .post(format!("{}/v1/channels", urls[0]))
            .header("authorization", format!("Bearer {admin}"))
            .json(&body)
            .send()
            .await?;
        if r.status() != 201 {
            bail!("create channel: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        let hooks: Arc<Vec<String>> =
            Arc::new(urls.iter().map(|u| format!("{u}/v1/webhooks/telegram/bench")).collect());
        let mut next_id = 1u64;
        let mut steps = Vec::new();
        for &rate in &args.rates {
            let before = accepted(http, &urls).await;
            let h = Arc::new(Mutex::new(hdrhistogram::Histogram::<u64>::new_with_bounds(
                1,
                600_000_000,
                3,
            )?));
            let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
            let total = rate as u64 * args.step_secs;
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut tasks = Vec::with_capacity(total as usize);
            let started = Instant::now();
            for i in 0..total {
                tick.tick().await;
                let (http, hooks, h, errors) = (http.clone(), hooks.clone(), h.clone(), errors.clone());
                let id = next_id;
                next_id += 1;
                let body = update(id, 1_000 + id % args.contacts);
                tasks.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let r = http
                        .post(&hooks[(i % hooks.len() as u64) as usize])
                        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let us = t0.elapsed().as_micros() as u64;
                    let outcome = match r {
                        Ok(r) if r.status() == 200 => None,
                        Ok(r) => Some(r.status().as_u16().to_string()),
                        Err(e) => Some(if e.is_timeout() { "timeout".into() } else { "transport".into() }),
                    };
                    match outcome {
                        None => {
                            let _ = h.lock().unwrap_or_else(|p| p.into_inner()).record(us.max(1));
                        }
                        Some(k) => {
                            *errors.lock().unwrap_or_else(|p| p.into_inner()).entry(k).or_default() += 1;
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
            let elapsed = started.elapsed().as_secs_f64();
            // Until every update of the step is a stored message (bounded).
            let ok_n = h.lock().unwrap_or_else(|p| p.into_inner()).len();
            let drain = Instant::now();
            let mut processed = accepted(http, &urls).await - before;
            while processed < ok_n && drain.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                processed = accepted(http, &urls).await - before;
            }
            let hh = h.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let within_1s = if hh.is_empty() {
                0.0
            } else {
                round2(100.0 * hh.count_between(1, 1_000_000) as f64 / (hh.len() + errors.values().sum::<u64>()) as f64)
            };
            eprintln!(
                "rate {rate}/s: {} answered, errors {errors:?}, p50 {} ms, p99 {} ms, {within_1s}% within 1 s, {processed}/{ok_n} processed after {:.1} s more",
                hh.len(), ms(&hh, 50.0), ms(&hh, 99.0), drain.elapsed().as_secs_f64()
            );
            steps.push(json!({"rate": rate, "achieved": round2(total as f64 / elapsed),
                "answered": hh.len(), "errors": errors, "p50_ms": ms(&hh, 50.0),
                "p99_ms": ms(&hh, 99.0), "p999_ms": ms(&hh, 99.9), "max_ms": ms(&hh, 100.0),
                "pct_within_1s": within_1s, "processed": processed,
                "drain_s": round2(drain.elapsed().as_secs_f64())}));
        }
        Ok(json!({"bench": "webhooks", "nodes": n, "contacts": args.contacts, "steps": steps}))
    })
    .await
    .context("bench webhooks")
}
