//! Users, their external identities, the audit log of identity changes, and API keys.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chat4all_raft::sm::directory::{
    ApiKey, AuditEntry, DirectoryCommand, DirectoryResponse, Platform, User, UserType,
};
use serde_json::{Value, json};

use super::{ApiError, AppState, parse_json, query_limit};
use crate::auth::{self, Caller, SCOPES};
use crate::error::ServiceError;
use crate::retention::now_ms;

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A user as the API shows it (never the password hash).
pub fn user_json(u: &User) -> Value {
    let metadata = u
        .metadata_json
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": u.id,
        "display_name": u.display_name,
        "user_type": u.user_type,
        "email": u.email,
        "admin": u.admin,
        "metadata": metadata,
        "identities": u.identities.iter().map(|i| json!({
            "platform": i.platform,
            "platform_user_id": i.platform_user_id,
            "linked_at": rfc3339(i.linked_at_ms),
        })).collect::<Vec<_>>(),
        "created_at": rfc3339(u.created_at_ms),
    })
}

fn audit_json(e: &AuditEntry) -> Value {
    json!({
        "seq": e.seq,
        "at": rfc3339(e.at_ms),
        "entity_id": e.entity_id,
        "action": e.action,
        "actor": e.actor,
        "platform": e.platform,
        "subject": e.subject,
    })
}

fn api_key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "user_id": k.user_id,
        "name": k.name,
        "scopes": k.scopes,
        "created_at": rfc3339(k.created_at_ms),
        "revoked_at": k.revoked_at_ms.map(rfc3339),
    })
}

fn invalid(code: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(code, message)
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "USER_NOT_FOUND",
        format!("no user with id `{id}`"),
    )
}

fn opt_str<'a>(body: &'a Value, field: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(invalid(
            "INVALID_FIELD",
            format!("`{field}` must be a string"),
        )),
    }
}

/// An id a path or body names, by the one rule every id follows ([`crate::chat::is_valid_id`]):
/// a 400 `INVALID_ID` naming the field otherwise.
fn valid_id(what: &str, s: &str) -> Result<(), ApiError> {
    if !crate::chat::is_valid_id(s) {
        return Err(invalid(
            "INVALID_ID",
            format!(
                "`{what}` must be 1 to 128 characters, each a letter, a digit or one of - _ . :"
            ),
        ));
    }
    Ok(())
}

/// Checks and normalizes an external id the way the platform writes it: WhatsApp ids are the
/// phone number's digits (a leading `+` is dropped), Telegram user ids are integers (groups
/// are negative), Instagram-scoped ids are digits.
pub fn normalize_platform_user_id(platform: Platform, id: &str) -> Result<String, ApiError> {
    let id = id.trim();
    let digits = |s: &str, min: usize, max: usize| {
        s.len() >= min && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
    };
    let ok = match platform {
        Platform::Whatsapp => {
            let d = id.strip_prefix('+').unwrap_or(id);
            if digits(d, 5, 20) {
                return Ok(d.to_string());
            }
            false
        }
        Platform::Telegram => id.parse::<i64>().is_ok_and(|n| n != 0),
        Platform::Instagram => digits(id, 1, 32),
    };
    if ok {
        Ok(id.to_string())
    } else {
        Err(invalid(
            "INVALID_PLATFORM_USER_ID",
            format!(
                "`{id}` is not a {} user id (WhatsApp: the phone number's digits; Telegram: an integer; Instagram: digits)",
                platform.as_str()
            ),
        ))
    }
}

fn parse_platform(s: &str) -> Result<Platform, ApiError> {
    Platform::parse(s).ok_or_else(|| {
        invalid(
            "INVALID_PLATFORM",
            format!("unknown platform `{s}`; use WHATSAPP, TELEGRAM or INSTAGRAM"),
        )
    })
}

fn directory_answer(r: DirectoryResponse) -> ApiError {
    match r {
        DirectoryResponse::UnknownUser => {
            ApiError::new(StatusCode::NOT_FOUND, "USER_NOT_FOUND", "no such user")
        }
        DirectoryResponse::EmailTaken { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "EMAIL_TAKEN",
            "another user has this email",
        ),
        DirectoryResponse::IdentityTaken { user_id } => ApiError::new(
            StatusCode::CONFLICT,
            "IDENTITY_TAKEN",
            "this identity is linked to another user; unlink it there first",
        )
        .with_detail(json!({ "user_id": user_id })),
        DirectoryResponse::NotLinked => ApiError::new(
            StatusCode::NOT_FOUND,
            "IDENTITY_NOT_FOUND",
            "this identity is not linked to this user",
        ),
        DirectoryResponse::UnknownApiKey => ApiError::new(
            StatusCode::NOT_FOUND,
            "API_KEY_NOT_FOUND",
            "no such API key",
        ),
        other => ServiceError::Internal(format!("unexpected directory answer {other:?}")).into(),
    }
}

/// `POST /v1/users`.
pub async fn post_user(
    State(svc): State<AppState>,
    caller: Caller,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require("users:write")?;
    let body = parse_json(body)?;
    let display_name = opt_str(&body, "display_name")?.map(str::trim).unwrap_or("");
    if display_name.is_empty() || display_name.chars().count() > 200 {
        return Err(invalid(
            "INVALID_DISPLAY_NAME",
            "`display_name` is required: 1 to 200 characters",
        ));
    }
    let user_type = match opt_str(&body, "user_type")? {
        Some("AGENT") => UserType::Agent,
        Some("CUSTOMER") => UserType::Customer,
        _ => {
            return Err(invalid(
                "INVALID_USER_TYPE",
                "`user_type` is required: AGENT or CUSTOMER",
            ));
        }
    };
    let email = match opt_str(&body, "email")? {
        None => None,
        Some(e) => {
            let e = e.trim().to_lowercase();
            let well_formed = e.len() <= 254
                && e.split_once('@').is_some_and(|(l, d)| {
                    !l.is_empty() && d.contains('.') && !d.starts_with('.') && !d.ends_with('.')
                })
                && !e.chars().any(|c| c.is_whitespace() || c.is_control());
            if !well_formed {
                return Err(invalid(
                    "INVALID_EMAIL",
                    format!("`{e}` is not an email address"),
                ));
            }
            Some(e)
        }
    };
    let password = opt_str(&body, "password")?;
    if let Some(p) = password
        && !(8..=1024).contains(&p.chars().count())
    {
        return Err(invalid(
            "INVALID_PASSWORD",
            "`password` must be 8 to 1024 characters",
        ));
    }
    if password.is_some() && email.is_none() {
        return Err(invalid(
            "INVALID_PASSWORD",
            "a user with a password needs an `email` to log in with",
        ));
    }
    let metadata_json = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m @ Value::Object(_)) => {
            let text = m.to_string();
            if text.len() > 16 * 1024 {
                return Err(invalid("INVALID_METADATA", "`metadata` is over 16 KiB"));
            }
            Some(text)
        }
        Some(_) => return Err(invalid("INVALID_METADATA", "`metadata` must be an object")),
    };
    let admin = match body.get("admin") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => {
            caller.require(auth::ADMIN)?;
            true
        }
        Some(_) => return Err(invalid("INVALID_FIELD", "`admin` must be a boolean")),
    };
    let password_hash = match password {
        Some(p) => Some(auth::hash_password(p.to_string()).await?),
        None => None,
    };
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        display_name: display_name.to_string(),
        user_type,
        email,
        password_hash,
        metadata_json,
        admin,
        created_at_ms: now_ms(),
        identities: Vec::new(),
    };
    let cmd = DirectoryCommand::CreateUser {
        user,
        actor: Some(caller.user_id),
    };
    match svc.directory_write(cmd).await? {
        DirectoryResponse::User(u) => {
            Ok((StatusCode::CREATED, axum::Json(user_json(&u))).into_response())
        }
        other => Err(directory_answer(other)),
    }
}

/// `GET /v1/users/{id}`: with `users:read`, or one's own.
pub async fn get_user(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if caller.user_id != id {
        caller.require("users:read")?;
    }
    valid_id("id", &id)?;
    match svc.user(&id).await? {
        Some(u) => Ok(axum::Json(user_json(&u)).into_response()),
        None => Err(user_not_found(&id)),
    }
}

/// `GET /v1/users?cursor=&limit=`: users in id (creation) order; `next_cursor` continues.
pub async fn list_users(
    State(svc): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("users:read")?;
    let limit = query_limit(&q, 50, 500)?;
    let cursor = q.get("cursor").filter(|c| !c.is_empty());
    if let Some(c) = cursor {
        valid_id("cursor", c)?;
    }
    let users = svc
        .directory_synced(|d| d.users(cursor.map(String::as_str), limit))
        .await?;
    let next = (users.len() == limit)
        .then(|| users.last().map(|u| u.id.clone()))
        .flatten();
    Ok(axum::Json(json!({
        "users": users.iter().map(user_json).collect::<Vec<_>>(),
        "next_cursor": next,
    }))
    .into_response())
}

/// `POST /v1/users/{id}/identities`.
pub async fn post_identity(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require("users:write")?;
    valid_id("id", &id)?;
    let body = parse_json(body)?;
    let platform = parse_platform(opt_str(&body, "platform")?.ok_or_else(|| {
        invalid(
            "INVALID_PLATFORM",
            "`platform` is required: WHATSAPP, TELEGRAM or INSTAGRAM",
        )
    })?)?;
    let pid = opt_str(&body, "platform_user_id")?
        .ok_or_else(|| invalid("INVALID_PLATFORM_USER_ID", "`platform_user_id` is required"))?;
    let pid = normalize_platform_user_id(platform, pid)?;
    let cmd = DirectoryCommand::LinkIdentity {
        user_id: id,
        platform,
        platform_user_id: pid,
        at_ms: now_ms(),
        actor: Some(caller.user_id),
    };
    match svc.directory_write(cmd).await? {
        DirectoryResponse::User(u) => {
            Ok((StatusCode::CREATED, axum::Json(user_json(&u))).into_response())
        }
        other => Err(directory_answer(other)),
    }
}

/// `DELETE /v1/users/{id}/identities/{platform}/{platform_user_id}`.
pub async fn delete_identity(
    State(svc): State<AppState>,
    caller: Caller,
    Path((id, platform, pid)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    caller.require("users:write")?;
    valid_id("id", &id)?;
    let platform = parse_platform(&platform)?;
    let pid = normalize_platform_user_id(platform, &pid)?;
    let cmd = DirectoryCommand::UnlinkIdentity {
        user_id: id,
        platform,
        platform_user_id: pid,
        at_ms: now_ms(),
        actor: Some(caller.user_id),
    };
    match svc.directory_write(cmd).await? {
        DirectoryResponse::User(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(directory_answer(other)),
    }
}

/// `GET /v1/identities/resolve?platform=&platform_user_id=`: linearizable (an identity
/// unlinked a moment ago through another node no longer resolves).
pub async fn resolve_identity(
    State(svc): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require("users:read")?;
    let platform = parse_platform(q.get("platform").map(String::as_str).unwrap_or(""))?;
    let pid = q
        .get("platform_user_id")
        .ok_or_else(|| invalid("INVALID_PLATFORM_USER_ID", "`platform_user_id` is required"))?;
    let pid = normalize_platform_user_id(platform, pid)?;
    match svc.directory_synced(|d| d.resolve(platform, &pid)).await? {
        Some(u) => Ok(axum::Json(user_json(&u)).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "IDENTITY_NOT_FOUND",
            format!("no user has the {} identity `{pid}`", platform.as_str()),
        )),
    }
}

/// `GET /v1/audit?entity_id=&cursor=&limit=` (admin): oldest first; `next_cursor` continues.
pub async fn get_audit(
    State(svc): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    caller.require(auth::ADMIN)?;
    let entity = q
        .get("entity_id")
        .ok_or_else(|| invalid("INVALID_ID", "`entity_id` (a user id) is required"))?;
    valid_id("entity_id", entity)?;
    let limit = query_limit(&q, 50, 500)?;
    let after = match q.get("cursor").filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| invalid("INVALID_CURSOR", "`cursor` must be a `next_cursor` value"))?,
        ),
    };
    let entries = svc
        .directory_synced(|d| d.audit(entity, after, limit))
        .await?;
    let next = (entries.len() == limit)
        .then(|| entries.last().map(|e| e.seq.to_string()))
        .flatten();
    Ok(axum::Json(json!({
        "entries": entries.iter().map(audit_json).collect::<Vec<_>>(),
        "next_cursor": next,
    }))
    .into_response())
}

/// `POST /v1/api-keys` (admin): `{"user_id","name","scopes":[...]}` → the key, shown once.
pub async fn post_api_key(
    State(svc): State<AppState>,
    caller: Caller,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require(auth::ADMIN)?;
    let body = parse_json(body)?;
    let user_id = opt_str(&body, "user_id")?.ok_or_else(|| {
        invalid(
            "INVALID_ID",
            "`user_id` is required: the user the key acts as",
        )
    })?;
    valid_id("user_id", user_id)?;
    let name = opt_str(&body, "name")?.unwrap_or("").trim().to_string();
    if name.chars().count() > 200 {
        return Err(invalid("INVALID_NAME", "`name` is over 200 characters"));
    }
    let scopes = match body.get("scopes") {
        Some(Value::Array(a)) if !a.is_empty() => {
            let mut out = Vec::new();
            for s in a {
                match s.as_str() {
                    Some(s) if SCOPES.contains(&s) => out.push(s.to_string()),
                    _ => {
                        return Err(invalid(
                            "INVALID_SCOPE",
                            format!("unknown scope {s}; known: {}", SCOPES.join(" ")),
                        ));
                    }
                }
            }
            out
        }
        _ => {
            return Err(invalid(
                "INVALID_SCOPE",
                "`scopes` is required: a non-empty list of scopes",
            ));
        }
    };
    let (id, full, digest) = auth::new_api_key();
    let key = ApiKey {
        id,
        user_id: user_id.to_string(),
        name,
        secret_sha256: digest,
        scopes,
        created_at_ms: now_ms(),
        revoked_at_ms: None,
    };
    let cmd = DirectoryCommand::CreateApiKey {
        key,
        actor: Some(caller.user_id),
    };
    match svc.directory_write(cmd).await? {
        DirectoryResponse::ApiKey(k) => {
            let mut v = api_key_json(&k);
            v["key"] = json!(full);
            Ok((StatusCode::CREATED, axum::Json(v)).into_response())
        }
        other => Err(directory_answer(other)),
    }
}

/// `DELETE /v1/api-keys/{id}` (admin): revokes the key on every node.
pub async fn delete_api_key(
    State(svc): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(auth::ADMIN)?;
    valid_id("id", &id)?;
    let cmd = DirectoryCommand::RevokeApiKey {
        id,
        at_ms: now_ms(),
        actor: Some(caller.user_id),
    };
    match svc.directory_write(cmd).await? {
        DirectoryResponse::ApiKey(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        other => Err(directory_answer(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_ids_are_checked_and_normalized() {
        let n = normalize_platform_user_id;
        assert_eq!(
            n(Platform::Whatsapp, "+15551234567").expect("ok"),
            "15551234567"
        );
        assert!(n(Platform::Whatsapp, "555-1234").is_err());
        assert_eq!(
            n(Platform::Telegram, "-1001234567890").expect("ok"),
            "-1001234567890"
        );
        assert!(n(Platform::Telegram, "@someone").is_err());
        assert!(n(Platform::Telegram, "0").is_err());
        assert_eq!(n(Platform::Instagram, "1789").expect("ok"), "1789");
        assert!(n(Platform::Instagram, "").is_err());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
