//! For product services that ask "may this customer use this?" on every request: a local copy
//! of Subledger's entitlements that answers [`Entitlements::can`] and [`Entitlements::limit`]
//! from memory, in well under a microsecond, without a network call.
//!
//! ```no_run
//! # async fn run() -> Result<(), subledger_client::Error> {
//! use subledger_client::{Config, Entitlements, Fallback};
//!
//! let config = Config::new("https://subledger.internal:8080")
//!     .token("sl_read_…")
//!     .fallback(Fallback::new().enabled("api_calls", Some(1000)));
//! let entitlements = Entitlements::start(config)?;
//! if entitlements.can("cus_123", "sso") { /* … */ }
//! # Ok(()) }
//! ```
//!
//! - It fills itself with a bulk read (`GET /v1/entitlements?changed_since=`), then follows
//!   `GET /v1/changes/stream` from the cursor it reached, resuming from its last cursor after
//!   any interruption: every change once, in order.
//! - Until it has synced, and for a customer Subledger does not know, it answers with the
//!   configured [`Fallback`] (for example your default plan), so an outage of Subledger
//!   degrades to the default rather than to errors.
//! - [`verify_notification`] checks the signature of Subledger's outbound webhooks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;
use tokio::task::JoinHandle;

mod verify;

pub use verify::{verify_notification, VerifyError};

/// One feature's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureValue {
    pub enabled: bool,
    /// The limit of a metered feature; `None` for a boolean one.
    pub limit: Option<u64>,
}

/// What to answer before the first sync and for customers Subledger does not know.
#[derive(Debug, Clone, Default)]
pub struct Fallback {
    features: HashMap<String, FeatureValue>,
}

impl Fallback {
    /// Nothing enabled.
    pub fn new() -> Self {
        Self::default()
    }

    /// `feature` enabled, with `limit` for a metered one.
    #[must_use]
    pub fn enabled(mut self, feature: &str, limit: Option<u64>) -> Self {
        self.features.insert(
            feature.to_owned(),
            FeatureValue {
                enabled: true,
                limit,
            },
        );
        self
    }

    fn get(&self, feature: &str) -> FeatureValue {
        self.features.get(feature).copied().unwrap_or(FeatureValue {
            enabled: false,
            limit: None,
        })
    }
}

/// Where Subledger is and how to ask it.
#[derive(Debug, Clone)]
pub struct Config {
    base_url: String,
    token: Option<String>,
    fallback: Fallback,
    /// The wait before reconnecting after an error (doubling, at most 30 s).
    pub first_retry: Duration,
}

impl Config {
    /// Subledger at `base_url` (`http://…` or `https://…`, without a trailing `/v1`).
    pub fn new(base_url: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: None,
            fallback: Fallback::default(),
            first_retry: Duration::from_millis(200),
        }
    }

    /// A read token (`SUBLEDGER_API_TOKENS`).
    #[must_use]
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    #[must_use]
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("Subledger answered {status} to {what}: {body}")]
    Refused {
        what: String,
        status: u16,
        body: String,
    },
    #[error("Subledger cannot be reached for {what}: {reason}")]
    Unreachable { what: String, reason: String },
    #[error("Subledger's answer to {what} is not what this client reads: {reason}")]
    Unreadable { what: String, reason: String },
}

type Http = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The local copy. Cheap to clone; every clone shares it.
#[derive(Clone)]
pub struct Entitlements {
    shared: Arc<Shared>,
}

struct Shared {
    config: Config,
    answers: RwLock<HashMap<String, Arc<HashMap<String, FeatureValue>>>>,
    /// The newest change applied.
    cursor: Mutex<Option<String>>,
    synced: AtomicBool,
    http: Http,
    /// For the change stream: never a connection other requests used, because Subledger
    /// sorts a connection by its first request and serves streams at a lower priority than
    /// webhook acknowledgements only when the stream comes first.
    stream_http: Http,
}

/// A customer's key in answers and in changes: `acct_…/cus_…` for a connected account's.
fn customer_key(answer: &Value) -> Option<String> {
    let customer = answer.get("customer")?.as_str()?;
    Some(match answer.get("account").and_then(Value::as_str) {
        Some(account) => format!("{account}/{customer}"),
        None => customer.to_owned(),
    })
}

fn features_of(answer: &Value) -> HashMap<String, FeatureValue> {
    answer
        .get("features")
        .and_then(Value::as_object)
        .map(|features| {
            features
                .iter()
                .map(|(name, value)| {
                    (
                        name.clone(),
                        FeatureValue {
                            enabled: value
                                .get("enabled")
                                .and_then(Value::as_bool)
                                .unwrap_or(false),
                            limit: value.get("limit").and_then(Value::as_u64),
                        },
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

impl Entitlements {
    /// A local copy that fills and follows itself in the background (on the current Tokio
    /// runtime) for as long as any clone of it lives.
    pub fn start(config: Config) -> Result<Self, Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector.clone());
        let stream_http = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let entitlements = Self {
            shared: Arc::new(Shared {
                config,
                answers: RwLock::default(),
                cursor: Mutex::new(None),
                synced: AtomicBool::new(false),
                http,
                stream_http,
            }),
        };
        let weak = Arc::downgrade(&entitlements.shared);
        let _follower: JoinHandle<()> = tokio::spawn(async move {
            let mut wait = Duration::ZERO;
            loop {
                tokio::time::sleep(wait).await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                let first_retry = shared.config.first_retry;
                match shared.catch_up_and_follow(&weak).await {
                    Ok(()) => return,
                    Err(Error::Refused {
                        status: 400, body, ..
                    }) if body.contains("unknown_cursor") => {
                        // Subledger's feed does not know the cursor (a new store): read it all again.
                        tracing::warn!("subledger-client: the feed does not know this copy's cursor; reading everything again");
                        *shared.cursor.lock().unwrap_or_else(|p| p.into_inner()) = None;
                        wait = Duration::ZERO;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "subledger-client: following entitlements failed; retrying");
                        wait = (wait * 2).clamp(first_retry, Duration::from_secs(30));
                    }
                }
            }
        });
        Ok(entitlements)
    }

    /// Whether `customer` may use `feature` (`acct_…/cus_…` for a connected account's).
    pub fn can(&self, customer: &str, feature: &str) -> bool {
        self.feature(customer, feature).enabled
    }

    /// The limit of a metered feature; `None` for a boolean one or one not enabled.
    pub fn limit(&self, customer: &str, feature: &str) -> Option<u64> {
        let value = self.feature(customer, feature);
        value.limit.filter(|_| value.enabled)
    }

    /// One feature of one customer, from memory.
    pub fn feature(&self, customer: &str, feature: &str) -> FeatureValue {
        let answers = self
            .shared
            .answers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match answers.get(customer) {
            Some(features) => features.get(feature).copied().unwrap_or(FeatureValue {
                enabled: false,
                limit: None,
            }),
            None => self.shared.config.fallback.get(feature),
        }
    }

    /// Whether the bulk read finished, so answers are Subledger's rather than the fallback.
    pub fn is_synced(&self) -> bool {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// The newest change applied.
    pub fn cursor(&self) -> Option<String> {
        self.shared
            .cursor
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Applies a change as the feed, the stream or a verified notification gives it (`data`
    /// of an `entitlements.updated` event). Changes older than the newest applied are no news.
    pub fn apply(&self, change: &Value) {
        self.shared.apply(change);
    }
}

impl std::fmt::Debug for Entitlements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entitlements")
            .field("base_url", &self.shared.config.base_url)
            .field("synced", &self.is_synced())
            .field("cursor", &self.cursor())
            .finish_non_exhaustive()
    }
}

/// The number of a cursor, to compare two.
fn number(cursor: &str) -> Option<u64> {
    cursor.strip_prefix("chg_")?.parse().ok()
}

impl Shared {
    fn apply(&self, change: &Value) {
        let Some(answer) = change.get("entitlements") else {
            return;
        };
        let cursor = change.get("cursor").and_then(Value::as_str);
        {
            let mut newest = self.cursor.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(new), Some(old)) =
                (cursor.and_then(number), newest.as_deref().and_then(number))
            {
                if new <= old {
                    return;
                }
            }
            if let Some(cursor) = cursor {
                *newest = Some(cursor.to_owned());
            }
        }
        self.store(answer);
    }

    fn store(&self, answer: &Value) {
        if let Some(key) = customer_key(answer) {
            self.answers
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, Arc::new(features_of(answer)));
        }
    }

    async fn get(&self, path: &str) -> Result<hyper::Response<hyper::body::Incoming>, Error> {
        let unreachable = |reason: String| Error::Unreachable {
            what: path.to_owned(),
            reason,
        };
        let mut request = hyper::Request::get(format!("{}{path}", self.config.base_url));
        if let Some(token) = &self.config.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(cursor) = path
            .ends_with("/stream")
            .then(|| self.cursor.lock().ok()?.clone())
            .flatten()
        {
            request = request.header("last-event-id", cursor);
        }
        let request = request
            .body(Empty::new())
            .map_err(|e| unreachable(e.to_string()))?;
        let http = if path.ends_with("/stream") {
            &self.stream_http
        } else {
            &self.http
        };
        let response = tokio::time::timeout(Duration::from_secs(30), http.request(request))
            .await
            .map_err(|_| unreachable("no answer within 30 s".to_owned()))?
            .map_err(|e| unreachable(e.to_string()))?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            return Err(Error::Refused {
                what: path.to_owned(),
                status,
                body,
            });
        }
        Ok(response)
    }

    async fn get_json(&self, path: &str) -> Result<Value, Error> {
        let response = self.get(path).await?;
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| Error::Unreachable {
                what: path.to_owned(),
                reason: e.to_string(),
            })?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| Error::Unreadable {
            what: path.to_owned(),
            reason: e.to_string(),
        })
    }

    /// Reads every customer's newest answer since the last cursor (from the start the first
    /// time), then follows the stream until it ends or fails.
    async fn catch_up_and_follow(&self, weak: &std::sync::Weak<Shared>) -> Result<(), Error> {
        loop {
            let after = self
                .cursor
                .lock()
                .ok()
                .and_then(|c| c.clone())
                .unwrap_or_else(|| "chg_0".to_owned());
            let page = self
                .get_json(&format!(
                    "/v1/entitlements?changed_since={after}&limit=1000"
                ))
                .await?;
            for answer in page["entitlements"].as_array().into_iter().flatten() {
                self.store(answer);
            }
            if let Some(next) = page["next_cursor"].as_str() {
                *self.cursor.lock().unwrap_or_else(|p| p.into_inner()) = Some(next.to_owned());
            }
            if page["has_more"] != Value::Bool(true) {
                break;
            }
        }
        self.synced.store(true, Ordering::Release);
        let response = self.get("/v1/changes/stream").await?;
        let mut body = response.into_body();
        let mut text = String::new();
        while let Some(frame) = body.frame().await {
            if weak.strong_count() <= 1 {
                // Only this follower holds the copy: nobody asks it any more.
                return Ok(());
            }
            let frame = frame.map_err(|e| Error::Unreachable {
                what: "the change stream".to_owned(),
                reason: e.to_string(),
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            text.push_str(&String::from_utf8_lossy(&data));
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                let data: String = event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                match serde_json::from_str::<Value>(&data) {
                    Ok(change) => self.apply(&change),
                    Err(error) => tracing::warn!(%error, "subledger-client: an unreadable change"),
                }
            }
        }
        Err(Error::Unreachable {
            what: "the change stream".to_owned(),
            reason: "it ended".to_owned(),
        })
    }
}
