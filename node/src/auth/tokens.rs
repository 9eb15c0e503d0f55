//! Access and refresh tokens: HS256 JWTs signed with the cluster's token key, so any node
//! verifies a token another node issued without asking anyone.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer every token carries and every verification requires.
const ISSUER: &str = "chat4all";

/// What a token is for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Sent as `Authorization: Bearer` on API calls.
    Access,
    /// Exchanged for a new pair at `POST /v1/auth/token` (`grant_type=refresh_token`).
    Refresh,
}

/// A token's claims.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Space-separated scopes (RFC 8693's `scope` claim).
    pub scope: String,
    /// Access or refresh.
    pub typ: TokenKind,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expires at, seconds since the epoch.
    pub exp: u64,
    /// Issuer.
    pub iss: String,
    /// A unique id, so two tokens issued in the same second differ.
    pub jti: String,
}

/// The signing and verification keys made from one secret.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl TokenKeys {
    /// Keys for the HMAC secret `secret`.
    pub fn new(secret: &[u8]) -> TokenKeys {
        TokenKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Signs a token for `sub` with `scopes`, valid for `ttl_s` from `now_s`.
    pub fn issue(
        &self,
        sub: &str,
        scopes: &[String],
        typ: TokenKind,
        now_s: u64,
        ttl_s: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let claims = Claims {
            sub: sub.to_string(),
            scope: scopes.join(" "),
            typ,
            iat: now_s,
            exp: now_s + ttl_s,
            iss: ISSUER.to_string(),
            jti: uuid::Uuid::new_v4().simple().to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }

    /// Verifies signature, issuer, expiry (no leeway) and kind, and returns the claims.
    pub fn verify(&self, token: &str, typ: TokenKind) -> Result<Claims, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_issuer(&[ISSUER]);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &v)
            .map_err(|e| format!("invalid token: {e}"))?;
        if data.claims.typ != typ {
            return Err(format!("a {:?} token cannot be used here", data.claims.typ).to_lowercase());
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn a_token_verifies_with_its_key_and_kind_only() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let scopes = vec!["messages:read".to_string(), "admin".to_string()];
        let t = keys
            .issue("u1", &scopes, TokenKind::Access, now(), 60)
            .expect("issue");
        let c = keys.verify(&t, TokenKind::Access).expect("verify");
        assert_eq!(c.sub, "u1");
        assert_eq!(c.scope, "messages:read admin");
        assert!(keys.verify(&t, TokenKind::Refresh).is_err());
        let other = TokenKeys::new(b"another key, another cluster.....");
        assert!(other.verify(&t, TokenKind::Access).is_err());
        // One flipped character of the signature.
        let mut bad = t.clone().into_bytes();
        let last = bad.len() - 2;
        bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).expect("ascii");
        assert!(keys.verify(&bad, TokenKind::Access).is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let keys = TokenKeys::new(b"0123456789abcdef0123456789abcdef");
        let t = keys
            .issue("u1", &[], TokenKind::Access, now() - 120, 60)
            .expect("issue");
        let e = keys.verify(&t, TokenKind::Access).expect_err("expired");
        assert!(e.contains("xpired"), "{e}");
    }
}
