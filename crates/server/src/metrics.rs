//! Prometheus metrics: `GET /metrics` in Prometheus' text format, behind an admin token on the
//! API's address, or open on a separate `--metrics-addr` meant for a private network.
//!
//! Counters and histograms are recorded where things happen (the `metrics` crate's macros:
//! webhooks here, rows in the worker, projections in the projector, calls to Stripe in the
//! Stripe client); gauges that describe the store or the answers are read when a scrape asks
//! ([`render`]), so an idle server costs nothing. Names follow Prometheus' conventions:
//! `subledger_…_total` for counters, base units (`_seconds`, `_bytes`). The README lists them.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use subledger_engine::Engine;

use crate::auth::Admin;
use crate::error::ApiError;
use crate::{AppState, READINESS_BOUND};

/// Bucket bounds (seconds) of request latency: an entitlement check takes microseconds, a
/// webhook's acknowledgement milliseconds.
const HTTP_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Bucket bounds (seconds) from a fact's recording to its being in the answers.
const PROJECTION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Whether a metric counts up, goes up and down, or counts observations in buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric Subledger exports, with its kind and what it means (Prometheus' `# HELP`). The
/// README's table, the alert rules and the Grafana dashboard name only these (tested).
pub const METRICS: &[(&str, Kind, &str)] = &[
    ("subledger_webhooks_received_total", Kind::Counter, "Webhook deliveries by outcome (accepted, duplicate, rejected) and, for a rejection, its reason (the error code answered)."),
    ("subledger_inbox_pending", Kind::Gauge, "Stripe events stored and not applied yet."),
    ("subledger_inbox_failing", Kind::Gauge, "Pending events whose last attempt failed (retried with backoff)."),
    ("subledger_inbox_oldest_pending_age_seconds", Kind::Gauge, "How long the oldest pending event has waited since it was acknowledged (0 when none waits)."),
    ("subledger_inbox_rows_total", Kind::Counter, "Inbox rows handled by this process's workers, by outcome: applied, ignored, failed (an attempt that will be retried)."),
    ("subledger_events_quarantined", Kind::Gauge, "Events the projector cannot decode, set aside (their customers' answers miss them)."),
    ("subledger_log_head_position", Kind::Gauge, "The newest event's position in the event log."),
    ("subledger_projection_position", Kind::Gauge, "The log position this process's answers reflect."),
    ("subledger_projection_lag_events", Kind::Gauge, "Events in the log that this process's answers do not reflect yet."),
    ("subledger_ack_to_projection_seconds", Kind::Histogram, "From an event's recording (a webhook's acknowledgement) to its being in this process's answers."),
    ("subledger_customers", Kind::Gauge, "Customers by the most serious dunning state of their subscriptions (ok, past_due, suspended, ended)."),
    ("subledger_payments_failed_total", Kind::Counter, "Payments Stripe reported failed, by kind: invoice (a subscription's) or order (a one-off PaymentIntent)."),
    ("subledger_disputes_opened_total", Kind::Counter, "Disputes recorded for the first time."),
    ("subledger_disputes_open", Kind::Gauge, "Disputes that wait for an outcome."),
    ("subledger_stripe_requests_total", Kind::Counter, "Requests to Stripe's API, by client (api, reader), outcome and error class (card, invalid_request, authentication, permission, not_found, idempotency, rate_limit, unavailable, unexpected)."),
    ("subledger_http_requests_total", Kind::Counter, "HTTP requests answered, by route pattern, method and status."),
    ("subledger_http_request_duration_seconds", Kind::Histogram, "How long HTTP requests took to answer, by route pattern and method."),
    ("subledger_store_up", Kind::Gauge, "1 when the store answered the last scrape's questions in time, else 0."),
    ("process_cpu_seconds_total", Kind::Gauge, "CPU time the process has used (user and system), in seconds."),
    ("process_resident_memory_bytes", Kind::Gauge, "Resident memory of the process."),
    ("process_open_fds", Kind::Gauge, "Open file descriptors of the process."),
    ("process_start_time_seconds", Kind::Gauge, "When the process started, in seconds since the epoch."),
];

/// A method as a label: the ones this API answers, else `other` (a label set must stay small).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::PUT => "PUT",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// The header a request id travels in, both ways.
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Makes this process record metrics (once; later calls return the same handle). `None` when
/// another recorder was installed first: `/metrics` then says so instead of lying with zeros.
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let built = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("subledger_http_request_duration_seconds".to_owned()),
                    HTTP_BUCKETS,
                )
                .and_then(|builder| {
                    builder.set_buckets_for_metric(
                        Matcher::Full("subledger_ack_to_projection_seconds".to_owned()),
                        PROJECTION_BUCKETS,
                    )
                })
                .map(PrometheusBuilder::build_recorder);
            let recorder = match built {
                Ok(recorder) => recorder,
                Err(error) => {
                    tracing::error!(%error, "metrics recorder cannot be built");
                    return None;
                }
            };
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => {
                    for &(name, kind, help) in METRICS {
                        match kind {
                            Kind::Counter => metrics::describe_counter!(name, help),
                            Kind::Gauge => metrics::describe_gauge!(name, help),
                            Kind::Histogram => metrics::describe_histogram!(name, help),
                        }
                    }
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "another metrics recorder is installed: /metrics is off");
                    None
                }
            }
        })
        .as_ref()
}

/// The metrics now, in Prometheus' text format: the recorded ones, and the gauges read from
/// the store (bounded, as `/readyz`), the answers and the process.
pub async fn render(engine: &Engine) -> Result<String, ApiError> {
    let handle = install().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process",
        )
    })?;
    match engine.readiness(READINESS_BOUND).await {
        Ok(ready) => {
            metrics::gauge!("subledger_store_up").set(1.0);
            metrics::gauge!("subledger_inbox_pending").set(count(ready.pending));
            metrics::gauge!("subledger_inbox_failing").set(count(ready.failing));
            metrics::gauge!("subledger_inbox_oldest_pending_age_seconds").set(
                ready
                    .oldest_pending_age
                    .map_or(0.0, |age| age.as_secs_f64()),
            );
            metrics::gauge!("subledger_log_head_position").set(count(ready.log_head));
            metrics::gauge!("subledger_projection_lag_events").set(count(ready.projection_lag));
            metrics::gauge!("subledger_events_quarantined").set(count(ready.quarantined));
        }
        Err(error) => {
            tracing::warn!(%error, "metrics: the store did not answer");
            metrics::gauge!("subledger_store_up").set(0.0);
        }
    }
    metrics::gauge!("subledger_projection_position").set(count(engine.projected_position()));
    let census = engine.census();
    for state in [
        subledger_engine::domain::dunning::DunningState::Ok,
        subledger_engine::domain::dunning::DunningState::PastDue,
        subledger_engine::domain::dunning::DunningState::Suspended,
        subledger_engine::domain::dunning::DunningState::Ended,
    ] {
        let customers = census.by_dunning_state.get(&state).copied().unwrap_or(0);
        metrics::gauge!("subledger_customers", "dunning_state" => state.as_str())
            .set(count(customers));
    }
    metrics::gauge!("subledger_disputes_open").set(count(census.open_disputes));
    record_process();
    Ok(handle.render())
}

/// A count as a gauge's value: exact up to 2^53, far beyond any count here.
#[allow(clippy::cast_precision_loss)]
fn count<N: TryInto<i64>>(n: N) -> f64 {
    n.try_into().unwrap_or(i64::MAX) as f64
}

/// Process facts under their conventional names (`process_*`), read from `/proc` on Linux:
/// resident memory, open file descriptors, CPU time, start time. Elsewhere they are absent.
fn record_process() {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return;
    };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let Some(fields) = stat.rsplit_once(") ").map(|(_, rest)| rest) else {
        return;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let field = |n: usize| fields.get(n).and_then(|f| f.parse::<u64>().ok());
    // proc(5): utime 14, stime 15, starttime 22, rss 24, counted from field 3 (`state`).
    let ticks = 100.0; // USER_HZ on every Linux Subledger ships for
    if let (Some(user), Some(system)) = (field(11), field(12)) {
        metrics::gauge!("process_cpu_seconds_total").set(count(user + system) / ticks);
    }
    if let Some(pages) = field(21) {
        metrics::gauge!("process_resident_memory_bytes").set(count(pages.saturating_mul(4096)));
    }
    if let (Some(started), Some(boot)) = (field(19), boot_time()) {
        metrics::gauge!("process_start_time_seconds").set(count(boot) + count(started) / ticks);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metrics::gauge!("process_open_fds").set(count(fds.count()));
    }
}

/// When the machine booted (seconds since the epoch), from `/proc/stat`'s `btime`.
fn boot_time() -> Option<u64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// `GET /metrics` on the API's address: an operator route, behind an admin token.
pub(crate) async fn scrape(Admin(state): Admin) -> Result<Response, ApiError> {
    exposition(&state.engine).await
}

/// `GET /metrics` on `--metrics-addr`: open, for a scraper on a private network.
pub(crate) async fn open_scrape(State(state): State<AppState>) -> Result<Response, ApiError> {
    exposition(&state.engine).await
}

async fn exposition(engine: &Engine) -> Result<Response, ApiError> {
    let text = render(engine).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Counts every request and times it, by the route that matched (its pattern, so ids do not
/// become labels), method and status, and writes the access log line. A request carries a
/// request id: the caller's `X-Request-Id` when it is a sane one, else a new one (except for a
/// read that came without one), given to the handler (a webhook's correlation id, followed
/// through the worker and the projection) and sent back in the answer.
pub(crate) async fn record_request(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    // A read the caller gave no id is not given one: entitlement checks come thousands a
    // second, and a fresh id costs more than the check.
    let request_id = (request.method() != axum::http::Method::GET
        || request.headers().contains_key(REQUEST_ID))
    .then(|| crate::webhooks::correlation_id(request.headers()));
    let id_header = request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok());
    if let Some(value) = &id_header {
        request.headers_mut().insert(REQUEST_ID, value.clone());
    }
    let request_id = request_id.unwrap_or_default();
    let mut response = next.run(request).await;
    if let Some(value) = id_header {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    let elapsed = started.elapsed();
    let status = response.status();
    // Entitlement checks come thousands a second: a successful read is logged at debug
    // (`RUST_LOG=info,subledger::access=debug` shows them), everything else at info.
    let routine = method == "GET" && route.starts_with("/v1/") && status.is_success();
    let status_label = status.as_str().to_owned();
    if routine {
        tracing::debug!(target: "subledger::access", request_id = %request_id, method = %method, route = %route, status = status.as_u16(), latency_ms = elapsed.as_secs_f64() * 1000.0, "request");
    } else {
        tracing::info!(target: "subledger::access", request_id = %request_id, method = %method, route = %route, status = status.as_u16(), latency_ms = elapsed.as_secs_f64() * 1000.0, "request");
    }
    metrics::histogram!(
        "subledger_http_request_duration_seconds",
        "route" => route.clone(),
        "method" => method
    )
    .record(elapsed.as_secs_f64());
    metrics::counter!(
        "subledger_http_requests_total",
        "route" => route,
        "method" => method,
        "status" => status_label
    )
    .increment(1);
    response
}
