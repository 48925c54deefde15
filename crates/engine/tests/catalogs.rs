//! The catalog in force is recorded in the store: servers sharing it serve one version unless
//! one is told to publish its file, and answers about a moment use the version of that moment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::DateTime;
use subledger_domain::catalog::Catalog;
use subledger_engine::catalogs::content_version;
use subledger_engine::clock::{Clock, ManualClock};
use subledger_engine::{Basis, Engine};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe::fixtures;

use common::*;

/// The tests' catalog with pro's seats changed: a new version.
fn with_pro_seats(seats: u32) -> String {
    CATALOG.replace("seats: 10,", &format!("seats: {seats},"))
}

async fn engine_with(
    url: &str,
    clock: &Arc<ManualClock>,
    text: &str,
    publish: bool,
    by: &str,
) -> Arc<Engine> {
    let mut config = config(url, clock);
    config.catalog = Arc::new(Catalog::from_yaml("catalog.yaml", text).unwrap());
    config.catalog_publish = publish;
    config.catalog_published_by = by.to_owned();
    Engine::start(config).await.unwrap()
}

fn seats(engine: &Engine, customer: &str) -> Option<u64> {
    engine
        .entitlements(customer)
        .unwrap()
        .feature("seats")
        .limit
}

#[tokio::test]
async fn servers_sharing_a_store_serve_the_recorded_catalog_unless_told_to_publish() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let name = test_db.name;
        let url = test_db.url.clone();
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(START, 0).unwrap(),
        ));
        // The first server records its file as the first version.
        let first = engine_with(&url, &clock, CATALOG, false, "first").await;
        let v1 = content_version(CATALOG);
        assert_eq!(first.catalogs().current().version, v1, "{name}");
        let body = serde_json::to_vec(&fixtures::event(
            "evt_1",
            "customer.subscription.created",
            at(-60),
            fixtures::subscription("sub_1", "cus_a", "active", "price_pro"),
        ))
        .unwrap();
        let header = subledger_engine::WebhookSecret::new(SECRET).header(at(0), &body);
        first
            .receive_webhook(Some(&header), &body, "test")
            .await
            .unwrap();
        first.drain().await.unwrap();
        assert_eq!(seats(&first, "cus_a"), Some(10));

        // A server whose file was edited serves the recorded version, not its file.
        let edited = with_pro_seats(20);
        let second = engine_with(&url, &clock, &edited, false, "second").await;
        assert_eq!(second.catalogs().current().version, v1, "{name}");
        assert_eq!(second.catalogs().versions().len(), 1);
        assert_eq!(
            seats(&second, "cus_a"),
            Some(10),
            "{name}: the recorded catalog"
        );
        assert!(first.catalog_outdated().await.unwrap().is_none());

        // Told to publish, an hour later: the file becomes the version in force.
        clock.advance(chrono::Duration::hours(1));
        let third = engine_with(&url, &clock, &edited, true, "third").await;
        let v2 = content_version(&edited);
        let current = third.catalogs().current();
        assert_eq!(
            (current.version.as_str(), current.published_by.as_str()),
            (v2.as_str(), "third"),
            "{name}"
        );
        assert_eq!(seats(&third, "cus_a"), Some(20), "{name}");
        // The servers started before it know they are behind.
        let newer = first.catalog_outdated().await.unwrap().unwrap();
        assert_eq!(newer.version, v2);

        // An answer about a moment uses the version in force then, on either clock.
        let before = DateTime::from_timestamp(at(1800), 0).unwrap();
        for basis in [Basis::Effective, Basis::Known] {
            let then = third
                .entitlements_at("cus_a", before, basis)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(then.feature("seats").limit, Some(10), "{name} {basis:?}");
        }
        let now = DateTime::from_timestamp(at(3600), 0).unwrap();
        let explained = third
            .explain("cus_a", "seats", Some((now, Basis::Effective)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (explained.limit, explained.catalog.version.as_str()),
            (Some(20), v2.as_str())
        );
        let explained = third
            .explain("cus_a", "seats", Some((before, Basis::Effective)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (explained.limit, explained.catalog.version.as_str()),
            (Some(10), v1.as_str())
        );

        // Starting again with the published file changes nothing; nor does a retry to publish.
        let fourth = engine_with(&url, &clock, &edited, true, "fourth").await;
        assert_eq!(fourth.catalogs().versions().len(), 2, "{name}");
        for engine in [first, second, third, fourth] {
            engine.close().await;
        }
        test_db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn a_recorded_catalog_this_build_cannot_read_stops_the_server_by_name() {
    let test_db = ScratchDatabase::sqlite_file().await.unwrap();
    let clock = Arc::new(ManualClock::new(
        DateTime::from_timestamp(START, 0).unwrap(),
    ));
    let first = engine_with(&test_db.url, &clock, CATALOG, false, "first").await;
    first.close().await;
    // A newer build's catalog (a key this build does not know), published directly.
    let newer = format!("{CATALOG}future_key: true\n");
    let published = test_db
        .database
        .publish_catalog(
            1,
            &content_version(&newer),
            "catalog.yaml",
            &newer,
            "a newer build",
            0,
        )
        .await
        .unwrap();
    assert!(published.is_some());
    let mut config = config(&test_db.url, &clock);
    config.catalog = Arc::new(Catalog::from_yaml("catalog.yaml", CATALOG).unwrap());
    let Err(error) = Engine::start(config).await else {
        panic!("a server started on a catalog it cannot read");
    };
    let message = error.to_string();
    assert!(
        message.contains("cannot be read by this build") && message.contains("a newer build"),
        "{message}"
    );
    test_db.cleanup().await.unwrap();
}

/// The tests' catalog with pro's seats changed and whom the change reaches.
fn pro_seats_for(seats: u32, changes_apply_to: &str) -> String {
    CATALOG.replace(
        "    features: { sso: true, seats: 10, api_calls: 100000 }\n",
        &format!(
            "    features: {{ sso: true, seats: {seats}, api_calls: 100000 }}\n    changes_apply_to: {changes_apply_to}\n"
        ),
    )
}

/// Delivers a pro subscription of `customer` that started at `start` (Stripe's `start_date`;
/// none: a fact recorded without it), and applies it.
async fn subscribe(engine: &Engine, clock: &ManualClock, customer: &str, start: Option<i64>) {
    subscribe_to(engine, clock, customer, "price_pro", start).await;
}

/// [`subscribe`] to `price`.
async fn subscribe_to(
    engine: &Engine,
    clock: &ManualClock,
    customer: &str,
    price: &str,
    start: Option<i64>,
) {
    let mut subscription =
        fixtures::subscription(&format!("sub_{customer}"), customer, "active", price);
    match start {
        Some(start) => subscription["start_date"] = serde_json::json!(start),
        None => {
            if let Some(object) = subscription.as_object_mut() {
                object.remove("start_date");
            }
        }
    }
    let body = serde_json::to_vec(&fixtures::event(
        &format!("evt_{customer}"),
        "customer.subscription.created",
        start.unwrap_or(at(0)),
        subscription,
    ))
    .unwrap();
    let header =
        subledger_engine::WebhookSecret::new(SECRET).header(clock.now().timestamp(), &body);
    engine
        .receive_webhook(Some(&header), &body, "test")
        .await
        .unwrap();
    engine.drain().await.unwrap();
}

#[tokio::test]
async fn a_plan_whose_changes_apply_to_new_subscriptions_keeps_existing_ones_on_their_version() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let name = test_db.name;
        let url = test_db.url.clone();
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(START, 0).unwrap(),
        ));
        let v1 = engine_with(&url, &clock, CATALOG, false, "v1").await;
        subscribe(&v1, &clock, "cus_old", Some(at(-60))).await;
        subscribe(&v1, &clock, "cus_unknown_start", None).await;
        assert_eq!(seats(&v1, "cus_old"), Some(10), "{name}");

        // An hour later pro gets 20 seats, for new subscriptions only.
        clock.advance(chrono::Duration::hours(1));
        let v2 = engine_with(
            &url,
            &clock,
            &pro_seats_for(20, "new_subscriptions"),
            true,
            "v2",
        )
        .await;
        subscribe(&v2, &clock, "cus_new", Some(at(3700))).await;
        assert_eq!(seats(&v2, "cus_old"), Some(10), "{name}: grandfathered");
        assert_eq!(seats(&v2, "cus_new"), Some(20), "{name}: started under v2");
        assert_eq!(
            seats(&v2, "cus_unknown_start"),
            Some(20),
            "{name}: a subscription without a known start follows every change"
        );

        // Then 30 seats for everyone: both move.
        clock.advance(chrono::Duration::hours(1));
        let v3 = engine_with(&url, &clock, &pro_seats_for(30, "everyone"), true, "v3").await;
        assert_eq!(seats(&v3, "cus_old"), Some(30), "{name}");
        assert_eq!(seats(&v3, "cus_new"), Some(30), "{name}");

        // Then 40 for new subscriptions only: existing ones keep the 30 they were moved to.
        clock.advance(chrono::Duration::hours(1));
        let v4 = engine_with(
            &url,
            &clock,
            &pro_seats_for(40, "new_subscriptions"),
            true,
            "v4",
        )
        .await;
        subscribe(&v4, &clock, "cus_newest", Some(at(3 * 3600 + 100))).await;
        let now = [("cus_old", 30), ("cus_new", 30), ("cus_newest", 40)];
        for (customer, expected) in now {
            assert_eq!(seats(&v4, customer), Some(expected), "{name} {customer}");
        }

        // The explanation says why the old subscription has 30 seats, not 40.
        let explained = v4.explain("cus_old", "seats", None).await.unwrap().unwrap();
        assert_eq!(explained.limit, Some(30), "{name}");
        let rules: Vec<&str> = explained.reasons.iter().map(|r| r.rule.as_str()).collect();
        assert!(
            rules
                .iter()
                .any(|r| r.contains("apply to new subscriptions only")),
            "{name}: {rules:?}"
        );

        // An answer about a moment under v2 uses v2 and its rule.
        let under_v2 = DateTime::from_timestamp(at(5000), 0).unwrap();
        for (customer, expected) in [("cus_old", 10), ("cus_new", 20)] {
            let then = v4
                .entitlements_at(customer, under_v2, Basis::Effective)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(
                then.feature("seats").limit,
                Some(expected),
                "{name} {customer}"
            );
        }

        // A rebuild from the log gives the same answers.
        v4.replay(&mut |_| {}).await.unwrap();
        for (customer, expected) in now {
            assert_eq!(
                seats(&v4, customer),
                Some(expected),
                "{name} {customer} after replay"
            );
        }
        for engine in [v1, v2, v3, v4] {
            engine.close().await;
        }
        test_db.cleanup().await.unwrap();
    }
}

/// A server that starts answering differently (here: a published catalog that gives pro more
/// seats) records each customer whose answer it changes, with cause `start`, and only those;
/// the next start with the same catalog records nothing. Issue 14: "a catalog change at
/// restart" is in the feed.
#[tokio::test]
async fn a_catalog_change_at_restart_is_recorded_once_for_the_customers_it_changes() {
    for test_db in ScratchDatabase::shared().await.unwrap() {
        let name = test_db.name;
        let url = test_db.url.clone();
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(START, 0).unwrap(),
        ));
        let first = engine_with(&url, &clock, CATALOG, false, "first").await;
        subscribe(&first, &clock, "cus_a", Some(at(-60))).await;
        subscribe_to(&first, &clock, "cus_b", "price_team", Some(at(-60))).await;
        let before = first.last_change().await.unwrap();
        assert!(
            before >= 2,
            "{name}: both customers' first answers are in the feed"
        );
        first.close().await;

        clock.advance(chrono::Duration::hours(1));
        let edited = with_pro_seats(20);
        let second = engine_with(&url, &clock, &edited, true, "second").await;
        assert_eq!(seats(&second, "cus_a"), Some(20), "{name}");
        second.project().await.unwrap();
        let recorded = second.changes_after(before, 100).await.unwrap();
        let causes: Vec<(&str, &str)> = recorded
            .iter()
            .map(|row| (row.customer_id.as_str(), row.cause.as_str()))
            .collect();
        assert_eq!(causes, [("cus_a", "start")], "{name}");
        assert!(
            recorded[0].answer.contains("\"limit\":20"),
            "{name}: {recorded:?}"
        );
        let after = second.last_change().await.unwrap();
        second.close().await;

        let third = engine_with(&url, &clock, &edited, false, "third").await;
        third.project().await.unwrap();
        assert_eq!(third.last_change().await.unwrap(), after, "{name}");
        third.close().await;
        test_db.cleanup().await.unwrap();
    }
}
