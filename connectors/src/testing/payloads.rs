//! Webhook bodies shaped like the platforms' (reference §1.7, §2.4, §3.3), and Meta's signature.

use serde_json::{Value, json};

use super::server::now_s;

/// The WhatsApp Business Account id the fake's notifications name.
pub const WABA_ID: &str = "102290129340398";

fn to_bytes(v: &Value) -> Vec<u8> {
    // Serialising a `Value` cannot fail (its keys are strings).
    serde_json::to_vec(v).unwrap_or_default()
}

/// A Telegram `Update` with a private-chat text `message` from `first_name`, dated now.
pub fn telegram_update(
    update_id: i64,
    chat_id: i64,
    message_id: i64,
    first_name: &str,
    text: &str,
) -> Vec<u8> {
    to_bytes(&json!({
        "update_id": update_id,
        "message": {
            "message_id": message_id,
            "from": {
                "id": chat_id, "is_bot": false, "first_name": first_name, "language_code": "en"
            },
            "chat": { "id": chat_id, "type": "private", "first_name": first_name },
            "date": now_s(),
            "text": text,
        }
    }))
}

/// A WhatsApp notification around one `messages` change value.
fn whatsapp_notification(phone_number_id: &str, mut value: Value) -> Vec<u8> {
    value["messaging_product"] = json!("whatsapp");
    value["metadata"] = json!({
        "display_phone_number": "15550783881", "phone_number_id": phone_number_id
    });
    to_bytes(&json!({
        "object": "whatsapp_business_account",
        "entry": [{ "id": WABA_ID, "changes": [{ "field": "messages", "value": value }] }]
    }))
}

/// A WhatsApp notification of one text message `wamid` from `from` (profile name `name`),
/// sent at `ts_s` (Unix seconds, sent as a string as Meta does).
pub fn whatsapp_message(
    phone_number_id: &str,
    from: &str,
    name: &str,
    wamid: &str,
    text: &str,
    ts_s: i64,
) -> Vec<u8> {
    whatsapp_notification(
        phone_number_id,
        json!({
            "contacts": [{ "profile": { "name": name }, "wa_id": from }],
            "messages": [{
                "from": from, "id": wamid, "timestamp": ts_s.to_string(),
                "type": "text", "text": { "body": text }
            }]
        }),
    )
}

/// A WhatsApp status notification (`sent`, `delivered`, `read` or `failed`) of our message
/// `wamid` to `recipient`, echoing `callback_data`. `sent` carries `pricing` and
/// `conversation`; `failed` carries `errors[]` with 131047 (the 24-hour window), as Meta's do.
pub fn whatsapp_status(
    phone_number_id: &str,
    wamid: &str,
    status: &str,
    recipient: &str,
    callback_data: Option<&str>,
    ts_s: i64,
) -> Vec<u8> {
    let mut s = json!({
        "id": wamid, "status": status, "timestamp": ts_s.to_string(), "recipient_id": recipient
    });
    if let Some(data) = callback_data {
        s["biz_opaque_callback_data"] = json!(data);
    }
    match status {
        "sent" => {
            s["conversation"] = json!({
                "id": "9b1c4a2e5d7f3a8c6e0b1d2f4a6c8e0b",
                "expiration_timestamp": (ts_s + 86_400).to_string(),
                "origin": { "type": "service" }
            });
            s["pricing"] =
                json!({ "billable": true, "pricing_model": "CBP", "category": "service" });
        }
        "failed" => {
            s["errors"] = json!([{
                "code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
                "error_data": { "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number." },
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"
            }]);
        }
        _ => {}
    }
    whatsapp_notification(phone_number_id, json!({ "statuses": [s] }))
}

/// An Instagram notification around one `messaging` event at `ts_ms`.
fn instagram_notification(ig_id: &str, ts_ms: i64, event: Value) -> Vec<u8> {
    to_bytes(&json!({
        "object": "instagram",
        "entry": [{ "id": ig_id, "time": ts_ms, "messaging": [event] }]
    }))
}

/// An Instagram notification of one text message `mid` from `sender` (an IGSID) at `ts_ms`
/// (Unix milliseconds).
pub fn instagram_message(ig_id: &str, sender: &str, mid: &str, text: &str, ts_ms: i64) -> Vec<u8> {
    instagram_notification(
        ig_id,
        ts_ms,
        json!({
            "sender": { "id": sender }, "recipient": { "id": ig_id }, "timestamp": ts_ms,
            "message": { "mid": mid, "text": text }
        }),
    )
}

/// An Instagram `messaging_seen` notification: `sender` read our message `mid` at `ts_ms`.
pub fn instagram_read(ig_id: &str, sender: &str, mid: &str, ts_ms: i64) -> Vec<u8> {
    instagram_notification(
        ig_id,
        ts_ms,
        json!({
            "sender": { "id": sender }, "recipient": { "id": ig_id }, "timestamp": ts_ms,
            "read": { "mid": mid }
        }),
    )
}

/// The `X-Hub-Signature-256` value Meta sends with `body`: `sha256=<hex HMAC-SHA256>`.
pub fn meta_signature(app_secret: &str, body: &[u8]) -> String {
    crate::meta::signature(app_secret, body)
}
