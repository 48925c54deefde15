//! What the engine's integration tests share: an engine on each backend with a manual clock,
//! and signed deliveries.

#![allow(dead_code)]

use std::sync::Arc;

use chrono::DateTime;
use serde_json::Value;
use subledger_domain::catalog::Catalog;
use subledger_engine::clock::ManualClock;
use subledger_engine::{Engine, EngineConfig, IngestError, WebhookSecret};
use subledger_store::scratch::ScratchDatabase;

pub const SECRET: &str = "whsec_engine_test";
pub const START: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

pub const CATALOG: &str = "\
default_plan: free
plans:
  free:
    features: { api_calls: 1000 }
  pro:
    prices: [price_pro]
    features: { sso: true, seats: 10, api_calls: 100000 }
  team:
    prices: [price_team]
    features: { sso: true, seats: 50, api_calls: 500000 }
";

pub struct Harness {
    pub engine: Arc<Engine>,
    pub clock: Arc<ManualClock>,
    pub name: &'static str,
    pub test_db: ScratchDatabase,
}

impl Harness {
    pub async fn all() -> Vec<Harness> {
        let mut harnesses = Vec::new();
        for test_db in ScratchDatabase::all().await.unwrap() {
            harnesses.push(Self::on(test_db).await);
        }
        harnesses
    }

    pub async fn on(test_db: ScratchDatabase) -> Harness {
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(START, 0).unwrap(),
        ));
        let engine = Engine::start(config(&test_db.url, &clock)).await.unwrap();
        Harness {
            engine,
            clock,
            name: test_db.name,
            test_db,
        }
    }

    /// Delivers `event` signed as Stripe signs it, `created` seconds after the start.
    pub async fn deliver(&self, event: &Value) -> Result<subledger_engine::Receipt, IngestError> {
        let body = serde_json::to_vec(event).unwrap();
        let now = self.clock.now_secs();
        let header = WebhookSecret::new(SECRET).header(now, &body);
        self.engine
            .receive_webhook(Some(&header), &body, "corr-test")
            .await
    }

    pub async fn deliver_and_apply(&self, event: &Value) {
        self.deliver(event).await.unwrap();
        self.engine.drain().await.unwrap();
    }

    pub fn entitlements(&self, customer: &str) -> Value {
        let found = self
            .engine
            .entitlements(customer)
            .expect("customer is known");
        serde_json::from_slice(&found.json().unwrap()).unwrap()
    }

    pub async fn cleanup(self) {
        self.engine.close().await;
        self.test_db.cleanup().await.unwrap();
    }
}

pub trait NowSecs {
    fn now_secs(&self) -> i64;
}

impl NowSecs for ManualClock {
    fn now_secs(&self) -> i64 {
        use subledger_engine::clock::Clock;
        self.now().timestamp()
    }
}

pub fn config(url: &str, clock: &Arc<ManualClock>) -> EngineConfig {
    let mut config = EngineConfig::new(url, Catalog::from_yaml("catalog", CATALOG).unwrap());
    config.webhook_secrets = vec![WebhookSecret::new("whsec_old"), WebhookSecret::new(SECRET)];
    config.clock = clock.clone();
    config
}

pub fn at(offset: i64) -> i64 {
    START + offset
}
