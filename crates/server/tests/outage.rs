//! PostgreSQL goes away during ingest: webhooks are answered 503 with a JSON error and nothing
//! partial is stored; once it is back, Stripe's retries land and the background worker and
//! projector carry on by themselves, with no restart and no operator.
//!
//! The outage is a TCP proxy between Subledger and PostgreSQL that, when switched off, cuts
//! every open connection and closes each new one at once: what a stopped server looks like from
//! the client's side, without stopping the machine's PostgreSQL under other tests.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig, Shutdown, WebhookSecret};
use subledger_server::router;
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe::fixtures;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SECRET: &str = "whsec_outage_test";
const CATALOG: &str = "default_plan: free\nplans:\n  free:\n    features: { api_calls: 1000 }\n  pro:\n    prices: [price_pro]\n    features: { sso: true }\n  team:\n    prices: [price_team]\n    features: { sso: true, audit_log: true }\n";

/// A proxy to `target` that can be switched off (`false`) and on again.
async fn switchable_proxy(target: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (switch, up) = watch::channel(true);
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else {
                continue;
            };
            if !*up.borrow() {
                continue; // dropped: closed at once, like a server that is not there
            }
            let mut up = up.clone();
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = up.wait_for(|up| !*up) => {} // both ends dropped: connection cut
                }
            });
        }
    });
    (addr, switch)
}

/// `url` with its host and port replaced by `addr`.
fn through(url: &str, addr: SocketAddr) -> String {
    let scheme_end = url.find("://").unwrap() + 3;
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host_start = rest[..authority_end].rfind('@').map_or(0, |at| at + 1);
    format!(
        "{}{}{addr}{}",
        &url[..scheme_end],
        &rest[..host_start],
        &rest[authority_end..]
    )
}

fn postgres_addr(url: &str) -> SocketAddr {
    let rest = &url[url.find("://").unwrap() + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let host = &authority[authority.rfind('@').map_or(0, |at| at + 1)..];
    let host = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:5432")
    };
    std::net::ToSocketAddrs::to_socket_addrs(&host.replace("localhost", "127.0.0.1"))
        .unwrap()
        .next()
        .unwrap()
}

async fn deliver(app: &Router, event: &Value) -> (StatusCode, Value) {
    use tower::ServiceExt;
    let body = serde_json::to_vec(event).unwrap();
    let header = WebhookSecret::new(SECRET).header(chrono::Utc::now().timestamp(), &body);
    let request = Request::post("/webhooks/stripe")
        .header("stripe-signature", header)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Waits until the customer's plan is `plan` in the live entitlements.
async fn probe(app: &Router, path: &str) -> (StatusCode, Value) {
    use tower::ServiceExt;
    let request = Request::get(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

async fn wait_for_plan(engine: &Engine, customer: &str, plan: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let plans = engine
            .entitlements(customer)
            .and_then(|e| serde_json::from_slice::<Value>(&e.json().ok()?).ok())
            .map(|answer| answer["plans"].clone());
        if plans
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|p| p.iter().any(|p| p == plan))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{customer} never reached {plan}: {plans:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subscription_event(id: &str, kind: &str, created: i64, price: &str) -> Value {
    fixtures::event(
        id,
        kind,
        created,
        fixtures::subscription("sub_1", "cus_1", "active", price),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_during_ingest_means_503_nothing_partial_and_recovery_on_its_own() {
    let Some(test_db) = ScratchDatabase::postgres().await.unwrap() else {
        eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let (proxy, switch) = switchable_proxy(postgres_addr(&test_db.url)).await;
    let mut config = EngineConfig::new(
        through(&test_db.url, proxy),
        Catalog::from_yaml("catalog", CATALOG).unwrap(),
    );
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config.poll_interval = Duration::from_millis(20);
    let engine = Engine::start(config).await.unwrap();
    let (stop, shutdown) = Shutdown::new();
    let worker = engine.spawn_worker(shutdown.clone());
    let projector = engine.spawn_projector(shutdown);
    let app = router(engine.clone(), subledger_server::ApiTokens::none());

    let start = chrono::Utc::now().timestamp() - 100;
    let created = subscription_event("evt_1", "customer.subscription.created", start, "price_pro");
    assert_eq!(deliver(&app, &created).await.0, StatusCode::OK);
    wait_for_plan(&engine, "cus_1", "pro").await;

    // PostgreSQL goes away. A burst arrives meanwhile: every delivery is refused with 503 and
    // a JSON error, so Stripe will retry it.
    switch.send(false).unwrap();
    let burst: Vec<Value> = (0..20)
        .map(|n| {
            let price = if n % 2 == 0 {
                "price_pro"
            } else {
                "price_team"
            };
            let id = format!("evt_change_{n}");
            subscription_event(&id, "customer.subscription.updated", start + 1 + n, price)
        })
        .collect();
    let deliveries: Vec<_> = burst
        .iter()
        .map(|event| {
            let (app, event) = (app.clone(), event.clone());
            tokio::spawn(async move { deliver(&app, &event).await })
        })
        .collect();
    for delivery in deliveries {
        let (status, body) = delivery.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert!(body["message"].is_string(), "{body}");
    }
    // Nothing partial: the store (reached directly) holds the first event only.
    let stats = test_db.database.inbox_stats().await.unwrap();
    assert_eq!(
        stats.pending + stats.processed + stats.ignored,
        1,
        "{stats:?}"
    );
    // The worker and projector keep failing quietly meanwhile; entitlements are still served.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(engine.entitlements("cus_1").is_some());
    // Liveness answers from memory; readiness says the store is gone, within its bound.
    assert_eq!(probe(&app, "/healthz").await.0, StatusCode::OK);
    let asked = Instant::now();
    let (status, ready) = probe(&app, "/readyz").await;
    assert_eq!(
        (status, ready["error"].clone()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!("store_unavailable")
        ),
        "{ready}"
    );
    assert!(asked.elapsed() <= subledger_server::READINESS_BOUND + Duration::from_secs(1));

    // PostgreSQL is back: Stripe's retries land, and the worker and projector (never restarted)
    // apply them.
    switch.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending: Vec<&Value> = burst.iter().collect();
    while !pending.is_empty() {
        assert!(Instant::now() < deadline, "retries still refused");
        let mut refused = Vec::new();
        for event in pending {
            match deliver(&app, event).await.0 {
                StatusCode::OK => {}
                StatusCode::SERVICE_UNAVAILABLE => refused.push(event),
                other => panic!("a retry was answered {other}"),
            }
        }
        pending = refused;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every event stored once and applied; the last change (n = 19: team) wins.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = test_db.database.inbox_stats().await.unwrap();
        if stats.pending == 0 {
            assert_eq!(stats.processed + stats.ignored, 21, "{stats:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never applied: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for_plan(&engine, "cus_1", "team").await;
    // Ready again, with nothing pending and the answers at the log's head.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, ready) = probe(&app, "/readyz").await;
        if status == StatusCode::OK && ready["projection"]["lag_events"] == 0 {
            assert_eq!(ready["inbox"]["pending"], 0, "{ready}");
            assert!(
                ready["inbox"]["oldest_pending_age_seconds"].is_null(),
                "{ready}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {status} {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let live = serde_json::to_string(&engine.current_views().await).unwrap();
    let rebuilt = serde_json::to_string(&engine.rebuild_views().await.unwrap()).unwrap();
    assert_eq!(live, rebuilt);

    stop.send(true).unwrap();
    worker.await.unwrap();
    projector.await.unwrap();
    engine.close().await;
    test_db.cleanup().await.unwrap();
}

/// An inbox insert that hangs (here: the table locked by another session) gets its webhook a
/// 503 within the store timeout, instead of holding every delivery behind it; once the lock is
/// gone, deliveries are stored again.
#[tokio::test]
async fn a_hung_insert_is_answered_503_within_the_store_timeout() {
    let Some(test_db) = ScratchDatabase::postgres().await.unwrap() else {
        eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let mut config = EngineConfig::new(
        &test_db.url,
        Catalog::from_yaml("catalog", CATALOG).unwrap(),
    );
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config.store_timeout = Duration::from_millis(300);
    let engine = Engine::start(config).await.unwrap();
    let app = router(engine.clone(), subledger_server::ApiTokens::none());
    let subledger_store::Database::Postgres(pool) = &test_db.database else {
        panic!("a PostgreSQL scratch database is PostgreSQL");
    };
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE inbox IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let sent = Instant::now();
    let deliveries: Vec<_> = (0..3)
        .map(|n| {
            let event = subscription_event(
                &format!("evt_hung_{n}"),
                "customer.subscription.created",
                now,
                "price_pro",
            );
            let app = app.clone();
            tokio::spawn(async move { deliver(&app, &event).await })
        })
        .collect();
    for delivery in deliveries {
        let (status, body) = delivery.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    locker.rollback().await.unwrap();
    let event = subscription_event(
        "evt_after",
        "customer.subscription.created",
        now,
        "price_pro",
    );
    assert_eq!(deliver(&app, &event).await.0, StatusCode::OK);
    engine.close().await;

    // PostgreSQL itself cancels a statement that runs past the timeout (migrations, which ran
    // above, are exempt).
    let timed =
        subledger_store::Database::connect_with(&test_db.url, Some(Duration::from_millis(200)))
            .await
            .unwrap();
    let subledger_store::Database::Postgres(timed_pool) = &timed else {
        panic!("connected to PostgreSQL");
    };
    let started = Instant::now();
    let slept = sqlx::query("SELECT pg_sleep(5)").execute(timed_pool).await;
    let error = slept.expect_err("pg_sleep(5) ran to its end").to_string();
    assert!(error.contains("statement timeout"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    timed.close().await;
    test_db.cleanup().await.unwrap();
}
