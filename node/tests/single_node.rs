//! The single-node default and the API's answers to bad input, against the real binary.

mod common;

use std::time::Duration;

use common::{Cluster, eventually};
use serde_json::{Value, json};

/// `chat4all serve` with no configuration: one node, data in ./data, API on 127.0.0.1:8080.
#[tokio::test]
async fn no_config_serves_a_single_node_cluster_on_8080_with_data_in_dot_data() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat4all"))
        .arg("serve")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let http = reqwest::Client::new();
    let ready = eventually("default node ready", Duration::from_secs(60), || {
        let http = http.clone();
        async move {
            let r = http.get("http://127.0.0.1:8080/ready").send().await.ok()?;
            r.status().is_success().then_some(())
        }
    })
    .await;
    // As the README's credentials section: the generated admin's password from
    // ./data/admin-password, a token, then the log API.
    let password_file = dir.path().join("data/admin-password");
    let token = eventually("the first admin signs in", Duration::from_secs(30), || {
        let (http, password_file) = (http.clone(), password_file.clone());
        async move {
            let password = std::fs::read_to_string(password_file).ok()?;
            let r = http
                .post("http://127.0.0.1:8080/v1/auth/token")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(
                    serde_urlencoded::to_string([
                        ("grant_type", "password"),
                        ("username", "admin@chat4all.local"),
                        ("password", password.as_str()),
                    ])
                    .expect("form"),
                )
                .send()
                .await
                .ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            v["access_token"].as_str().map(String::from)
        }
    })
    .await;
    let topic = json!({"name": "t", "partitions": 1, "replication_factor": 1});
    let anonymous = http
        .post("http://127.0.0.1:8080/v1/topics")
        .json(&topic)
        .send()
        .await
        .expect("create");
    let created = http
        .post("http://127.0.0.1:8080/v1/topics")
        .bearer_auth(&token)
        .json(&topic)
        .send()
        .await
        .expect("create");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ready, ());
    assert_eq!(anonymous.status().as_u16(), 401);
    assert_eq!(created.status().as_u16(), 201);
    assert!(dir.path().join("data/db").is_dir(), "data lives in ./data");
}

#[tokio::test]
async fn bad_input_gets_a_stable_4xx_and_writes_nothing() {
    let c = Cluster::start(1, "[limits]\nmax_record_bytes = 1024\n").await;
    c.create_topic(1, "t", 2, 1, json!({})).await;
    let (s, v) = c
        .post(
            1,
            "/v1/topics/t/records",
            &json!({"records": [{"value": "keep"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");

    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "POST",
            "/v1/topics/t/records",
            "{not json".into(),
            400,
            "INVALID_JSON",
        ),
        (
            "POST",
            "/v1/topics/t/records",
            json!({"records": []}).to_string(),
            400,
            "INVALID_RECORDS",
        ),
        (
            "POST",
            "/v1/topics/nope/records",
            json!({"records": [{"value": 1}]}).to_string(),
            404,
            "UNKNOWN_TOPIC",
        ),
        (
            "POST",
            "/v1/topics/t/records",
            json!({"records": [{"value": 1}, {"value": 2, "partition": 2}]}).to_string(),
            400,
            "INVALID_PARTITION",
        ),
        (
            "POST",
            "/v1/topics/t/records",
            json!({"records": [{"value": 1}, {"value": "x".repeat(2000)}]}).to_string(),
            413,
            "RECORD_TOO_LARGE",
        ),
        (
            "POST",
            "/v1/topics/t/records",
            json!({"records": [{"key": "k"}]}).to_string(),
            400,
            "INVALID_RECORD",
        ),
        (
            "POST",
            "/v1/topics",
            json!({"name": "bad name", "partitions": 1}).to_string(),
            400,
            "INVALID_TOPIC_NAME",
        ),
        (
            "POST",
            "/v1/topics",
            json!({"name": "t2", "partitions": 1, "replication_factor": 2}).to_string(),
            400,
            "INVALID_REPLICATION_FACTOR",
        ),
        (
            "POST",
            "/v1/topics",
            json!({"name": "t2", "partitions": 0}).to_string(),
            400,
            "INVALID_PARTITIONS",
        ),
        (
            "POST",
            "/v1/topics",
            json!({"name": "t", "partitions": 1}).to_string(),
            409,
            "TOPIC_EXISTS",
        ),
        (
            "POST",
            "/v1/topics/t/records",
            json!({"records": [{"value": 1}], "producer": {"id": 999, "epoch": 0, "sequence": 0}})
                .to_string(),
            400,
            "UNKNOWN_PRODUCER",
        ),
        (
            "GET",
            "/v1/topics/t/partitions/0/records?offset=abc",
            String::new(),
            400,
            "INVALID_OFFSET",
        ),
        (
            "GET",
            "/v1/topics/t/partitions/x/records",
            String::new(),
            400,
            "INVALID_PARTITION",
        ),
        (
            "GET",
            "/v1/topics/t/partitions/9/records",
            String::new(),
            404,
            "UNKNOWN_PARTITION",
        ),
        (
            "GET",
            "/v1/topics/t/partitions/0/records?offset=99",
            String::new(),
            416,
            "OFFSET_OUT_OF_RANGE",
        ),
        (
            "GET",
            "/v1/topics/nope",
            String::new(),
            404,
            "UNKNOWN_TOPIC",
        ),
        ("GET", "/v1/nothing-here", String::new(), 404, "NOT_FOUND"),
    ];
    for (method, path, body, status, code) in cases {
        let (s, v) = if method == "GET" {
            c.get(1, path).await
        } else {
            c.post_raw(1, path, body.clone()).await
        };
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path} {body}: {v}"
        );
        assert!(
            !v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "a message to act on: {v}"
        );
    }
    // The 416 tells the valid range.
    let (_, v) = c
        .get(1, "/v1/topics/t/partitions/0/records?offset=99")
        .await;
    assert!(v["error"]["details"][0]["high_watermark"].is_u64(), "{v}");

    // Nothing but the first record was written, and only one topic exists.
    let total: usize = [0, 1].iter().map(|_| 0).sum::<usize>()
        + c.read_all(1, "t", 0).await.len()
        + c.read_all(1, "t", 1).await.len();
    assert_eq!(total, 1);
    let (_, topics) = c.get(1, "/v1/topics").await;
    assert_eq!(
        topics["topics"].as_array().map(Vec::len),
        Some(1),
        "{topics}"
    );
    let (s, _) = c.get(1, "/health").await;
    assert_eq!(s, 200, "the node is still up");
}

#[tokio::test]
async fn payload_forms_round_trip_and_keys_place_like_kafka() {
    let c = Cluster::start(1, "").await;
    c.create_topic(1, "p", 12, 1, json!({})).await;
    let records = json!([
        {"key": "foobar", "value": "text", "headers": {"h": "v"}},
        {"key": "foobar", "value": {"json": [1, 2]}},
        {"key": "foobar", "value": "AAEC/w==", "value_encoding": "base64"},
    ]);
    let (s, v) = c
        .post(1, "/v1/topics/p/records", &json!({ "records": records }))
        .await;
    assert_eq!(s, 200, "{v}");
    // toPositive(murmur2("foobar")) % 12, as Kafka's Java client computes it.
    let want = (1_357_151_166u32 % 12) as u64;
    let offsets = v["offsets"].as_array().expect("offsets");
    assert!(offsets.iter().all(|o| o["partition"] == want), "{v}");
    let (_, f) = c
        .get(1, &format!("/v1/topics/p/partitions/{want}/records"))
        .await;
    let got = f["records"].as_array().expect("records");
    assert_eq!(got.len(), 3, "{f}");
    assert_eq!(got[0]["value"], "text");
    assert_eq!(got[0]["headers"]["h"], "v");
    assert_eq!(got[1]["value"], json!({"json": [1, 2]}));
    assert_eq!(
        (got[2]["value"].clone(), got[2]["value_encoding"].clone()),
        (json!("AAEC/w=="), json!("base64"))
    );
    assert!(
        got.iter()
            .all(|r| r["timestamp"].as_i64().is_some_and(|t| t > 0))
    );
    let offs: Vec<Value> = got.iter().map(|r| r["offset"].clone()).collect();
    assert_eq!(offs, [json!(0), json!(1), json!(2)]);
}

#[tokio::test]
async fn long_poll_returns_a_record_committed_while_waiting() {
    let c = Cluster::start(1, "").await;
    c.create_topic(1, "lp", 1, 1, json!({})).await;
    let poll = {
        let (http, url) = (
            c.http.clone(),
            format!(
                "{}/v1/topics/lp/partitions/0/records?offset=0&max_wait_ms=20000",
                c.api(1)
            ),
        );
        tokio::spawn(async move {
            http.get(url)
                .send()
                .await
                .expect("poll")
                .json::<Value>()
                .await
                .expect("json")
        })
    };
    // Produce only once the poll is parked on the leader, as its gauge shows.
    eventually("the fetch is parked", Duration::from_secs(10), || {
        let (http, url) = (c.http.clone(), format!("{}/metrics", c.api(1)));
        async move {
            let text = http.get(url).send().await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| l == "chat4all_fetch_waiting 1")
                .then_some(())
        }
    })
    .await;
    let (s, v) = c
        .post(
            1,
            "/v1/topics/lp/records",
            &json!({"records": [{"value": "late"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let got = poll.await.expect("join");
    assert_eq!(got["records"][0]["value"], "late", "{got}");
}

#[tokio::test]
async fn health_ready_and_metrics_report_the_node() {
    let c = Cluster::start(1, "").await;
    c.create_topic(1, "m", 2, 1, json!({})).await;
    let (s, _) = c
        .post(
            1,
            "/v1/topics/m/records",
            &json!({"records": [{"value": 1, "partition": 0}]}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, v) = c.get(1, "/health").await;
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, _) = c.get(1, "/ready").await;
    assert_eq!(s, 200);
    let text = c
        .http
        .get(format!("{}/metrics", c.api(1)))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for needle in [
        "chat4all_partition_leader{partition=\"0\",topic=\"m\"} 1",
        "chat4all_partition_high_watermark{partition=\"0\",topic=\"m\"} 1",
        "chat4all_partition_term",
        "chat4all_partition_commit_index",
        "chat4all_partition_apply_index",
        "chat4all_partition_replication_lag",
        "chat4all_produce_requests_total{outcome=\"ok\"} 1",
        "chat4all_produce_latency_seconds_bucket",
        "chat4all_storage_fsync_seconds_count",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // RocksDB's figures per column family: the record and its log entry are in memtables
    // (a fresh node flushes nothing this small).
    for cf in ["index_entry", "offset_record"] {
        let needle = format!("chat4all_storage_memtable_entries{{cf=\"{cf}\"}}");
        let entries = common::metric(&text, &needle)
            .unwrap_or_else(|| panic!("metrics lack {needle}:\n{text}"));
        assert!(entries >= 1.0, "{needle} {entries}");
    }
    for needle in [
        "chat4all_storage_l0_files{cf=\"chatkey_chatrow\"}",
        "chat4all_storage_sst_bytes{cf=\"index_entry\"}",
        "chat4all_storage_pending_compaction_bytes{cf=\"offset_record\"}",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // The runtime's 100 ms timer is measured from the start on.
    eventually(
        "a runtime tick measured",
        Duration::from_secs(10),
        || async {
            let text = c.metrics(1).await;
            let ticks: f64 = text
                .lines()
                .find_map(|l| l.strip_prefix("chat4all_runtime_stall_seconds_count "))?
                .trim()
                .parse()
                .ok()?;
            (ticks >= 1.0).then_some(())
        },
    )
    .await;
}
