//! Stripe events built from Stripe's own object fixtures (stripe/openapi `fixtures3.json`), for
//! tests across the workspace. Enabled by the `fixtures` feature.

use std::sync::OnceLock;

use serde_json::{json, Value};

const FIXTURES: &str = include_str!("../fixtures/stripe-openapi/fixtures3.json");

/// The parsed fixture set, parsed once per process.
#[allow(clippy::expect_used)]
fn all() -> &'static Value {
    static ALL: OnceLock<Value> = OnceLock::new();
    ALL.get_or_init(|| serde_json::from_str(FIXTURES).expect("vendored fixtures3.json is JSON"))
}

/// One resource from the fixture set, e.g. `"subscription"` or `"invoice"`.
///
/// # Panics
/// If the vendored fixture file has no such resource: a programming error.
#[allow(clippy::panic)]
pub fn resource(name: &str) -> Value {
    let resource = all()["resources"][name].clone();
    if !resource.is_object() {
        panic!("fixtures3.json has no resource {name}");
    }
    resource
}

/// A Stripe event wrapping `object`.
pub fn event(id: &str, event_type: &str, created: i64, object: Value) -> Value {
    json!({
        "id": id,
        "object": "event",
        "api_version": "2025-03-31.basil",
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
        "data": { "object": object },
    })
}

/// A customer with `metadata`.
pub fn customer(id: &str, metadata: Value) -> Value {
    let mut customer = resource("customer");
    customer["id"] = json!(id);
    customer["metadata"] = metadata;
    customer
}

/// A subscription of `customer` to one `price` in `status`.
pub fn subscription(id: &str, customer: &str, status: &str, price: &str) -> Value {
    let mut subscription = resource("subscription");
    subscription["id"] = json!(id);
    subscription["customer"] = json!(customer);
    subscription["status"] = json!(status);
    subscription["cancel_at"] = Value::Null;
    subscription["canceled_at"] = Value::Null;
    subscription["ended_at"] = Value::Null;
    let item = &mut subscription["items"]["data"][0];
    item["price"]["id"] = json!(price);
    item["plan"]["id"] = json!(price);
    item["subscription"] = json!(id);
    subscription
}

/// An invoice of `customer` for `subscription`, paid or not.
pub fn invoice(
    id: &str,
    customer: &str,
    subscription: &str,
    paid: bool,
    attempt_count: u32,
) -> Value {
    let mut invoice = resource("invoice");
    invoice["id"] = json!(id);
    invoice["customer"] = json!(customer);
    invoice["status"] = json!(if paid { "paid" } else { "open" });
    invoice["amount_paid"] = if paid {
        invoice["amount_due"].clone()
    } else {
        json!(0)
    };
    invoice["attempt_count"] = json!(attempt_count);
    invoice["parent"] = json!({
        "type": "subscription_details",
        "quote_details": null,
        "subscription_details": { "metadata": {}, "subscription": subscription },
    });
    invoice
}
