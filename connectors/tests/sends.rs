//! Each connector against its fake platform: credentials checked, texts sent with the exact
//! body the platform expects, and every failure classified the way the delivery workers need
//! (retry, wait, never resend blindly).

mod common;

use std::time::Duration;

use chat4all_connectors::testing::{
    FakeFailure, FakePlatform, INSTAGRAM_ID, WHATSAPP_PHONE_NUMBER_ID,
};
use chat4all_connectors::{Account, ConnectorError, Platform, Secret};
use common::{PLATFORMS, connect, fake, recipient};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn verify_names_the_account() {
    let expected = [
        (Platform::Telegram, "123456", "chat4all_test_bot"),
        (
            Platform::Whatsapp,
            WHATSAPP_PHONE_NUMBER_ID,
            "Chat4All Test",
        ),
        (Platform::Instagram, INSTAGRAM_ID, "chat4all_test"),
    ];
    for (platform, id, name) in expected {
        let (_fake, c) = fake(platform).await;
        let account = c.verify().await.expect("good credentials verify");
        assert_eq!(
            account,
            Account {
                id: id.into(),
                name: Some(name.into())
            },
            "{platform}"
        );
    }
}

#[tokio::test]
async fn verify_with_a_bad_token_is_unauthorized() {
    for platform in PLATFORMS {
        let fake = FakePlatform::start(platform).await;
        let field = match platform {
            Platform::Telegram => "bot_token",
            _ => "access_token",
        };
        // Telegram: a well-formed unknown token (401) and a malformed one (404).
        for token in ["123456:WRONG", "nope"] {
            let mut settings = fake.settings();
            settings
                .credentials
                .insert(field.into(), Secret::new(token));
            let err = connect(settings)
                .verify()
                .await
                .expect_err("bad token refused");
            assert!(
                matches!(err, ConnectorError::Unauthorized(_)),
                "{platform} {token}: {err:?}"
            );
            assert!(!err.is_retryable());
        }
    }
}

#[tokio::test]
async fn verify_of_an_unknown_object_is_rejected() {
    for (platform, field) in [
        (Platform::Whatsapp, "phone_number_id"),
        (Platform::Instagram, "ig_id"),
    ] {
        let fake = FakePlatform::start(platform).await;
        let mut settings = fake.settings();
        settings
            .credentials
            .insert(field.into(), Secret::new("999"));
        let err = connect(settings).verify().await.expect_err("unknown id");
        assert!(
            matches!(err, ConnectorError::Rejected { code: 100, .. }),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn send_text_returns_the_platform_id_and_sends_the_exact_body() {
    for platform in PLATFORMS {
        let (fake, c) = fake(platform).await;
        let to = recipient(platform);
        let sent = c
            .send_text(to, "héllo 👋", "delivery-1")
            .await
            .expect("sent");
        let recorded = fake.sent();
        assert_eq!(recorded.len(), 1, "{platform}");
        let r = &recorded[0];
        assert_eq!(sent.remote_id, r.remote_id, "{platform}");
        assert_eq!((r.to.as_str(), r.text.as_str()), (to, "héllo 👋"));
        let body = match platform {
            Platform::Telegram => {
                assert!(sent.remote_id.starts_with("111:"), "{}", sent.remote_id);
                json!({ "chat_id": 111, "text": "héllo 👋" })
            }
            Platform::Whatsapp => {
                assert_eq!(r.callback_data.as_deref(), Some("delivery-1"));
                json!({
                    "messaging_product": "whatsapp", "recipient_type": "individual", "to": to,
                    "type": "text", "text": { "preview_url": false, "body": "héllo 👋" },
                    "biz_opaque_callback_data": "delivery-1",
                })
            }
            Platform::Instagram => {
                json!({ "recipient": { "id": to }, "message": { "text": "héllo 👋" } })
            }
        };
        assert_eq!(r.body, body, "{platform}");
        assert_eq!(fake.requests(), 1);
    }
}

#[tokio::test]
async fn telegram_channel_names_go_as_strings() {
    let (fake, c) = fake(Platform::Telegram).await;
    let sent = c.send_text("@news", "hi", "").await.expect("sent");
    let r = &fake.sent()[0];
    assert_eq!(r.body, json!({ "chat_id": "@news", "text": "hi" }));
    assert!(sent.remote_id.starts_with("-100"), "{}", sent.remote_id);
}

#[tokio::test]
async fn platform_refusals_are_rejections() {
    let bad_recipient = [
        (Platform::Telegram, "not-a-chat", 400),
        (Platform::Whatsapp, "+1 555", 100),
        (Platform::Instagram, "someone", 100),
    ];
    for (platform, to, code) in bad_recipient {
        let (fake, c) = fake(platform).await;
        let err = c.send_text(to, "hi", "d").await.expect_err("refused");
        match &err {
            ConnectorError::Rejected { code: got, .. } => assert_eq!(*got, code, "{platform}"),
            other => panic!("{platform}: {other:?}"),
        }
        assert!(!err.is_retryable() && !err.is_indeterminate());
        assert!(fake.sent().is_empty());
    }
}

#[tokio::test]
async fn scripted_rejections_classify_by_code() {
    type Expect = fn(&ConnectorError) -> bool;
    let cases: [(Platform, i64, Expect); 6] = [
        (Platform::Telegram, 403, |e| {
            matches!(e, ConnectorError::Rejected { code: 403, .. })
        }),
        (Platform::Whatsapp, 131_047, |e| {
            matches!(e, ConnectorError::Rejected { code: 131_047, .. })
        }),
        (Platform::Whatsapp, 1, ConnectorError::is_retryable),
        (
            Platform::Whatsapp,
            131_000,
            ConnectorError::is_indeterminate,
        ),
        (Platform::Instagram, 551, |e| {
            matches!(e, ConnectorError::Rejected { code: 551, .. })
        }),
        (Platform::Instagram, 190, |e| {
            matches!(e, ConnectorError::Unauthorized(_))
        }),
    ];
    for (platform, code, expected) in cases {
        let (fake, c) = fake(platform).await;
        fake.fail_next(vec![FakeFailure::Reject { code }]);
        let err = c
            .send_text(recipient(platform), "hi", "d")
            .await
            .expect_err("scripted");
        assert!(expected(&err), "{platform} {code}: {err:?}");
        assert!(fake.sent().is_empty());
    }
}

#[tokio::test]
async fn rate_limits_are_retryable_after_the_platform_s_wait() {
    for platform in PLATFORMS {
        let (fake, c) = fake(platform).await;
        fake.fail_next(vec![FakeFailure::RateLimited { retry_after_s: 7 }]);
        let err = c
            .send_text(recipient(platform), "hi", "d")
            .await
            .expect_err("limited");
        assert!(
            matches!(err, ConnectorError::RateLimited { .. }),
            "{platform}: {err:?}"
        );
        assert!(err.is_retryable());
        assert_eq!(
            err.retry_after(),
            Some(Duration::from_secs(7)),
            "{platform}"
        );
        assert!(fake.sent().is_empty(), "a refused send is not delivered");
        // The failure is consumed: the retry goes through.
        c.send_text(recipient(platform), "hi", "d")
            .await
            .expect("retry sent");
        assert_eq!(fake.sent().len(), 1);
        assert_eq!(fake.requests(), 2);
    }
}

#[tokio::test]
async fn a_server_error_on_a_send_is_indeterminate() {
    for platform in PLATFORMS {
        let (fake, c) = fake(platform).await;
        fake.fail_next(vec![FakeFailure::ServerError]);
        let err = c
            .send_text(recipient(platform), "hi", "d")
            .await
            .expect_err("500");
        assert!(err.is_indeterminate(), "{platform}: {err:?}");
        assert!(!err.is_retryable());
    }
}

#[tokio::test]
async fn an_accepted_send_without_an_answer_is_indeterminate() {
    for platform in PLATFORMS {
        let fake = FakePlatform::start(platform).await;
        let mut settings = fake.settings();
        settings.timeout = Duration::from_millis(300);
        let c = connect(settings);
        fake.fail_next(vec![FakeFailure::AcceptThenDrop]);
        let err = c
            .send_text(recipient(platform), "hi", "d")
            .await
            .expect_err("no answer");
        assert!(err.is_indeterminate(), "{platform}: {err:?}");
        // The platform did take it: resending would duplicate it.
        let sent = fake.sent();
        assert_eq!(sent.len(), 1, "{platform}");
        assert_eq!(sent[0].text, "hi");
        // Stopping cuts the held answer instead of waiting for it.
        fake.stop().await;
        fake.restart().await;
        c.send_text(recipient(platform), "again", "d")
            .await
            .expect("sent after restart");
    }
}

#[tokio::test]
async fn a_stopped_platform_is_unavailable_until_it_restarts() {
    for platform in PLATFORMS {
        let (fake, c) = fake(platform).await;
        // Up, then down: the client has talked to it before.
        c.send_text(recipient(platform), "one", "d1")
            .await
            .expect("sent");
        fake.stop().await;
        let err = c
            .send_text(recipient(platform), "two", "d2")
            .await
            .expect_err("down");
        assert!(
            matches!(err, ConnectorError::Unavailable(_)),
            "{platform}: {err:?}"
        );
        assert!(err.is_retryable());
        let err = c.verify().await.expect_err("down");
        assert!(err.is_retryable(), "{platform}: {err:?}");
        fake.restart().await;
        c.send_text(recipient(platform), "two", "d2")
            .await
            .expect("sent after restart");
        let texts: Vec<String> = fake.sent().into_iter().map(|s| s.text).collect();
        assert_eq!(texts, ["one", "two"], "{platform}");
    }
}

#[tokio::test]
async fn too_long_and_empty_texts_are_refused_before_any_call() {
    let too_long = [
        (Platform::Telegram, "a".repeat(4097)),
        (Platform::Whatsapp, "😀".repeat(4097)),
        // 501 characters, 1002 bytes.
        (Platform::Instagram, "é".repeat(501)),
    ];
    for (platform, text) in too_long {
        let (fake, c) = fake(platform).await;
        let err = c
            .send_text(recipient(platform), &text, "d")
            .await
            .expect_err("too long");
        assert!(
            matches!(err, ConnectorError::TooLong { .. }),
            "{platform}: {err:?}"
        );
        let err = c
            .send_text(recipient(platform), "", "d")
            .await
            .expect_err("empty");
        assert!(
            matches!(err, ConnectorError::Rejected { code: 0, .. }),
            "{platform}: {err:?}"
        );
        assert_eq!(fake.requests(), 0, "{platform}: no call made");
    }
}

#[tokio::test]
async fn every_split_part_is_accepted_and_the_parts_give_back_the_text() {
    let paragraph = "Ünïcödé wörds and 😀 emoji, ".repeat(40) + "\n";
    let text = paragraph.repeat(12);
    for platform in PLATFORMS {
        let (fake, c) = fake(platform).await;
        let parts = c.split_text(&text);
        assert!(parts.len() > 1, "{platform}");
        for part in &parts {
            c.send_text(recipient(platform), part, "d")
                .await
                .expect("a part fits");
        }
        let sent: String = fake.sent().into_iter().map(|s| s.text).collect();
        assert_eq!(sent, text, "{platform}");
    }
}

#[tokio::test]
async fn wait_sent_wakes_on_the_send_and_gives_up_at_the_timeout() {
    let (fake, c) = fake(Platform::Whatsapp).await;
    let send = tokio::spawn(async move { c.send_text("16505551234", "hi", "d").await });
    let sent = fake.wait_sent(1, WAIT).await;
    assert_eq!(sent.len(), 1);
    send.await.expect("task").expect("sent");
    let sent = fake.wait_sent(2, Duration::from_millis(50)).await;
    assert_eq!(sent.len(), 1, "only what there is");
}
