//! When Stripe does things: renewals (draft, then an hour later finalized and charged, with
//! `invoice.upcoming` days before), subscription schedules through their last phase, and test
//! clock advances (announced, and at most two intervals at a time).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use subledger_simulator::model::Interval;
use subledger_simulator::{RetryPolicy, SimError, Simulator, SubscriptionStatus};

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// `cus_a` with a good card, `price_pro` (monthly) and `price_basic` (monthly), subscribed to
/// pro as `sub_a`; the signup's events are taken.
fn subscribed() -> Simulator {
    let mut sim = Simulator::new(start(), RetryPolicy::default());
    sim.create_price("price_pro", 2000, "usd", Interval::Month, None)
        .unwrap();
    sim.create_price("price_basic", 900, "usd", Interval::Month, None)
        .unwrap();
    sim.create_customer("cus_a", BTreeMap::new()).unwrap();
    sim.attach_card("cus_a", "pm_card_visa").unwrap();
    sim.subscribe("cus_a", "sub_a", "price_pro", 2, None)
        .unwrap();
    sim.take_new_events();
    sim
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn of_type<'a>(events: &'a [Value], event_type: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["type"] == event_type)
        .unwrap_or_else(|| panic!("no {event_type} in {:?}", types(events)))
}

fn period_end() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-04-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A renewal as Stripe runs it (Stripe's docs, "How subscriptions work" and the invoice
/// lifecycle; `../shared/STRIPE.md`, renewal): `invoice.upcoming` without an id some days
/// before; at the period end the subscription rolls over, announcing its new
/// `latest_invoice`, and a draft invoice is created; about an hour later the draft is
/// finalized and charged.
#[test]
fn a_renewal_is_announced_drafted_then_charged_an_hour_later() {
    let mut sim = subscribed();
    sim.advance_to(period_end() - Duration::days(7)).unwrap();
    let events = sim.take_new_events();
    let upcoming = &of_type(&events, "invoice.upcoming")["data"]["object"];
    assert!(upcoming["id"].is_null(), "an upcoming invoice has no id");
    assert_eq!(upcoming["amount_due"], 4000);
    assert_eq!(upcoming["lines"]["data"][0]["quantity"], 2);
    assert_eq!(
        upcoming["lines"]["data"][0]["pricing"]["price_details"]["price"],
        "price_pro"
    );

    sim.advance_to(period_end()).unwrap();
    let events = sim.take_new_events();
    assert_eq!(
        types(&events),
        [
            "test_helpers.test_clock.advancing",
            "customer.subscription.updated",
            "invoice.created",
            "test_helpers.test_clock.ready",
        ]
    );
    let rolled = of_type(&events, "customer.subscription.updated");
    let draft = &of_type(&events, "invoice.created")["data"]["object"];
    assert_eq!(draft["status"], "draft");
    assert_eq!(rolled["data"]["object"]["latest_invoice"], draft["id"]);
    assert!(rolled["data"]["previous_attributes"]["latest_invoice"].is_string());
    assert!(draft["status_transitions"]["finalized_at"].is_null());

    sim.advance_by(Duration::minutes(59)).unwrap();
    assert!(!types(&sim.take_new_events()).contains(&"invoice.finalized"));
    sim.advance_by(Duration::minutes(1)).unwrap();
    let events = sim.take_new_events();
    let sequence: Vec<&str> = types(&events)
        .into_iter()
        .filter(|t| t.starts_with("invoice"))
        .collect();
    assert_eq!(
        sequence,
        [
            "invoice.finalized",
            "invoice.paid",
            "invoice.payment_succeeded",
            "invoice_payment.paid",
            "invoice.updated"
        ]
    );
    let updated = of_type(&events, "invoice.updated");
    assert_eq!(updated["data"]["previous_attributes"]["status"], "open");
    assert_eq!(updated["data"]["object"]["status"], "paid");
    let paid = &of_type(&events, "invoice.paid")["data"]["object"];
    let charged_at = (period_end() + Duration::hours(1)).timestamp();
    assert_eq!(paid["id"], draft["id"]);
    assert_eq!(paid["status_transitions"]["finalized_at"], charged_at);
    assert_eq!(paid["status_transitions"]["paid_at"], charged_at);
    // Lines match the invoice: one per item, summing to what is due, about this invoice.
    let lines = paid["lines"]["data"].as_array().unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["invoice"], paid["id"]);
    assert_eq!(lines[0]["amount"], paid["amount_due"]);
    assert_eq!(lines[0]["period"]["start"], paid["period_start"]);
    assert_eq!(
        lines[0]["parent"]["subscription_item_details"]["subscription"],
        "sub_a"
    );
}

/// Stripe's docs, "Test clocks": an advance is asynchronous (`advancing`, then `ready`, each
/// with its `test_helpers.test_clock.*` event) and may move at most two intervals of the
/// shortest subscription on the clock.
#[test]
fn a_clock_advance_is_announced_and_limited_to_two_intervals() {
    let mut sim = subscribed();
    let limit = sim.advance_limit().unwrap();
    assert_eq!(limit, start() + Duration::days(31 + 30));
    match sim.advance_to(limit + Duration::seconds(1)) {
        Err(SimError::AdvanceTooFar { limit: said, .. }) => assert_eq!(said, limit),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        sim.take_new_events().is_empty(),
        "a refused advance emits nothing"
    );
    assert_eq!(sim.now(), start());

    sim.advance_to(limit).unwrap();
    let events = sim.take_new_events();
    let advancing = events.first().unwrap();
    assert_eq!(advancing["type"], "test_helpers.test_clock.advancing");
    assert_eq!(advancing["data"]["object"]["status"], "advancing");
    assert_eq!(
        advancing["data"]["object"]["status_details"]["advancing"]["target_frozen_time"],
        limit.timestamp()
    );
    let ready = events.last().unwrap();
    assert_eq!(ready["type"], "test_helpers.test_clock.ready");
    assert_eq!(ready["data"]["object"]["frozen_time"], limit.timestamp());

    // A year is taken in steps a client would make; without a subscription, in one.
    let before = sim.advances();
    sim.advance_through(limit + Duration::days(365)).unwrap();
    assert_eq!(sim.advances() - before, 6);
    sim.cancel_now("sub_a").unwrap();
    assert_eq!(sim.advance_limit(), None);
    sim.advance_by(Duration::days(800)).unwrap();
}

/// Stripe's docs, "Subscription schedules": creating a schedule sends
/// `subscription_schedule.created` and sets the subscription's `schedule`; the schedule stays
/// `active` through its last phase and then completes (`end_behavior: release`), leaving the
/// subscription on the last phase's price; `released` comes only from the release endpoint.
#[test]
fn a_schedule_runs_through_its_last_phase_then_completes() {
    let mut sim = subscribed();
    let schedule = sim.create_schedule("sub_a").unwrap();
    let events = sim.take_new_events();
    assert_eq!(
        types(&events),
        [
            "subscription_schedule.created",
            "customer.subscription.updated"
        ]
    );
    assert_eq!(events[1]["data"]["object"]["schedule"], schedule.as_str());
    assert_eq!(
        events[1]["data"]["previous_attributes"]["schedule"],
        Value::Null
    );
    sim.schedule_change("sub_a", "price_basic", Some(&schedule))
        .unwrap();
    assert_eq!(
        types(&sim.take_new_events()),
        ["subscription_schedule.updated"]
    );

    // The second phase starts: the price changes, the schedule stays active.
    sim.advance_to(period_end() + Duration::hours(1)).unwrap();
    let events = sim.take_new_events();
    assert!(!types(&events)
        .iter()
        .any(|t| t.starts_with("subscription_schedule.")));
    let json = sim.schedule_json(&schedule).unwrap();
    assert_eq!(json["status"], "active");
    assert_eq!(
        json["current_phase"]["start_date"],
        period_end().timestamp()
    );
    let subscription = sim.subscription("sub_a").unwrap();
    assert_eq!(subscription.items[0].price, "price_basic");
    assert_eq!(
        sim.subscription_json("sub_a").unwrap()["schedule"],
        schedule.as_str()
    );

    // The last phase ends: the schedule completes, before the subscription renews.
    let last_end = DateTime::parse_from_rfc3339("2026-05-01T09:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    sim.advance_to(last_end).unwrap();
    let events = sim.take_new_events();
    let order = types(&events);
    let completed = order
        .iter()
        .position(|t| *t == "subscription_schedule.completed")
        .unwrap();
    let renewed = order.iter().position(|t| *t == "invoice.created").unwrap();
    assert!(completed < renewed, "{order:?}");
    assert!(!order.contains(&"subscription_schedule.released"));
    let json = sim.schedule_json(&schedule).unwrap();
    assert_eq!(json["status"], "completed");
    assert_eq!(json["completed_at"], last_end.timestamp());
    assert!(json["subscription"].is_null());
    assert!(sim.subscription_json("sub_a").unwrap()["schedule"].is_null());
    assert_eq!(
        sim.subscription("sub_a").unwrap().items[0].price,
        "price_basic"
    );
    assert!(matches!(
        sim.release_schedule(&schedule),
        Err(SimError::Invalid(_))
    ));
}

/// The release endpoint ends a schedule as `released` and drops the change it had not made
/// yet; cancelling a subscription cancels its schedule (`subscription_schedule.canceled`).
#[test]
fn a_schedule_is_released_only_when_asked_and_canceled_with_its_subscription() {
    let mut sim = subscribed();
    let schedule = sim
        .change_price_at_period_end("sub_a", "price_basic")
        .unwrap();
    sim.take_new_events();
    sim.release_schedule(&schedule).unwrap();
    let events = sim.take_new_events();
    assert_eq!(
        types(&events),
        [
            "subscription_schedule.released",
            "customer.subscription.updated"
        ]
    );
    let released = &events[0]["data"]["object"];
    assert_eq!(released["status"], "released");
    assert_eq!(released["released_subscription"], "sub_a");
    sim.advance_to(period_end() + Duration::hours(1)).unwrap();
    assert_eq!(
        sim.subscription("sub_a").unwrap().items[0].price,
        "price_pro"
    );

    let schedule = sim
        .change_price_at_period_end("sub_a", "price_basic")
        .unwrap();
    sim.take_new_events();
    sim.cancel_now("sub_a").unwrap();
    let events = sim.take_new_events();
    assert_eq!(
        types(&events),
        [
            "subscription_schedule.canceled",
            "customer.subscription.deleted"
        ]
    );
    assert_eq!(sim.schedule_json(&schedule).unwrap()["status"], "canceled");
    assert_eq!(
        sim.subscription("sub_a").unwrap().status,
        SubscriptionStatus::Canceled
    );
}
