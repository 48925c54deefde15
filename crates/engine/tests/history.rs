//! Operators and history: replaying the log into the read models (and servers following
//! without a restart), verifying saved views against a rebuild, saved views of an older shape,
//! and re-running inbox rows through today's translator. On every backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{at, config, Harness};
use serde_json::json;
use subledger_engine::Engine;
use subledger_store::scratch::ScratchDatabase;
use subledger_store::Database;
use subledger_stripe::fixtures;

async fn execute(db: &Database, sql: &str, binds: &[&str]) {
    match db {
        Database::Sqlite(pool) => {
            let mut query = sqlx::query(sql);
            for bind in binds {
                query = query.bind(*bind);
            }
            query.execute(pool).await.unwrap();
        }
        Database::Postgres(pool) => {
            let mut query = sqlx::query(sql);
            for bind in binds {
                query = query.bind(*bind);
            }
            query.execute(pool).await.unwrap();
        }
    }
}

async fn saved_view(db: &Database, customer: &str) -> String {
    let saved = db.load_billing_views().await.unwrap();
    saved
        .rows
        .into_iter()
        .find(|row| row.key == customer)
        .unwrap()
        .json
}

/// cus_a on pro, cus_b with no subscription (free).
async fn two_customers(h: &Harness) {
    h.deliver(&fixtures::event(
        "evt_a",
        "customer.subscription.created",
        at(0),
        fixtures::subscription("sub_a", "cus_a", "active", "price_pro"),
    ))
    .await
    .unwrap();
    h.deliver_and_apply(&fixtures::event(
        "evt_b",
        "customer.created",
        at(1),
        fixtures::customer("cus_b", json!({})),
    ))
    .await;
}

fn plans(engine: &Engine, customer: &str) -> Vec<String> {
    let answer: serde_json::Value =
        serde_json::from_slice(&engine.entitlements(customer).unwrap().json().unwrap()).unwrap();
    serde_json::from_value(answer["plans"].clone()).unwrap()
}

#[tokio::test]
async fn replay_puts_the_log_back_in_charge_and_running_servers_follow() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let h = Harness::on(test_db).await;
        let name = h.name;
        two_customers(&h).await;
        assert!(
            h.engine.verify_views(&mut |_| {}).await.unwrap().is_empty(),
            "{name}"
        );

        // A saved view damaged behind the engine's back: cus_a saved as if it were cus_b.
        let db = &h.test_db.database;
        let wrong = saved_view(db, "cus_b").await.replace("cus_b", "cus_a");
        execute(
            db,
            "UPDATE billing_views SET view = $1 WHERE customer_id = 'cus_a'",
            &[&wrong],
        )
        .await;
        let differences = h.engine.verify_views(&mut |_| {}).await.unwrap();
        assert_eq!(differences.len(), 1, "{name}: {differences:?}");
        assert_eq!(differences[0].customer, "cus_a");
        assert_eq!(differences[0].saved.as_deref(), Some(wrong.as_str()));

        // A server started now serves what is saved.
        let server = Engine::start(config(&h.test_db.url, &h.clock))
            .await
            .unwrap();
        assert_eq!(plans(&server, "cus_a"), ["free"], "{name}");

        let mut batches = 0;
        let summary = h.engine.replay(&mut |_| batches += 1).await.unwrap();
        assert_eq!(summary.customers, 2, "{name}");
        assert!(batches > 0);
        assert!(
            h.engine.verify_views(&mut |_| {}).await.unwrap().is_empty(),
            "{name}"
        );
        // The running server notices the new generation at its next step, no restart.
        server.project().await.unwrap();
        assert_eq!(plans(&server, "cus_a"), ["pro"], "{name}");
        server.close().await;
        h.cleanup().await;
    }
}

/// An event the projector cannot decode (damaged here; a newer build's shape in a rolling
/// deploy) is quarantined and skipped: every other customer's answers stay current, across a
/// restart too, the quarantine is counted and listed, and a replay decides it again.
#[tokio::test]
async fn an_event_the_projector_cannot_read_is_quarantined_and_blocks_no_one_else() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let h = Harness::on(test_db).await;
        let name = h.name;
        // Both customers' events are appended, not projected yet; then cus_a's is damaged.
        h.deliver(&fixtures::event(
            "evt_a",
            "customer.subscription.created",
            at(0),
            fixtures::subscription("sub_a", "cus_a", "active", "price_pro"),
        ))
        .await
        .unwrap();
        h.deliver(&fixtures::event(
            "evt_b",
            "customer.subscription.created",
            at(1),
            fixtures::subscription("sub_b", "cus_b", "active", "price_pro"),
        ))
        .await
        .unwrap();
        while h.engine.process_inbox().await.unwrap().handled() > 0 {}
        let db = &h.test_db.database;
        execute(
            db,
            "UPDATE events SET payload = '{\"not\":\"an event\"}' WHERE aggregate_id = 'cus_a'",
            &[],
        )
        .await;

        h.engine.drain().await.unwrap();
        assert_eq!(plans(&h.engine, "cus_b"), ["pro"], "{name}");
        let ready = h
            .engine
            .readiness(std::time::Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            (ready.projection_lag, ready.quarantined),
            (0, 1),
            "{name}: {ready:?}"
        );
        let quarantined = h.engine.projection_quarantine().await.unwrap();
        assert_eq!(quarantined.len(), 1, "{name}");
        assert_eq!(quarantined[0].aggregate_id, "cus_a");
        assert!(
            quarantined[0].error.contains("cannot be read"),
            "{quarantined:?}"
        );

        // Later events keep flowing, and a restarted server starts from the saved views.
        h.deliver_and_apply(&fixtures::event(
            "evt_c",
            "customer.subscription.created",
            at(2),
            fixtures::subscription("sub_c", "cus_c", "active", "price_pro"),
        ))
        .await;
        assert_eq!(plans(&h.engine, "cus_c"), ["pro"], "{name}");
        let server = Engine::start(config(&h.test_db.url, &h.clock))
            .await
            .unwrap();
        assert_eq!(plans(&server, "cus_b"), ["pro"], "{name}");
        server.close().await;

        // A replay decides it again: still unreadable, still quarantined, once.
        h.engine.replay(&mut |_| {}).await.unwrap();
        assert_eq!(
            h.engine.projection_quarantine().await.unwrap().len(),
            1,
            "{name}"
        );
        assert_eq!(plans(&h.engine, "cus_c"), ["pro"], "{name}");
        // Repaired (here by hand; in life by the build that reads it), a replay clears it.
        execute(db, "UPDATE events SET payload = (SELECT payload FROM events WHERE aggregate_id = 'cus_b') WHERE aggregate_id = 'cus_a'", &[]).await;
        h.engine.replay(&mut |_| {}).await.unwrap();
        assert!(
            h.engine.projection_quarantine().await.unwrap().is_empty(),
            "{name}"
        );
        h.cleanup().await;
    }
}

#[tokio::test]
async fn saved_views_of_another_version_are_rebuilt_on_start_not_refused() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let h = Harness::on(test_db).await;
        let name = h.name;
        two_customers(&h).await;
        let db = &h.test_db.database;
        // Written by a build whose views had another shape, which this one cannot read.
        execute(db, "UPDATE projector_checkpoints SET view_version = 0", &[]).await;
        execute(
            db,
            "UPDATE billing_views SET view = '{\"shape\":\"old\"}'",
            &[],
        )
        .await;

        let server = Engine::start(config(&h.test_db.url, &h.clock))
            .await
            .unwrap();
        assert_eq!(plans(&server, "cus_a"), ["pro"], "{name}");
        assert_eq!(plans(&server, "cus_b"), ["free"], "{name}");
        let saved = db.load_billing_views().await.unwrap();
        assert_eq!(
            saved.version,
            subledger_engine::projector::BILLING_VIEW_VERSION
        );
        assert!(
            server.verify_views(&mut |_| {}).await.unwrap().is_empty(),
            "{name}"
        );
        server.close().await;
        h.cleanup().await;
    }
}

#[tokio::test]
async fn reprocess_runs_handled_events_through_todays_translator_once() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let h = Harness::on(test_db).await;
        let name = h.name;
        h.deliver(&fixtures::event(
            "evt_sub",
            "customer.subscription.created",
            at(0),
            fixtures::subscription("sub_1", "cus_1", "active", "price_pro"),
        ))
        .await
        .unwrap();
        // As an older version that did not know the event type would have left it.
        let db = &h.test_db.database;
        execute(
            db,
            "UPDATE inbox SET status = 'ignored', outcome = 'unknown to this version' WHERE event_id = 'evt_sub'",
            &[],
        )
        .await;
        h.engine.drain().await.unwrap();
        assert!(h.engine.entitlements("cus_1").is_none(), "{name}");

        // `inbox retry` is for pending rows; an unknown id is reported as such.
        let statuses = h
            .engine
            .retry_inbox(&["evt_sub".to_owned(), "evt_nope".to_owned()])
            .await
            .unwrap();
        assert_eq!(
            statuses,
            [
                ("evt_sub".to_owned(), Some("ignored".to_owned())),
                ("evt_nope".to_owned(), None)
            ]
        );

        let only_invoices = h
            .engine
            .reprocess_inbox(Some("invoice.paid"), None)
            .await
            .unwrap();
        assert_eq!(only_invoices, 0, "{name}");
        assert_eq!(
            h.engine.reprocess_inbox(None, None).await.unwrap(),
            1,
            "{name}"
        );
        h.engine.drain().await.unwrap();
        assert_eq!(plans(&h.engine, "cus_1"), ["pro"], "{name}");
        let timeline = h.engine.timeline("cus_1").await.unwrap().len();

        // Again: idempotent, nothing recorded twice.
        assert_eq!(
            h.engine.reprocess_inbox(None, None).await.unwrap(),
            1,
            "{name}"
        );
        h.engine.drain().await.unwrap();
        assert_eq!(
            h.engine.timeline("cus_1").await.unwrap().len(),
            timeline,
            "{name}"
        );
        let stats = h.engine.inbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.processed), (0, 1), "{name}");
        h.cleanup().await;
    }
}
