//! Idempotent producers on a real cluster: their state survives a leader kill, and a bumped
//! epoch is fenced at once on every node.

mod common;

use std::time::Duration;

use common::{Cluster, eventually, offsets};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

#[tokio::test]
async fn idempotent_producer_state_survives_a_leader_kill() {
    let mut c = Cluster::start(3, "").await;
    c.create_topic(1, "idem", 1, 3, json!({})).await;
    let (s, p) = c.post(1, "/v1/producers", &json!({})).await;
    assert_eq!(s, 201, "{p}");
    let (id, epoch) = (p["id"].clone(), p["epoch"].clone());
    let batch = |seq: u64, values: &[&str]| {
        json!({
            "records": values.iter().map(|v| json!({"value": v, "partition": 0})).collect::<Vec<_>>(),
            "producer": {"id": id, "epoch": epoch, "sequence": seq},
        })
    };
    let (s, first) = c
        .post(1, "/v1/topics/idem/records", &batch(0, &["a", "b"]))
        .await;
    assert_eq!((s, offsets(&first)), (200, vec![(0, 0), (0, 1)]), "{first}");
    let (s, again) = c
        .post(2, "/v1/topics/idem/records", &batch(0, &["a", "b"]))
        .await;
    assert_eq!(
        (s, offsets(&again)),
        (200, vec![(0, 0), (0, 1)]),
        "a retry returns the original offsets: {again}"
    );
    let (s, gap) = c
        .post(3, "/v1/topics/idem/records", &batch(5, &["x"]))
        .await;
    assert_eq!(
        (s, gap["error"]["code"].as_str()),
        (409, Some("OUT_OF_ORDER_SEQUENCE")),
        "{gap}"
    );

    let leader = c.leader(1, "idem", 0).await;
    c.kill(leader);
    let survivor = (1..=3).find(|&n| n != leader).unwrap_or(1);
    // The new leader knows the producer's last batches: the retry is still a duplicate.
    let (s, after) = eventually(
        "a new leader answers the retry",
        Duration::from_secs(30),
        || {
            let body = batch(0, &["a", "b"]);
            let c = &c;
            async move {
                let (s, v) = c.post(survivor, "/v1/topics/idem/records", &body).await;
                (s != 503).then_some((s, v))
            }
        },
    )
    .await;
    assert_eq!((s, offsets(&after)), (200, vec![(0, 0), (0, 1)]), "{after}");
    let (s, next) = c
        .post(survivor, "/v1/topics/idem/records", &batch(2, &["c"]))
        .await;
    assert_eq!((s, offsets(&next)), (200, vec![(0, 2)]), "{next}");

    // A new epoch for the same id fences the old one.
    let (s, bumped) = c.post(survivor, "/v1/producers", &json!({"id": id})).await;
    assert_eq!(s, 201, "{bumped}");
    assert_eq!(bumped["id"], id);
    assert!(bumped["epoch"].as_u64() > epoch.as_u64(), "{bumped}");
    let (s, fenced) = c
        .post(survivor, "/v1/topics/idem/records", &batch(3, &["d"]))
        .await;
    assert_eq!(
        (s, fenced["error"]["code"].as_str()),
        (409, Some("FENCED")),
        "{fenced}"
    );

    c.spawn(leader);
    c.wait_ready(leader).await;
    let values: Vec<Value> = c
        .read_all(leader, "idem", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values, vec![json!("a"), json!("b"), json!("c")]);
}

#[tokio::test]
async fn a_bumped_epoch_fences_the_old_one_at_once_even_on_a_lagging_leader() {
    let mut c = Cluster::start(3, "").await;
    c.create_topic(1, "fence", 1, 3, json!({})).await;
    let (s, p) = c.post(1, "/v1/producers", &json!({})).await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].clone();
    let mut epoch = p["epoch"].as_u64().expect("epoch");
    let body = |epoch: u64, seq: u64, value: String| {
        json!({
            "records": [{"value": value, "partition": 0}],
            "producer": {"id": id, "epoch": epoch, "sequence": seq},
        })
    };
    let mut fenced = 0;
    for round in 0..8u64 {
        // Stop the partition's leader while the epoch is bumped through another node, so that
        // when it resumes its copy of the controller state is behind: the bump was
        // acknowledged, so the old epoch must be refused all the same.
        let leader = c.leader(1, "fence", 0).await;
        let other = (1..=3).find(|&n| n != leader).expect("another node");
        c.pause(leader).await;
        // (An unknown outcome is retried: bumping twice only fences more.)
        let (s, bumped) = eventually("the bump is acknowledged", Duration::from_secs(30), || {
            let c = &c;
            let id = id.clone();
            async move {
                let (s, v) = c.post(other, "/v1/producers", &json!({"id": id})).await;
                (s != 503).then_some((s, v))
            }
        })
        .await;
        c.signal(leader, Signal::SIGCONT);
        assert_eq!(s, 201, "{bumped}");
        let new_epoch = bumped["epoch"].as_u64().expect("epoch");
        assert!(new_epoch > epoch, "{bumped}");
        let (s, old) = c
            .post(
                leader,
                "/v1/topics/fence/records",
                &body(epoch, 1, format!("old-{round}")),
            )
            .await;
        match (s, old["error"]["code"].as_str()) {
            (409, Some("FENCED")) => fenced += 1,
            // Leadership moved while the node was stopped: not a fencing answer either way.
            (503, Some("UNAVAILABLE" | "OUTCOME_UNKNOWN")) => {}
            _ => panic!(
                "round {round}: epoch {epoch} was not fenced after the bump to {new_epoch}: {s} {old}"
            ),
        }
        epoch = new_epoch;
        let (s, new) = eventually("the new epoch writes", Duration::from_secs(30), || {
            let (c, b) = (&c, body(new_epoch, 0, format!("new-{round}")));
            async move {
                let (s, v) = c.post(leader, "/v1/topics/fence/records", &b).await;
                (s != 503).then_some((s, v))
            }
        })
        .await;
        assert_eq!(s, 200, "round {round}: {new}");
    }
    assert!(fenced > 0, "no round reached the fencing check");
    let values: Vec<Value> = c
        .read_all(1, "fence", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(
        values
            .iter()
            .all(|v| v.as_str().is_some_and(|s| s.starts_with("new-"))),
        "a fenced epoch wrote: {values:?}"
    );
}
