//! Two `subledger worker` processes against one PostgreSQL: every stored event is applied
//! exactly once, and each customer's events in Stripe's order (one worker at a time per
//! customer), whatever the two claim.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig, WebhookSecret};
use subledger_store::scratch::ScratchDatabase;
use subledger_store::Origin;
use subledger_stripe::fixtures;

const CATALOG: &str = "default_plan: free\nplans:\n  free:\n    features: { api_calls: 1000 }\n  pro:\n    prices: [price_pro]\n    features: { sso: true }\n  team:\n    prices: [price_team]\n    features: { sso: true, audit_log: true }\n";

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_apply_every_event_exactly_once() {
    let Some(test_db) = ScratchDatabase::postgres().await.unwrap() else {
        eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let catalog_path =
        std::env::temp_dir().join(format!("subledger-catalog-{}.yaml", std::process::id()));
    std::fs::write(&catalog_path, CATALOG).unwrap();

    // Ingest through an engine whose own worker does not run: the processes do the work.
    let mut config = EngineConfig::new(
        &test_db.url,
        Catalog::from_yaml("catalog", CATALOG).unwrap(),
    );
    config.webhook_secrets = vec![WebhookSecret::new("whsec_processes")];
    let engine = Engine::start(config).await.unwrap();
    const CUSTOMERS: usize = 2;
    const CHANGES: usize = 30;
    let start = chrono::Utc::now().timestamp() - 10_000;
    let mut events = Vec::new();
    for change in 0..CHANGES {
        for customer in 0..CUSTOMERS {
            let price = if change % 2 == 0 {
                "price_pro"
            } else {
                "price_team"
            };
            let offset = i64::try_from(change * 10).unwrap();
            let event_type = if change == 0 {
                "customer.subscription.created"
            } else {
                "customer.subscription.updated"
            };
            let mut subscription = fixtures::subscription(
                &format!("sub_{customer}"),
                &format!("cus_{customer}"),
                "active",
                price,
            );
            subscription["metadata"] = json!({ "change": change });
            events.push(fixtures::event(
                &format!("evt_{customer}_{change}"),
                event_type,
                start + offset,
                subscription,
            ));
        }
    }
    // Delivered newest first: the workers must still end on each subscription's last change.
    events.reverse();
    for event in &events {
        let body = serde_json::to_vec(event).unwrap();
        let header =
            WebhookSecret::new("whsec_processes").header(chrono::Utc::now().timestamp(), &body);
        engine
            .receive_webhook(Some(&header), &body, "processes")
            .await
            .unwrap();
    }

    let spawn = || {
        Worker(
            Command::new(env!("CARGO_BIN_EXE_subledger"))
                .args(["worker", "--catalog"])
                .arg(&catalog_path)
                .args(["--database-url", &test_db.url, "--poll-interval-ms", "20"])
                // Small batches: the two workers take turns within each customer's history.
                .args(["--worker-batch-size", "1"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let workers = [spawn(), spawn()];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = engine.inbox_stats().await.unwrap();
        if stats.pending == 0 {
            assert_eq!(stats.processed, i64::try_from(CUSTOMERS * CHANGES).unwrap());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not finish: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(workers);

    // Per-customer order: each customer's changes were applied one after the other in Stripe's
    // order. Had two workers raced on one customer, an older change applied after a newer one
    // would have been judged stale and left out of the history.
    for customer in 0..CUSTOMERS {
        let log = test_db
            .database
            .events_of("Customer", &format!("cus_{customer}"))
            .await
            .unwrap();
        let created: Vec<i64> = log
            .iter()
            .map(|event| match event.metadata().unwrap().origin {
                Origin::Webhook { created, .. } => created,
                other => panic!("not from a webhook: {other:?}"),
            })
            .collect();
        assert_eq!(created.len(), CHANGES, "cus_{customer}: {created:?}");
        assert!(
            created.windows(2).all(|pair| pair[0] < pair[1]),
            "cus_{customer} applied out of Stripe's order: {created:?}"
        );
    }

    engine.drain().await.unwrap();
    let views = engine.rebuild_views().await.unwrap();
    assert_eq!(views.len(), CUSTOMERS);
    for view in &views {
        let subscription = view.subscriptions.values().next().unwrap();
        // The last change (odd: team) wins, whatever order the two processes applied them in.
        assert_eq!(
            subscription.items[0].price_id.as_str(),
            "price_team",
            "{}",
            view.customer_id
        );
    }
    engine.close().await;
    std::fs::remove_file(&catalog_path).unwrap();
    test_db.cleanup().await.unwrap();
}
