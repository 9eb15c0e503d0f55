//! The node processes: starting a node (a child in its namespace, or `docker start -a` of its
//! container), killing and signalling it, starting it on damaged data expecting it to exit, and
//! telling which nodes run and which exited without the harness causing it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::namespace::run_in_pid;
use super::{Backend, Hosts, Node, lock_map, netns, node_log_filter, run};
use crate::docker;
use crate::schedule::NodeId;

/// How long a container may take to run after `docker start`.
const CONTAINER_START_LIMIT: Duration = Duration::from_secs(30);
/// How long `docker start -a` may take to return after `docker kill -s KILL`.
const CONTAINER_KILL_LIMIT: Duration = Duration::from_secs(20);

impl Hosts {
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
    pub(super) fn running(&self, children: &mut BTreeMap<NodeId, Node>, id: NodeId) -> bool {
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
}

/// Docker mode: `docker kill -s KILL` node `id`'s container and reaps its `docker start -a`
/// client (bounded; the client is killed if it does not return). An error if the container
/// still runs.
pub(super) fn kill_container(id: NodeId, mut node: Node) -> anyhow::Result<()> {
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
