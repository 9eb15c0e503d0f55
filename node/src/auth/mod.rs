//! Who is calling: bearer tokens and API keys, scopes, passwords, and per-user rate limits.
//!
//! Handlers take a [`Caller`] argument; the extractor authenticates the request (401 when it
//! cannot), then charges the caller's rate limit (429). Scope checks are the handler's, with
//! [`Caller::require`] (403).

pub mod ratelimit;
pub mod tokens;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use base64::Engine;
use chat4all_raft::sm::directory::{DirectoryCommand, DirectoryResponse, User, UserType};
use rand::RngCore;

use crate::api::{ApiError, AppState};
use crate::config::AuthConfig;
use crate::error::ServiceError;
use crate::service::Service;
use ratelimit::RateLimiter;
use tokens::{TokenKeys, TokenKind};

/// Every scope there is.
pub const SCOPES: [&str; 7] = [
    "messages:read",
    "messages:write",
    "conversations:read",
    "conversations:write",
    "users:read",
    "users:write",
    "admin",
];

/// The scope that implies every other.
pub const ADMIN: &str = "admin";

/// The scopes a user's password login grants (a request may ask for fewer).
pub fn user_scopes(user: &User) -> Vec<String> {
    let scopes: &[&str] = if user.admin {
        &SCOPES
    } else {
        match user.user_type {
            UserType::Agent => &SCOPES[..5],
            UserType::Customer => &SCOPES[..4],
        }
    };
    scopes.iter().map(|s| s.to_string()).collect()
}

/// Authentication state of a node.
pub struct Auth {
    config: AuthConfig,
    /// `CHAT4ALL_JWT_SECRET(_FILE)`, when set.
    env_secret: Option<Vec<u8>>,
    keys: tokio::sync::OnceCell<Arc<TokenKeys>>,
    limiter: RateLimiter,
}

impl Auth {
    /// Auth with `config` and, if given, the token secret from the environment.
    pub fn new(config: AuthConfig, env_secret: Option<Vec<u8>>) -> Auth {
        let limiter = RateLimiter::new(config.rate_limit_per_s, config.rate_limit_burst);
        Auth {
            config,
            env_secret,
            keys: tokio::sync::OnceCell::new(),
            limiter,
        }
    }

    /// Who may use the log API.
    pub fn log_api(&self) -> crate::config::LogApiAuth {
        self.config.log_api
    }

    /// The token keys: from the environment, else the cluster's (made by the first node that
    /// needed one and replicated with the metadata, so every node signs with the same key).
    pub async fn keys(&self, svc: &Service) -> Result<Arc<TokenKeys>, ServiceError> {
        self.keys
            .get_or_try_init(|| async {
                if let Some(s) = &self.env_secret {
                    return Ok(Arc::new(TokenKeys::new(s)));
                }
                if let Some(k) = &svc.metadata().directory.token_key {
                    return Ok(Arc::new(TokenKeys::new(k)));
                }
                let mut key = vec![0u8; 32];
                rand::rng().fill_bytes(&mut key);
                match svc
                    .directory_write(DirectoryCommand::InitTokenKey { key })
                    .await?
                {
                    DirectoryResponse::TokenKey(k) => Ok(Arc::new(TokenKeys::new(&k))),
                    other => Err(ServiceError::Internal(format!(
                        "token key answer {other:?}"
                    ))),
                }
            })
            .await
            .cloned()
    }

    /// Issues an access token (and, with `refresh`, a refresh token) for `user_id`.
    pub async fn issue(
        &self,
        svc: &Service,
        user_id: &str,
        scopes: &[String],
        refresh: bool,
    ) -> Result<IssuedTokens, ServiceError> {
        let keys = self.keys(svc).await?;
        let now = unix_s();
        let sign = |typ, ttl| {
            keys.issue(user_id, scopes, typ, now, ttl)
                .map_err(|e| ServiceError::Internal(format!("cannot sign a token: {e}")))
        };
        Ok(IssuedTokens {
            access_token: sign(TokenKind::Access, self.config.access_token_ttl_s)?,
            expires_in: self.config.access_token_ttl_s,
            refresh_token: if refresh {
                Some(sign(TokenKind::Refresh, self.config.refresh_token_ttl_s)?)
            } else {
                None
            },
        })
    }
}

/// Tokens as `POST /v1/auth/token` returns them.
pub struct IssuedTokens {
    /// The access token.
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// A refresh token, for password and refresh grants.
    pub refresh_token: Option<String>,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The user the request acts as.
    pub user_id: String,
    /// Its scopes.
    pub scopes: Vec<String>,
}

impl Caller {
    /// Whether the caller holds `scope` (`admin` holds every scope).
    pub fn has(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == ADMIN)
    }

    /// 403 `INSUFFICIENT_SCOPE` unless the caller holds `scope`.
    pub fn require(&self, scope: &str) -> Result<(), ApiError> {
        if self.has(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "INSUFFICIENT_SCOPE",
                format!("this request needs the `{scope}` scope, which the credentials lack"),
            ))
        }
    }
}

fn unauthenticated(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message)
        .with_header("www-authenticate", "Bearer")
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, svc: &AppState) -> Result<Caller, ApiError> {
        let caller = authenticate(svc, parts).await?;
        if let Err(wait) = svc.auth().limiter.check(&caller.user_id, Instant::now()) {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("too many requests from this user; retry after {secs} s"),
            )
            .with_header("retry-after", &secs.to_string()));
        }
        Ok(caller)
    }
}

async fn authenticate(svc: &Service, parts: &Parts) -> Result<Caller, ApiError> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| unauthenticated(format!("{name} is not ASCII")))
            })
            .transpose()
    };
    // Browsers' EventSource and WebSocket cannot set headers: the two streams also take the
    // access token as `?access_token=` (RFC 6750 §2.3).
    let query_token = (parts.method == axum::http::Method::GET
        && matches!(parts.uri.path(), "/v1/events" | "/v1/ws"))
    .then(|| parts.uri.query())
    .flatten()
    .and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v)
    });
    let bearer = match header("authorization")? {
        Some(value) => match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => {
                Some(t.trim().to_string())
            }
            _ => {
                return Err(unauthenticated(
                    "Authorization must be `Bearer <access token>`",
                ));
            }
        },
        None => query_token,
    };
    if let Some(token) = bearer {
        let keys = svc.auth().keys(svc).await?;
        let claims = keys
            .verify(&token, TokenKind::Access)
            .map_err(unauthenticated)?;
        return Ok(Caller {
            user_id: claims.sub,
            scopes: claims.scope.split_whitespace().map(String::from).collect(),
        });
    }
    if let Some(value) = header("x-api-key")? {
        let (id, secret) = parse_api_key(value)
            .ok_or_else(|| unauthenticated("X-API-Key is not a Chat4All API key"))?;
        let key = check_api_key(svc, id, secret).await?;
        return Ok(Caller {
            user_id: key.user_id,
            scopes: key.scopes,
        });
    }
    Err(unauthenticated(
        "no credentials: send `Authorization: Bearer <token>` (from POST /v1/auth/token) or `X-API-Key`",
    ))
}

/// The API key `id` if `secret` is its secret and it is not revoked; 401 otherwise.
pub async fn check_api_key(
    svc: &Service,
    id: &str,
    secret: &str,
) -> Result<chat4all_raft::sm::directory::ApiKey, ApiError> {
    let key = svc.api_key(id).await?;
    let bad = || unauthenticated("unknown or wrong API key");
    let key = key.ok_or_else(bad)?;
    // Comparing digests: equal-prefix timing tells nothing about the secret itself.
    if key.secret_sha256 != sha256(secret.as_bytes()) {
        return Err(bad());
    }
    if key.revoked_at_ms.is_some() {
        return Err(unauthenticated("this API key was revoked"));
    }
    Ok(key)
}

/// API keys read `c4a_<id>.<secret>`: a recognizable prefix (for secret scanners), the
/// public id, and 256 random bits.
const API_KEY_PREFIX: &str = "c4a_";

/// A new API key: `(id, the full key to hand out once, SHA-256 of the secret)`.
pub fn new_api_key() -> (String, String, Vec<u8>) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let digest = sha256(secret.as_bytes());
    (id.clone(), format!("{API_KEY_PREFIX}{id}.{secret}"), digest)
}

/// Splits a full key into its id and secret.
pub fn parse_api_key(key: &str) -> Option<(&str, &str)> {
    let (id, secret) = key.strip_prefix(API_KEY_PREFIX)?.split_once('.')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// Hashes a password with argon2id (default parameters, a fresh salt), off the async threads.
pub async fn hash_password(password: String) -> Result<String, ServiceError> {
    use argon2::password_hash::PasswordHasher;
    tokio::task::spawn_blocking(move || {
        argon2::Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| ServiceError::Internal(format!("cannot hash a password: {e}")))
    })
    .await
    .map_err(|e| ServiceError::Internal(format!("hashing task: {e}")))?
}

/// Whether `password` matches `hash`. Without a hash (no such user, or no password) it still
/// runs one verification, so the answer takes as long and does not reveal which users exist.
pub async fn verify_password(password: String, hash: Option<String>) -> bool {
    use argon2::password_hash::PasswordVerifier;
    static DUMMY: OnceLock<String> = OnceLock::new();
    tokio::task::spawn_blocking(move || {
        let real = hash.is_some();
        let hash = hash.unwrap_or_else(|| {
            DUMMY
                .get_or_init(|| {
                    use argon2::password_hash::PasswordHasher;
                    argon2::Argon2::default()
                        .hash_password(b"no user has this password")
                        .map(|h| h.to_string())
                        .unwrap_or_default()
                })
                .clone()
        });
        let ok = argon2::Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok();
        ok && real
    })
    .await
    .unwrap_or(false)
}

/// Seconds since the epoch.
pub fn unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_parse_back_and_hash_their_secret() {
        let (id, full, digest) = new_api_key();
        let (pid, secret) = parse_api_key(&full).expect("parses");
        assert_eq!(pid, id);
        assert_eq!(sha256(secret.as_bytes()), digest);
        assert!(parse_api_key("c4a_nodot").is_none());
        assert!(parse_api_key("xyz_a.b").is_none());
        assert!(parse_api_key("c4a_.b").is_none());
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_hash() {
        let h = hash_password("correct horse".into()).await.expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse".into(), Some(h.clone())).await);
        assert!(!verify_password("wrong horse".into(), Some(h)).await);
        assert!(!verify_password("correct horse".into(), None).await);
    }

    #[test]
    fn customers_get_fewer_scopes_than_agents_and_admins_get_all() {
        let mut u = User {
            id: "u".into(),
            display_name: "U".into(),
            user_type: UserType::Customer,
            email: None,
            password_hash: None,
            metadata_json: None,
            admin: false,
            created_at_ms: 0,
            identities: vec![],
        };
        assert!(!user_scopes(&u).contains(&"users:read".to_string()));
        u.user_type = UserType::Agent;
        assert!(user_scopes(&u).contains(&"users:read".to_string()));
        assert!(!user_scopes(&u).contains(&"users:write".to_string()));
        u.admin = true;
        assert_eq!(user_scopes(&u).len(), SCOPES.len());
    }
}
