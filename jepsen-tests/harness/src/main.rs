//! `jepsen`: Chat4All's partition-tolerance harness. It runs the real `chat4all` binary as a
//! cluster of hosts (one network namespace each), injects faults on a seeded schedule while
//! clients work, records every operation into the checker's [`Recorder`], and checks the history
//! with the `chat4all-jepsen` checkers.
//!
//! It must never depend on the node's crates (storage, raft, node): it reaches the cluster only
//! through the REST API and the processes (`.ci/check-crate-edges.py`).
//!
//! ```text
//!  args ─► Schedule (seed) ─► Hosts (netns, bridge, nodes) ─► topic (and group)
//!                                     │
//!   producers, consumers (log, ──┬────┴── nemesis (schedule)
//!   subscribe), offsets reader   ▼
//!                           Recorder ─► heal all, drain ─► History ─► kafka + total-queue
//!                                                                     (+ group: subscribe)
//!                                                                        │
//!                 results/<stamp>-<workload>-<nemesis>-seed<seed>/ ◄─────┘
//!                 history.jsonl verdict.json summary.txt schedule.json plot.svg node-K.log
//!                 (group.json: subscribe)
//!
//!  chat: users, conversations ─► senders + nemesis ─► heal ─► histories from every node,
//!        event streams ─► chat checker
//! ```
//!
//! [`run`] checks the arguments, writes the schedule and the cluster file, makes the hosts and
//! tears them down; [`execute::execute`] runs the workload and the nemesis on them, [`verdict`]
//! checks the history and writes the results, and [`cluster`] waits for the nodes, makes the
//! topic and removes the data after a valid run.

mod api;
mod chat;
mod cluster;
mod config;
mod corrupt;
mod docker;
mod execute;
mod hosts;
mod log;
mod nemesis;
mod plot;
mod queue;
mod report;
mod scenario;
mod schedule;
mod subscribe;
mod verdict;
mod view;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chat4all_jepsen::Recorder;
use clap::Parser;

use crate::cluster::remove_data;
use crate::config::ClusterFileConfig;
use crate::execute::execute;
use crate::hosts::{Hosts, HostsMode};
use crate::scenario::Scenario;
use crate::schedule::{NemesisKind, Schedule, ScheduleConfig};

/// Runs a Jepsen-style test against a local Chat4All cluster in network namespaces, or in
/// Docker containers (as root).
#[derive(Parser, Debug)]
#[command(name = "jepsen", args_override_self = true)]
struct Args {
    /// The workload: `queue` (producers, then a drain), `log` (producers and consumers that
    /// assign themselves partitions and poll during the run, then a drain), `subscribe`
    /// (producers and consumers in a consumer group that poll, commit and churn, then a drain)
    /// or `chat` (users send messages through the chat API; then every conversation is read
    /// through every node and every user's event stream from its start; netns mode only).
    #[arg(long, default_value = "queue")]
    workload: String,
    /// Faults, a comma list of partition, kill, pause, netem, corrupt, powercut (or none); they
    /// take turns.
    #[arg(long, default_value = "partition,kill")]
    nemesis: String,
    /// A named regression scenario instead of drawn faults: s1-pause-kill, s3-last-replica,
    /// s4-kill-leaders, s5-pause-kill-storm, s7-corruption (or s1, s3, s4, s5, s7).
    #[arg(long, conflicts_with = "nemesis")]
    scenario: Option<String>,
    /// Number of nodes (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Seconds of workload (faults included); the heal and the drain come after.
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Seed of the fault schedule and of the clients' choices (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent clients (default 5, or what the scenario needs: 20 for s4).
    #[arg(long)]
    concurrency: Option<u64>,
    /// Typical seconds of each fault and of the quiet after it.
    #[arg(long, default_value_t = 10)]
    interval: u64,
    /// Partitions of the test topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// The chat4all binary.
    #[arg(long, default_value = "/var/cache/chat4all/target/release/chat4all")]
    bin: PathBuf,
    /// Where results folders are made.
    #[arg(long, default_value = "jepsen-tests/results")]
    results: PathBuf,
    /// How nodes are made: `netns` (a network namespace per node, no Docker needed) or `docker`
    /// (a container per node from a generated compose file, on the local Docker engine; the
    /// image is built from --bin).
    #[arg(long, default_value = "netns")]
    hosts: String,
    /// Keep the nodes' data directories (~75 MB per node) after a valid run too; they are
    /// always kept when the verdict is not valid.
    #[arg(long)]
    keep_data: bool,
    /// The `c4aj-lazyfs` binary (used only when the schedule has `powercut` faults: each
    /// node's data directory is then one of its mounts).
    #[arg(
        long,
        default_value = "/var/cache/chat4all/lazyfs-target/release/c4aj-lazyfs"
    )]
    lazyfs: PathBuf,
}

const TOPIC: &str = "jepsen-queue";
/// The workloads.
const WORKLOADS: [&str; 4] = ["queue", "log", "subscribe", "chat"];
/// Client request timeout (the nodes answer OUTCOME_UNKNOWN after 4 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long nodes may take to become ready, at start and after the final heal.
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// How long the final drain may take.
const DRAIN_DEADLINE: Duration = Duration::from_secs(120);

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !WORKLOADS.contains(&args.workload.as_str()) {
        bail!(
            "unknown workload {:?}: `queue`, `log`, `subscribe` or `chat`",
            args.workload
        );
    }
    let mode = HostsMode::parse(&args.hosts).map_err(anyhow::Error::msg)?;
    config::use_subnet(mode.subnet());
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes must be 1..=9 (3 or 5 make sense)");
    }
    let scenario = args
        .scenario
        .as_deref()
        .map(Scenario::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let concurrency = args
        .concurrency
        .or(scenario.and_then(Scenario::concurrency))
        .unwrap_or(5);
    if args.partitions == 0 || concurrency == 0 || args.time_limit == 0 {
        bail!("--partitions, --concurrency and --time-limit must be positive");
    }
    if args.workload == "chat" && mode != HostsMode::Netns {
        bail!("the chat workload runs in netns mode only (--hosts netns) for now");
    }
    if !["queue", "chat"].contains(&args.workload.as_str()) && concurrency < 2 {
        bail!(
            "the {} workload needs --concurrency 2 or more (producers and consumers)",
            args.workload
        );
    }
    if scenario.is_some() && args.partitions != 3 {
        bail!("the scenarios are written for 3 partitions (leaders of p0, p1, p2)");
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let seed = args.seed.unwrap_or(now.as_secs());
    let schedule = match scenario {
        Some(scenario) => Schedule::scenario(scenario, seed, args.nodes, args.time_limit * 1000)
            .map_err(anyhow::Error::msg)?,
        None => Schedule::generate(&ScheduleConfig {
            seed,
            nodes: args.nodes,
            nemeses: NemesisKind::parse_list(&args.nemesis).map_err(anyhow::Error::msg)?,
            time_limit_ms: args.time_limit * 1000,
            interval_ms: args.interval * 1000,
            scenario: None,
        }),
    };
    let lazyfs = if schedule.powercuts() {
        if mode != HostsMode::Netns {
            bail!(
                "the powercut nemesis runs in netns mode only (--hosts netns): the nodes' data \
                 directories are c4aj-lazyfs mounts made by the harness in its own namespace"
            );
        }
        if schedule.corrupts() {
            bail!(
                "powercut and corrupt cannot be combined: corrupt's heal moves the data \
                 directory away, which is a c4aj-lazyfs mount point under powercut"
            );
        }
        Some(std::fs::canonicalize(&args.lazyfs).with_context(|| {
            format!(
                "no c4aj-lazyfs binary at {} (build jepsen-tests/lazyfs, or use jepsen-tests/run)",
                args.lazyfs.display()
            )
        })?)
    } else {
        None
    };
    let bin = std::fs::canonicalize(&args.bin)
        .with_context(|| format!("no chat4all binary at {}", args.bin.display()))?;
    let name = format!(
        "{}-{}{}-{}-seed{seed}",
        report::utc_stamp(now.as_secs()),
        if mode == HostsMode::Docker {
            "docker-"
        } else {
            ""
        },
        args.workload,
        schedule.nemesis_label().replace(',', "+")
    );
    std::fs::create_dir_all(&args.results)?;
    let dir = std::fs::canonicalize(&args.results)?.join(name);
    std::fs::create_dir_all(&dir)?;
    println!("results: {}", dir.display());
    print!("{}", schedule.describe());
    std::fs::write(
        dir.join("schedule.json"),
        serde_json::to_vec_pretty(&schedule)?,
    )?;
    std::fs::write(dir.join("schedule.txt"), schedule.describe())?;
    let mut cluster = ClusterFileConfig::new(args.nodes, &dir);
    if schedule.corrupts() {
        cluster.memtable_mb = Some(1);
    }
    cluster.in_container = mode == HostsMode::Docker;
    let config_path = dir.join(config::CLUSTER_FILE);
    std::fs::write(&config_path, cluster.render())?;

    // SIGINT and SIGTERM from now on end the run with a teardown (also while the hosts are
    // being made: docker mode builds an image and creates containers, which takes seconds).
    let mut signals = interrupted()?;
    // Any error from here on (the hosts half made, or not) leaves nothing behind: a failed
    // `create` drops what it made (teardown), and the hosts are torn down below.
    let created = {
        let (nodes, bin, config_path, dir) =
            (args.nodes, bin.clone(), config_path.clone(), dir.clone());
        tokio::task::spawn_blocking(move || {
            Hosts::create(mode, nodes, &bin, &config_path, &dir, lazyfs.as_deref())
        })
        .await?
    };
    let hosts = match created {
        Ok(hosts) => Arc::new(hosts),
        Err(e) => {
            Hosts::remove_leftovers();
            return Err(e);
        }
    };
    let pending = *signals.borrow();
    if let Some(signal) = pending {
        hosts.teardown();
        bail!("interrupted by {signal} while the hosts were made (removed again)");
    }
    let recorder_slot: Arc<Mutex<Option<Arc<Recorder>>>> = Arc::default();
    let outcome = tokio::select! {
        outcome = execute(&args, concurrency, &schedule, hosts.clone(), &dir, recorder_slot.clone()) => outcome,
        signal = signals.wait_for(Option::is_some) => {
            let signal = signal.ok().and_then(|s| *s).unwrap_or("a signal");
            Err(anyhow::anyhow!("interrupted by {signal}"))
        }
    };
    hosts.teardown();
    match outcome {
        Ok(valid) => {
            if valid.is_valid() && !args.keep_data {
                remove_data(&dir, args.nodes)?;
            }
            let shown = serde_json::to_string(&valid)?;
            println!("valid: {shown}\nresults: {}", dir.display());
            Ok(if valid.is_valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Err(e) => {
            let slot = recorder_slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(recorder) = slot {
                let _ = recorder.snapshot().write_file(dir.join("history.jsonl"));
            }
            eprintln!("jepsen: {e:#}\nresults (incomplete): {}", dir.display());
            Ok(ExitCode::from(2))
        }
    }
}

/// Catches SIGINT and SIGTERM from now on (instead of dying at once): the receiver turns
/// `Some(name)` at the first.
fn interrupted() -> anyhow::Result<tokio::sync::watch::Receiver<Option<&'static str>>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let (tx, rx) = tokio::sync::watch::channel(None);
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        let _ = tx.send(Some(name));
    });
    Ok(rx)
}
