//! Webhook delivery as Stripe does it, and as badly as Stripe may do it.
//!
//! Events are signed exactly as Stripe signs them (`t=<delivery time>,v1=HMAC`) and sent to a
//! router in-process or to a running Subledger over HTTP. Seeded modes reproduce what real
//! delivery does to order:
//! - `InOrder`: one delivery per event, in emission order.
//! - `Shuffled`: order shuffled within windows of consecutive events, and some events
//!   delivered twice.
//! - `Chaos`: shuffled with duplicates, some events held back until a later step (delayed),
//!   and some attempts failing first (sent with a broken signature, refused, retried later).
//!   A few events straggle: held back for several steps (clock advances included) and then
//!   delivered after everything newer, as an event does whose deliveries Stripe kept retrying
//!   for hours (`../shared/STRIPE.md`, delivery: test mode retries over a few hours, live mode
//!   for up to 3 days). Some duplicates are two deliveries of one event in flight at once.
//!
//! A delivery the receiver does not acknowledge with 2xx is retried, as Stripe retries. A step
//! that expects a state (or the end of a story) flushes: everything still held arrives first.

use std::net::SocketAddr;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use serde_json::Value;
use subledger_stripe::WebhookSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

use crate::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    InOrder,
    Shuffled,
    Chaos,
}

impl DeliveryMode {
    pub fn parse(mode: &str) -> Option<Self> {
        Some(match mode {
            "in-order" => Self::InOrder,
            "shuffled" => Self::Shuffled,
            "chaos" => Self::Chaos,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InOrder => "in-order",
            Self::Shuffled => "shuffled",
            Self::Chaos => "chaos",
        }
    }
}

/// Where webhooks go.
#[derive(Debug, Clone)]
pub enum Target {
    /// Subledger's router, called in-process.
    Router(Router),
    /// A running Subledger: `host:port` and the webhook path.
    Http { addr: SocketAddr, path: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the receiver refused a correctly signed event {event_id} with {status}: {body}")]
    Refused {
        event_id: String,
        status: u16,
        body: String,
    },
    #[error(
        "event {event_id} was still not acknowledged after {attempts} attempts (last: {last})"
    )]
    GaveUp {
        event_id: String,
        attempts: u32,
        last: String,
    },
    #[error("cannot reach the receiver: {0}")]
    Transport(String),
}

/// What delivery did, for reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryStats {
    pub events: u64,
    pub deliveries: u64,
    pub duplicates: u64,
    /// Events held back for one step or more (stragglers included).
    pub delayed: u64,
    /// Events held back for several steps and then delivered after everything newer.
    pub stragglers: u64,
    /// Events delivered twice at the same moment (both requests in flight together).
    pub concurrent_duplicates: u64,
    pub failed_attempts: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    event_id: String,
    body: Vec<u8>,
    attempts: u32,
    /// Steps (calls to `deliver`) it is still held back for.
    held_for: u32,
    /// Sent twice at once on its next attempt.
    twin: bool,
}

/// Events per window that `Shuffled` and `Chaos` reorder.
const WINDOW: usize = 8;
/// Attempts before a delivery counts as lost.
const MAX_ATTEMPTS: u32 = 8;
/// How many steps a straggler is held back for, at least and at most.
const STRAGGLER_STEPS: (u32, u32) = (3, 12);

#[derive(Debug)]
pub struct Deliverer {
    mode: DeliveryMode,
    rng: Rng,
    secret: WebhookSecret,
    target: Target,
    queue: Vec<Pending>,
    /// Events held back, in the order they were held.
    held: Vec<Pending>,
    stats: DeliveryStats,
}

impl Deliverer {
    pub fn new(mode: DeliveryMode, seed: u64, secret: WebhookSecret, target: Target) -> Self {
        Self {
            mode,
            rng: Rng::new(seed),
            secret,
            target,
            queue: Vec::new(),
            held: Vec::new(),
            stats: DeliveryStats::default(),
        }
    }

    /// Sends from now on to `target` (Subledger restarted); what is queued or held back
    /// stays queued or held back.
    pub fn retarget(&mut self, target: Target) {
        self.target = target;
    }

    pub fn stats(&self) -> DeliveryStats {
        self.stats
    }

    pub fn enqueue(&mut self, events: Vec<Value>) {
        for event in events {
            let event_id = event["id"].as_str().unwrap_or_default().to_owned();
            let body = serde_json::to_vec(&event).unwrap_or_default();
            self.stats.events += 1;
            self.queue.push(Pending {
                event_id,
                body,
                attempts: 0,
                held_for: 0,
                twin: false,
            });
        }
    }

    /// Delivers what is queued. Unless `flush`, `Chaos` may keep some events for later;
    /// with `flush` every queued and held event is acknowledged before this returns.
    pub async fn deliver(&mut self, flush: bool) -> Result<(), DeliveryError> {
        // What was held and is due now arrives after everything newer.
        let released = self.release_held(flush);
        let mut batch = std::mem::take(&mut self.queue);
        if self.mode != DeliveryMode::InOrder {
            self.disorder(&mut batch);
        }
        if self.mode == DeliveryMode::Chaos && !flush {
            batch = self.hold_back(batch);
        }
        batch.extend(released);
        let mut retry = Vec::new();
        for pending in batch {
            if let Some(failed) = self.send(pending).await? {
                retry.push(failed);
            }
        }
        // Stripe retries what was not acknowledged; here, right away (or at the next step).
        let mut rounds = 0;
        while !retry.is_empty() {
            rounds += 1;
            let again = std::mem::take(&mut retry);
            for mut pending in again {
                if !flush && rounds > 1 {
                    pending.held_for = 1;
                    self.held.push(pending);
                    continue;
                }
                if let Some(failed) = self.send(pending).await? {
                    retry.push(failed);
                }
            }
        }
        if flush && !(self.queue.is_empty() && self.held.is_empty()) {
            return Box::pin(self.deliver(true)).await;
        }
        Ok(())
    }

    /// Takes out of `held` what is due at this step (everything, when flushing), counting
    /// down the rest.
    fn release_held(&mut self, flush: bool) -> Vec<Pending> {
        let mut released = Vec::new();
        for mut pending in std::mem::take(&mut self.held) {
            if flush || pending.held_for <= 1 {
                pending.held_for = 0;
                released.push(pending);
            } else {
                pending.held_for -= 1;
                self.held.push(pending);
            }
        }
        released
    }

    /// Holds some events back: most for one step, a few (stragglers) for several.
    fn hold_back(&mut self, batch: Vec<Pending>) -> Vec<Pending> {
        let mut sent_now = Vec::with_capacity(batch.len());
        for mut pending in batch {
            if self.rng.chance(4) {
                let (least, most) = STRAGGLER_STEPS;
                let spread = usize::try_from(most - least + 1).unwrap_or(1);
                pending.held_for = least + u32::try_from(self.rng.below(spread)).unwrap_or(0);
                self.stats.stragglers += 1;
            } else if self.rng.chance(20) {
                pending.held_for = 1;
            } else {
                sent_now.push(pending);
                continue;
            }
            self.stats.delayed += 1;
            self.held.push(pending);
        }
        sent_now
    }

    /// One signed attempt at one event, for a receiver that is not under test: `true` if it
    /// was acknowledged. What was not is for the caller to record (Stripe's `delivery_success`).
    pub async fn deliver_one(&mut self, event: Value) -> bool {
        let body = serde_json::to_vec(&event).unwrap_or_default();
        let signature = self.secret.header(chrono::Utc::now().timestamp(), &body);
        self.stats.events += 1;
        self.stats.deliveries += 1;
        matches!(self.post(&signature, &body).await, Ok((status, _)) if (200..300).contains(&status))
    }

    /// Shuffles within windows and adds duplicates: some sent apart, some (in `Chaos`) both
    /// in flight at once.
    fn disorder(&mut self, batch: &mut Vec<Pending>) {
        let mut duplicated = Vec::with_capacity(batch.len() * 2);
        for mut pending in batch.drain(..) {
            if self.rng.chance(25) {
                self.stats.duplicates += 1;
                if self.mode == DeliveryMode::Chaos && self.rng.chance(50) {
                    self.stats.concurrent_duplicates += 1;
                    pending.twin = true;
                } else {
                    duplicated.push(pending.clone());
                }
            }
            duplicated.push(pending);
        }
        for window in duplicated.chunks_mut(WINDOW) {
            self.rng.shuffle(window);
        }
        *batch = duplicated;
    }

    /// One attempt. `Ok(Some(_))`: not acknowledged, retry later.
    async fn send(&mut self, mut pending: Pending) -> Result<Option<Pending>, DeliveryError> {
        pending.attempts += 1;
        let now = chrono::Utc::now().timestamp();
        let break_it = self.mode == DeliveryMode::Chaos && self.rng.chance(10);
        let signature = if break_it {
            // A delivery mangled in transit: the receiver must refuse it and Stripe retries.
            format!("t={now},v1={}", "0".repeat(64))
        } else {
            self.secret.header(now, &pending.body)
        };
        let (status, body) = if std::mem::take(&mut pending.twin) {
            // Both deliveries in flight together; what counts is the worse answer.
            let (first, second) = tokio::join!(
                self.post(&signature, &pending.body),
                self.post(&signature, &pending.body)
            );
            self.stats.deliveries += 1;
            let (first, second) = (first?, second?);
            if (200..300).contains(&first.0) {
                second
            } else {
                first
            }
        } else {
            self.post(&signature, &pending.body).await?
        };
        self.stats.deliveries += 1;
        if (200..300).contains(&status) && !break_it {
            return Ok(None);
        }
        if break_it && status == 400 {
            self.stats.failed_attempts += 1;
            return Ok(Some(pending));
        }
        if break_it || (400..500).contains(&status) && status != 408 && status != 429 {
            return Err(DeliveryError::Refused {
                event_id: pending.event_id,
                status,
                body,
            });
        }
        self.stats.failed_attempts += 1;
        if pending.attempts >= MAX_ATTEMPTS {
            return Err(DeliveryError::GaveUp {
                event_id: pending.event_id,
                attempts: pending.attempts,
                last: format!("{status} {body}"),
            });
        }
        Ok(Some(pending))
    }

    async fn post(&self, signature: &str, body: &[u8]) -> Result<(u16, String), DeliveryError> {
        match &self.target {
            Target::Router(router) => {
                let request = Request::post("/webhooks/stripe")
                    .header("stripe-signature", signature)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_vec()))
                    .map_err(|e| DeliveryError::Transport(e.to_string()))?;
                let response = router
                    .clone()
                    .oneshot(request)
                    .await
                    .map_err(|e| DeliveryError::Transport(e.to_string()))?;
                let status = response.status().as_u16();
                let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
                    .await
                    .map_err(|e| DeliveryError::Transport(e.to_string()))?;
                Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
            }
            Target::Http { addr, path } => {
                let headers = [
                    ("Stripe-Signature", signature),
                    ("Content-Type", "application/json"),
                ];
                http_request(*addr, "POST", path, &headers, body)
                    .await
                    .map_err(DeliveryError::Transport)
            }
        }
    }
}

/// A minimal HTTP/1.1 request over a fresh connection, enough to talk to a Subledger on this
/// machine: returns the status and the body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String), String> {
    let transport = |e: std::io::Error| format!("{addr}: {e}");
    let mut stream = TcpStream::connect(addr).await.map_err(transport)?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).await.map_err(transport)?;
    stream.write_all(body).await.map_err(transport)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.map_err(transport)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "not an HTTP response: no header end".to_owned())?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let rest = &response[split + 4..];
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:.80}"))?;
    // Chunked bodies (what axum sends without a known length) are reassembled.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok());
        let after = &rest[line_end + 2..];
        match size {
            Some(size) if size > 0 && after.len() >= size => {
                body.extend_from_slice(&after[..size]);
                rest = after[size..]
                    .strip_prefix(b"\r\n")
                    .unwrap_or(&after[size..]);
            }
            _ => break,
        }
    }
    body
}
