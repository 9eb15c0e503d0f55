//! `POST /v1/auth/token`: OAuth2 (RFC 6749) password, client credentials and refresh grants.
//! The body is form-encoded, as the RFC has it, or JSON. Errors use the API's usual envelope
//! with the RFC's error names upper-cased as codes (`INVALID_GRANT`, `INVALID_CLIENT`, ...).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, AppState};
use crate::auth::tokens::TokenKind;
use crate::auth::{self, SCOPES};

#[derive(Deserialize, Default)]
#[serde(default)]
struct TokenRequest {
    grant_type: String,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

fn invalid_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("INVALID_REQUEST", message)
}

fn invalid_grant(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("INVALID_GRANT", message)
}

fn parse(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, ApiError> {
    let ctype = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/json") {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("INVALID_JSON", format!("body: {e}")))
    } else if ctype.starts_with("application/x-www-form-urlencoded") {
        serde_urlencoded::from_bytes(body).map_err(|e| invalid_request(format!("form body: {e}")))
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "send the token request as application/x-www-form-urlencoded or application/json",
        ))
    }
}

/// The scopes granted: all of `allowed`, or the requested subset of them.
fn narrow(allowed: Vec<String>, requested: Option<&str>) -> Result<Vec<String>, ApiError> {
    let Some(req) = requested.filter(|r| !r.trim().is_empty()) else {
        return Ok(allowed);
    };
    let mut out = Vec::new();
    for s in req.split_whitespace() {
        if !SCOPES.contains(&s) {
            return Err(ApiError::bad_request(
                "INVALID_SCOPE",
                format!("unknown scope `{s}`; known: {}", SCOPES.join(" ")),
            ));
        }
        if !allowed.iter().any(|a| a == s || a == auth::ADMIN) {
            return Err(ApiError::bad_request(
                "INVALID_SCOPE",
                format!("scope `{s}` is not granted to these credentials"),
            ));
        }
        if !out.iter().any(|o| o == s) {
            out.push(s.to_string());
        }
    }
    Ok(out)
}

pub async fn post_token(
    State(svc): State<AppState>,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let req = parse(&headers, &body)?;
    let (user_id, scopes, refresh) = match req.grant_type.as_str() {
        "password" => {
            let (Some(username), Some(password)) = (req.username, req.password) else {
                return Err(invalid_request(
                    "the password grant needs `username` (the email) and `password`",
                ));
            };
            let user = svc.user_by_email(&username.trim().to_lowercase()).await?;
            let hash = user.as_ref().and_then(|u| u.password_hash.clone());
            if !auth::verify_password(password, hash).await {
                return Err(invalid_grant("wrong email or password"));
            }
            let Some(user) = user else {
                return Err(invalid_grant("wrong email or password"));
            };
            let scopes = narrow(auth::user_scopes(&user), req.scope.as_deref())?;
            (user.id, scopes, true)
        }
        "client_credentials" => {
            let (Some(id), Some(secret)) = (req.client_id, req.client_secret) else {
                return Err(invalid_request(
                    "the client_credentials grant needs `client_id` and `client_secret` \
                     (the two halves of an API key, `c4a_<client_id>.<client_secret>`)",
                ));
            };
            let key = auth::check_api_key(&svc, &id, &secret).await.map_err(|e| {
                if e.code() == "UNAUTHENTICATED" {
                    ApiError::new(
                        StatusCode::UNAUTHORIZED,
                        "INVALID_CLIENT",
                        "unknown, wrong or revoked client credentials",
                    )
                } else {
                    e
                }
            })?;
            let scopes = narrow(key.scopes, req.scope.as_deref())?;
            // RFC 6749 §4.4.3: no refresh token for client credentials.
            (key.user_id, scopes, false)
        }
        "refresh_token" => {
            let Some(token) = req.refresh_token else {
                return Err(invalid_request(
                    "the refresh_token grant needs `refresh_token`",
                ));
            };
            let keys = svc.auth().keys(&svc).await?;
            let claims = keys
                .verify(&token, TokenKind::Refresh)
                .map_err(invalid_grant)?;
            // The user's scopes now, narrowed to what the refreshed token had.
            let Some(user) = svc.user(&claims.sub).await? else {
                return Err(invalid_grant("the token's user no longer exists"));
            };
            let had: Vec<String> = claims.scope.split_whitespace().map(String::from).collect();
            let now: Vec<String> = auth::user_scopes(&user)
                .into_iter()
                .filter(|s| had.contains(s) || had.iter().any(|h| h == auth::ADMIN))
                .collect();
            let scopes = narrow(now, req.scope.as_deref())?;
            (user.id, scopes, true)
        }
        "" => return Err(invalid_request("`grant_type` is required")),
        other => {
            return Err(ApiError::bad_request(
                "UNSUPPORTED_GRANT_TYPE",
                format!(
                    "grant_type `{other}` is not supported; use password, client_credentials or refresh_token"
                ),
            ));
        }
    };
    let issued = svc.auth().issue(&svc, &user_id, &scopes, refresh).await?;
    let mut body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": scopes.join(" "),
        "user_id": user_id,
    });
    if let Some(r) = issued.refresh_token {
        body["refresh_token"] = json!(r);
    }
    // RFC 6749 §5.1: tokens are not cached.
    Ok((
        [("cache-control", "no-store"), ("pragma", "no-cache")],
        axum::Json(body),
    )
        .into_response())
}
