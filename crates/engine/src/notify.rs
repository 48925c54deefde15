//! Outbound notifications: every recorded entitlement change POSTed to each configured
//! endpoint as an `entitlements.updated` event, signed the way Stripe signs its webhooks.
//!
//! - The change feed is the outbox: a change is recorded in the transaction that moves the
//!   feed, so none is lost and none is sent that was not recorded.
//! - Each endpoint's changes are spread over [`LANES`] lanes by customer; a lane delivers in
//!   feed order, one change at a time, and moves past a change only once the endpoint
//!   answered 2xx or the retries ran out. A customer's changes therefore arrive in order, and a
//!   receiver that fails for one customer holds up only that lane.
//! - At least once: the event's `id` (the change's cursor) stays the same across retries. A
//!   2xx that comes too late, or a server killed between the 2xx and saving it, means the
//!   change is sent again, never that a later one overtakes it.
//! - Retries back off from [`NotifyConfig::first_retry`] (doubling, at most 10 minutes) for
//!   [`NotifyConfig::retry_for`]; every attempt is recorded for operators.
//! - Lanes are leased, so servers sharing a store share the work and a dead server's lanes
//!   pass to the others when the lease runs out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hyper_util::client::legacy::Client;
use serde::Serialize;
use subledger_store::notifications::{Attempt, Lane, Retry};
use subledger_store::StoreError;
use subledger_stripe::WebhookSecret;
use tokio::task::JoinHandle;

use crate::changes::{cursor_of, Change};
use crate::engine::{Engine, Shutdown};

/// Lanes per endpoint.
pub const LANES: i64 = 8;
/// Changes a lane's holder reads at once.
const BATCH: i64 = 100;
/// How often lanes are looked at when no change was recorded.
const SWEEP: Duration = Duration::from_secs(1);
/// The longest wait between two retries of one change.
const MOST_BACKOFF: Duration = Duration::from_secs(600);

/// A request body: the event's JSON, whole.
type Body = http_body_util::Full<bytes::Bytes>;

/// Where notifications go and how hard to try.
#[derive(Clone)]
pub struct NotifyConfig {
    /// Endpoint URLs (`https://`, or `http://` on a loopback address).
    pub endpoints: Vec<String>,
    /// Every secret signs each event (`v1=` once per secret), so a receiver can rotate.
    pub secrets: Vec<WebhookSecret>,
    /// How long a change is retried before it is given up.
    pub retry_for: Duration,
    /// How long to wait for an endpoint's answer.
    pub timeout: Duration,
    /// The wait before the first retry; each next one doubles.
    pub first_retry: Duration,
    /// How long a server holds a lane it works: a dead server's lanes pass to the others
    /// after this (plus three timeouts, so a slow endpoint cannot outlast it).
    pub lease: Duration,
}

impl std::fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyConfig")
            .field(
                "endpoints",
                &self
                    .endpoints
                    .iter()
                    .map(|e| redacted(e))
                    .collect::<Vec<_>>(),
            )
            .field("secrets", &self.secrets.len())
            .field("retry_for", &self.retry_for)
            .field("timeout", &self.timeout)
            .field("first_retry", &self.first_retry)
            .field("lease", &self.lease)
            .finish()
    }
}

impl NotifyConfig {
    /// `endpoints` with these secrets and Stripe-like defaults: retried for three days, the
    /// first retry after 2 s, 10 s to answer.
    pub fn new(endpoints: Vec<String>, secrets: Vec<WebhookSecret>) -> Self {
        Self {
            endpoints,
            secrets,
            retry_for: Duration::from_secs(3 * 86_400),
            timeout: Duration::from_secs(10),
            first_retry: Duration::from_secs(2),
            lease: Duration::from_secs(30),
        }
    }
}

/// An endpoint URL as it may be shown: without credentials in it.
pub fn redacted(endpoint: &str) -> String {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return endpoint.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://…@{host}{path}"),
        None => endpoint.to_owned(),
    }
}

/// The lane of a customer's changes: the same on every server.
pub fn lane_of(customer_id: &str) -> i64 {
    // FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
    let hash = customer_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    i64::try_from(hash % u64::try_from(LANES).unwrap_or(1)).unwrap_or(0)
}

/// The event an endpoint receives.
#[derive(Debug, Serialize)]
pub struct Notification<'a> {
    /// The change's cursor: the same on every retry.
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the change was recorded (Unix seconds).
    pub created: i64,
    pub data: &'a Change,
}

/// `Subledger-Signature: t=…,v1=…[,v1=…]`: HMAC-SHA256 of `t.body` with each secret.
pub fn signature(secrets: &[WebhookSecret], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&secret.sign(timestamp, body));
    }
    header
}

type HttpClient =
    Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>;

fn http_client() -> Result<HttpClient, rustls::Error> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector))
}

/// What one attempt came to.
struct Outcome {
    status: Option<u16>,
    error: Option<String>,
}

impl Outcome {
    fn delivered(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

async fn post(
    client: &HttpClient,
    config: &NotifyConfig,
    endpoint: &str,
    body: Vec<u8>,
) -> Outcome {
    let timestamp = Utc::now().timestamp();
    let request = hyper::Request::post(endpoint)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("Subledger/", env!("CARGO_PKG_VERSION")),
        )
        .header(
            "subledger-signature",
            signature(&config.secrets, timestamp, &body),
        )
        .body(Body::from(body));
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            return Outcome {
                status: None,
                error: Some(format!("the request cannot be made: {error}")),
            }
        }
    };
    match tokio::time::timeout(config.timeout, client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            // The body is read (so the connection can be reused) but not kept.
            let _ = tokio::time::timeout(
                config.timeout,
                http_body_util::BodyExt::collect(response.into_body()),
            )
            .await;
            Outcome {
                status: Some(status),
                error: (!(200..300).contains(&status)).then(|| format!("answered {status}")),
            }
        }
        Ok(Err(error)) => Outcome {
            status: None,
            error: Some(format!("not reached: {error}")),
        },
        Err(_) => Outcome {
            status: None,
            error: Some(format!("no answer within {:?}", config.timeout)),
        },
    }
}

impl Engine {
    /// Delivers the recorded changes to the configured endpoints until shutdown; `None` when
    /// no endpoint is configured.
    pub fn spawn_notifier(self: &Arc<Self>, mut shutdown: Shutdown) -> Option<JoinHandle<()>> {
        let config = self
            .config
            .notify
            .clone()
            .filter(|c| !c.endpoints.is_empty())?;
        let client = match http_client() {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "notifications cannot be sent: no TLS configuration");
                return None;
            }
        };
        let engine = Arc::clone(self);
        Some(tokio::spawn(async move {
            let mut ready = false;
            // Lanes are looked at when a change was recorded, and otherwise once a second
            // (retries that are due, lanes a dead server left): an idle server does not claim
            // and release every lane at every poll, in the store's writer that webhook
            // acknowledgements use too.
            let mut seen_head = None;
            let mut next_sweep = tokio::time::Instant::now();
            while !shutdown.is_requested() {
                if !ready {
                    ready = engine.prepare_lanes(&config).await;
                }
                let head = engine.db.last_change().await.ok();
                let due = head != seen_head || tokio::time::Instant::now() >= next_sweep;
                if ready && due {
                    match engine.notify_once(&client, &config).await {
                        Ok(()) => {
                            seen_head = head;
                            next_sweep = tokio::time::Instant::now() + SWEEP;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "notifications: the store failed; retrying");
                        }
                    }
                }
                shutdown
                    .sleep(engine.config.poll_interval, &engine.changes_recorded)
                    .await;
            }
        }))
    }

    /// Creates the lanes of endpoints configured for the first time: they start at the
    /// newest change.
    async fn prepare_lanes(&self, config: &NotifyConfig) -> bool {
        let result = async {
            let newest = self.db.last_change().await?;
            for endpoint in &config.endpoints {
                self.db
                    .ensure_notification_lanes(endpoint, LANES, newest)
                    .await?;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        result
            .inspect_err(|error| tracing::warn!(%error, "notifications: lanes cannot be prepared"))
            .is_ok()
    }

    /// One pass over every lane this server can take: what is due is sent.
    pub async fn notify_once(
        &self,
        client: &HttpClient,
        config: &NotifyConfig,
    ) -> Result<(), StoreError> {
        let mut work = Vec::new();
        for endpoint in &config.endpoints {
            for lane in 0..LANES {
                work.push(self.work_lane(client, config, endpoint, lane));
            }
        }
        for result in futures_util::future::join_all(work).await {
            result?;
        }
        Ok(())
    }

    async fn work_lane(
        &self,
        client: &HttpClient,
        config: &NotifyConfig,
        endpoint: &str,
        lane: i64,
    ) -> Result<(), StoreError> {
        let lease = config.timeout * 3 + config.lease;
        let now = || self.config.clock.now().timestamp_millis();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let mut held = now().saturating_add(lease_ms);
        let Some(mut state) = self
            .db
            .claim_notification_lane(endpoint, lane, now(), held)
            .await?
        else {
            return Ok(());
        };
        loop {
            if state
                .retry
                .as_ref()
                .is_some_and(|r| r.next_attempt_ms > now())
            {
                break;
            }
            let rows = self
                .db
                .changes_after(state.delivered_through, BATCH)
                .await?;
            let Some(row) = rows.iter().find(|row| lane_of(&row.customer_id) == lane) else {
                // Nothing of this lane's yet: it is done with everything read.
                if let Some(last) = rows.last() {
                    state.delivered_through = last.seq;
                    state.leased_until_ms = held;
                    if !self.db.save_notification_lane(&state, held, None).await? {
                        return Ok(());
                    }
                    if rows.len() == usize::try_from(BATCH).unwrap_or(usize::MAX) {
                        continue;
                    }
                }
                break;
            };
            let started = Instant::now();
            let attempted_at = now();
            let body = Change::of(row)
                .map_err(|e| e.to_string())
                .and_then(|change| {
                    serde_json::to_vec(&Notification {
                        id: &change.cursor,
                        kind: "entitlements.updated",
                        created: change.changed_at.timestamp(),
                        data: &change,
                    })
                    .map_err(|e| format!("change {} cannot be written: {e}", change.cursor))
                });
            // What cannot be sent is a failed attempt like any other: retried, shown to
            // operators, given up only after `retry_for`; never sent without its answer.
            let outcome = match body {
                Ok(body) => post(client, config, endpoint, body).await,
                Err(error) => Outcome {
                    status: None,
                    error: Some(error),
                },
            };
            let retry = state.retry.take().filter(|r| r.seq == row.seq);
            let attempt_number = retry.as_ref().map_or(1, |r| r.attempts + 1);
            let first_attempt_ms = retry.as_ref().map_or(attempted_at, |r| r.first_attempt_ms);
            let retry_for = i64::try_from(config.retry_for.as_millis()).unwrap_or(i64::MAX);
            let outcome_name = if outcome.delivered() {
                state.delivered_through = row.seq;
                "delivered"
            } else if attempted_at.saturating_sub(first_attempt_ms) >= retry_for {
                state.delivered_through = row.seq;
                tracing::error!(endpoint = %redacted(endpoint), change = %cursor_of(row.seq), attempts = attempt_number, "a notification was given up");
                "gave_up"
            } else {
                let backoff = config
                    .first_retry
                    .saturating_mul(
                        2_u32.saturating_pow(u32::try_from(attempt_number - 1).unwrap_or(u32::MAX)),
                    )
                    .min(MOST_BACKOFF);
                state.retry = Some(Retry {
                    seq: row.seq,
                    attempts: attempt_number,
                    first_attempt_ms,
                    next_attempt_ms: now()
                        .saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX)),
                });
                tracing::warn!(endpoint = %redacted(endpoint), change = %cursor_of(row.seq), error = ?outcome.error, "a notification failed; retrying");
                "failed"
            };
            let attempt = Attempt {
                endpoint: endpoint.to_owned(),
                change_seq: row.seq,
                customer_id: row.customer_id.clone(),
                attempt: attempt_number,
                at_ms: attempted_at,
                outcome: outcome_name.to_owned(),
                status: outcome.status.map(i64::from),
                error: outcome.error,
                duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
            };
            let extended = now().saturating_add(lease_ms);
            state.leased_until_ms = extended;
            if !self
                .db
                .save_notification_lane(&state, held, Some(&attempt))
                .await?
            {
                // The lease ran out while the endpoint was answering: another server has the
                // lane now, and sends this change again.
                return Ok(());
            }
            held = extended;
            if state.retry.is_some() {
                break;
            }
        }
        state.leased_until_ms = 0;
        self.db.save_notification_lane(&state, held, None).await?;
        Ok(())
    }

    /// Every lane's place and the newest attempts, for operators.
    pub async fn notification_status(
        &self,
        attempts: i64,
    ) -> Result<(Vec<Lane>, Vec<Attempt>), StoreError> {
        Ok((
            self.db.notification_lanes().await?,
            self.db.notification_attempts(attempts).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_customer_always_has_the_same_lane_and_customers_spread() {
        assert_eq!(lane_of("cus_1"), lane_of("cus_1"));
        let lanes: std::collections::BTreeSet<i64> =
            (0..100).map(|i| lane_of(&format!("cus_{i}"))).collect();
        assert_eq!(lanes.len(), usize::try_from(LANES).unwrap_or(0));
        assert!(lanes.iter().all(|lane| (0..LANES).contains(lane)));
    }

    #[test]
    fn credentials_in_an_endpoint_are_never_shown() {
        assert_eq!(
            redacted("https://user:pw@hooks.example.com/x"),
            "https://…@hooks.example.com/x"
        );
        assert_eq!(
            redacted("https://hooks.example.com/x?a=b@c"),
            "https://hooks.example.com/x?a=b@c"
        );
    }

    #[test]
    fn each_secret_signs_the_event() {
        let secrets = [
            WebhookSecret::new("whsec_old"),
            WebhookSecret::new("whsec_new"),
        ];
        let header = signature(&secrets, 1_700_000_000, b"{}");
        let parts: Vec<&str> = header.split(',').collect();
        assert_eq!(parts[0], "t=1700000000");
        assert_eq!(parts.len(), 3);
        for (part, secret) in parts[1..].iter().zip(&secrets) {
            assert_eq!(*part, format!("v1={}", secret.sign(1_700_000_000, b"{}")));
        }
    }
}
