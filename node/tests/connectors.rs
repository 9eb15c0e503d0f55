//! Channels on real nodes against fake Telegram, WhatsApp and Instagram servers that behave
//! like the platforms (`chat4all-connectors`' `testing` feature), through the REST API only:
//! a conversation with a WhatsApp and a Telegram participant delivers to both; webhooks are
//! verified before anything is stored and a repeated one makes one message; Instagram splits
//! long texts and its reads become receipts; an open circuit stops one channel only; a node
//! without CA certificates says why channels are unavailable. What delivery guarantees when
//! platforms fail and nodes die is in `delivery.rs`.

mod common;

use chat4all_connectors::Platform;
use chat4all_connectors::testing::{
    self, FakeFailure, FakePlatform, TELEGRAM_BOT_TOKEN, VERIFY_TOKEN, WEBHOOK_SECRET,
    WHATSAPP_ACCESS_TOKEN, WHATSAPP_PHONE_NUMBER_ID,
};
use common::connectors::{
    ADMIN_EMAIL, ADMIN_PASSWORD, WAIT, cluster, conversation, dead_letter, records_in, send,
    status_becomes, telegram_channel, telegram_contact, token, user, webhook_url,
};
use common::{Cluster, error_code as code, eventually};
use reqwest::Method;
use serde_json::{Value, json};

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
