//! The chat tests' shared steps: a 3-node cluster with a bootstrap admin, users logged in
//! through it, calls with a user's token, and direct conversations.

use reqwest::Method;
use serde_json::{Value, json};

use super::Cluster;

pub const ADMIN_EMAIL: &str = "root@example.com";
pub const ADMIN_PASSWORD: &str = "bootstrap-secret-1";

pub async fn cluster() -> Cluster {
    Cluster::start_with_env(
        3,
        // The log API open: the tests find partition leaders through it.
        "[auth]\nlog_api = \"open\"\n\n[chat]\npartitions = 3\n",
        &[
            ("CHAT4ALL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("CHAT4ALL_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    )
    .await
}

/// A logged-in user.
pub struct User {
    pub id: String,
    pub token: String,
}

pub async fn login(c: &Cluster, node: u64, email: &str, password: &str) -> User {
    let v = c.login(node, email, password).await;
    User {
        id: v["user_id"].as_str().expect("user id").to_string(),
        token: v["access_token"].as_str().expect("token").to_string(),
    }
}

pub async fn call(
    c: &Cluster,
    method: Method,
    node: u64,
    path: &str,
    who: &User,
    body: Option<&Value>,
) -> (u16, Value) {
    c.call_bearer(method, node, path, &who.token, body).await
}

/// Creates users through the admin and logs each in.
pub async fn users(c: &Cluster, names: &[&str]) -> Vec<User> {
    let admin = login(c, 1, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let email = format!("{name}@example.com");
        let kind = if i == 0 { "AGENT" } else { "CUSTOMER" };
        let body = json!({"display_name": name, "user_type": kind, "email": email,
            "password": "password-123"});
        let (s, v) = call(c, Method::POST, 1, "/v1/users", &admin, Some(&body)).await;
        assert_eq!(s, 201, "{v}");
        out.push(login(c, 1 + (i as u64 % 3), &email, "password-123").await);
    }
    out
}

/// Creates the direct conversation of `who` and `with` through node 1; its id.
pub async fn direct(c: &Cluster, who: &User, with: &User) -> String {
    let body = json!({"type": "direct", "participants": [with.id]});
    let (s, conv) = call(c, Method::POST, 1, "/v1/conversations", who, Some(&body)).await;
    assert_eq!(s, 201, "{conv}");
    conv["id"].as_str().expect("id").to_string()
}
