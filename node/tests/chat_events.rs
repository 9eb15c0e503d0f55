//! The chat event streams on a real 3-node cluster, through the REST API only: a receiver on
//! another node gets every event once, in order, across the SIGKILL of the conversation's
//! leader and reconnects; the stream over a WebSocket and with a token in the query; and the
//! sender's own stream with each message's SENT once; one stream over conversations in
//! several partitions, resumed mid-way on another node.

mod common;

use std::time::Duration;

use common::chat::{call, cluster, direct, users};
use common::sse::{EventStream, Sse, advances};
use common::{error_code as code, eventually};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_on_another_node_gets_every_event_once_in_order_across_a_kill() {
    let mut c = cluster().await;
    let u = users(&c, &["fay", "gus"]).await;
    let (fay, gus) = (&u[0], &u[1]);
    let conv_id = direct(&c, fay, gus).await;
    let path = format!("/v1/conversations/{conv_id}/messages");

    // Gus listens on node 3 before anything is sent.
    let mut stream = EventStream::open(&c, 3, &gus.token, None)
        .await
        .expect("stream opens");
    let mut events: Vec<Sse> = Vec::new();
    let mut killed: Option<u64> = None;
    let mut partition: Option<usize> = None;
    let mut reconnects = 0;
    let total = 20u32;
    let mut sent = 0u32;
    let mut via_stream = 3u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let messages = |events: &[Sse]| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.kind == "message")
            .map(|e| e.data["content"].as_str().unwrap_or("").to_string())
            .collect()
    };
    while messages(&events).len() < total as usize {
        assert!(
            std::time::Instant::now() < deadline,
            "stalled with {:?}",
            messages(&events)
        );
        // Fay sends the next message once Gus has seen the previous one, through a live node,
        // retrying the same message_id while the outcome is unknown.
        if sent < total && messages(&events).len() == sent as usize {
            if sent == 10 && killed.is_none() {
                // Mid-stream: SIGKILL the leader of the conversation's partition.
                let leader = c
                    .leader(1, "chat.messages", partition.expect("known"))
                    .await;
                c.kill(leader);
                killed = Some(leader);
            }
            let via = [1u64, 2, 3]
                .into_iter()
                .find(|n| Some(*n) != killed)
                .expect("live");
            let body = json!({"message_id": format!("00000000-0000-4000-9000-{sent:012}"),
                "content": format!("m{sent}")});
            let v = eventually(
                "the send is acknowledged",
                Duration::from_secs(30),
                || async {
                    let (s, v) = call(&c, Method::POST, via, &path, fay, Some(&body)).await;
                    match s {
                        200 | 202 => Some(v),
                        503 => None,
                        _ => panic!("send: {s} {v}"),
                    }
                },
            )
            .await;
            partition = v["partition"].as_u64().map(|p| p as usize);
            sent += 1;
        }
        // After 15 messages the client also leaves on purpose, so resuming is always tested.
        let leave = messages(&events).len() == 15 && reconnects == 0;
        let next = if leave {
            None
        } else {
            stream.next(Duration::from_secs(3)).await
        };
        match next {
            Some(e) => events.push(e),
            None => {
                reconnects += 1;
                // The stream broke (its node was killed) or went quiet: reconnect, to another
                // live node, from the last event seen.
                via_stream = [1u64, 2, 3]
                    .into_iter()
                    .filter(|n| Some(*n) != killed)
                    .find(|n| *n != via_stream)
                    .unwrap_or(via_stream);
                let last = events.last().map(|e| e.id.clone());
                stream = eventually("the stream reopens", Duration::from_secs(30), || async {
                    EventStream::open(&c, via_stream, &gus.token, last.as_deref()).await
                })
                .await;
            }
        }
    }
    // Every event once, in order: each event's cursor is one step past the one before it
    // (across the reconnects too), and the messages arrive in the order they were sent.
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert!(
        ids.windows(2).all(|w| advances(w[0], w[1])),
        "event ids {ids:?}"
    );
    let want: Vec<String> = (0..total).map(|i| format!("m{i}")).collect();
    assert_eq!(messages(&events), want);
    assert!(killed.is_some());
    assert!(reconnects >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_over_a_websocket_and_with_a_token_in_the_query() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message as Ws;

    let c = cluster().await;
    let u = users(&c, &["hal", "ivy"]).await;
    let (hal, ivy) = (&u[0], &u[1]);
    let conv_id = direct(&c, hal, ivy).await;

    // Ivy listens over a WebSocket on node 2, with the token in the query (as a browser must).
    let ws_url = format!(
        "{}/v1/ws?access_token={}",
        c.api(2).replace("http://", "ws://"),
        ivy.token
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("websocket");
    for i in 0..3 {
        let (s, v) = call(
            &c,
            Method::POST,
            1,
            &format!("/v1/conversations/{conv_id}/messages"),
            hal,
            Some(&json!({"content": format!("w{i}")})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
    }
    let mut frames: Vec<Value> = Vec::new();
    while frames.iter().filter(|f| f["event"] == "message").count() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame within 20 s")
            .expect("the socket stays open")
            .expect("a good frame");
        if let Ws::Text(t) = msg {
            frames.push(serde_json::from_str(&t).expect("JSON frame"));
        }
    }
    let ids: Vec<&str> = frames
        .iter()
        .map(|f| f["id"].as_str().expect("id"))
        .collect();
    assert!(ids.windows(2).all(|w| advances(w[0], w[1])), "{ids:?}");
    assert!(
        frames
            .iter()
            .zip(&ids)
            .all(|(f, id)| f["data"]["cursor"] == *id)
    );
    let texts: Vec<&str> = frames
        .iter()
        .filter(|f| f["event"] == "message")
        .map(|f| f["data"]["content"].as_str().expect("content"))
        .collect();
    assert_eq!(texts, vec!["w0", "w1", "w2"]);
    let _ = ws.send(Ws::Close(None)).await;

    // The same events over SSE from the start (cursor 0), token in the query, no header.
    let r = c
        .http
        .get(format!(
            "{}/v1/events?cursor=0&access_token={}",
            c.api(3),
            ivy.token
        ))
        .send()
        .await
        .expect("events");
    assert_eq!(r.status().as_u16(), 200);
    let mut stream = EventStream::from_response(r);
    let first = stream
        .next(Duration::from_secs(10))
        .await
        .expect("an event");
    assert_eq!(first.kind, "conversation_created", "{first:?}");
    assert_eq!(first.data["cursor"], first.id.as_str());
    // A token in the query is only for the two streams.
    let (s, _, v) = c
        .call_as(
            Method::GET,
            1,
            &format!("/v1/users/{}?access_token={}", ivy.id, ivy.token),
            None,
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (401, "UNAUTHENTICATED"));
    // A bad cursor is refused before the stream starts.
    let (s, _, v) = c
        .call_as(
            Method::GET,
            1,
            "/v1/events?cursor=abc",
            Some(("authorization", &format!("Bearer {}", ivy.token))),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (400, "INVALID_CURSOR"));
    // So is one with the wrong number of positions (one per `chat.messages` partition).
    let (s, _, v) = c
        .call_as(
            Method::GET,
            1,
            &format!("/v1/events?cursor={first_id}-0", first_id = first.id),
            Some(("authorization", &format!("Bearer {}", ivy.token))),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (400, "INVALID_CURSOR"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_sees_each_message_sent_once_on_its_stream() {
    let c = cluster().await;
    let u = users(&c, &["jo", "kim"]).await;
    let (jo, kim) = (&u[0], &u[1]);
    let conv_id = direct(&c, jo, kim).await;
    let path = format!("/v1/conversations/{conv_id}/messages");
    // Jo listens on node 2 and sends through node 1: six at once (the router marks what a
    // tick delivered in one write), then one more once those six read SENT.
    let mut stream = EventStream::open(&c, 2, &jo.token, None)
        .await
        .expect("stream opens");
    let mut ids = Vec::new();
    for i in 0..7 {
        if i == 6 {
            for id in &ids {
                eventually("SENT", Duration::from_secs(30), || async {
                    let path = format!("/v1/messages/{id}/status");
                    let (s, v) = call(&c, Method::GET, 3, &path, jo, None).await;
                    (s == 200 && v["current_status"] == "SENT").then_some(())
                })
                .await;
            }
        }
        let (s, v) = call(
            &c,
            Method::POST,
            1,
            &path,
            jo,
            Some(&json!({"content": format!("s{i}")})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        ids.push(v["message_id"].as_str().expect("id").to_string());
    }
    // Jo's stream: each message, and once the router read it its SENT, once each. The last
    // message's SENT comes after any repeat of the others' (one conversation: one order).
    let mut events: Vec<Sse> = Vec::new();
    let last_sent = |events: &[Sse]| {
        events
            .iter()
            .any(|e| e.kind == "status" && e.data["message_id"] == ids[6].as_str())
    };
    while !last_sent(&events) {
        let e = stream
            .next(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("the stream stopped after {events:?}"));
        events.push(e);
    }
    let of = |kind: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.data["message_id"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(of("message"), ids);
    let mut sent = of("status");
    assert!(
        events
            .iter()
            .filter(|e| e.kind == "status")
            .all(|e| e.data["status"] == "SENT"),
        "{events:?}"
    );
    sent.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(sent, want, "one SENT per message");
    // Each message's status history says the same.
    for id in &ids {
        let (s, v) = call(
            &c,
            Method::GET,
            3,
            &format!("/v1/messages/{id}/status"),
            jo,
            None,
        )
        .await;
        assert_eq!(s, 200, "{v}");
        let history: Vec<&str> = v["status_history"]
            .as_array()
            .expect("history")
            .iter()
            .map(|h| h["status"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(history, ["PENDING", "SENT"], "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_merges_conversations_of_every_partition_and_resumes_mid_way() {
    let c = cluster().await;
    let u = users(&c, &["lu", "max"]).await;
    let (lu, max) = (&u[0], &u[1]);
    // Groups of Lu and Max with one message each, until their conversations span at least
    // two of the three `chat.messages` partitions (ids are random: bounded tries).
    let mut sent: Vec<(String, String)> = Vec::new();
    let mut partitions = std::collections::BTreeSet::new();
    for i in 0..12 {
        if sent.len() >= 4 && partitions.len() >= 2 {
            break;
        }
        let (s, g) = call(
            &c,
            Method::POST,
            1,
            "/v1/conversations",
            lu,
            Some(&json!({"type": "group", "participants": [max.id], "title": format!("g{i}")})),
        )
        .await;
        assert_eq!(s, 201, "{g}");
        let gid = g["id"].as_str().expect("id").to_string();
        let (s, v) = call(
            &c,
            Method::POST,
            1 + i % 3,
            &format!("/v1/conversations/{gid}/messages"),
            lu,
            Some(&json!({"content": format!("x{i}")})),
        )
        .await;
        assert_eq!(s, 202, "{v}");
        partitions.insert(v["partition"].as_u64().expect("partition"));
        sent.push((gid, v["message_id"].as_str().expect("id").to_string()));
    }
    assert!(partitions.len() >= 2, "all in {partitions:?}");

    // Max reads everything from the start on node 2: each conversation's creation and its
    // message, one step of one partition's position per event.
    let read_all = |node: u64, cursor: String, want: usize| {
        let c = &c;
        async move {
            let r = c
                .http
                .get(format!("{}/v1/events?cursor={cursor}", c.api(node)))
                .header("authorization", format!("Bearer {}", max.token))
                .send()
                .await
                .expect("events");
            assert_eq!(r.status().as_u16(), 200);
            let mut stream = EventStream::from_response(r);
            let mut events: Vec<Sse> = Vec::new();
            while events.len() < want {
                let e = stream
                    .next(Duration::from_secs(20))
                    .await
                    .unwrap_or_else(|| panic!("the stream stopped after {events:?}"));
                events.push(e);
            }
            events
        }
    };
    let all = read_all(2, "0".into(), 2 * sent.len()).await;
    let ids: Vec<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert!(advances("0-0-0", ids[0]), "{ids:?}");
    assert!(ids.windows(2).all(|w| advances(w[0], w[1])), "{ids:?}");
    let what = |e: &Sse| {
        let id = e.data["message_id"].as_str().unwrap_or("").to_string();
        // A creation event carries the conversation itself.
        let conversation = e.data["conversation_id"]
            .as_str()
            .or(e.data["conversation"]["id"].as_str())
            .unwrap_or("");
        (e.kind.clone(), conversation.to_string(), id)
    };
    for (gid, mid) in &sent {
        let created = all
            .iter()
            .position(|e| e.kind == "conversation_created" && what(e).1 == *gid);
        let message = all
            .iter()
            .position(|e| e.kind == "message" && what(e).2 == *mid);
        assert!(
            created.is_some() && message.is_some() && created < message,
            "{gid}: {all:?}"
        );
    }

    // Resumed through node 3 from the middle: exactly the events after that point.
    let half = all.len() / 2;
    let rest = read_all(3, all[half - 1].id.clone(), all.len() - half).await;
    let mut got: Vec<_> = rest.iter().map(what).collect();
    let mut want: Vec<_> = all[half..].iter().map(what).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}
