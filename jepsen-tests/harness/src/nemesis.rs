//! The nemesis: carries out a [`Schedule`] against the [`Hosts`], recording every fault and heal
//! as a `nemesis` operation (an invocation and an `info` completion) in the history.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat4all_jepsen::{Call, OpType, Process, Recorder};
use nix::sys::signal::Signal;
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::{Answer, Api};
use crate::config::{harness_ip, node_ip};
use crate::hosts::{Hosts, inner_veth, run_in};
use crate::schedule::{Fault, NodeId, PartitionSpec, Schedule, grudge};

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

/// Fault injector for one run.
pub struct Nemesis {
    hosts: Arc<Hosts>,
    api: Api,
    recorder: Arc<Recorder>,
    topic: String,
    netem: NetemMode,
}

impl Nemesis {
    /// Probes whether the kernel has the netem qdisc, on node 1's link.
    pub fn detect_netem() -> NetemMode {
        let dev = inner_veth(1);
        let mut add = vec!["tc", "qdisc", "replace", "dev", &dev, "root"];
        add.extend_from_slice(NETEM);
        match run_in(1, &add) {
            Ok(_) => {
                let _ = run_in(1, &["tc", "qdisc", "del", "dev", &dev, "root"]);
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
        }
    }

    /// Runs the schedule from `start` (the workload's start). Every wait is until a scheduled
    /// time, and the schedule ends within the time limit.
    pub async fn run(&self, schedule: &Schedule, start: Instant) {
        for step in &schedule.steps {
            tokio::time::sleep_until((start + Duration::from_millis(step.start_ms)).into()).await;
            self.perform("start", &step.fault, self.start(&step.fault))
                .await;
            tokio::time::sleep_until((start + Duration::from_millis(step.heal_ms)).into()).await;
            self.perform("heal", &step.fault, self.heal(&step.fault))
                .await;
        }
    }

    /// Heals everything whatever the schedule did: rules flushed, netem removed, every node
    /// resumed and every dead node restarted. Recorded as a `final-heal`.
    pub async fn heal_all(&self) {
        let invoke = json!({"phase": "final-heal"});
        self.record(OpType::Invoke, invoke.clone(), None);
        let hosts = self.hosts.clone();
        let netem = self.netem;
        let done = blocking(move || {
            let mut done = Vec::new();
            for id in 1..=hosts.nodes() {
                clear_network(id, netem)?;
                hosts.signal(id, Signal::SIGCONT)?;
            }
            for (id, status) in hosts.dead() {
                hosts.start(id)?;
                done.push(json!({"restarted": id, "was": status}));
            }
            Ok(json!(done))
        })
        .await;
        self.complete(invoke, done);
    }

    async fn perform(
        &self,
        phase: &str,
        fault: &Fault,
        action: impl std::future::Future<Output = anyhow::Result<Value>>,
    ) {
        let invoke = json!({"phase": phase, "fault": fault});
        tracing::info!(phase, kind = ?fault.kind(), %fault, "nemesis");
        self.record(OpType::Invoke, invoke.clone(), None);
        let result = action.await;
        self.complete(invoke, result);
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

    async fn start(&self, fault: &Fault) -> anyhow::Result<Value> {
        let hosts = self.hosts.clone();
        let nodes = hosts.nodes();
        match fault.clone() {
            Fault::Partition { spec } => {
                let leaders = if spec == PartitionSpec::Leaders {
                    self.leaders().await?
                } else {
                    Vec::new()
                };
                let cut = grudge(&spec, nodes, &leaders);
                blocking(move || {
                    for &(a, b) in &cut {
                        let peer = node_ip(b).to_string();
                        run_in(a, &["iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
                        run_in(a, &["iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"])?;
                    }
                    Ok(json!({"leaders": leaders, "cut": cut}))
                })
                .await
            }
            Fault::Kill { nodes } => {
                blocking(move || {
                    let mut killed = Vec::new();
                    for id in nodes {
                        if hosts.kill(id)? {
                            killed.push(id);
                        }
                    }
                    Ok(json!({"killed": killed}))
                })
                .await
            }
            Fault::Pause { node } => {
                let paused = hosts.signal(node, Signal::SIGSTOP)?;
                Ok(json!({"paused": paused}))
            }
            Fault::Netem { nodes } => {
                let mode = self.netem;
                let all = hosts.nodes();
                blocking(move || {
                    for &id in &nodes {
                        degrade(id, all, mode)?;
                    }
                    Ok(json!({"mode": mode}))
                })
                .await
            }
        }
    }

    async fn heal(&self, fault: &Fault) -> anyhow::Result<Value> {
        let hosts = self.hosts.clone();
        let netem = self.netem;
        match fault.clone() {
            Fault::Partition { .. } | Fault::Netem { .. } => {
                blocking(move || {
                    for id in 1..=hosts.nodes() {
                        clear_network(id, netem)?;
                    }
                    Ok(json!("network restored"))
                })
                .await
            }
            Fault::Kill { nodes } => {
                blocking(move || {
                    for &id in &nodes {
                        hosts.start(id)?;
                    }
                    Ok(json!({"restarted": nodes}))
                })
                .await
            }
            Fault::Pause { node } => {
                let resumed = hosts.signal(node, Signal::SIGCONT)?;
                Ok(json!({"resumed": resumed}))
            }
        }
    }

    /// The current leader of every partition of the topic, from the first node that answers.
    async fn leaders(&self) -> anyhow::Result<Vec<NodeId>> {
        let path = format!("/v1/topics/{}", self.topic);
        for node in 1..=self.hosts.nodes() {
            if let Answer::Ok(body) = self.api.probe(node, &path, Duration::from_secs(2)).await {
                let mut leaders: Vec<NodeId> = body["partitions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["leader"].as_u64())
                    .filter_map(|l| NodeId::try_from(l).ok())
                    .collect();
                leaders.sort_unstable();
                leaders.dedup();
                return Ok(leaders);
            }
        }
        anyhow::bail!("no node answered {path}")
    }
}

/// Degrades node `id`'s link (see [`NetemMode`]).
fn degrade(id: NodeId, nodes: u32, mode: NetemMode) -> anyhow::Result<()> {
    let dev = inner_veth(id);
    match mode {
        NetemMode::Tc => {
            let mut args = vec!["tc", "qdisc", "replace", "dev", &dev, "root"];
            args.extend_from_slice(NETEM);
            run_in(id, &args)?;
        }
        NetemMode::IptablesLossAndDuplicate => {
            let loss = [
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                "0.05",
            ];
            let mut input = vec!["iptables", "-A", "INPUT", "-i", &dev];
            input.extend_from_slice(&loss);
            input.extend_from_slice(&["-j", "DROP"]);
            run_in(id, &input)?;
            let mut output = vec!["iptables", "-A", "OUTPUT", "-o", &dev];
            output.extend_from_slice(&loss);
            output.extend_from_slice(&["-j", "DROP"]);
            run_in(id, &output)?;
            // A TEE clone routed to the destination itself arrives as a duplicate.
            let peers = (1..=nodes)
                .filter(|p| *p != id)
                .map(node_ip)
                .chain([harness_ip()]);
            for peer in peers.map(|ip| ip.to_string()) {
                run_in(
                    id,
                    &[
                        "iptables",
                        "-t",
                        "mangle",
                        "-A",
                        "OUTPUT",
                        "-o",
                        &dev,
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
                )?;
            }
        }
    }
    Ok(())
}

/// Removes every partition rule and link degradation from node `id`.
fn clear_network(id: NodeId, mode: NetemMode) -> anyhow::Result<()> {
    run_in(id, &["iptables", "-F", "INPUT"])?;
    run_in(id, &["iptables", "-F", "OUTPUT"])?;
    run_in(id, &["iptables", "-t", "mangle", "-F", "OUTPUT"])?;
    if mode == NetemMode::Tc {
        // Fails when there is nothing to remove, which is fine.
        let _ = run_in(id, &["tc", "qdisc", "del", "dev", &inner_veth(id), "root"]);
    }
    Ok(())
}

/// Runs blocking work (commands, reaping) off the async workers.
async fn blocking(
    work: impl FnOnce() -> anyhow::Result<Value> + Send + 'static,
) -> anyhow::Result<Value> {
    tokio::task::spawn_blocking(work).await?
}
