//! What the server's router tests share: a server on a scratch store with a small catalog and
//! chosen tokens, signed webhooks, and requests through the router.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig, WebhookSecret};
use subledger_server::{router, ApiToken, ApiTokens};
use subledger_store::scratch::ScratchDatabase;
pub use subledger_stripe::fixtures;

pub const SECRET: &str = "whsec_http_test";

pub const CATALOG: &str = "\
default_plan: free
plans:
  free:
    features: { api_calls: 1000 }
  pro:
    prices: [price_1ProMonthly, pro_monthly]
    features: { sso: true, seats: 10, api_calls: 100000 }
  team:
    prices: [price_team]
    features: { sso: true, seats: 50, api_calls: 500000 }
";

/// The admin token of the servers these tests start.
pub const ADMIN: &str = "sl_admin_test";

/// A server with these read tokens and no admin token: with none at all, reads are open.
pub async fn start(test_db: &ScratchDatabase, read_tokens: &[&str]) -> (Arc<Engine>, Router) {
    start_with(test_db, read_tokens, &[]).await
}

pub async fn start_with(
    test_db: &ScratchDatabase,
    read_tokens: &[&str],
    admin_tokens: &[&str],
) -> (Arc<Engine>, Router) {
    let engine = Engine::start(engine_config(test_db, CATALOG))
        .await
        .unwrap();
    let app = app(&engine, read_tokens, admin_tokens);
    (engine, app)
}

/// What every test server's engine has: `catalog`, the tests' webhook secret and a short poll,
/// for the test to add to.
pub fn engine_config(test_db: &ScratchDatabase, catalog: &str) -> EngineConfig {
    let mut config = EngineConfig::new(
        &test_db.url,
        Catalog::from_yaml("catalog", catalog).unwrap(),
    );
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config.poll_interval = Duration::from_millis(20);
    config
}

/// `engine`'s router with these tokens (none at all: reads are open).
pub fn app(engine: &Arc<Engine>, read_tokens: &[&str], admin_tokens: &[&str]) -> Router {
    let tokens = |texts: &[&str]| {
        texts
            .iter()
            .map(|t| ApiToken::new(&(*t).into()))
            .collect::<Vec<_>>()
    };
    router(
        Arc::clone(engine),
        ApiTokens::new(tokens(read_tokens), tokens(admin_tokens)),
    )
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub fn signed_webhook(event: &Value) -> Request<Body> {
    let body = serde_json::to_vec(event).unwrap();
    let header = WebhookSecret::new(SECRET).header(now(), &body);
    Request::post("/webhooks/stripe")
        .header("stripe-signature", header)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    use tower::ServiceExt;
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&bytes) }));
    (status, body)
}

pub fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

pub fn subscription_event(
    id: &str,
    event_type: &str,
    created: i64,
    status: &str,
    price: &str,
) -> Value {
    fixtures::event(
        id,
        event_type,
        created,
        fixtures::subscription("sub_1", "cus_1", status, price),
    )
}

/// A GET with the admin token.
pub fn admin_get(uri: &str) -> Request<Body> {
    Request::get(uri)
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::empty())
        .unwrap()
}

/// A request with a JSON body and the admin token.
pub fn json_request(method: &str, uri: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(Body::from(body.to_string()))
        .unwrap()
}
