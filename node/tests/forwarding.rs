//! Nodes cut off from their peers, and requests forwarded to a leader that fails while holding
//! them: definite refusals where nothing was sent, unknown outcomes answered at the leader change.

mod common;

use std::time::Duration;

use common::{Cluster, eventually};
use nix::sys::signal::Signal;
use serde_json::{Value, json};

/// The leader of partition 0 of `topic` and a follower that takes it for the leader (so it
/// forwards there).
async fn leader_and_a_follower_that_knows_it(c: &Cluster, topic: &str) -> (u64, u64) {
    let leader = c.leader(1, topic, 0).await;
    let via = (1..=3).find(|&n| n != leader).expect("a follower");
    eventually(
        "the follower knows the leader",
        Duration::from_secs(30),
        || async move {
            let (_, t) = c.get(via, &format!("/v1/topics/{topic}")).await;
            (t["partitions"][0]["leader"].as_u64() == Some(leader)).then_some(())
        },
    )
    .await;
    (leader, via)
}

#[tokio::test]
async fn a_write_held_by_a_leader_that_stops_is_answered_unknown_once_another_leads() {
    // A long write timeout: the answer must come from the leader change, not the deadline.
    let mut c = Cluster::start(3, "[limits]\nwrite_timeout_ms = 30000\n").await;
    c.create_topic(1, "fwd", 1, 3, json!({})).await;
    let (s, v) = c
        .post(
            1,
            "/v1/topics/fwd/records",
            &json!({"records": [{"value": "first"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // The follower knows the leader (it forwards there), then the leader freezes.
    let (leader, via) = leader_and_a_follower_that_knows_it(&c, "fwd").await;
    c.pause(leader).await;
    let (s, v) = c
        .post(
            via,
            "/v1/topics/fwd/records",
            &json!({"records": [{"value": "held"}]}),
        )
        .await;
    c.signal(leader, Signal::SIGCONT);
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["error"]["code"], "OUTCOME_UNKNOWN", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("lost the leadership"),
        "answered by the deadline, not by the leader change: {v}"
    );
    // The partition carries on under its new leader, and holds the write or not: never twice,
    // never anything else. A try of "after" may itself be answered OUTCOME_UNKNOWN while
    // leadership settles; it is sent again, so it may be there once more per such answer.
    let unknown = std::sync::atomic::AtomicUsize::new(0);
    let (s, v) = eventually("a write succeeds again", Duration::from_secs(30), || {
        let (c, unknown) = (&c, &unknown);
        async move {
            let (s, v) = c
                .post(
                    via,
                    "/v1/topics/fwd/records",
                    &json!({"records": [{"value": "after"}]}),
                )
                .await;
            if v["error"]["code"] == "OUTCOME_UNKNOWN" {
                unknown.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            (s != 503).then_some((s, v))
        }
    })
    .await;
    assert_eq!(s, 200, "{v}");
    let values: Vec<_> = c
        .read_all(via, "fwd", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    // "held" was answered OUTCOME_UNKNOWN: it is committed once, before "after", or never. Not
    // after: the deposed leader, resuming with the request and its entry truncated, answers
    // the forwarding node "not leader" instead of passing the request on, and that node has
    // given up on it.
    let unknown_afters = unknown.into_inner();
    let rest = match values.as_slice() {
        [first, held, rest @ ..] if *first == json!("first") && *held == json!("held") => rest,
        [first, rest @ ..] if *first == json!("first") => rest,
        _ => panic!("{values:?}"),
    };
    assert!(
        !rest.is_empty()
            && rest.len() <= 1 + unknown_afters
            && rest.iter().all(|v| *v == json!("after")),
        "{values:?} ({unknown_afters} tries of \"after\" answered OUTCOME_UNKNOWN)"
    );
}

#[tokio::test]
async fn a_node_cut_off_from_every_peer_soon_refuses_at_once_and_writes_nothing() {
    let mut c = Cluster::start(3, "[limits]\nwrite_timeout_ms = 30000\n").await;
    c.create_topic(1, "alone", 1, 3, json!({})).await;
    let (s, v) = c
        .post(
            1,
            "/v1/topics/alone/records",
            &json!({"records": [{"value": "first"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Freeze the two others: node `lone` hears from nobody, leader or not.
    let lone = 1 + (c.leader(1, "alone", 0).await % 3);
    let others: Vec<u64> = (1..=3).filter(|&n| n != lone).collect();
    // Only once `lone` has heard from the leader (it applied what the leader did) is its
    // silence news; before that it may still be starting the group.
    c.wait_applied_alike("alone", 0, Duration::from_secs(30))
        .await;
    for &n in &others {
        c.pause(n).await;
    }
    let mut answers = Vec::new();
    for i in 0..6 {
        let (s, v) = c
            .post(
                lone,
                "/v1/topics/alone/records",
                &json!({"records": [{"value": format!("alone-{i}")}]}),
            )
            .await;
        assert_eq!(s, 503, "a node alone answered {v}");
        answers.push(v);
    }
    for &n in &others {
        c.signal(n, Signal::SIGCONT);
    }
    let last = answers.last().expect("answers");
    assert_eq!(last["error"]["code"], "UNAVAILABLE", "{answers:?}");
    assert!(
        last["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cut off")),
        "the lone node still waited for a leader or a timeout: {answers:?}"
    );
    // Nothing refused was written.
    let (s, v) = c
        .post_until_available(
            lone,
            "/v1/topics/alone/records",
            &json!({"records": [{"value": "after"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let values: Vec<_> = c
        .read_all(lone, "alone", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    for (i, a) in answers.iter().enumerate() {
        if a["error"]["code"] == "UNAVAILABLE" {
            assert!(!values.contains(&json!(format!("alone-{i}"))), "{values:?}");
        }
    }
    assert_eq!(values.first(), Some(&json!("first")));
    assert_eq!(values.last(), Some(&json!("after")));
}

#[tokio::test]
async fn a_leader_cut_off_from_its_majority_never_acknowledges_and_soon_refuses() {
    let mut c = Cluster::start(3, "[limits]\nwrite_timeout_ms = 1500\n").await;
    c.create_topic(1, "min", 1, 3, json!({})).await;
    let (s, v) = c
        .post(
            1,
            "/v1/topics/min/records",
            &json!({"records": [{"value": "before"}]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // Kill both followers: the leader is alone and does not know it yet.
    let leader = c.leader(1, "min", 0).await;
    let followers: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    for &f in &followers {
        c.kill(f);
    }
    let mut answers = Vec::new();
    for i in 0..6 {
        let (s, v) = c
            .post(
                leader,
                "/v1/topics/min/records",
                &json!({"records": [{"value": format!("alone-{i}")}]}),
            )
            .await;
        assert_ne!(s, 200, "a lone node acknowledged a write: {v}");
        assert_eq!(s, 503, "{v}");
        let code = v["error"]["code"].as_str().unwrap_or_default().to_string();
        assert!(code == "UNAVAILABLE" || code == "OUTCOME_UNKNOWN", "{v}");
        answers.push(code);
    }
    // The first write may have been proposed before the leader could know (unknown outcome);
    // by the time it timed out (1.5 s) the followers' lease (0.4 s) is long over, and the
    // leader refuses without proposing: a definite failure.
    assert_eq!(
        answers.last().map(String::as_str),
        Some("UNAVAILABLE"),
        "a leader without a majority kept answering {answers:?}"
    );
    // With a majority back, writes succeed again and the acknowledged record is still first.
    let back = followers[0];
    c.spawn(back);
    c.wait_ready(back).await;
    let (s, v) = eventually(
        "a write succeeds with a majority",
        Duration::from_secs(30),
        || {
            let c = &c;
            async move {
                let (s, v) = c
                    .post(
                        back,
                        "/v1/topics/min/records",
                        &json!({"records": [{"value": "after"}]}),
                    )
                    .await;
                (s == 200).then_some((s, v))
            }
        },
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let values: Vec<Value> = c
        .read_all(leader, "min", 0)
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values.first(), Some(&json!("before")));
    assert_eq!(values.last(), Some(&json!("after")));
    // Writes that timed out may have been committed later (unknown outcome), never partially;
    // a refused write was never written.
    for (i, code) in answers.iter().enumerate() {
        let value = json!(format!("alone-{i}"));
        if code == "UNAVAILABLE" {
            assert!(
                !values.contains(&value),
                "refused write {value} was written"
            );
        }
    }
    assert!(values.iter().all(|v| {
        v.as_str()
            .is_some_and(|s| s == "before" || s == "after" || s.starts_with("alone-"))
    }));
    eprintln!("answers of the lone leader: {answers:?}");
}

/// Concurrent writes through a follower travel to the leader together (`ProduceMany`): each
/// is answered with its own offset, offsets are dense, and the record at each offset is the
/// one its write sent.
#[tokio::test]
async fn concurrent_writes_through_a_follower_each_get_their_own_offset() {
    let c = Cluster::start(3, "").await;
    c.create_topic(1, "many", 1, 3, json!({})).await;
    let (leader, via) = leader_and_a_follower_that_knows_it(&c, "many").await;
    const WRITES: u64 = 64;
    let writes = (0..WRITES).map(|i| {
        let c = &c;
        async move {
            let body = json!({"records": [{"value": format!("w{i}"), "partition": 0}]});
            let (s, v) = c.post(via, "/v1/topics/many/records", &body).await;
            assert_eq!(s, 200, "write {i}: {v}");
            (v["offsets"][0]["offset"].as_u64().expect("offset"), i)
        }
    });
    let mut sent_at = std::collections::BTreeMap::new();
    for (offset, i) in futures::future::join_all(writes).await {
        assert!(
            sent_at.insert(offset, json!(format!("w{i}"))).is_none(),
            "two writes answered offset {offset}"
        );
    }
    assert_eq!(
        sent_at.keys().copied().collect::<Vec<_>>(),
        (0..WRITES).collect::<Vec<_>>()
    );
    let stored: std::collections::BTreeMap<u64, Value> =
        c.read_all(leader, "many", 0).await.into_iter().collect();
    assert_eq!(stored, sent_at);
    // They went the joined way (one forward kind per message, whatever the batching).
    let metrics = c.metrics(via).await;
    assert!(
        metrics.contains("chat4all_forward_requests_total{kind=\"produce_many\"}")
            && !metrics.contains("chat4all_forward_requests_total{kind=\"produce\"}"),
        "{metrics}"
    );
    // The transport counts what each node sent: the follower's forwards, the leader's appends.
    let sent = |metrics: &str, kind: &str| {
        common::metric(
            metrics,
            &format!("chat4all_transport_requests_total{{kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert!(sent(&metrics, "forward") >= 1.0, "{metrics}");
    let on_leader = c.metrics(leader).await;
    assert!(sent(&on_leader, "append_entries") >= 1.0, "{on_leader}");
}
