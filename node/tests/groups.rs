//! Consumer groups over real nodes: the REST API and its bad input, the revocation handshake,
//! expiry and fencing (scenario S9), static membership, a coordinator SIGKILLed with its
//! members re-attaching and offsets intact, and the copy worker carrying on when a node dies.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{Cluster, eventually};
use reqwest::Method;
use serde_json::{Value, json};

type Tp = (String, u64);

fn assignment(v: &Value) -> BTreeSet<Tp> {
    v["assignment"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["topic"].as_str().unwrap_or_default().to_string(),
                a["partition"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

fn owned_json(tps: &BTreeSet<Tp>) -> Value {
    Value::Array(
        tps.iter()
            .map(|(t, p)| json!({"topic": t, "partition": p}))
            .collect(),
    )
}

fn committed(v: &Value) -> BTreeMap<Tp, u64> {
    v["offsets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            (
                (
                    o["topic"].as_str().unwrap_or_default().to_string(),
                    o["partition"].as_u64().unwrap_or(u64::MAX),
                ),
                o["offset"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// Asserts an error answer's status and stable code.
fn assert_code((s, v): (u16, Value), status: u16, code: &str) {
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (status, Some(code)),
        "{v}"
    );
}

/// A member as a test drives it.
#[derive(Clone, Debug)]
struct Member {
    id: String,
    epoch: i64,
    owns: BTreeSet<Tp>,
}

impl Member {
    async fn join(
        c: &Cluster,
        via: u64,
        group: &str,
        topics: &[&str],
        instance: Option<&str>,
    ) -> Member {
        let mut body = json!({"member_epoch": 0, "topics": topics});
        if let Some(i) = instance {
            body["instance_id"] = json!(i);
        }
        let (s, v) = c
            .post_until_available(via, &format!("/v1/groups/{group}/heartbeat"), &body)
            .await;
        assert_eq!(s, 200, "join: {v}");
        Member {
            id: v["member_id"].as_str().expect("member_id").to_string(),
            epoch: v["member_epoch"].as_i64().expect("epoch"),
            owns: assignment(&v),
        }
    }

    /// Heartbeats reporting what it owns (it releases revoked partitions at once); returns
    /// the reply.
    async fn beat(&mut self, c: &Cluster, via: u64, group: &str) -> (u16, Value) {
        let body = json!({"member_id": self.id, "member_epoch": self.epoch, "owned": owned_json(&self.owns)});
        let (s, v) = c
            .post_until_available(via, &format!("/v1/groups/{group}/heartbeat"), &body)
            .await;
        if s == 200 {
            self.epoch = v["member_epoch"].as_i64().expect("epoch");
            self.owns = assignment(&v);
        }
        (s, v)
    }
}

#[tokio::test]
async fn groups_rest_api_rebalances_fences_and_refuses_bad_input() {
    let c = Cluster::start(1, "").await;
    c.create_topic(1, "t", 4, 1, json!({})).await;
    for i in 0..10 {
        let (s, v) = c
            .post(
                1,
                "/v1/topics/t/records",
                &json!({"records": [{"value": i, "partition": 0}]}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }

    // Nothing exists yet.
    let (s, v) = c.get(1, "/v1/groups").await;
    assert_eq!((s, v["groups"].clone()), (200, json!([])), "{v}");
    assert_code(c.get(1, "/v1/groups/g").await, 404, "GROUP_NOT_FOUND");
    let commit = json!({"offsets": [{"topic": "t", "partition": 0, "offset": 1}]});
    assert_code(
        c.post(1, "/v1/groups/g/offsets", &commit).await,
        404,
        "GROUP_NOT_FOUND",
    );

    // A joins and owns everything, starting from the log start (earliest).
    let mut a = Member::join(&c, 1, "g", &["t"], None).await;
    assert_eq!(a.owns.len(), 4);
    let (s, v) = c
        .post(
            1,
            "/v1/groups/g/heartbeat",
            &json!({"member_id": a.id, "member_epoch": a.epoch}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["assignment"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|p| p["position"] == json!(0)),
        "{v}"
    );

    // A group that starts at the end: its first member's positions are the high watermarks.
    let (s, v) = c
        .call(
            Method::PUT,
            1,
            "/v1/groups/tail/config",
            Some(&json!({"auto_offset_reset": "latest"})),
        )
        .await;
    assert_eq!(
        (s, v["auto_offset_reset"].as_str()),
        (200, Some("latest")),
        "{v}"
    );
    let (s, v) = c
        .post(
            1,
            "/v1/groups/tail/heartbeat",
            &json!({"member_epoch": 0, "topics": ["t"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let positions: BTreeMap<u64, Value> = v["assignment"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["partition"].as_u64().unwrap_or(99), a["position"].clone()))
        .collect();
    assert_eq!(
        positions,
        BTreeMap::from([(0, json!(10)), (1, json!(0)), (2, json!(0)), (3, json!(0))]),
        "{v}"
    );
    assert_code(
        c.call(
            Method::PUT,
            1,
            "/v1/groups/tail/config",
            Some(&json!({"auto_offset_reset": "end"})),
        )
        .await,
        400,
        "INVALID_OFFSET_RESET",
    );

    let commit = |m: &Member, p: u64, offset: Value| {
        json!({"member_id": m.id, "member_epoch": m.epoch,
               "offsets": [{"topic": "t", "partition": p, "offset": offset, "metadata": "m"}]})
    };
    let (s, v) = c
        .post(1, "/v1/groups/g/offsets", &commit(&a, 0, json!(5)))
        .await;
    assert_eq!(s, 200, "{v}");

    // Bad input: a clear 4xx, and nothing changes.
    let stale = Member {
        epoch: a.epoch + 7,
        ..a.clone()
    };
    let stranger = Member {
        id: "nobody".into(),
        ..a.clone()
    };
    let bad: Vec<(Value, u16, &str)> = vec![
        (commit(&a, 0, json!(-1)), 400, "INVALID_OFFSETS"),
        (commit(&a, 0, json!("x")), 400, "INVALID_OFFSETS"),
        (commit(&a, 9, json!(1)), 404, "UNKNOWN_PARTITION"),
        (
            json!({"member_id": a.id, "member_epoch": a.epoch, "offsets": [{"topic": "nope", "partition": 0, "offset": 1}]}),
            404,
            "UNKNOWN_TOPIC",
        ),
        (commit(&stale, 0, json!(9)), 409, "FENCED"),
        (commit(&stranger, 0, json!(9)), 409, "FENCED"),
        (json!({"offsets": []}), 400, "INVALID_OFFSETS"),
        (
            json!({"member_id": a.id, "offsets": [{"topic": "t", "partition": 0, "offset": 1}]}),
            400,
            "INVALID_MEMBER",
        ),
    ];
    for (body, status, code) in bad {
        let (s, v) = c.post(1, "/v1/groups/g/offsets", &body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} → {v}"
        );
    }
    assert_code(
        c.post_raw(1, "/v1/groups/g/offsets", "{not json".into())
            .await,
        400,
        "INVALID_JSON",
    );
    assert_code(
        c.post(1, "/v1/groups/g/heartbeat", &json!({"member_epoch": 0}))
            .await,
        400,
        "INVALID_SUBSCRIPTION",
    );
    assert_code(
        c.post(
            1,
            "/v1/groups/g/heartbeat",
            &json!({"member_epoch": 0, "topics": ["__consumer_offsets"]}),
        )
        .await,
        403,
        "INTERNAL_TOPIC",
    );
    assert_code(
        c.post(
            1,
            "/v1/groups/bad%2Fname/heartbeat",
            &json!({"member_epoch": 0, "topics": ["t"]}),
        )
        .await,
        400,
        "INVALID_GROUP_NAME",
    );
    assert_code(
        c.post(
            1,
            "/v1/topics/__consumer_offsets/records",
            &json!({"records": [{"value": 1}]}),
        )
        .await,
        403,
        "INTERNAL_TOPIC",
    );
    assert_code(
        c.post(1, "/v1/topics", &json!({"name": "__mine", "partitions": 1}))
            .await,
        400,
        "INVALID_TOPIC_NAME",
    );
    let (s, v) = c.get(1, "/v1/groups/g/offsets").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        committed(&v),
        BTreeMap::from([(("t".to_string(), 0), 5)]),
        "{v}"
    );
    assert_eq!(v["offsets"][0]["metadata"], json!("m"));

    // B joins: it gets nothing until A has released what was revoked from it.
    let mut b = Member::join(&c, 1, "g", &["t"], Some("b-instance")).await;
    assert!(b.owns.is_empty(), "{b:?}");
    let (s, v) = a.beat(&c, 1, "g").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoking"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, v) = b.beat(&c, 1, "g").await;
    assert!(assignment(&v).is_empty(), "A still holds them: {v}");
    a.beat(&c, 1, "g").await; // reports them released
    b.beat(&c, 1, "g").await;
    assert_eq!((a.owns.len(), b.owns.len()), (2, 2));
    assert!(a.owns.is_disjoint(&b.owns));
    let (s, v) = c.get(1, "/v1/groups/g").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["state"], json!("STABLE"), "{v}");
    assert_eq!(v["members"].as_array().map(Vec::len), Some(2), "{v}");
    let p0 = v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["partition"] == json!(0))
        .cloned();
    assert_eq!(
        p0.map(|p| (
            p["committed_offset"].clone(),
            p["high_watermark"].clone(),
            p["lag"].clone()
        )),
        Some((json!(5), json!(10), json!(5))),
        "{v}"
    );
    let (s, v) = c.get(1, "/v1/groups").await;
    assert_eq!(s, 200);
    assert_eq!(
        v["groups"],
        json!([
            {"group": "g", "state": "STABLE", "members": 2},
            {"group": "tail", "state": "STABLE", "members": 1}
        ])
    );

    // B restarts (static member): same partitions, no rebalance.
    let epoch_before = v["groups"].clone();
    let b2 = Member::join(&c, 1, "g", &["t"], Some("b-instance")).await;
    assert_ne!(b2.id, b.id);
    assert_eq!(b2.owns, b.owns);
    let (_, v) = c.get(1, "/v1/groups").await;
    assert_eq!(v["groups"], epoch_before);
    assert_code(b.beat(&c, 1, "g").await, 409, "FENCED");
    let mut b = b2;

    // A leaves: B gets everything.
    let (s, v) = c
        .call(
            Method::DELETE,
            1,
            &format!("/v1/groups/g/members/{}", a.id),
            None,
        )
        .await;
    assert_eq!((s, v["member_epoch"].clone()), (200, json!(-1)), "{v}");
    b.beat(&c, 1, "g").await;
    assert_eq!(b.owns.len(), 4);

    // The lag metric, from the coordinator.
    eventually("lag metric", Duration::from_secs(20), || async {
        let m = c.metrics(1).await;
        m.lines()
            .any(|l| {
                l.starts_with("chat4all_consumer_group_lag{")
                    && l.contains("group=\"g\"")
                    && l.contains("partition=\"0\"")
                    && l.ends_with(" 5")
            })
            .then_some(())
    })
    .await;

    // S9: a member that stops heartbeating past its session timeout is removed, and its
    // commits are refused when it comes back.
    let (s, v) = c
        .call(
            Method::PUT,
            1,
            "/v1/groups/g/config",
            Some(&json!({"session_timeout_ms": 1000})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_code(
        c.call(
            Method::PUT,
            1,
            "/v1/groups/g/config",
            Some(&json!({"session_timeout_ms": 5})),
        )
        .await,
        400,
        "INVALID_SESSION_TIMEOUT",
    );
    eventually("b expired", Duration::from_secs(10), || async {
        let (_, v) = c.get(1, "/v1/groups/g").await;
        (v["state"] == json!("EMPTY")).then_some(())
    })
    .await;
    assert_code(
        c.post(
            1,
            "/v1/groups/g/offsets",
            &json!({"member_id": b.id, "member_epoch": b.epoch,
        "offsets": [{"topic": "t", "partition": 1, "offset": 3}]}),
        )
        .await,
        409,
        "FENCED",
    );
    assert_code(b.beat(&c, 1, "g").await, 409, "FENCED");
    let (_, v) = c.get(1, "/v1/groups/g/offsets").await;
    assert_eq!(
        committed(&v),
        BTreeMap::from([(("t".to_string(), 0), 5)]),
        "{v}"
    );

    // Deleting: refused while a member is in, then the group and its offsets are gone.
    assert_code(
        c.call(Method::DELETE, 1, "/v1/groups/tail", None).await,
        409,
        "GROUP_NOT_EMPTY",
    );
    let (s, v) = c.call(Method::DELETE, 1, "/v1/groups/g", None).await;
    assert_eq!((s, v["deleted"].clone()), (200, json!(true)), "{v}");
    assert_code(
        c.get(1, "/v1/groups/g/offsets").await,
        404,
        "GROUP_NOT_FOUND",
    );
    assert_code(
        c.call(Method::DELETE, 1, "/v1/groups/g", None).await,
        404,
        "GROUP_NOT_FOUND",
    );
    // A group of the same name starts afresh, without the old offsets.
    let fresh = Member::join(&c, 1, "g", &["t"], None).await;
    let (_, v) = c.get(1, "/v1/groups/g/offsets").await;
    assert_eq!(committed(&v), BTreeMap::new(), "{v}");
    assert_eq!(fresh.owns.len(), 4);
}

#[tokio::test]
async fn a_killed_coordinator_hands_over_with_members_and_offsets_intact() {
    // One `__consumer_offsets` partition: one coordinator to kill.
    let mut c = Cluster::start(3, "[groups]\noffsets_partitions = 1\n").await;
    c.create_topic(1, "t", 3, 3, json!({})).await;
    let mut m = Member::join(&c, 1, "g", &["t"], None).await;
    assert_eq!(m.owns.len(), 3);
    let offsets = |m: &Member, n: u64| {
        json!({"member_id": m.id, "member_epoch": m.epoch,
               "offsets": (0..3).map(|p| json!({"topic": "t", "partition": p, "offset": n + p})).collect::<Vec<_>>()})
    };
    let (s, v) = c
        .post_until_available(1, "/v1/groups/g/offsets", &offsets(&m, 10))
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = c.get(1, "/v1/groups/g").await;
    let coordinator = v["coordinator"].as_u64().expect("coordinator");
    let other = (1..=3).find(|n| *n != coordinator).expect("another node");

    c.kill(coordinator);
    let killed = Instant::now();
    // The member re-attaches through a surviving node with its id and epoch: the new
    // coordinator loaded them from disk.
    let (s, v) = eventually(
        "heartbeat to the new coordinator",
        Duration::from_secs(30),
        || {
            let body =
                json!({"member_id": m.id, "member_epoch": m.epoch, "owned": owned_json(&m.owns)});
            let c = &c;
            async move {
                let (s, v) = c.post(other, "/v1/groups/g/heartbeat", &body).await;
                (s != 503).then_some((s, v))
            }
        },
    )
    .await;
    println!(
        "heartbeat answered {:?} after the coordinator's SIGKILL",
        killed.elapsed()
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["member_id"], json!(m.id));
    assert_eq!(assignment(&v), m.owns);
    let (s, v) = c.get(other, "/v1/groups/g/offsets").await;
    assert_eq!(s, 200, "{v}");
    let want: BTreeMap<Tp, u64> = (0..3).map(|p| (("t".to_string(), p), 10 + p)).collect();
    assert_eq!(committed(&v), want, "{v}");
    m.epoch = v["member_epoch"].as_i64().unwrap_or(m.epoch);
    let (s, v) = c
        .post_until_available(other, "/v1/groups/g/offsets", &offsets(&m, 20))
        .await;
    assert_eq!(s, 200, "{v}");

    // The old coordinator comes back as a follower; every node answers the same offsets.
    c.spawn(coordinator);
    c.wait_ready(coordinator).await;
    let want: BTreeMap<Tp, u64> = (0..3).map(|p| (("t".to_string(), p), 20 + p)).collect();
    for via in 1..=3 {
        let (s, v) = c.get(via, "/v1/groups/g/offsets").await;
        assert_eq!((s, committed(&v)), (200, want.clone()), "via {via}: {v}");
    }
}

/// Produces keyed records `from..to` to `src` through nodes 1 and 2. Any 503
/// (UNAVAILABLE, or OUTCOME_UNKNOWN while a killed node's leaderships move) is sent again: a
/// duplicate in `src` changes nothing the copy test checks.
async fn produce_range(c: &Cluster, from: u32, to: u32) {
    for i in from..to {
        let body = json!({"records": [{"key": format!("k{i}"), "value": i}]});
        let via = 1 + u64::from(i % 2);
        eventually("record produced", Duration::from_secs(30), || async {
            let (s, v) = c.post(via, "/v1/topics/src/records", &body).await;
            assert!(s == 200 || s == 503, "{v}");
            (s == 200).then_some(())
        })
        .await;
    }
}

/// The distinct values in `dst`.
async fn copied(c: &Cluster, via: u64) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    for p in 0..3 {
        for (_, v) in c.read_all(via, "dst", p).await {
            if let Some(n) = v.as_u64() {
                seen.insert(n);
            }
        }
    }
    seen
}

#[tokio::test]
async fn copy_workers_move_partitions_off_a_killed_node_and_lose_nothing() {
    let extra = "[groups]\nsession_timeout_ms = 2000\n\n[[workers.copy]]\ngroup = \"mirror\"\nfrom = \"src\"\nto = \"dst\"\n";
    let mut c = Cluster::start(3, extra).await;
    c.create_topic(1, "src", 3, 3, json!({})).await;
    c.create_topic(1, "dst", 3, 3, json!({})).await;
    produce_range(&c, 0, 150).await;
    let all: BTreeSet<u64> = (0..150).collect();
    eventually("first 150 copied", Duration::from_secs(60), || async {
        (copied(&c, 1).await == all).then_some(())
    })
    .await;
    // Every node is a member, each with one partition.
    let v = eventually("three members, stable", Duration::from_secs(30), || async {
        let (s, v) = c.get(1, "/v1/groups/mirror").await;
        (s == 200
            && v["state"] == json!("STABLE")
            && v["members"].as_array().map(Vec::len) == Some(3))
        .then_some(v)
    })
    .await;
    let owners: BTreeSet<String> = v["partitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["owner"].as_str().map(str::to_string))
        .collect();
    assert_eq!(owners.len(), 3, "one partition each: {v}");

    c.kill(3);
    let killed = Instant::now();
    produce_range(&c, 150, 300).await;
    let all: BTreeSet<u64> = (0..300).collect();
    let mut high: BTreeMap<Tp, u64> = BTreeMap::new();
    let mut reassigned = None;
    let limit = Duration::from_secs(90);
    loop {
        // Committed offsets never go backwards.
        if let (200, v) = c.get(1, "/v1/groups/mirror/offsets").await {
            for (tp, o) in committed(&v) {
                let h = high.entry(tp.clone()).or_default();
                assert!(o >= *h, "{tp:?} committed {o} after {h}");
                *h = o;
            }
        }
        if reassigned.is_none()
            && let (200, v) = c.get(1, "/v1/groups/mirror").await
            && v["members"].as_array().map(Vec::len) == Some(2)
            && v["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|p| p["owner"].is_string())
        {
            reassigned = Some(killed.elapsed());
        }
        if copied(&c, 1).await == all {
            break;
        }
        assert!(
            killed.elapsed() < limit,
            "not all 300 copied within {limit:?} of the kill"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("partitions of the killed node reassigned after {reassigned:?} (session timeout 2 s)");
    let (_, v) = c.get(1, "/v1/groups/mirror").await;
    assert_eq!(v["members"].as_array().map(Vec::len), Some(2), "{v}");
}

/// A member whose session ran out is fenced by whatever request comes first, and stays out:
/// found by jepsen-tests' subscribe workload, where a member answered FENCED could still
/// commit (and so be kept for another session) until the sweeper came by. The sweeper is
/// switched off here, so only the requests themselves can expire anyone.
#[tokio::test]
async fn an_expired_member_is_fenced_by_its_next_request_not_by_the_sweeper() {
    let c = Cluster::start(1, "[groups]\nsweep_interval_ms = 600000\n").await;
    c.create_topic(1, "t", 2, 1, json!({})).await;
    let commit = |m: &Member| {
        json!({"member_id": m.id, "member_epoch": m.epoch,
               "offsets": [{"topic": "t", "partition": 0, "offset": 1}]})
    };
    // One member in each of two groups, each owning both partitions and committing.
    let mut members = Vec::new();
    for group in ["commits-first", "beats-first"] {
        let (s, v) = c
            .call(
                Method::PUT,
                1,
                &format!("/v1/groups/{group}/config"),
                Some(&json!({"session_timeout_ms": 1000})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        let m = Member::join(&c, 1, group, &["t"], None).await;
        assert_eq!(m.owns.len(), 2, "{m:?}");
        let (s, v) = c
            .post(1, &format!("/v1/groups/{group}/offsets"), &commit(&m))
            .await;
        assert_eq!(s, 200, "{v}");
        members.push(m);
    }
    // Both fall silent for longer than the session. (Sleeping is the fault under test here:
    // silence past the session timeout.)
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // The first member's first request after the silence is a commit: refused.
    assert_code(
        c.post(1, "/v1/groups/commits-first/offsets", &commit(&members[0]))
            .await,
        409,
        "FENCED",
    );
    // The second one's is a heartbeat: FENCED, and a commit right after it too.
    let mut m = members[1].clone();
    assert_code(m.beat(&c, 1, "beats-first").await, 409, "FENCED");
    assert_code(
        c.post(1, "/v1/groups/beats-first/offsets", &commit(&members[1]))
            .await,
        409,
        "FENCED",
    );
    for group in ["commits-first", "beats-first"] {
        let (_, v) = c.get(1, &format!("/v1/groups/{group}")).await;
        assert_eq!(v["state"], json!("EMPTY"), "removed for good: {v}");
    }
}

/// A member that keeps a revoked partition past its rebalance timeout is removed, and only
/// then does the partition move: never two owners, and never stuck for good.
#[tokio::test]
async fn a_member_that_never_releases_is_removed_after_its_rebalance_timeout() {
    let c = Cluster::start(1, "").await;
    c.create_topic(1, "t", 2, 1, json!({})).await;
    let (s, v) = c
        .post(
            1,
            "/v1/groups/g/heartbeat",
            &json!({"member_epoch": 0, "topics": ["t"], "rebalance_timeout_ms": 1000}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let mut stubborn = Member {
        id: v["member_id"].as_str().expect("id").to_string(),
        epoch: v["member_epoch"].as_i64().expect("epoch"),
        owns: assignment(&v),
    };
    assert_eq!(stubborn.owns.len(), 2);
    let mut polite = Member::join(&c, 1, "g", &["t"], None).await;
    // The stubborn member keeps heartbeating but reports everything still owned.
    let held = stubborn.owns.clone();
    let (s, v) = stubborn.beat(&c, 1, "g").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoking"].as_array().map(Vec::len), Some(1), "{v}");
    let start = Instant::now();
    let body = json!({"member_id": stubborn.id, "member_epoch": stubborn.epoch,
                      "owned": owned_json(&held)});
    loop {
        let (s, v) = c.post(1, "/v1/groups/g/heartbeat", &body).await;
        let (_, pv) = polite.beat(&c, 1, "g").await;
        if s == 200 {
            // While the stubborn member is in, the polite one never gets what it holds.
            assert!(polite.owns.is_disjoint(&held), "two owners: {pv} while {v}");
        } else {
            assert_eq!(v["error"]["code"], json!("FENCED"), "{v}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the stubborn member was never removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "removed too early"
    );
    // Its partitions are free: the polite member gets both at its next heartbeat.
    polite.beat(&c, 1, "g").await;
    assert_eq!(polite.owns.len(), 2, "{polite:?}");
}

/// `__consumer_offsets` is compacted: commits do not pile up, the partition keeps the latest
/// record of each key, and a restarted coordinator loads the same group from what is left.
#[tokio::test]
async fn the_offsets_topic_is_compacted_and_a_restart_loads_what_is_left() {
    let extra = "[groups]\noffsets_partitions = 1\n\n[retention]\ncheck_interval_ms = 100\n";
    let mut c = Cluster::start(1, extra).await;
    c.create_topic(1, "t", 1, 1, json!({})).await;
    let m = Member::join(&c, 1, "g", &["t"], None).await;
    for offset in 1..=40 {
        let body = json!({"member_id": m.id, "member_epoch": m.epoch,
                          "offsets": [{"topic": "t", "partition": 0, "offset": offset}]});
        let (s, v) = c.post(1, "/v1/groups/g/offsets", &body).await;
        assert_eq!(s, 200, "{v}");
    }
    // 41 records were written (a group record and 40 commits); compaction leaves the latest
    // of each key: one group record, one offset record.
    let path = "/v1/topics/__consumer_offsets/partitions/0/records?offset=0&max_records=1000";
    let left = eventually(
        "the offsets partition compacted",
        Duration::from_secs(20),
        || {
            let c = &c;
            async move {
                let (s, v) = c.get(1, path).await;
                let records = v["records"].as_array()?.clone();
                (s == 200 && records.len() == 2).then_some(records)
            }
        },
    )
    .await;
    let keys: Vec<&str> = left.iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, ["g/g", "o/g/t/0"], "{left:?}");
    assert_eq!(left[1]["value"]["offset"], json!(40), "{left:?}");
    // A restart rebuilds the coordinator from the compacted partition.
    c.kill(1);
    c.spawn(1);
    c.wait_ready(1).await;
    let (s, v) = c.get(1, "/v1/groups/g/offsets").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        committed(&v),
        BTreeMap::from([(("t".to_string(), 0), 40)]),
        "{v}"
    );
    let body = json!({"member_id": m.id, "member_epoch": m.epoch});
    let (s, v) = c
        .post_until_available(1, "/v1/groups/g/heartbeat", &body)
        .await;
    assert_eq!((s, v["member_id"].clone()), (200, json!(m.id)), "{v}");
}
