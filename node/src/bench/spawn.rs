//! A local cluster of real `chat4all` processes in a temporary directory, for benchmarks that
//! kill nodes. Dropping it kills every node and removes the directory, on success, on error
//! and on unwinding alike.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A spawned cluster of nodes with ids `1..=n`.
pub struct LocalCluster {
    dir: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    /// `(api URL, process)` for node id `index + 1`.
    nodes: Vec<(String, Option<Child>)>,
    /// Environment of every node.
    env: Vec<(String, String)>,
}

fn free_port(udp: bool) -> anyhow::Result<u16> {
    // Bound and released at once: another process could take the port before the node binds
    // it, a race accepted here as in the integration tests.
    Ok(if udp {
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    } else {
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    })
}

impl LocalCluster {
    /// Writes a cluster file for `n` nodes on free loopback ports (TCP for the API, UDP for
    /// QUIC) into a fresh temporary directory and starts every node there.
    /// `extra` is added to the cluster file and `env` set for every node.
    pub fn start_with(
        binary: &Path,
        n: u64,
        extra: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<LocalCluster> {
        let dir = std::env::temp_dir().join(format!(
            "chat4all-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        // From here on the guard owns the directory, so an early error still removes it.
        let mut c = LocalCluster {
            config: dir.join("cluster.toml"),
            dir,
            binary: binary.to_path_buf(),
            nodes: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut toml = String::from("[tls]\ndir = \"certs\"\nauto_generate = true\n");
        toml.push_str(extra);
        for id in 1..=n {
            let (api, raft) = (free_port(false)?, free_port(true)?);
            toml.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nraft_addr = \"127.0.0.1:{raft}\"\napi_addr = \"127.0.0.1:{api}\"\ndata_dir = \"data/node{id}\"\n"
            ));
            c.nodes.push((format!("http://127.0.0.1:{api}"), None));
        }
        std::fs::write(&c.config, toml)?;
        for id in 1..=n {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// The API URL of node `id` (empty for an unknown id).
    pub fn url(&self, id: u64) -> &str {
        self.slot(id).map_or("", |(u, _)| u.as_str())
    }

    fn slot(&self, id: u64) -> Option<&(String, Option<Child>)> {
        self.nodes.get(usize::try_from(id).ok()?.checked_sub(1)?)
    }

    fn child_mut(&mut self, id: u64) -> anyhow::Result<&mut Option<Child>> {
        let i = usize::try_from(id).ok().and_then(|i| i.checked_sub(1));
        let slot = i.and_then(|i| self.nodes.get_mut(i));
        Ok(&mut slot.with_context(|| format!("no node {id}"))?.1)
    }

    /// Process ids of the running nodes.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter_map(|(_, c)| c.as_ref().map(Child::id))
            .collect()
    }

    /// The process id of node `id`, if it is running.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.slot(id)?.1.as_ref().map(Child::id)
    }

    /// What node `id` has logged so far (its stderr, across restarts).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{id}.log"))).unwrap_or_default()
    }

    /// Node ids whose process is running.
    pub fn live(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|&id| self.slot(id).is_some_and(|(_, c)| c.is_some()))
            .collect()
    }

    /// Starts node `id` (again), its stderr appended to `node<id>.log`.
    pub fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node{id}.log")))?;
        let child = Command::new(&self.binary)
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--node-id", &id.to_string()])
            .current_dir(&self.dir)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        *self.child_mut(id)? = Some(child);
        Ok(())
    }

    /// SIGKILLs node `id` (`Child::kill` is SIGKILL on Unix) and reaps it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut child) = self.child_mut(id)?.take() {
            child.kill().with_context(|| format!("SIGKILL node {id}"))?;
            child.wait().with_context(|| format!("reap node {id}"))?;
        }
        Ok(())
    }

    /// Waits until node `id` answers `/ready` with 200 (bounded). Fails early if the process
    /// has exited.
    pub async fn wait_ready(
        &mut self,
        http: &reqwest::Client,
        id: u64,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        let url = format!("{}/ready", self.url(id));
        loop {
            if let Ok(r) = http.get(&url).timeout(Duration::from_secs(2)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if let Some(child) = self.child_mut(id)?.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("node {id} exited ({status}) before it was ready");
            }
            if start.elapsed() > limit {
                bail!("node {id} not ready after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Copies the last `lines` lines of every node's log to stderr (before the directory goes).
    pub fn print_log_tails(&self, lines: usize) {
        for id in 1..=self.nodes.len() {
            let log = self.log(id as u64);
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            eprintln!("---- node {id} log (last {lines} lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// Starts `nodes` nodes of `binary` (default: this executable) with the log API open (no
/// credentials), runs `measure` on them with an HTTP client, and prints the nodes' log tails if
/// it fails. The cluster is gone however this returns.
pub async fn with_cluster<T>(
    binary: Option<&Path>,
    nodes: u64,
    measure: impl AsyncFnOnce(&mut LocalCluster, &reqwest::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    with_cluster_env(binary, nodes, OPEN_LOG_API, &[], measure).await
}

/// The cluster file's table for benchmarks of the log API: no credentials, as a Kafka
/// listener without SASL.
pub const OPEN_LOG_API: &str = "[auth]\nlog_api = \"open\"\n";

/// Like [`with_cluster`], with `extra` (instead of [`OPEN_LOG_API`]) in the cluster file and
/// `env` for every node.
pub async fn with_cluster_env<T>(
    binary: Option<&Path>,
    nodes: u64,
    extra: &str,
    env: &[(&str, &str)],
    measure: impl AsyncFnOnce(&mut LocalCluster, &reqwest::Client) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let binary = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe().context("locate this binary")?,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut cluster = LocalCluster::start_with(&binary, nodes, extra, env)?;
    let res = measure(&mut cluster, &http).await;
    if res.is_err() {
        cluster.print_log_tails(30);
    }
    res
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
