//! The translator against Stripe's own object fixtures (stripe/openapi `fixtures3.json`), plus
//! the older shapes that endpoints pinned to earlier API versions still send.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use subledger_domain::billing::{ScheduleStage, SubscriptionStatus, Was, WriteOff};
use subledger_domain::customer::CustomerCommand;
use subledger_domain::payment::PaymentCommand;
use subledger_stripe::{translate, translate_fetched, Translation, TranslationError};

fn fixture(resource: &str) -> Value {
    let text = include_str!("../fixtures/stripe-openapi/fixtures3.json");
    let all: Value = serde_json::from_str(text).unwrap();
    all["resources"][resource].clone()
}

fn event(event_type: &str, object: Value) -> Value {
    json!({
        "id": "evt_test",
        "object": "event",
        "type": event_type,
        "created": 1_700_000_000,
        "api_version": "2025-03-31.basil",
        "livemode": false,
        "data": { "object": object },
    })
}

fn created() -> DateTime<Utc> {
    DateTime::from_timestamp(1_700_000_000, 0).unwrap()
}

#[test]
fn a_subscription_fixture_becomes_a_subscription_snapshot() {
    let Translation::Customer {
        customer_id,
        command:
            CustomerCommand::RecordSubscription {
                subscription,
                occurred_at,
                ..
            },
    } = translate(&event(
        "customer.subscription.updated",
        fixture("subscription"),
    ))
    .unwrap()
    else {
        panic!("not a subscription command");
    };
    assert_eq!(customer_id.as_str(), "cus_QXg1o8vcGmoR32");
    assert_eq!(occurred_at, created());
    assert_eq!(subscription.id.as_str(), "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
    assert_eq!(subscription.status, SubscriptionStatus::Active);
    assert_eq!(subscription.items.len(), 1);
    assert_eq!(
        subscription.items[0].price_id.as_str(),
        "price_1PgafmB7WZ01zgkW6dKueIc5"
    );
    assert_eq!(subscription.items[0].quantity, 1);
    // Post-basil: the period comes from the item.
    assert_eq!(
        subscription.current_period_end,
        DateTime::from_timestamp(976_287_773, 0)
    );
}

#[test]
fn a_pre_basil_subscription_with_an_expanded_customer_translates_too() {
    let object = json!({
        "id": "sub_old",
        "object": "subscription",
        "customer": { "id": "cus_old", "object": "customer" },
        "status": "past_due",
        "current_period_end": 1_600_000_000,
        "cancel_at_period_end": true,
        "items": { "data": [ { "plan": { "id": "plan_legacy" }, "quantity": 3 } ] },
    });
    let Translation::Customer {
        customer_id,
        command: CustomerCommand::RecordSubscription { subscription, .. },
    } = translate(&event("customer.subscription.updated", object)).unwrap()
    else {
        panic!("not a subscription command");
    };
    assert_eq!(customer_id.as_str(), "cus_old");
    assert_eq!(subscription.status, SubscriptionStatus::PastDue);
    assert_eq!(subscription.items[0].price_id.as_str(), "plan_legacy");
    assert_eq!(subscription.items[0].quantity, 3);
    assert!(subscription.cancel_at_period_end);
    assert_eq!(
        subscription.current_period_end,
        DateTime::from_timestamp(1_600_000_000, 0)
    );
}

#[test]
fn invoice_fixtures_become_paid_failed_and_written_off_commands() {
    let mut invoice = fixture("invoice");
    invoice["attempt_count"] = json!(2);
    invoice["parent"]["subscription_details"]["subscription"] = json!("sub_1");
    for (event_type, paid) in [
        ("invoice.paid", Some(true)),
        ("invoice.payment_succeeded", Some(true)),
        ("invoice.payment_failed", Some(false)),
        // Forgiveness (Stripe's billing lifecycle docs): neither paid nor failed, settled.
        ("invoice.voided", None),
        ("invoice.marked_uncollectible", None),
    ] {
        let Translation::Customer {
            customer_id,
            command,
        } = translate(&event(event_type, invoice.clone())).unwrap()
        else {
            panic!("{event_type}: not a customer command");
        };
        assert_eq!(customer_id.as_str(), "cus_QXg1o8vcGmoR32");
        let facts = match command {
            CustomerCommand::RecordInvoicePaid { invoice, .. } if paid == Some(true) => invoice,
            CustomerCommand::RecordInvoicePaymentFailed { invoice, .. } if paid == Some(false) => {
                invoice
            }
            CustomerCommand::RecordInvoiceWrittenOff {
                invoice, outcome, ..
            } if paid.is_none() => {
                let void = event_type == "invoice.voided";
                assert_eq!(outcome == WriteOff::Void, void, "{event_type}");
                invoice
            }
            other => panic!("{event_type}: {other:?}"),
        };
        assert_eq!(facts.id.as_str(), "in_1Pgc6tB7WZ01zgkWu9fdqL6I");
        assert_eq!(
            facts.subscription_id.as_ref().map(|s| s.as_str()),
            Some("sub_1")
        );
        assert_eq!(facts.amount_due.amount.0, 1000);
        assert_eq!(facts.attempt_count, 2);
    }
}

#[test]
fn customer_fixtures_record_details_and_deletion() {
    let mut customer = fixture("customer");
    customer["metadata"] = json!({ "user_id": "u_42" });
    let translation = translate(&event("customer.created", customer.clone())).unwrap();
    let Translation::Customer {
        customer_id,
        command: CustomerCommand::RecordDetails {
            metadata, email, ..
        },
    } = translation
    else {
        panic!("not a details command");
    };
    assert_eq!(customer_id.as_str(), "cus_QXg1o8vcGmoR32");
    assert_eq!(metadata["user_id"], "u_42");
    assert_eq!(email, customer["email"].as_str().map(str::to_owned));
    // `email` is a string or null in Stripe's customer object; anything else is refused,
    // naming the field.
    for (value, expected) in [
        (json!(null), Ok(None)),
        (json!("  "), Ok(None)),
        (
            json!(" Ada@Example.com "),
            Ok(Some("Ada@Example.com".to_owned())),
        ),
        (json!(42), Err("data.object.email")),
    ] {
        let mut odd = customer.clone();
        odd["email"] = value;
        let email = match translate(&event("customer.updated", odd)) {
            Ok(Translation::Customer {
                command: CustomerCommand::RecordDetails { email, .. },
                ..
            }) => Ok(email),
            Ok(other) => panic!("not a details command: {other:?}"),
            Err(error) => {
                let text = error.to_string();
                assert!(text.contains("data.object.email"), "{text}");
                Err("data.object.email")
            }
        };
        assert_eq!(email, expected);
    }
    assert!(matches!(
        translate(&event("customer.deleted", customer)).unwrap(),
        Translation::Customer {
            command: CustomerCommand::RecordDeletion { .. },
            ..
        }
    ));
}

#[test]
fn a_customer_change_names_the_metadata_it_moved_away_from() {
    let mut customer = fixture("customer");
    customer["metadata"] = json!({ "user_id": "u_2" });
    let mut updated = event("customer.updated", customer);
    updated["data"]["previous_attributes"] =
        json!({ "metadata": { "user_id": "u_1", "plan": null } });
    let Translation::Customer {
        command: CustomerCommand::RecordDetails { provenance, .. },
        ..
    } = translate(&updated).unwrap()
    else {
        panic!("not a details command");
    };
    assert!(!provenance.creation && !provenance.fetched);
    let previous = provenance.previous_metadata.unwrap();
    assert_eq!(previous["user_id"].as_deref(), Some("u_1"));
    assert_eq!(previous["plan"], None, "null: the key was not set");
    assert_eq!(
        provenance.previous_email, None,
        "the change did not touch the email"
    );

    // An email set where there was none: previous_attributes lists it as null.
    updated["data"]["previous_attributes"] = json!({ "email": null });
    let Translation::Customer {
        command: CustomerCommand::RecordDetails { provenance, .. },
        ..
    } = translate(&updated).unwrap()
    else {
        panic!("not a details command");
    };
    assert_eq!(provenance.previous_email, Some(Was { was: None }));
    assert_eq!(provenance.previous_metadata, None);
}

#[test]
fn fetched_objects_become_stripes_answer_for_the_second() {
    let second = created();
    let owner = subledger_domain::ids::CustomerId::new("cus_1");
    let Translation::Customer {
        command:
            CustomerCommand::RecordSubscription {
                provenance,
                occurred_at,
                ..
            },
        ..
    } = translate_fetched(&fixture("subscription"), second, &owner).unwrap()
    else {
        panic!("not a subscription");
    };
    assert!(provenance.fetched);
    assert_eq!(occurred_at, second);
    let Translation::Customer {
        command: CustomerCommand::RecordDetails { provenance, .. },
        ..
    } = translate_fetched(&fixture("customer"), second, &owner).unwrap()
    else {
        panic!("not customer details");
    };
    assert!(provenance.fetched);
    let deleted = json!({ "id": "cus_1", "object": "customer", "deleted": true });
    assert!(matches!(
        translate_fetched(&deleted, second, &owner).unwrap(),
        Translation::Customer {
            command: CustomerCommand::RecordDeletion { .. },
            ..
        }
    ));
    // The active entitlements list names no customer: it is the one asked about.
    let list = json!({ "object": "list", "has_more": false, "data": [
        { "object": "entitlements.active_entitlement", "id": "ent_1", "lookup_key": "sso" } ] });
    let Translation::Customer {
        customer_id,
        command:
            CustomerCommand::RecordStripeEntitlements {
                features,
                provenance,
                ..
            },
    } = translate_fetched(&list, second, &owner).unwrap()
    else {
        panic!("not a summary");
    };
    assert_eq!(customer_id, owner);
    assert!(provenance.fetched && features.contains("sso"));
    let mut partial = list.clone();
    partial["has_more"] = json!(true);
    assert!(translate_fetched(&partial, second, &owner).is_err());
    assert!(translate_fetched(&fixture("charge"), second, &owner).is_err());
    assert!(translate_fetched(&json!("sub_1"), second, &owner).is_err());
}

/// Backfill and reconciliation read invoices: Stripe's invoice fixture in each state.
#[test]
fn fetched_invoices_are_what_dunning_counts() {
    let second = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let owner = subledger_domain::ids::CustomerId::new("cus_1");
    let invoice = |status: &str, attempts: u32| {
        let mut invoice = fixture("invoice");
        invoice["status"] = json!(status);
        invoice["attempt_count"] = json!(attempts);
        invoice["customer"] = json!("cus_1");
        invoice["created"] = json!(1_799_000_000);
        invoice
    };
    // A draft, or an open invoice Stripe has not tried to collect yet, is no fact.
    for (status, attempts) in [("draft", 0), ("open", 0)] {
        assert!(matches!(
            translate_fetched(&invoice(status, attempts), second, &owner).unwrap(),
            Translation::Ignored { .. }
        ));
    }
    // An open invoice with attempts failed, since Stripe first tried (its creation when
    // `status_transitions.finalized_at` is null, as in Stripe's fixture).
    let Translation::Customer {
        command:
            CustomerCommand::RecordInvoicePaymentFailed {
                invoice: facts,
                occurred_at,
            },
        ..
    } = translate_fetched(&invoice("open", 2), second, &owner).unwrap()
    else {
        panic!("not a failure");
    };
    assert_eq!(facts.attempt_count, 2);
    assert_eq!(occurred_at.timestamp(), 1_799_000_000);
    let mut finalized = invoice("open", 1);
    finalized["status_transitions"]["finalized_at"] = json!(1_799_000_600);
    let Translation::Customer {
        command: CustomerCommand::RecordInvoicePaymentFailed { occurred_at, .. },
        ..
    } = translate_fetched(&finalized, second, &owner).unwrap()
    else {
        panic!("not a failure");
    };
    assert_eq!(occurred_at.timestamp(), 1_799_000_600);
    assert!(matches!(
        translate_fetched(&invoice("paid", 1), second, &owner).unwrap(),
        Translation::Customer {
            command: CustomerCommand::RecordInvoicePaid { .. },
            ..
        }
    ));
    for (status, outcome) in [
        ("void", WriteOff::Void),
        ("uncollectible", WriteOff::Uncollectible),
    ] {
        let Translation::Customer {
            command: CustomerCommand::RecordInvoiceWrittenOff { outcome: got, .. },
            ..
        } = translate_fetched(&invoice(status, 3), second, &owner).unwrap()
        else {
            panic!("{status} is not a write-off");
        };
        assert_eq!(got, outcome);
    }
}

#[test]
fn payment_intent_fixtures_become_payment_commands() {
    let mut intent = fixture("payment_intent");
    intent["metadata"] = json!({ "order_id": "order_9" });
    intent["last_payment_error"] = json!({ "type": "card_error", "code": "card_declined", "decline_code": "insufficient_funds" });
    let Translation::Payment {
        payment_intent_id,
        command: PaymentCommand::RecordFailed { payment, .. },
        ..
    } = translate(&event("payment_intent.payment_failed", intent.clone())).unwrap()
    else {
        panic!("not a payment failure");
    };
    assert_eq!(payment_intent_id.as_str(), "pi_1PgafyB7WZ01zgkWSjxsAJo3");
    assert_eq!(payment.order_id.as_deref(), Some("order_9"));
    assert_eq!(payment.decline_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(payment.amount.amount.0, 1099);
    assert!(matches!(
        translate(&event("payment_intent.succeeded", intent)).unwrap(),
        Translation::Payment {
            command: PaymentCommand::RecordSucceeded { .. },
            ..
        }
    ));
}

#[test]
fn other_event_types_are_ignored_with_a_reason() {
    let Translation::Ignored { reason } =
        translate(&event("plan.created", fixture("plan"))).unwrap()
    else {
        panic!("not ignored");
    };
    assert!(reason.contains("plan.created"), "{reason}");
}

#[test]
fn a_broken_object_is_an_error_naming_the_field() {
    let mut subscription = fixture("subscription");
    subscription.as_object_mut().unwrap().remove("customer");
    assert_eq!(
        translate(&event(
            "customer.subscription.created",
            subscription.clone()
        )),
        Err(TranslationError::InvalidField {
            field: "data.object.customer".to_owned(),
            expected: "an id or an object with an id",
        })
    );
    subscription["customer"] = json!("cus_1");
    subscription["status"] = json!("dormant");
    assert_eq!(
        translate(&event("customer.subscription.created", subscription)),
        Err(TranslationError::UnknownSubscriptionStatus(
            "dormant".to_owned()
        ))
    );
}

#[test]
fn subscription_events_say_where_the_snapshot_sits_in_its_history() {
    let provenance = |event: Value| match translate(&event).unwrap() {
        Translation::Customer {
            command: CustomerCommand::RecordSubscription { provenance, .. },
            ..
        } => provenance,
        other => panic!("{other:?}"),
    };
    let created = provenance(event(
        "customer.subscription.created",
        fixture("subscription"),
    ));
    assert!(created.creation);
    assert_eq!(created.previous_status, None);
    let mut updated = event("customer.subscription.updated", fixture("subscription"));
    updated["data"]["previous_attributes"] =
        json!({ "status": "incomplete", "latest_invoice": null });
    let updated = provenance(updated);
    assert!(!updated.creation);
    assert_eq!(
        updated.previous_status,
        Some(SubscriptionStatus::Incomplete)
    );
    let paused = provenance(event(
        "customer.subscription.paused",
        fixture("subscription"),
    ));
    assert!(!paused.creation);
}

#[test]
fn an_entitlement_summary_lists_the_active_features_by_lookup_key() {
    let mut summary = fixture("entitlements.active_entitlement_summary");
    summary["customer"] = json!("cus_1");
    summary["entitlements"]["data"][0]["lookup_key"] = json!("sso");
    let mut updated = event("entitlements.active_entitlement_summary.updated", summary);
    // It names the list it replaced.
    updated["data"]["previous_attributes"] = json!({ "entitlements": { "data": [] } });
    let Translation::Customer {
        customer_id,
        command:
            CustomerCommand::RecordStripeEntitlements {
                features,
                provenance,
                ..
            },
    } = translate(&updated).unwrap()
    else {
        panic!("not an entitlement summary");
    };
    assert_eq!(customer_id.as_str(), "cus_1");
    assert_eq!(features.into_iter().collect::<Vec<_>>(), ["sso"]);
    assert_eq!(provenance.previous_features, Some(Default::default()));
}

#[test]
fn a_schedule_reports_its_next_phase_until_released() {
    let mut schedule = fixture("subscription_schedule");
    schedule["customer"] = json!("cus_1");
    schedule["subscription"] = json!("sub_1");
    schedule["status"] = json!("active");
    schedule["current_phase"] = json!({ "start_date": 1_700_000_000, "end_date": 1_702_592_000 });
    let mut next = schedule["phases"][0].clone();
    next["start_date"] = json!(1_702_592_000);
    next["items"][0]["price"] = json!("price_basic");
    schedule["phases"][0]["start_date"] = json!(1_700_000_000);
    schedule["phases"][0]["end_date"] = json!(1_702_592_000);
    schedule["phases"].as_array_mut().unwrap().push(next);
    let facts = |event: Value| match translate(&event).unwrap() {
        Translation::Customer {
            command: CustomerCommand::RecordSchedule { schedule, .. },
            ..
        } => schedule,
        other => panic!("{other:?}"),
    };
    let active = facts(event("subscription_schedule.updated", schedule.clone()));
    assert_eq!(active.subscription_id.as_str(), "sub_1");
    assert_eq!(active.stage, ScheduleStage::Active);
    let Translation::Customer {
        command: CustomerCommand::RecordSchedule { provenance, .. },
        ..
    } = translate(&event("subscription_schedule.created", schedule.clone())).unwrap()
    else {
        panic!("not a schedule");
    };
    assert!(provenance.creation && !provenance.fetched);
    let owner = subledger_domain::ids::CustomerId::new("cus_1");
    let Translation::Customer {
        command: CustomerCommand::RecordSchedule { provenance, .. },
        ..
    } = translate_fetched(&schedule, created(), &owner).unwrap()
    else {
        panic!("not a schedule");
    };
    assert!(provenance.fetched);
    let next_phase = active.next_phase.unwrap();
    assert_eq!(next_phase.starts_at.timestamp(), 1_702_592_000);
    assert_eq!(next_phase.items[0].price_id.as_str(), "price_basic");
    // A malformed phase item is refused rather than dropped from the next phase.
    let mut broken = schedule.clone();
    broken["phases"][1]["items"] = json!(["price_basic"]);
    assert!(translate(&event("subscription_schedule.updated", broken)).is_err());
    schedule["status"] = json!("released");
    schedule["subscription"] = Value::Null;
    schedule["released_subscription"] = json!("sub_1");
    let released = facts(event("subscription_schedule.released", schedule.clone()));
    assert_eq!(released.subscription_id.as_str(), "sub_1");
    assert!(released.next_phase.is_none());
    // A completed schedule is read whether it names its subscription as released or not at
    // all (sources are silent); one naming none has nothing left to change.
    schedule["status"] = json!("completed");
    let completed = facts(event("subscription_schedule.completed", schedule.clone()));
    assert_eq!(completed.stage, ScheduleStage::Ended);
    schedule["released_subscription"] = Value::Null;
    assert!(matches!(
        translate(&event("subscription_schedule.completed", schedule.clone())).unwrap(),
        Translation::Ignored { .. }
    ));
    schedule["status"] = json!("active");
    assert!(translate(&event("subscription_schedule.updated", schedule)).is_err());
    assert_eq!(released.stage, ScheduleStage::Ended);
}

#[test]
fn disputes_and_invoice_payments_go_to_the_payment_they_concern() {
    let mut dispute = fixture("dispute");
    dispute["id"] = json!("dp_1");
    dispute["payment_intent"] = json!("pi_9");
    dispute["status"] = json!("needs_response");
    let Translation::Payment {
        payment_intent_id,
        command: PaymentCommand::RecordDispute { dispute, .. },
        ..
    } = translate(&event("charge.dispute.created", dispute)).unwrap()
    else {
        panic!("not a dispute");
    };
    assert_eq!(payment_intent_id.as_str(), "pi_9");
    assert_eq!(dispute.status, "needs_response");
    assert!(!dispute.is_closed());

    let mut link = fixture("invoice_payment");
    link["invoice"] = json!("in_7");
    link["payment"] = json!({ "type": "payment_intent", "payment_intent": "pi_9" });
    let Translation::Payment {
        command: PaymentCommand::RecordInvoiceLink { invoice, .. },
        ..
    } = translate(&event("invoice_payment.paid", link)).unwrap()
    else {
        panic!("not an invoice link");
    };
    assert_eq!(invoice.as_str(), "in_7");
}

/// Stripe's docs, "Connect webhooks": an event of a connected account carries a top-level
/// `account`. Every customer and order such an event names is keyed within that account.
#[test]
fn a_connected_accounts_event_keys_its_customers_and_orders_by_account() {
    let connected = |event_type: &str, object: Value| {
        let mut event = event(event_type, object);
        event["account"] = json!("acct_1Connected");
        translate(&event).unwrap()
    };
    let Translation::Customer {
        customer_id,
        command: CustomerCommand::RecordSubscription { subscription, .. },
    } = connected("customer.subscription.updated", fixture("subscription"))
    else {
        panic!("not a subscription command");
    };
    assert_eq!(customer_id.as_str(), "acct_1Connected/cus_QXg1o8vcGmoR32");
    assert_eq!(subscription.customer_id, customer_id);
    assert_eq!(customer_id.stripe_id(), "cus_QXg1o8vcGmoR32");

    for (event_type, resource) in [
        ("customer.updated", "customer"),
        ("invoice.paid", "invoice"),
    ] {
        let Translation::Customer { customer_id, .. } = connected(event_type, fixture(resource))
        else {
            panic!("{event_type} is not a customer's fact");
        };
        assert_eq!(
            customer_id.account(),
            Some("acct_1Connected"),
            "{event_type}"
        );
    }

    let mut intent = fixture("payment_intent");
    intent["metadata"] = json!({ "order_id": "order_9" });
    intent["customer"] = json!("cus_buyer");
    let Translation::Payment {
        order_id,
        command: PaymentCommand::RecordCreated { payment, .. },
        ..
    } = connected("payment_intent.created", intent)
    else {
        panic!("not a payment");
    };
    assert_eq!(order_id.as_deref(), Some("acct_1Connected/order_9"));
    assert_eq!(
        payment.customer_id.as_ref().and_then(|c| c.account()),
        Some("acct_1Connected")
    );

    // The platform's own events (no `account`, or null) keep the bare ids.
    let mut platform = event("customer.updated", fixture("customer"));
    platform["account"] = Value::Null;
    let Translation::Customer { customer_id, .. } = translate(&platform).unwrap() else {
        panic!("not a customer's fact");
    };
    assert_eq!(customer_id.account(), None);
}

#[test]
fn an_account_that_is_not_an_account_id_is_refused() {
    for account in [json!("cus_1"), json!("acct_1/cus_2"), json!(7), json!("")] {
        let mut event = event("customer.updated", fixture("customer"));
        event["account"] = account.clone();
        assert!(
            matches!(translate(&event), Err(TranslationError::InvalidField { ref field, .. }) if field == "account"),
            "{account}"
        );
    }
}

#[test]
fn a_fetched_object_is_keyed_within_the_account_it_was_fetched_for() {
    let owner =
        subledger_domain::ids::CustomerId::in_account(Some("acct_1X"), "cus_QXg1o8vcGmoR32");
    let Translation::Customer { customer_id, .. } =
        translate_fetched(&fixture("subscription"), created(), &owner).unwrap()
    else {
        panic!("not a customer's fact");
    };
    assert_eq!(customer_id, owner);
}
