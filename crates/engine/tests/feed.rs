//! The entitlement change feed as the projector keeps it, seen from the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use subledger_store::scratch::ScratchDatabase;
use subledger_store::Database;
use subledger_stripe::fixtures;

use common::*;

/// When the feed says `cus_a`'s recorded answer stops holding.
async fn valid_until(db: &Database) -> Option<i64> {
    const SQL: &str =
        "SELECT valid_until_ms FROM entitlement_feed_state WHERE customer_id = 'cus_a'";
    match db {
        Database::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await.unwrap(),
        Database::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await.unwrap(),
    }
}

async fn mark_due(db: &Database) {
    const SQL: &str =
        "UPDATE entitlement_feed_state SET valid_until_ms = 1 WHERE customer_id = 'cus_a'";
    match db {
        Database::Sqlite(pool) => {
            sqlx::query(SQL).execute(pool).await.unwrap();
        }
        Database::Postgres(pool) => {
            sqlx::query(SQL).execute(pool).await.unwrap();
        }
    }
}

/// An idle projector does not ask the store about the feed at every poll: once a look found
/// the feed at its checkpoint with nothing due, the next look waits until the log moves or a
/// few seconds pass. Seen here through a fed answer made due behind the projector's back: it
/// is compared again only after the clock moved on, or at once when an event comes.
#[tokio::test]
async fn an_idle_projector_looks_at_the_feed_again_only_when_something_can_have_changed() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let h = Harness::on(test_db).await;
        let name = h.name;
        let subscribed = fixtures::event(
            "evt_1",
            "customer.subscription.created",
            at(-60),
            fixtures::subscription("sub_1", "cus_a", "active", "price_pro"),
        );
        h.deliver_and_apply(&subscribed).await;
        h.engine.project().await.unwrap();
        assert_eq!(valid_until(&h.test_db.database).await, None, "{name}");

        mark_due(&h.test_db.database).await;
        h.engine.project().await.unwrap();
        assert_eq!(
            valid_until(&h.test_db.database).await,
            Some(1),
            "{name}: a quiet feed is not looked at again at once"
        );
        h.clock.advance(chrono::Duration::seconds(6));
        h.engine.project().await.unwrap();
        assert_eq!(
            valid_until(&h.test_db.database).await,
            None,
            "{name}: after a few seconds the feed is looked at again"
        );

        // An event ends the quiet at once.
        h.engine.project().await.unwrap();
        mark_due(&h.test_db.database).await;
        let upgraded = fixtures::event(
            "evt_2",
            "customer.subscription.updated",
            at(-30),
            fixtures::subscription("sub_1", "cus_a", "active", "price_team"),
        );
        h.deliver_and_apply(&upgraded).await;
        assert_eq!(valid_until(&h.test_db.database).await, None, "{name}");
        let recorded = h.engine.changes_after(0, 10).await.unwrap();
        assert_eq!(recorded.len(), 2, "{name}: {recorded:?}");
        h.cleanup().await;
    }
}

/// The changes this process records reach its readers as recorded: the same rows, numbers
/// and order as the store gives back, a transaction's rows together (several customers in
/// one here), so the change streams need not read back what this process wrote.
#[tokio::test]
async fn recorded_changes_are_handed_on_as_the_store_numbered_them() {
    for h in Harness::all().await {
        let name = h.name;
        let mut recorded = h.engine.recorded_changes();
        for (n, customer) in ["cus_a", "cus_b", "cus_c"].into_iter().enumerate() {
            let event = fixtures::event(
                &format!("evt_{n}"),
                "customer.subscription.created",
                at(-60),
                fixtures::subscription(&format!("sub_{n}"), customer, "active", "price_pro"),
            );
            h.deliver(&event).await.unwrap();
        }
        h.engine.drain().await.unwrap();
        h.engine.project().await.unwrap();
        let upgraded = fixtures::event(
            "evt_9",
            "customer.subscription.updated",
            at(-30),
            fixtures::subscription("sub_1", "cus_b", "active", "price_team"),
        );
        h.deliver_and_apply(&upgraded).await;
        h.engine.project().await.unwrap();

        let mut batches = Vec::new();
        while let Ok(batch) = recorded.try_recv() {
            batches.push(batch);
        }
        let stored = h.engine.changes_after(0, 100).await.unwrap();
        let handed: Vec<_> = batches.iter().flat_map(|b| b.iter().cloned()).collect();
        assert_eq!(handed, stored, "{name}");
        assert!(
            batches.iter().any(|batch| batch.len() == 3),
            "{name}: the three new customers were recorded together: {batches:?}"
        );
        assert_eq!(stored.len(), 4, "{name}: {stored:?}");
        h.cleanup().await;
    }
}
