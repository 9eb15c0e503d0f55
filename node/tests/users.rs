//! Users, identities, the audit log, tokens and API keys on a real 3-node cluster, through
//! the REST API only: every write through one node is read through another, bad input is
//! refused without writing, and the directory survives every node being killed.

mod common;

use std::time::Duration;

use common::{Cluster, error_code as code, eventually};
use reqwest::Method;
use serde_json::{Value, json};

const ADMIN_EMAIL: &str = "root@example.com";
const ADMIN_PASSWORD: &str = "bootstrap-secret-1";

async fn admin_cluster(extra: &str) -> Cluster {
    Cluster::start_with_env(
        3,
        extra,
        &[
            ("CHAT4ALL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("CHAT4ALL_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    )
    .await
}

/// `POST /v1/auth/token` with a form body.
async fn token_form(c: &Cluster, node: u64, form: &[(&str, &str)]) -> (u16, Value) {
    let r = c
        .http
        .post(format!("{}/v1/auth/token", c.api(node)))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).expect("form"))
        .send()
        .await
        .expect("token request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn login(c: &Cluster, node: u64, email: &str, password: &str) -> String {
    let v = c.login(node, email, password).await;
    v["access_token"].as_str().expect("token").to_string()
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

async fn call(
    c: &Cluster,
    method: Method,
    node: u64,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    c.call_bearer(method, node, path, token, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_identities_and_audit_across_nodes() {
    let c = admin_cluster("").await;

    // No credentials, a malformed header, a forged token: 401 with a stable code.
    let (s, h, v) = c.call_as(Method::GET, 1, "/v1/users", None, None).await;
    assert_eq!((s, code(&v)), (401, "UNAUTHENTICATED"), "{v}");
    assert_eq!(
        h.get("www-authenticate").map(|v| v.as_bytes()),
        Some(&b"Bearer"[..])
    );
    let (s, _, v) = c
        .call_as(
            Method::GET,
            1,
            "/v1/users",
            Some(("authorization", "Basic abc")),
            None,
        )
        .await;
    assert_eq!((s, code(&v)), (401, "UNAUTHENTICATED"));
    let (s, _, _) = c
        .call_as(
            Method::GET,
            1,
            "/v1/users",
            Some(("authorization", "Bearer x.y.z")),
            None,
        )
        .await;
    assert_eq!(s, 401);
    // A wrong password is refused like an unknown user.
    let (s, v) = token_form(
        &c,
        2,
        &[
            ("grant_type", "password"),
            ("username", ADMIN_EMAIL),
            ("password", "wrong-password"),
        ],
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_GRANT"), "{v}");

    // Every answer carries a trace id: the caller's W3C trace id when it sent one.
    assert!(h.get("x-trace-id").is_some_and(|v| v.len() >= 16));
    let r = c
        .http
        .get(format!("{}/v1/users", c.api(3)))
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .send()
        .await
        .expect("GET");
    assert_eq!(
        r.headers().get("x-trace-id").and_then(|v| v.to_str().ok()),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );

    let admin = login(&c, 2, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    // With an admin in the environment, no node makes one of its own.
    let (_, users) = call(&c, Method::GET, 1, "/v1/users", &admin, None).await;
    assert_eq!(users["users"].as_array().map(Vec::len), Some(1), "{users}");
    assert_eq!(password_files(&c, 3), vec![]);

    // Create an agent with a password through node 1, and read it through node 3.
    let agent_body = json!({"display_name": "Ana Agent", "user_type": "AGENT",
        "email": "Ana@Example.com", "password": "agent-password", "metadata": {"team": "blue"}});
    let (s, agent) = call(&c, Method::POST, 1, "/v1/users", &admin, Some(&agent_body)).await;
    assert_eq!(s, 201, "{agent}");
    assert_eq!(agent["email"], "ana@example.com");
    assert_eq!(agent["metadata"]["team"], "blue");
    assert!(agent.get("password_hash").is_none() && !agent.to_string().contains("argon2"));
    let agent_id = agent["id"].as_str().expect("id").to_string();
    let (s, v) = call(
        &c,
        Method::GET,
        3,
        &format!("/v1/users/{agent_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!((s, &v["display_name"]), (200, &json!("Ana Agent")), "{v}");

    // The same email again (any case) is a conflict.
    let dup = json!({"display_name": "Other", "user_type": "AGENT", "email": "ANA@example.com"});
    let (s, v) = call(&c, Method::POST, 2, "/v1/users", &admin, Some(&dup)).await;
    assert_eq!((s, code(&v)), (409, "EMAIL_TAKEN"), "{v}");

    // A customer without a password.
    let (s, customer) = call(
        &c,
        Method::POST,
        1,
        "/v1/users",
        &admin,
        Some(&json!({"display_name": "Carl", "user_type": "CUSTOMER"})),
    )
    .await;
    assert_eq!(s, 201);
    let customer_id = customer["id"].as_str().expect("id").to_string();

    // Bad input: a clear 4xx, and nothing written.
    let (_, before) = call(&c, Method::GET, 1, "/v1/users?limit=500", &admin, None).await;
    let n_before = before["users"].as_array().expect("users").len();
    for (body, want) in [
        (
            json!({"display_name": "X", "user_type": "ROBOT"}),
            "INVALID_USER_TYPE",
        ),
        (json!({"user_type": "AGENT"}), "INVALID_DISPLAY_NAME"),
        (
            json!({"display_name": "X", "user_type": "AGENT", "email": "nope"}),
            "INVALID_EMAIL",
        ),
        (
            json!({"display_name": "X", "user_type": "AGENT", "email": "a@b.co", "password": "short"}),
            "INVALID_PASSWORD",
        ),
        (
            json!({"display_name": "X", "user_type": "AGENT", "metadata": [1]}),
            "INVALID_METADATA",
        ),
    ] {
        let (s, v) = call(&c, Method::POST, 2, "/v1/users", &admin, Some(&body)).await;
        assert_eq!((s, code(&v)), (400, want), "{body} -> {v}");
    }
    let auth = bearer(&admin);
    let r = c
        .http
        .post(format!("{}/v1/users", c.api(3)))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .body("{\"display_name\": ")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(code(&v), "INVALID_JSON");
    let (_, after) = call(&c, Method::GET, 3, "/v1/users?limit=500", &admin, None).await;
    assert_eq!(after["users"].as_array().expect("users").len(), n_before);

    // Identities: link on node 2, conflict for another user, resolve on node 3.
    let idpath = format!("/v1/users/{customer_id}/identities");
    let wa = json!({"platform": "WHATSAPP", "platform_user_id": "+15551234567"});
    let (s, v) = call(&c, Method::POST, 2, &idpath, &admin, Some(&wa)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["identities"][0]["platform_user_id"], "15551234567");
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        &format!("/v1/users/{agent_id}/identities"),
        &admin,
        Some(&wa),
    )
    .await;
    assert_eq!((s, code(&v)), (409, "IDENTITY_TAKEN"), "{v}");
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        &idpath,
        &admin,
        Some(&json!({"platform": "FAX", "platform_user_id": "1"})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_PLATFORM"));
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        &idpath,
        &admin,
        Some(&json!({"platform": "TELEGRAM", "platform_user_id": "@carl"})),
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_PLATFORM_USER_ID"));
    let resolve = "/v1/identities/resolve?platform=WHATSAPP&platform_user_id=15551234567";
    let (s, v) = call(&c, Method::GET, 3, resolve, &admin, None).await;
    assert_eq!(
        (s, v["id"].as_str()),
        (200, Some(customer_id.as_str())),
        "{v}"
    );

    // Unlink through node 1: node 3 no longer resolves it, at once (linearizable read).
    let (s, _) = call(
        &c,
        Method::DELETE,
        1,
        &format!("{idpath}/WHATSAPP/15551234567"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, v) = call(&c, Method::GET, 3, resolve, &admin, None).await;
    assert_eq!((s, code(&v)), (404, "IDENTITY_NOT_FOUND"), "{v}");
    let (s, v) = call(
        &c,
        Method::DELETE,
        2,
        &format!("{idpath}/WHATSAPP/15551234567"),
        &admin,
        None,
    )
    .await;
    assert_eq!((s, code(&v)), (404, "IDENTITY_NOT_FOUND"));

    // The audit log has every change, in order, with who made it.
    let (s, v) = call(
        &c,
        Method::GET,
        2,
        &format!("/v1/audit?entity_id={customer_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        vec!["USER_CREATED", "IDENTITY_LINKED", "IDENTITY_UNLINKED"]
    );
    assert_eq!(v["entries"][1]["platform"], "WHATSAPP");
    assert!(v["entries"][1]["actor"].is_string());

    // The agent logs in through node 3: it may read users but not write them, nor the audit.
    let agent_token = login(&c, 3, "ana@example.com", "agent-password").await;
    let (s, _) = call(
        &c,
        Method::GET,
        1,
        &format!("/v1/users/{customer_id}"),
        &agent_token,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        "/v1/users",
        &agent_token,
        Some(&json!({"display_name": "Y", "user_type": "AGENT"})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "INSUFFICIENT_SCOPE"), "{v}");
    let (s, _) = call(
        &c,
        Method::GET,
        1,
        &format!("/v1/audit?entity_id={customer_id}"),
        &agent_token,
        None,
    )
    .await;
    assert_eq!(s, 403);

    // Paging through users: pages of one, ending with no cursor, every user once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (s, v) = call(
            &c,
            Method::GET,
            2,
            &format!("/v1/users?limit=1&cursor={cursor}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(s, 200);
        for u in v["users"].as_array().expect("users") {
            seen.push(u["id"].as_str().expect("id").to_string());
        }
        match v["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
        assert!(seen.len() <= 10, "paging does not end: {seen:?}");
    }
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!((seen.len(), dedup.len()), (3, 3), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_refresh_and_api_keys_and_the_directory_survives_a_full_restart() {
    let mut c = admin_cluster("").await;
    // Once the bootstrap admin exists, ask for a token with one scope only.
    login(&c, 1, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let (s, v) = token_form(
        &c,
        1,
        &[
            ("grant_type", "password"),
            ("username", ADMIN_EMAIL),
            ("password", ADMIN_PASSWORD),
            ("scope", "users:read"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    // A narrowed token holds only what it asked for.
    assert_eq!(v["scope"], "users:read", "{v}");
    let narrow = v["access_token"].as_str().expect("token").to_string();
    let (s, v) = call(
        &c,
        Method::POST,
        2,
        "/v1/users",
        &narrow,
        Some(&json!({"display_name": "Y", "user_type": "AGENT"})),
    )
    .await;
    assert_eq!((s, code(&v)), (403, "INSUFFICIENT_SCOPE"));
    let (s, v) = token_form(
        &c,
        1,
        &[
            ("grant_type", "password"),
            ("username", ADMIN_EMAIL),
            ("password", ADMIN_PASSWORD),
            ("scope", "superpowers"),
        ],
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_SCOPE"));
    let (s, v) = token_form(&c, 1, &[("grant_type", "implicit")]).await;
    assert_eq!((s, code(&v)), (400, "UNSUPPORTED_GRANT_TYPE"));

    // A refresh token from node 1 is exchanged on node 3; an access token is not a refresh token.
    let (s, v) = token_form(
        &c,
        1,
        &[
            ("grant_type", "password"),
            ("username", ADMIN_EMAIL),
            ("password", ADMIN_PASSWORD),
        ],
    )
    .await;
    assert_eq!(s, 200);
    let admin = v["access_token"].as_str().expect("token").to_string();
    let refresh = v["refresh_token"].as_str().expect("refresh").to_string();
    let (s, v) = token_form(
        &c,
        3,
        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let refreshed = v["access_token"].as_str().expect("token").to_string();
    let (s, _) = call(&c, Method::GET, 2, "/v1/users", &refreshed, None).await;
    assert_eq!(s, 200);
    let (s, v) = token_form(
        &c,
        3,
        &[("grant_type", "refresh_token"), ("refresh_token", &admin)],
    )
    .await;
    assert_eq!((s, code(&v)), (400, "INVALID_GRANT"), "{v}");

    // An API key for an integration user, made through node 2 and used through node 3.
    let (s, bot) = call(
        &c,
        Method::POST,
        2,
        "/v1/users",
        &admin,
        Some(&json!({"display_name": "Bot", "user_type": "AGENT"})),
    )
    .await;
    assert_eq!(s, 201);
    let bot_id = bot["id"].as_str().expect("id").to_string();
    let (s, key) = call(
        &c,
        Method::POST,
        2,
        "/v1/api-keys",
        &admin,
        Some(&json!({"user_id": bot_id, "name": "crm", "scopes": ["users:read"]})),
    )
    .await;
    assert_eq!(s, 201, "{key}");
    let full = key["key"].as_str().expect("key").to_string();
    let key_id = key["id"].as_str().expect("id").to_string();
    let (s, _, v) = c
        .call_as(
            Method::GET,
            3,
            "/v1/users",
            Some(("x-api-key", &full)),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, _, v) = c
        .call_as(
            Method::POST,
            3,
            "/v1/users",
            Some(("x-api-key", &full)),
            Some(&json!({"display_name": "Z", "user_type": "AGENT"})),
        )
        .await;
    assert_eq!((s, code(&v)), (403, "INSUFFICIENT_SCOPE"));
    // The same key through the client_credentials grant.
    let (client_id, secret) = full
        .strip_prefix("c4a_")
        .and_then(|k| k.split_once('.'))
        .expect("key format");
    let (s, v) = token_form(
        &c,
        1,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", secret),
        ],
    )
    .await;
    assert_eq!((s, &v["scope"]), (200, &json!("users:read")), "{v}");
    assert!(v.get("refresh_token").is_none());
    let (s, v) = token_form(
        &c,
        1,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", client_id),
            ("client_secret", "guess"),
        ],
    )
    .await;
    assert_eq!((s, code(&v)), (401, "INVALID_CLIENT"));
    let wrong = format!("c4a_{client_id}.guess");
    let (s, _, _) = c
        .call_as(
            Method::GET,
            1,
            "/v1/users",
            Some(("x-api-key", &wrong)),
            None,
        )
        .await;
    assert_eq!(s, 401);

    // Every node killed and restarted: users, passwords and keys are all still there, and
    // tokens issued before still verify (the signing key is part of the replicated state).
    c.restart_all().await;
    let (s, v) = call(
        &c,
        Method::GET,
        3,
        &format!("/v1/users/{bot_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!((s, &v["display_name"]), (200, &json!("Bot")), "{v}");
    // Right after a restart a read may find no controller leader yet: 503, which clients
    // retry; anything else but 200 is wrong.
    eventually(
        "the key works after the restart",
        Duration::from_secs(30),
        || async {
            let (s, _, v) = c
                .call_as(
                    Method::GET,
                    2,
                    "/v1/users",
                    Some(("x-api-key", &full)),
                    None,
                )
                .await;
            assert!(s == 200 || s == 503, "{s} {v}");
            (s == 200).then_some(())
        },
    )
    .await;
    login(&c, 2, ADMIN_EMAIL, ADMIN_PASSWORD).await;

    // Revoked through node 1: refused on every node once they applied the revocation.
    let (s, _) = call(
        &c,
        Method::DELETE,
        1,
        &format!("/v1/api-keys/{key_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 204);
    for node in 1..=3 {
        eventually(
            "the revoked key is refused",
            Duration::from_secs(10),
            || async {
                let (s, _, v) = c
                    .call_as(
                        Method::GET,
                        node,
                        "/v1/users",
                        Some(("x-api-key", &full)),
                        None,
                    )
                    .await;
                (s == 401).then_some(v)
            },
        )
        .await;
    }
    let (s, v) = call(
        &c,
        Method::GET,
        3,
        &format!("/v1/audit?entity_id={bot_id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 200);
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        vec!["USER_CREATED", "API_KEY_CREATED", "API_KEY_REVOKED"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_the_rate_limit_gets_429_with_retry_after() {
    let c = Cluster::start_with_env(
        1,
        "[auth]\nrate_limit_per_s = 1\nrate_limit_burst = 3\n",
        &[
            ("CHAT4ALL_ADMIN_EMAIL", ADMIN_EMAIL),
            ("CHAT4ALL_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    )
    .await;
    let admin = login(&c, 1, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let auth = bearer(&admin);
    // A burst of 3 is admitted, then 1 per second: 10 requests are all admitted only if they
    // take over 7 s, so at least one is refused with a Retry-After of about a second.
    let mut refused = 0;
    let mut retry_after = None;
    for _ in 0..10 {
        let (s, h, v) = c
            .call_as(
                Method::GET,
                1,
                "/v1/users",
                Some(("authorization", &auth)),
                None,
            )
            .await;
        if s == 429 {
            refused += 1;
            assert_eq!(code(&v), "RATE_LIMITED");
            retry_after = h
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
        } else {
            assert_eq!(s, 200);
        }
    }
    assert!(refused >= 1, "no request was refused");
    let secs: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=2).contains(&secs));
}

/// The files holding a generated admin password, by node.
fn password_files(c: &Cluster, nodes: u64) -> Vec<(u64, String)> {
    (1..=nodes)
        .filter_map(|id| {
            let f = c.data_dir(id).join("admin-password");
            std::fs::read_to_string(f).ok().map(|p| (id, p))
        })
        .collect()
}

/// A token for `email` if `password` is right (now, without waiting).
async fn try_login(c: &Cluster, node: u64, email: &str, password: &str) -> Option<String> {
    let (s, v) = token_form(
        c,
        node,
        &[
            ("grant_type", "password"),
            ("username", email),
            ("password", password),
        ],
    )
    .await;
    (s == 200).then(|| v["access_token"].as_str().expect("token").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_started_without_an_admin_makes_one_and_keeps_the_log_api_for_admins() {
    const EMAIL: &str = "admin@chat4all.local";
    let mut c = Cluster::start_with_env(3, "", &[]).await;
    // Every node races to make the first admin; one wins, and only its password file stays.
    let (node, password) = eventually(
        "one node holds the first admin's password",
        Duration::from_secs(30),
        || async {
            let files = password_files(&c, 3);
            let [(node, password)] = files.as_slice() else {
                return None;
            };
            try_login(&c, 1, EMAIL, password).await?;
            Some((*node, password.clone()))
        },
    )
    .await;
    let mode = std::fs::metadata(c.data_dir(node).join("admin-password"))
        .expect("stat")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let admin = try_login(&c, 3, EMAIL, &password)
        .await
        .expect("the password works through any node");

    // The log API needs an admin's token or API key by default.
    let (s, _, v) = c.call_as(Method::GET, 1, "/v1/topics", None, None).await;
    assert_eq!((s, code(&v)), (401, "UNAUTHENTICATED"));
    let (s, v) = call(
        &c,
        Method::POST,
        1,
        "/v1/users",
        &admin,
        Some(&json!({
        "display_name": "Cy", "user_type": "CUSTOMER", "email": "cy@example.com",
        "password": "cy-password-1"})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let customer = login(&c, 1, "cy@example.com", "cy-password-1").await;
    let body = json!({"name": "t", "partitions": 1, "replication_factor": 3});
    let (s, v) = call(&c, Method::POST, 2, "/v1/topics", &customer, Some(&body)).await;
    assert_eq!((s, code(&v)), (403, "INSUFFICIENT_SCOPE"));
    let (s, v) = call(&c, Method::POST, 2, "/v1/topics", &admin, Some(&body)).await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = call(&c, Method::GET, 3, "/v1/topics/t", &admin, None).await;
    assert_eq!(s, 200);
    // Operations stay open.
    let (s, _, _) = c.call_as(Method::GET, 1, "/health", None, None).await;
    assert_eq!(s, 200);

    // Restarted without an admin in the environment, the cluster makes no second one.
    c.restart_all().await;
    let admin = login(&c, 2, EMAIL, &password).await;
    let (s, v) = call(&c, Method::GET, 2, "/v1/users?limit=500", &admin, None).await;
    assert_eq!(s, 200, "{v}");
    let admins: Vec<&Value> = v["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter(|u| u["admin"] == true)
        .collect();
    assert_eq!(admins.len(), 1, "{v}");
    assert_eq!(admins[0]["email"], EMAIL);
    assert_eq!(password_files(&c, 3), vec![(node, password)]);
}
