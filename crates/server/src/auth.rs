//! Bearer tokens for `/v1`, in two scopes.
//!
//! - Read tokens (`SUBLEDGER_API_TOKENS`): entitlements, orders, explanations, timelines.
//! - Admin tokens (`SUBLEDGER_ADMIN_TOKENS`): holds and every operator route, and reads too.
//!
//! Reads are open only when no token of either kind is configured (a local setup; `serve`
//! refuses that on a public address unless told `--allow-unauthenticated`). Writes always need
//! an admin token: with none configured, they are refused.
//!
//! A token is kept only as its SHA-256 digest, compared in constant time (`subtle`) with the
//! digest of what a request presents: neither timing nor length tells how close a guess came,
//! and the token itself is not held in memory after start.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::error::ApiError;
use crate::AppState;

/// One bearer token, as its digest. Its `Debug` prints nothing of it.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
}

impl ApiToken {
    pub fn new(token: &SecretString) -> Self {
        Self {
            digest: digest(token.expose_secret().as_bytes()),
        }
    }

    fn matches(&self, presented: &[u8; 32]) -> Choice {
        self.digest.ct_eq(presented)
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// What a token lets a request do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Admin,
}

/// The configured tokens of both scopes.
#[derive(Debug, Clone, Default)]
pub struct ApiTokens {
    read: Vec<ApiToken>,
    admin: Vec<ApiToken>,
}

impl ApiTokens {
    pub fn new(read: Vec<ApiToken>, admin: Vec<ApiToken>) -> Self {
        Self { read, admin }
    }

    /// No tokens: reads are open to anyone who can reach the server, writes are refused.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether no token of either scope is configured.
    pub fn is_empty(&self) -> bool {
        self.read.is_empty() && self.admin.is_empty()
    }

    /// The scope `presented` grants, if it is a configured token. Every token is compared,
    /// so timing does not tell which one (or which scope) a guess was close to.
    pub fn scope_of(&self, presented: &[u8]) -> Option<Scope> {
        let presented = digest(presented);
        let any = |tokens: &[ApiToken]| {
            tokens.iter().fold(Choice::from(0), |found, token| {
                found | token.matches(&presented)
            })
        };
        let admin = any(&self.admin);
        let read = any(&self.read);
        if bool::from(admin) {
            Some(Scope::Admin)
        } else if bool::from(read) {
            Some(Scope::Read)
        } else {
            None
        }
    }

    /// The scope of the request's bearer token, or why it has none.
    fn scope_of_request(&self, parts: &Parts) -> Result<Scope, ApiError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        let Some(presented) = presented else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "send Authorization: Bearer <token>",
            ));
        };
        self.scope_of(presented).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API token is not valid",
            )
        })
    }
}

/// The application state, handed only to a request allowed to read: one with a read or admin
/// token, or any request when no token is configured. `/v1` read handlers take it instead of
/// `State`, so a handler cannot reach the engine without the check; an extractor rather than
/// a middleware layer, because the check is a header comparison and a layer costs a boxed
/// future per request.
pub(crate) struct Authorized(pub AppState);

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.api_tokens.is_empty() {
            return Ok(Self(state.clone()));
        }
        state.api_tokens.scope_of_request(parts)?;
        Ok(Self(state.clone()))
    }
}

/// Names the bearer token of a request without revealing it: the first 8 hex digits of its
/// SHA-256, as operators' actions are attributed (`admin token 1a2b3c4d`). Tokens are long
/// random strings, so these digits say which token it was and nothing that helps guess one.
pub(crate) fn token_fingerprint(headers: &axum::http::HeaderMap) -> Option<String> {
    let presented = headers
        .get(header::AUTHORIZATION)?
        .as_bytes()
        .strip_prefix(b"Bearer ")?;
    let digest = digest(presented);
    Some(format!(
        "admin token {}",
        subledger_engine::digest_hex(&digest[..4])
    ))
}

/// The application state, handed only to a request with an admin token: holds and operator
/// routes take it. Never open, whatever else is configured.
pub(crate) struct Admin(pub AppState);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.api_tokens.admin.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "admin_disabled",
                "this route changes state and needs an admin token; none is configured (SUBLEDGER_ADMIN_TOKENS)",
            ));
        }
        match state.api_tokens.scope_of_request(parts)? {
            Scope::Admin => Ok(Self(state.clone())),
            Scope::Read => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs an admin token; a read token may only read",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(text: &str) -> ApiToken {
        ApiToken::new(&SecretString::from(text))
    }

    #[test]
    fn a_token_grants_its_own_scope_and_nothing_close_to_it_does() {
        let tokens = ApiTokens::new(vec![token("sl_read_abc")], vec![token("sl_admin_xyz")]);
        assert_eq!(tokens.scope_of(b"sl_read_abc"), Some(Scope::Read));
        assert_eq!(tokens.scope_of(b"sl_admin_xyz"), Some(Scope::Admin));
        for guess in [
            &b"sl_read_ab"[..],
            b"sl_read_abcd",
            b"",
            b"SL_READ_ABC",
            b"sl_admin_xy",
        ] {
            assert_eq!(tokens.scope_of(guess), None, "{guess:?}");
        }
        assert_eq!(
            format!("{:?}", token("sl_read_abc")),
            "ApiToken(<redacted>)"
        );
        assert!(!format!("{tokens:?}").contains("abc"));
    }
}
