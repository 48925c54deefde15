//! Backfill against the simulated Stripe's REST API over HTTP: an account whose history was
//! never delivered to Subledger is read through the read key and must then answer, customer
//! by customer, exactly as an engine that received every webhook of the same story.
//!
//! `SUBLEDGER_BACKFILL_CUSTOMERS` sets the account's size (default 60; the README's figures
//! come from 2,000).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{a_year_of_history, catalog, customers, serve, webhook_fed};
use subledger_engine::{BackfillOptions, Basis, Engine, EngineConfig};
use subledger_simulator::api::{router as stripe_router, Account, SharedAccount};
use subledger_simulator::{RetryPolicy, Simulator};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe_client::{ApiKey, ReadPolicy, StripeReader};

/// The story's account served over HTTP, none of its events ever delivered; a fresh engine
/// and a reader for it.
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
    // The engine lives on the wall clock, the account on its test clock, months behind: what
    // backfill reads is dated by the test clock's frozen time, as Stripe dates its events.
    let config = EngineConfig::new(scratch.url.clone(), catalog());
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
    // A file, as in use: an interrupted query closes its connection, and an in-memory
    // SQLite database lives and dies with its one connection.
    let file = std::env::temp_dir().join(format!("subledger-backfill-{}.db", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let scratch = ScratchDatabase::sqlite_at(&format!("sqlite://{}", file.display()))
        .await
        .unwrap();
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
        ..BackfillOptions::default()
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
    let unreachable = StripeReader::new(
        &ApiKey::new("rk_test_x"),
        Some("http://127.0.0.1:9/"),
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
        ..BackfillOptions::default()
    };
    engine.backfill(&reader, &one, &mut |_| {}).await.unwrap();
    assert!(engine.entitlements("cus_00001").is_some());
    assert!(engine.entitlements("cus_00002").is_none());

    // The store now holds test-mode events: a live key is refused before any request.
    let live = StripeReader::new(
        &ApiKey::new("rk_live_other_mode"),
        Some(&base),
        ReadPolicy::default(),
    )
    .unwrap();
    let error = engine
        .backfill(&live, &BackfillOptions::default(), &mut |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(error, subledger_engine::BackfillError::WrongMode { .. }),
        "{error}"
    );
    assert_eq!(live.requests_made(), 0);
    let _ = scratch.cleanup().await;
}
