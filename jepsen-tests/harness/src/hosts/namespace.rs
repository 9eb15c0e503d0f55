//! Commands in a node's network namespace (`ip netns exec` in netns mode, `nsenter` into a
//! container's namespace in docker mode), and what the nemesis added there ([`Hosts::net_add`]),
//! remembered so that docker mode can add it again to a restarted container's fresh namespace.

use anyhow::bail;

use super::{Backend, Hosts, inner_veth, lock_map, netns, run};
use crate::docker;
use crate::schedule::NodeId;

/// Runs a command inside network namespace `c4aj-nK` (netns mode).
pub(super) fn run_in_netns(id: NodeId, args: &[&str]) -> anyhow::Result<String> {
    let ns = netns(id);
    let mut full = vec!["ip", "netns", "exec", &ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Runs a command inside the network namespace of the process `pid` (docker mode: a
/// container's init).
pub(super) fn run_in_pid(pid: i32, args: &[&str]) -> anyhow::Result<String> {
    let pid = pid.to_string();
    let mut full = vec!["nsenter", "-t", &pid, "-n"];
    full.extend_from_slice(args);
    run(&full)
}

impl Hosts {
    /// Node `id`'s network interface, as seen in its namespace.
    pub fn iface(&self, id: NodeId) -> String {
        match self.backend {
            Backend::Netns => inner_veth(id),
            Backend::Docker { .. } => docker::CONTAINER_IFACE.to_owned(),
        }
    }

    /// Whether node `id` has a network namespace now: always in netns mode; in docker mode
    /// while its container runs.
    pub fn has_namespace(&self, id: NodeId) -> bool {
        match self.backend {
            Backend::Netns => true,
            Backend::Docker { .. } => self.namespace_pid(id).is_some(),
        }
    }

    /// Docker mode: the host pid of node `id`'s container init, if it runs.
    fn namespace_pid(&self, id: NodeId) -> Option<i32> {
        let mut children = self.lock();
        if !self.running(&mut children, id) {
            return None;
        }
        children.get(&id).and_then(|node| node.pid)
    }

    /// Runs a command inside node `id`'s network namespace (docker mode: fails if its
    /// container is not running).
    pub fn run_in(&self, id: NodeId, args: &[&str]) -> anyhow::Result<String> {
        match self.backend {
            Backend::Netns => run_in_netns(id, args),
            Backend::Docker { .. } => match self.namespace_pid(id) {
                Some(pid) => run_in_pid(pid, args),
                None => bail!(
                    "node {id} is not running: its container has no network namespace for `{}`",
                    args.join(" ")
                ),
            },
        }
    }

    /// Adds something to node `id`'s namespace by running `args` there (an iptables rule, a
    /// qdisc), and remembers it until [`Hosts::net_undo`] or [`Hosts::net_forget`]. In docker
    /// mode a node that is not running gets it when its container starts.
    pub fn net_add(&self, id: NodeId, args: &[&str]) -> anyhow::Result<()> {
        if self.has_namespace(id) {
            self.run_in(id, args)?;
        }
        let command = args.iter().map(|a| (*a).to_owned()).collect();
        lock_map(&self.network).entry(id).or_default().push(command);
        Ok(())
    }

    /// Undoes what `added` (given to [`Hosts::net_add`]) added, by running `undo` in node
    /// `id`'s namespace; in docker mode only if the container runs (else it is gone already).
    pub fn net_undo(&self, id: NodeId, added: &[&str], undo: &[&str]) -> anyhow::Result<()> {
        {
            let mut network = lock_map(&self.network);
            if let Some(commands) = network.get_mut(&id)
                && let Some(i) = commands.iter().position(|c| c.iter().eq(added.iter()))
            {
                commands.remove(i);
            }
        }
        if self.has_namespace(id) {
            self.run_in(id, undo)?;
        }
        Ok(())
    }

    /// Forgets everything added to node `id`'s namespace (the caller flushes it).
    pub fn net_forget(&self, id: NodeId) {
        lock_map(&self.network).remove(&id);
    }
}
