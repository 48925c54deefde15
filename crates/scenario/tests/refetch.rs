//! Same-second snapshots that Stripe's events cannot order are settled by fetching the
//! subscription (or customer) from Stripe's API (the simulator's REST API, through async-stripe), and what was
//! fetched is recorded as an event: every delivery order ends in Stripe's state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};
use subledger_domain::catalog::Catalog;
use subledger_engine::{Engine, EngineConfig, StripeObjects, WebhookSecret};
use subledger_simulator::api::{router, Account};
use subledger_simulator::RetryPolicy;
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe_client::{ApiKey, StripeApi};
use tokio::net::TcpListener;

const SECRET: &str = "whsec_refetch_test";
const CATALOG: &str = "default_plan: free\nplans:\n  free: {}\n  pro:\n    prices: [price_pro]\n    features: { sso: true }\n";

/// A simulated Stripe over HTTP holding one active subscription whose `cancel_at` is `truth`,
/// of a customer whose `user_id` is `u_truth`.
async fn stripe_with_subscription(truth: i64) -> (StripeApi, Value) {
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let api = serve(Account::new(start, RetryPolicy::default(), None)).await;
    let clock = api
        .create_test_clock("clock", 1_767_225_600, "c")
        .await
        .unwrap();
    let price = api
        .create_price("price", 2900, "usd", false, Some("pro"), "Pro")
        .await
        .unwrap();
    let customer = api
        .create_customer(
            "customer",
            &clock.id,
            HashMap::from([("user_id".to_owned(), "u_truth".to_owned())]),
        )
        .await
        .unwrap();
    api.attach_default_card("card", &customer, "pm_card_visa")
        .await
        .unwrap();
    let subscription = api
        .create_subscription(
            "subscription",
            &customer,
            &price,
            1,
            None,
            "allow_incomplete",
        )
        .await
        .unwrap();
    api.set_cancel_at("cancel", &subscription.id, truth)
        .await
        .unwrap();
    let object = api
        .object("subscriptions", &subscription.id, None)
        .await
        .unwrap();
    (api, object)
}

/// `account` served over loopback HTTP, and a client of it.
async fn serve(account: Account) -> StripeApi {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(account.shared());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    StripeApi::new(
        &ApiKey::new("rk_test_reader"),
        Some(&format!("http://{addr}/")),
        "refetch",
    )
    .unwrap()
}

fn event(id: &str, kind: &str, created: i64, object: &Value, previous: Option<Value>) -> Value {
    let mut data = json!({ "object": object });
    if let Some(previous) = previous {
        data["previous_attributes"] = previous;
    }
    json!({
        "id": id, "object": "event", "type": kind, "created": created,
        "api_version": "2025-03-31.basil", "livemode": false, "data": data,
    })
}

async fn engine(db: &ScratchDatabase, stripe: Option<Arc<dyn StripeObjects>>) -> Arc<Engine> {
    let mut config = EngineConfig::new(db.url.clone(), Catalog::from_yaml("c", CATALOG).unwrap());
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config.stripe_objects = stripe;
    Engine::start(config).await.unwrap()
}

async fn deliver(engine: &Engine, event: &Value) {
    let body = serde_json::to_vec(event).unwrap();
    let header = WebhookSecret::new(SECRET).header(chrono::Utc::now().timestamp(), &body);
    engine
        .receive_webhook(Some(&header), &body, "corr")
        .await
        .unwrap();
    engine.process_inbox().await.unwrap();
}

/// The subscription's creation and two changes in one second five seconds later, each
/// claiming to have moved away from the other's state (a cancellation set and taken back):
/// nothing in the events orders them.
fn tie(object: &Value) -> [Value; 3] {
    let created = object["created"].as_i64().unwrap();
    let (x, second) = (1_772_323_200, created + 5);
    let mut set = object.clone();
    set["cancel_at"] = json!(x);
    let mut unset = object.clone();
    unset["cancel_at"] = Value::Null;
    [
        event(
            "evt_0",
            "customer.subscription.created",
            created,
            &unset,
            None,
        ),
        event(
            "evt_a",
            "customer.subscription.updated",
            second,
            &set,
            Some(json!({ "cancel_at": null })),
        ),
        event(
            "evt_b",
            "customer.subscription.updated",
            second,
            &unset,
            Some(json!({ "cancel_at": x })),
        ),
    ]
}

/// The subscription's `cancel_at` in the engine's billing view.
async fn cancel_at(engine: &Engine, subscription: &str) -> Value {
    let views = serde_json::to_value(engine.current_views().await).unwrap();
    views[0]["subscriptions"][subscription]["cancel_at"].clone()
}

#[tokio::test]
async fn a_tie_the_events_cannot_order_is_settled_by_what_stripe_returns() {
    let truth = 1_769_904_000; // Stripe's state now: cancel on 2026-02-01.
    let (api, object) = stripe_with_subscription(truth).await;
    let id = object["id"].as_str().unwrap().to_owned();
    let customer = object["customer"].as_str().unwrap().to_owned();
    let [start, a, b] = tie(&object);

    let stripe: Arc<dyn StripeObjects> = Arc::new(api);
    for order in [[&a, &b], [&b, &a]] {
        for db in ScratchDatabase::all().await.unwrap() {
            let engine = engine(&db, Some(Arc::clone(&stripe))).await;
            for event in [&start, order[0], order[1], order[0]] {
                deliver(&engine, event).await;
            }
            engine.project().await.unwrap();
            assert_eq!(
                cancel_at(&engine, &id).await,
                json!(chrono::DateTime::from_timestamp(truth, 0).unwrap()),
                "{}",
                db.name
            );
            let stats = engine.inbox_stats().await.unwrap();
            assert_eq!((stats.pending, stats.processed), (0, 3), "{}", db.name);
            // What was fetched is in the log, attributed to the event that needed it.
            let timeline = engine.timeline(&customer).await.unwrap();
            let fetched: Vec<_> = timeline
                .iter()
                .filter(|entry| {
                    serde_json::to_value(&entry.event)
                        .unwrap()
                        .to_string()
                        .contains("\"fetched\":true")
                })
                .collect();
            assert_eq!(fetched.len(), 1, "{}: {timeline:?}", db.name);
            assert_eq!(
                fetched[0].stripe_event_id.as_deref(),
                Some(order[1]["id"].as_str().unwrap())
            );
            engine.close().await;
            db.cleanup().await.unwrap();
        }
    }
}

/// A simulated Stripe over HTTP whose one subscription is a connected account's: the
/// customer lives in `acct_1Shop`, so Stripe finds its objects only with that
/// `Stripe-Account`.
async fn connected_stripe_with_subscription() -> (StripeApi, Value) {
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let mut story = subledger_simulator::Simulator::new(start, RetryPolicy::default());
    story
        .create_price(
            "price_pro",
            2900,
            "usd",
            subledger_simulator::model::Interval::Month,
            None,
        )
        .unwrap();
    story
        .create_customer_in(Some("acct_1Shop"), "cus_shop", Default::default())
        .unwrap();
    story.attach_card("cus_shop", "pm_card_visa").unwrap();
    story
        .subscribe("cus_shop", "sub_shop", "price_pro", 1, None)
        .unwrap();
    let api = serve(Account::with_default_clock(
        story,
        RetryPolicy::default(),
        None,
    ))
    .await;
    let object = api
        .object("subscriptions", "sub_shop", Some("acct_1Shop"))
        .await
        .unwrap();
    (api, object)
}

/// A tie about a connected account's subscription is settled by fetching it in that account
/// (`Stripe-Account`): asked in the platform's name, Stripe answers 404.
#[tokio::test]
async fn a_connected_accounts_tie_is_fetched_with_its_stripe_account() {
    let (api, object) = connected_stripe_with_subscription().await;
    assert!(
        api.object("subscriptions", "sub_shop", None).await.is_err(),
        "the platform must not see a connected account's subscription"
    );
    let with_account = |mut event: Value| {
        event["account"] = json!("acct_1Shop");
        event
    };
    let [start, a, b] = tie(&object).map(with_account);
    let stripe: Arc<dyn StripeObjects> = Arc::new(api);
    let db = ScratchDatabase::sqlite().await.unwrap();
    let engine = engine(&db, Some(stripe)).await;
    for event in [&start, &a, &b] {
        deliver(&engine, event).await;
    }
    engine.project().await.unwrap();
    let stats = engine.inbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.processed), (0, 3));
    // Stripe's state (no cancellation) wins, recorded under the account's customer.
    let timeline = engine.timeline("acct_1Shop/cus_shop").await.unwrap();
    assert!(timeline
        .iter()
        .any(|entry| serde_json::to_value(&entry.event)
            .unwrap()
            .to_string()
            .contains("\"fetched\":true")));
    assert!(engine.timeline("cus_shop").await.unwrap().is_empty());
    let answer = engine.entitlements("acct_1Shop/cus_shop").unwrap();
    assert!(answer.feature("sso").enabled, "a price id selects the plan");
    engine.close().await;
    db.cleanup().await.unwrap();
}

#[tokio::test]
async fn without_a_key_to_fetch_with_the_undecided_event_is_parked_not_dropped() {
    let (_api, object) = stripe_with_subscription(1_769_904_000).await;
    let created = object["created"].as_i64().unwrap();
    let mut set = object.clone();
    set["cancel_at"] = json!(1_772_323_200);
    let mut unset = object.clone();
    unset["cancel_at"] = Value::Null;
    let db = ScratchDatabase::sqlite().await.unwrap();
    let engine = engine(&db, None).await;
    deliver(
        &engine,
        &event(
            "evt_0",
            "customer.subscription.created",
            created,
            &unset,
            None,
        ),
    )
    .await;
    deliver(
        &engine,
        &event(
            "evt_a",
            "customer.subscription.updated",
            created + 5,
            &set,
            Some(json!({ "cancel_at": null })),
        ),
    )
    .await;
    deliver(
        &engine,
        &event(
            "evt_b",
            "customer.subscription.updated",
            created + 5,
            &unset,
            Some(json!({ "cancel_at": 1_772_323_200 })),
        ),
    )
    .await;
    let stats = engine.inbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.failing, stats.processed), (1, 1, 2));
    engine.close().await;
    db.cleanup().await.unwrap();
}

#[tokio::test]
async fn a_customer_details_tie_is_settled_by_what_stripe_returns() {
    let (api, subscription) = stripe_with_subscription(1_769_904_000).await;
    let customer_id = subscription["customer"].as_str().unwrap().to_owned();
    let customer = api.object("customers", &customer_id, None).await.unwrap();
    let created = customer["created"].as_i64().unwrap();
    // A user id set and taken back in one second.
    let mut without = customer.clone();
    without["metadata"] = json!({});
    let mut with = customer.clone();
    with["metadata"] = json!({ "user_id": "u_1" });
    let start = event("evt_c0", "customer.created", created, &without, None);
    let set = event(
        "evt_c1",
        "customer.updated",
        created + 3,
        &with,
        Some(json!({ "metadata": { "user_id": null } })),
    );
    let unset = event(
        "evt_c2",
        "customer.updated",
        created + 3,
        &without,
        Some(json!({ "metadata": { "user_id": "u_1" } })),
    );

    let stripe: Arc<dyn StripeObjects> = Arc::new(api);
    for order in [[&set, &unset], [&unset, &set]] {
        let db = ScratchDatabase::sqlite().await.unwrap();
        let engine = engine(&db, Some(Arc::clone(&stripe))).await;
        for event in [&start, order[0], order[1]] {
            deliver(&engine, event).await;
        }
        engine.project().await.unwrap();
        assert_eq!(
            engine.customer_of_user(None, "u_truth").as_deref(),
            Some(customer_id.as_str())
        );
        assert_eq!(engine.customer_of_user(None, "u_1"), None);
        assert_eq!(engine.inbox_stats().await.unwrap().processed, 3);
        engine.close().await;
        db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn a_stripe_entitlements_tie_is_settled_by_the_active_entitlements_stripe_lists() {
    let (api, subscription) = stripe_with_subscription(1_769_904_000).await;
    let customer = subscription["customer"].as_str().unwrap().to_owned();
    let created = subscription["created"].as_i64().unwrap();
    let summary = |id: &str, second: i64, features: &[&str], previous: Option<&[&str]>| {
        let entries: Vec<Value> = features
            .iter()
            .map(|key| json!({ "object": "entitlements.active_entitlement", "id": format!("ent_{key}"), "lookup_key": key }))
            .collect();
        let object = json!({ "object": "entitlements.active_entitlement_summary", "customer": customer,
            "entitlements": { "object": "list", "data": entries, "has_more": false } });
        let previous = previous.map(|keys| {
            let entries: Vec<Value> = keys
                .iter()
                .map(|key| json!({ "lookup_key": key }))
                .collect();
            json!({ "entitlements": { "data": entries } })
        });
        event(
            id,
            "entitlements.active_entitlement_summary.updated",
            second,
            &object,
            previous,
        )
    };
    // Stripe lists no active entitlement now; the events show sso granted and taken back
    // within one second.
    let first = summary("evt_s0", created, &["audit"], None);
    let granted = summary("evt_s1", created + 2, &["sso"], Some(&[]));
    let revoked = summary("evt_s2", created + 2, &[], Some(&["sso"]));

    let stripe: Arc<dyn StripeObjects> = Arc::new(api);
    for order in [[&granted, &revoked], [&revoked, &granted]] {
        let db = ScratchDatabase::sqlite().await.unwrap();
        let engine = engine(&db, Some(Arc::clone(&stripe))).await;
        for event in [&first, order[0], order[1]] {
            deliver(&engine, event).await;
        }
        engine.project().await.unwrap();
        let views = serde_json::to_value(engine.current_views().await).unwrap();
        assert_eq!(views[0]["stripe_features"], json!([]), "{views}");
        let timeline = engine.timeline(&customer).await.unwrap();
        let fetched = timeline
            .iter()
            .filter(|entry| {
                let event = serde_json::to_value(&entry.event).unwrap();
                event.to_string().contains("\"fetched\":true")
            })
            .count();
        assert_eq!(fetched, 1, "{timeline:?}");
        engine.close().await;
        db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn a_schedule_tie_is_settled_by_the_schedule_stripe_returns() {
    let (api, subscription) = stripe_with_subscription(1_769_904_000).await;
    let subscription_id = subscription["id"].as_str().unwrap().to_owned();
    let team = api
        .create_price("team", 9900, "usd", false, Some("team"), "Team")
        .await
        .unwrap();
    api.change_price_at_period_end("downgrade", &subscription_id, &team)
        .await
        .unwrap();
    let schedules = api.object("subscription_schedules", "", None).await;
    assert!(schedules.is_err(), "an empty id never reaches Stripe");
    let truth = subscription_schedule(&api, &subscription_id).await;
    let created = truth["created"].as_i64().unwrap();
    let with_next = |price: &str| {
        let mut object = truth.clone();
        object["phases"][1]["items"][0]["price"] = json!(price);
        object
    };
    let mut first = truth.clone();
    first["phases"].as_array_mut().unwrap().truncate(1);
    let start = event(
        "evt_h0",
        "subscription_schedule.created",
        created,
        &first,
        None,
    );
    // Two updates in one second that nothing orders.
    let a = event(
        "evt_h1",
        "subscription_schedule.updated",
        created + 1,
        &with_next("price_x"),
        None,
    );
    let b = event(
        "evt_h2",
        "subscription_schedule.updated",
        created + 1,
        &with_next("price_y"),
        None,
    );

    let stripe: Arc<dyn StripeObjects> = Arc::new(api);
    for order in [[&a, &b], [&b, &a]] {
        let db = ScratchDatabase::sqlite().await.unwrap();
        let engine = engine(&db, Some(Arc::clone(&stripe))).await;
        for event in [&start, order[0], order[1]] {
            deliver(&engine, event).await;
        }
        engine.project().await.unwrap();
        let views = serde_json::to_value(engine.current_views().await).unwrap();
        let next = &views[0]["scheduled"][&subscription_id]["items"][0]["price_id"];
        assert_eq!(next, &json!(team), "{views}");
        engine.close().await;
        db.cleanup().await.unwrap();
    }
}

/// The schedule managing `subscription`, as Stripe's API returns it.
async fn subscription_schedule(api: &StripeApi, subscription: &str) -> Value {
    let object = api
        .object("subscriptions", subscription, None)
        .await
        .unwrap();
    let id = object["schedule"]
        .as_str()
        .expect("the subscription has a schedule");
    api.object("subscription_schedules", id, None)
        .await
        .unwrap()
}

/// A Stripe that never answers.
struct Hanging;

impl StripeObjects for Hanging {
    fn retrieve<'a>(
        &'a self,
        _resource: subledger_engine::refetch::StripeResource,
        _id: &'a str,
        _account: Option<&'a str>,
    ) -> subledger_engine::refetch::Fetched<'a> {
        Box::pin(std::future::pending())
    }
}

/// When the fetch that would settle a tie hangs, the worker leaves the row after its bound per
/// row (retried later, with the reason) instead of waiting for ever; the others' rows go on.
#[tokio::test]
async fn a_hung_fetch_is_cut_off_at_the_workers_bound_per_row() {
    let (_, object) = stripe_with_subscription(1_769_904_000).await;
    let [start, a, b] = tie(&object);
    let db = ScratchDatabase::sqlite().await.unwrap();
    let mut config = EngineConfig::new(db.url.clone(), Catalog::from_yaml("c", CATALOG).unwrap());
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    config.stripe_objects = Some(Arc::new(Hanging));
    config.worker_row_timeout = std::time::Duration::from_millis(300);
    let engine = Engine::start(config).await.unwrap();
    let started = std::time::Instant::now();
    let delivered = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        for event in [&start, &a, &b] {
            deliver(&engine, event).await;
        }
    })
    .await;
    assert!(delivered.is_ok(), "the worker waited on a hung fetch");
    let stats = engine.inbox_stats().await.unwrap();
    assert_eq!((stats.failing, stats.processed), (1, 2), "{stats:?}");
    let failing = engine
        .inbox_rows(&subledger_store::InboxFilter {
            state: Some(subledger_store::InboxState::Failing),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let error = failing[0].last_error.clone().unwrap_or_default();
    assert!(error.contains("took longer than"), "{error}");
    eprintln!("cut off after {:?} in all", started.elapsed());
    engine.close().await;
}
