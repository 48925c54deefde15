//! Bearer tokens for `/v1`.

use std::fmt;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use crate::error::ApiError;
use crate::AppState;

/// An API token product services present. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Compares without an early exit, so timing does not tell how much of a guess was right.
    fn matches(&self, candidate: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut difference = expected.len() ^ candidate.len();
        for (i, byte) in expected.iter().enumerate() {
            difference |= usize::from(byte ^ candidate.get(i).copied().unwrap_or(0));
        }
        difference == 0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// The application state, handed only to a request that presented a valid API token (or to
/// any request when none are configured). `/v1` handlers take it instead of `State`, so a
/// handler cannot reach the engine without the check; an extractor rather than a middleware
/// layer, because the check is a header comparison and a layer costs a boxed future per request.
pub(crate) struct Authorized(pub AppState);

impl FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if state.api_tokens.is_empty() {
            return Ok(Self(state.clone()));
        }
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
        // Check every token, so timing does not tell which one was close.
        let accepted = state
            .api_tokens
            .iter()
            .fold(false, |accepted, token| token.matches(presented) | accepted);
        if !accepted {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "the API token is not valid",
            ));
        }
        Ok(Self(state.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let token = ApiToken::new("sl_live_abc");
        assert!(token.matches(b"sl_live_abc"));
        assert!(!token.matches(b"sl_live_ab"));
        assert!(!token.matches(b"sl_live_abcd"));
        assert!(!token.matches(b""));
        assert_eq!(format!("{token:?}"), "ApiToken(<redacted>)");
    }
}
