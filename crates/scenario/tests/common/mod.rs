//! What the scenario crate's integration tests share: a year of a simulated account's life,
//! the catalog it is sold under, and an engine fed every one of its webhooks.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use subledger_domain::catalog::Catalog;
use subledger_engine::clock::ManualClock;
use subledger_engine::{Engine, EngineConfig, WebhookSecret};
use subledger_simulator::delivery::{Deliverer, DeliveryMode, Target};
use subledger_simulator::model::Interval;
use subledger_simulator::{RetryPolicy, Simulator};
use subledger_store::scratch::ScratchDatabase;
use tokio::net::TcpListener;

pub const SECRET: &str = "whsec_backfill_test";

pub fn catalog() -> Catalog {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/catalogs/standard.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    Catalog::from_yaml(&path.display().to_string(), &text).unwrap()
}

pub fn customers() -> usize {
    std::env::var("SUBLEDGER_BACKFILL_CUSTOMERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60)
}

/// A year of an account's life: customers on three plans, some cancelling at period end,
/// some whose card starts failing (dunning at every stage by the end: in grace, suspended,
/// canceled after the retries), some paying one-off orders.
pub fn a_year_of_history(customers: usize) -> Simulator {
    let start: DateTime<Utc> = "2025-11-03T09:00:00Z".parse().unwrap();
    let mut sim = Simulator::new(start, RetryPolicy::default());
    for (id, amount, key) in [
        ("price_basic", 900, "basic_monthly"),
        ("price_pro", 2900, "pro_monthly"),
        ("price_team", 9900, "team_monthly"),
    ] {
        sim.create_price(id, amount, "usd", Interval::Month, Some(key))
            .unwrap();
    }
    let prices = ["price_basic", "price_pro", "price_team"];
    for month in 0..12usize {
        // New customers join every month.
        for i in (0..customers).filter(|i| i % 12 == month) {
            let id = format!("cus_{i:05}");
            let metadata = BTreeMap::from([("user_id".to_owned(), format!("u_{i}"))]);
            sim.create_customer(&id, metadata).unwrap();
            sim.attach_card(&id, "pm_card_visa").unwrap();
            sim.subscribe(&id, &format!("sub_{i:05}"), prices[i % 3], 1, None)
                .unwrap();
            if i % 9 == 4 {
                sim.create_order(&format!("order_{i}"), &id, 4_500, "usd", None)
                    .unwrap();
            }
        }
        // Some cards start failing, some customers leave.
        for i in (0..customers).filter(|i| i % 12 < month) {
            let id = format!("cus_{i:05}");
            if i % 7 == 3 && month == (i % 12) + 2 {
                sim.attach_card(&id, "pm_card_chargeCustomerFail").unwrap();
            }
            let subscription = format!("sub_{i:05}");
            let ended = sim.subscription(&subscription).unwrap().status.is_ended();
            if i % 10 == 6 && month == (i % 12) + 3 && !ended {
                sim.cancel_at_period_end(&subscription).unwrap();
            }
        }
        sim.advance_by(chrono::Duration::days(30)).unwrap();
    }
    sim
}

pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The same story, every webhook delivered in order to a fresh engine.
pub async fn webhook_fed(story: &Simulator) -> (Arc<Engine>, ScratchDatabase) {
    let scratch = ScratchDatabase::sqlite().await.unwrap();
    (webhook_fed_on(story, &scratch).await, scratch)
}

/// The story's webhooks, in order, to a fresh engine on `scratch`.
pub async fn webhook_fed_on(story: &Simulator, scratch: &ScratchDatabase) -> Arc<Engine> {
    let engine = engine_on(scratch, None).await;
    deliver(&engine, story.events().to_vec()).await;
    engine
}

/// A fresh engine on `scratch` that accepts the tests' signed webhooks; on `clock` when given
/// (signatures are checked against it: keep it at the wall clock while delivering).
pub async fn engine_on(scratch: &ScratchDatabase, clock: Option<Arc<ManualClock>>) -> Arc<Engine> {
    let mut config = EngineConfig::new(scratch.url.clone(), catalog());
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    if let Some(clock) = clock {
        config.clock = clock;
    }
    Engine::start(config).await.unwrap()
}

/// `events`, signed, in order, through the engine's router; then applied.
pub async fn deliver(engine: &Arc<Engine>, events: Vec<serde_json::Value>) {
    let router = subledger_server::router(Arc::clone(engine), subledger_server::ApiTokens::none());
    let mut deliverer = Deliverer::new(
        DeliveryMode::InOrder,
        0,
        WebhookSecret::new(SECRET),
        Target::Router(router),
    );
    deliverer.enqueue(events);
    deliverer.deliver(true).await.unwrap();
    engine.drain().await.unwrap();
}
