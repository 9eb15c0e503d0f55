//! Delivery to the platforms when things fail, on real nodes against a fake Telegram
//! (`chat4all-connectors`' `testing` feature), through the REST API only: rate limits are
//! retried after the platform's wait; a platform that is down ends in the DLQ and is redriven
//! once it is back; an unknown outcome is never re-sent, also when the call outlasts the
//! member's session; a node killed during delivery loses nothing; and a partition that moves
//! while its records wait to be retried goes whole to its next owner.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chat4all_connectors::Platform;
use chat4all_connectors::testing::{FakeFailure, FakePlatform};
use common::connectors::{
    WAIT, cluster, conversation, dead_letter, records_in, send, status_becomes, telegram_contact,
    token, user,
};
use common::{Cluster, error_code as code, eventually};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_dead_letters_and_redrive_against_a_failing_platform() {
    let tg = FakePlatform::start(Platform::Telegram).await;
    let extra = "backoff_base_ms = 100\nbackoff_max_ms = 1000\ntimeout_ms = 1000\n\
                 breaker_failures = 100\n";
    let c = cluster(1, &[&tg], extra).await;
    let (admin, ana, conv) = telegram_contact(&c).await;

    // 429 with retry_after: retried after the wait, delivered once.
    tg.fail_next(vec![FakeFailure::RateLimited { retry_after_s: 1 }]);
    let m1 = send(&c, 1, &ana, &conv, "m1").await;
    let sent = tg.wait_sent(1, WAIT).await;
    assert_eq!(sent[0].text, "m1");
    assert_eq!(tg.requests(), 2, "one refused request, one accepted");
    status_becomes(&c, 1, &ana, &m1, "SENT").await;

    // A definite rejection: no retry, a dead letter, FAILED.
    tg.fail_next(vec![FakeFailure::Reject { code: 403 }]);
    let m2 = send(&c, 1, &ana, &conv, "m2").await;
    let e2 = dead_letter(&c, &admin, "tg", &m2).await;
    assert_eq!(e2["error_code"], "PLATFORM_REJECTED", "{e2}");
    assert_eq!(e2["attempts"], 1, "{e2}");
    assert_eq!(tg.requests(), 3);
    status_becomes(&c, 1, &ana, &m2, "FAILED").await;

    // The platform goes down for good: three attempts, then the DLQ.
    tg.stop().await;
    let m3 = send(&c, 1, &ana, &conv, "m3").await;
    let e3 = dead_letter(&c, &admin, "tg", &m3).await;
    assert_eq!(e3["error_code"], "PLATFORM_UNAVAILABLE", "{e3}");
    assert_eq!(e3["attempts"], 3, "{e3}");
    assert_eq!(e3["outcome_unknown"], false);
    status_becomes(&c, 1, &ana, &m3, "FAILED").await;

    // It comes back; the redrive delivers it; a second redrive is refused.
    tg.restart().await;
    let path = format!("/v1/dlq/{}/redrive", e3["id"].as_str().expect("id"));
    let (s, v) = c.call_bearer(Method::POST, 1, &path, &admin, None).await;
    assert_eq!(s, 202, "{v}");
    let sent = tg.wait_sent(2, WAIT).await;
    assert_eq!(sent[1].text, "m3");
    let (s, v) = c.call_bearer(Method::POST, 1, &path, &admin, None).await;
    assert_eq!((s, code(&v)), (409, "ALREADY_REDRIVEN"), "{v}");
    let (_, v) = c
        .call_bearer(Method::GET, 1, "/v1/dlq?channel=tg", &admin, None)
        .await;
    let ids: Vec<&Value> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| &e["message_id"])
        .collect();
    assert_eq!(
        ids,
        vec![&json!(m2)],
        "the redriven entry is no longer listed"
    );
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/dlq/0-999999/redrive", &admin, None)
        .await;
    assert_eq!((s, code(&v)), (404, "DLQ_ENTRY_NOT_FOUND"), "{v}");

    // Accepted, but the answer never comes: reported as unknown, never sent again.
    tg.fail_next(vec![FakeFailure::AcceptThenDrop]);
    let requests = tg.requests();
    let m4 = send(&c, 1, &ana, &conv, "m4").await;
    let e4 = dead_letter(&c, &admin, "tg", &m4).await;
    assert_eq!(e4["error_code"], "OUTCOME_UNKNOWN", "{e4}");
    assert_eq!(e4["outcome_unknown"], true);
    assert_eq!(tg.requests(), requests + 1, "sent once, not retried");
    assert_eq!(tg.sent().iter().filter(|s| s.text == "m4").count(), 1);
    let (_, st) = c
        .call_bearer(
            Method::GET,
            1,
            &format!("/v1/messages/{m4}/status"),
            &ana,
            None,
        )
        .await;
    assert_ne!(
        st["current_status"], "FAILED",
        "an unknown outcome is not a failure: {st}"
    );

    let metrics = c.metrics(1).await;
    for (outcome, n) in [("sent", 2), ("retried", 3), ("dead_lettered", 3)] {
        let line = format!(
            "chat4all_connector_deliveries_total{{channel=\"tg\",outcome=\"{outcome}\"}} {n}"
        );
        assert!(metrics.contains(&line), "missing `{line}`");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_call_longer_than_the_session_is_not_sent_again() {
    let tg = FakePlatform::start(Platform::Telegram).await;
    // A platform call may take 3 s; a member not heard from for 1 s loses its partitions.
    let extra = "timeout_ms = 3000\n\n[groups]\nsession_timeout_ms = 1000\n";
    let c = cluster(1, &[&tg], extra).await;
    let (admin, ana, conv) = telegram_contact(&c).await;
    send(&c, 1, &ana, &conv, "before").await;
    tg.wait_sent(1, WAIT).await;
    // Accepted, but no answer until the call times out: an unknown outcome, never resent,
    // also when the call outlasts the session (the member heartbeats while it waits).
    tg.fail_next(vec![FakeFailure::AcceptThenDrop]);
    let slow = send(&c, 1, &ana, &conv, "slow").await;
    let e = dead_letter(&c, &admin, "tg", &slow).await;
    assert_eq!(e["outcome_unknown"], true, "{e}");
    send(&c, 1, &ana, &conv, "after").await;
    let sent = eventually("the next message sent", WAIT, || async {
        let sent = tg.sent();
        sent.iter().any(|s| s.text == "after").then_some(sent)
    })
    .await;
    let texts: Vec<&str> = sent.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(texts, ["before", "slow", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_during_delivery_loses_nothing() {
    let tg = FakePlatform::start(Platform::Telegram).await;
    // A slow channel (4 sends/s), so the kill lands while the queue is being worked.
    let mut c = cluster(3, &[&tg], "rate_per_s = 4\n").await;
    let (_, ana, conv) = telegram_contact(&c).await;
    const N: usize = 24;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(send(&c, 1, &ana, &conv, &format!("n{i}")).await);
    }
    tg.wait_sent(3, WAIT).await;
    // Kill the node whose member is sending (the one that has sent something).
    let mut sender = None;
    for id in 1..=3 {
        let m = c.metrics(id).await;
        if m.contains("chat4all_connector_deliveries_total{channel=\"tg\",outcome=\"sent\"}") {
            sender = Some(id);
        }
    }
    let victim = sender.expect("a node is delivering");
    c.kill(victim);
    let survivor = if victim == 1 { 2 } else { 1 };
    let all: BTreeSet<String> = (0..N).map(|i| format!("n{i}")).collect();
    let got = eventually(
        "every message delivered",
        Duration::from_secs(90),
        || async {
            let texts: BTreeSet<String> = tg.sent().into_iter().map(|s| s.text).collect();
            (texts == all).then_some(tg.sent())
        },
    )
    .await;
    // At least once: a repeat is possible only for the send in flight when the node died.
    assert!(got.len() <= N + 1, "{} sends for {N} messages", got.len());
    let (_, ana2) = token(&c, survivor, "ana@example.com", "password-123").await;
    for id in &ids {
        status_becomes(&c, survivor, &ana2, id, "SENT").await;
    }
}
/// Each record of `topic`'s partition `p` as `(offset, key, value)`, read through node 1.
async fn records_of(c: &Cluster, admin: &str, topic: &str, p: u32) -> Vec<(u64, String, Value)> {
    let path = format!("/v1/topics/{topic}/partitions/{p}/records?offset=0&max_records=1000");
    let (s, v) = c.call_bearer(Method::GET, 1, &path, admin, None).await;
    assert_eq!(s, 200, "{v}");
    v["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let value = match &r["value"] {
                Value::String(s) => serde_json::from_str(s).unwrap_or(Value::Null),
                other => other.clone(),
            };
            let key = r["key"].as_str().unwrap_or_default().to_string();
            (r["offset"].as_u64().expect("offset"), key, value)
        })
        .collect()
}

/// Sends `text` with the message id `id` through `node` until it is accepted: a repeat of an
/// accepted send is answered with the original, so retrying through elections sends it once.
async fn send_once(c: &Cluster, node: u64, token: &str, conv: &str, id: &str, text: &str) {
    let path = format!("/v1/conversations/{conv}/messages");
    let body = json!({"message_id": id, "content": text});
    eventually(&format!("{id} accepted"), WAIT, || async {
        let (s, _) = c
            .call_bearer(Method::POST, node, &path, token, Some(&body))
            .await;
        (s == 200 || s == 202).then_some(())
    })
    .await;
}

/// The state of delivery group `deliver.<channel>` as `GET /v1/groups/{group}` shows it.
async fn delivery_group(c: &Cluster, admin: &str, channel: &str) -> Value {
    let path = format!("/v1/groups/deliver.{channel}");
    let (s, v) = c.call_bearer(Method::GET, 1, &path, admin, None).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// The partitions node `id`'s member of `group` (as `delivery_group` answers it) owns.
fn owned_by(group: &Value, id: u64) -> Vec<u32> {
    let instance = format!("{}-node-{id}", group["group"].as_str().unwrap_or_default());
    group["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["instance_id"] == instance.as_str())
        .flat_map(|m| m["assignment"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["partition"].as_u64().map(|p| p as u32))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_revoked_while_its_records_wait_for_a_retry_goes_whole_to_the_next_owner() {
    let tg = FakePlatform::start(Platform::Telegram).await;
    // Retries without end (no dead letters) and no open circuit while the platform is down;
    // one send a second per member, so records pile up in its polls; short sessions, so a
    // killed node's member is soon gone.
    let extra = "max_attempts = 100000\nbreaker_failures = 100000\nbackoff_base_ms = 200\n\
                 backoff_max_ms = 500\nrate_per_s = 1\n\n[groups]\nsession_timeout_ms = 2000\n";
    let mut c = cluster(3, &[&tg], extra).await;
    let (admin, ana, bo_conv) = telegram_contact(&c).await;
    // Contacts spread over the three `chat.deliveries` partitions (Telegram chat ids 111 and
    // 201..=205), each in a conversation with ana and sent one message while all is well.
    let mut convs = vec![("111".to_string(), bo_conv)];
    for i in 201..=205 {
        let chat = i.to_string();
        let u = user(
            &c,
            &admin,
            &format!("u{i}"),
            None,
            Some(("TELEGRAM", &chat)),
        )
        .await;
        let body = json!({"type": "direct", "participants": [u]});
        let (s, v) = c
            .call_bearer(Method::POST, 1, "/v1/conversations", &ana, Some(&body))
            .await;
        assert_eq!(s, 201, "{v}");
        convs.push((chat, conversation(&v)));
    }
    for (chat, conv) in &convs {
        send(&c, 1, &ana, conv, &format!("hello {chat}")).await;
    }
    tg.wait_sent(convs.len(), WAIT).await;
    let mut partition_of = std::collections::BTreeMap::new();
    for p in 0..3 {
        for (_, key, _) in records_of(&c, &admin, "chat.deliveries", p).await {
            partition_of.insert(key.trim_start_matches("tg/").to_string(), p);
        }
    }
    let used: BTreeSet<u32> = partition_of.values().copied().collect();
    assert_eq!(
        used.len(),
        3,
        "every partition holds a contact: {partition_of:?}"
    );

    // Node 3 dies; once its member is gone, nodes 1 and 2 own the three partitions.
    c.kill(3);
    eventually("nodes 1 and 2 own every partition", WAIT, || async {
        let g = delivery_group(&c, &admin, "tg").await;
        let mut owned = owned_by(&g, 1);
        owned.extend(owned_by(&g, 2));
        owned.sort();
        (owned == [0, 1, 2] && owned_by(&g, 3).is_empty()).then_some(())
    })
    .await;
    // Three messages to every contact. Once all are in the delivery queues and a few have
    // gone out, the platform goes down: each member is left retrying one record with more
    // of its poll behind it.
    for i in 1..=3 {
        for (chat, conv) in &convs {
            let id = format!("m{i}-{chat}");
            send_once(&c, 1, &ana, conv, &id, &format!("m{i} {chat}")).await;
        }
    }
    let routed = 4 * convs.len() as u64;
    eventually("every message routed to a delivery queue", WAIT, || async {
        (records_in(&c, 1, &admin, "chat.deliveries").await >= routed).then_some(())
    })
    .await;
    tg.wait_sent(convs.len() + 2, WAIT).await;
    tg.stop().await;
    // The member with two partitions gives one up when node 3 is back; it is retrying.
    let g = delivery_group(&c, &admin, "tg").await;
    let donor = [1, 2]
        .into_iter()
        .find(|n| owned_by(&g, *n).len() == 2)
        .expect("a member owns two partitions");
    let retried = "chat4all_connector_deliveries_total{channel=\"tg\",outcome=\"retried\"}";
    eventually(&format!("node {donor} retrying"), WAIT, || async {
        c.metrics(donor).await.contains(retried).then_some(())
    })
    .await;
    // Node 3 comes back: its member takes a partition from one that waits.
    c.spawn(3);
    c.wait_ready(3).await;
    let q = eventually("node 3's member owns a partition", WAIT, || async {
        owned_by(&delivery_group(&c, &admin, "tg").await, 3)
            .first()
            .copied()
    })
    .await;
    // Nothing goes out meanwhile, so the partition's committed offset must not be past its
    // first record not sent: what its last owner polled but did not send is not done.
    let sent: BTreeSet<String> = tg.sent().into_iter().map(|s| s.text).collect();
    let first_unsent = records_of(&c, &admin, "chat.deliveries", q)
        .await
        .into_iter()
        .find(|(_, _, v)| v["content"].as_str().is_some_and(|t| !sent.contains(t)))
        .map(|(offset, _, _)| offset)
        .expect("a record not sent in the moved partition");
    let g = delivery_group(&c, &admin, "tg").await;
    let committed = g["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .find(|p| p["topic"] == "chat.deliveries" && p["partition"] == q)
        .and_then(|p| p["committed_offset"].as_u64());
    assert!(
        committed.is_none_or(|o| o <= first_unsent),
        "partition {q} committed at {committed:?}, past its first unsent record {first_unsent}: {g}"
    );

    // The platform is back: every contact gets each of its messages once, in order.
    tg.restart().await;
    let texts = |chat: &str| -> Vec<String> {
        tg.sent()
            .into_iter()
            .filter(|s| s.to == chat)
            .map(|s| s.text)
            .collect()
    };
    for (chat, _) in &convs {
        let mut want = vec![format!("hello {chat}")];
        want.extend((1..=3).map(|i| format!("m{i} {chat}")));
        eventually(&format!("{chat}'s messages"), WAIT, || async {
            (texts(chat).len() >= want.len()).then_some(())
        })
        .await;
        assert_eq!(texts(chat), want, "{:?}", tg.sent());
    }
}
