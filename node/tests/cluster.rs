//! Three real `chat4all` processes over QUIC with mutual TLS and RocksDB: forwarding, metadata
//! known at once everywhere, SIGKILL of leaders during writes, a full-cluster restart, and
//! retention. Idempotent producers are in `producers.rs`, cut-off nodes in `forwarding.rs`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, eventually, offsets};
use serde_json::{Value, json};

#[tokio::test]
async fn every_node_serves_every_request() {
    let c = Cluster::start(3, "").await;
    c.create_topic(2, "t", 3, 3, json!({})).await;
    let mut written: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for via in 1..=3u64 {
        for p in 0..3u64 {
            let value = format!("via{via}-p{p}");
            let (s, v) = c
                .post(
                    via,
                    "/v1/topics/t/records",
                    &json!({"records": [{"value": value, "partition": p}]}),
                )
                .await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(
                offsets(&v),
                vec![(p, written.get(&p).map_or(0, Vec::len) as u64)],
                "dense offsets: {v}"
            );
            written.entry(p).or_default().push(value);
        }
    }
    for via in 1..=3u64 {
        let (s, topic) = c.get(via, "/v1/topics/t").await;
        assert_eq!(s, 200, "{topic}");
        for p in 0..3u64 {
            let part = &topic["partitions"][p as usize];
            let mut replicas: Vec<u64> = part["replicas"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64)
                .collect();
            replicas.sort_unstable();
            assert_eq!(replicas, [1, 2, 3], "{topic}");
            assert_eq!(part["high_watermark"], json!(3), "{topic}");
            assert_eq!(part["log_start_offset"], json!(0), "{topic}");
            let got: Vec<Value> = c
                .read_all(via, "t", p as u32)
                .await
                .into_iter()
                .map(|(_, v)| v)
                .collect();
            let want: Vec<Value> = written[&p].iter().map(|s| json!(s)).collect();
            assert_eq!(got, want, "partition {p} read through node {via}");
        }
    }
}

/// Regression: a follower applies controller entries only after the leader tells it they
/// committed, so a node asked right after a topic or producer was created through another node
/// used to answer UNKNOWN_TOPIC / UNKNOWN_PRODUCER from its stale copy.
#[tokio::test]
async fn metadata_created_through_one_node_is_known_at_once_by_every_node() {
    let c = Cluster::start(3, "").await;
    for round in 0..6u64 {
        let via = round % 3 + 1;
        let others: Vec<u64> = (1..=3).filter(|&n| n != via).collect();
        let topic = format!("fresh{round}");
        let (s, v) = c
            .post(
                via,
                "/v1/topics",
                &json!({"name": topic, "partitions": 1, "replication_factor": 3}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        for &n in &others {
            let (s, v) = c.get(n, "/v1/topics").await;
            assert_eq!(s, 200, "{v}");
            assert!(
                v["topics"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t["name"] == json!(topic))),
                "node {n} lists {topic} right after node {via} created it: {v}"
            );
            let (s, v) = c.get(n, &format!("/v1/topics/{topic}")).await;
            assert_eq!(s, 200, "node {n} describes {topic}: {v}");
        }
        let (s, p) = c.post(via, "/v1/producers", &json!({})).await;
        assert_eq!(s, 201, "{p}");
        for (seq, &n) in others.iter().enumerate() {
            let body = json!({
                "records": [{"value": format!("r{round}n{n}"), "partition": 0}],
                "producer": {"id": p["id"], "epoch": p["epoch"], "sequence": seq},
            });
            let (s, v) = c
                .post(n, &format!("/v1/topics/{topic}/records"), &body)
                .await;
            assert_eq!(
                (s, offsets(&v)),
                (200, vec![(0, seq as u64)]),
                "node {n} takes a batch of the producer and topic node {via} just created: {v}"
            );
        }
    }
}

/// What writers saw acknowledged: value → (partition, offset).
type Acked = Arc<std::sync::Mutex<HashMap<String, (u64, u64)>>>;

/// Writes unique values through every live node until `stop`, remembering every 200.
fn spawn_writers(
    c: &Cluster,
    topic: &str,
    partitions: u64,
    stop: Arc<AtomicBool>,
    acked: Acked,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4u64)
        .map(|w| {
            let urls: Vec<String> = (1..=c.nodes.len() as u64).map(|id| c.api(id)).collect();
            let url_topic = topic.to_string();
            let (stop, acked) = (stop.clone(), acked.clone());
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("client");
            tokio::spawn(async move {
                // Bounded: at most 5000 requests per writer.
                for i in 0..5000u64 {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let value = format!("w{w}-{i}");
                    let url = format!(
                        "{}/v1/topics/{url_topic}/records",
                        urls[(i as usize + w as usize) % urls.len()]
                    );
                    let body = json!({"records": [{"value": value, "partition": i % partitions}]});
                    let Ok(r) = http.post(url).json(&body).send().await else {
                        continue;
                    };
                    if r.status().as_u16() == 200 {
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        if let Some(&(p, o)) = offsets(&v).first() {
                            acked.lock().expect("lock").insert(value, (p, o));
                        }
                    }
                }
            })
        })
        .collect()
}

/// Every acknowledged value is at its offset on every node, offsets are dense, and no value
/// appears twice (writers never resend).
async fn check_history(
    c: &Cluster,
    topic: &str,
    partitions: u64,
    acked: &HashMap<String, (u64, u64)>,
) {
    for via in 1..=c.nodes.len() as u64 {
        for p in 0..partitions {
            let records = c.read_all(via, topic, p as u32).await;
            for (i, (offset, _)) in records.iter().enumerate() {
                assert_eq!(
                    *offset, i as u64,
                    "partition {p} via node {via}: offsets are dense from 0"
                );
            }
            let mut seen = HashMap::new();
            for (offset, v) in &records {
                let s = v.as_str().unwrap_or_default().to_string();
                assert!(
                    seen.insert(s.clone(), *offset).is_none(),
                    "{s} stored twice in partition {p}"
                );
            }
            for (value, &(ap, ao)) in acked.iter().filter(|(_, (ap, _))| *ap == p) {
                assert_eq!(
                    seen.get(value),
                    Some(&ao),
                    "acknowledged {value} must be at {ap}/{ao} on node {via}"
                );
            }
        }
    }
}

#[tokio::test]
async fn acknowledged_records_survive_leader_kills_during_writes() {
    let mut c = Cluster::start(3, "[limits]\nwrite_timeout_ms = 3000\n").await;
    c.create_topic(1, "kill", 2, 3, json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let writers = spawn_writers(&c, "kill", 2, stop.clone(), acked.clone());

    for round in 0..3 {
        let before = acked.lock().expect("lock").len();
        eventually(
            &format!("writes acknowledged before kill {round}"),
            Duration::from_secs(30),
            || {
                let n = acked.lock().map(|a| a.len()).unwrap_or(0);
                async move { (n >= before + 50).then_some(()) }
            },
        )
        .await;
        let victim = c.leader((round % 3) + 1, "kill", round as usize % 2).await;
        c.kill(victim);
        let after_kill = acked.lock().expect("lock").len();
        eventually(
            &format!("writes acknowledged after killing node {victim}"),
            Duration::from_secs(30),
            || {
                let n = acked.lock().map(|a| a.len()).unwrap_or(0);
                async move { (n >= after_kill + 50).then_some(()) }
            },
        )
        .await;
        c.spawn(victim);
        c.wait_ready(victim).await;
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 300,
        "only {} writes acknowledged",
        acked.len()
    );
    c.wait_leaders(1, "kill").await;
    check_history(&c, "kill", 2, &acked).await;
}

#[tokio::test]
async fn a_full_cluster_restart_keeps_every_record() {
    let mut c = Cluster::start(3, "").await;
    c.create_topic(3, "all", 3, 3, json!({})).await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Acked = Arc::default();
    let writers = spawn_writers(&c, "all", 3, stop.clone(), acked.clone());
    eventually("200 writes acknowledged", Duration::from_secs(60), || {
        let n = acked.lock().map(|a| a.len()).unwrap_or(0);
        async move { (n >= 200).then_some(()) }
    })
    .await;
    // SIGKILL every node while writes are in flight, then bring them all back.
    for id in 1..=3 {
        c.kill(id);
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    for id in 1..=3 {
        c.spawn(id);
    }
    for id in 1..=3 {
        c.wait_ready(id).await;
    }
    let acked = acked.lock().expect("lock").clone();
    check_history(&c, "all", 3, &acked).await;
    let (s, topics) = c.get(2, "/v1/topics").await;
    assert_eq!(
        (s, topics["topics"].as_array().map(Vec::len)),
        (200, Some(1)),
        "topic metadata survives: {topics}"
    );
}

#[tokio::test]
async fn retention_by_bytes_and_time_advances_the_log_start_on_every_replica() {
    let c = Cluster::start(3, "[retention]\ncheck_interval_ms = 100\n").await;
    c.create_topic(1, "bytes", 1, 3, json!({"retention_bytes": 4096}))
        .await;
    c.create_topic(1, "time", 1, 3, json!({"retention_ms": 1}))
        .await;
    for _ in 0..40 {
        let (s, v) = c
            .post(
                1,
                "/v1/topics/bytes/records",
                &json!({"records": [{"value": "x".repeat(500), "partition": 0}]}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    let (s, v) = c
        .post(
            1,
            "/v1/topics/time/records",
            &json!({"records": [{"value": "old"}, {"value": "old"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    for via in 1..=3u64 {
        // 40 records of 500 bytes under a 4096-byte limit: at most 8 stay, and not much fewer.
        let lso = eventually(
            "the byte limit advances the log start",
            Duration::from_secs(30),
            || {
                let c = &c;
                async move {
                    let (_, t) = c.get(via, "/v1/topics/bytes").await;
                    let lso = t["partitions"][0]["log_start_offset"].as_u64()?;
                    (40 - lso.min(40) <= 8).then_some(lso)
                }
            },
        )
        .await;
        assert!(
            40 - lso >= 6,
            "node {via} deleted too much: only {} records kept",
            40 - lso
        );
        let (s, v) = c
            .get(via, "/v1/topics/bytes/partitions/0/records?offset=0")
            .await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (416, Some("OFFSET_OUT_OF_RANGE")),
            "{v}"
        );
        assert!(
            v["error"]["details"][0]["log_start_offset"].as_u64() >= Some(lso),
            "{v}"
        );
        eventually(
            "records older than retention_ms go",
            Duration::from_secs(30),
            || {
                let c = &c;
                async move {
                    let (_, t) = c.get(via, "/v1/topics/time").await;
                    (t["partitions"][0]["log_start_offset"].as_u64() == Some(2)).then_some(())
                }
            },
        )
        .await;
    }
}
