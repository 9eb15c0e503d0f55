//! The fakes' webhook side: what they post (signed, with the recorded callback data) is what a
//! receiver using the connectors accepts; a receiver with another secret refuses it.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chat4all_connectors::testing::{FakePlatform, telegram_update};
use chat4all_connectors::{Connector, InboundEvent, Platform, RemoteStatus, Secret};
use common::{connect, fake, recipient};
use tokio::sync::mpsc;

/// A webhook endpoint like the node's: authenticate, then parse; events go to the channel.
async fn receiver(c: Arc<dyn Connector>) -> (String, mpsc::UnboundedReceiver<Vec<InboundEvent>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| async move {
            if c.authenticate_webhook(&headers, &body).is_err() {
                return StatusCode::FORBIDDEN;
            }
            match c.parse_webhook(&body) {
                Ok(events) => {
                    let _ = tx.send(events);
                    StatusCode::OK
                }
                Err(_) => StatusCode::BAD_REQUEST,
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), rx)
}

#[tokio::test]
async fn whatsapp_status_webhooks_carry_our_callback_data() {
    let (fake, c) = fake(Platform::Whatsapp).await;
    let sent = c
        .send_text("16505551234", "hi", "delivery-7")
        .await
        .expect("sent");
    let (url, mut events) = receiver(c).await;
    for word in ["sent", "delivered", "read"] {
        let code = fake
            .post_status(&url, &sent.remote_id, word)
            .await
            .expect("posted");
        assert_eq!(code, StatusCode::OK);
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let batch = events.recv().await.expect("an event batch");
        for e in batch {
            match e {
                InboundEvent::Status(s) => {
                    assert_eq!(s.remote_id, sent.remote_id);
                    assert_eq!(s.contact_id, "16505551234");
                    assert_eq!(s.callback_data.as_deref(), Some("delivery-7"));
                    seen.push(s.status);
                }
                other => panic!("{other:?}"),
            }
        }
    }
    assert_eq!(
        seen,
        [
            RemoteStatus::Sent,
            RemoteStatus::Delivered,
            RemoteStatus::Read
        ]
    );
}

#[tokio::test]
async fn instagram_reads_and_telegram_updates_are_accepted() {
    let (fake, c) = fake(Platform::Instagram).await;
    let to = recipient(Platform::Instagram);
    let sent = c.send_text(to, "hi", "").await.expect("sent");
    let (url, mut events) = receiver(c).await;
    let code = fake
        .post_instagram_read(&url, &sent.remote_id)
        .await
        .expect("posted");
    assert_eq!(code, StatusCode::OK);
    match events.recv().await.expect("events").as_slice() {
        [InboundEvent::Status(s)] => {
            assert_eq!(
                (s.remote_id.as_str(), s.contact_id.as_str()),
                (sent.remote_id.as_str(), to)
            );
            assert_eq!(s.status, RemoteStatus::Read);
        }
        other => panic!("{other:?}"),
    }

    let (fake, c) = common::fake(Platform::Telegram).await;
    let (url, mut events) = receiver(c).await;
    let code = fake
        .post_webhook(&url, telegram_update(1, 111, 5, "Ann", "hello"))
        .await
        .expect("posted");
    assert_eq!(code, StatusCode::OK);
    match events.recv().await.expect("events").as_slice() {
        [InboundEvent::Message(m)] => assert_eq!(m.text.as_deref(), Some("hello")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_receiver_with_another_secret_refuses_the_fake_s_webhooks() {
    for platform in [Platform::Telegram, Platform::Whatsapp] {
        let fake = FakePlatform::start(platform).await;
        let mut settings = fake.settings();
        settings.webhook_secret = Some(Secret::new("another-secret"));
        let (url, _events) = receiver(connect(settings)).await;
        let body = telegram_update(1, 111, 5, "Ann", "hello");
        let code = fake.post_webhook(&url, body).await.expect("posted");
        assert_eq!(code, StatusCode::FORBIDDEN, "{platform}");
    }
}
