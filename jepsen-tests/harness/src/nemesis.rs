//! The nemesis: carries out a [`Schedule`] against the [`Hosts`], recording every fault and heal
//! as a `nemesis` operation (an invocation and an `info` completion) in the history.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat4all_jepsen::{Call, OpType, Process, Recorder};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{Answer, Api};
use crate::config::{harness_ip, node_ip};
use crate::corrupt;
use crate::hosts::Hosts;
use crate::schedule::{Fault, NodeId, PartitionSpec, Phase, Schedule, grudge};

/// How the `netem` fault is carried out on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetemMode {
    /// `tc qdisc ... netem delay 50ms 20ms loss 5% duplicate 2% reorder 10%`.
    Tc,
    /// The kernel has no netem qdisc (`CONFIG_NET_SCH_NETEM` unset): random loss (5%) and
    /// duplication (2%, iptables `TEE` to the destination itself) only; no delay, no reordering.
    IptablesLossAndDuplicate,
}

/// The `tc netem` arguments of the `netem` fault.
const NETEM: &[&str] = &[
    "netem",
    "delay",
    "50ms",
    "20ms",
    "loss",
    "5%",
    "duplicate",
    "2%",
    "reorder",
    "10%",
];

/// How long a node restarted on damaged data has to exit by itself.
pub const REFUSAL_LIMIT: Duration = Duration::from_secs(20);

/// What one `corrupt` fault found: whether a file was damaged and whether the node then
/// refused to start (exited by itself, non-zero, within [`REFUSAL_LIMIT`], saying why).
#[derive(Clone, Debug, Serialize)]
pub struct CorruptionOutcome {
    /// The step of the schedule.
    pub step: usize,
    /// The damaged node.
    pub node: NodeId,
    /// Whether a file was damaged at all.
    pub damaged: bool,
    /// Whether the node refused to start on it.
    pub refused: bool,
    /// What happened, in words.
    pub detail: String,
}

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
    /// Probes whether the kernel has the netem qdisc, on node 1's link (node 1 must run in
    /// docker mode).
    pub fn detect_netem(hosts: &Hosts) -> NetemMode {
        let dev = hosts.iface(1);
        let mut add = vec!["tc", "qdisc", "replace", "dev", &dev, "root"];
        add.extend_from_slice(NETEM);
        match hosts.run_in(1, &add) {
            Ok(_) => {
                let _ = hosts.run_in(1, &["tc", "qdisc", "del", "dev", &dev, "root"]);
                NetemMode::Tc
            }
            Err(e) => {
                tracing::warn!(
                    "no tc netem on this kernel ({e}); netem falls back to iptables loss and duplication"
                );
                NetemMode::IptablesLossAndDuplicate
            }
        }
    }

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

    /// SIGKILLs or SIGSTOPs `nodes`, except those in `held`; notes in `done` which it stopped.
    async fn stop(
        &self,
        nodes: Vec<NodeId>,
        signal: Signal,
        held: &BTreeSet<NodeId>,
        done: &mut Applied,
    ) -> anyhow::Result<Value> {
        let (skipped, targets): (Vec<NodeId>, Vec<NodeId>) =
            nodes.into_iter().partition(|n| held.contains(n));
        let hosts = self.hosts.clone();
        if signal == Signal::SIGKILL {
            // A target that had already exited (a crash, or a kill from outside the harness) is
            // not running afterwards either: the heal restarts it with the others.
            done.killed = targets.clone();
        }
        let stopped = blocking(move || {
            let mut stopped = Vec::new();
            for id in targets {
                let running = if signal == Signal::SIGKILL {
                    hosts.kill(id)?
                } else {
                    hosts.signal(id, signal)?
                };
                if running {
                    stopped.push(id);
                }
            }
            Ok(json!(stopped))
        })
        .await?;
        let stopped: Vec<NodeId> = serde_json::from_value(stopped)?;
        let verb = if signal == Signal::SIGKILL {
            "killed"
        } else {
            done.paused = stopped.clone();
            "paused"
        };
        let not_running: Vec<NodeId> = done
            .killed
            .iter()
            .copied()
            .filter(|n| !stopped.contains(n))
            .collect();
        let mut value = json!({ verb: stopped });
        if !not_running.is_empty() {
            value["not running already (restarted at heal)"] = json!(not_running);
        }
        if !skipped.is_empty() {
            value["skipped (already paused or killed)"] = json!(skipped);
        }
        Ok(value)
    }

    /// Cuts the power of `nodes` (except those in `held`): SIGKILLs them all first, then has
    /// each one's `c4aj-lazyfs` revert every file to its last fsync. The heal restarts them.
    async fn powercut(
        &self,
        step: usize,
        nodes: Vec<NodeId>,
        held: &BTreeSet<NodeId>,
        done: &mut Applied,
    ) -> anyhow::Result<Value> {
        let (skipped, targets): (Vec<NodeId>, Vec<NodeId>) =
            nodes.into_iter().partition(|n| held.contains(n));
        // Restarted at heal whatever happens from here on.
        done.killed = targets.clone();
        let hosts = self.hosts.clone();
        let powercuts = self.powercuts.clone();
        blocking(move || {
            let mut killed = Vec::new();
            for &id in &targets {
                if hosts.kill(id)? {
                    killed.push(id);
                }
            }
            let mut reverted = serde_json::Map::new();
            let mut line = format!("step {step}: powercut");
            for &id in &targets {
                let files = hosts.cut(id)?;
                let bytes: u64 = files.iter().map(|(b, _)| b).sum();
                line.push_str(&format!(
                    " n{id}: {bytes} unsynced bytes in {} files reverted;",
                    files.len()
                ));
                reverted.insert(
                    format!("n{id}"),
                    json!({
                        "bytes": bytes,
                        "files": files
                            .iter()
                            .map(|(b, f)| json!([f, b]))
                            .collect::<Vec<_>>(),
                    }),
                );
            }
            if targets.is_empty() {
                line.push_str(" nothing cut;");
            }
            lock(&powercuts).push(line.trim_end_matches(';').to_owned());
            let mut value = json!({"killed": killed, "reverted": reverted});
            if !skipped.is_empty() {
                value["skipped (already paused or killed)"] = json!(skipped);
            }
            Ok(value)
        })
        .await
    }

    /// SIGKILLs `node`, damages its files and restarts it, then waits (up to
    /// [`REFUSAL_LIMIT`]) for it to refuse to start: exit by itself, non-zero, saying the data
    /// is damaged. Records the outcome; the heal rebuilds the node empty.
    async fn corrupt(
        &self,
        step: usize,
        node: NodeId,
        held: &BTreeSet<NodeId>,
        done: &mut Applied,
    ) -> anyhow::Result<Value> {
        if held.contains(&node) {
            return Ok(json!({ "skipped (already paused or killed)": [node] }));
        }
        // Leader or follower: the partitions it leads as another node sees it.
        let led: Value = match self.topic(&BTreeSet::from([node])).await {
            Ok(topic) => json!(
                topic["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .filter(|(_, p)| p["leader"].as_u64() == Some(u64::from(node)))
                    .map(|(i, _)| i)
                    .collect::<Vec<_>>()
            ),
            Err(e) => json!(format!("unknown: {e:#}")),
        };
        // From here on the heal rebuilds it, whatever happens next.
        done.damaged = vec![node];
        lock(&self.unrepaired).insert(node, step);
        let hosts = self.hosts.clone();
        let (mut value, damaged, refused, mut detail) = blocking(move || {
            let was_running = hosts.kill(node)?;
            let damage = corrupt::damage(&hosts.data_dir(node).join("db"))?;
            let log_path = hosts.log_path(node);
            let log_start = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
            let mut value = json!({
                "node": node,
                "killed": was_running,
                "damage": damage,
            });
            if !damage.damaged() {
                hosts.start(node)?;
                let detail = format!("n{node}: nothing damaged ({damage:?}); restarted as is");
                return Ok(json!([value, false, false, detail]));
            }
            let started = Instant::now();
            let status = hosts.start_expecting_exit(node, REFUSAL_LIMIT)?;
            let waited = started.elapsed().as_secs_f64();
            let line = corrupt::damaged_line(&read_from(&log_path, log_start));
            value["log"] = json!(line);
            value["exited"] = json!(status.map(|s| format!("{s} after {waited:.1} s")));
            let (refused, detail) = match status {
                Some(status) if !status.success() && line.is_some() => (
                    true,
                    format!("n{node} refused to start on damaged data: {status} after {waited:.1} s"),
                ),
                Some(status) if status.success() => (
                    false,
                    format!("n{node} exited with success ({waited:.1} s) on damaged data"),
                ),
                Some(status) => (
                    false,
                    format!(
                        "n{node} exited ({status} after {waited:.1} s) but its log does not say the data is damaged"
                    ),
                ),
                None => (
                    false,
                    format!("n{node} still running {waited:.1} s after its restart on damaged data"),
                ),
            };
            Ok(json!([value, true, refused, detail]))
        })
        .await
        .and_then(|v| Ok(serde_json::from_value::<(Value, bool, bool, String)>(v)?))?;
        if damaged && !refused && !self.hosts.dead().contains(&node) {
            // Still running on damaged data: does it say it is ready to serve?
            let ready = matches!(
                self.api.probe(node, "/ready", Duration::from_secs(2)).await,
                Answer::Ok(_)
            );
            value["ready"] = json!(ready);
            detail.push_str(if ready {
                " and answering /ready (serving)"
            } else {
                " and not answering /ready (neither refused nor serving)"
            });
        }
        value["led"] = led;
        value["refused"] = json!(refused);
        if damaged && !refused {
            tracing::error!("{detail}");
        }
        lock(&self.corruptions).push(CorruptionOutcome {
            step,
            node,
            damaged,
            refused,
            detail,
        });
        Ok(value)
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

    /// The topic as the first node outside `held` that answers describes it.
    async fn topic(&self, held: &BTreeSet<NodeId>) -> anyhow::Result<Value> {
        let path = format!("/v1/topics/{}", self.topic);
        for node in (1..=self.hosts.nodes()).filter(|n| !held.contains(n)) {
            if let Answer::Ok(body) = self.api.probe(node, &path, Duration::from_secs(2)).await {
                return Ok(body);
            }
        }
        anyhow::bail!("no running node answered {path}")
    }

    /// The current leader of every partition of the topic.
    async fn leaders(&self, held: &BTreeSet<NodeId>) -> anyhow::Result<Vec<NodeId>> {
        let body = self.topic(held).await?;
        let mut leaders: Vec<NodeId> = body["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["leader"].as_u64())
            .filter_map(|l| NodeId::try_from(l).ok())
            .collect();
        leaders.sort_unstable();
        leaders.dedup();
        Ok(leaders)
    }

    /// The current leader of `partition`, as a running node sees it.
    async fn leader_of(&self, partition: u32, held: &BTreeSet<NodeId>) -> anyhow::Result<NodeId> {
        let body = self.topic(held).await?;
        body["partitions"][partition as usize]["leader"]
            .as_u64()
            .and_then(|l| NodeId::try_from(l).ok())
            .ok_or_else(|| anyhow::anyhow!("partition {partition} has no leader now: {body}"))
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

/// Rebuilds damaged node `id`: stops it if it runs (it should have refused to), moves its data
/// directory to `data/nK.damaged-step<step>` (kept as evidence) and starts it empty; its peers
/// bring it up to date. Returns where the data went.
fn rebuild(hosts: &Hosts, id: NodeId, step: usize) -> anyhow::Result<PathBuf> {
    hosts.kill(id)?;
    let data = hosts.data_dir(id);
    let mut to = data.with_file_name(format!("n{id}.damaged-step{step}"));
    let mut n = 1;
    while to.exists() {
        n += 1;
        to = data.with_file_name(format!("n{id}.damaged-step{step}-{n}"));
    }
    if data.exists() {
        std::fs::rename(&data, &to)?;
    }
    hosts.start(id)?;
    Ok(to)
}

/// The text of `path` from byte `offset` on (empty if unreadable).
fn read_from(path: &std::path::Path, offset: u64) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One iptables rule in a node's namespace.
#[derive(Clone, Debug)]
struct Rule {
    node: NodeId,
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
}

impl Rule {
    fn filter(node: NodeId, chain: &'static str, spec: &[&str]) -> Rule {
        Rule::new(node, "filter", chain, spec)
    }

    fn new(node: NodeId, table: &'static str, chain: &'static str, spec: &[&str]) -> Rule {
        Rule {
            node,
            table,
            chain,
            spec: spec.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// The iptables command that `-A`dds the rule or `-D`eletes one copy of it.
    fn command(&self, action: &'static str) -> Vec<&str> {
        let mut args = vec!["iptables", "-t", self.table, action, self.chain];
        args.extend(self.spec.iter().map(String::as_str));
        args
    }

    /// Appends the rule in its node's namespace (see [`Hosts::net_add`]).
    fn add(&self, hosts: &Hosts) -> anyhow::Result<()> {
        hosts.net_add(self.node, &self.command("-A"))
    }

    /// Deletes one copy of the rule (see [`Hosts::net_undo`]).
    fn delete(&self, hosts: &Hosts) -> anyhow::Result<()> {
        hosts.net_undo(self.node, &self.command("-A"), &self.command("-D"))
    }
}

/// The `tc` command that gives `dev` the netem qdisc.
fn qdisc_add(dev: &str) -> Vec<String> {
    ["tc", "qdisc", "replace", "dev", dev, "root"]
        .iter()
        .chain(NETEM)
        .map(|a| (*a).to_owned())
        .collect()
}

/// The iptables rules that degrade node `id`'s link `dev` when the kernel has no netem (see
/// [`NetemMode::IptablesLossAndDuplicate`]).
fn netem_rules(id: NodeId, nodes: u32, dev: &str) -> Vec<Rule> {
    let loss = [
        "-m",
        "statistic",
        "--mode",
        "random",
        "--probability",
        "0.05",
    ];
    let mut input = vec!["-i", dev];
    input.extend_from_slice(&loss);
    input.extend_from_slice(&["-j", "DROP"]);
    let mut output = vec!["-o", dev];
    output.extend_from_slice(&loss);
    output.extend_from_slice(&["-j", "DROP"]);
    let mut rules = vec![
        Rule::filter(id, "INPUT", &input),
        Rule::filter(id, "OUTPUT", &output),
    ];
    // A TEE clone routed to the destination itself arrives as a duplicate.
    let peers = (1..=nodes)
        .filter(|p| *p != id)
        .map(node_ip)
        .chain([harness_ip()]);
    for peer in peers.map(|ip| ip.to_string()) {
        rules.push(Rule::new(
            id,
            "mangle",
            "OUTPUT",
            &[
                "-o",
                dev,
                "-d",
                &peer,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.02",
                "-j",
                "TEE",
                "--gateway",
                &peer,
            ],
        ));
    }
    rules
}

/// Removes every partition rule and link degradation from node `id` (in docker mode, a node
/// whose container is stopped has nothing to remove: it starts with a fresh namespace).
fn clear_network(hosts: &Hosts, id: NodeId, mode: NetemMode) -> anyhow::Result<()> {
    hosts.net_forget(id);
    if !hosts.has_namespace(id) {
        return Ok(());
    }
    hosts.run_in(id, &["iptables", "-F", "INPUT"])?;
    hosts.run_in(id, &["iptables", "-F", "OUTPUT"])?;
    hosts.run_in(id, &["iptables", "-t", "mangle", "-F", "OUTPUT"])?;
    if mode == NetemMode::Tc {
        // Fails when there is nothing to remove, which is fine.
        let _ = hosts.run_in(id, &["tc", "qdisc", "del", "dev", &hosts.iface(id), "root"]);
    }
    Ok(())
}

/// Runs blocking work (commands, reaping) off the async workers.
async fn blocking(
    work: impl FnOnce() -> anyhow::Result<Value> + Send + 'static,
) -> anyhow::Result<Value> {
    tokio::task::spawn_blocking(work).await?
}
