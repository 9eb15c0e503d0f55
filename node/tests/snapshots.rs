//! Snapshots between real `chat4all` processes: a replica that missed more than the leader's
//! log still holds is brought up to date by a snapshot sent over QUIC, and then serves every
//! record as leader.

mod common;

use std::time::Duration;

use common::{Cluster, eventually};
use serde_json::json;

/// Snapshots every 50 entries and no log kept before them, so that 300 writes while node 3 is
/// down leave the others without the entries it misses: only a snapshot can bring it back.
/// Building one writes a marker; the data is the leader's partition as it is when node 3 asks,
/// sent in chunks of 1 KiB (many of them: the records take about 10 KiB).
#[tokio::test]
async fn a_replica_behind_the_purged_log_catches_up_from_a_snapshot_and_leads_with_every_record() {
    let mut c = Cluster::start(
        3,
        "[raft]\nsnapshot_every_entries = 50\nlog_kept_after_snapshot = 0\nsnapshot_chunk_bytes = 1024\n",
    )
    .await;
    c.create_topic(1, "snap", 1, 3, json!({})).await;
    c.kill(3);
    for i in 0..300 {
        let body = json!({"records": [{"value": format!("v{i}"), "partition": 0}]});
        let (s, v) = c
            .post_until_available(1 + i % 2, "/v1/topics/snap/records", &body)
            .await;
        assert_eq!(s, 200, "write {i}: {v}");
    }

    c.spawn(3);
    c.wait_ready(3).await;
    c.wait_applied_alike("snap", 0, Duration::from_secs(30))
        .await;
    let log = c.log(3);
    let chunks: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("installed a snapshot"))
        .filter_map(|l| {
            l.split("chunks=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !chunks.is_empty(),
        "node 3 caught up without a snapshot; its log:\n{log}"
    );
    assert!(
        chunks.iter().any(|&n| n > 1),
        "every snapshot came in one chunk ({chunks:?}); its log:\n{log}"
    );

    // Move the leadership to node 3: SIGKILL whoever else leads, and restart it (a restarted
    // node holds off elections for a while, so the next one is likely node 3).
    for _ in 0..10 {
        let leader = c.leader(3, "snap", 0).await;
        if leader == 3 {
            break;
        }
        c.kill(leader);
        eventually(
            "a new leader of snap/0",
            Duration::from_secs(30),
            || async {
                let (s, v) = c.get(3, "/v1/topics/snap").await;
                let l = v["partitions"][0]["leader"].as_u64()?;
                (s == 200 && l != leader).then_some(())
            },
        )
        .await;
        c.spawn(leader);
        c.wait_ready(leader).await;
    }
    assert_eq!(
        c.leader(3, "snap", 0).await,
        3,
        "node 3 never became the leader"
    );
    let records = c.read_all(3, "snap", 0).await;
    let expected: Vec<(u64, serde_json::Value)> =
        (0..300).map(|i| (i, json!(format!("v{i}")))).collect();
    assert_eq!(records, expected);
}

/// The controller's snapshot too is read from its live state when a follower needs it: node 3,
/// down while 60 topics are created (more than the 50 entries between snapshots, none kept
/// before them), learns them from a controller snapshot and lists every one once ready.
#[tokio::test]
async fn a_node_that_missed_the_purged_metadata_log_learns_it_from_a_controller_snapshot() {
    let mut c = Cluster::start(
        3,
        "[raft]\nsnapshot_every_entries = 50\nlog_kept_after_snapshot = 0\n",
    )
    .await;
    c.kill(3);
    for i in 0..60 {
        let body = json!({"name": format!("t{i}"), "partitions": 1, "replication_factor": 1});
        // Node 3 may have led the controller: a creation it held is of unknown outcome, and
        // sent again it is either made or found made.
        eventually(
            &format!("topic t{i} created"),
            Duration::from_secs(30),
            || {
                let (body, c) = (&body, &c);
                async move {
                    let (s, v) = c.post(1 + i % 2, "/v1/topics", body).await;
                    match (s, v["error"]["code"].as_str().unwrap_or("")) {
                        (201, _) | (409, "TOPIC_EXISTS") => Some(()),
                        (503, "UNAVAILABLE" | "OUTCOME_UNKNOWN") => None,
                        _ => panic!("topic t{i}: {s} {v}"),
                    }
                }
            },
        )
        .await;
    }
    let mut expected: Vec<String> = (0..60).map(|i| format!("t{i}")).collect();
    expected.sort();

    c.spawn(3);
    // Ready waits until node 3 has caught up with the metadata committed before it asked: it
    // lists every topic from its own copy as soon as it is ready.
    c.wait_ready(3).await;
    let (s, v) = c.get(3, "/v1/topics").await;
    assert_eq!(s, 200, "{v}");
    let mut names: Vec<String> = v["topics"]
        .as_array()
        .expect("a topic list")
        .iter()
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    assert_eq!(
        names, expected,
        "node 3 was ready before it knew every topic"
    );
    assert!(
        c.log(3).contains("installed a controller snapshot"),
        "node 3 caught up without a controller snapshot; its log:\n{}",
        c.log(3)
    );
}
