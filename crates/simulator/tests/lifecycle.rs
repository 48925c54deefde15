//! The simulator emits Stripe's event sequences and moves subscriptions through Stripe's
//! lifecycle as its clock advances.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use subledger_simulator::model::{Interval, MissingPaymentMethod, PaymentBehavior};
use subledger_simulator::{
    RetryPolicy, SimError, Simulator, SubscribeOptions, SubscriptionStatus, WhenRetriesRunOut,
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

/// A customer `cus_a` with no payment method, and `price_pro`.
fn without_a_card() -> Simulator {
    let mut sim = Simulator::new(start(), RetryPolicy::default());
    sim.create_price("price_pro", 2000, "usd", Interval::Month, None)
        .unwrap();
    sim.create_customer("cus_a", BTreeMap::new()).unwrap();
    sim
}

fn types(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["type"].as_str().unwrap()).collect()
}

fn status(sim: &Simulator) -> SubscriptionStatus {
    sim.subscription("sub_a").unwrap().status
}

/// With the default `payment_behavior` (`allow_incomplete`) and a good card the subscription
/// is created `active`, and the payment's events come a second later (STRIPE.md, signup;
/// Stripe's API reference, "Create a subscription", `payment_behavior`).
#[test]
fn a_successful_signup_is_created_active_and_paid_a_second_later() {
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
            "invoice.updated",
        ]
    );
    let second = |i: usize| events[i]["created"].as_i64().unwrap();
    assert!((0..3).all(|i| second(i) == second(0)));
    assert!((3..events.len()).all(|i| second(i) == second(0) + 1));
    let created = &events[0]["data"]["object"];
    assert_eq!(created["status"], "active");
    // The shape is Stripe's current one: periods on the items.
    assert!(created["items"]["data"][0]["current_period_end"].is_i64());
    assert_eq!(
        created["items"]["data"][0]["price"]["lookup_key"],
        "pro_monthly"
    );
    assert_eq!(created["pending_update"], Value::Null);
    assert_eq!(
        created["trial_settings"]["end_behavior"]["missing_payment_method"],
        "create_invoice"
    );
    assert_eq!(status(&sim), SubscriptionStatus::Active);
}

/// The declining test cards are refused when attached (402 `card_declined`), so their story
/// happens when the client confirms the first payment; the expired card fails with `code:
/// expired_card` and no `decline_code` (STRIPE.md, test cards; Stripe's "Testing" docs).
#[test]
fn declining_cards_are_refused_when_attached_and_fail_at_confirmation() {
    for (card, code, decline_code) in [
        (
            "pm_card_chargeDeclined",
            "card_declined",
            Some("generic_decline"),
        ),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "card_declined",
            Some("insufficient_funds"),
        ),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card", None),
    ] {
        let mut sim = without_a_card();
        let before = sim.events().len();
        assert!(
            matches!(sim.attach_card("cus_a", card), Err(SimError::CardDeclined(d)) if d.code == code),
            "{card}"
        );
        assert_eq!(sim.events().len(), before, "{card}: nothing attached");
        let options = SubscribeOptions {
            payment_behavior: PaymentBehavior::DefaultIncomplete,
            ..SubscribeOptions::default()
        };
        sim.subscribe_with("cus_a", "sub_a", "price_pro", 1, options)
            .unwrap();
        let events = sim.take_new_events();
        assert!(!types(&events).iter().any(|t| t.starts_with("charge.")));
        assert_eq!(status(&sim), SubscriptionStatus::Incomplete, "{card}");
        sim.confirm_payment("sub_a", card).unwrap();
        let events = sim.take_new_events();
        let failed = events
            .iter()
            .find(|e| e["type"] == "payment_intent.payment_failed")
            .unwrap();
        let error = &failed["data"]["object"]["last_payment_error"];
        assert_eq!(error["code"], code, "{card}");
        assert_eq!(error["decline_code"].as_str(), decline_code, "{card}");
        assert!(types(&events).contains(&"invoice.payment_failed"));
        assert!(!types(&events).contains(&"payment_method.attached"));
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

/// `default_incomplete` attempts nothing until the client confirms; `error_if_incomplete`
/// answers 402 and creates nothing (API reference, `payment_behavior`).
#[test]
fn payment_behaviors_as_stripe_documents_them() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    let options = SubscribeOptions {
        payment_behavior: PaymentBehavior::DefaultIncomplete,
        ..SubscribeOptions::default()
    };
    sim.subscribe_with("cus_a", "sub_a", "price_pro", 1, options)
        .unwrap();
    let events = sim.take_new_events();
    assert_eq!(
        types(&events),
        [
            "customer.subscription.created",
            "invoice.created",
            "invoice.finalized",
            "payment_intent.created",
        ]
    );
    assert_eq!(events[0]["data"]["object"]["status"], "incomplete");
    sim.confirm_payment("sub_a", "pm_card_visa").unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);

    // A card that needs 3-D Secure: the confirmation waits for the challenge, and the card is
    // saved as the default once it is passed.
    let mut sim = without_a_card();
    sim.subscribe_with("cus_a", "sub_a", "price_pro", 1, options)
        .unwrap();
    sim.confirm_payment("sub_a", "pm_card_authenticationRequiredOnSetup")
        .unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Incomplete);
    assert_eq!(sim.customer("cus_a").unwrap().default_payment_method, None);
    sim.complete_3ds("sub_a").unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);
    assert!(sim
        .customer("cus_a")
        .unwrap()
        .default_payment_method
        .is_some());

    for (card, refusal) in [
        ("pm_card_chargeCustomerFail", "your card was declined"),
        ("pm_card_authenticationRequired", "requires authentication"),
    ] {
        let mut sim = simulator(card, RetryPolicy::default());
        let options = SubscribeOptions {
            payment_behavior: PaymentBehavior::ErrorIfIncomplete,
            ..SubscribeOptions::default()
        };
        let error = sim
            .subscribe_with("cus_a", "sub_a", "price_pro", 1, options)
            .unwrap_err();
        assert!(
            error.to_string().to_lowercase().contains(refusal),
            "{error}"
        );
        assert!(
            sim.take_new_events().is_empty(),
            "{card}: nothing announced"
        );
        assert!(!sim.has_subscription("sub_a"));
    }
}

/// 4000 0027 6000 3184 (`pm_card_authenticationRequired`) needs authentication on every
/// payment, renewals included; 4000 0025 0000 3155 (`pm_card_authenticationRequiredOnSetup`)
/// only on-session, so its renewals succeed (Stripe's "Testing" docs, 3-D Secure cards).
#[test]
fn three_d_secure_cards_differ_on_renewals() {
    for (card, renewal) in [
        (
            "pm_card_authenticationRequired",
            SubscriptionStatus::PastDue,
        ),
        ("pm_card_threeDSecure2Required", SubscriptionStatus::PastDue),
        (
            "pm_card_authenticationRequiredOnSetup",
            SubscriptionStatus::Active,
        ),
    ] {
        let mut sim = simulator(card, RetryPolicy::default());
        sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
            .unwrap();
        assert!(types(&sim.take_new_events()).contains(&"invoice.payment_action_required"));
        assert_eq!(status(&sim), SubscriptionStatus::Incomplete, "{card}");
        sim.complete_3ds("sub_a").unwrap();
        assert_eq!(status(&sim), SubscriptionStatus::Active, "{card}");
        assert!(matches!(
            sim.complete_3ds("sub_a"),
            Err(SimError::Invalid(_))
        ));
        sim.advance_by(Duration::days(29)).unwrap();
        assert_eq!(status(&sim), renewal, "{card}");
    }
}

/// 4000 0000 0000 0259 is charged, then disputed as fraudulent at once (funds withdrawn); the
/// inquiry card opens an inquiry that closes `warning_closed` (Stripe's "Testing" docs,
/// disputes; STRIPE.md, test cards).
#[test]
fn dispute_cards_open_a_dispute_or_an_inquiry_after_a_good_charge() {
    let mut sim = simulator("pm_card_createDispute", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    let events = sim.take_new_events();
    let kinds = types(&events);
    let paid = kinds.iter().position(|t| *t == "charge.succeeded").unwrap();
    let disputed = kinds
        .iter()
        .position(|t| *t == "charge.dispute.created")
        .unwrap();
    assert!(paid < disputed);
    assert!(kinds.contains(&"charge.dispute.funds_withdrawn"));
    assert_eq!(
        events[disputed]["data"]["object"]["status"],
        "needs_response"
    );

    let mut sim = simulator("pm_card_createDisputeInquiry", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    let events = sim.take_new_events();
    let inquiry = events
        .iter()
        .find(|e| e["type"] == "charge.dispute.created")
        .unwrap();
    assert_eq!(
        inquiry["data"]["object"]["status"],
        "warning_needs_response"
    );
    assert!(!types(&events).contains(&"charge.dispute.funds_withdrawn"));
    sim.close_dispute("cus_a", "lost").unwrap();
    let closed = sim.take_new_events();
    assert_eq!(types(&closed), ["charge.dispute.closed"]);
    assert_eq!(closed[0]["data"]["object"]["status"], "warning_closed");
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
    // A year is six advances of two months; the last renewal is charged an hour after its
    // period ends.
    sim.advance_through(start() + Duration::days(365) + Duration::hours(1))
        .unwrap();
    assert_eq!(sim.advances(), 7);
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
        // Flexible billing mode's newer outcome (Stripe's docs, "Automate payment retries").
        (WhenRetriesRunOut::Pause, SubscriptionStatus::Paused),
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
            DateTime::parse_from_rfc3339("2026-02-28T13:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        )
        .unwrap();
        assert_eq!(status(&sim), SubscriptionStatus::PastDue);
        let renewal = sim.invoices_of("sub_a")[1].clone();
        assert_eq!(renewal.attempt_count, 1);
        // Smart Retries pick their own moment: hours before the third day, not on it.
        let retry = renewal.next_payment_attempt.unwrap();
        let first_attempt = renewal.finalized_at.unwrap();
        assert_eq!(first_attempt - renewal.created, Duration::hours(1));
        let early = first_attempt + Duration::days(3) - retry;
        assert!(
            early >= Duration::hours(1) && early <= Duration::hours(10),
            "{early}"
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
fn a_trial_ends_active_with_a_card_and_as_asked_without_one() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, Some(14))
        .unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Trialing);
    sim.take_new_events();
    sim.advance_by(Duration::days(11)).unwrap();
    assert!(types(&sim.take_new_events()).contains(&"customer.subscription.trial_will_end"));
    sim.advance_by(Duration::days(3)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);

    let mut sim = without_a_card();
    sim.subscribe_with(
        "cus_a",
        "sub_a",
        "price_pro",
        1,
        trial_without_card(MissingPaymentMethod::Pause),
    )
    .unwrap();
    sim.advance_by(Duration::days(7)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Paused);
    sim.subscribe_with(
        "cus_a",
        "sub_b",
        "price_pro",
        1,
        trial_without_card(MissingPaymentMethod::Cancel),
    )
    .unwrap();
    sim.advance_by(Duration::days(7)).unwrap();
    assert_eq!(
        sim.subscription("sub_b").unwrap().status,
        SubscriptionStatus::Canceled
    );
}

fn trial_without_card(behavior: MissingPaymentMethod) -> SubscribeOptions {
    SubscribeOptions {
        trial_days: Some(7),
        missing_payment_method: behavior,
        ..SubscribeOptions::default()
    }
}

/// The default `missing_payment_method` is `create_invoice`: the trial ends, the invoice
/// cannot be paid, the subscription is `past_due`, and with no payment method there is no
/// PaymentIntent, no charge and no retry (STRIPE.md, lifecycle; Stripe's API reference,
/// `trial_settings.end_behavior`). Paying the invoice later recovers it.
#[test]
fn a_trial_without_a_payment_method_ends_past_due_with_an_unpayable_invoice() {
    let mut sim = without_a_card();
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, Some(7))
        .unwrap();
    sim.take_new_events();
    sim.advance_by(Duration::days(7) + Duration::hours(1))
        .unwrap();
    let events = sim.take_new_events();
    assert_eq!(status(&sim), SubscriptionStatus::PastDue);
    assert!(types(&events).contains(&"invoice.payment_failed"));
    assert!(!types(&events)
        .iter()
        .any(|t| t.starts_with("payment_intent.") || t.starts_with("charge.")));
    let invoice = sim.invoices_of("sub_a")[1].clone();
    assert_eq!(invoice.status.as_str(), "open");
    assert_eq!(invoice.attempt_count, 1);
    assert_eq!(invoice.next_payment_attempt, None);
    sim.advance_by(Duration::days(20)).unwrap();
    assert_eq!(
        sim.invoices_of("sub_a")[1].attempt_count,
        1,
        "never retried"
    );
    sim.attach_card("cus_a", "pm_card_visa").unwrap();
    sim.pay_invoice("sub_a").unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);
}

/// `POST /v1/subscriptions/{id}/resume`: `customer.subscription.resumed` and `.updated`
/// with the same object; a resume whose payment fails leaves it `past_due`, not retried
/// (STRIPE.md, lifecycle; API reference, "Resume a subscription").
#[test]
fn a_paused_subscription_resumes_and_a_failed_resume_is_past_due() {
    for (card, resumed) in [
        ("pm_card_visa", SubscriptionStatus::Active),
        ("pm_card_chargeCustomerFail", SubscriptionStatus::PastDue),
    ] {
        let mut sim = without_a_card();
        sim.subscribe_with(
            "cus_a",
            "sub_a",
            "price_pro",
            1,
            trial_without_card(MissingPaymentMethod::Pause),
        )
        .unwrap();
        sim.advance_by(Duration::days(7)).unwrap();
        assert!(matches!(
            sim.pay_invoice("sub_a"),
            Err(SimError::Invalid(_))
        ));
        sim.attach_card("cus_a", card).unwrap();
        sim.take_new_events();
        sim.resume_subscription("sub_a").unwrap();
        let events = sim.take_new_events();
        let kinds = types(&events);
        let at = kinds
            .iter()
            .position(|t| *t == "customer.subscription.resumed")
            .unwrap();
        assert_eq!(kinds[at + 1], "customer.subscription.updated");
        assert_eq!(
            events[at]["data"]["object"],
            events[at + 1]["data"]["object"]
        );
        assert_eq!(
            events[at]["data"]["previous_attributes"]["status"],
            "paused"
        );
        assert_eq!(status(&sim), resumed, "{card}");
        let retry = sim
            .invoices_of("sub_a")
            .last()
            .unwrap()
            .next_payment_attempt;
        assert_eq!(retry, None, "{card}: a resume's invoice is not retried");
        assert!(matches!(
            sim.resume_subscription("sub_a"),
            Err(SimError::Invalid(_))
        ));
    }
}

/// Cancelling an `incomplete` subscription ends it `incomplete_expired` with `canceled_at`
/// set; cancellations say why in `cancellation_details` (STRIPE.md, cancellation).
#[test]
fn cancellations_say_why_and_an_incomplete_one_expires() {
    let mut sim = simulator("pm_card_authenticationRequired", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    sim.take_new_events();
    sim.cancel_now("sub_a").unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::IncompleteExpired);
    let events = sim.take_new_events();
    let deleted = events
        .iter()
        .find(|e| e["type"] == "customer.subscription.deleted")
        .unwrap();
    assert!(deleted["data"]["object"]["canceled_at"].is_i64());
    assert_eq!(
        deleted["data"]["object"]["cancellation_details"]["reason"],
        "cancellation_requested"
    );

    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    sim.attach_card("cus_a", "pm_card_chargeCustomerFail")
        .unwrap();
    sim.take_new_events();
    sim.advance_through(start() + Duration::days(60)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Canceled);
    let deleted = sim
        .take_new_events()
        .into_iter()
        .find(|e| e["type"] == "customer.subscription.deleted")
        .unwrap();
    assert_eq!(
        deleted["data"]["object"]["cancellation_details"]["reason"],
        "payment_failed"
    );
}

/// When an older invoice runs out of retries after a newer one was paid, Stripe leaves the
/// subscription's status alone (STRIPE.md, forgiveness).
#[test]
fn an_older_invoice_running_out_of_retries_leaves_a_paid_up_subscription_alone() {
    let mut sim = simulator(
        "pm_card_visa",
        RetryPolicy {
            retry_after_days: vec![3, 40],
            when_exhausted: WhenRetriesRunOut::Cancel,
        },
    );
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    sim.attach_card("cus_a", "pm_card_chargeCustomerFail")
        .unwrap();
    sim.advance_by(Duration::days(29)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::PastDue);
    sim.advance_by(Duration::days(10)).unwrap();
    assert_eq!(sim.invoices_of("sub_a")[1].attempt_count, 2);
    sim.attach_card("cus_a", "pm_card_visa").unwrap();
    sim.advance_by(Duration::days(22)).unwrap();
    assert_eq!(sim.invoices_of("sub_a")[2].status.as_str(), "paid");
    assert_eq!(status(&sim), SubscriptionStatus::Active);
    sim.attach_card("cus_a", "pm_card_chargeCustomerFail")
        .unwrap();
    sim.advance_by(Duration::days(8)).unwrap();
    let older = sim.invoices_of("sub_a")[1].clone();
    assert_eq!(older.attempt_count, 3, "its last retry failed");
    assert_eq!(older.status.as_str(), "open");
    assert_eq!(status(&sim), SubscriptionStatus::Active);
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
        sim.advance_through(start() + Duration::days(100)).unwrap();
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
    sim.subscribe_with(
        "cus_a",
        "sub_a",
        "price_pro",
        1,
        trial_without_card(MissingPaymentMethod::Pause),
    )
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

/// The customer's `delinquent` flag follows its invoices: an automatic payment failure sets
/// it, a payment clears it, each change announced by `customer.updated` (API reference,
/// customer object, `delinquent`; STRIPE.md, renewal).
#[test]
fn the_delinquent_flag_follows_failed_and_recovered_payments() {
    let mut sim = simulator("pm_card_visa", RetryPolicy::default());
    sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
        .unwrap();
    assert_eq!(sim.customer_json("cus_a").unwrap()["delinquent"], false);
    sim.attach_card("cus_a", "pm_card_chargeCustomerFail")
        .unwrap();
    sim.take_new_events();
    sim.advance_by(Duration::days(29)).unwrap();
    let flagged: Vec<Value> = sim
        .take_new_events()
        .into_iter()
        .filter(|e| e["type"] == "customer.updated")
        .collect();
    assert_eq!(flagged.len(), 1, "one change, one event");
    assert_eq!(flagged[0]["data"]["object"]["delinquent"], true);
    assert_eq!(
        flagged[0]["data"]["previous_attributes"]["delinquent"],
        false
    );
    sim.attach_card("cus_a", "pm_card_visa").unwrap();
    sim.advance_by(Duration::days(3)).unwrap();
    assert_eq!(status(&sim), SubscriptionStatus::Active);
    assert_eq!(sim.customer_json("cus_a").unwrap()["delinquent"], false);
}
