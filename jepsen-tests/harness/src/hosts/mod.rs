//! Hosts: each node in its own network namespace on one bridge, and the node processes in them
//! (`--hosts netns`, the default); or each node a container of a compose project on a private
//! Docker network (`--hosts docker`, see [`crate::docker`]). Either way a node has its own
//! address and network namespace, and the nemesis reaches it only through [`Hosts`]: start,
//! kill, signal, and commands run in its namespace ([`Hosts::run_in`], [`Hosts::net_add`]).
//!
//! ```text
//!   root namespace: c4aj-br 10.77.0.254 (the harness)
//!        │ c4aj-v1        │ c4aj-v2        │ c4aj-v3
//!   ┌────┴────┐      ┌────┴────┐      ┌────┴────┐
//!   │ c4aj-n1 │      │ c4aj-n2 │      │ c4aj-n3 │   namespaces, lo up
//!   │ c4aj-p1 │      │ c4aj-p2 │      │ c4aj-p3 │   10.77.0.K/24, iptables, tc
//!   │chat4all │      │chat4all │      │chat4all │
//!   └─────────┘      └─────────┘      └─────────┘
//! ```
//!
//! Everything the harness creates is named `c4aj-*`, so a later run can find and remove what an
//! interrupted one left ([`Hosts::remove_leftovers`]), in either mode.
//!
//! With the `powercut` nemesis the data directories are `c4aj-lazyfs` mounts: [`powercut`].
//!
//! What differs in docker mode: a node is started with `docker start -a c4aj-nK` (the child
//! process is that client, which streams the node's output to `node-K.log` and exits with the
//! node's exit code); killed with `docker kill -s KILL`, paused and resumed with `docker kill -s
//! SIGSTOP` / `SIGCONT` (the same signals as the netns mode's, to the container's init, which is
//! the node); commands in its namespace run as `nsenter -t <container pid> -n …` with the host's
//! iptables and tc. A stopped container has no network namespace, and a restarted one gets a
//! fresh one: what the nemesis added to a node's namespace ([`Hosts::net_add`]) is therefore
//! remembered and added again when its container starts (within ~0.1 s of the start: the node
//! runs unfiltered for that long).
//!
//! The rest is split by what it does: [`lifecycle`] makes the hosts and removes them again,
//! [`process`] starts, kills and signals the nodes and notices the ones that exit, and
//! [`namespace`] runs commands in a node's namespace and remembers what the nemesis added there.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, bail};

use crate::schedule::NodeId;

mod lifecycle;
mod namespace;
mod powercut;
mod process;

/// How the harness makes its hosts (`--hosts`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostsMode {
    /// A network namespace per node, on a bridge; the node a child process in it.
    Netns,
    /// A container per node, from a generated compose file, on the local Docker engine.
    Docker,
}

impl HostsMode {
    /// `netns` or `docker`.
    pub fn parse(name: &str) -> Result<HostsMode, String> {
        match name {
            "netns" => Ok(HostsMode::Netns),
            "docker" => Ok(HostsMode::Docker),
            other => Err(format!("unknown --hosts {other:?}: `netns` or `docker`")),
        }
    }

    /// The first three bytes of the mode's subnet.
    pub fn subnet(self) -> [u8; 3] {
        match self {
            HostsMode::Netns => crate::config::SUBNET_PREFIX,
            HostsMode::Docker => crate::config::DOCKER_SUBNET_PREFIX,
        }
    }
}

/// Prefix of every namespace, link and rule the harness creates.
pub const PREFIX: &str = "c4aj-";
/// The bridge in the root namespace.
pub const BRIDGE: &str = "c4aj-br";

/// The namespace of node `id`.
pub fn netns(id: NodeId) -> String {
    format!("{PREFIX}n{id}")
}

/// The veth end inside node `id`'s namespace.
pub fn inner_veth(id: NodeId) -> String {
    format!("{PREFIX}p{id}")
}

fn outer_veth(id: NodeId) -> String {
    format!("{PREFIX}v{id}")
}

/// Runs a command to completion; an error carries its stderr.
pub fn run(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// How the nodes of one run are made.
enum Backend {
    /// Namespaces on a bridge; nodes are `ip netns exec c4aj-nK chat4all serve …`.
    Netns,
    /// Containers of compose project [`docker::PROJECT`](crate::docker::PROJECT) from `file`.
    Docker {
        /// `docker compose` or `docker-compose`.
        compose: Vec<String>,
        /// The run's compose file.
        file: PathBuf,
    },
}

/// A running node: its child process, and in docker mode its container's init on the host
/// (whose network namespace is the node's).
struct Node {
    child: Child,
    pid: Option<i32>,
}

/// The hosts of one run: namespaces (or containers), bridge, and the node processes.
pub struct Hosts {
    nodes: u32,
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    backend: Backend,
    children: Mutex<BTreeMap<NodeId, Node>>,
    /// The commands that added what is now in each node's namespace ([`Hosts::net_add`]), in
    /// order: docker mode runs them again in a restarted container's fresh namespace.
    network: Mutex<BTreeMap<NodeId, Vec<Vec<String>>>>,
    /// Exits the harness did not cause (a crash, or a signal from outside the harness), as
    /// found: node, UTC time, exit status.
    unexpected: Mutex<Vec<(NodeId, String, String)>>,
    /// Nodes expected to exit by themselves (started on damaged data), with their exit status
    /// once found: such an exit is not unexpected.
    expected: Mutex<BTreeMap<NodeId, Option<ExitStatus>>>,
    /// The `c4aj-lazyfs` binary when the data directories are power-cut mounts (netns mode).
    lazyfs: Option<PathBuf>,
    /// The running `c4aj-lazyfs mount` processes, one per node (see [`Hosts::mount_lazyfs`]).
    shims: Mutex<BTreeMap<NodeId, Child>>,
    torn_down: AtomicBool,
    /// Extra environment variables of every node started from now on (netns mode; the chat
    /// workload's first admin).
    env: Mutex<Vec<(String, String)>>,
}

impl Hosts {
    /// Number of nodes.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        crate::config::data_dir(&self.dir, id)
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    fn expected_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Option<ExitStatus>>> {
        self.expected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Node>> {
        lock_map(&self.children)
    }
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The nodes' `RUST_LOG` (`JEPSEN_NODE_LOG`, else `info,openraft=warn`).
pub fn node_log_filter() -> String {
    std::env::var("JEPSEN_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into())
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Docker mode: what the nemesis adds to a stopped node's namespace is there once its
    /// container runs again, and its undo removes it. Needs root, a Docker engine and the node
    /// binary (`JEPSEN_BIN`, else the release build); it removes every `c4aj-*` host first, so
    /// never while a harness run is on: `cargo test --release -p chat4all-jepsen-harness --
    /// --ignored docker_mode`.
    #[test]
    #[ignore = "needs root, a Docker engine and the chat4all binary; removes c4aj-* hosts"]
    fn docker_mode_adds_a_stopped_nodes_rules_again_when_its_container_starts() {
        let bin = PathBuf::from(
            std::env::var("JEPSEN_BIN")
                .unwrap_or_else(|_| "/var/cache/chat4all/target/release/chat4all".into()),
        );
        let dir = std::env::temp_dir().join(format!("c4aj-hosts-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        // One node on the docker subnet (the config's node_ip() is the netns mode's in tests).
        let config = dir.join(crate::config::CLUSTER_FILE);
        std::fs::write(
            &config,
            "[tls]\ndir = \"/certs/cluster\"\nauto_generate = true\n\n[[nodes]]\nid = 1\n\
             raft_addr = \"10.78.0.1:7000\"\napi_addr = \"10.78.0.1:8080\"\n\
             data_dir = \"/var/lib/chat4all/data\"\n",
        )
        .expect("cluster file");
        let hosts = Hosts::create(HostsMode::Docker, 1, &bin, &config, &dir, None).expect("hosts");
        hosts.start(1).expect("start");
        assert!(hosts.has_namespace(1), "{}", log_of(&hosts));
        assert!(hosts.kill(1).expect("kill"));
        assert!(!hosts.has_namespace(1));
        let add = ["iptables", "-A", "INPUT", "-s", "10.78.0.9", "-j", "DROP"];
        let delete = ["iptables", "-D", "INPUT", "-s", "10.78.0.9", "-j", "DROP"];
        hosts.net_add(1, &add).expect("remembered while stopped");
        hosts.start(1).expect("restart");
        let rules = hosts.run_in(1, &["iptables", "-S", "INPUT"]).expect("list");
        assert!(
            rules.contains("-A INPUT -s 10.78.0.9/32 -j DROP"),
            "{rules}\n{}",
            log_of(&hosts)
        );
        hosts.net_undo(1, &add, &delete).expect("undo");
        let rules = hosts.run_in(1, &["iptables", "-S", "INPUT"]).expect("list");
        assert!(!rules.contains("10.78.0.9"), "{rules}");
        // Undone while stopped: nothing to run, and nothing comes back at the next start.
        hosts.net_add(1, &add).expect("add");
        assert!(hosts.kill(1).expect("kill"));
        hosts
            .net_undo(1, &add, &delete)
            .expect("undo while stopped");
        hosts.start(1).expect("restart");
        let rules = hosts.run_in(1, &["iptables", "-S", "INPUT"]).expect("list");
        assert!(!rules.contains("10.78.0.9"), "{rules}");
        hosts.teardown();
        assert!(
            run(&["docker", "ps", "-aq", "--filter", "name=c4aj-n1"])
                .expect("docker ps")
                .trim()
                .is_empty()
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    fn log_of(hosts: &Hosts) -> String {
        std::fs::read_to_string(hosts.log_path(1)).unwrap_or_default()
    }
}
