//! The network faults: partitions as iptables DROP rules in the nodes' namespaces, and the
//! `netem` link degradation (the `tc netem` qdisc, or iptables random loss and duplication on
//! a kernel without it); and clearing both from a node at the final heal.

use serde::Serialize;

use super::Nemesis;
use crate::config::{harness_ip, node_ip};
use crate::hosts::Hosts;
use crate::schedule::NodeId;

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
}

/// One iptables rule in a node's namespace.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    node: NodeId,
    table: &'static str,
    chain: &'static str,
    spec: Vec<String>,
}

impl Rule {
    pub(super) fn filter(node: NodeId, chain: &'static str, spec: &[&str]) -> Rule {
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
    pub(super) fn add(&self, hosts: &Hosts) -> anyhow::Result<()> {
        hosts.net_add(self.node, &self.command("-A"))
    }

    /// Deletes one copy of the rule (see [`Hosts::net_undo`]).
    pub(super) fn delete(&self, hosts: &Hosts) -> anyhow::Result<()> {
        hosts.net_undo(self.node, &self.command("-A"), &self.command("-D"))
    }
}

/// The `tc` command that gives `dev` the netem qdisc.
pub(super) fn qdisc_add(dev: &str) -> Vec<String> {
    ["tc", "qdisc", "replace", "dev", dev, "root"]
        .iter()
        .chain(NETEM)
        .map(|a| (*a).to_owned())
        .collect()
}

/// The iptables rules that degrade node `id`'s link `dev` when the kernel has no netem (see
/// [`NetemMode::IptablesLossAndDuplicate`]).
pub(super) fn netem_rules(id: NodeId, nodes: u32, dev: &str) -> Vec<Rule> {
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
pub(super) fn clear_network(hosts: &Hosts, id: NodeId, mode: NetemMode) -> anyhow::Result<()> {
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
