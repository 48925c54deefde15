//! The engine end to end below HTTP: signed deliveries in, entitlements out, on every backend.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use common::{at, config, Harness, NowSecs, SECRET, START};
use serde_json::json;
use subledger_engine::clock::ManualClock;
use subledger_engine::{Engine, IngestError, WebhookSecret};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe::fixtures;
use subledger_stripe::SignatureError;

#[tokio::test]
async fn entitlements_follow_a_subscription_through_its_life() {
    for h in Harness::all().await {
        let name = h.name;
        h.deliver_and_apply(&fixtures::event(
            "evt_c1",
            "customer.created",
            at(0),
            fixtures::customer("cus_1", json!({ "user_id": "u_1" })),
        ))
        .await;
        let free = h.entitlements("cus_1");
        assert_eq!(free["plans"], json!(["free"]), "{name}");
        assert_eq!(
            free["features"]["api_calls"],
            json!({ "enabled": true, "limit": 1000 }),
            "{name}"
        );

        h.deliver_and_apply(&fixtures::event(
            "evt_s1",
            "customer.subscription.created",
            at(1),
            fixtures::subscription("sub_1", "cus_1", "active", "price_pro"),
        ))
        .await;
        h.deliver_and_apply(&fixtures::event(
            "evt_i1",
            "invoice.paid",
            at(2),
            fixtures::invoice("in_1", "cus_1", "sub_1", true, 1),
        ))
        .await;
        let pro = h.entitlements("cus_1");
        assert_eq!(pro["plans"], json!(["pro"]), "{name}");
        assert_eq!(
            pro["features"]["sso"],
            json!({ "enabled": true, "limit": null }),
            "{name}"
        );
        assert_eq!(pro["subscriptions"][0]["status"], json!("active"), "{name}");

        h.deliver_and_apply(&fixtures::event(
            "evt_s2",
            "customer.subscription.updated",
            at(100),
            fixtures::subscription("sub_1", "cus_1", "active", "price_team"),
        ))
        .await;
        assert_eq!(
            h.entitlements("cus_1")["features"]["seats"]["limit"],
            json!(50),
            "{name}"
        );

        h.deliver_and_apply(&fixtures::event(
            "evt_s3",
            "customer.subscription.deleted",
            at(200),
            fixtures::subscription("sub_1", "cus_1", "canceled", "price_team"),
        ))
        .await;
        let ended = h.entitlements("cus_1");
        assert_eq!(ended["plans"], json!(["free"]), "{name}");
        assert_eq!(ended["features"]["sso"]["enabled"], json!(false), "{name}");
        assert_eq!(
            ended["subscriptions"][0]["status"],
            json!("canceled"),
            "{name}"
        );
        h.cleanup().await;
    }
}

#[tokio::test]
async fn a_redelivered_event_is_acknowledged_as_a_duplicate_and_applied_once() {
    for h in Harness::all().await {
        let event = fixtures::event(
            "evt_dup",
            "customer.subscription.created",
            at(1),
            fixtures::subscription("sub_1", "cus_1", "active", "price_pro"),
        );
        assert!(!h.deliver(&event).await.unwrap().duplicate, "{}", h.name);
        assert!(h.deliver(&event).await.unwrap().duplicate, "{}", h.name);
        h.engine.drain().await.unwrap();
        assert!(h.deliver(&event).await.unwrap().duplicate, "{}", h.name);
        h.engine.drain().await.unwrap();
        let stats = h.engine.inbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.processed), (0, 1), "{}", h.name);
        assert_eq!(h.engine.rebuild_views().await.unwrap().len(), 1);
        h.cleanup().await;
    }
}

#[tokio::test]
async fn a_bad_signature_or_body_is_refused_and_nothing_is_stored() {
    for h in Harness::all().await {
        let body = serde_json::to_vec(&fixtures::event(
            "evt_x",
            "customer.created",
            at(0),
            fixtures::customer("cus_x", json!({})),
        ))
        .unwrap();
        let now = h.clock.now_secs();
        let wrong = WebhookSecret::new("whsec_wrong").header(now, &body);
        let result = h.engine.receive_webhook(Some(&wrong), &body, "c").await;
        assert!(matches!(
            result,
            Err(IngestError::Signature(SignatureError::NoMatchingSignature))
        ));
        let stale = WebhookSecret::new(SECRET).header(now - 301, &body);
        let result = h.engine.receive_webhook(Some(&stale), &body, "c").await;
        assert!(matches!(
            result,
            Err(IngestError::Signature(
                SignatureError::OutsideTolerance { .. }
            ))
        ));
        let not_event = b"{\"hello\":\"world\"}";
        let signed = WebhookSecret::new(SECRET).header(now, not_event);
        let result = h
            .engine
            .receive_webhook(Some(&signed), not_event, "c")
            .await;
        assert!(matches!(result, Err(IngestError::NotAnEvent(_))));
        // The rotated-out secret still works while it is configured.
        let old = WebhookSecret::new("whsec_old").header(now, &body);
        assert!(h
            .engine
            .receive_webhook(Some(&old), &body, "c")
            .await
            .is_ok());
        assert_eq!(
            h.engine.inbox_stats().await.unwrap().pending,
            1,
            "{}",
            h.name
        );
        h.cleanup().await;
    }
}

#[tokio::test]
async fn a_failing_event_is_retried_with_backoff_and_blocks_no_one_else() {
    for h in Harness::all().await {
        let name = h.name;
        let mut broken = fixtures::subscription("sub_bad", "cus_bad", "active", "price_pro");
        broken["status"] = json!("dormant");
        h.deliver(&fixtures::event(
            "evt_bad",
            "customer.subscription.created",
            at(0),
            broken,
        ))
        .await
        .unwrap();
        h.deliver(&fixtures::event(
            "evt_good",
            "customer.subscription.created",
            at(1),
            fixtures::subscription("sub_ok", "cus_ok", "active", "price_pro"),
        ))
        .await
        .unwrap();
        h.engine.drain().await.unwrap();
        assert_eq!(h.entitlements("cus_ok")["plans"], json!(["pro"]), "{name}");
        assert!(h.engine.entitlements("cus_bad").is_none(), "{name}");
        let stats = h.engine.inbox_stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.failing, stats.processed),
            (1, 1, 1),
            "{name}"
        );

        // An unknown status is a defect of the delivery (or of this build), not an outage: the
        // row says so, and waits a minute rather than a second before its next try.
        let rows = h
            .engine
            .inbox_rows(&subledger_store::InboxFilter {
                limit: 100,
                ..subledger_store::InboxFilter::default()
            })
            .await
            .unwrap();
        let bad = rows.iter().find(|r| r.event_id == "evt_bad").unwrap();
        let error = bad.last_error.as_deref().unwrap_or_default();
        assert!(
            error.starts_with("defect: cannot translate"),
            "{name}: {error}"
        );

        // Not due before its backoff has passed, due after.
        assert_eq!(
            h.engine.process_inbox().await.unwrap().handled(),
            0,
            "{name}"
        );
        h.clock.advance(Duration::seconds(59));
        assert_eq!(
            h.engine.process_inbox().await.unwrap().handled(),
            0,
            "{name}"
        );
        h.clock.advance(Duration::seconds(2));
        assert_eq!(h.engine.process_inbox().await.unwrap().failed, 1, "{name}");
        h.cleanup().await;
    }
}

#[tokio::test]
async fn unknown_event_types_are_recorded_as_ignored() {
    for h in Harness::all().await {
        h.deliver_and_apply(&fixtures::event(
            "evt_plan",
            "plan.created",
            at(0),
            fixtures::resource("plan"),
        ))
        .await;
        let stats = h.engine.inbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.ignored), (0, 1), "{}", h.name);
        h.cleanup().await;
    }
}

#[tokio::test]
async fn projections_rebuilt_from_the_log_equal_the_live_ones_and_survive_restarts() {
    for h in Harness::all().await {
        let name = h.name;
        for (n, (customer, price)) in [
            ("cus_a", "price_pro"),
            ("cus_b", "price_team"),
            ("cus_a", "price_team"),
        ]
        .iter()
        .enumerate()
        {
            let offset = i64::try_from(n).unwrap();
            h.deliver(&fixtures::event(
                &format!("evt_{n}"),
                "customer.subscription.updated",
                at(offset),
                fixtures::subscription(&format!("sub_{customer}"), customer, "active", price),
            ))
            .await
            .unwrap();
        }
        h.engine.drain().await.unwrap();
        let live = h.engine.current_views().await;
        assert_eq!(live.len(), 2, "{name}");
        assert_eq!(h.engine.rebuild_views().await.unwrap(), live, "{name}");

        if name == "postgres" {
            // A second process on the same database starts from the saved views.
            let clock = Arc::new(ManualClock::new(Utc::now()));
            let other = Engine::start(config(&h.test_db.url, &clock)).await.unwrap();
            assert_eq!(other.current_views().await, live);
            assert_eq!(
                other.entitlements("cus_a").unwrap().json().unwrap(),
                h.engine.entitlements("cus_a").unwrap().json().unwrap()
            );
            other.close().await;
        }
        h.cleanup().await;
    }
}

/// Several workers against one PostgreSQL: every row is handled by exactly one of them.
#[tokio::test]
async fn concurrent_workers_on_postgres_never_handle_a_row_twice() {
    let Some(test_db) = ScratchDatabase::postgres().await.unwrap() else {
        eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let first = Harness::on(test_db).await;
    let clock = Arc::new(ManualClock::new(
        DateTime::from_timestamp(START, 0).unwrap(),
    ));
    // Batches smaller than the twelve customers: each worker leaves customers to the other.
    let worker = |batch_size| {
        let mut config = config(&first.test_db.url, &clock);
        config.worker_batch_size = Some(batch_size);
        Engine::start(config)
    };
    let (one, other) = (worker(5).await.unwrap(), worker(7).await.unwrap());

    const EVENTS: usize = 120;
    for n in 0..EVENTS {
        let customer = format!("cus_{}", n % 12);
        let offset = i64::try_from(n).unwrap();
        first
            .deliver(&fixtures::event(
                &format!("evt_{n}"),
                "customer.subscription.created",
                at(offset),
                fixtures::subscription(&format!("sub_{n}"), &customer, "active", "price_pro"),
            ))
            .await
            .unwrap();
    }

    let drain = |engine: Arc<Engine>| async move {
        let mut handled = 0;
        loop {
            let report = engine.process_inbox().await.unwrap();
            if report.handled() == 0 {
                // Nothing to claim: done, or every customer left is leased by the other worker.
                if engine.inbox_stats().await.unwrap().pending == 0 {
                    return handled;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                continue;
            }
            assert_eq!(report.failed, 0);
            handled += report.handled();
        }
    };
    let (a, b) = tokio::join!(drain(one.clone()), drain(other.clone()));
    assert_eq!(
        a + b,
        EVENTS,
        "rows handled twice or not at all ({a} + {b})"
    );
    assert!(a > 0 && b > 0, "both workers took part ({a} + {b})");

    first.engine.project().await.unwrap();
    let views = first.engine.rebuild_views().await.unwrap();
    assert_eq!(views.len(), 12);
    assert_eq!(
        views.iter().map(|v| v.subscriptions.len()).sum::<usize>(),
        EVENTS
    );
    let stats = first.engine.inbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.processed),
        (0, i64::try_from(EVENTS).unwrap())
    );
    one.close().await;
    other.close().await;
    first.cleanup().await;
}

/// A worker and an operator write to one customer at once, from two engines on one
/// PostgreSQL: the optimistic-concurrency conflicts between them are retried, so every Stripe
/// event is applied once, every hold is placed, and the customer's stream has no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_and_an_operator_racing_on_one_customer_lose_nothing() {
    let Some(test_db) = ScratchDatabase::postgres().await.unwrap() else {
        eprintln!("PostgreSQL skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let h = Harness::on(test_db).await;
    let created = fixtures::event(
        "evt_0",
        "customer.subscription.created",
        at(0),
        fixtures::subscription("sub_1", "cus_1", "active", "price_pro"),
    );
    h.deliver_and_apply(&created).await;
    const CHANGES: i64 = 40;
    const HOLDS: usize = 30;
    for n in 1..=CHANGES {
        let price = if n % 2 == 0 {
            "price_pro"
        } else {
            "price_team"
        };
        h.deliver(&fixtures::event(
            &format!("evt_{n}"),
            "customer.subscription.updated",
            at(n),
            fixtures::subscription("sub_1", "cus_1", "active", price),
        ))
        .await
        .unwrap();
    }
    let clock = Arc::new(ManualClock::new(
        DateTime::from_timestamp(START, 0).unwrap(),
    ));
    let mut worker_config = config(&h.test_db.url, &clock);
    worker_config.worker_batch_size = Some(1);
    let worker = Engine::start(worker_config).await.unwrap();
    let operator = h.engine.clone();

    let applying = tokio::spawn({
        let worker = worker.clone();
        async move {
            while worker.inbox_stats().await.unwrap().pending > 0 {
                let report = worker.process_inbox().await.unwrap();
                assert_eq!(report.failed, 0, "a conflict was not retried");
            }
        }
    });
    for n in 0..HOLDS {
        operator
            .place_hold(
                "cus_1",
                subledger_engine::NewHold {
                    hold_id: format!("hold_{n}"),
                    reason: "review".to_owned(),
                    ..subledger_engine::NewHold::default()
                },
                "op",
            )
            .await
            .unwrap_or_else(|e| panic!("hold_{n}: {e}"));
    }
    applying.await.unwrap();

    let log = h
        .test_db
        .database
        .events_of("Customer", "cus_1")
        .await
        .unwrap();
    let sequences: Vec<i64> = log.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=i64::try_from(log.len()).unwrap()).collect::<Vec<_>>()
    );
    let holds = log.iter().filter(|e| e.event_type == "HoldPlaced").count();
    let changes = log
        .iter()
        .filter(|e| e.event_type.starts_with("Subscription"))
        .count();
    assert_eq!(holds, HOLDS);
    assert_eq!(
        changes,
        usize::try_from(CHANGES).unwrap() + 1,
        "each change applied once"
    );
    worker.close().await;
    h.cleanup().await;
}

/// When several customers' metadata name one product user id, one rule picks the customer that
/// answers for it: not deleted first, then the one Stripe first told of most recently, then
/// the greatest id. Whatever order the events arrive in, and (on a shared store) after a
/// restart. A customer whose metadata moves to another user id leaves the first one to the
/// customers still naming it.
#[tokio::test]
async fn a_user_id_several_customers_name_is_answered_by_one_rule_in_any_order() {
    // The customer object's `created` is when Stripe created it; the rule reads that, not
    // when (or in which order) its events arrived.
    let created = |id: &str, user: &str, offset: i64| {
        let mut customer = fixtures::customer(id, json!({ "user_id": user }));
        customer["created"] = json!(at(offset));
        fixtures::event(
            &format!("evt_created_{id}"),
            "customer.created",
            at(offset),
            customer,
        )
    };
    for newest_first in [false, true] {
        for h in Harness::all().await {
            let name = h.name;
            let mut events = vec![created("cus_old", "u1", 0), created("cus_new", "u1", 100)];
            if newest_first {
                events.reverse();
            }
            for event in &events {
                h.deliver(event).await.unwrap();
            }
            h.engine.drain().await.unwrap();
            assert_eq!(
                h.engine.customer_of_user(None, "u1").as_deref(),
                Some("cus_new"),
                "{name}, newest first: {newest_first}"
            );
            if name == "postgres" {
                let clock = Arc::new(ManualClock::new(Utc::now()));
                let other = Engine::start(config(&h.test_db.url, &clock)).await.unwrap();
                assert_eq!(
                    other.customer_of_user(None, "u1").as_deref(),
                    Some("cus_new")
                );
                other.close().await;
            }

            h.deliver_and_apply(&fixtures::event(
                "evt_deleted_new",
                "customer.deleted",
                at(200),
                fixtures::customer("cus_new", json!({ "user_id": "u1" })),
            ))
            .await;
            assert_eq!(
                h.engine.customer_of_user(None, "u1").as_deref(),
                Some("cus_old"),
                "{name}"
            );

            h.deliver_and_apply(&fixtures::event(
                "evt_moved_old",
                "customer.updated",
                at(300),
                fixtures::customer("cus_old", json!({ "user_id": "u2" })),
            ))
            .await;
            assert_eq!(
                h.engine.customer_of_user(None, "u2").as_deref(),
                Some("cus_old"),
                "{name}"
            );
            // Only the deleted customer still names u1: it answers, as the last resort.
            assert_eq!(
                h.engine.customer_of_user(None, "u1").as_deref(),
                Some("cus_new"),
                "{name}"
            );
            h.cleanup().await;
        }
    }
}

/// A deployment serves one of Stripe's modes: events of the other are stored (so a duplicate
/// is still a duplicate), recorded as ignored with the reason, and never applied.
#[tokio::test]
async fn events_of_the_other_mode_are_stored_ignored_and_never_applied() {
    for live in [false, true] {
        let test_db = ScratchDatabase::sqlite().await.unwrap();
        let clock = Arc::new(ManualClock::new(
            DateTime::from_timestamp(START, 0).unwrap(),
        ));
        let mut config = config(&test_db.url, &clock);
        config.livemode = live;
        let engine = Engine::start(config).await.unwrap();
        let event = |id: &str, customer: &str, livemode: bool| {
            let mut event = fixtures::event(
                id,
                "customer.subscription.created",
                at(0),
                fixtures::subscription(&format!("sub_{customer}"), customer, "active", "price_pro"),
            );
            event["livemode"] = json!(livemode);
            event["data"]["object"]["livemode"] = json!(livemode);
            event
        };
        for delivered in [
            event("evt_same_mode", "cus_same", live),
            event("evt_other_mode", "cus_other", !live),
        ] {
            let body = serde_json::to_vec(&delivered).unwrap();
            let header = WebhookSecret::new(SECRET).header(clock.now_secs(), &body);
            engine
                .receive_webhook(Some(&header), &body, "corr")
                .await
                .unwrap();
        }
        let report = engine.process_inbox().await.unwrap();
        assert_eq!((report.applied, report.ignored), (1, 1), "live: {live}");
        engine.drain().await.unwrap();
        assert!(engine.entitlements("cus_same").is_some(), "live: {live}");
        assert!(engine.entitlements("cus_other").is_none(), "live: {live}");
        let ignored = engine
            .inbox_rows(&subledger_store::InboxFilter {
                state: Some(subledger_store::InboxState::Ignored),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(ignored.len(), 1);
        assert_eq!(ignored[0].event_id, "evt_other_mode");
        let reason = ignored[0].outcome.clone().unwrap_or_default();
        assert!(reason.contains("--livemode"), "{reason}");
        engine.close().await;
    }
}
