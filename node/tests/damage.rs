//! A node whose files were damaged while it was down refuses to start; the others carry on,
//! and the node rebuilt from empty serves the same records (jepsen-tests scenario S7).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Cluster, eventually};
use serde_json::{Value, json};

/// Flips 16 bytes a third of the way into the largest SST file under `dir`.
fn flip_bytes_in_largest_sst(dir: &Path) -> String {
    let sst = std::fs::read_dir(dir)
        .expect("read db dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sst"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("the victim has SST files (memtable_mb = 1)");
    let mut bytes = std::fs::read(&sst).expect("read sst");
    let at = bytes.len() / 3;
    for b in &mut bytes[at..at + 16] {
        *b ^= 0xff;
    }
    std::fs::write(&sst, bytes).expect("write sst");
    sst.display().to_string()
}

#[tokio::test]
async fn a_node_with_a_damaged_sst_refuses_to_start_and_the_others_carry_on() {
    // Small memtables, so that a few MB of records reach SST files on every node.
    let mut c = Cluster::start(3, "[storage]\nmemtable_mb = 1\n").await;
    c.create_topic(1, "dmg", 1, 3, json!({})).await;
    let mut written = Vec::new();
    for i in 0..40 {
        let records: Vec<Value> = (0..50)
            .map(|j| json!({"value": format!("{i}-{j}-{}", "x".repeat(1000))}))
            .collect();
        let (s, v) = c
            .post(
                1 + i % 3,
                "/v1/topics/dmg/records",
                &json!({"records": records}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        written.extend(records.into_iter().map(|r| r["value"].clone()));
    }
    let victim = 2;
    c.kill(victim);
    let file = flip_bytes_in_largest_sst(&c.data_dir(victim).join("db"));

    c.spawn(victim);
    let status = c.wait_exit(victim, Duration::from_secs(60)).await;
    assert!(!status.success(), "a node with a damaged {file} started");
    let log = c.log(victim);
    assert!(
        log.contains("is damaged") && log.contains("Corruption"),
        "the refusal says why: {log}"
    );

    // The two others still make a majority: they accept writes and hold every record. (If
    // the victim led the partition, they elect a leader first; a write refused meanwhile was
    // not written, so it can be sent again.)
    eventually(
        "a survivor leads the partition",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                let (_, t) = c.get(3, "/v1/topics/dmg").await;
                let leader = t["partitions"][0]["leader"].as_u64();
                (leader.is_some() && leader != Some(victim)).then_some(())
            }
        },
    )
    .await;
    let (s, v) = c
        .post_until_available(
            3,
            "/v1/topics/dmg/records",
            &json!({"records": [{"value": "after"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    written.push(json!("after"));
    let on_survivor: Vec<Value> = c
        .read_all(1, "dmg", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(on_survivor, written);

    // The operator's repair: move the damaged data away; the node rejoins empty and is
    // brought up to date by its peers.
    std::fs::remove_dir_all(c.data_dir(victim)).expect("wipe the victim's data");
    c.spawn(victim);
    c.wait_ready(victim).await;
    // Every replica, the rebuilt one included, reports the same applied index: the victim's
    // own copy holds the whole log (a fetch through it would be served by the leader).
    c.wait_applied_alike("dmg", 0, Duration::from_secs(60))
        .await;
    let on_victim: Vec<Value> = c
        .read_all(victim, "dmg", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(on_victim, written);
}

/// A write-ahead log from a jepsen-tests `corrupt` run (seed 1): 64 bytes were cut out of its
/// middle. RocksDB 11.8 spins forever replaying it; the node must refuse to start instead.
#[test]
fn a_node_whose_wal_replay_never_ends_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wal-cut-spins-rocksdb.tgz");
    let untar = std::process::Command::new("tar")
        .arg("xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(&data)
        .status()
        .expect("tar");
    assert!(untar.success(), "unpack {}", fixture.display());
    std::fs::write(
        dir.path().join("node.toml"),
        "[storage]\nopen_timeout_ms = 2000\n\n[[nodes]]\nid = 1\nraft_addr = \"127.0.0.1:0\"\napi_addr = \"127.0.0.1:0\"\ndata_dir = \"data\"\n",
    )
    .expect("config");
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat4all"))
        .args(["serve", "--config", "node.toml"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn chat4all");
    // Bounded: 2 s of open timeout, then the process ends; 60 s is far beyond that.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the node still runs: it hangs replaying the damaged WAL");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    assert!(
        log.contains("did not finish"),
        "the refusal says why: {log}"
    );
}
