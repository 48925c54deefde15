//! Subledger's HTTP surface as an axum [`Router`]: built by [`router`], tested with `oneshot`.
//!
//! - `POST /webhooks/stripe` ([`webhooks`]): verify and enqueue; nothing else.
//! - `GET /v1/customers/{id}/entitlements[/{feature}]` ([`entitlements`]): served from memory;
//!   `?at=` and `?as_known_at=` answer about the past.
//! - `GET /v1/users/{user_id}/entitlements[/{feature}]`: the same, by the product's user id.
//! - `GET /v1/orders/{order_id}` ([`orders`]): one-off payments by the product's order id.
//! - `POST /v1/customers/{id}/holds`, `DELETE …/holds/{hold_id}` ([`holds`]): operators' holds.
//! - `GET /v1/customers/{id}/entitlements/{feature}/explain`: the decision and its reasons.
//! - `GET /v1/customers/{id}/timeline`: the customer's domain events with both clocks.
//! - `GET /v1/changes`, `GET /v1/changes/stream` ([`changes`]): every change of a customer's
//!   entitlements, in order, resumable by cursor; as pages or Server-Sent Events.
//!   `GET /v1/entitlements?customers=…|changed_since=…`: answers in bulk;
//!   `GET /v1/notifications` (admin): the outbound notifications' lanes and attempts.
//! - `GET /healthz` (from memory), `GET /readyz` (the store, bounded); `GET /openapi.json` ([`openapi`]): this API's OpenAPI document.
//! - `GET /metrics` ([`metrics`]): Prometheus metrics, behind an admin token (or open on
//!   `--metrics-addr`, [`metrics_router`]).
//! - Every `/v1` route above has a twin under `/v1/accounts/{account}` for the customers, users
//!   and orders of a Stripe Connect connected account ([`paths`]).
//! - `/dashboard` ([`dashboard`]): the operators' pages, behind an admin token or a session.
//! - [`auth`]: bearer tokens for `/v1`, read and admin; [`error`]: the one JSON error type.

pub mod auth;
pub mod changes;
pub mod dashboard;
pub mod entitlements;
pub mod error;
pub mod grants;
pub mod holds;
pub mod metrics;
pub mod openapi;
pub mod orders;
mod paths;
pub mod serve;
pub mod webhooks;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde_json::json;
use subledger_engine::Engine;

pub use auth::{ApiToken, ApiTokens, Scope};
pub use error::ApiError;
pub use serve::{serve, HttpLimits};

/// The largest webhook body accepted. Stripe's events are far smaller.
pub const MAX_WEBHOOK_BODY: usize = 1024 * 1024;

/// What every handler shares, behind one `Arc`: axum clones the state for each request (the
/// route's service and each extractor that takes it), and one count to raise and lower is
/// cheaper than four when both cores serve requests at once.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub engine: Arc<Engine>,
    pub api_tokens: Arc<ApiTokens>,
    /// The dashboard's signed-in browsers.
    pub sessions: Arc<dashboard::Sessions>,
    /// The change feed's reader shared by every stream of this server.
    pub change_tail: Arc<changes::ChangeTail>,
    /// `Cache-Control` of a prepared answer that stays valid past the engine's answer max age
    /// (nearly all of them), made once rather than formatted per request.
    answer_cache_control: axum::http::HeaderValue,
}

impl AppState {
    fn new(engine: Arc<Engine>, api_tokens: ApiTokens) -> Self {
        let answer_cache_control = entitlements::cache_control(engine.answer_max_age().as_secs());
        Self(Arc::new(Shared {
            engine,
            api_tokens: Arc::new(api_tokens),
            sessions: Arc::default(),
            change_tail: Arc::default(),
            answer_cache_control,
        }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The whole HTTP API. With no `api_tokens` at all, `/v1` reads are open (for local use);
/// writes always need an admin token (see [`auth`]).
pub fn router(engine: Arc<Engine>, api_tokens: ApiTokens) -> Router {
    metrics::install();
    let state = AppState::new(engine, api_tokens);
    // Full paths rather than a nested `/v1` router: nesting rewrites every request's URI.
    // Each `/v1` route serves the platform's own customers and, under
    // `/v1/accounts/{account}`, a connected account's ([`paths`]).
    let v1: [(&str, MethodRouter<AppState>); 11] = [
        (
            "/v1/customers/{customer_id}/entitlements",
            get(entitlements::customer_entitlements),
        ),
        (
            "/v1/customers/{customer_id}/entitlements/{feature}",
            get(entitlements::customer_feature),
        ),
        (
            "/v1/customers/{customer_id}/entitlements/{feature}/explain",
            get(entitlements::explain_feature),
        ),
        (
            "/v1/customers/{customer_id}/timeline",
            get(entitlements::customer_timeline),
        ),
        (
            "/v1/users/{user_id}/entitlements",
            get(entitlements::user_entitlements),
        ),
        (
            "/v1/users/{user_id}/entitlements/{feature}",
            get(entitlements::user_feature),
        ),
        ("/v1/orders/{order_id}", get(orders::order)),
        ("/v1/customers/{customer_id}/holds", post(holds::place)),
        (
            "/v1/customers/{customer_id}/holds/{hold_id}",
            axum::routing::delete(holds::lift),
        ),
        ("/v1/customers/{customer_id}/grants", post(grants::give)),
        (
            "/v1/customers/{customer_id}/grants/{grant_id}",
            axum::routing::delete(grants::revoke),
        ),
    ];
    let routes = v1
        .into_iter()
        .fold(dashboard::routes(), |router, (path, handler)| {
            router
                .route(&paths::connected(path), handler.clone())
                .route(path, handler)
        })
        // The feed covers every account's customers: no per-account twins.
        .route("/v1/changes", get(changes::list))
        .route("/v1/changes/stream", get(changes::stream))
        .route("/v1/entitlements", get(changes::bulk))
        .route("/v1/notifications", get(changes::notifications))
        .route(
            "/webhooks/stripe",
            post(webhooks::receive).layer(DefaultBodyLimit::max(MAX_WEBHOOK_BODY)),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi::document))
        .route("/metrics", get(metrics::scrape))
        .route_layer(axum::middleware::from_fn(metrics::record_request))
        // Unknown routes are counted and logged too (as `unmatched`).
        .fallback(not_found.layer(axum::middleware::from_fn(metrics::record_request)))
        .method_not_allowed_fallback(method_not_allowed);
    contain_panics(routes.with_state(state))
}

/// `GET /metrics` alone, open, for `--metrics-addr`: a scraper on a private network needs no
/// token, and the API's address need not be reachable from it.
pub fn metrics_router(engine: Arc<Engine>) -> Router {
    metrics::install();
    let state = AppState::new(engine, ApiTokens::none());
    Router::new()
        .route("/metrics", get(metrics::open_scrape))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// What a panic said: its message when it carried one (`panic!` with a literal or with
/// formatting), for the logs.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// A panic inside a handler answers that request with a JSON 500 and leaves the process, and
/// every other request, alone. Handlers are written not to panic on any input; this is the
/// line behind that.
pub fn contain_panics(router: Router) -> Router {
    router.layer(tower_http::catch_panic::CatchPanicLayer::custom(
        |panic: Box<dyn std::any::Any + Send + 'static>| {
            tracing::error!(panic = %panic_message(panic.as_ref()), "a request handler panicked");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request could not be answered; the error is logged",
            )
            .into_response()
        },
    ))
}

/// How long `/readyz` waits for the store before it answers 503.
pub const READINESS_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

/// Liveness, from memory: the process is up and serving. It asks the store nothing, so a
/// probe every second costs nothing however large the inbox grows.
async fn healthz(State(state): State<AppState>) -> Response {
    Json(json!({
        "status": "ok",
        "store": format!("{:?}", state.engine.backend()).to_lowercase(),
        "projected_position": state.engine.projected_position(),
    }))
    .into_response()
}

/// Readiness: the store answers within [`READINESS_BOUND`], with how far behind the inbox and
/// this server's answers are. `503` when the store is unreachable or slower than that.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.engine.readiness(READINESS_BOUND).await {
        Ok(ready) => Json(json!({
            "status": "ready",
            "store": format!("{:?}", state.engine.backend()).to_lowercase(),
            "inbox": {
                "pending": ready.pending,
                "oldest_pending_age_seconds": ready.oldest_pending_age.map(|age| age.as_secs_f64()),
            },
            "projection": {
                "log_head": ready.log_head,
                "position": ready.projected,
                "lag_events": ready.projection_lag,
                "quarantined_events": ready.quarantined,
            },
        }))
        .into_response(),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "error": "store_unavailable", "message": error.to_string() })),
            )
                .into_response()
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/dashboard") {
        return dashboard::not_found().await;
    }
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
    )
}
