//! The catalog in force is recorded in the store: servers sharing it serve one version unless
//! one is told to publish its file, and answers about a moment use the version of that moment.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::DateTime;
use subledger_domain::catalog::Catalog;
use subledger_engine::catalogs::content_version;
use subledger_engine::clock::ManualClock;
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
