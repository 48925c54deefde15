//! Reading a whole Stripe account: backfill and reconciliation list every customer,
//! subscription and invoice, thousands of requests in one run, so this reader is polite and
//! patient where [`crate::StripeApi`] (a handful of calls) need not be.
//!
//! - A request rate it never exceeds (Stripe allows about 25 requests/s in test mode and 100
//!   in live mode; the default stays under both).
//! - `429` waits for `Retry-After` when Stripe sends it, else backs off exponentially; `5xx`,
//!   timeouts and network failures back off too; `Stripe-Should-Retry: false` is final.
//! - Every other failure is classified once ([`ApiError`]) and returned at once: a refused
//!   key, a key without the permission an endpoint needs, an unknown object, a bad request.
//! - Lists are paged as Stripe documents (`limit`, `starting_after`, `has_more`).
//!
//! Answers stay JSON: the translator reads every API version's shape, where a typed model
//! follows one. It speaks HTTP itself (hyper, as async-stripe does) because it needs the
//! response headers that async-stripe keeps to itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderValue, AUTHORIZATION, RETRY_AFTER};
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::{ApiError, ApiKey};

/// Stripe's own API.
pub const STRIPE_API_BASE: &str = "https://api.stripe.com/";

/// How hard the reader may push and how long it keeps trying.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadPolicy {
    /// The most requests a second, whatever Stripe answers.
    pub max_requests_per_second: u32,
    /// Attempts of one request before a transient failure is final.
    pub max_attempts: u32,
    /// The first wait after a transient failure; each further one doubles it.
    pub first_backoff: Duration,
    /// The longest wait for one answer.
    pub request_timeout: Duration,
    /// The longest `Retry-After` honoured (longer ones are capped, not ignored).
    pub max_retry_after: Duration,
}

impl Default for ReadPolicy {
    fn default() -> Self {
        Self {
            // Under test mode's ~25/s, so the same default is safe in both modes.
            max_requests_per_second: 20,
            max_attempts: 6,
            first_backoff: Duration::from_millis(500),
            request_timeout: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

/// One page of a Stripe list.
#[derive(Debug, Clone, PartialEq)]
pub struct ListPage {
    pub data: Vec<Value>,
    pub has_more: bool,
}

impl ListPage {
    /// The id to pass as `starting_after` for the next page.
    pub fn last_id(&self) -> Option<&str> {
        self.data.last()?.get("id")?.as_str()
    }
}

/// Read-only access to Stripe's API under a rate limit. Cheap to share behind an `Arc`.
pub struct StripeReader {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    base: String,
    authorization: HeaderValue,
    test_mode_key: bool,
    policy: ReadPolicy,
    /// The connected account read (the `Stripe-Account` header); `None`: the key's own.
    account: Option<HeaderValue>,
    /// The earliest moment the next request may start, shared by every account's reader.
    next_slot: Arc<Mutex<Instant>>,
    requests: Arc<AtomicU64>,
}

impl std::fmt::Debug for StripeReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeReader")
            .field("base", &self.base)
            .field("key", &"<redacted>")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Value),
    /// Worth another try, after at least this long (`None`: the usual backoff).
    Retry(ApiError, Option<Duration>),
    Final(ApiError),
}

impl StripeReader {
    /// A reader for `key` against `base_url` (default: Stripe's own API).
    pub fn new(key: &ApiKey, base_url: Option<&str>, policy: ReadPolicy) -> Result<Self, ApiError> {
        let base = base_url.unwrap_or(STRIPE_API_BASE);
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(ApiError::Unexpected(format!(
                "the Stripe API base `{base}` is not an http(s) URL"
            )));
        }
        let base = format!("{}/", base.trim_end_matches('/'));
        let authorization =
            HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
                ApiError::Unexpected(
                    "the API key contains characters a header cannot carry".to_owned(),
                )
            })?;
        if policy.max_requests_per_second == 0 || policy.max_attempts == 0 {
            return Err(ApiError::Unexpected(
                "the request rate and the attempts must be at least 1".to_owned(),
            ));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base,
            authorization,
            test_mode_key: key.is_test_mode(),
            policy,
            account: None,
            next_slot: Arc::new(Mutex::new(Instant::now())),
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The same reader, reading connected account `account` (`None`: the key's own account)
    /// through the `Stripe-Account` header (Stripe's docs, "Making API calls for connected
    /// accounts"). It shares this reader's rate limit and request count.
    pub fn in_account(&self, account: Option<&str>) -> Result<Self, ApiError> {
        let account = account
            .map(|account| {
                crate::stripe_id(account).and_then(|id| {
                    HeaderValue::from_str(id).map_err(|_| {
                        ApiError::Unexpected(format!("`{account}` cannot be sent as a header"))
                    })
                })
            })
            .transpose()?;
        Ok(Self {
            client: self.client.clone(),
            base: self.base.clone(),
            authorization: self.authorization.clone(),
            test_mode_key: self.test_mode_key,
            policy: self.policy,
            account,
            next_slot: Arc::clone(&self.next_slot),
            requests: Arc::clone(&self.requests),
        })
    }

    /// Whether the key is a test-mode key (`sk_test_…`, `rk_test_…`).
    pub fn is_test_mode(&self) -> bool {
        self.test_mode_key
    }

    /// Requests sent so far, retries included.
    pub fn requests_made(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `GET /v1/{path}?{query}` as JSON.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        let uri = format!(
            "{}v1/{}{}",
            self.base,
            path.trim_start_matches('/'),
            encode_query(query)
        );
        let mut backoff = self.policy.first_backoff;
        let mut attempt = 1;
        loop {
            self.wait_for_slot().await;
            self.requests.fetch_add(1, Ordering::Relaxed);
            let attempt_made = self.attempt(&uri).await;
            crate::record_attempt(
                "reader",
                match &attempt_made {
                    Attempt::Done(_) => None,
                    Attempt::Final(error) | Attempt::Retry(error, _) => Some(error),
                },
            );
            let (error, wait) = match attempt_made {
                Attempt::Done(value) => return Ok(value),
                Attempt::Final(error) => return Err(error),
                Attempt::Retry(error, wait) => (error, wait),
            };
            if attempt >= self.policy.max_attempts {
                return Err(error);
            }
            let wait = wait.map_or(backoff, |w| w.min(self.policy.max_retry_after));
            tracing::warn!(%error, attempt, path, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "Stripe read failed; retrying");
            tokio::time::sleep(wait).await;
            backoff = backoff.saturating_mul(2);
            attempt += 1;
        }
    }

    /// One page of the list at `path`, after `starting_after` when given.
    pub async fn list_page(
        &self,
        path: &str,
        query: &[(&str, &str)],
        starting_after: Option<&str>,
    ) -> Result<ListPage, ApiError> {
        let mut query = query.to_vec();
        if !query.iter().any(|(k, _)| *k == "limit") {
            query.push(("limit", "100"));
        }
        if let Some(after) = starting_after {
            query.push(("starting_after", after));
        }
        let page = self.get(path, &query).await?;
        let data = page
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| ApiError::Unexpected(format!("{path}: the answer is not a list")))?;
        let has_more = page.get("has_more").and_then(Value::as_bool) == Some(true);
        Ok(ListPage { data, has_more })
    }

    /// Every page of the list at `path`, in Stripe's order.
    pub async fn list_all(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<Value>, ApiError> {
        let mut objects = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.list_page(path, query, after.as_deref()).await?;
            after = page.last_id().map(str::to_owned);
            let more = page.has_more && !page.data.is_empty();
            objects.extend(page.data);
            if !more {
                return Ok(objects);
            }
        }
    }

    /// `GET /v1/{path}/{id}`; only Stripe's id alphabet may become part of the path.
    pub async fn retrieve(&self, path: &str, id: &str) -> Result<Value, ApiError> {
        let id = crate::stripe_id(id)?;
        self.get(&format!("{path}/{id}"), &[]).await
    }

    /// Waits until the rate limit lets one more request go, and books its slot.
    async fn wait_for_slot(&self) {
        let interval = Duration::from_secs(1) / self.policy.max_requests_per_second;
        let start = {
            let mut next = self.next_slot.lock().await;
            let start = (*next).max(Instant::now());
            *next = start + interval;
            start
        };
        tokio::time::sleep_until(start).await;
    }

    async fn attempt(&self, uri: &str) -> Attempt {
        let mut request = Request::get(uri).header(AUTHORIZATION, self.authorization.clone());
        if let Some(account) = &self.account {
            request = request.header("stripe-account", account.clone());
        }
        let request = match request.body(Empty::<Bytes>::new()) {
            Ok(request) => request,
            Err(e) => return Attempt::Final(ApiError::Unexpected(format!("bad request URI: {e}"))),
        };
        let sent = tokio::time::timeout(self.policy.request_timeout, async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
        })
        .await;
        let (parts, body) = match sent {
            Err(_) => return Attempt::Retry(ApiError::Unavailable("timed out".to_owned()), None),
            Ok(Err(e)) => return Attempt::Retry(ApiError::Unavailable(e.to_string()), None),
            Ok(Ok(answer)) => answer,
        };
        let json: Option<Value> = serde_json::from_slice(&body).ok();
        if parts.status.is_success() {
            return match json {
                Some(value) => Attempt::Done(value),
                None => Attempt::Final(ApiError::Unexpected("the answer is not JSON".to_owned())),
            };
        }
        let should_retry = parts
            .headers
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        let retry_after = parts
            .headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let error = json.as_ref().and_then(|j| j.get("error"));
        let text = |key: &str| {
            error
                .and_then(|e| e.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let message = text("message").unwrap_or_else(|| format!("HTTP {}", parts.status));
        let classified = classify(
            parts.status,
            text("type").as_deref(),
            message,
            text("param"),
        );
        match should_retry {
            Some(false) => Attempt::Final(classified),
            Some(true) => Attempt::Retry(classified, retry_after),
            None if matches!(classified, ApiError::RateLimit | ApiError::Unavailable(_)) => {
                Attempt::Retry(classified, retry_after)
            }
            None => Attempt::Final(classified),
        }
    }
}

/// A failed answer by Stripe's error classes.
fn classify(
    status: StatusCode,
    kind: Option<&str>,
    message: String,
    param: Option<String>,
) -> ApiError {
    match (status.as_u16(), kind) {
        (401, _) | (_, Some("authentication_error")) => ApiError::Authentication,
        (403, _) => ApiError::Permission(message),
        (429, _) | (_, Some("rate_limit_error")) => ApiError::RateLimit,
        (404, _) => ApiError::NotFound(message),
        (_, Some("invalid_request_error")) => ApiError::InvalidRequest { message, param },
        (code, _) if code >= 500 => ApiError::Unavailable(format!("{status}: {message}")),
        _ => ApiError::Unexpected(format!("{status}: {message}")),
    }
}

/// `?k=v&…`, form-encoded as Stripe reads query strings (`expand[]`, `created[gte]`).
fn encode_query(query: &[(&str, &str)]) -> String {
    if query.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect();
    format!("?{}", pairs.join("&"))
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_are_encoded_as_stripe_reads_them() {
        assert_eq!(encode_query(&[]), "");
        assert_eq!(
            encode_query(&[("expand[]", "data.latest_invoice"), ("created[gte]", "17")]),
            "?expand%5B%5D=data.latest_invoice&created%5Bgte%5D=17"
        );
    }

    #[test]
    fn failures_are_classified_by_status_and_type() {
        let c = |status: u16, kind| {
            classify(
                StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT),
                kind,
                "m".to_owned(),
                None,
            )
        };
        assert_eq!(c(401, None), ApiError::Authentication);
        assert_eq!(
            c(403, Some("invalid_request_error")),
            ApiError::Permission("m".to_owned())
        );
        assert_eq!(c(429, None), ApiError::RateLimit);
        assert_eq!(
            c(404, Some("invalid_request_error")),
            ApiError::NotFound("m".to_owned())
        );
        assert!(matches!(
            c(400, Some("invalid_request_error")),
            ApiError::InvalidRequest { .. }
        ));
        assert!(matches!(c(503, None), ApiError::Unavailable(_)));
    }
}
