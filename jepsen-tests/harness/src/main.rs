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

mod api;
mod chat;
mod config;
mod corrupt;
mod docker;
mod hosts;
mod log;
mod nemesis;
mod plot;
mod queue;
mod report;
mod scenario;
mod schedule;
mod subscribe;
mod view;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use chat4all_jepsen::checker::{
    chat as chat_checker, group as group_checker, kafka, queue as queue_checker,
};
use chat4all_jepsen::{CheckConfig, History, Process, Recorder, Validity};
use clap::Parser;
use serde_json::json;

use crate::api::{Answer, Api};
use crate::config::ClusterFileConfig;
use crate::hosts::{Hosts, HostsMode};
use crate::log::ConsumerStats;
use crate::nemesis::{CorruptionOutcome, Nemesis, NetemMode};
use crate::queue::Workload;
use crate::report::Summary;
use crate::scenario::Scenario;
use crate::schedule::{NemesisKind, Schedule, ScheduleConfig};
use crate::subscribe::GroupStats;

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

/// Starts the cluster, runs workload and nemesis, heals, drains and checks.
async fn execute(
    args: &Args,
    concurrency: u64,
    schedule: &Schedule,
    hosts: Arc<Hosts>,
    dir: &Path,
    recorder_slot: Arc<Mutex<Option<Arc<Recorder>>>>,
) -> anyhow::Result<Validity> {
    let nodes = args.nodes;
    if args.workload == "chat" {
        hosts.set_env(&chat::node_env());
    }
    for id in 1..=nodes {
        hosts.start(id)?;
    }
    let api = Api::new(REQUEST_TIMEOUT)?;
    wait_ready(&api, &hosts, READY_DEADLINE).await?;
    create_topic(&api, args, Instant::now() + Duration::from_secs(60)).await?;
    let subscribe = args.workload == "subscribe";
    let mut notes = Vec::new();
    if subscribe {
        let config =
            subscribe::configure(&api, nodes, Instant::now() + Duration::from_secs(60)).await?;
        notes.push(format!("group {}: {config}", subscribe::GROUP));
    }
    let netem = Nemesis::detect_netem(&hosts);

    let recorder = Arc::new(Recorder::new());
    *recorder_slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(recorder.clone());
    let seed = schedule.config.seed;
    if args.workload == "chat" {
        return execute_chat(
            args,
            concurrency,
            schedule,
            hosts,
            dir,
            &api,
            recorder,
            netem,
        )
        .await;
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.time_limit);
    let workload = Arc::new(Workload::new(
        api.clone(),
        recorder.clone(),
        TOPIC,
        args.partitions,
        nodes,
        seed,
        deadline,
    ));
    let nemesis = Arc::new(Nemesis::new(
        hosts.clone(),
        api.clone(),
        recorder.clone(),
        TOPIC,
        netem,
    ));
    let nemesis_task = {
        let (nemesis, schedule) = (nemesis.clone(), schedule.clone());
        tokio::spawn(async move { nemesis.run(&schedule, start).await })
    };
    // The log and subscribe workloads: half the clients (rounded down, at least one) consume.
    let consumers = if args.workload == "queue" {
        0
    } else {
        (concurrency / 2).max(1)
    };
    let producers = concurrency - consumers;
    let stats = Arc::new(ConsumerStats::default());
    let group_stats = Arc::new(GroupStats::default());
    let workers: Vec<_> = (0..producers)
        .map(|w| tokio::spawn(workload.clone().worker(w)))
        .collect();
    let consumer_tasks: Vec<_> = (0..consumers)
        .map(|c| {
            if subscribe {
                let task = workload
                    .clone()
                    .group_consumer(c, stats.clone(), group_stats.clone());
                tokio::spawn(task)
            } else {
                tokio::spawn(workload.clone().consumer(c, stats.clone()))
            }
        })
        .collect();
    let reader_task =
        subscribe.then(|| tokio::spawn(workload.clone().offsets_reader(stats.clone())));
    println!(
        "workload: {producers} producers, {consumers} consumers for {} s",
        args.time_limit
    );
    // Workers stop starting batches at the deadline; a last request takes at most the timeout.
    let grace = deadline + REQUEST_TIMEOUT * 3;
    for worker in workers {
        let abort = worker.abort_handle();
        if tokio::time::timeout_at(grace.into(), worker).await.is_err() {
            abort.abort();
        }
    }
    let mut lost_consumers = 0;
    for task in consumer_tasks {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(grace.into(), task).await.is_err() {
            abort.abort();
            lost_consumers += 1;
        }
    }
    let mut offsets_reader = None;
    if let Some(task) = reader_task {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(grace.into(), task).await {
            Ok(Ok(process)) => offsets_reader = Some(process),
            _ => abort.abort(),
        }
    }
    let abort = nemesis_task.abort_handle();
    if tokio::time::timeout_at(grace.into(), nemesis_task)
        .await
        .is_err()
    {
        abort.abort();
    }
    if lost_consumers > 0 {
        notes.push(format!(
            "{lost_consumers} consumers did not finish in time (aborted)"
        ));
    }
    if consumers > 0 {
        notes.push(format!(
            "consumers: {} fetches answered 416 OFFSET_OUT_OF_RANGE (failed polls)",
            stats.out_of_range()
        ));
    }
    println!("healing, then draining");
    nemesis.heal_all().await;
    if let Err(e) = wait_ready(&api, &hosts, READY_DEADLINE).await {
        notes.push(format!("after the final heal: {e:#}"));
    }
    let drain_complete = workload.drain(Instant::now() + DRAIN_DEADLINE).await;
    if subscribe {
        // The committed offsets once more, from every node, after the heal.
        if let Some(process) = offsets_reader {
            for node in 1..=nodes {
                workload.read_offsets(process, node).await;
            }
        }
        match subscribe::describe(&api, nodes).await {
            Some(group) => {
                std::fs::write(dir.join("group.json"), serde_json::to_vec_pretty(&group)?)?
            }
            None => notes.push("the group could not be described after the heal".to_owned()),
        }
        notes.push(group_stats.summary());
    }
    let readers = stats.processes();
    notes.extend(hosts.unexpected_exits());
    for id in hosts.dead() {
        notes.push(format!("node {id} not running at the end"));
    }
    notes.extend(workload.notes());
    notes.extend(nemesis.powercuts());
    let corruptions = nemesis.corruptions();

    let history = recorder.snapshot();
    history.write_file(dir.join("history.jsonl"))?;
    let valid = check(
        &history,
        &readers,
        subscribe,
        args,
        concurrency,
        schedule,
        dir,
        drain_complete,
        workload.foreign_records(),
        &corruptions,
        notes,
        netem,
    )?;
    Ok(valid)
}

/// The chat workload: users and conversations, senders during the faults, then (after the
/// heal) every conversation read through every node, and the chat checker.
#[allow(clippy::too_many_arguments)]
async fn execute_chat(
    args: &Args,
    concurrency: u64,
    schedule: &Schedule,
    hosts: Arc<Hosts>,
    dir: &Path,
    api: &Api,
    recorder: Arc<Recorder>,
    netem: NetemMode,
) -> anyhow::Result<Validity> {
    let nodes = args.nodes;
    let users = usize::try_from(concurrency.max(3))?;
    let setup_deadline = Instant::now() + Duration::from_secs(90);
    // The clients' deadline is set once the setup is done (it takes a few seconds).
    let chat = chat::Chat::setup(
        api.clone(),
        recorder.clone(),
        nodes,
        users,
        schedule.config.seed,
        setup_deadline,
    )
    .await?;
    let start = Instant::now();
    let chat = Arc::new(chat.with_deadline(start + Duration::from_secs(args.time_limit)));
    let nemesis = Arc::new(Nemesis::new(
        hosts.clone(),
        api.clone(),
        recorder.clone(),
        TOPIC,
        netem,
    ));
    let nemesis_task = {
        let (nemesis, schedule) = (nemesis.clone(), schedule.clone());
        tokio::spawn(async move { nemesis.run(&schedule, start).await })
    };
    let clients: Vec<_> = (0..concurrency)
        .map(|c| tokio::spawn(chat.clone().client(c)))
        .collect();
    println!(
        "workload: {concurrency} chat clients, {users} users, {} conversations for {} s",
        chat.conversations.len(),
        args.time_limit
    );
    let grace = start + Duration::from_secs(args.time_limit) + REQUEST_TIMEOUT * 3;
    let mut notes = Vec::new();
    let mut lost = 0;
    for task in clients.into_iter().chain([nemesis_task]) {
        let abort = task.abort_handle();
        if tokio::time::timeout_at(grace.into(), task).await.is_err() {
            abort.abort();
            lost += 1;
        }
    }
    if lost > 0 {
        notes.push(format!("{lost} tasks did not finish in time (aborted)"));
    }
    println!("healing, then reading every conversation through every node");
    nemesis.heal_all().await;
    if let Err(e) = wait_ready(api, &hosts, READY_DEADLINE).await {
        notes.push(format!("after the final heal: {e:#}"));
    }
    let (mut complete, histories) = chat.read_all().await;
    println!("reading every user's event stream from its start");
    if !chat.read_streams(&histories).await {
        notes.push("some user's event stream could not be read from any node".into());
        complete = false;
    }
    notes.extend(hosts.unexpected_exits());
    for id in hosts.dead() {
        notes.push(format!("node {id} not running at the end"));
    }
    notes.extend(chat.notes());
    let history = recorder.snapshot();
    history.write_file(dir.join("history.jsonl"))?;
    let config = CheckConfig::default();
    let verdicts = vec![chat_checker::check(&history, &config)];
    let mut valid = verdicts[0].valid;
    if !complete {
        notes.push(
            "some conversation (or event stream) could not be read completely from every node"
                .into(),
        );
        valid = valid.and(Validity::Unknown);
    }
    write_results(
        &history,
        verdicts,
        valid,
        complete,
        0,
        &[],
        notes,
        netem,
        args,
        concurrency,
        schedule,
        dir,
    )
}

/// Runs the checkers and writes verdict, summary and plot.
#[allow(clippy::too_many_arguments)]
fn check(
    history: &History,
    readers: &BTreeSet<Process>,
    group: bool,
    args: &Args,
    clients: u64,
    schedule: &Schedule,
    dir: &Path,
    drain_complete: bool,
    foreign_records: u64,
    corruptions: &[CorruptionOutcome],
    mut notes: Vec<String>,
    netem: NetemMode,
) -> anyhow::Result<Validity> {
    let config = CheckConfig::default();
    let mut verdicts = vec![kafka::check(history, &config)];
    let mut valid = Validity::Valid;
    match view::queue_view(history, readers)
        .and_then(|view| Ok(queue_checker::check(&view, &config)?))
    {
        Ok(verdict) => verdicts.push(verdict),
        Err(e) => {
            notes.push(format!("total-queue check impossible: {e:#}"));
            valid = Validity::Unknown;
        }
    }
    if group {
        verdicts.push(group_checker::check(
            history,
            &subscribe::timeouts(),
            &config,
        ));
    }
    valid = verdicts
        .iter()
        .fold(valid, |v, verdict| v.and(verdict.valid));
    if !drain_complete {
        valid = valid.and(Validity::Unknown);
    }
    if foreign_records > 0 {
        notes.push(format!(
            "{foreign_records} records the workload never wrote"
        ));
        valid = Validity::Invalid;
    }
    valid = valid.and(corruption_validity(schedule, corruptions, &mut notes));
    write_results(
        history,
        verdicts,
        valid,
        drain_complete,
        foreign_records,
        corruptions,
        notes,
        netem,
        args,
        clients,
        schedule,
        dir,
    )
}

/// Writes `verdict.json`, `summary.txt` and `plot.svg`, and prints the summary.
#[allow(clippy::too_many_arguments)]
fn write_results(
    history: &History,
    verdicts: Vec<chat4all_jepsen::Verdict>,
    valid: Validity,
    drain_complete: bool,
    foreign_records: u64,
    corruptions: &[CorruptionOutcome],
    notes: Vec<String>,
    netem: NetemMode,
    args: &Args,
    clients: u64,
    schedule: &Schedule,
    dir: &Path,
) -> anyhow::Result<Validity> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let verdict = json!({
        "valid": valid,
        "drain_complete": drain_complete,
        "foreign_records": foreign_records,
        "corruptions": corruptions,
        "netem": netem,
        "checkers": verdicts,
        "notes": notes,
        "seed": schedule.config.seed,
        "clients": clients,
        "hosts": args.hosts,
        "command": command,
    });
    std::fs::write(
        dir.join("verdict.json"),
        serde_json::to_vec_pretty(&verdict)?,
    )?;
    let netem = match netem {
        NetemMode::Tc => "tc netem (delay 50ms±20ms, loss 5%, duplicate 2%, reorder 10%)",
        NetemMode::IptablesLossAndDuplicate => {
            "kernel without netem: iptables random loss 5% and duplication 2% only (no delay, no reordering)"
        }
    };
    let summary = Summary {
        command,
        schedule,
        history,
        verdicts: &verdicts,
        valid,
        drain_complete,
        chat: args.workload == "chat",
        notes: &notes,
        netem: netem.to_owned(),
        clients,
    };
    let text = summary.render();
    print!("{text}");
    std::fs::write(dir.join("summary.txt"), text)?;
    let title = format!(
        "{} / {} / {} nodes / seed {}: valid {}",
        args.workload,
        schedule.nemesis_label(),
        args.nodes,
        schedule.config.seed,
        serde_json::to_string(&valid)?
    );
    std::fs::write(
        dir.join("plot.svg"),
        plot::render(&report::plot_data(history, &title)),
    )?;
    Ok(valid)
}

/// What the `corrupt` faults add to the verdict. A node that did not refuse to start on
/// damaged data makes the run invalid whatever the checkers say (it could serve damaged data);
/// a corrupt step that damaged nothing or did not happen leaves it unknown (damage untested).
fn corruption_validity(
    schedule: &Schedule,
    corruptions: &[CorruptionOutcome],
    notes: &mut Vec<String>,
) -> Validity {
    let planned = schedule
        .steps
        .iter()
        .filter(|s| s.fault.kind() == NemesisKind::Corrupt)
        .count();
    let mut valid = Validity::Valid;
    for c in corruptions {
        if c.damaged && !c.refused {
            notes.push(format!(
                "step {}: NOT REFUSED (a node that does not refuse damaged data could serve it): {}",
                c.step, c.detail
            ));
            valid = Validity::Invalid;
        } else if !c.damaged {
            notes.push(format!("step {}: {}", c.step, c.detail));
            valid = valid.and(Validity::Unknown);
        } else {
            notes.push(format!("step {}: {}", c.step, c.detail));
        }
    }
    if corruptions.len() < planned {
        notes.push(format!(
            "{} of {planned} corrupt steps damaged a node (the others failed or were skipped: see the nemesis operations)",
            corruptions.len()
        ));
        valid = valid.and(Validity::Unknown);
    }
    valid
}

/// Removes the nodes' data directories after a valid run (and, under `powercut`, the
/// `c4aj-lazyfs` backing directories `node-K.backing`, unmounted by then); damaged ones moved
/// aside by the `corrupt` fault (`data/nK.damaged-step<S>`, small) stay as evidence.
fn remove_data(dir: &Path, nodes: u32) -> anyhow::Result<()> {
    for id in 1..=nodes {
        let data = config::data_dir(dir, id);
        if data.exists() {
            std::fs::remove_dir_all(data)?;
        }
        let backing = dir.join(format!("node-{id}.backing"));
        if backing.exists() {
            std::fs::remove_dir_all(backing)?;
        }
    }
    // Only if nothing is left in it.
    let _ = std::fs::remove_dir(dir.join("data"));
    Ok(())
}

/// Waits until every node answers `/ready` with 200, polling each at most every 200 ms.
async fn wait_ready(api: &Api, hosts: &Hosts, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut waiting: Vec<u32> = (1..=hosts.nodes()).collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for id in waiting {
            let answer = api.probe(id, "/ready", Duration::from_secs(1)).await;
            if !matches!(answer, Answer::Ok(_)) {
                still.push(id);
            }
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let dead = hosts.dead();
            bail!("nodes {waiting:?} not ready after {limit:?} (not running: {dead:?})");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Creates the topic (retrying until `deadline`) and waits until every partition has a leader.
async fn create_topic(api: &Api, args: &Args, deadline: Instant) -> anyhow::Result<()> {
    let body = json!({
        "name": TOPIC,
        "partitions": args.partitions,
        "replication_factor": args.nodes.min(3),
        // A week: retention must not remove anything before the drain.
        "retention_ms": 604_800_000u64,
    });
    let mut created = false;
    let mut node = 1;
    let mut last = String::new();
    while Instant::now() < deadline {
        if !created {
            match api.post(node, "/v1/topics", &body).await {
                Answer::Ok(_) => created = true,
                Answer::Definite { code, .. } if code == "TOPIC_EXISTS" => created = true,
                other => last = other.describe(),
            }
        }
        if created {
            let path = format!("/v1/topics/{TOPIC}");
            if let Answer::Ok(topic) = api.get(node, &path).await {
                let partitions = topic["partitions"].as_array().cloned().unwrap_or_default();
                if partitions.len() == args.partitions as usize
                    && partitions.iter().all(|p| p["leader"].is_u64())
                {
                    return Ok(());
                }
                last = format!("not every partition has a leader: {topic}");
            }
        }
        node = node % args.nodes + 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("topic {TOPIC} not ready in time: {last}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(step: usize, damaged: bool, refused: bool) -> CorruptionOutcome {
        CorruptionOutcome {
            step,
            node: 2,
            damaged,
            refused,
            detail: "d".into(),
        }
    }

    #[test]
    fn a_damaged_node_that_did_not_refuse_makes_the_run_invalid_and_untested_damage_unknown() {
        let s7 = Schedule::scenario(Scenario::Corruption, 1, 3, 60_000).expect("valid");
        let mut notes = Vec::new();
        let both = [outcome(0, true, true), outcome(1, true, true)];
        assert_eq!(corruption_validity(&s7, &both, &mut notes), Validity::Valid);
        assert_eq!(notes.len(), 2);
        let served = [outcome(0, true, true), outcome(1, true, false)];
        assert_eq!(
            corruption_validity(&s7, &served, &mut notes),
            Validity::Invalid
        );
        assert!(notes.iter().any(|n| n.contains("NOT REFUSED")));
        let nothing = [outcome(0, true, true), outcome(1, false, false)];
        assert_eq!(
            corruption_validity(&s7, &nothing, &mut notes),
            Validity::Unknown
        );
        let missing = [outcome(0, true, true)];
        assert_eq!(
            corruption_validity(&s7, &missing, &mut notes),
            Validity::Unknown
        );
        // Runs without the fault are not affected.
        let s1 = Schedule::scenario(Scenario::PauseKill, 1, 3, 60_000).expect("valid");
        let mut none = Vec::new();
        assert_eq!(corruption_validity(&s1, &[], &mut none), Validity::Valid);
        assert!(none.is_empty());
    }

    #[test]
    fn a_valid_runs_data_goes_but_damaged_data_stays_as_evidence() {
        let dir = std::env::temp_dir().join(format!("c4aj-main-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for sub in [
            "data/n1/db",
            "data/n2/db",
            "data/n3",
            "data/n2.damaged-step0/db",
            "node-1.backing/db",
        ] {
            std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
        }
        remove_data(&dir, 3).expect("remove");
        assert!(!dir.join("data/n1").exists() && !dir.join("data/n2").exists());
        assert!(!dir.join("node-1.backing").exists());
        assert!(dir.join("data/n2.damaged-step0/db").exists());
        std::fs::remove_dir_all(dir.join("data/n2.damaged-step0")).expect("clean");
        remove_data(&dir, 3).expect("remove again");
        assert!(!dir.join("data").exists(), "an empty data/ goes too");
        std::fs::remove_dir_all(dir).expect("clean up");
    }
}
