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
use crate::docker;
use crate::schedule::NodeId;

mod powercut;

use powercut::remove_lazyfs_mounts;

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

/// How long a container may take to run after `docker start`.
const CONTAINER_START_LIMIT: Duration = Duration::from_secs(30);
/// How long `docker start -a` may take to return after `docker kill -s KILL`.
const CONTAINER_KILL_LIMIT: Duration = Duration::from_secs(20);

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

/// Runs a command inside network namespace `c4aj-nK` (netns mode).
fn run_in_netns(id: NodeId, args: &[&str]) -> anyhow::Result<String> {
    let ns = netns(id);
    let mut full = vec!["ip", "netns", "exec", &ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Runs a command inside the network namespace of the process `pid` (docker mode: a
/// container's init).
fn run_in_pid(pid: i32, args: &[&str]) -> anyhow::Result<String> {
    let pid = pid.to_string();
    let mut full = vec!["nsenter", "-t", &pid, "-n"];
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

/// How the nodes of one run are made.
enum Backend {
    /// Namespaces on a bridge; nodes are `ip netns exec c4aj-nK chat4all serve …`.
    Netns,
    /// Containers of compose project [`docker::PROJECT`] from `file`.
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
    /// Removes every `c4aj-*` container and Docker network (if there is a Docker engine),
    /// namespace (killing what runs in it), link and rule.
    pub fn remove_leftovers() {
        docker::remove_leftovers();
        remove_lazyfs_mounts();
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

    /// Creates the hosts of `mode`, nothing started yet: the bridge and `nodes` namespaces with
    /// their addresses; or the image, the compose file (in `dir`) and the containers.
    pub fn create(
        mode: HostsMode,
        nodes: u32,
        bin: &Path,
        config: &Path,
        dir: &Path,
        lazyfs: Option<&Path>,
    ) -> anyhow::Result<Hosts> {
        Hosts::remove_leftovers();
        if lazyfs.is_some() && mode != HostsMode::Netns {
            bail!(
                "the powercut nemesis needs --hosts netns (c4aj-lazyfs mounts in the root namespace)"
            );
        }
        let backend = match mode {
            HostsMode::Netns => Backend::Netns,
            HostsMode::Docker => {
                if !docker::available() {
                    bail!("--hosts docker: no Docker engine answers `docker version` here");
                }
                Backend::Docker {
                    compose: docker::compose_command()?,
                    file: dir.join(docker::COMPOSE_FILE),
                }
            }
        };
        let hosts = Hosts {
            nodes,
            bin: bin.to_path_buf(),
            config: config.to_path_buf(),
            dir: dir.to_path_buf(),
            backend,
            children: Mutex::new(BTreeMap::new()),
            network: Mutex::new(BTreeMap::new()),
            unexpected: Mutex::new(Vec::new()),
            expected: Mutex::new(BTreeMap::new()),
            lazyfs: lazyfs.map(Path::to_path_buf),
            shims: Mutex::new(BTreeMap::new()),
            torn_down: AtomicBool::new(false),
            env: Mutex::new(Vec::new()),
        };
        if let Backend::Docker { compose, file } = &hosts.backend {
            let image = docker::image(bin)?;
            std::fs::write(
                file,
                docker::compose_file(dir, nodes, &image, &node_log_filter()),
            )?;
            std::fs::create_dir_all(crate::config::certs_dir(dir))?;
            for id in 1..=nodes {
                std::fs::create_dir_all(hosts.data_dir(id))?;
            }
            let file = file.to_string_lossy();
            let mut up: Vec<&str> = compose.iter().map(String::as_str).collect();
            up.extend(["-p", docker::PROJECT, "-f", &file, "up", "--no-start"]);
            run(&up)?;
            return Ok(hosts);
        }
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
            run_in_netns(id, &["ip", "link", "set", "lo", "up"])?;
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns,
            ])?;
            run(&["ip", "link", "set", &outer, "master", BRIDGE])?;
            run(&["ip", "link", "set", &outer, "up"])?;
            run_in_netns(id, &["ip", "addr", "add", &address, "dev", &inner])?;
            run_in_netns(id, &["ip", "link", "set", &inner, "up"])?;
        }
        if hosts.lazyfs.is_some() {
            for id in 1..=nodes {
                hosts.mount_lazyfs(id)?;
            }
        }
        Ok(hosts)
    }

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

    /// Sets environment variables for every node started from now on (netns mode only: docker
    /// mode's containers get theirs from the compose file).
    pub fn set_env(&self, vars: &[(&str, &str)]) {
        *self
            .env
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// The log file of node `id`.
    pub fn log_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.log"))
    }

    /// Starts node `id` in its namespace (appending to its log). `ip netns exec` execs the
    /// binary, so the child's pid is the node's. In docker mode: `docker start -a`, then waits
    /// until the container runs and adds what its namespace should hold.
    pub fn start(&self, id: NodeId) -> anyhow::Result<()> {
        let mut children = self.lock();
        if self.running(&mut children, id) {
            return Ok(());
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))?;
        if let Backend::Docker { .. } = self.backend {
            let node = self.start_container(id, log)?;
            children.insert(id, node);
            return Ok(());
        }
        let child = Command::new("ip")
            .args(["netns", "exec", &netns(id)])
            .arg(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(["--node-id", &id.to_string()])
            .current_dir(&self.dir)
            .env("RUST_LOG", node_log_filter())
            .envs(
                self.env
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone(),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start node {id}"))?;
        children.insert(id, Node { child, pid: None });
        Ok(())
    }

    /// Docker mode: `docker start -a c4aj-nK` (output to `log`), waits until the container
    /// runs (or has exited already), then replays the node's network additions in its fresh
    /// namespace.
    fn start_container(&self, id: NodeId, log: std::fs::File) -> anyhow::Result<Node> {
        std::fs::create_dir_all(self.data_dir(id))?;
        let name = docker::container(id);
        let mut child = Command::new("docker")
            .args(["start", "-a", &name])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot run `docker start -a {name}`"))?;
        let deadline = Instant::now() + CONTAINER_START_LIMIT;
        let pid = loop {
            if child.try_wait()?.is_some() {
                // Exited already (a refusal, or docker failed: see the node's log).
                return Ok(Node { child, pid: None });
            }
            let state = run(&[
                "docker",
                "inspect",
                "--format",
                "{{.State.Running}} {{.State.Pid}}",
                &name,
            ])
            .unwrap_or_default();
            let mut words = state.split_whitespace();
            if words.next() == Some("true")
                && let Some(pid) = words.next().and_then(|p| p.parse::<i32>().ok())
                && pid > 0
            {
                break pid;
            }
            if Instant::now() >= deadline {
                let _ = run(&["docker", "kill", "-s", "KILL", &name]);
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "container {name} not running {CONTAINER_START_LIMIT:?} after `docker start`"
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        let commands = lock_map(&self.network)
            .get(&id)
            .cloned()
            .unwrap_or_default();
        for command in commands {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            if let Err(e) = run_in_pid(pid, &args) {
                tracing::warn!("node {id}: cannot add again to its new namespace: {e:#}");
            }
        }
        Ok(Node {
            child,
            pid: Some(pid),
        })
    }

    /// SIGKILLs node `id` and reaps it; `false` if it was not running (then it is still not
    /// running afterwards).
    pub fn kill(&self, id: NodeId) -> anyhow::Result<bool> {
        let mut children = self.lock();
        if !self.running(&mut children, id) {
            return Ok(false);
        }
        let Some(mut node) = children.remove(&id) else {
            return Ok(false);
        };
        if let Backend::Docker { .. } = self.backend {
            kill_container(id, node)?;
            return Ok(true);
        }
        node.child.kill()?;
        node.child.wait()?;
        Ok(true)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to node `id`, if it is running; `false` if not.
    pub fn signal(&self, id: NodeId, signal: Signal) -> anyhow::Result<bool> {
        let mut children = self.lock();
        if !self.running(&mut children, id) {
            return Ok(false);
        }
        let Some(node) = children.get(&id) else {
            return Ok(false);
        };
        if let Backend::Docker { .. } = self.backend {
            run(&[
                "docker",
                "kill",
                "-s",
                signal.as_str(),
                &docker::container(id),
            ])?;
            return Ok(true);
        }
        let pid = Pid::from_raw(i32::try_from(node.child.id())?);
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
    fn running(&self, children: &mut BTreeMap<NodeId, Node>, id: NodeId) -> bool {
        let Some(node) = children.get_mut(&id) else {
            return false;
        };
        let status = match node.child.try_wait() {
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

    /// Kills every node and removes the namespaces, links and rules; in docker mode the
    /// containers (`compose down -v`) and the network too. Idempotent.
    pub fn teardown(&self) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let mut children = self.lock();
        let nodes = std::mem::take(&mut *children);
        drop(children);
        for (id, mut node) in nodes {
            if let Backend::Docker { .. } = self.backend {
                if let Err(e) = kill_container(id, node) {
                    tracing::warn!("teardown: {e:#}");
                }
            } else {
                let _ = node.child.kill();
                let _ = node.child.wait();
            }
        }
        self.stop_shims();
        if let Backend::Docker { compose, file } = &self.backend {
            let file = file.to_string_lossy();
            let mut down: Vec<&str> = compose.iter().map(String::as_str).collect();
            down.extend([
                "-p",
                docker::PROJECT,
                "-f",
                &file,
                "down",
                "-v",
                "--remove-orphans",
                "-t",
                "0",
            ]);
            if let Err(e) = run(&down) {
                tracing::warn!("teardown: {e:#}");
            }
        }
        Hosts::remove_leftovers();
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

/// Docker mode: `docker kill -s KILL` node `id`'s container and reaps its `docker start -a`
/// client (bounded; the client is killed if it does not return). An error if the container
/// still runs.
fn kill_container(id: NodeId, mut node: Node) -> anyhow::Result<()> {
    let name = docker::container(id);
    let killed = run(&["docker", "kill", "-s", "KILL", &name]);
    let deadline = Instant::now() + CONTAINER_KILL_LIMIT;
    while node.child.try_wait()?.is_none() {
        if Instant::now() >= deadline {
            let _ = node.child.kill();
            let _ = node.child.wait();
            let running = run(&["docker", "inspect", "--format", "{{.State.Running}}", &name])
                .map(|s| s.trim() == "true")
                .unwrap_or(false);
            if running {
                bail!("container {name} still runs after `docker kill -s KILL`: {killed:?}");
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
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
