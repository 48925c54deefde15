//! Simulated objects as Stripe's JSON: each starts from Stripe's own fixture for that resource
//! (so every field Stripe sends is there, in the current API version's shape) and the fields
//! the simulation controls are overwritten.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use subledger_stripe::fixtures::resource;

use crate::model::{
    Charge, Customer, Decline, Dispute, Invoice, InvoiceLine, PaymentIntent, PaymentIntentStatus,
    PaymentMethod, Price, Schedule, ScheduleStatus, Subscription,
};

/// The API version the simulator speaks, the one Subledger pins.
pub const API_VERSION: &str = "2025-03-31.basil";

pub fn ts(time: DateTime<Utc>) -> Value {
    json!(time.timestamp())
}

fn opt_ts(time: Option<DateTime<Utc>>) -> Value {
    time.map_or(Value::Null, ts)
}

pub fn customer(customer: &Customer, clock: &str) -> Value {
    let mut object = resource("customer");
    object["id"] = json!(customer.id);
    object["created"] = ts(customer.created);
    object["metadata"] = json!(customer.metadata);
    object["invoice_settings"]["default_payment_method"] = json!(customer.default_payment_method);
    object["delinquent"] = json!(customer.delinquent);
    object["test_clock"] = json!(clock);
    object["livemode"] = json!(false);
    object["email"] = json!(format!("{}@example.com", customer.id));
    if customer.deleted {
        return json!({ "id": customer.id, "object": "customer", "deleted": true });
    }
    object
}

pub fn payment_method(method: &PaymentMethod) -> Value {
    let mut object = resource("payment_method");
    object["id"] = json!(method.id);
    object["customer"] = if method.attached {
        json!(method.customer)
    } else {
        Value::Null
    };
    object["created"] = ts(method.created);
    object["type"] = json!("card");
    object["card"]["last4"] = json!(method.card.last4());
    object["card"]["brand"] = json!("visa");
    object["livemode"] = json!(false);
    object
}

pub fn price(price: &Price) -> Value {
    let mut object = resource("price");
    object["id"] = json!(price.id);
    object["product"] = json!(price.product);
    object["unit_amount"] = json!(price.unit_amount);
    object["unit_amount_decimal"] = json!(price.unit_amount.to_string());
    object["currency"] = json!(price.currency);
    object["lookup_key"] = json!(price.lookup_key);
    object["created"] = ts(price.created);
    object["type"] = json!("recurring");
    object["recurring"]["interval"] = json!(price.interval.as_str());
    object["recurring"]["interval_count"] = json!(1);
    object["livemode"] = json!(false);
    object
}

pub fn subscription(
    subscription: &Subscription,
    prices: &dyn Fn(&str) -> Option<Value>,
    clock: &str,
) -> Value {
    let mut object = resource("subscription");
    let template = object["items"]["data"][0].clone();
    let item = |id: &str, price_id: &str, quantity: u64| {
        let mut rendered = template.clone();
        rendered["id"] = json!(id);
        rendered["subscription"] = json!(subscription.id);
        rendered["quantity"] = json!(quantity);
        rendered["created"] = ts(subscription.created);
        rendered["current_period_start"] = ts(subscription.current_period_start);
        rendered["current_period_end"] = ts(subscription.current_period_end);
        if let Some(price) = prices(price_id) {
            rendered["plan"]["id"] = price["id"].clone();
            rendered["plan"]["amount"] = price["unit_amount"].clone();
            rendered["plan"]["currency"] = price["currency"].clone();
            rendered["plan"]["interval"] = price["recurring"]["interval"].clone();
            rendered["plan"]["interval_count"] = json!(1);
            rendered["plan"]["product"] = price["product"].clone();
            rendered["price"] = price;
        }
        rendered
    };
    let items: Vec<Value> = subscription
        .items
        .iter()
        .map(|i| item(&i.id, &i.price, i.quantity))
        .collect();
    object["id"] = json!(subscription.id);
    object["customer"] = json!(subscription.customer);
    object["status"] = json!(subscription.status.as_str());
    object["created"] = ts(subscription.created);
    object["start_date"] = ts(subscription.created);
    object["billing_cycle_anchor"] = ts(subscription.billing_cycle_anchor);
    object["cancel_at_period_end"] = json!(subscription.cancel_at_period_end);
    object["cancel_at"] = opt_ts(subscription.cancel_at);
    object["canceled_at"] = opt_ts(subscription.canceled_at);
    object["ended_at"] = opt_ts(subscription.ended_at);
    object["trial_start"] = opt_ts(subscription.trial_start);
    object["trial_end"] = opt_ts(subscription.trial_end);
    object["latest_invoice"] = json!(subscription.latest_invoice);
    object["pause_collection"] = subscription.pause_collection.map_or(
        Value::Null,
        |b| json!({ "behavior": b.as_str(), "resumes_at": null }),
    );
    object["items"]["data"] = Value::Array(items);
    object["items"]["url"] = json!(format!(
        "/v1/subscription_items?subscription={}",
        subscription.id
    ));
    object["test_clock"] = json!(clock);
    object["metadata"] = json!({});
    object["livemode"] = json!(false);
    object["schedule"] = Value::Null;
    // Only when one is pending (`payment_behavior: pending_if_incomplete`); the fixture's
    // example would read as a pending change.
    object["pending_update"] = match &subscription.pending_update {
        Some(pending) => json!({
            "billing_cycle_anchor": null,
            "expires_at": pending.expires_at.timestamp(),
            // Whole subscription items, as they will be once the update applies.
            "subscription_items": subscription
                .items
                .first()
                .map(|first| vec![item(&first.id, &pending.price, first.quantity)]),
            "trial_end": null,
            "trial_from_plan": null,
        }),
        None => Value::Null,
    };
    object["cancellation_details"] = json!({
        "comment": null,
        "feedback": null,
        "reason": subscription.cancellation_reason.map(|r| r.as_str()),
    });
    object["trial_settings"] = json!({
        "end_behavior": { "missing_payment_method": subscription.missing_payment_method.as_str() },
    });
    // Subscriptions created through the API since 2025-09-30.clover bill in flexible mode
    // (Stripe's changelog, "Makes flexible billing mode the default for new subscriptions");
    // the fixture shows `classic`, which older subscriptions keep. Subledger reads neither.
    object["billing_mode"] = json!({
        "type": "flexible",
        "flexible": { "proration_discounts": "included" },
        "updated_at": null,
    });
    object
}

pub fn invoice(invoice: &Invoice, clock: &str) -> Value {
    let mut object = resource("invoice");
    object["id"] = json!(invoice.id);
    object["customer"] = json!(invoice.customer);
    object["status"] = json!(invoice.status.as_str());
    object["amount_due"] = json!(invoice.amount_due);
    object["amount_paid"] = json!(invoice.amount_paid);
    object["amount_remaining"] = json!(invoice.amount_due - invoice.amount_paid);
    object["total"] = json!(invoice.amount_due);
    object["subtotal"] = json!(invoice.amount_due);
    object["currency"] = json!(invoice.currency);
    object["attempt_count"] = json!(invoice.attempt_count);
    object["attempted"] = json!(invoice.attempt_count > 0);
    object["next_payment_attempt"] = opt_ts(invoice.next_payment_attempt);
    object["billing_reason"] = json!(invoice.billing_reason);
    object["created"] = ts(invoice.created);
    object["period_start"] = ts(invoice.period_start);
    object["period_end"] = ts(invoice.period_end);
    object["auto_advance"] = json!(matches!(
        invoice.status,
        crate::model::InvoiceStatus::Draft | crate::model::InvoiceStatus::Open
    ));
    object["collection_method"] = json!("charge_automatically");
    object["subscription"] = Value::Null;
    object["parent"] = match &invoice.subscription {
        Some(subscription) => json!({
            "type": "subscription_details",
            "quote_details": null,
            "subscription_details": { "metadata": {}, "subscription": subscription },
        }),
        None => Value::Null,
    };
    object["number"] = json!(format!("SIM-{}", invoice.id.trim_start_matches("in_")));
    object["status_transitions"] = json!({
        "finalized_at": opt_ts(invoice.finalized_at),
        "paid_at": opt_ts(invoice.paid_at),
        "voided_at": opt_ts(invoice.voided_at),
        "marked_uncollectible_at": opt_ts(invoice.marked_uncollectible_at),
    });
    let template = object["lines"]["data"][0].clone();
    let lines: Vec<Value> = invoice
        .lines
        .iter()
        .enumerate()
        .map(|(n, line)| invoice_line(&template, invoice, n, line))
        .collect();
    object["lines"] = json!({
        "object": "list",
        "data": lines,
        "has_more": false,
        "total_count": invoice.lines.len(),
        "url": format!("/v1/invoices/{}/lines", invoice.id),
    });
    object["test_clock"] = json!(clock);
    object["livemode"] = json!(false);
    object
}

/// One invoice line as Stripe renders a subscription item's (API version `basil` and later:
/// the price under `pricing.price_details`, the item under `parent.subscription_item_details`).
fn invoice_line(template: &Value, invoice: &Invoice, n: usize, line: &InvoiceLine) -> Value {
    let mut object = template.clone();
    object["id"] = json!(format!("il_{}_{n}", invoice.id.trim_start_matches("in_")));
    object["invoice"] = json!(invoice.id);
    object["amount"] = json!(line.amount);
    object["subtotal"] = json!(line.amount);
    object["currency"] = json!(invoice.currency);
    object["quantity"] = json!(line.quantity);
    object["description"] = json!(format!("{} × {}", line.quantity, line.price));
    object["period"] = json!({
        "start": invoice.period_start.timestamp(),
        "end": invoice.period_end.timestamp(),
    });
    object["subscription"] = json!(invoice.subscription);
    object["pricing"] = json!({
        "type": "price_details",
        "price_details": { "price": line.price, "product": format!("prod_{}", line.price) },
        "unit_amount_decimal": null,
    });
    object["parent"] = json!({
        "type": "subscription_item_details",
        "invoice_item_details": null,
        "subscription_item_details": {
            "invoice_item": null,
            "proration": line.proration,
            "proration_details": { "credited_items": null },
            "subscription": invoice.subscription,
            "subscription_item": line.subscription_item,
        },
    });
    object
}

pub fn payment_intent(intent: &PaymentIntent) -> Value {
    let mut object = resource("payment_intent");
    object["id"] = json!(intent.id);
    object["customer"] = json!(intent.customer);
    object["amount"] = json!(intent.amount);
    object["amount_received"] = json!(if intent.status == PaymentIntentStatus::Succeeded {
        intent.amount
    } else {
        0
    });
    object["currency"] = json!(intent.currency);
    object["status"] = json!(intent.status.as_str());
    object["created"] = ts(intent.created);
    object["payment_method"] = json!(intent.payment_method);
    object["latest_charge"] = json!(intent.latest_charge);
    object["client_secret"] = json!(format!("{}_secret_sim", intent.id));
    object["metadata"] = match &intent.order_id {
        Some(order_id) => json!({ "order_id": order_id }),
        None => json!({}),
    };
    object["livemode"] = json!(false);
    object["last_payment_error"] = match intent.last_error {
        Some(decline) => json!({
            "type": "card_error",
            "code": decline.code,
            "decline_code": decline.decline_code,
            "message": decline_text(decline),
        }),
        None => Value::Null,
    };
    object["next_action"] = if intent.status == PaymentIntentStatus::RequiresAction {
        json!({ "type": "use_stripe_sdk", "use_stripe_sdk": {} })
    } else {
        Value::Null
    };
    object
}

pub fn charge(charge: &Charge) -> Value {
    let mut object = resource("charge");
    object["id"] = json!(charge.id);
    object["customer"] = json!(charge.customer);
    object["payment_intent"] = json!(charge.payment_intent);
    object["amount"] = json!(charge.amount);
    object["amount_captured"] = json!(if charge.succeeded { charge.amount } else { 0 });
    object["currency"] = json!(charge.currency);
    object["status"] = json!(if charge.succeeded {
        "succeeded"
    } else {
        "failed"
    });
    object["paid"] = json!(charge.succeeded);
    object["captured"] = json!(charge.succeeded);
    object["disputed"] = json!(charge.disputed);
    object["refunded"] = json!(charge.refunded);
    object["amount_refunded"] = json!(if charge.refunded { charge.amount } else { 0 });
    object["failure_code"] = json!(charge.decline.map(|d| d.code));
    object["failure_message"] = json!(charge.decline.map(decline_text));
    // `outcome` as the charge object documents it (API reference, charge object: `type`
    // `authorized` | `issuer_declined`, `network_status` `approved_by_network` |
    // `declined_by_network`, `reason` the decline code). Subledger does not read it.
    object["outcome"] = match charge.decline {
        Some(decline) => json!({
            "type": "issuer_declined",
            "network_status": "declined_by_network",
            "reason": decline.decline_code.unwrap_or(decline.code),
            "seller_message": "The bank did not return any further details with this decline.",
            "risk_level": "normal",
        }),
        None => json!({
            "type": "authorized",
            "network_status": "approved_by_network",
            "reason": null,
            "seller_message": "Payment complete.",
            "risk_level": "normal",
        }),
    };
    object["created"] = ts(charge.created);
    object["livemode"] = json!(false);
    object
}

/// Stripe's raw text for a card error, as its test cards answer (Stripe's "Testing" docs and
/// error codes reference): for operators' logs, never for customers.
pub fn decline_text(decline: Decline) -> &'static str {
    match (decline.code, decline.decline_code) {
        ("expired_card", _) => "Your card has expired.",
        (_, Some("insufficient_funds")) => "Your card has insufficient funds.",
        _ => "Your card was declined.",
    }
}

pub fn dispute(dispute: &Dispute) -> Value {
    let mut object = resource("dispute");
    object["id"] = json!(dispute.id);
    object["charge"] = json!(dispute.charge);
    object["payment_intent"] = json!(dispute.payment_intent);
    object["amount"] = json!(dispute.amount);
    object["currency"] = json!(dispute.currency);
    object["status"] = json!(dispute.status.as_str());
    object["reason"] = json!(if dispute.status.as_str().starts_with("warning_") {
        "general"
    } else {
        "fraudulent"
    });
    object["is_charge_refundable"] = json!(dispute.status.as_str().starts_with("warning_"));
    object["created"] = ts(dispute.created);
    object["livemode"] = json!(false);
    object
}

/// A customer's active entitlements by Stripe's Entitlements API.
pub fn entitlement_summary(customer: &str, features: &std::collections::BTreeSet<String>) -> Value {
    let mut summary = resource("entitlements.active_entitlement_summary");
    let template = summary["entitlements"]["data"][0].clone();
    let data: Vec<Value> = features
        .iter()
        .map(|lookup_key| {
            let mut entry = template.clone();
            entry["id"] = json!(format!("ent_{lookup_key}"));
            entry["lookup_key"] = json!(lookup_key);
            entry["feature"]["id"] = json!(format!("feat_{lookup_key}"));
            entry["feature"]["lookup_key"] = json!(lookup_key);
            entry["feature"]["name"] = json!(lookup_key);
            entry["feature"]["livemode"] = json!(false);
            entry["livemode"] = json!(false);
            entry
        })
        .collect();
    summary["customer"] = json!(customer);
    summary["entitlements"]["data"] = Value::Array(data);
    summary["entitlements"]["has_more"] = json!(false);
    summary["entitlements"]["url"] = json!(format!(
        "/v1/entitlements/active_entitlements?customer={customer}"
    ));
    summary["livemode"] = json!(false);
    summary
}

/// The payment of an invoice by a PaymentIntent (`invoice_payment.paid`): how an invoice and
/// its PaymentIntent are linked since Stripe's `basil` API version.
pub fn invoice_payment(
    id: &str,
    invoice: &Invoice,
    payment_intent: &str,
    now: DateTime<Utc>,
) -> Value {
    let mut object = resource("invoice_payment");
    object["id"] = json!(id);
    object["invoice"] = json!(invoice.id);
    object["payment"] = json!({ "type": "payment_intent", "payment_intent": payment_intent });
    object["status"] = json!("paid");
    object["amount_paid"] = json!(invoice.amount_paid);
    object["amount_requested"] = json!(invoice.amount_due);
    object["currency"] = json!(invoice.currency);
    object["created"] = ts(now);
    object["status_transitions"] = json!({ "canceled_at": null, "paid_at": now.timestamp() });
    object["livemode"] = json!(false);
    object
}

/// A subscription schedule: its phases, the one in force as `current_phase` while it is
/// active, and when it ended (`end_behavior: release`: a completed schedule leaves the
/// subscription running on its last phase's price).
pub fn schedule(schedule: &Schedule, now: DateTime<Utc>, clock: &str) -> Value {
    let mut object = resource("subscription_schedule");
    let template = object["phases"][0].clone();
    let phases = schedule
        .phases
        .iter()
        .map(|p| {
            let mut phase = template.clone();
            phase["start_date"] = ts(p.start);
            phase["end_date"] = ts(p.end);
            phase["items"][0]["price"] = json!(p.price);
            phase["items"][0]["plan"]["id"] = json!(p.price);
            phase["items"][0]["quantity"] = json!(p.quantity);
            phase
        })
        .collect();
    let active = schedule.status == ScheduleStatus::Active;
    let ended_as = |status: ScheduleStatus| {
        schedule
            .ended_at
            .filter(|_| schedule.status == status)
            .map_or(Value::Null, ts)
    };
    object["id"] = json!(schedule.id);
    object["customer"] = json!(schedule.customer);
    object["subscription"] = if active || schedule.status == ScheduleStatus::Canceled {
        json!(schedule.subscription)
    } else {
        Value::Null
    };
    object["status"] = json!(schedule.status.as_str());
    object["end_behavior"] = json!("release");
    object["canceled_at"] = ended_as(ScheduleStatus::Canceled);
    object["completed_at"] = ended_as(ScheduleStatus::Completed);
    object["released_at"] = ended_as(ScheduleStatus::Released);
    // With `end_behavior: release` completing releases the subscription too
    // (`../shared/STRIPE.md`, schedules); the translator also reads a completed schedule that
    // names no subscription at all.
    object["released_subscription"] = if matches!(
        schedule.status,
        ScheduleStatus::Released | ScheduleStatus::Completed
    ) {
        json!(schedule.subscription)
    } else {
        Value::Null
    };
    object["created"] = ts(schedule.created);
    object["current_phase"] = schedule
        .phases
        .iter()
        .find(|p| active && p.start <= now && now < p.end)
        .map_or(
            Value::Null,
            |p| json!({ "start_date": p.start.timestamp(), "end_date": p.end.timestamp() }),
        );
    object["phases"] = Value::Array(phases);
    object["test_clock"] = json!(clock);
    object["livemode"] = json!(false);
    object
}

/// `data.previous_attributes` as Stripe computes it: every top-level field whose value changed,
/// with its old value. An array is given whole ("If an array attribute has any updated
/// elements, this object contains the entire array": the event object in Stripe's API
/// reference). `metadata`, a hash, lists only the keys that changed, with `null` for a key
/// that was not set (`../shared/STRIPE.md`, from test-mode traffic recorded in pay-rails/pay's
/// `test/vcr_cassettes`); the translator reads either shape.
pub fn previous_attributes(old: &Value, new: &Value) -> Option<Value> {
    let (Some(old), Some(new)) = (old.as_object(), new.as_object()) else {
        return None;
    };
    let changed: Map<String, Value> = old
        .iter()
        .filter(|(key, value)| new.get(*key) != Some(value))
        .map(|(key, value)| {
            let value = match (key.as_str(), value, new.get(key)) {
                ("metadata", Value::Object(before), Some(Value::Object(after))) => {
                    changed_keys(before, after)
                }
                _ => value.clone(),
            };
            (key.clone(), value)
        })
        .collect();
    (!changed.is_empty()).then_some(Value::Object(changed))
}

/// The keys of a hash that changed, each with its old value (`null`: it was not set).
fn changed_keys(before: &Map<String, Value>, after: &Map<String, Value>) -> Value {
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    Value::Object(
        keys.into_iter()
            .filter(|key| before.get(*key) != after.get(*key))
            .map(|key| (key.clone(), before.get(key).cloned().unwrap_or(Value::Null)))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previous_attributes_hold_the_old_values_of_changed_fields_only() {
        let old = json!({ "id": "sub_1", "status": "incomplete", "items": { "data": [1] } });
        let new = json!({ "id": "sub_1", "status": "active", "items": { "data": [1] } });
        assert_eq!(
            previous_attributes(&old, &new),
            Some(json!({ "status": "incomplete" }))
        );
        assert_eq!(previous_attributes(&new, &new), None);
    }

    #[test]
    fn a_changed_hash_lists_only_its_changed_keys_and_null_for_new_ones() {
        let old = json!({ "metadata": { "user_id": "u_1", "plan": "a", "kept": "k" } });
        let new = json!({ "metadata": { "user_id": "u_2", "kept": "k", "team": "t" } });
        assert_eq!(
            previous_attributes(&old, &new),
            Some(json!({ "metadata": { "user_id": "u_1", "plan": "a", "team": null } }))
        );
        // Arrays stay whole.
        let old = json!({ "items": [1, 2] });
        let new = json!({ "items": [1, 3] });
        assert_eq!(
            previous_attributes(&old, &new),
            Some(json!({ "items": [1, 2] }))
        );
    }
}
