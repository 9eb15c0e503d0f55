//! Webhooks: authentication before anything else, the subscription handshake, and the
//! reference payloads (shared/reference/platform-apis.md §1.7, §2.4, §3.3) parsed into events.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use chat4all_connectors::testing::{
    FakePlatform, INSTAGRAM_ID, WEBHOOK_SECRET, WHATSAPP_PHONE_NUMBER_ID, instagram_message,
    instagram_read, meta_signature, telegram_update, whatsapp_message, whatsapp_status,
};
use chat4all_connectors::{
    Connector, ConnectorError, InboundEvent, InboundMessage, Platform, RemoteStatus, StatusUpdate,
};
use common::connect;
use http::HeaderMap;

/// A connector with the fakes' settings; no call is made, so no server is needed for long.
async fn connector(platform: Platform) -> Arc<dyn Connector> {
    connect(FakePlatform::start(platform).await.settings())
}

fn header(name: &'static str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(name, value.parse().expect("header value"));
    h
}

fn message(events: Vec<InboundEvent>) -> InboundMessage {
    match <[InboundEvent; 1]>::try_from(events) {
        Ok([InboundEvent::Message(m)]) => m,
        other => panic!("expected one message, got {other:?}"),
    }
}

fn status(events: Vec<InboundEvent>) -> StatusUpdate {
    match <[InboundEvent; 1]>::try_from(events) {
        Ok([InboundEvent::Status(s)]) => s,
        other => panic!("expected one status, got {other:?}"),
    }
}

#[tokio::test]
async fn telegram_secret_token_must_match() {
    let c = connector(Platform::Telegram).await;
    let name = "X-Telegram-Bot-Api-Secret-Token";
    c.authenticate_webhook(&header(name, WEBHOOK_SECRET), b"{}")
        .expect("right token");
    for headers in [
        header(name, "whsec-tesT"),
        header(name, ""),
        HeaderMap::new(),
    ] {
        let err = c
            .authenticate_webhook(&headers, b"{}")
            .expect_err("refused");
        assert!(matches!(err, ConnectorError::BadSignature));
    }
    let fake = FakePlatform::start(Platform::Telegram).await;
    let mut settings = fake.settings();
    settings.webhook_secret = None;
    let err = connect(settings)
        .authenticate_webhook(&header(name, WEBHOOK_SECRET), b"{}")
        .expect_err("no secret configured: never accepted unchecked");
    assert!(matches!(err, ConnectorError::BadSignature));
}

#[tokio::test]
async fn meta_signatures_must_match_the_raw_body() {
    for platform in [Platform::Whatsapp, Platform::Instagram] {
        let c = connector(platform).await;
        let body = br#"{"object":"x"}"#;
        let good = meta_signature(WEBHOOK_SECRET, body);
        c.authenticate_webhook(&header("X-Hub-Signature-256", &good), body)
            .expect("signed");
        let cases = [
            header("X-Hub-Signature-256", &meta_signature("other-secret", body)),
            header("X-Hub-Signature-256", good.trim_start_matches("sha256=")),
            header("X-Hub-Signature", &good),
            HeaderMap::new(),
        ];
        for headers in cases {
            let err = c.authenticate_webhook(&headers, body).expect_err("refused");
            assert!(matches!(err, ConnectorError::BadSignature), "{platform}");
        }
        // One byte more in the body: the signature no longer holds.
        let err = c
            .authenticate_webhook(&header("X-Hub-Signature-256", &good), br#"{"object":"x"} "#)
            .expect_err("body changed");
        assert!(matches!(err, ConnectorError::BadSignature));
    }
}

#[test]
fn the_reference_hmac_vector() {
    assert_eq!(
        meta_signature("secret", b"test"),
        "sha256=0329a06b62cd16b33eb6792be8c60b158d89a2ee3a876fce9a881ebb488c0914"
    );
}

#[tokio::test]
async fn handshake_answers_only_our_verify_token() {
    let query = |mode: &str, token: &str| {
        BTreeMap::from([
            ("hub.mode".to_owned(), mode.to_owned()),
            ("hub.verify_token".to_owned(), token.to_owned()),
            ("hub.challenge".to_owned(), "1158201444".to_owned()),
        ])
    };
    for platform in [Platform::Whatsapp, Platform::Instagram] {
        let c = connector(platform).await;
        assert_eq!(
            c.handshake(&query("subscribe", "verify-test")).expect("ok"),
            "1158201444"
        );
        for q in [query("subscribe", "wrong"), query("nope", "verify-test")] {
            assert!(matches!(
                c.handshake(&q),
                Err(ConnectorError::HandshakeRefused)
            ));
        }
    }
    let telegram = connector(Platform::Telegram).await;
    let refused = telegram.handshake(&query("subscribe", "verify-test"));
    assert!(matches!(refused, Err(ConnectorError::HandshakeRefused)));
}

/// §1.7, with its `//` comments removed.
const TELEGRAM_REFERENCE: &str = r#"{"update_id": 10000,
 "message": {
   "message_id": 42,
   "from": {"id": 111, "is_bot": false, "first_name": "Ann", "username": "ann", "language_code": "en"},
   "chat": {"id": 111, "type": "private", "first_name": "Ann", "username": "ann"},
   "date": 1700000000,
   "text": "hi",
   "reply_to_message": {"message_id": 41, "...": "..."},
   "document": {"file_id": "BQAC…", "file_unique_id": "AgAD…", "file_name": "a.pdf",
                "mime_type": "application/pdf", "file_size": 12345},
   "photo": [{"file_id": "…", "file_unique_id": "…", "width": 90, "height": 67, "file_size": 1200},
             {"file_id": "…", "file_unique_id": "…", "width": 1280, "height": 960, "file_size": 98000}],
   "caption": "for media messages"
 }}"#;

#[tokio::test]
async fn telegram_updates_parse() {
    let c = connector(Platform::Telegram).await;
    let m = message(
        c.parse_webhook(TELEGRAM_REFERENCE.as_bytes())
            .expect("parses"),
    );
    assert_eq!(
        m,
        InboundMessage {
            platform_message_id: "111:42".into(),
            contact_id: "111".into(),
            contact_name: Some("Ann".into()),
            text: Some("hi".into()),
            attachment: Some("[photo]".into()),
            timestamp_ms: 1_700_000_000_000,
            reply_to: Some("111:41".into()),
        }
    );
    let doc = r#"{"update_id":1,"message":{"message_id":7,"date":1,"chat":{"id":-1001},
        "from":{"id":5,"first_name":"Bo","last_name":"Li"},
        "document":{"file_id":"x","file_unique_id":"y","file_name":"a.pdf"},"caption":"invoice"}}"#;
    let m = message(c.parse_webhook(doc.as_bytes()).expect("parses"));
    assert_eq!(m.contact_name.as_deref(), Some("Bo Li"));
    assert_eq!(
        (m.text.as_deref(), m.attachment.as_deref()),
        (Some("invoice"), Some("[document: a.pdf]"))
    );
    assert_eq!(m.contact_id, "-1001");
    // The fake's builder gives the same shape.
    let m = message(
        c.parse_webhook(&telegram_update(5, 222, 9, "Cy", "yo"))
            .expect("parses"),
    );
    assert_eq!(
        (m.platform_message_id.as_str(), m.text.as_deref()),
        ("222:9", Some("yo"))
    );
}

#[tokio::test]
async fn telegram_other_updates_give_nothing_and_garbage_is_refused() {
    let c = connector(Platform::Telegram).await;
    let edited =
        r#"{"update_id":2,"edited_message":{"message_id":1,"date":1,"chat":{"id":1},"text":"x"}}"#;
    let post =
        r#"{"update_id":3,"channel_post":{"message_id":1,"date":1,"chat":{"id":-100},"text":"x"}}"#;
    let joined = r#"{"update_id":4,"message":{"message_id":1,"date":1,"chat":{"id":-5},"new_chat_members":[]}}"#;
    for body in [edited, post, joined] {
        assert!(
            c.parse_webhook(body.as_bytes()).expect("parses").is_empty(),
            "{body}"
        );
    }
    for body in ["not json", r#"{"message":{}}"#, "[]"] {
        let err = c.parse_webhook(body.as_bytes()).expect_err("bad");
        assert!(matches!(err, ConnectorError::BadPayload(_)), "{body}");
    }
}

/// §2.4's inbound message.
const WHATSAPP_REFERENCE: &str = r#"{"object":"whatsapp_business_account",
 "entry":[{"id":"<WABA_ID>","changes":[{"field":"messages","value":{
   "messaging_product":"whatsapp",
   "metadata":{"display_phone_number":"15550783881","phone_number_id":"106540352242922"},
   "contacts":[{"profile":{"name":"Sheena"},"wa_id":"16505551234"}],
   "messages":[{"from":"16505551234","id":"wamid.HBgL…","timestamp":"1739321024",
                "type":"text","text":{"body":"hi"},
                "context":{"from":"15550783881","id":"wamid.<replied-to>"}}]}}]}]}"#;

/// §2.4's status, as a whole notification, `failed`.
const WHATSAPP_STATUS_REFERENCE: &str = r#"{"object":"whatsapp_business_account",
 "entry":[{"id":"<WABA_ID>","changes":[{"field":"messages","value":{
  "statuses":[{"id":"wamid.…","status":"failed","timestamp":"1750857384",
  "recipient_id":"16505551234","biz_opaque_callback_data":"<ours, if sent>",
  "conversation":{"id":"…","expiration_timestamp":"…","origin":{"type":"service"}},
  "pricing":{"billable":true,"pricing_model":"CBP","category":"service"},
  "errors":[{"code":131047,"title":"Re-engagement message","message":"Re-engagement message",
    "error_data":{"details":"Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
    "href":"…/support/error-codes/"}]}]}}]}]}"#;

#[tokio::test]
async fn whatsapp_notifications_parse() {
    let c = connector(Platform::Whatsapp).await;
    let m = message(
        c.parse_webhook(WHATSAPP_REFERENCE.as_bytes())
            .expect("parses"),
    );
    assert_eq!(
        m,
        InboundMessage {
            platform_message_id: "wamid.HBgL…".into(),
            contact_id: "16505551234".into(),
            contact_name: Some("Sheena".into()),
            text: Some("hi".into()),
            attachment: None,
            timestamp_ms: 1_739_321_024_000,
            reply_to: Some("wamid.<replied-to>".into()),
        }
    );
    let s = status(
        c.parse_webhook(WHATSAPP_STATUS_REFERENCE.as_bytes())
            .expect("parses"),
    );
    assert_eq!(
        s,
        StatusUpdate {
            remote_id: "wamid.…".into(),
            contact_id: "16505551234".into(),
            status: RemoteStatus::Failed,
            callback_data: Some("<ours, if sent>".into()),
            timestamp_ms: 1_750_857_384_000,
            error: Some("131047: Re-engagement message".into()),
        }
    );
    let image = WHATSAPP_REFERENCE.replace(
        r#""type":"text","text":{"body":"hi"}"#,
        r#""type":"image","image":{"id":"1","mime_type":"image/jpeg","sha256":"x","caption":"look"}"#,
    );
    let m = message(c.parse_webhook(image.as_bytes()).expect("parses"));
    assert_eq!(
        (m.text.as_deref(), m.attachment.as_deref()),
        (Some("look"), Some("[image]"))
    );
}

#[tokio::test]
async fn whatsapp_builders_round_trip() {
    let c = connector(Platform::Whatsapp).await;
    let body = whatsapp_message(
        WHATSAPP_PHONE_NUMBER_ID,
        "155501",
        "Ann",
        "wamid.A",
        "hey",
        1_700_000_000,
    );
    let m = message(c.parse_webhook(&body).expect("parses"));
    assert_eq!(
        (m.contact_name.as_deref(), m.timestamp_ms),
        (Some("Ann"), 1_700_000_000_000)
    );
    for (word, expected) in [
        ("sent", RemoteStatus::Sent),
        ("delivered", RemoteStatus::Delivered),
        ("read", RemoteStatus::Read),
        ("failed", RemoteStatus::Failed),
    ] {
        let body = whatsapp_status(
            WHATSAPP_PHONE_NUMBER_ID,
            "wamid.B",
            word,
            "155501",
            Some("d-9"),
            5,
        );
        let s = status(c.parse_webhook(&body).expect("parses"));
        assert_eq!(
            (s.status, s.callback_data.as_deref()),
            (expected, Some("d-9"))
        );
        assert_eq!(s.error.is_some(), word == "failed");
    }
    let other = r#"{"object":"page","entry":[]}"#;
    assert!(matches!(
        c.parse_webhook(other.as_bytes()),
        Err(ConnectorError::BadPayload(_))
    ));
}

/// §3.3's example (an echo as given), its comment removed.
const INSTAGRAM_REFERENCE: &str = r#"{"object":"instagram",
 "entry":[{"id":"<IG_ID>","time":1569262486134,
   "messaging":[{"sender":{"id":"<IGSID>"},"recipient":{"id":"<IG_ID>"},"timestamp":1569262485349,
     "message":{"mid":"<MID>","text":"hi",
       "attachments":[{"type":"image","payload":{"url":"https://…"}}],
       "reply_to":{"mid":"<MID>"}, "is_echo":true}}]}]}"#;

#[tokio::test]
async fn instagram_notifications_parse_and_echoes_are_skipped() {
    let c = connector(Platform::Instagram).await;
    let echo = c
        .parse_webhook(INSTAGRAM_REFERENCE.as_bytes())
        .expect("parses");
    assert!(echo.is_empty(), "our own send echoed back is not a message");
    let inbound = INSTAGRAM_REFERENCE.replace(r#", "is_echo":true"#, "");
    let m = message(c.parse_webhook(inbound.as_bytes()).expect("parses"));
    assert_eq!(
        m,
        InboundMessage {
            platform_message_id: "<MID>".into(),
            contact_id: "<IGSID>".into(),
            contact_name: None,
            text: Some("hi".into()),
            attachment: Some("[image]".into()),
            timestamp_ms: 1_569_262_485_349,
            reply_to: Some("<MID>".into()),
        }
    );
    let read = status(
        c.parse_webhook(&instagram_read(INSTAGRAM_ID, "42", "mid.1", 77))
            .expect("parses"),
    );
    assert_eq!(
        read,
        StatusUpdate {
            remote_id: "mid.1".into(),
            contact_id: "42".into(),
            status: RemoteStatus::Read,
            callback_data: None,
            timestamp_ms: 77,
            error: None,
        }
    );
    let m = message(
        c.parse_webhook(&instagram_message(INSTAGRAM_ID, "42", "mid.2", "yo", 88))
            .expect("parses"),
    );
    assert_eq!((m.text.as_deref(), m.timestamp_ms), (Some("yo"), 88));
    for bad in [
        &b"{}"[..],
        b"null",
        br#"{"object":"whatsapp_business_account","entry":[]}"#,
    ] {
        assert!(matches!(
            c.parse_webhook(bad),
            Err(ConnectorError::BadPayload(_))
        ));
    }
}
