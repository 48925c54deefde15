//! The simulated REST API answers as Stripe does: form-encoded requests, Stripe's JSON, lists,
//! errors and idempotency, test clocks that advance billing, and `delivery_success`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use subledger_simulator::api::{router, Account, Forwarding};
use subledger_simulator::delivery::Target;
use subledger_simulator::RetryPolicy;
use subledger_stripe::WebhookSecret;
use tower::ServiceExt;

const KEY: &str = "Bearer sk_test_simulator";

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    form: &str,
    idempotency_key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", KEY)
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(form.to_owned())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// A webhook receiver that acknowledges everything but invoice events.
fn receiver() -> Router {
    Router::new().route(
        "/webhooks/stripe",
        post(|body: String| async move {
            if body.contains("\"type\":\"invoice.") {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::OK
            }
        }),
    )
}

/// Attaches a test card and makes it the customer's default, as a client would.
async fn attach_default_card(app: &Router, customer: &str, card: &str) {
    let (status, pm) = call(
        app,
        "POST",
        &format!("/v1/payment_methods/{card}/attach"),
        &format!("customer={customer}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{pm}");
    let pm_id = pm["id"].as_str().unwrap();
    call(
        app,
        "POST",
        &format!("/v1/customers/{customer}"),
        &format!("invoice_settings[default_payment_method]={pm_id}"),
        None,
    )
    .await;
}

/// A new test clock at 2026-01-01 and a customer on it: `(clock, customer)`.
async fn clock_and_customer(app: &Router) -> (String, String) {
    let (_, clock) = call(
        app,
        "POST",
        "/v1/test_helpers/test_clocks",
        "frozen_time=1767225600",
        None,
    )
    .await;
    let clock_id = clock["id"].as_str().unwrap().to_owned();
    let (_, customer) = call(
        app,
        "POST",
        "/v1/customers",
        &format!("test_clock={clock_id}"),
        None,
    )
    .await;
    (clock_id, customer["id"].as_str().unwrap().to_owned())
}

fn app() -> Router {
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let forwarding = Forwarding {
        target: Target::Router(receiver()),
        secret: WebhookSecret::new("whsec_api_test"),
    };
    router(Account::new(start, RetryPolicy::default(), Some(forwarding)).shared())
}

#[tokio::test]
async fn a_test_clock_drives_a_subscription_through_the_rest_api() {
    let app = app();
    let (status, clock) = call(
        &app,
        "POST",
        "/v1/test_helpers/test_clocks",
        "frozen_time=1767225600&name=ci",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{clock}");
    let clock_id = clock["id"].as_str().unwrap().to_owned();
    assert_eq!(clock["status"], "ready");

    let (_, price) = call(&app, "POST", "/v1/prices", "unit_amount=2900&currency=usd&recurring[interval]=month&lookup_key=pro_monthly&product_data[name]=Pro", None).await;
    let price_id = price["id"].as_str().unwrap().to_owned();
    let (_, customer) = call(
        &app,
        "POST",
        "/v1/customers",
        &format!("test_clock={clock_id}&metadata[user_id]=u_1"),
        None,
    )
    .await;
    let customer_id = customer["id"].as_str().unwrap().to_owned();
    assert_eq!(customer["metadata"]["user_id"], "u_1");
    attach_default_card(&app, &customer_id, "pm_card_visa").await;

    let (status, subscription) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!("customer={customer_id}&items[0][price]={price_id}"),
        Some("sub-1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{subscription}");
    assert_eq!(subscription["status"], "active");
    let subscription_id = subscription["id"].as_str().unwrap().to_owned();

    // The same key and parameters replay the first answer; other parameters are refused.
    let (_, replay) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!("customer={customer_id}&items[0][price]={price_id}"),
        Some("sub-1"),
    )
    .await;
    assert_eq!(replay["id"], subscription_id.as_str());
    let (status, refused) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!("customer={customer_id}&items[0][price]={price_id}&items[0][quantity]=2"),
        Some("sub-1"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["type"], "idempotency_error");

    let (status, advanced) = call(
        &app,
        "POST",
        &format!("/v1/test_helpers/test_clocks/{clock_id}/advance"),
        &format!("frozen_time={}", 1_767_225_600 + 32 * 86_400),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{advanced}");
    let (_, invoices) = call(
        &app,
        "GET",
        &format!("/v1/invoices?subscription={subscription_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(invoices["object"], "list");
    let statuses: Vec<&str> = invoices["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["paid", "paid"]);

    // Clock customers are listed only when their clock is named, as on Stripe.
    let (_, hidden) = call(&app, "GET", "/v1/customers", "", None).await;
    assert_eq!(hidden["data"].as_array().unwrap().len(), 0);
    let (_, listed) = call(
        &app,
        "GET",
        &format!("/v1/customers?test_clock={clock_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(listed["data"][0]["id"], customer_id.as_str());

    let (_, canceled) = call(
        &app,
        "DELETE",
        &format!("/v1/subscriptions/{subscription_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(canceled["status"], "canceled");
    let (_, default_list) = call(
        &app,
        "GET",
        &format!("/v1/subscriptions?customer={customer_id}"),
        "",
        None,
    )
    .await;
    assert!(
        default_list["data"].as_array().unwrap().is_empty(),
        "canceled subscriptions need status=all"
    );
    let (_, all) = call(
        &app,
        "GET",
        &format!("/v1/subscriptions?customer={customer_id}&status=all"),
        "",
        None,
    )
    .await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1);

    // The receiver refused every invoice event: those are the failed deliveries.
    let (_, failed) = call(
        &app,
        "GET",
        "/v1/events?delivery_success=false&limit=100",
        "",
        None,
    )
    .await;
    let failed = failed["data"].as_array().unwrap();
    assert!(!failed.is_empty());
    assert!(failed
        .iter()
        .all(|e| e["type"].as_str().unwrap().starts_with("invoice.")));
    let (_, page) = call(&app, "GET", "/v1/events?limit=3", "", None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    assert_eq!(page["has_more"], true);
    let newest = page["data"][0]["id"].as_str().unwrap();
    let (_, event) = call(&app, "GET", &format!("/v1/events/{newest}"), "", None).await;
    assert_eq!(event["object"], "event");
}

#[tokio::test]
async fn errors_come_in_stripes_shape() {
    let app = app();
    let (status, missing) = call(&app, "GET", "/v1/customers/cus_nope", "", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(missing["error"]["code"], "resource_missing");
    let (status, invalid) =
        call(&app, "POST", "/v1/subscriptions", "items[0][price]=p", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(invalid["error"]["param"], "customer");
    // A paid subscription for a customer without a payment method (STRIPE.md, signup).
    let (_, price) = call(
        &app,
        "POST",
        "/v1/prices",
        "unit_amount=2900&currency=usd&recurring[interval]=month",
        None,
    )
    .await;
    let (_, customer) = call(&app, "POST", "/v1/customers", "", None).await;
    let body = format!(
        "customer={}&items[0][price]={}",
        customer["id"].as_str().unwrap(),
        price["id"].as_str().unwrap()
    );
    let (status, refused) = call(&app, "POST", "/v1/subscriptions", &body, None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"]["type"], "invalid_request_error");
    assert_eq!(refused["error"]["code"], "resource_missing");
    let unauthenticated = Request::get("/v1/customers").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(unauthenticated).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// Card errors are HTTP 402 `card_error` with `code` and `decline_code` (Stripe's API
/// reference, errors): a declining test card is refused when attached, and
/// `payment_behavior=error_if_incomplete` refuses a first payment that would fail and creates
/// nothing. A paused subscription resumes through `/resume`, and `/v1/invoices/{id}/pay`
/// pays an open invoice.
#[tokio::test]
async fn card_errors_are_402_and_paused_subscriptions_resume() {
    let app = app();
    let (clock_id, customer_id) = clock_and_customer(&app).await;
    let (_, price) = call(
        &app,
        "POST",
        "/v1/prices",
        "unit_amount=2900&currency=usd&recurring[interval]=month&product_data[name]=Pro",
        None,
    )
    .await;
    let price_id = price["id"].as_str().unwrap().to_owned();

    let (status, refused) = call(
        &app,
        "POST",
        "/v1/payment_methods/pm_card_chargeDeclinedExpiredCard/attach",
        &format!("customer={customer_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["error"]["type"], "card_error");
    assert_eq!(refused["error"]["code"], "expired_card");
    assert_eq!(refused["error"]["decline_code"], Value::Null);

    attach_default_card(&app, &customer_id, "pm_card_chargeCustomerFail").await;
    let (status, refused) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!("customer={customer_id}&items[0][price]={price_id}&payment_behavior=error_if_incomplete"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["error"]["decline_code"], "generic_decline");
    let (_, listed) = call(
        &app,
        "GET",
        &format!("/v1/subscriptions?customer={customer_id}&status=all&test_clock={clock_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(listed["data"].as_array().map(Vec::len), Some(0), "{listed}");

    let (status, bad) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!("customer={customer_id}&items[0][price]={price_id}&payment_behavior=sometimes"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    assert_eq!(bad["error"]["param"], "payment_behavior");

    let (_, subscription) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!("customer={customer_id}&items[0][price]={price_id}&trial_period_days=7&trial_settings[end_behavior][missing_payment_method]=pause"),
        None,
    )
    .await;
    assert_eq!(
        subscription["trial_settings"]["end_behavior"]["missing_payment_method"],
        "pause"
    );
    let subscription_id = subscription["id"].as_str().unwrap().to_owned();
    let (status, early) = call(
        &app,
        "POST",
        &format!("/v1/subscriptions/{subscription_id}/resume"),
        "",
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{early}: only a paused subscription resumes"
    );

    let (_, resumed) = call(
        &app,
        "POST",
        &format!("/v1/subscriptions/{subscription_id}/resume"),
        "",
        Some("resume-1"),
    )
    .await;
    assert_eq!(
        resumed["error"]["type"], "invalid_request_error",
        "still trialing"
    );

    // A customer without any card: the trial ends paused; with a card it resumes.
    let (_, other) = call(
        &app,
        "POST",
        "/v1/customers",
        &format!("test_clock={clock_id}"),
        None,
    )
    .await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    let (_, paused) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!("customer={other_id}&items[0][price]={price_id}&trial_period_days=7&trial_settings[end_behavior][missing_payment_method]=pause"),
        None,
    )
    .await;
    let paused_id = paused["id"].as_str().unwrap().to_owned();
    let eight_days_later = 1_767_225_600 + 8 * 86_400;
    call(
        &app,
        "POST",
        &format!("/v1/test_helpers/test_clocks/{clock_id}/advance"),
        &format!("frozen_time={eight_days_later}"),
        None,
    )
    .await;
    let (_, now) = call(
        &app,
        "GET",
        &format!("/v1/subscriptions/{paused_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(now["status"], "paused", "{now}");
    attach_default_card(&app, &other_id, "pm_card_visa").await;
    let (status, resumed) = call(
        &app,
        "POST",
        &format!("/v1/subscriptions/{paused_id}/resume"),
        "",
        Some("resume-2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["status"], "active");

    // The first customer's trial ended with the failing card: the renewal failed. Paying the
    // invoice again attempts it, and the request answers the card error.
    let (_, failing) = call(
        &app,
        "GET",
        &format!("/v1/subscriptions/{subscription_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(failing["status"], "past_due", "{failing}");
    let invoice = failing["latest_invoice"].as_str().unwrap().to_owned();
    let (status, unpaid) = call(
        &app,
        "POST",
        &format!("/v1/invoices/{invoice}/pay"),
        "",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{unpaid}");
    assert_eq!(unpaid["error"]["decline_code"], "generic_decline");
    let (_, still) = call(&app, "GET", &format!("/v1/invoices/{invoice}"), "", None).await;
    assert_eq!(still["status"], "open");
    assert_eq!(still["attempt_count"], 2);
    let (status, missing) = call(&app, "POST", "/v1/invoices/in_nothing/pay", "", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
}

/// Test clocks through REST (Stripe's docs, "Test clocks"): an advance answers `advancing`
/// with its target, reads `ready` afterwards, and one beyond two intervals of the shortest
/// subscription is refused naming `frozen_time`. Schedules (API reference, "Subscription
/// schedules"): created from a subscription, updated with a next phase, released on request.
#[tokio::test]
async fn clock_advances_are_limited_and_schedules_release_on_request() {
    let app = app();
    let (clock_id, customer_id) = clock_and_customer(&app).await;
    let price = |amount: u32| {
        format!("unit_amount={amount}&currency=usd&recurring[interval]=month&product_data[name]=P{amount}")
    };
    let (_, pro) = call(&app, "POST", "/v1/prices", &price(2900), None).await;
    let (_, basic) = call(&app, "POST", "/v1/prices", &price(900), None).await;
    attach_default_card(&app, &customer_id, "pm_card_visa").await;
    let (_, subscription) = call(
        &app,
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={customer_id}&items[0][price]={}",
            pro["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    let subscription_id = subscription["id"].as_str().unwrap().to_owned();

    let advance = format!("/v1/test_helpers/test_clocks/{clock_id}/advance");
    // Jan 1 + two months is Mar 1: a day further is refused.
    let (status, refused) = call(&app, "POST", &advance, "frozen_time=1772409600", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert_eq!(refused["error"]["param"], "frozen_time");
    let (status, advancing) = call(&app, "POST", &advance, "frozen_time=1768435200", None).await;
    assert_eq!(status, StatusCode::OK, "{advancing}");
    assert_eq!(advancing["status"], "advancing");
    assert_eq!(
        advancing["status_details"]["advancing"]["target_frozen_time"],
        1_768_435_200
    );
    let (_, ready) = call(
        &app,
        "GET",
        &format!("/v1/test_helpers/test_clocks/{clock_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["frozen_time"], 1_768_435_200);

    let (status, schedule) = call(
        &app,
        "POST",
        "/v1/subscription_schedules",
        &format!("from_subscription={subscription_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{schedule}");
    let schedule_id = schedule["id"].as_str().unwrap().to_owned();
    assert_eq!(schedule["status"], "active");
    let (status, again) = call(
        &app,
        "POST",
        "/v1/subscription_schedules",
        &format!("from_subscription={subscription_id}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{again}");
    let (_, updated) = call(
        &app,
        "POST",
        &format!("/v1/subscription_schedules/{schedule_id}"),
        &format!(
            "phases[1][items][0][price]={}",
            basic["id"].as_str().unwrap()
        ),
        None,
    )
    .await;
    assert_eq!(updated["phases"].as_array().unwrap().len(), 2);
    let (status, released) = call(
        &app,
        "POST",
        &format!("/v1/subscription_schedules/{schedule_id}/release"),
        "",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{released}");
    assert_eq!(released["status"], "released");
    assert_eq!(released["released_subscription"], subscription_id.as_str());
    let (_, after) = call(
        &app,
        "GET",
        &format!("/v1/subscriptions/{subscription_id}"),
        "",
        None,
    )
    .await;
    assert_eq!(after["schedule"], Value::Null);
    let (status, twice) = call(
        &app,
        "POST",
        &format!("/v1/subscription_schedules/{schedule_id}/release"),
        "",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{twice}");
}

/// A call made for connected account `account` (the `Stripe-Account` header).
async fn call_as(
    app: &Router,
    account: &str,
    method: &str,
    uri: &str,
    form: &str,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", KEY)
        .header("stripe-account", account)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// Stripe's docs, "Making API calls for connected accounts": with `Stripe-Account` a request
/// acts in that account; each account's customers, lists and events are its own, and another
/// account's object is `No such …` (404).
#[tokio::test]
async fn connected_accounts_see_only_their_own_objects() {
    let start = chrono::DateTime::from_timestamp(1_767_225_600, 0).unwrap();
    let app = router(Account::new(start, RetryPolicy::default(), None).shared());
    let (status, platform) =
        call(&app, "POST", "/v1/customers", "metadata[user_id]=u_1", None).await;
    assert_eq!(status, StatusCode::OK, "{platform}");
    let (status, shop) = call_as(
        &app,
        "acct_1Shop",
        "POST",
        "/v1/customers",
        "metadata[user_id]=u_1",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{shop}");
    let (platform, shop) = (
        platform["id"].as_str().unwrap(),
        shop["id"].as_str().unwrap(),
    );

    let ids = |list: &Value| -> Vec<String> {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, listed) = call(&app, "GET", "/v1/customers", "", None).await;
    assert_eq!(ids(&listed), [platform]);
    let (_, listed) = call_as(&app, "acct_1Shop", "GET", "/v1/customers", "").await;
    assert_eq!(ids(&listed), [shop]);
    let (_, listed) = call_as(&app, "acct_1Other", "GET", "/v1/customers", "").await;
    assert!(ids(&listed).is_empty());

    // Another account's customer cannot be read or changed.
    let (status, error) = call(&app, "GET", &format!("/v1/customers/{shop}"), "", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{error}");
    assert_eq!(error["error"]["code"], "resource_missing");
    let (status, _) = call_as(
        &app,
        "acct_1Shop",
        "GET",
        &format!("/v1/customers/{platform}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        &app,
        "POST",
        &format!("/v1/customers/{shop}"),
        "metadata[x]=y",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, found) = call_as(
        &app,
        "acct_1Shop",
        "GET",
        &format!("/v1/customers/{shop}"),
        "",
    )
    .await;
    assert_eq!((status, found["id"].as_str()), (StatusCode::OK, Some(shop)));

    // Events: the connected account's carry `account` and are listed in it only.
    let (_, events) = call_as(&app, "acct_1Shop", "GET", "/v1/events", "").await;
    let events = events["data"].as_array().unwrap().clone();
    assert!(!events.is_empty());
    assert!(
        events.iter().all(|e| e["account"] == "acct_1Shop"),
        "{events:?}"
    );
    let (_, events) = call(&app, "GET", "/v1/events", "", None).await;
    assert!(events["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e.get("account").is_none()));

    // A list filtered by another account's customer finds no such customer.
    let (status, _) = call(
        &app,
        "GET",
        &format!("/v1/subscriptions?customer={shop}"),
        "",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Only customers are made in a connected account here; nothing is made by mistake in the
    // platform's instead.
    let (status, error) = call_as(
        &app,
        "acct_1Shop",
        "POST",
        "/v1/subscriptions",
        &format!("customer={shop}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (status, _) = call_as(&app, "not-an-account", "GET", "/v1/customers", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
