//! A real cluster for tests: `chat4all` processes spawned with a generated `cluster.toml` in a
//! temp dir, talking real QUIC with mutual TLS, storing in real RocksDB; killed with SIGKILL.
#![allow(dead_code)]

pub mod chat;
pub mod connectors;
pub mod sse;

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One test cluster. Dropping it kills every node.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub nodes: Vec<Node>,
    pub http: reqwest::Client,
    /// Environment every node is spawned with (secrets, the bootstrap admin).
    pub env: Vec<(String, String)>,
}

pub struct Node {
    pub id: u64,
    pub api: String,
    pub child: Option<Child>,
}

/// Ports this test process has handed out. A port is free when picked and bound only when
/// the node starts, so two clusters starting at once in one test binary could both be given
/// a port the kernel handed out twice, and one test would then talk to the other's node.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<(bool, u16)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// A port `bind` finds free that this process has not handed out before.
fn unused_port(udp: bool, bind: impl Fn() -> u16) -> u16 {
    for _ in 0..1000 {
        let port = bind();
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if handed.insert((udp, port)) {
            return port;
        }
    }
    panic!("no port left that this test process has not handed out already");
}

fn free_tcp_port() -> u16 {
    unused_port(false, || {
        TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    })
}

fn free_udp_port() -> u16 {
    unused_port(true, || {
        UdpSocket::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port()
    })
}

/// The value of `series` (a metric's name with its labels, as `/metrics` prints them) in the
/// text of a `/metrics` answer.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The stable code of an error answer (`""` for anything else).
pub fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// Polls `check` every 50 ms until it returns `Some`, failing the test after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    /// Starts `n` nodes for the log API's tests, with `extra` appended to the generated cluster
    /// file, and waits until every node is ready. The log API is open there
    /// (`[auth] log_api = "open"`), so `extra` must not have an `[auth]` table.
    pub async fn start(n: u64, extra: &str) -> Cluster {
        Cluster::start_with_env(n, &format!("[auth]\nlog_api = \"open\"\n\n{extra}"), &[]).await
    }

    /// Like [`Cluster::start`], with `env` set for every node, and the log API as configured
    /// in `extra` (for `admin` tokens only by default).
    pub async fn start_with_env(n: u64, extra: &str, env: &[(&str, &str)]) -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut toml = String::new();
        if n > 1 {
            toml.push_str("[tls]\ndir = \"certs\"\nauto_generate = true\n\n");
        }
        toml.push_str(extra);
        let mut nodes = Vec::new();
        for id in 1..=n {
            let api = format!("127.0.0.1:{}", free_tcp_port());
            let raft = format!("127.0.0.1:{}", free_udp_port());
            toml.push_str(&format!(
                "\n[[nodes]]\nid = {id}\nraft_addr = \"{raft}\"\napi_addr = \"{api}\"\ndata_dir = \"data/node{id}\"\n"
            ));
            nodes.push(Node {
                id,
                api,
                child: None,
            });
        }
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, toml).expect("write config");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client");
        let mut c = Cluster {
            dir,
            config,
            nodes,
            http,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        for id in 1..=n {
            c.spawn(id);
        }
        for id in 1..=n {
            c.wait_ready(id).await;
        }
        c
    }

    /// Spawns node `id` (again), logging to `node<id>.log` in the cluster dir.
    pub fn spawn(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{id}.log")))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_chat4all"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--node-id", &id.to_string()])
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info,openraft=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn chat4all");
        self.node_mut(id).child = Some(child);
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node")
    }

    pub fn api(&self, id: u64) -> String {
        format!(
            "http://{}",
            self.nodes.iter().find(|n| n.id == id).expect("node").api
        )
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            child.kill().expect("SIGKILL");
            child.wait().expect("reap");
        }
    }

    /// SIGKILLs every node, starts them all again, and waits until each is ready.
    pub async fn restart_all(&mut self) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        for &id in &ids {
            self.kill(id);
        }
        for &id in &ids {
            self.spawn(id);
        }
        for &id in &ids {
            self.wait_ready(id).await;
        }
    }

    /// Sends `signal` to node `id`'s process (e.g. SIGSTOP, SIGCONT).
    pub fn signal(&mut self, id: u64, signal: nix::sys::signal::Signal) {
        let child = self.node_mut(id).child.as_ref().expect("node running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        nix::sys::signal::kill(pid, signal).expect("signal");
    }

    /// SIGSTOPs node `id` and waits (bounded) until every thread of it has stopped. A stop
    /// signal takes effect only when one of the process's threads handles it, and the others
    /// run on meanwhile: on a loaded machine a "stopped" leader was seen to commit a write
    /// sent after `kill` returned.
    pub async fn pause(&mut self, id: u64) {
        self.signal(id, nix::sys::signal::Signal::SIGSTOP);
        let pid = self.node_mut(id).child.as_ref().expect("node running").id();
        eventually(
            &format!("every thread of node {id} stopped"),
            Duration::from_secs(10),
            || async move { all_threads_stopped(pid).then_some(()) },
        )
        .await;
    }

    /// Waits (bounded) until node `id`'s process has exited by itself, and reaps it.
    pub async fn wait_exit(&mut self, id: u64, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.node_mut(id).child.take().expect("node running");
        eventually(&format!("node {id} exits"), limit, || {
            let status = child.try_wait().expect("try_wait");
            async move { status }
        })
        .await
    }

    /// Node `id`'s applied Raft index for `partition` of `topic`, from its metrics.
    pub async fn apply_index(&self, id: u64, topic: &str, partition: u32) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.api(id)))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let series =
            format!(r#"chat4all_partition_apply_index{{partition="{partition}",topic="{topic}"}}"#);
        metric(&text, &series)
    }

    /// Waits (bounded by `limit`) until every node reports the same applied index for
    /// `partition` of `topic`: each replica's own copy holds what the others applied.
    pub async fn wait_applied_alike(&self, topic: &str, partition: u32, limit: Duration) {
        let ids: Vec<u64> = self.nodes.iter().map(|n| n.id).collect();
        eventually(
            &format!("every replica of {topic}/{partition} applied the same index"),
            limit,
            || {
                let ids = &ids;
                async move {
                    let mut applied = Vec::new();
                    for &id in ids {
                        applied.push(self.apply_index(id, topic, partition).await?);
                    }
                    applied.iter().all(|&a| a == applied[0]).then_some(())
                }
            },
        )
        .await;
    }

    /// POSTs until the answer is not `UNAVAILABLE` (bounded): that refusal means nothing was
    /// written, so sending again is safe.
    pub async fn post_until_available(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        eventually(
            &format!("POST {path} answered"),
            Duration::from_secs(30),
            || async move {
                let (s, v) = self.post(id, path, body).await;
                (v["error"]["code"] != "UNAVAILABLE").then_some((s, v))
            },
        )
        .await
    }

    /// The data directory of node `id`.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("data/node{id}"))
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    pub async fn wait_ready(&self, id: u64) {
        let url = format!("{}/ready", self.api(id));
        let http = self.http.clone();
        eventually(&format!("node {id} ready"), Duration::from_secs(60), || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http
                    .get(&url)
                    .timeout(Duration::from_secs(2))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            }
        })
        .await;
    }

    pub async fn get(&self, id: u64, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, id, path, None).await
    }

    /// Any method with an optional JSON body.
    pub async fn call(
        &self,
        method: reqwest::Method,
        id: u64,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let (status, _, v) = self.call_as(method, id, path, None, body).await;
        (status, v)
    }

    /// Any method with credentials (`("authorization", "Bearer ...")` or `("x-api-key", k)`)
    /// and an optional JSON body; returns the status, the headers and the JSON body.
    pub async fn call_as(
        &self,
        method: reqwest::Method,
        id: u64,
        path: &str,
        credentials: Option<(&str, &str)>,
        body: Option<&Value>,
    ) -> (u16, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.api(id)));
        if let Some((name, value)) = credentials {
            req = req.header(name, value);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let r = req.send().await.expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    /// Logs in with a password through `node` (`POST /v1/auth/token`), waiting for the user to
    /// exist (the bootstrap admin is created once the nodes have a controller leader);
    /// returns the token response.
    pub async fn login(&self, node: u64, email: &str, password: &str) -> Value {
        eventually(
            &format!("{email} logs in"),
            Duration::from_secs(30),
            || async {
                let r = self
                    .http
                    .post(format!("{}/v1/auth/token", self.api(node)))
                    .json(
                        &json!({"grant_type": "password", "username": email, "password": password}),
                    )
                    .send()
                    .await
                    .ok()?;
                if r.status() != 200 {
                    return None;
                }
                r.json::<Value>().await.ok()
            },
        )
        .await
    }

    /// Any method with a bearer token and an optional JSON body.
    pub async fn call_bearer(
        &self,
        method: reqwest::Method,
        node: u64,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let auth = format!("Bearer {token}");
        let (s, _, v) = self
            .call_as(method, node, path, Some(("authorization", &auth)), body)
            .await;
        (s, v)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self, id: u64) -> String {
        self.http
            .get(format!("{}/metrics", self.api(id)))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .unwrap_or_default()
    }

    pub async fn post(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(id, path, body.to_string()).await
    }

    pub async fn post_raw(&self, id: u64, path: &str, body: String) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.api(id)))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a topic through node `via` and waits until every partition has a leader.
    pub async fn create_topic(
        &self,
        via: u64,
        name: &str,
        partitions: u32,
        rf: u32,
        extra: Value,
    ) -> Value {
        let mut body = json!({"name": name, "partitions": partitions, "replication_factor": rf});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (status, v) = self.post(via, "/v1/topics", &body).await;
        assert_eq!(status, 201, "create topic: {v}");
        self.wait_leaders(via, name).await
    }

    /// Waits until node `via` sees a leader for every partition of `topic`; returns the topic.
    pub async fn wait_leaders(&self, via: u64, topic: &str) -> Value {
        eventually(
            &format!("leaders of {topic}"),
            Duration::from_secs(30),
            || async move {
                let (s, v) = self.get(via, &format!("/v1/topics/{topic}")).await;
                let parts = v["partitions"].as_array()?;
                (s == 200 && parts.iter().all(|p| p["leader"].is_u64())).then_some(v.clone())
            },
        )
        .await
    }

    /// The leader of a partition as node `via` sees it.
    pub async fn leader(&self, via: u64, topic: &str, partition: usize) -> u64 {
        let v = self.wait_leaders(via, topic).await;
        v["partitions"][partition]["leader"]
            .as_u64()
            .expect("leader")
    }

    /// Every record of a partition, read through node `via` from offset 0 (or the log start).
    pub async fn read_all(&self, via: u64, topic: &str, partition: u32) -> Vec<(u64, Value)> {
        let mut out = Vec::new();
        let mut offset: Option<u64> = None;
        loop {
            let q = offset.map_or(String::new(), |o| format!("offset={o}&"));
            let path =
                format!("/v1/topics/{topic}/partitions/{partition}/records?{q}max_records=1000");
            // A read during an election may be refused (UNAVAILABLE); reads are safe to retry.
            let (s, v) = eventually("a fetch answered", Duration::from_secs(30), || {
                let path = &path;
                async move {
                    let (s, v) = self.get(via, path).await;
                    (v["error"]["code"] != "UNAVAILABLE").then_some((s, v))
                }
            })
            .await;
            assert_eq!(s, 200, "fetch: {v}");
            let recs = v["records"].as_array().expect("records");
            for r in recs {
                out.push((r["offset"].as_u64().expect("offset"), r["value"].clone()));
            }
            let hw = v["high_watermark"].as_u64().expect("hw");
            let next = out
                .last()
                .map_or(v["log_start_offset"].as_u64().expect("lso"), |(o, _)| o + 1);
            if next >= hw || recs.is_empty() {
                return out;
            }
            offset = Some(next);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            // Keep the whole logs of a failed test; print the tail without openraft's
            // per-RPC noise about a node the test killed.
            let keep = std::env::temp_dir().join(format!(
                "chat4all-failed-{}-{}",
                std::process::id(),
                std::thread::current()
                    .name()
                    .unwrap_or("test")
                    .replace("::", "-")
            ));
            let _ = std::fs::create_dir_all(&keep);
            for n in &self.nodes {
                let path = self.dir.path().join(format!("node{}.log", n.id));
                let _ = std::fs::copy(&path, keep.join(format!("node{}.log", n.id)));
                eprintln!(
                    "---- node {} log (tail; all of it in {}) ----",
                    n.id,
                    keep.display()
                );
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| !l.contains("openraft::"))
                    .take(40)
                    .collect();
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// `(partition, offset)` of each record a produce answer acknowledged.
pub fn offsets(v: &Value) -> Vec<(u64, u64)> {
    v["offsets"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    (
                        o["partition"].as_u64().unwrap_or(u64::MAX),
                        o["offset"].as_u64().unwrap_or(u64::MAX),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether every thread of process `pid` is stopped (state `T` in `/proc/<pid>/task/*/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|stat| {
                // The state follows the command name, which is in parentheses.
                let rest = &stat[stat.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
            })
            .unwrap_or(false)
    })
}
