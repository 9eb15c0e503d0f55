//! Answers no fake platform gives on purpose but proxies and bad days do: HTML error pages,
//! bodies that are not JSON, 429s without an envelope, connections cut mid-answer. Each must
//! be classified so that a send is never resent when it may have gone out, and a read is
//! retried.

mod common;

use std::io;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chat4all_connectors::testing::FakePlatform;
use chat4all_connectors::{Connector, ConnectorError, Platform};
use common::connect;
use std::sync::Arc;
use std::time::Duration;

/// A server that gives every request the answer `make` builds.
async fn serve(make: fn() -> Response) -> String {
    let app = Router::new().fallback(move || async move { make() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// A connector of `platform` (the fakes' credentials) talking to the server answering `make`.
async fn against(platform: Platform, make: fn() -> Response) -> Arc<dyn Connector> {
    let mut settings = FakePlatform::start(platform).await.settings();
    settings.base_url = serve(make).await;
    settings.timeout = Duration::from_secs(5);
    connect(settings)
}

fn html(status: StatusCode) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><body>Bad Gateway</body></html>",
    )
        .into_response()
}

fn bad_gateway() -> Response {
    html(StatusCode::BAD_GATEWAY)
}

fn cut_mid_answer() -> Response {
    let cut = futures::stream::once(async { Err::<Bytes, io::Error>(io::Error::other("cut")) });
    Response::new(Body::from_stream(cut))
}

fn not_json_ok() -> Response {
    (StatusCode::OK, "surprise").into_response()
}

#[tokio::test]
async fn a_5xx_page_is_indeterminate_for_a_send_and_unavailable_for_a_read() {
    for platform in common::PLATFORMS {
        let c = against(platform, bad_gateway).await;
        let err = c
            .send_text(common::recipient(platform), "hi", "d")
            .await
            .expect_err("502");
        assert!(err.is_indeterminate(), "{platform}: {err:?}");
        let err = c.verify().await.expect_err("502");
        assert!(
            matches!(err, ConnectorError::Unavailable(_)),
            "{platform}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_connection_cut_mid_answer_is_indeterminate_for_a_send() {
    for platform in common::PLATFORMS {
        let c = against(platform, cut_mid_answer).await;
        let err = c
            .send_text(common::recipient(platform), "hi", "d")
            .await
            .expect_err("cut");
        assert!(err.is_indeterminate(), "{platform}: {err:?}");
        let err = c.verify().await.expect_err("cut");
        assert!(err.is_retryable(), "{platform}: {err:?}");
    }
}

#[tokio::test]
async fn an_unreadable_success_is_indeterminate_for_a_send_and_protocol_for_a_read() {
    for platform in common::PLATFORMS {
        let c = against(platform, not_json_ok).await;
        let err = c
            .send_text(common::recipient(platform), "hi", "d")
            .await
            .expect_err("unreadable");
        assert!(err.is_indeterminate(), "{platform}: {err:?}");
        let err = c.verify().await.expect_err("unreadable");
        assert!(
            matches!(err, ConnectorError::Protocol(_)),
            "{platform}: {err:?}"
        );
    }
}

#[tokio::test]
async fn a_4xx_page_is_a_protocol_error() {
    for platform in common::PLATFORMS {
        let c = against(platform, || html(StatusCode::FORBIDDEN)).await;
        let err = c
            .send_text(common::recipient(platform), "hi", "d")
            .await
            .expect_err("403 page");
        assert!(
            matches!(err, ConnectorError::Protocol(_)),
            "{platform}: {err:?}"
        );
    }
}

#[tokio::test]
async fn graph_errors_classify_by_code_not_by_status() {
    // Code 2 ("retry later") under HTTP 500: retryable, although a 500 on a send.
    let c = against(Platform::Whatsapp, || {
        let body = r#"{"error":{"message":"(#2) Service temporarily unavailable","type":"OAuthException","code":2,"fbtrace_id":"A"}}"#;
        (StatusCode::INTERNAL_SERVER_ERROR, body).into_response()
    })
    .await;
    let err = c
        .send_text("16505551234", "hi", "d")
        .await
        .expect_err("code 2");
    assert!(matches!(err, ConnectorError::Unavailable(_)), "{err:?}");
    // A rate limit under HTTP 400, with Retry-After.
    let c = against(Platform::Instagram, || {
        let body = r#"{"error":{"message":"(#613) Calls to this API have exceeded the rate limit.","type":"OAuthException","code":613,"fbtrace_id":"B"}}"#;
        (StatusCode::BAD_REQUEST, [(header::RETRY_AFTER, "30")], body).into_response()
    })
    .await;
    let err = c.send_text("123", "hi", "d").await.expect_err("613");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)), "{err:?}");
    // A gateway's bare 429.
    let c = against(Platform::Whatsapp, || {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "3")],
            "slow down",
        )
            .into_response()
    })
    .await;
    let err = c
        .send_text("16505551234", "hi", "d")
        .await
        .expect_err("429");
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    // Bind then drop: the port is (almost certainly) closed for the moment of the test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    for platform in common::PLATFORMS {
        let mut settings = FakePlatform::start(platform).await.settings();
        settings.base_url = format!("http://{addr}");
        let c = connect(settings);
        let err = c
            .send_text(common::recipient(platform), "hi", "d")
            .await
            .expect_err("refused");
        assert!(
            matches!(err, ConnectorError::Unavailable(_)),
            "{platform}: {err:?}"
        );
        // The Telegram URL carries the bot token: it must not leak into the message.
        assert!(!err.to_string().contains("TESTTOKEN"), "{err}");
    }
}
