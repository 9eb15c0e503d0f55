//! Channels on real nodes against fake Telegram and WhatsApp servers that behave like the
//! platforms (`chat4all-connectors`' `testing` feature), through the REST API only: a
//! conversation with a WhatsApp and a Telegram participant delivers to both; webhooks are
//! verified before anything is stored and a repeated one makes one message; rate limits are
//! retried after the platform's wait; a platform that is down ends in the DLQ and is
//! redriven once it is back; an unknown outcome is never re-sent; a node killed during
//! delivery loses nothing; and a partition that moves while its records wait to be retried
//! goes whole to its next owner.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use chat4all_connectors::Platform;
use chat4all_connectors::testing::{
    self, FakeFailure, FakePlatform, TELEGRAM_BOT_TOKEN, VERIFY_TOKEN, WEBHOOK_SECRET,
    WHATSAPP_ACCESS_TOKEN, WHATSAPP_PHONE_NUMBER_ID,
};
use common::{Cluster, error_code as code, eventually};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "bootstrap-secret-1";
const WAIT: Duration = Duration::from_secs(60);

/// A cluster whose connectors talk to the fakes, with the bot token in each node's
/// environment (the channel names it as `env:TEST_TG_TOKEN`).
async fn cluster(n: u64, fakes: &[&FakePlatform], extra: &str) -> Cluster {
    let mut toml = String::from("[chat]\npartitions = 3\nchannel_partitions = 3\n\n[connectors]\n");
    for f in fakes {
        let key = match f.platform() {
            Platform::Telegram => "telegram_base_url",
            Platform::Whatsapp => "whatsapp_base_url",
            Platform::Instagram => "instagram_base_url",
        };
        toml.push_str(&format!("{key} = \"{}\"\n", f.base_url()));
    }
    toml.push_str(extra);
    Cluster::start_with_env(
        n,
        &toml,
        &[
            ("CHAT4ALL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("CHAT4ALL_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("TEST_TG_TOKEN", TELEGRAM_BOT_TOKEN),
        ],
    )
    .await
}

async fn token(c: &Cluster, node: u64, email: &str, password: &str) -> (String, String) {
    let v = c.login(node, email, password).await;
    (
        v["user_id"].as_str().expect("user id").to_string(),
        v["access_token"].as_str().expect("token").to_string(),
    )
}

/// Creates a user through the admin; `identity` links a platform id. Answers its id.
async fn user(
    c: &Cluster,
    admin: &str,
    name: &str,
    password: Option<&str>,
    identity: Option<(&str, &str)>,
) -> String {
    let mut body = json!({"display_name": name, "user_type": "CUSTOMER"});
    if let Some(p) = password {
        body["email"] = json!(format!("{name}@example.com"));
        body["password"] = json!(p);
        body["user_type"] = json!("AGENT");
    }
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/users", admin, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    if let Some((platform, pid)) = identity {
        let body = json!({"platform": platform, "platform_user_id": pid});
        let path = format!("/v1/users/{id}/identities");
        let (s, v) = c
            .call_bearer(Method::POST, 1, &path, admin, Some(&body))
            .await;
        assert_eq!(s, 201, "{v}");
    }
    id
}

fn telegram_channel(name: &str, agents: &[&str]) -> Value {
    json!({"platform": "TELEGRAM", "name": name,
           "credentials": {"bot_token": "env:TEST_TG_TOKEN"},
           "webhook_secret": WEBHOOK_SECRET, "agents": agents})
}

async fn send(c: &Cluster, node: u64, token: &str, conv: &str, text: &str) -> String {
    let path = format!("/v1/conversations/{conv}/messages");
    let body = json!({"content": text});
    let (s, v) = c
        .call_bearer(Method::POST, node, &path, token, Some(&body))
        .await;
    assert_eq!(s, 202, "{v}");
    v["message_id"].as_str().expect("message id").to_string()
}

/// Waits until a message's status is `want`; answers its status document.
async fn status_becomes(c: &Cluster, node: u64, token: &str, id: &str, want: &str) -> Value {
    let path = format!("/v1/messages/{id}/status");
    eventually(&format!("{id} is {want}"), WAIT, || async {
        let (s, v) = c.call_bearer(Method::GET, node, &path, token, None).await;
        (s == 200 && v["current_status"] == want).then_some(v)
    })
    .await
}

/// The admin's and ana's tokens, a Telegram channel `tg`, and the direct conversation of ana
/// (an agent) with bo (Telegram chat 111).
async fn telegram_contact(c: &Cluster) -> (String, String, String) {
    let (_, admin) = token(c, 1, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    user(c, &admin, "ana", Some("password-123"), None).await;
    let (_, ana) = token(c, 1, "ana@example.com", "password-123").await;
    let bo = user(c, &admin, "bo", None, Some(("TELEGRAM", "111"))).await;
    let (s, v) = c
        .call_bearer(
            Method::POST,
            1,
            "/v1/channels",
            &admin,
            Some(&telegram_channel("tg", &[])),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let body = json!({"type": "direct", "participants": [bo]});
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/conversations", &ana, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    let conv = conversation(&v);
    (admin, ana, conv)
}

/// Waits until `channel`'s dead letters (through node 1) hold `message_id`; answers the entry.
async fn dead_letter(c: &Cluster, admin: &str, channel: &str, message_id: &str) -> Value {
    let path = format!("/v1/dlq?channel={channel}");
    eventually(&format!("{message_id} dead-lettered"), WAIT, || async {
        let (_, v) = c.call_bearer(Method::GET, 1, &path, admin, None).await;
        v["entries"]
            .as_array()?
            .iter()
            .find(|e| e["message_id"] == message_id)
            .cloned()
    })
    .await
}

fn conversation(v: &Value) -> String {
    v["id"].as_str().expect("conversation id").to_string()
}

/// The high watermarks of a topic's partitions, added up.
async fn records_in(c: &Cluster, node: u64, admin: &str, topic: &str) -> u64 {
    let path = format!("/v1/topics/{topic}");
    let (s, v) = c.call_bearer(Method::GET, node, &path, admin, None).await;
    assert_eq!(s, 200, "{v}");
    v["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap_or(0))
        .sum()
}

fn webhook_url(c: &Cluster, node: u64, platform: &str, channel: &str) -> String {
    format!("{}/v1/webhooks/{platform}/{channel}", c.api(node))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_reaches_whatsapp_and_telegram_and_their_webhooks_come_in() {
    let tg = FakePlatform::start(Platform::Telegram).await;
    let wa = FakePlatform::start(Platform::Whatsapp).await;
    let c = cluster(3, &[&tg, &wa], "backoff_base_ms = 50\n").await;
    let (_, admin) = token(&c, 1, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let ana_id = user(&c, &admin, "ana", Some("password-123"), None).await;
    let (_, ana) = token(&c, 2, "ana@example.com", "password-123").await;

    // Bad channels: refused, and nothing stored.
    let post = |who: String, body: Value| {
        let c = &c;
        async move {
            c.call_bearer(Method::POST, 2, "/v1/channels", &who, Some(&body))
                .await
        }
    };
    let (s, v) = post(ana.clone(), telegram_channel("tg", &[])).await;
    assert_eq!((s, code(&v)), (403, "INSUFFICIENT_SCOPE"), "{v}");
    let wrong = json!({"platform": "TELEGRAM", "name": "tg",
                       "credentials": {"bot_token": "123456:WRONG"}});
    let (s, v) = post(admin.clone(), wrong).await;
    assert_eq!((s, code(&v)), (422, "CREDENTIALS_REJECTED"), "{v}");
    let missing = json!({"platform": "WHATSAPP", "name": "wa",
                         "credentials": {"access_token": WHATSAPP_ACCESS_TOKEN}});
    let (s, v) = post(admin.clone(), missing).await;
    assert_eq!((s, code(&v)), (400, "MISSING_CREDENTIAL"), "{v}");
    let (s, v) = post(admin.clone(), telegram_channel("Bad Name", &[])).await;
    assert_eq!((s, code(&v)), (400, "INVALID_CHANNEL_NAME"), "{v}");
    let (s, v) = post(admin.clone(), json!({"platform": "SMS", "name": "x"})).await;
    assert_eq!((s, code(&v)), (400, "INVALID_PLATFORM"), "{v}");
    let (s, v) = c
        .call_bearer(Method::GET, 3, "/v1/channels", &admin, None)
        .await;
    assert_eq!((s, v["channels"].as_array().map(Vec::len)), (200, Some(0)));

    // Two channels. Their secrets are never shown.
    let (s, v) = post(admin.clone(), telegram_channel("tg", &[&ana_id])).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["account"]["id"], "123456", "{v}");
    let wa_body = json!({"platform": "WHATSAPP", "name": "wa",
        "credentials": {"access_token": WHATSAPP_ACCESS_TOKEN,
                        "phone_number_id": WHATSAPP_PHONE_NUMBER_ID},
        "webhook_secret": WEBHOOK_SECRET, "verify_token": VERIFY_TOKEN,
        "template": "reopen:en_US", "agents": [ana_id]});
    let (s, v) = post(admin.clone(), wa_body.clone()).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = post(admin.clone(), wa_body).await;
    assert_eq!((s, code(&v)), (409, "CHANNEL_EXISTS"), "{v}");
    let (_, listed) = c
        .call_bearer(Method::GET, 3, "/v1/channels", &admin, None)
        .await;
    let shown = listed.to_string();
    assert_eq!(
        listed["channels"].as_array().map(Vec::len),
        Some(2),
        "{shown}"
    );
    for secret in [
        WHATSAPP_ACCESS_TOKEN,
        WEBHOOK_SECRET,
        VERIFY_TOKEN,
        TELEGRAM_BOT_TOKEN,
    ] {
        assert!(!shown.contains(secret), "a secret is shown: {shown}");
    }

    // One message to a Telegram and a WhatsApp participant reaches both platforms.
    let bo = user(&c, &admin, "bo", None, Some(("TELEGRAM", "111"))).await;
    let cy = user(&c, &admin, "cy", None, Some(("WHATSAPP", "15551234567"))).await;
    let body = json!({"type": "group", "participants": [bo, cy], "title": "both"});
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/conversations", &ana, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    let group = conversation(&v);
    let m1 = send(&c, 1, &ana, &group, "hello both").await;
    let to_tg = tg.wait_sent(1, WAIT).await;
    let to_wa = wa.wait_sent(1, WAIT).await;
    assert_eq!(
        (to_tg[0].to.as_str(), to_tg[0].text.as_str()),
        ("111", "hello both")
    );
    // Cy never wrote to the WhatsApp number: outside the 24-hour window only the channel's
    // template may go, with the text as its parameter.
    assert_eq!(
        (to_wa[0].to.as_str(), to_wa[0].text.as_str()),
        ("15551234567", "template:reopen:en_US:hello both")
    );
    let cb = to_wa[0].callback_data.clone().unwrap_or_default();
    assert!(cb.contains(&m1), "our delivery id rides along: {cb}");
    status_becomes(&c, 3, &ana, &m1, "SENT").await;

    // Cy writes (the window opens); the channel's agent sees it, and the next message to
    // cy goes as free text.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let wa_in = webhook_url(&c, 1, "whatsapp", "wa");
    let body = testing::whatsapp_message(
        WHATSAPP_PHONE_NUMBER_ID,
        "15551234567",
        "Cy",
        "wamid.IN1",
        "hi there",
        now_s,
    );
    let s = wa.post_webhook(&wa_in, body).await.expect("post");
    assert_eq!(s.as_u16(), 200);
    eventually("cy's message reaches the agent", WAIT, || async {
        let (_, v) = c
            .call_bearer(Method::GET, 2, "/v1/conversations", &ana, None)
            .await;
        let conv = v["conversations"]
            .as_array()?
            .iter()
            .find(|x| x["primary_channel"] == "WHATSAPP")
            .map(conversation)?;
        let path = format!("/v1/conversations/{conv}/messages");
        let (_, h) = c.call_bearer(Method::GET, 2, &path, &ana, None).await;
        let first = &h["messages"].as_array()?.first()?.clone();
        (first["content"] == "hi there" && first["sender_id"] == cy.as_str()).then_some(())
    })
    .await;
    send(&c, 3, &ana, &group, "free text now").await;
    let to_wa = wa.wait_sent(2, WAIT).await;
    assert_eq!(to_wa[1].text, "free text now");
    // Bo's copy too, before anything else goes to Telegram: deliveries of different
    // conversations are not ordered with each other. (A CI run found "free text now" third
    // at Telegram below: either it came after "hello Dee", which this wait rules out, or
    // something came twice, which the list printed there would show.)
    let to_tg = tg.wait_sent(2, WAIT).await;
    assert_eq!(
        (to_tg[1].to.as_str(), to_tg[1].text.as_str()),
        ("111", "free text now")
    );

    // WhatsApp reports delivery through a signed status webhook (to another node).
    let wa_hook = webhook_url(&c, 3, "whatsapp", "wa");
    let s = wa
        .post_status(&wa_hook, &to_wa[0].remote_id, "delivered")
        .await
        .expect("post status");
    assert_eq!(s.as_u16(), 200);
    let st = status_becomes(&c, 2, &ana, &m1, "DELIVERED").await;
    let by: Vec<&Value> = st["status_history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| &h["by"])
        .collect();
    assert!(
        by.contains(&&json!(cy)),
        "reported by the WhatsApp user: {st}"
    );

    // The subscription handshake answers only our verify token.
    let hs = |token: &str| {
        format!("{wa_hook}?hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444")
    };
    let http = reqwest::Client::new();
    let r = http.get(hs(VERIFY_TOKEN)).send().await.expect("handshake");
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.expect("body"), "1158201444");
    let r = http.get(hs("nope")).send().await.expect("handshake");
    assert_eq!(r.status(), 403);

    // A forged Telegram webhook is refused and stores nothing.
    let tg_hook = webhook_url(&c, 2, "telegram", "tg");
    let before = records_in(&c, 1, &admin, "chat.inbound").await;
    let forged = testing::telegram_update(9000, 222, 4, "Mallory", "forged");
    let r = http
        .post(&tg_hook)
        .header("X-Telegram-Bot-Api-Secret-Token", "not-the-secret")
        .header("content-type", "application/json")
        .body(forged.clone())
        .send()
        .await
        .expect("forged");
    assert_eq!(r.status(), 401);
    let r = http
        .post(&tg_hook)
        .body(forged)
        .send()
        .await
        .expect("unsigned");
    assert_eq!(r.status(), 401);
    assert_eq!(records_in(&c, 1, &admin, "chat.inbound").await, before);

    // A new contact writes; Telegram delivers the webhook twice. Then a second message, so
    // that when it is in, the repeat before it has been processed too.
    let first = testing::telegram_update(9001, 222, 5, "Dee", "hi from telegram");
    for _ in 0..2 {
        let s = tg
            .post_webhook(&tg_hook, first.clone())
            .await
            .expect("post");
        assert_eq!(s.as_u16(), 200);
    }
    let second = testing::telegram_update(9002, 222, 6, "Dee", "still there?");
    let s = tg.post_webhook(&tg_hook, second).await.expect("post");
    assert_eq!(s.as_u16(), 200);
    // The channel's agent finds the conversation the contact opened, with each message once.
    let dee_conv = eventually("Dee's conversation", WAIT, || async {
        let (_, v) = c
            .call_bearer(Method::GET, 3, "/v1/conversations", &ana, None)
            .await;
        v["conversations"]
            .as_array()?
            .iter()
            .find(|x| x["title"] == "Dee")
            .map(conversation)
    })
    .await;
    let path = format!("/v1/conversations/{dee_conv}/messages?limit=50");
    let msgs = eventually("both inbound messages", WAIT, || async {
        let (s, v) = c.call_bearer(Method::GET, 1, &path, &ana, None).await;
        let list = v["messages"].as_array()?.clone();
        (s == 200 && list.iter().any(|m| m["content"] == "still there?")).then_some(list)
    })
    .await;
    let texts: Vec<&str> = msgs.iter().filter_map(|m| m["content"].as_str()).collect();
    assert_eq!(texts, vec!["still there?", "hi from telegram"], "{msgs:?}");
    assert!(msgs.iter().all(|m| m["status"] == "RECEIVED"), "{msgs:?}");

    // The agent answers in that conversation, and the answer goes back out to the contact.
    send(&c, 2, &ana, &dee_conv, "hello Dee").await;
    // (Bo got "hello both" and "free text now" before.)
    let to_tg = tg.wait_sent(3, WAIT).await;
    assert_eq!(
        (to_tg[2].to.as_str(), to_tg[2].text.as_str()),
        ("222", "hello Dee"),
        "{to_tg:?}"
    );
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instagram_splits_long_texts_and_its_reads_become_read_receipts() {
    let ig = FakePlatform::start(Platform::Instagram).await;
    let c = cluster(1, &[&ig], "").await;
    let (_, admin) = token(&c, 1, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    user(&c, &admin, "ana", Some("password-123"), None).await;
    let (_, ana) = token(&c, 1, "ana@example.com", "password-123").await;
    let dan = user(&c, &admin, "dan", None, Some(("INSTAGRAM", "5550001"))).await;
    let body = json!({"platform": "INSTAGRAM", "name": "ig",
        "credentials": {"access_token": testing::INSTAGRAM_ACCESS_TOKEN,
                        "ig_id": testing::INSTAGRAM_ID},
        "webhook_secret": WEBHOOK_SECRET});
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/channels", &admin, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    let body = json!({"type": "direct", "participants": [dan]});
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/conversations", &ana, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    let conv = conversation(&v);

    // 1,500 bytes: Instagram takes 1,000 per message, so two parts, split at a space.
    let long: String = (0..300).map(|i| format!("w{:03} ", i % 1000)).collect();
    let long = long.trim_end().to_string();
    assert!(long.len() > 1000 && long.len() < 2000);
    let m = send(&c, 1, &ana, &conv, &long).await;
    let sent = ig.wait_sent(2, WAIT).await;
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter()
            .all(|p| p.to == "5550001" && p.text.len() <= 1000)
    );
    assert_eq!(format!("{}{}", sent[0].text, sent[1].text), long);
    status_becomes(&c, 1, &ana, &m, "SENT").await;

    // Dan reads it: Instagram names the message by its own id only.
    let hook = webhook_url(&c, 1, "instagram", "ig");
    let s = ig
        .post_instagram_read(&hook, &sent[1].remote_id)
        .await
        .expect("post read");
    assert_eq!(s.as_u16(), 200);
    let st = status_becomes(&c, 1, &ana, &m, "READ").await;
    let last = st["status_history"]
        .as_array()
        .and_then(|h| h.last().cloned())
        .expect("history");
    assert_eq!(last["by"], dan.as_str(), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_stops_calls_to_its_platform_while_other_channels_carry_on() {
    let tg = FakePlatform::start(Platform::Telegram).await;
    let ig = FakePlatform::start(Platform::Instagram).await;
    // Two failures in a row open a channel's circuit, for longer than the test.
    let extra = "backoff_base_ms = 50\nbreaker_failures = 2\nbreaker_open_ms = 600000\n";
    let c = cluster(1, &[&tg, &ig], extra).await;
    let (admin, ana, _) = telegram_contact(&c).await;
    let bo = c
        .call_bearer(
            Method::GET,
            1,
            "/v1/identities/resolve?platform=TELEGRAM&platform_user_id=111",
            &admin,
            None,
        )
        .await
        .1["id"]
        .as_str()
        .expect("bo")
        .to_string();
    let dan = user(&c, &admin, "dan", None, Some(("INSTAGRAM", "5550001"))).await;
    let body = json!({"platform": "INSTAGRAM", "name": "ig",
        "credentials": {"access_token": testing::INSTAGRAM_ACCESS_TOKEN,
                        "ig_id": testing::INSTAGRAM_ID}});
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/channels", &admin, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    let body = json!({"type": "group", "participants": [bo, dan]});
    let (s, v) = c
        .call_bearer(Method::POST, 1, "/v1/conversations", &ana, Some(&body))
        .await;
    assert_eq!(s, 201, "{v}");
    let group = conversation(&v);

    // Telegram answers 429 twice: the circuit opens, and the third attempt never leaves.
    tg.fail_next(vec![
        FakeFailure::RateLimited { retry_after_s: 0 },
        FakeFailure::RateLimited { retry_after_s: 0 },
    ]);
    let x = send(&c, 1, &ana, &group, "x").await;
    assert_eq!(ig.wait_sent(1, WAIT).await[0].text, "x");
    let e = dead_letter(&c, &admin, "tg", &x).await;
    assert_eq!(e["attempts"], 3, "{e}");
    assert!(
        e["last_error"].as_str().unwrap_or("").contains("circuit"),
        "{e}"
    );
    assert_eq!(
        tg.requests(),
        2,
        "the open circuit kept the third call home"
    );

    // While it is open, Telegram gets no call at all; Instagram carries on.
    let y = send(&c, 1, &ana, &group, "y").await;
    assert_eq!(ig.wait_sent(2, WAIT).await[1].text, "y");
    dead_letter(&c, &admin, "tg", &y).await;
    assert_eq!(tg.requests(), 2);
    let metrics = c.metrics(1).await;
    assert!(
        metrics.contains("chat4all_connector_circuit_state{channel=\"tg\"} 1"),
        "the circuit shows as open"
    );
    assert!(metrics.contains("chat4all_connector_circuit_state{channel=\"ig\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_ca_certificates_serves_and_says_why_channels_are_unavailable() {
    // No CA certificates for HTTPS (as in an image made FROM scratch without a bundle): the
    // node must still start and serve, and a channel must be refused with the reason.
    let empty = tempfile::tempdir().expect("empty certificate directory");
    let bundle = empty.path().join("bundle.pem");
    std::fs::write(&bundle, "").expect("empty bundle");
    let (bundle, dir) = (bundle.to_string_lossy(), empty.path().to_string_lossy());
    let c = Cluster::start_with_env(
        1,
        // Nothing leaves the machine even if a client were made.
        "[connectors]\ntelegram_base_url = \"http://127.0.0.1:9\"\n",
        &[
            ("CHAT4ALL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("CHAT4ALL_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("TEST_TG_TOKEN", TELEGRAM_BOT_TOKEN),
            ("SSL_CERT_FILE", &bundle),
            ("SSL_CERT_DIR", &dir),
        ],
    )
    .await;
    let (_, admin) = token(&c, 1, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (s, v) = c
        .call_bearer(
            Method::POST,
            1,
            "/v1/channels",
            &admin,
            Some(&telegram_channel("tg", &[])),
        )
        .await;
    assert_eq!((s, code(&v)), (502, "PLATFORM_UNAVAILABLE"), "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("CA certificates"), "{v}");
    let (s, v) = c
        .call_bearer(Method::GET, 1, "/v1/channels", &admin, None)
        .await;
    assert_eq!((s, v["channels"].as_array().map(Vec::len)), (200, Some(0)));
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
