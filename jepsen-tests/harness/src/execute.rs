//! One run on the hosts, from starting the nodes to the verdict: the topic (and group) made,
//! the workload's clients and the nemesis run together until the time limit, then the final
//! heal, the drain and the check. The chat workload has its own flow
//! ([`execute_chat`]): users and conversations, senders during the faults, then every
//! conversation and event stream read through every node after the heal.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat4all_jepsen::checker::chat as chat_checker;
use chat4all_jepsen::{CheckConfig, Recorder, Validity};

use crate::api::Api;
use crate::chat;
use crate::cluster::{create_topic, wait_ready};
use crate::hosts::Hosts;
use crate::log::ConsumerStats;
use crate::nemesis::{Nemesis, NetemMode};
use crate::queue::Workload;
use crate::schedule::Schedule;
use crate::subscribe::{self, GroupStats};
use crate::verdict::{check, write_results};
use crate::{Args, DRAIN_DEADLINE, READY_DEADLINE, REQUEST_TIMEOUT, TOPIC};

/// Starts the cluster, runs workload and nemesis, heals, drains and checks.
pub(crate) async fn execute(
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
    let nemesis_task = nemesis.spawn(schedule, start);
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
    let nemesis_task = nemesis.spawn(schedule, start);
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
