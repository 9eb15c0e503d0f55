//! Where a new partition's leadership starts: on its first listed replica, so that the
//! leaders' work is spread over the nodes; and on another replica when that one is down.

mod common;

use std::time::Duration;

use common::{Cluster, eventually};
use serde_json::{Value, json};

fn leaders_and_firsts(topic: &Value) -> Vec<(u64, u64)> {
    topic["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                p["leader"].as_u64().expect("leader"),
                p["replicas"][0].as_u64().expect("replicas"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_new_partition_is_first_led_by_its_first_replica() {
    let c = Cluster::start(3, "").await;
    for (name, partitions) in [("spread-a", 3), ("spread-b", 6)] {
        let topic = c.create_topic(1, name, partitions, 3, json!({})).await;
        let placed = leaders_and_firsts(&topic);
        assert!(
            placed.iter().all(|(leader, first)| leader == first),
            "{name}: (leader, first replica) per partition: {placed:?}"
        );
        let mut leaders: Vec<u64> = placed.iter().map(|(l, _)| *l).collect();
        leaders.sort_unstable();
        leaders.dedup();
        assert_eq!(
            leaders,
            [1, 2, 3],
            "{name}: every node leads some partition"
        );
    }
}

#[tokio::test]
async fn a_partition_whose_first_replica_is_down_is_led_by_another() {
    let mut c = Cluster::start(3, "").await;
    c.kill(2);
    // Node 2 may have led the controller: until the others elect a new one, a creation
    // answers 503 (a retry of one whose outcome was unknown may find the topic made).
    let body = json!({"name": "without-2", "partitions": 3, "replication_factor": 3});
    let (s, v) = eventually("the topic is created", Duration::from_secs(30), || {
        let (c, body) = (&c, &body);
        async move {
            let (s, v) = c.post(1, "/v1/topics", body).await;
            (s != 503).then_some((s, v))
        }
    })
    .await;
    assert!(
        s == 201 || (s == 409 && v["error"]["code"] == "TOPIC_EXISTS"),
        "{s} {v}"
    );
    let topic = c.wait_leaders(1, "without-2").await;
    let placed = leaders_and_firsts(&topic);
    assert!(placed.iter().all(|(leader, _)| *leader != 2), "{placed:?}");
    assert!(placed.iter().any(|(_, first)| *first == 2), "{placed:?}");
    for p in 0..3 {
        let (s, v) = c
            .post(
                1,
                "/v1/topics/without-2/records",
                &json!({"records": [{"value": "x", "partition": p}]}),
            )
            .await;
        assert_eq!(s, 200, "partition {p}: {v}");
    }
}
