//! The connector tests' shared steps: a cluster whose connectors talk to fake platforms, a
//! bootstrap admin, users with platform identities, a Telegram channel and contact, sends,
//! and what the delivery queues and dead letters hold.

use std::time::Duration;

use chat4all_connectors::Platform;
use chat4all_connectors::testing::{FakePlatform, TELEGRAM_BOT_TOKEN, WEBHOOK_SECRET};
use reqwest::Method;
use serde_json::{Value, json};

pub use super::chat::{ADMIN_EMAIL, ADMIN_PASSWORD};
use super::{Cluster, eventually};

/// How long a test waits for something the cluster does.
pub const WAIT: Duration = Duration::from_secs(60);

/// A cluster whose connectors talk to the fakes, with the bot token in each node's
/// environment (the channel names it as `env:TEST_TG_TOKEN`).
pub async fn cluster(n: u64, fakes: &[&FakePlatform], extra: &str) -> Cluster {
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

pub async fn token(c: &Cluster, node: u64, email: &str, password: &str) -> (String, String) {
    let v = c.login(node, email, password).await;
    (
        v["user_id"].as_str().expect("user id").to_string(),
        v["access_token"].as_str().expect("token").to_string(),
    )
}

/// Creates a user through the admin; `identity` links a platform id. Answers its id.
pub async fn user(
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

pub fn telegram_channel(name: &str, agents: &[&str]) -> Value {
    json!({"platform": "TELEGRAM", "name": name,
           "credentials": {"bot_token": "env:TEST_TG_TOKEN"},
           "webhook_secret": WEBHOOK_SECRET, "agents": agents})
}

pub async fn send(c: &Cluster, node: u64, token: &str, conv: &str, text: &str) -> String {
    let path = format!("/v1/conversations/{conv}/messages");
    let body = json!({"content": text});
    let (s, v) = c
        .call_bearer(Method::POST, node, &path, token, Some(&body))
        .await;
    assert_eq!(s, 202, "{v}");
    v["message_id"].as_str().expect("message id").to_string()
}

/// Waits until a message's status is `want`; answers its status document.
pub async fn status_becomes(c: &Cluster, node: u64, token: &str, id: &str, want: &str) -> Value {
    let path = format!("/v1/messages/{id}/status");
    eventually(&format!("{id} is {want}"), WAIT, || async {
        let (s, v) = c.call_bearer(Method::GET, node, &path, token, None).await;
        (s == 200 && v["current_status"] == want).then_some(v)
    })
    .await
}

/// The admin's and ana's tokens, a Telegram channel `tg`, and the direct conversation of ana
/// (an agent) with bo (Telegram chat 111).
pub async fn telegram_contact(c: &Cluster) -> (String, String, String) {
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
pub async fn dead_letter(c: &Cluster, admin: &str, channel: &str, message_id: &str) -> Value {
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

pub fn conversation(v: &Value) -> String {
    v["id"].as_str().expect("conversation id").to_string()
}

/// The high watermarks of a topic's partitions, added up.
pub async fn records_in(c: &Cluster, node: u64, admin: &str, topic: &str) -> u64 {
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

pub fn webhook_url(c: &Cluster, node: u64, platform: &str, channel: &str) -> String {
    format!("{}/v1/webhooks/{platform}/{channel}", c.api(node))
}
