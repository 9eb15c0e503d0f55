//! A local cluster of real `chat4all` processes in a temporary directory, for benchmarks that
//! kill nodes. Dropping it kills every node and removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A spawned cluster.
pub struct LocalCluster {
    dir: PathBuf,
    binary: PathBuf,
    config: PathBuf,
    /// `(api URL, process)` per node id 1..=n.
    nodes: Vec<(String, Option<Child>)>,
}

fn free_port(udp: bool) -> anyhow::Result<u16> {
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
    /// Writes a cluster file for `n` nodes on free loopback ports and starts them all.
    pub fn start(binary: &Path, n: u64) -> anyhow::Result<LocalCluster> {
        let dir = std::env::temp_dir().join(format!(
            "chat4all-bench-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let mut toml = String::from("[tls]\ndir = \"certs\"\nauto_generate = true\n");
        let mut nodes = Vec::new();
        for id in 1..=n {
            let (api, raft) = (free_port(false)?, free_port(true)?);
            toml.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nraft_addr = \"127.0.0.1:{raft}\"\napi_addr = \"127.0.0.1:{api}\"\ndata_dir = \"data/node{id}\"\n"
            ));
            nodes.push((format!("http://127.0.0.1:{api}"), None));
        }
        let config = dir.join("cluster.toml");
        std::fs::write(&config, toml)?;
        let mut c = LocalCluster {
            dir,
            binary: binary.to_path_buf(),
            config,
            nodes,
        };
        for id in 1..=n {
            c.spawn(id)?;
        }
        Ok(c)
    }

    /// The API URL of node `id`.
    pub fn url(&self, id: u64) -> &str {
        self.nodes
            .get(id as usize - 1)
            .map_or("", |(u, _)| u.as_str())
    }

    /// Node ids whose process is running.
    pub fn live(&self) -> Vec<u64> {
        (1..=self.nodes.len() as u64)
            .filter(|&id| self.nodes[id as usize - 1].1.is_some())
            .collect()
    }

    /// Starts node `id` (again).
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
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        self.nodes[id as usize - 1].1 = Some(child);
        Ok(())
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        if let Some(mut child) = self.nodes[id as usize - 1].1.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Waits until node `id` answers `/ready` with 200 (bounded).
    pub async fn wait_ready(
        &self,
        http: &reqwest::Client,
        id: u64,
        limit: Duration,
    ) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(r) = http
                .get(format!("{}/ready", self.url(id)))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().is_success()
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!(
                    "node {id} not ready after {limit:?}; see {}",
                    self.dir.join(format!("node{id}.log")).display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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
