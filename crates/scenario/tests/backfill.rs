//! Backfill against the simulated Stripe's REST API over HTTP: an account whose history was
//! never delivered to Subledger is read through the read key and must then answer, customer
//! by customer, exactly as an engine that received every webhook of the same story.
//!
//! `SUBLEDGER_BACKFILL_CUSTOMERS` sets the account's size (default 60; the README's figures
//! come from 2,000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use subledger_domain::catalog::Catalog;
use subledger_engine::clock::ManualClock;
use subledger_engine::{BackfillOptions, Basis, Engine, EngineConfig, WebhookSecret};
use subledger_simulator::api::{router as stripe_router, Account, SharedAccount};
use subledger_simulator::delivery::{Deliverer, DeliveryMode, Target};
use subledger_simulator::model::Interval;
use subledger_simulator::{RetryPolicy, Simulator};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe_client::{ApiKey, ReadPolicy, StripeReader};
use tokio::net::TcpListener;

const SECRET: &str = "whsec_backfill_test";

fn catalog() -> Catalog {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios/catalogs/standard.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    Catalog::from_yaml(&path.display().to_string(), &text).unwrap()
}

fn customers() -> usize {
    std::env::var("SUBLEDGER_BACKFILL_CUSTOMERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(60)
}

/// A year of an account's life: customers on three plans, some cancelling at period end,
/// some whose card starts failing (dunning at every stage by the end: in grace, suspended,
/// canceled after the retries), some paying one-off orders.
fn a_year_of_history(customers: usize) -> Simulator {
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
                sim.create_order(&format!("order_{i}"), &id, 4_500, "usd")
                    .unwrap();
            }
        }
        // Some cards start failing, some customers leave.
        for i in (0..customers).filter(|i| i % 12 < month) {
            let id = format!("cus_{i:05}");
            if i % 7 == 3 && month == (i % 12) + 2 {
                sim.attach_card(&id, "pm_card_chargeCustomerFail").unwrap();
            }
            if i % 10 == 6 && month == (i % 12) + 3 {
                sim.cancel_at_period_end(&format!("sub_{i:05}")).unwrap();
            }
        }
        sim.advance_by(chrono::Duration::days(30)).unwrap();
    }
    sim
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The same story, every webhook delivered in order to a fresh engine.
async fn webhook_fed(story: &Simulator) -> (Arc<Engine>, ScratchDatabase) {
    let scratch = ScratchDatabase::sqlite().await.unwrap();
    let mut config = EngineConfig::new(scratch.url.clone(), catalog());
    config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
    let engine = Engine::start(config).await.unwrap();
    let router = subledger_server::router(Arc::clone(&engine), Vec::new());
    let mut deliverer = Deliverer::new(
        DeliveryMode::InOrder,
        0,
        WebhookSecret::new(SECRET),
        Target::Router(router),
    );
    deliverer.enqueue(story.events().to_vec());
    deliverer.deliver(true).await.unwrap();
    engine.drain().await.unwrap();
    (engine, scratch)
}

/// The story's account served over HTTP, none of its events ever delivered; a fresh engine
/// whose clock is the account's, and a reader for it.
async fn never_delivered(
    story: &Simulator,
    scratch: &ScratchDatabase,
) -> (Arc<Engine>, StripeReader, SharedAccount) {
    let mut account = Account::with_default_clock(story.clone(), RetryPolicy::default(), None);
    account.mark_all_undelivered();
    let account = account.shared();
    let base = format!(
        "http://{}/",
        serve(stripe_router(Arc::clone(&account))).await
    );
    let reader = StripeReader::new(
        &ApiKey::new("rk_test_backfill"),
        Some(&base),
        ReadPolicy {
            max_requests_per_second: 2_000,
            first_backoff: Duration::from_millis(50),
            ..ReadPolicy::default()
        },
    )
    .unwrap();
    let mut config = EngineConfig::new(scratch.url.clone(), catalog());
    config.clock = Arc::new(ManualClock::new(story.now()));
    let engine = Engine::start(config).await.unwrap();
    (engine, reader, account)
}

/// Every customer's answer at `at` from both engines, side by side where they differ.
async fn differences(a: &Engine, b: &Engine, story: &Simulator) -> Vec<String> {
    let mut differences = Vec::new();
    for customer in story.customers() {
        let mut answers = Vec::new();
        for engine in [a, b] {
            let answer = engine
                .entitlements_at(&customer.id, story.now(), Basis::Effective)
                .await
                .unwrap();
            answers.push(serde_json::to_string(&answer).unwrap());
        }
        let (fed, backfilled) = (&answers[0], &answers[1]);
        if fed != backfilled {
            differences.push(format!(
                "{}:\n  webhooks: {fed}\n  backfill: {backfilled}",
                customer.id
            ));
        }
    }
    differences
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfilled_account_answers_as_if_every_webhook_had_arrived() {
    let n = customers();
    let story = a_year_of_history(n);
    let (fed, fed_db) = webhook_fed(&story).await;
    let scratch = ScratchDatabase::sqlite().await.unwrap();
    let (engine, reader, _account) = never_delivered(&story, &scratch).await;

    let started = Instant::now();
    let mut pages = 0;
    let summary = engine
        .backfill(&reader, &BackfillOptions::default(), &mut |_| pages += 1)
        .await
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "backfill of {n} customers ({} events of history): {} objects read, {} facts recorded, \
         {} undelivered events applied, {} requests, {:.2} s",
        story.events().len(),
        summary.objects_read,
        summary.facts_recorded,
        summary.events_enqueued,
        summary.requests,
        elapsed.as_secs_f64()
    );
    assert!(!summary.resumed);
    assert!(pages > 0);
    assert!(
        summary.events_enqueued > 0,
        "the last 30 days' events are applied too"
    );
    let differences = differences(&fed, &engine, &story).await;
    assert!(
        differences.is_empty(),
        "{} of {n} customers answer differently:\n{}",
        differences.len(),
        differences.join("\n")
    );

    // Safe to re-run: nothing is recorded twice.
    let again = engine
        .backfill(&reader, &BackfillOptions::default(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(again.facts_recorded, 0, "{again:?}");
    assert_eq!(again.events_enqueued, 0, "{again:?}");
    let _ = (fed_db.cleanup().await, scratch.cleanup().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_continues_where_it_stopped_through_rate_limits() {
    let story = a_year_of_history(24);
    let (fed, fed_db) = webhook_fed(&story).await;
    let scratch = ScratchDatabase::sqlite().await.unwrap();
    let (engine, reader, account) = never_delivered(&story, &scratch).await;

    // Interrupted (as by Ctrl-C or a kill) once the subscriptions are being read.
    let (interrupt, mut interrupted) = tokio::sync::watch::channel(false);
    let mut on_progress = |p: &subledger_engine::BackfillProgress| {
        if p.phase == subledger_engine::BackfillPhase::Subscriptions {
            let _ = interrupt.send(true);
        }
    };
    let options = BackfillOptions::default();
    let first = engine.backfill(&reader, &options, &mut on_progress);
    tokio::select! {
        result = first => panic!("the backfill was meant to be interrupted: {result:?}"),
        _ = interrupted.wait_for(|stop| *stop) => {}
    }
    let requests_before = reader.requests_made();

    // Stripe answers 429 (with Retry-After) a few times: waited out, not fatal.
    rate_limit_next(&account, 3).await;
    let second = engine
        .backfill(&reader, &BackfillOptions::default(), &mut |_| {})
        .await
        .unwrap();
    assert!(second.resumed, "{second:?}");
    // The customers list was finished before the interruption and is not read again.
    let fresh_db = ScratchDatabase::sqlite().await.unwrap();
    let (fresh, fresh_reader, _) = never_delivered(&story, &fresh_db).await;
    let full = fresh
        .backfill(&fresh_reader, &BackfillOptions::default(), &mut |_| {})
        .await
        .unwrap();
    let customers = u64::try_from(story.customers().count()).unwrap();
    assert!(
        second.objects_read + customers <= full.objects_read,
        "resumed {second:?}, full {full:?}"
    );
    assert!(reader.requests_made() > requests_before + 3);
    let differences = differences(&fed, &engine, &story).await;
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    let _ = (
        fed_db.cleanup().await,
        scratch.cleanup().await,
        fresh_db.cleanup().await,
    );
}

/// Tells the simulated account to answer the next `requests` with `429`.
async fn rate_limit_next(account: &SharedAccount, requests: u32) {
    let app = stripe_router(Arc::clone(account));
    let request = axum::http::Request::post("/v1/test_helpers/rate_limit")
        .header("authorization", "Bearer sk_test_x")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!("requests={requests}")))
        .unwrap();
    let response = tower::ServiceExt::oneshot(app, request).await.unwrap();
    assert!(response.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stops_with_a_named_problem_and_records_nothing_wrong() {
    let story = a_year_of_history(6);
    let scratch = ScratchDatabase::sqlite().await.unwrap();
    let (engine, reader, account) = never_delivered(&story, &scratch).await;
    let unknown = BackfillOptions {
        customers: vec!["cus_nobody".to_owned()],
        since: None,
    };
    let error = engine
        .backfill(&reader, &unknown, &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, subledger_engine::BackfillError::UnknownCustomer(ref id) if id == "cus_nobody"),
        "{error}"
    );

    // A key Stripe refuses: stopped at the first answer, not retried.
    let base = format!(
        "http://{}/",
        serve(stripe_router(Arc::clone(&account))).await
    );
    let refused = StripeReader::new(
        &ApiKey::new("rk_live_refused"),
        Some(&base),
        ReadPolicy::default(),
    )
    .unwrap();
    let error = engine
        .backfill(&refused, &BackfillOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("refused the API key"), "{error}");
    assert_eq!(refused.requests_made(), 1);

    // Stripe unreachable: retried, then stopped with the list it was reading.
    let base = "http://127.0.0.1:9/".to_owned();
    let unreachable = StripeReader::new(
        &ApiKey::new("rk_test_x"),
        Some(&base),
        ReadPolicy {
            max_attempts: 2,
            first_backoff: Duration::from_millis(10),
            ..ReadPolicy::default()
        },
    )
    .unwrap();
    let error = engine
        .backfill(&unreachable, &BackfillOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(error.to_string().contains("customers list"), "{error}");

    // One customer only: that customer's facts, nobody else's.
    let one = BackfillOptions {
        customers: vec!["cus_00001".to_owned()],
        since: None,
    };
    engine.backfill(&reader, &one, &mut |_| {}).await.unwrap();
    assert!(engine.entitlements("cus_00001").is_some());
    assert!(engine.entitlements("cus_00002").is_none());
    let _ = scratch.cleanup().await;
}
