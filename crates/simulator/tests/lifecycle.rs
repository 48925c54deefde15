//! The simulator emits Stripe's event sequences and moves subscriptions through Stripe's
//! lifecycle as its clock advances.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use subledger_simulator::model::Interval;
use subledger_simulator::{
    RetryPolicy, SimError, Simulator, SubscriptionStatus, WhenRetriesRunOut,
};

fn start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-31T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn simulator(card: &str, policy: RetryPolicy) -> Simulator {
    let mut sim = Simulator::new(start(), policy);
    sim.create_price(
        "price_pro",
        2000,
        "usd",
        Interval::Month,
        Some("pro_monthly"),
    )
    .unwrap();
    sim.create_customer("cus_a", BTreeMap::new()).unwrap();
    sim.attach_card("cus_a", card).unwrap();
    sim.take_new_events();
    sim
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn status(sim: &Simulator) -> SubscriptionStatus {
    sim.subscription("sub_a").unwrap().status
}

#[test]
fn a_successful_signup_emits_stripes_sequence_in_one_second() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    let events = sim.take_new_events();
    assert_eq!(
        types(&events),
        [
            "customer.subscription.created",
            "invoice.created",
            "invoice.finalized",
            "payment_intent.created",
            "charge.succeeded",
            "payment_intent.succeeded",
            "invoice.paid",
            "invoice.payment_succeeded",
            "invoice_payment.paid",
            "customer.subscription.updated",
        ]
    );
    assert!(events.iter().all(|e| e["created"] == events[0]["created"]));
    assert_eq!(events[0]["data"]["object"]["status"], "incomplete");
    let updated = &events[9]["data"];
    assert_eq!(updated["object"]["status"], "active");
    assert_eq!(updated["previous_attributes"]["status"], "incomplete");
    // The shape is Stripe's current one: periods on the items.
    assert!(updated["object"]["items"]["data"][0]["current_period_end"].is_i64());
    assert_eq!(
        updated["object"]["items"]["data"][0]["price"]["lookup_key"],
        "pro_monthly"
    );
    assert_eq!(status(&sim), SubscriptionStatus::Active);
}

#[test]
fn a_declined_first_payment_leaves_the_subscription_incomplete_until_it_expires() {
    for card in [
        "pm_card_chargeDeclined",
        "pm_card_chargeDeclinedInsufficientFunds",
        "pm_card_chargeDeclinedExpiredCard",
    ] {
        let mut sim = simulator(card, RetryPolicy::default());
        sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
            .unwrap();
        let events = sim.take_new_events();
        let failed = events
            .iter()
            .find(|e| e["type"] == "payment_intent.payment_failed")
            .unwrap();
        assert!(
            failed["data"]["object"]["last_payment_error"]["decline_code"].is_string(),
            "{card}"
        );
        assert_eq!(status(&sim), SubscriptionStatus::Incomplete, "{card}");
        sim.advance_by(Duration::hours(22)).unwrap();
        assert_eq!(status(&sim), SubscriptionStatus::Incomplete, "{card}");
        sim.advance_by(Duration::hours(2)).unwrap();
        assert_eq!(
            status(&sim),
            SubscriptionStatus::IncompleteExpired,
            "{card}"
        );
        let invoice = sim.invoices_of("sub_a")[0];
        assert_eq!(invoice.status.as_str(), "void");
    }
}

#[test]
fn three_d_secure_waits_for_the_customer() {
    let mut sim = simulator("pm_card_authenticationRequired", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    assert!(types(&sim.take_new_events()).contains(&"invoice.payment_action_required"));
    assert_eq!(status(&sim), SubscriptionStatus::Incomplete);
    sim.complete_3ds("sub_a").unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);
    assert!(matches!(
        sim.complete_3ds("sub_a"),
        Err(SimError::Invalid(_))
    ));
}

#[test]
fn out_of_range_trials_and_clock_advances_are_refused() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    assert!(matches!(
        sim.subscribe("cus_a", "sub_a", "price_pro", 1, Some(731)),
        Err(SimError::Invalid(_))
    ));
    assert!(matches!(
        sim.advance_by(Duration::MAX),
        Err(SimError::Invalid(_))
    ));
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, Some(730))
        .unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Trialing);
}

#[test]
fn renewals_follow_the_anchor_without_drifting() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    sim.advance_by(Duration::days(365)).unwrap();
    let invoices = sim.invoices_of("sub_a");
    assert_eq!(invoices.len(), 13, "the signup and twelve renewals");
    assert!(invoices.iter().all(|i| i.status.as_str() == "paid"));
    // Anchored on Jan 31: Feb 28, then Mar 31 again, not Mar 28.
    assert_eq!(
        invoices[1].period_start.to_rfc3339(),
        "2026-02-28T12:00:00+00:00"
    );
    assert_eq!(
        invoices[2].period_start.to_rfc3339(),
        "2026-03-31T12:00:00+00:00"
    );
}

#[test]
fn failed_renewals_are_retried_then_the_policy_decides() {
    for (policy, ended) in [
        (WhenRetriesRunOut::Cancel, SubscriptionStatus::Canceled),
        (WhenRetriesRunOut::MarkUnpaid, SubscriptionStatus::Unpaid),
        (WhenRetriesRunOut::LeavePastDue, SubscriptionStatus::PastDue),
    ] {
        let mut sim = simulator(
            "pm_card_visa",
            RetryPolicy {
                retry_after_days: vec![3, 7, 14, 21],
                when_exhausted: policy,
            },
        );
        sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
            .unwrap();
        sim.attach_card("cus_a", "pm_card_chargeCustomerFail")
            .unwrap();
        sim.advance_to(
            DateTime::parse_from_rfc3339("2026-02-28T12:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        )
        .unwrap();
        assert_eq!(status(&sim), SubscriptionStatus::PastDue);
        let renewal = sim.invoices_of("sub_a")[1].clone();
        assert_eq!(renewal.attempt_count, 1);
        assert_eq!(
            renewal.next_payment_attempt,
            Some(renewal.created + Duration::days(3))
        );
        sim.advance_by(Duration::days(20)).unwrap();
        assert_eq!(sim.invoices_of("sub_a")[1].attempt_count, 4);
        assert_eq!(status(&sim), SubscriptionStatus::PastDue);
        sim.advance_by(Duration::days(1)).unwrap();
        assert_eq!(sim.invoices_of("sub_a")[1].attempt_count, 5);
        assert_eq!(status(&sim), ended, "{policy:?}");
    }
}

#[test]
fn a_retry_that_succeeds_recovers_the_subscription() {
    let mut sim = simulator("pm_card_chargeCustomerFail", RetryPolicy::default());
    sim.attach_card("cus_a", "pm_card_visa").unwrap();
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    sim.attach_card("cus_a", "pm_card_chargeCustomerFail")
        .unwrap();
    sim.advance_by(Duration::days(29)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::PastDue);
    sim.attach_card("cus_a", "pm_card_visa").unwrap();
    sim.advance_by(Duration::days(3)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);
    assert_eq!(sim.invoices_of("sub_a")[1].status.as_str(), "paid");
}

#[test]
fn a_trial_ends_active_with_a_card_and_paused_without_one() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, Some(14))
        .unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Trialing);
    sim.take_new_events();
    sim.advance_by(Duration::days(11)).unwrap();
    assert!(types(&sim.take_new_events()).contains(&"customer.subscription.trial_will_end"));
    sim.advance_by(Duration::days(3)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);

    let mut sim = Simulator::new(start(), RetryPolicy::default());
    sim.create_price("price_pro", 2000, "usd", Interval::Month, None)
        .unwrap();
    sim.create_customer("cus_a", BTreeMap::new()).unwrap();
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, Some(7))
        .unwrap();
    sim.advance_by(Duration::days(7)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Paused);
}

#[test]
fn cancel_at_period_end_can_be_undone_and_otherwise_ends_the_subscription() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    sim.cancel_at_period_end("sub_a").unwrap();
    sim.undo_cancel("sub_a").unwrap();
    sim.advance_by(Duration::days(40)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);
    sim.cancel_at_period_end("sub_a").unwrap();
    sim.take_new_events();
    sim.advance_by(Duration::days(40)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Canceled);
    assert!(types(&sim.take_new_events()).contains(&"customer.subscription.deleted"));
    assert!(matches!(
        sim.advance_by(Duration::days(-1)),
        Err(SimError::ClockBackwards { .. })
    ));
}

#[test]
fn the_same_calls_give_the_same_events() {
    let run = || {
        let mut sim = simulator("pm_card_visa", RetryPolicy::default());
        sim.subscribe("cus_a", "sub_a", "price_pro", 2, Some(3))
            .unwrap();
        sim.advance_by(Duration::days(100)).unwrap();
        sim.events().to_vec()
    };
    assert_eq!(run(), run());
}

#[test]
fn entitlement_summaries_follow_subscriptions_except_when_a_trial_ends_paused() {
    let mut sim = Simulator::new(start(), RetryPolicy::default());
    sim.create_price("price_pro", 2000, "usd", Interval::Month, None)
        .unwrap();
    sim.set_price_features("price_pro", vec!["priority_support".to_owned()])
        .unwrap();
    sim.create_customer("cus_a", BTreeMap::new()).unwrap();
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, Some(7))
        .unwrap();
    let events = sim.take_new_events();
    let summary = events
        .iter()
        .find(|e| e["type"] == "entitlements.active_entitlement_summary.updated")
        .expect("a summary when the trial starts");
    assert_eq!(summary["data"]["object"]["customer"], "cus_a");
    assert_eq!(
        summary["data"]["object"]["entitlements"]["data"][0]["lookup_key"],
        "priority_support"
    );
    sim.advance_by(Duration::days(7)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Paused);
    // Stripe's reported gap: no summary update for a trial that ends paused.
    assert!(
        !types(&sim.take_new_events()).contains(&"entitlements.active_entitlement_summary.updated")
    );
}

#[test]
fn deleting_a_customer_cancels_its_subscriptions_first_and_only_once() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    sim.take_new_events();
    sim.delete_customer("cus_a").unwrap();
    let events = sim.take_new_events();
    assert_eq!(
        types(&events),
        ["customer.subscription.deleted", "customer.deleted"]
    );
    assert_eq!(status(&sim), SubscriptionStatus::Canceled);
    // The event carries the customer's last state, not the deleted stub.
    assert_eq!(events[1]["data"]["object"]["email"], "cus_a@example.com");
    assert!(matches!(
        sim.delete_customer("cus_a"),
        Err(SimError::NotFound { .. })
    ));
}

/// A customer without a payment method cannot start a paid subscription without a trial:
/// Stripe answers 400 `resource_missing` and creates nothing (STRIPE.md, signup). With a
/// trial it can.
#[test]
fn a_paid_subscription_needs_a_payment_method_unless_it_starts_with_a_trial() {
    let mut sim = Simulator::new(start(), RetryPolicy::default());
    sim.create_price("price_pro", 2000, "usd", Interval::Month, None)
        .unwrap();
    sim.create_customer("cus_1", BTreeMap::new()).unwrap();
    let before = sim.events().len();
    assert_eq!(
        sim.subscribe("cus_1", "sub_1", "price_pro", 1, None),
        Err(SimError::NoPaymentMethod("cus_1".to_owned()))
    );
    assert_eq!(
        sim.events().len(),
        before,
        "nothing is created or announced"
    );
    assert!(!sim.has_subscription("sub_1"));
    sim.subscribe("cus_1", "sub_1", "price_pro", 1, Some(7))
        .unwrap();
    assert_eq!(
        sim.subscription("sub_1").unwrap().status,
        SubscriptionStatus::Trialing
    );
}
