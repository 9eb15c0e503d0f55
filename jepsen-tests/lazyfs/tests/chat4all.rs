//! The real thing: a chat4all node (RocksDB) with its data dir on the shim; produce, SIGKILL,
//! cut, restart; every acknowledged record must still be there.
//!
//! Uses the node binary at $C4AJ_CHAT4ALL_BIN, default
//! /var/cache/chat4all/target/release/chat4all (skipped if missing).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{skip, Mounted};
use serde_json::{json, Value};

const TOPIC: &str = "powercut";
const PARTITIONS: u64 = 2;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns (status, body). Errors (refused, reset, timeout) are Err.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end: {text:?}")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    ))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

struct Node {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    api: String,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .arg("--node-id")
            .arg("1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn wait_ready(&mut self, within: Duration) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http(&self.api, "GET", "/ready", None) {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!(
                        "the node exited ({st}) before /ready; log:\n{}",
                        self.tail()
                    );
                }
            }
            assert!(
                start.elapsed() < within,
                "the node was not ready within {within:?}; log:\n{}",
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }

    fn tail(&self) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Acknowledged records: (partition, offset) -> value.
type Acked = BTreeMap<(u64, u64), String>;

fn produce(api: &str, i: u64, acked: &Mutex<Acked>) -> bool {
    let partition = i % PARTITIONS;
    let values: Vec<String> = (0..3).map(|j| format!("v-{i}-{j}")).collect();
    let records: Vec<Value> = values
        .iter()
        .map(|v| json!({"value": v, "partition": partition}))
        .collect();
    let path = format!("/v1/topics/{TOPIC}/records");
    match http(api, "POST", &path, Some(&json!({ "records": records }))) {
        Ok((200, body)) => {
            let offsets = body["offsets"].as_array().cloned().unwrap_or_default();
            assert_eq!(offsets.len(), values.len(), "{body}");
            let mut a = acked.lock().unwrap();
            for (o, v) in offsets.iter().zip(values) {
                let p = o["partition"].as_u64().unwrap();
                let off = o["offset"].as_u64().unwrap();
                assert_eq!(p, partition, "{body}");
                a.insert((p, off), v);
            }
            true
        }
        _ => false,
    }
}

fn fetch_all(api: &str, partition: u64) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let path = format!(
            "/v1/topics/{TOPIC}/partitions/{partition}/records?offset={offset}&max_records=500"
        );
        let (status, body) = http(api, "GET", &path, None).unwrap();
        assert_eq!(status, 200, "{body}");
        let recs = body["records"].as_array().cloned().unwrap_or_default();
        for r in &recs {
            let off = r["offset"].as_u64().unwrap();
            out.insert(off, r["value"].as_str().unwrap_or_default().to_string());
            offset = off + 1;
        }
        if recs.is_empty() || offset >= body["high_watermark"].as_u64().unwrap_or(0) {
            return out;
        }
    }
}

fn write_config(dir: &Path, data: &Path, raft: u16, api: u16) -> PathBuf {
    let config = dir.join("c4aj-lazyfs-node.toml");
    std::fs::write(
        &config,
        format!(
            "[tls]\ndir = \"{}\"\nauto_generate = true\n\n[auth]\nlog_api = \"open\"\n\n\
             [limits]\nwrite_timeout_ms = 4000\n\n\
             [[nodes]]\nid = 1\nraft_addr = \"127.0.0.1:{raft}\"\napi_addr = \"127.0.0.1:{api}\"\n\
             data_dir = \"{}\"\n",
            dir.join("certs").display(),
            data.display()
        ),
    )
    .unwrap();
    config
}

#[test]
fn chat4all_survives_kill_and_power_cut_with_every_acknowledged_record() {
    if skip("chat4all_power_cut") {
        return;
    }
    let bin = PathBuf::from(
        std::env::var("C4AJ_CHAT4ALL_BIN")
            .unwrap_or_else(|_| "/var/cache/chat4all/target/release/chat4all".into()),
    );
    if !bin.exists() {
        common::say_skipped(&format!(
            "chat4all_power_cut: no node binary at {}",
            bin.display()
        ));
        return;
    }
    let m = Mounted::new("chat4all");
    let api = format!("127.0.0.1:{}", free_port());
    let raft = free_port();
    let api_port: u16 = api.rsplit(':').next().unwrap().parse().unwrap();
    let config = write_config(&m.dir, &m.path("node1"), raft, api_port);
    let mut node = Node {
        bin,
        config,
        log: m.dir.join("node-1.log"),
        api: api.clone(),
        child: None,
    };
    node.start();
    node.wait_ready(Duration::from_secs(60));
    let (status, body) = http(
        &api,
        "POST",
        "/v1/topics",
        Some(&json!({"name": TOPIC, "partitions": PARTITIONS, "replication_factor": 1})),
    )
    .unwrap();
    assert_eq!(status, 201, "{body}");

    let acked = Arc::new(Mutex::new(Acked::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut rounds = 0;
    for round in 0..5u64 {
        rounds += 1;
        // Producers write while the node is SIGKILLed under them.
        let producers: Vec<_> = (0..12u64)
            .map(|t| {
                let (api, acked, stop) = (api.clone(), acked.clone(), stop.clone());
                std::thread::spawn(move || {
                    let mut i = round * 1_000_000 + t * 100_000;
                    let mut fails = 0;
                    while !stop.load(Ordering::Relaxed) && fails < 50 {
                        if produce(&api, i, &acked) {
                            fails = 0;
                        } else {
                            fails += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        let before = acked.lock().unwrap().len();
        node.sigkill();
        stop.store(true, Ordering::Relaxed);
        for p in producers {
            p.join().unwrap();
        }
        let pending = m.ctl("stats");
        let pending_bytes: u64 = pending
            .iter()
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        m.cut();
        stop.store(false, Ordering::Relaxed);
        node.start();
        node.wait_ready(Duration::from_secs(120));
        let acked_now = acked.lock().unwrap().clone();
        let mut found = 0;
        let mut missing = Vec::new();
        let mut wrong = Vec::new();
        for p in 0..PARTITIONS {
            let got = fetch_all(&api, p);
            for ((ap, off), v) in acked_now.range((p, 0)..(p + 1, 0)) {
                match got.get(off) {
                    Some(g) if g == v => found += 1,
                    Some(g) => wrong.push(format!("p{ap}@{off}: acked {v}, found {g}")),
                    None => missing.push(format!("p{ap}@{off}: {v}")),
                }
            }
        }
        println!(
            "round {round}: {} acknowledged ({before} before the kill), {found} found after \
             SIGKILL + cut ({pending_bytes} bytes of unsynced data reverted in {:?}) + restart",
            acked_now.len(),
            pending
                .iter()
                .filter_map(|l| l.rsplit('/').next())
                .collect::<Vec<_>>()
        );
        assert!(
            missing.is_empty() && wrong.is_empty(),
            "acknowledged records lost or changed after a power cut: missing {missing:?}, \
             wrong {wrong:?}; node log:\n{}",
            node.tail()
        );
        assert!(
            acked_now.len() > 100,
            "too little was acknowledged to mean anything"
        );
    }
    assert_eq!(rounds, 5);
    node.sigkill();
}
