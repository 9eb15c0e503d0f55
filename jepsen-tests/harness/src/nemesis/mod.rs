//! The nemesis: carries out a [`Schedule`] against the [`Hosts`], recording every fault and heal
//! as a `nemesis` operation (an invocation and an `info` completion) in the history.
//!
//! This module runs the timeline, starts and heals each step and records both; the faults
//! themselves are split by kind: [`network`] holds the partitions and the link degradation
//! (iptables rules, netem), [`process`] the kills, pauses and power cuts, [`corruption`] the
//! damaged data and the node's refusal to start on it. [`leaders`] finds which nodes lead the
//! topic's partitions, for the faults aimed at leaders.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat4all_jepsen::{Call, OpType, Process, Recorder};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::config::node_ip;
use crate::hosts::Hosts;
use crate::schedule::{Fault, NodeId, PartitionSpec, Phase, Schedule, grudge};

mod corruption;
mod leaders;
mod network;
mod process;

pub use corruption::CorruptionOutcome;
use corruption::rebuild;
pub use network::NetemMode;
use network::{Rule, clear_network, netem_rules, qdisc_add};

/// Fault injector for one run.
pub struct Nemesis {
    hosts: Arc<Hosts>,
    api: Api,
    recorder: Arc<Recorder>,
    topic: String,
    netem: NetemMode,
    /// Every `corrupt` fault's outcome, in order.
    corruptions: Mutex<Vec<CorruptionOutcome>>,
    /// Damaged nodes not rebuilt yet, with the step that damaged them (the final heal rebuilds
    /// them if their own heal did not run).
    unrepaired: Arc<Mutex<BTreeMap<NodeId, usize>>>,
    /// One line per `powercut` step: which nodes lost how many unsynced bytes.
    powercuts: Arc<Mutex<Vec<String>>>,
}

impl Nemesis {
    /// A nemesis for `topic` (whose leaders the `leaders` partition isolates).
    pub fn new(
        hosts: Arc<Hosts>,
        api: Api,
        recorder: Arc<Recorder>,
        topic: &str,
        netem: NetemMode,
    ) -> Self {
        Nemesis {
            hosts,
            api,
            recorder,
            topic: topic.to_owned(),
            netem,
            corruptions: Mutex::new(Vec::new()),
            unrepaired: Arc::default(),
            powercuts: Arc::default(),
        }
    }

    /// What every `powercut` step reverted, one line each (for the verdict's notes).
    pub fn powercuts(&self) -> Vec<String> {
        lock(&self.powercuts).clone()
    }

    /// The outcome of every `corrupt` fault so far.
    pub fn corruptions(&self) -> Vec<CorruptionOutcome> {
        self.corruptions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Runs [`Nemesis::run`] in a task of its own.
    pub fn spawn(self: &Arc<Self>, schedule: &Schedule, start: Instant) -> JoinHandle<()> {
        let (nemesis, schedule) = (self.clone(), schedule.clone());
        tokio::spawn(async move { nemesis.run(&schedule, start).await })
    }

    /// Runs the schedule's timeline from `start` (the workload's start). Every wait is until a
    /// scheduled time, and the schedule ends within the time limit. Each heal undoes what its
    /// start did, so overlapping faults (scenarios) heal independently.
    pub async fn run(&self, schedule: &Schedule, start: Instant) {
        let mut applied: BTreeMap<usize, Applied> = BTreeMap::new();
        // Nodes under a process fault (paused or killed), so that a second one skips them and
        // each heal resumes or restarts only what its own start stopped.
        let mut held: BTreeSet<NodeId> = BTreeSet::new();
        for event in schedule.timeline() {
            tokio::time::sleep_until((start + Duration::from_millis(event.at_ms)).into()).await;
            let fault = &schedule.steps[event.step].fault;
            match event.phase {
                Phase::Start => {
                    let invoke = self.invoke("start", event.step, fault);
                    let mut done = Applied::default();
                    let result = self.start(event.step, fault, &held, &mut done).await;
                    self.complete(invoke, result);
                    held.extend(done.killed.iter().chain(&done.paused).chain(&done.damaged));
                    applied.insert(event.step, done);
                }
                Phase::Heal => {
                    let invoke = self.invoke("heal", event.step, fault);
                    let done = applied.remove(&event.step).unwrap_or_default();
                    for node in done.killed.iter().chain(&done.paused).chain(&done.damaged) {
                        held.remove(node);
                    }
                    let result = self.heal(event.step, done).await;
                    self.complete(invoke, result);
                }
            }
        }
    }

    /// Heals everything whatever the schedule did: rules flushed, netem removed, every node
    /// resumed and every dead node restarted. Recorded as a `final-heal`.
    pub async fn heal_all(&self) {
        let invoke = json!({"phase": "final-heal"});
        self.record(OpType::Invoke, invoke.clone(), None);
        let hosts = self.hosts.clone();
        let netem = self.netem;
        let unrepaired = self.unrepaired.clone();
        let done = blocking(move || {
            // Try everything, then report the first error.
            let mut first_error = None;
            let mut rebuilt = Vec::new();
            let damaged: Vec<(NodeId, usize)> = lock(&unrepaired).clone().into_iter().collect();
            for (id, step) in damaged {
                match rebuild(&hosts, id, step) {
                    Ok(_) => {
                        lock(&unrepaired).remove(&id);
                        rebuilt.push(id);
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            for id in 1..=hosts.nodes() {
                if let Err(e) = clear_network(&hosts, id, netem) {
                    first_error.get_or_insert(e);
                }
                if let Err(e) = hosts.signal(id, Signal::SIGCONT) {
                    first_error.get_or_insert(e);
                }
            }
            let mut restarted = Vec::new();
            for id in hosts.dead() {
                match hosts.start(id) {
                    Ok(()) => restarted.push(id),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None if rebuilt.is_empty() => Ok(json!({"restarted": restarted})),
                None => Ok(json!({"restarted": restarted, "rebuilt empty": rebuilt})),
            }
        })
        .await;
        self.complete(invoke, done);
    }

    /// Records the invocation of a fault's start or heal; [`Nemesis::complete`] records its
    /// outcome.
    fn invoke(&self, phase: &str, step: usize, fault: &Fault) -> Value {
        let invoke = json!({"phase": phase, "step": step, "fault": fault});
        tracing::info!(phase, step, kind = ?fault.kind(), %fault, "nemesis");
        self.record(OpType::Invoke, invoke.clone(), None);
        invoke
    }

    fn complete(&self, mut value: Value, result: anyhow::Result<Value>) {
        let error = match result {
            Ok(done) => {
                value["done"] = done;
                None
            }
            Err(e) => {
                tracing::warn!("nemesis: {e:#}");
                Some(format!("{e:#}"))
            }
        };
        self.record(OpType::Info, value, error);
    }

    fn record(&self, kind: OpType, value: Value, error: Option<String>) {
        let call = Call::Nemesis(value);
        let result = match kind {
            OpType::Invoke => self.recorder.invoke(Process::Nemesis, call),
            _ => self.recorder.complete(Process::Nemesis, kind, call, error),
        };
        if let Err(e) = result {
            tracing::error!("cannot record a nemesis operation: {e}");
        }
    }

    /// Inflicts `fault`, noting in `done` what to undo at heal. Process faults skip nodes in
    /// `held` (already paused or killed by an overlapping step).
    async fn start(
        &self,
        step: usize,
        fault: &Fault,
        held: &BTreeSet<NodeId>,
        done: &mut Applied,
    ) -> anyhow::Result<Value> {
        let nodes = self.hosts.nodes();
        match fault.clone() {
            Fault::Partition { spec } => {
                let leaders = if spec == PartitionSpec::Leaders {
                    self.leaders(held).await?
                } else {
                    Vec::new()
                };
                let cut = grudge(&spec, nodes, &leaders);
                done.rules = cut
                    .iter()
                    .flat_map(|&(a, b)| {
                        let peer = node_ip(b).to_string();
                        [
                            Rule::filter(a, "INPUT", &["-s", &peer, "-j", "DROP"]),
                            Rule::filter(a, "OUTPUT", &["-d", &peer, "-j", "DROP"]),
                        ]
                    })
                    .collect();
                let (rules, hosts) = (done.rules.clone(), self.hosts.clone());
                blocking(move || {
                    for rule in &rules {
                        rule.add(&hosts)?;
                    }
                    Ok(json!({"leaders": leaders, "cut": cut}))
                })
                .await
            }
            Fault::Kill { nodes } => self.stop(nodes, Signal::SIGKILL, held, done).await,
            Fault::Pause { node } => self.stop(vec![node], Signal::SIGSTOP, held, done).await,
            Fault::KillLeader { partition } => {
                let leader = self.leader_of(partition, held).await?;
                let mut value = self.stop(vec![leader], Signal::SIGKILL, held, done).await?;
                value["leader"] = json!(leader);
                Ok(value)
            }
            Fault::PauseLeader { partition } => {
                let leader = self.leader_of(partition, held).await?;
                let mut value = self.stop(vec![leader], Signal::SIGSTOP, held, done).await?;
                value["leader"] = json!(leader);
                Ok(value)
            }
            Fault::Powercut { nodes } => self.powercut(step, nodes, held, done).await,
            Fault::Corrupt { node } => self.corrupt(step, node, held, done).await,
            Fault::CorruptLeader { partition } => {
                let leader = self.leader_of(partition, held).await?;
                let mut value = self.corrupt(step, leader, held, done).await?;
                value["leader"] = json!(leader);
                Ok(value)
            }
            Fault::Netem { nodes: targets } => {
                let mode = self.netem;
                match mode {
                    NetemMode::Tc => done.qdiscs = targets.clone(),
                    NetemMode::IptablesLossAndDuplicate => {
                        done.rules = targets
                            .iter()
                            .flat_map(|&id| netem_rules(id, nodes, &self.hosts.iface(id)))
                            .collect();
                    }
                }
                let (rules, qdiscs) = (done.rules.clone(), done.qdiscs.clone());
                let hosts = self.hosts.clone();
                blocking(move || {
                    for &id in &qdiscs {
                        let args = qdisc_add(&hosts.iface(id));
                        hosts.net_add(id, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
                    }
                    for rule in &rules {
                        rule.add(&hosts)?;
                    }
                    Ok(json!({"mode": mode}))
                })
                .await
            }
        }
    }

    /// Undoes what a start did: its rules and qdiscs removed, its paused nodes resumed, its
    /// killed nodes restarted, its damaged nodes rebuilt empty. Tries everything, then reports
    /// the first error.
    async fn heal(&self, step: usize, done: Applied) -> anyhow::Result<Value> {
        let hosts = self.hosts.clone();
        let unrepaired = self.unrepaired.clone();
        blocking(move || {
            let mut first_error = None;
            let mut keep = |r: anyhow::Result<()>| {
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            };
            for rule in &done.rules {
                keep(rule.delete(&hosts));
            }
            for &id in &done.qdiscs {
                let dev = hosts.iface(id);
                let added = qdisc_add(&dev);
                let added: Vec<&str> = added.iter().map(String::as_str).collect();
                keep(hosts.net_undo(id, &added, &["tc", "qdisc", "del", "dev", &dev, "root"]));
            }
            for &id in &done.paused {
                keep(hosts.signal(id, Signal::SIGCONT).map(drop));
            }
            for &id in &done.killed {
                keep(hosts.start(id));
            }
            let mut moved = Vec::new();
            for &id in &done.damaged {
                match rebuild(&hosts, id, step) {
                    Ok(to) => {
                        lock(&unrepaired).remove(&id);
                        moved.push(to);
                    }
                    Err(e) => keep(Err(e)),
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
            let mut value = json!({});
            if !done.rules.is_empty() || !done.qdiscs.is_empty() {
                value["network restored"] = json!(done.rules.len() + done.qdiscs.len());
            }
            if !done.paused.is_empty() {
                value["resumed"] = json!(done.paused);
            }
            if !done.killed.is_empty() {
                value["restarted"] = json!(done.killed);
            }
            if !done.damaged.is_empty() {
                value["rebuilt empty"] = json!(done.damaged);
                value["damaged data moved to"] = json!(moved);
            }
            Ok(value)
        })
        .await
    }
}

/// What a step's start did, so that its heal undoes exactly that.
#[derive(Debug, Default)]
struct Applied {
    /// iptables rules added (deleted at heal).
    rules: Vec<Rule>,
    /// Nodes whose link got the netem qdisc.
    qdiscs: Vec<NodeId>,
    /// Nodes killed (restarted at heal).
    killed: Vec<NodeId>,
    /// Nodes paused (resumed at heal).
    paused: Vec<NodeId>,
    /// Nodes whose files were damaged (rebuilt empty at heal).
    damaged: Vec<NodeId>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs blocking work (commands, reaping) off the async workers.
async fn blocking(
    work: impl FnOnce() -> anyhow::Result<Value> + Send + 'static,
) -> anyhow::Result<Value> {
    tokio::task::spawn_blocking(work).await?
}
