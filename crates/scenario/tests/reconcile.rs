//! Reconciliation against the simulated Stripe's REST API: a store that missed a stretch of
//! webhooks (the endpoint was off) and never heard of changes Stripe sent no event for is
//! compared with Stripe, every difference classified; `apply` then heals it by appending
//! corrections, after which every customer answers as in the same story with every webhook
//! delivered, and a second run finds nothing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::{a_year_of_history, deliver, engine_on, serve};
use subledger_engine::clock::ManualClock;
use subledger_engine::{Basis, Drift, Engine, ReconcileOptions, ReconcileReport};
use subledger_simulator::api::{router as stripe_router, Account};
use subledger_simulator::{RetryPolicy, Simulator};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe_client::{ApiKey, ReadPolicy, StripeReader};

/// While the endpoint is off: a cancellation, failing cards, and two weeks of renewals.
fn changes_while_webhooks_are_off(sim: &mut Simulator) {
    sim.cancel_now("sub_00002").unwrap();
    sim.attach_card("cus_00008", "pm_card_chargeCustomerFail")
        .unwrap();
    sim.advance_by(chrono::Duration::days(14)).unwrap();
}

/// Changes no event will ever tell.
fn changes_without_events(sim: &mut Simulator) {
    sim.delete_customer("cus_00001").unwrap();
    sim.cancel_at_period_end("sub_00011").unwrap();
    sim.update_customer_metadata(
        "cus_00005",
        [("user_id".to_owned(), "u_5_renamed".to_owned())].into(),
    )
    .unwrap();
}

struct World {
    /// Missed the changes: reconciled.
    drifted: Arc<Engine>,
    /// Heard everything: the reference.
    informed: Arc<Engine>,
    reader: StripeReader,
    at: chrono::DateTime<Utc>,
    customers: Vec<String>,
    /// The webhooks that failed while the endpoint was off, which Stripe keeps retrying.
    late: Vec<serde_json::Value>,
    clock: Arc<ManualClock>,
    _stores: (ScratchDatabase, ScratchDatabase),
}

async fn world() -> World {
    let story = a_year_of_history(24);
    let clock = Arc::new(ManualClock::new(Utc::now()));

    // The reference hears every event, the changes' too.
    let mut told = story.clone();
    changes_while_webhooks_are_off(&mut told);
    changes_without_events(&mut told);
    let informed_db = ScratchDatabase::sqlite().await.unwrap();
    let informed = engine_on(&informed_db, Some(Arc::clone(&clock))).await;
    deliver(&informed, told.events().to_vec()).await;

    // The drifted store heard the story up to the changes, and nothing after.
    let drifted_db = ScratchDatabase::sqlite().await.unwrap();
    let drifted = engine_on(&drifted_db, Some(Arc::clone(&clock))).await;
    deliver(&drifted, story.events().to_vec()).await;
    let mut stripe = story.clone();
    stripe.take_new_events();
    changes_while_webhooks_are_off(&mut stripe);
    let late = stripe.events()[story.events().len()..].to_vec();
    let mut account = Account::with_default_clock(stripe, RetryPolicy::default(), None);
    account.mark_all_undelivered();
    let sim = account.default_simulator_mut().unwrap();
    changes_without_events(sim);
    assert!(sim.forget_new_events() > 0);
    let at = sim.now();
    let customers = sim.customers().map(|c| c.id.clone()).collect();
    let base = format!("http://{}/", serve(stripe_router(account.shared())).await);
    let reader = StripeReader::new(
        &ApiKey::new("rk_test_reconcile"),
        Some(&base),
        ReadPolicy {
            max_requests_per_second: 2_000,
            first_backoff: Duration::from_millis(20),
            ..ReadPolicy::default()
        },
    )
    .unwrap();
    // From here on, both engines live at the account's time.
    clock.set(at);
    World {
        drifted,
        informed,
        reader,
        at,
        customers,
        late,
        clock,
        _stores: (informed_db, drifted_db),
    }
}

fn classes(report: &ReconcileReport) -> BTreeSet<(String, Drift)> {
    report
        .differences
        .iter()
        .map(|d| (d.object.clone(), d.drift))
        .collect()
}

/// `subledger reconcile --apply` on every customer of the drifted store.
async fn reconcile_and_apply(world: &World) -> subledger_engine::reconcile::ReconcileReport {
    world
        .drifted
        .reconcile(
            &world.reader,
            &ReconcileOptions {
                customers: Vec::new(),
                apply: true,
            },
            &mut |_, _| {},
        )
        .await
        .unwrap()
}

async fn differences(world: &World) -> Vec<String> {
    let mut found = Vec::new();
    for customer in &world.customers {
        let mut answers = Vec::new();
        for engine in [&world.drifted, &world.informed] {
            let answer = engine
                .entitlements_at(customer, world.at, Basis::Effective)
                .await
                .unwrap();
            answers.push(serde_json::to_string(&answer).unwrap());
        }
        if answers[0] != answers[1] {
            found.push(format!(
                "{customer}:\n  reconciled: {}\n  informed:   {}",
                answers[0], answers[1]
            ));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_reports_each_drift_and_apply_heals_it_by_appending() {
    let world = world().await;
    let before = differences(&world).await;
    assert!(
        !before.is_empty(),
        "the drifted store should answer differently first"
    );

    let report = world
        .drifted
        .reconcile(&world.reader, &ReconcileOptions::default(), &mut |_, _| {})
        .await
        .unwrap();
    let found = classes(&report);
    for expected in [
        ("cus_00001", Drift::DeletedAtStripe),
        ("sub_00011", Drift::ChangedWithoutEvent),
        ("cus_00005", Drift::ChangedWithoutEvent),
        ("sub_00002", Drift::StaleAtSubledger),
    ] {
        assert!(
            found.contains(&(expected.0.to_owned(), expected.1)),
            "{expected:?} not in {found:?}"
        );
    }
    assert!(
        found.iter().any(|(_, drift)| *drift == Drift::Dunning),
        "the failing card's renewal: {found:?}"
    );
    assert_eq!(report.unresolved(), report.differences.len());
    // The run is kept, and operators see its differences on the dashboard's inbox page.
    let kept = world.drifted.last_reconciliation().await.unwrap().unwrap();
    assert_eq!(kept.run_id, report.run_id);
    assert_eq!(kept.report, serde_json::to_string(&report).unwrap());
    let inbox = inbox_page(&world.drifted).await;
    assert!(
        inbox.contains(&format!(
            "{}, finished {}",
            report.run_id,
            world.at.format("%Y-%m-%d %H:%M UTC")
        )) && inbox.contains(&format!(
            "{} difference(s) with Stripe, 0 corrected",
            report.differences.len()
        )) && inbox.contains("<a href=\"/dashboard/customers/cus_00001\">cus_00001</a>")
            && inbox.contains("deleted at stripe"),
        "{inbox}"
    );
    // Reporting changed nothing.
    assert_eq!(differences(&world).await.len(), before.len());

    let applied = reconcile_and_apply(&world).await;
    assert_eq!(applied.unresolved(), 0, "{:#?}", applied.differences);
    let after = differences(&world).await;
    assert!(after.is_empty(), "{}", after.join("\n"));

    // Corrections are events of their own, attributed and explained.
    let timeline = world.drifted.timeline("sub_00011").await.unwrap();
    assert!(timeline.is_empty(), "timelines are per customer");
    let timeline = world.drifted.timeline("cus_00011").await.unwrap();
    let last = timeline.last().unwrap();
    assert_eq!(last.actor.as_deref(), Some("reconciler"));
    assert_eq!(last.drift.as_deref(), Some("changed_without_event"));
    let explained = world
        .drifted
        .explain("cus_00011", "sso", None)
        .await
        .unwrap()
        .unwrap();
    let explained = serde_json::to_value(&explained).unwrap();
    assert!(
        explained
            .to_string()
            .contains("\"drift\":\"changed_without_event\""),
        "{explained}"
    );

    let again = world
        .drifted
        .reconcile(&world.reader, &ReconcileOptions::default(), &mut |_, _| {})
        .await
        .unwrap();
    assert!(again.differences.is_empty(), "{:#?}", again.differences);
    let inbox = inbox_page(&world.drifted).await;
    assert!(
        inbox.contains(&format!("{}, finished", again.run_id))
            && inbox.contains("0 difference(s) with Stripe")
            && !inbox.contains(&report.run_id),
        "the newest run is shown: {inbox}"
    );
}

/// The dashboard's inbox page, as an operator with an admin token gets it.
async fn inbox_page(engine: &Arc<subledger_engine::Engine>) -> String {
    use tower::ServiceExt;
    const ADMIN: &str = "reconcile-test-admin";
    let app = subledger_server::router(
        Arc::clone(engine),
        subledger_server::ApiTokens::new(
            Vec::new(),
            vec![subledger_server::ApiToken::new(&ADMIN.into())],
        ),
    );
    let request = axum::http::Request::get("/dashboard/inbox")
        .header("authorization", format!("Bearer {ADMIN}"))
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), axum::http::StatusCode::OK);
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let page = String::from_utf8(body.to_vec()).unwrap();
    assert!(page.contains("<title>Inbox · Subledger</title>"), "{page}");
    assert_eq!(page.matches("<h2>Last reconciliation</h2>").count(), 1);
    page
}

/// Stripe keeps retrying the webhooks that failed; they may arrive before, while or after the
/// reconciler runs, in any order. Whatever the interleaving, the store ends where the
/// informed one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconciling_while_late_webhooks_arrive_converges_in_every_interleaving() {
    // (how many of the late webhooks arrive before the reconciler, in halves; the rest after,
    // in reverse order or not)
    for (halves, reversed) in [(0, false), (1, false), (1, true), (2, true)] {
        let world = world().await;
        // Webhooks are verified against the wall clock; answers are asked at the account's.
        let at_wall = |world: &World| world.clock.set(Utc::now());
        let cut = world.late.len() * halves / 2;
        let (before, after) = world.late.split_at(cut);
        at_wall(&world);
        deliver(&world.drifted, before.to_vec()).await;
        world.clock.set(world.at);
        reconcile_and_apply(&world).await;
        let mut after = after.to_vec();
        if reversed {
            after.reverse();
        }
        at_wall(&world);
        deliver(&world.drifted, after).await;
        world.clock.set(world.at);
        let differences = differences(&world).await;
        assert!(
            differences.is_empty(),
            "late webhooks, {halves}/2 before (rest reversed: {reversed}):\n{}",
            differences.join("\n")
        );
    }
}
