//! Conversations and messages on a real 3-node cluster, through the REST API only: sends
//! through one node are read through the others in one order, a repeated `message_id` is
//! stored once, status only moves forward, bad input writes nothing, and messages accepted
//! with 202 survive the SIGKILL of their partition's leader.

mod common;

use std::time::Duration;

use common::chat::{User, call, cluster, direct, users};
use common::{Cluster, error_code as code, eventually};
use reqwest::Method;
use serde_json::json;

/// The history as `(message_id, content)`, oldest first, read by `who` through `node`,
/// paging newest-first with `before` cursors.
async fn history(c: &Cluster, node: u64, conv: &str, who: &User) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        // A page may meet a leader election (after a kill or restart): 503 is retried.
        let page = format!("/v1/conversations/{conv}/messages?limit=7&before={cursor}");
        let v = eventually("a history page", Duration::from_secs(30), || async {
            let (s, v) = call(c, Method::GET, node, &page, who, None).await;
            assert!(s == 200 || s == 503, "{s} {v}");
            (s == 200).then_some(v)
        })
        .await;
        for m in v["messages"].as_array().expect("messages") {
            out.push((
                m["message_id"].as_str().expect("id").to_string(),
                m["content"].as_str().unwrap_or("").to_string(),
            ));
        }
        match v["next_cursor"].as_str() {
            Some(n) => cursor = n.to_string(),
            None => break,
        }
    }
    out.reverse();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_across_nodes_with_one_order_no_duplicates_and_forward_only_status() {
    let c = cluster().await;
    let u = users(&c, &["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);

    // The direct conversation of a pair is one conversation, whoever creates it.
    let (s, conv) = call(
        &c,
        Method::POST,
        1,
        "/v1/conversations",
        alice,
        Some(&json!({"type": "direct", "participants": [bob.id]})),
    )
    .await;
    assert_eq!(s, 201, "{conv}");
    let conv_id = conv["id"].as_str().expect("id").to_string();
    let (s, again) = call(
        &c,
        Method::POST,
        2,
        "/v1/conversations",
        bob,
        Some(&json!({"type": "direct", "participants": [alice.id]})),
    )
    .await;
    assert_eq!(
        (s, again["id"].as_str()),
        (200, Some(conv_id.as_str())),
        "{again}"
    );

    // Send through node 1; the same message_id again through node 2 is the same message.
    let path = format!("/v1/conversations/{conv_id}/messages");
    let first = json!({"message_id": "4b0c1f2e-0000-4000-8000-000000000001", "content": "hi bob"});
    let (s, sent) = call(&c, Method::POST, 1, &path, alice, Some(&first)).await;
    assert_eq!(s, 202, "{sent}");
    assert_eq!(sent["status"], "PENDING");
    let (s, dup) = call(
        &c,
        Method::POST,
        2,
        "/v1/messages",
        alice,
        Some(
            &json!({"message_id": "4b0c1f2e-0000-4000-8000-000000000001",
            "conversation_id": conv_id, "content": "hi bob"}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{dup}");
    assert_eq!(
        (&dup["offset"], &dup["partition"]),
        (&sent["offset"], &sent["partition"])
    );

    // The first Chat4All's send, both spellings, sender from the token.
    let (s, _, v) = c
        .call_as(
            Method::POST,
            3,
            "/api/messages",
            Some(("authorization", &format!("Bearer {}", bob.token))),
            Some(&json!({"conversation_id": conv_id, "content": "snake", "content_type": "TEXT"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    let (s, _, v) = c
        .call_as(
            Method::POST,
            1,
            "/api/messages",
            Some(("authorization", &format!("Bearer {}", bob.token))),
            Some(
                &json!({"conversationId": conv_id, "content": "camel", "contentType": "TEXT",
                "senderId": alice.id}),
            ),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert!(
        v["messageId"].is_string() && v["statusUrl"].is_string(),
        "{v}"
    );

    let h = history(&c, 3, &conv_id, bob).await;
    let contents: Vec<&str> = h.iter().map(|(_, t)| t.as_str()).collect();
    assert_eq!(contents, vec!["hi bob", "snake", "camel"]);

    // Bad input: a clear 4xx, nothing written.
    let long = "x".repeat(10_001);
    for (who, p, body, status, want) in [
        (
            alice,
            path.clone(),
            json!({"content": long}),
            400,
            "CONTENT_TOO_LONG",
        ),
        (
            alice,
            path.clone(),
            json!({"content": "x", "content_type": "HOLOGRAM"}),
            400,
            "INVALID_CONTENT_TYPE",
        ),
        (
            alice,
            path.clone(),
            json!({"content": "  "}),
            400,
            "INVALID_CONTENT",
        ),
        (
            alice,
            path.clone(),
            json!({"content": "x", "message_id": "a b"}),
            400,
            "INVALID_MESSAGE_ID",
        ),
        (
            carol,
            path.clone(),
            json!({"content": "let me in"}),
            403,
            "NOT_PARTICIPANT",
        ),
        (
            alice,
            "/v1/conversations/nope/messages".to_string(),
            json!({"content": "x"}),
            404,
            "CONVERSATION_NOT_FOUND",
        ),
    ] {
        let (s, v) = call(&c, Method::POST, 2, &p, who, Some(&body)).await;
        assert_eq!((s, code(&v)), (status, want), "{body}: {v}");
    }
    let auth = format!("Bearer {}", alice.token);
    let r = c
        .http
        .post(format!("{}{path}", c.api(1)))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body("{\"content\": \"unterminated")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let many: Vec<String> = (0..101).map(|i| format!("user-{i}")).collect();
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        "/v1/conversations",
        alice,
        Some(&json!({"type": "group", "participants": many})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "TOO_MANY_PARTICIPANTS"), "{v}");
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        "/v1/conversations",
        alice,
        Some(&json!({"type": "group", "participants": ["no-such-user"]})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "UNKNOWN_USER"), "{v}");
    assert_eq!(
        history(&c, 1, &conv_id, alice).await,
        h,
        "a refused request wrote something"
    );

    // Status: bob reads alice's message; a later DELIVERED does not move it back; alice
    // cannot report on her own message; carol cannot even see it.
    let msg = "4b0c1f2e-0000-4000-8000-000000000001";
    let (s, v) = call(
        &c,
        Method::POST,
        3,
        &format!("/v1/messages/{msg}/receipts"),
        bob,
        Some(&json!({"status": "READ"})),
    )
    .await;
    assert_eq!((s, &v["current_status"]), (200, &json!("READ")), "{v}");
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        &format!("/v1/messages/{msg}/receipts"),
        bob,
        Some(&json!({"status": "DELIVERED"})),
    )
    .await;
    assert_eq!((s, &v["current_status"]), (200, &json!("READ")), "{v}");
    let (s, v) = call(
        &c,
        Method::POST,
        2,
        &format!("/v1/messages/{msg}/receipts"),
        alice,
        Some(&json!({"status": "READ"})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "OWN_MESSAGE"), "{v}");
    let (s, v) = call(
        &c,
        Method::GET,
        2,
        &format!("/v1/messages/{msg}/status"),
        carol,
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (403, "NOT_PARTICIPANT"), "{v}");
    let (s, v) = call(
        &c,
        Method::GET,
        2,
        &format!("/v1/messages/{msg}/status"),
        alice,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let statuses: Vec<&str> = v["status_history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["status"].as_str().expect("status"))
        .collect();
    // The router marks it SENT once it reads it committed, which may come before or after
    // Bob's READ (after it, SENT would go backwards and changes nothing).
    assert!(
        statuses == ["PENDING", "READ"] || statuses == ["PENDING", "SENT", "READ"],
        "{statuses:?}"
    );
    let (s, v) = call(
        &c,
        Method::GET,
        3,
        &format!("/v1/messages/{msg}"),
        bob,
        None,
    )
    .await;
    assert_eq!(
        (s, &v["content"], &v["status"]),
        (200, &json!("hi bob"), &json!("READ")),
        "{v}"
    );

    // A group: carol joins after the first message and sees only what came after.
    let (s, group) = call(
        &c,
        Method::POST,
        2,
        "/v1/conversations",
        alice,
        Some(&json!({"type": "group", "participants": [bob.id], "title": "Support"})),
    )
    .await;
    assert_eq!(s, 201, "{group}");
    let gid = group["id"].as_str().expect("id").to_string();
    let gpath = format!("/v1/conversations/{gid}/messages");
    call(
        &c,
        Method::POST,
        1,
        &gpath,
        alice,
        Some(&json!({"content": "before carol"})),
    )
    .await;
    let (s, v) = call(
        &c,
        Method::POST,
        3,
        &format!("/v1/conversations/{gid}/participants"),
        bob,
        Some(&json!({"user_id": carol.id})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    call(
        &c,
        Method::POST,
        3,
        &gpath,
        carol,
        Some(&json!({"content": "hello all"})),
    )
    .await;
    let seen = |h: Vec<(String, String)>| h.into_iter().map(|(_, t)| t).collect::<Vec<_>>();
    assert_eq!(seen(history(&c, 1, &gid, carol).await), vec!["hello all"]);
    assert_eq!(
        seen(history(&c, 2, &gid, bob).await),
        vec!["before carol", "hello all"]
    );
    let (s, v) = call(
        &c,
        Method::DELETE,
        1,
        &format!("/v1/conversations/{gid}/participants/{}", carol.id),
        alice,
        None,
    )
    .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = call(&c, Method::GET, 3, &gpath, carol, None).await;
    assert_eq!((s, code(&v)), (403, "NOT_PARTICIPANT"));

    // Two writers on different nodes at once: every reader, through every node, gets one
    // order (SC-004), and it keeps each sender's own order.
    let send_many = |who: &'static str, user: &User, node: u64| {
        let c = &c;
        let path = gpath.clone();
        let token = user.token.clone();
        async move {
            for i in 0..15 {
                let r = c
                    .http
                    .post(format!("{}{path}", c.api(node)))
                    .header("authorization", format!("Bearer {token}"))
                    .json(&json!({"content": format!("{who}-{i}")}))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(r.status().as_u16(), 202);
            }
        }
    };
    tokio::join!(send_many("a", alice, 1), send_many("b", bob, 3));
    let by_alice = seen(history(&c, 1, &gid, alice).await);
    let by_bob = seen(history(&c, 2, &gid, bob).await);
    let via_3 = seen(history(&c, 3, &gid, alice).await);
    assert_eq!(by_alice, by_bob);
    assert_eq!(by_alice, via_3);
    for who in ["a", "b"] {
        let mine: Vec<&String> = by_alice
            .iter()
            .filter(|t| t.starts_with(&format!("{who}-")))
            .collect();
        let want: Vec<String> = (0..15).map(|i| format!("{who}-{i}")).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>());
    }

    // Bob's conversations: both, with counts.
    let (s, v) = call(&c, Method::GET, 2, "/v1/conversations", bob, None).await;
    assert_eq!(s, 200, "{v}");
    let mut got: Vec<(String, u64)> = v["conversations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| {
            (
                c["id"].as_str().expect("id").to_string(),
                c["message_count"].as_u64().expect("count"),
            )
        })
        .collect();
    got.sort();
    let mut want = vec![(conv_id.clone(), 3), (gid.clone(), 32)];
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_accepted_survive_the_kill_of_their_partition_leader() {
    let mut c = cluster().await;
    let u = users(&c, &["dora", "eve"]).await;
    let (dora, eve) = (&u[0], &u[1]);
    let conv_id = direct(&c, dora, eve).await;
    let path = format!("/v1/conversations/{conv_id}/messages");

    let mut accepted: Vec<String> = Vec::new();
    let mut partition = None;
    let mut killed = None;
    for i in 0..30u32 {
        let id = format!("00000000-0000-4000-8000-{i:012}");
        if i == 10 {
            let p = partition.expect("partition known");
            let leader = c.leader(1, "chat.messages", p).await;
            c.kill(leader);
            killed = Some(leader);
        }
        let via = [1u64, 2, 3]
            .into_iter()
            .find(|n| Some(*n) != killed)
            .expect("a live node");
        // Retry with the same message_id until the outcome is known: never a duplicate.
        let body = json!({"message_id": id, "content": format!("m{i}")});
        let v = eventually(
            "the send is acknowledged",
            Duration::from_secs(30),
            || async {
                let (s, v) = call(&c, Method::POST, via, &path, dora, Some(&body)).await;
                match s {
                    200 | 202 => Some(v),
                    503 => None,
                    _ => panic!("send {i}: {s} {v}"),
                }
            },
        )
        .await;
        partition = v["partition"].as_u64().map(|p| p as usize);
        accepted.push(format!("m{i}"));
    }
    let live = [1u64, 2, 3]
        .into_iter()
        .find(|n| Some(*n) != killed)
        .expect("live");
    let got: Vec<String> = history(&c, live, &conv_id, eve)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, accepted);

    // The killed node comes back and serves the same history.
    let k = killed.expect("killed");
    c.spawn(k);
    c.wait_ready(k).await;
    let got: Vec<String> = history(&c, k, &conv_id, dora)
        .await
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    assert_eq!(got, accepted);
}
