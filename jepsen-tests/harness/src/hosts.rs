//! Hosts: each node in its own network namespace on one bridge, and the node processes in them.
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
//! interrupted one left ([`Hosts::remove_leftovers`]).

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::config::{harness_ip, node_ip};
use crate::schedule::NodeId;

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

/// Runs a command inside node `id`'s namespace.
pub fn run_in(id: NodeId, args: &[&str]) -> anyhow::Result<String> {
    let ns = netns(id);
    let mut full = vec!["ip", "netns", "exec", &ns];
    full.extend_from_slice(args);
    run(&full)
}

/// The root namespace's FORWARD rule that lets bridged traffic between the namespaces through
/// when `bridge-nf-call-iptables` sends it through a DROP policy (Docker sets one).
const FORWARD_RULE: &[&str] = &[
    "FORWARD",
    "-i",
    BRIDGE,
    "-o",
    BRIDGE,
    "-m",
    "comment",
    "--comment",
    "c4aj-",
    "-j",
    "ACCEPT",
];

/// The hosts of one run: namespaces, bridge, and the node processes.
pub struct Hosts {
    nodes: u32,
    bin: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    children: Mutex<BTreeMap<NodeId, Child>>,
    /// Exits the harness did not cause (a crash, or a signal from outside the harness), as
    /// found: node, UTC time, exit status.
    unexpected: Mutex<Vec<(NodeId, String, String)>>,
    /// Nodes expected to exit by themselves (started on damaged data), with their exit status
    /// once found: such an exit is not unexpected.
    expected: Mutex<BTreeMap<NodeId, Option<ExitStatus>>>,
    torn_down: AtomicBool,
}

impl Hosts {
    /// Removes every `c4aj-*` namespace (killing what runs in it), link and rule.
    pub fn remove_leftovers() {
        if let Ok(list) = run(&["ip", "netns", "list"]) {
            for ns in list
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|ns| ns.starts_with(PREFIX))
            {
                if let Ok(pids) = run(&["ip", "netns", "pids", ns]) {
                    for pid in pids
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                    {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                    }
                }
                let _ = run(&["ip", "netns", "del", ns]);
            }
        }
        if let Ok(links) = run(&["ip", "-o", "link", "show"]) {
            for link in links
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|name| name.trim().split('@').next().unwrap_or("").to_owned())
                .filter(|name| name.starts_with(PREFIX))
            {
                let _ = run(&["ip", "link", "del", &link]);
            }
        }
        let mut delete = vec!["iptables", "-D"];
        delete.extend_from_slice(FORWARD_RULE);
        // One rule per earlier run at most; bounded anyway.
        for _ in 0..8 {
            if run(&delete).is_err() {
                break;
            }
        }
    }

    /// Creates the bridge and `nodes` namespaces with their addresses; nothing is started yet.
    pub fn create(nodes: u32, bin: &Path, config: &Path, dir: &Path) -> anyhow::Result<Hosts> {
        Hosts::remove_leftovers();
        let hosts = Hosts {
            nodes,
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            dir: dir.to_path_buf(),
            children: Mutex::new(BTreeMap::new()),
            unexpected: Mutex::new(Vec::new()),
            expected: Mutex::new(BTreeMap::new()),
            torn_down: AtomicBool::new(false),
        };
        let harness = format!("{}/24", harness_ip());
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        run(&["ip", "addr", "add", &harness, "dev", BRIDGE])?;
        run(&["ip", "link", "set", BRIDGE, "up"])?;
        let mut insert = vec!["iptables", "-I"];
        insert.extend_from_slice(FORWARD_RULE);
        run(&insert)?;
        for id in 1..=nodes {
            let (ns, inner, outer) = (netns(id), inner_veth(id), outer_veth(id));
            let address = format!("{}/24", node_ip(id));
            run(&["ip", "netns", "add", &ns])?;
            run_in(id, &["ip", "link", "set", "lo", "up"])?;
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &outer, "master", BRIDGE])?;
            run(&["ip", "link", "set", &outer, "up"])?;
            run_in(id, &["ip", "addr", "add", &address, "dev", &inner])?;
            run_in(id, &["ip", "link", "set", &inner, "up"])?;
        }
        Ok(hosts)
    }

    /// Number of nodes.
    pub fn nodes(&self) -> u32 {
        self.nodes
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: NodeId) -> PathBuf {
        crate::config::data_dir(&self.dir, id)
    }

    /// Starts node `id` expecting it to exit by itself (it was given damaged data) and waits
    /// up to `limit` for that: its exit status, or `None` if it still runs then (it is left
    /// running, and a later exit counts as unexpected again).
    pub fn start_expecting_exit(
        &self,
        id: NodeId,
        limit: Duration,
    ) -> anyhow::Result<Option<ExitStatus>> {
        self.expected_lock().insert(id, None);
        if let Err(e) = self.start(id) {
            self.expected_lock().remove(&id);
            return Err(e);
        }
        let deadline = Instant::now() + limit;
        loop {
            let running = {
                let mut children = self.lock();
                self.running(&mut children, id)
            };
            if !running {
                let status = self.expected_lock().remove(&id).flatten();
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.expected_lock().remove(&id);
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Starts node `id` in its namespace (appending to its log). `ip netns exec` execs the
    /// binary, so the child's pid is the node's.
    pub fn start(&self, id: NodeId) -> anyhow::Result<()> {
        let mut children = self.lock();
        if self.running(&mut children, id) {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &netns(id)])
            .arg(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(["--node-id", &id.to_string()])
            .current_dir(&self.dir)
            .env(
                "RUST_LOG",
                std::env::var("JEPSEN_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        children.insert(id, child);
        Ok(())
    }

    /// SIGKILLs node `id` and reaps it; `false` if it was not running (then it is still not
    /// running afterwards).
    pub fn kill(&self, id: NodeId) -> anyhow::Result<bool> {
        let mut children = self.lock();
        if !self.running(&mut children, id) {
            return Ok(false);
        }
        let Some(mut child) = children.remove(&id) else {
            return Ok(false);
        };
        child.kill()?;
        child.wait()?;
        Ok(true)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to node `id`, if it is running; `false` if not.
    pub fn signal(&self, id: NodeId, signal: Signal) -> anyhow::Result<bool> {
        let mut children = self.lock();
        if !self.running(&mut children, id) {
            return Ok(false);
        }
        let Some(child) = children.get(&id) else {
            return Ok(false);
        };
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        kill(pid, signal)?;
        Ok(true)
    }

    /// Nodes whose process is not running: killed by the nemesis (`not running`), or exited on
    /// their own (see [`Hosts::unexpected_exits`]).
    pub fn dead(&self) -> Vec<NodeId> {
        let mut children = self.lock();
        (1..=self.nodes)
            .filter(|&id| !self.running(&mut children, id))
            .collect()
    }

    /// Every exit the harness did not cause, as found (killed nodes are reaped at once, so
    /// any other exit is a crash or a signal from outside): `node K exited ... (found at T)`.
    pub fn unexpected_exits(&self) -> Vec<String> {
        self.unexpected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(id, at, status)| {
                format!("node {id} exited without the harness killing it: {status} (found {at})")
            })
            .collect()
    }

    /// Whether node `id` runs. A child found exited is reaped, recorded as an unexpected exit
    /// and forgotten, so every later call sees it as not running.
    fn running(&self, children: &mut BTreeMap<NodeId, Child>, id: NodeId) -> bool {
        let Some(child) = children.get_mut(&id) else {
            return false;
        };
        let status = match child.try_wait() {
            Ok(None) => return true,
            Ok(Some(status)) => {
                if let Some(slot) = self.expected_lock().get_mut(&id) {
                    *slot = Some(status);
                    children.remove(&id);
                    return false;
                }
                status.to_string()
            }
            Err(e) => format!("cannot wait for it: {e}"),
        };
        children.remove(&id);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        tracing::warn!("node {id} exited without the harness killing it: {status}");
        self.unexpected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((id, crate::report::utc_stamp(secs), status));
        false
    }

    /// Kills every node and removes the namespaces, links and rules. Idempotent.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut children = self.lock();
        for child in children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        children.clear();
        drop(children);
        Hosts::remove_leftovers();
    }

    fn expected_lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Option<ExitStatus>>> {
        self.expected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, Child>> {
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.teardown();
    }
}
