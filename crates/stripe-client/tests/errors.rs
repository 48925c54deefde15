//! Error classes and idempotency, against the simulator's REST API.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use subledger_simulator::api::{router, Account};
use subledger_simulator::RetryPolicy;
use subledger_stripe_client::{ApiError, ApiKey, StripeApi};
use tokio::net::TcpListener;

async fn simulated_stripe() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(Account::new(chrono::Utc::now(), RetryPolicy::default(), None).shared());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/")
}

#[tokio::test]
async fn failures_are_classified_by_stripes_error_types() {
    let base = simulated_stripe().await;
    let refused = StripeApi::new(&ApiKey::new("sk_live_not_for_tests"), Some(&base), "t").unwrap();
    assert_eq!(
        refused.test_clock("clock_x").await,
        Err(ApiError::Authentication)
    );

    let api = StripeApi::new(&ApiKey::new("sk_test_ok"), Some(&base), "t").unwrap();
    match api.subscription("sub_missing").await {
        Err(ApiError::InvalidRequest { message, .. }) => {
            assert!(message.contains("sub_missing"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    match api.create_price("p", -100, "usd", false, None, "x").await {
        Err(ApiError::InvalidRequest { message, .. }) => {
            assert!(message.contains("negative"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_same_key_never_creates_twice_and_a_reused_key_is_refused() {
    let base = simulated_stripe().await;
    let api = StripeApi::new(&ApiKey::new("sk_test_ok"), Some(&base), "run-1").unwrap();
    let clock = api
        .create_test_clock("clock", 1_767_225_600, "c")
        .await
        .unwrap();
    let first = api
        .create_customer("customer:a", &clock.id, HashMap::new())
        .await
        .unwrap();
    let again = api
        .create_customer("customer:a", &clock.id, HashMap::new())
        .await
        .unwrap();
    assert_eq!(
        first, again,
        "a retried create must not make a second customer"
    );
    let metadata = HashMap::from([("k".to_owned(), "v".to_owned())]);
    assert!(matches!(
        api.create_customer("customer:a", &clock.id, metadata).await,
        Err(ApiError::Idempotency(_))
    ));
    // Another run namespace is another key.
    let other = StripeApi::new(&ApiKey::new("sk_test_ok"), Some(&base), "run-2").unwrap();
    assert_ne!(
        other
            .create_customer("customer:a", &clock.id, HashMap::new())
            .await
            .unwrap(),
        first
    );
}

#[test]
fn keys_never_print() {
    let key = ApiKey::new("sk_test_supersecret");
    assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    assert!(key.is_test_mode());
    assert!(!ApiKey::new("sk_live_x").is_test_mode());
}

/// A Stripe that accepts connections and never answers: every attempt ends at the request
/// timeout and the call fails as unavailable, rather than holding its caller (a worker) for
/// ever.
#[tokio::test]
async fn a_stripe_that_never_answers_times_out_instead_of_hanging() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let api = StripeApi::new(
        &ApiKey::new("sk_test_ok"),
        Some(&format!("http://{addr}/")),
        "t",
    )
    .unwrap()
    .with_request_timeout(std::time::Duration::from_millis(200));
    let started = std::time::Instant::now();
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        api.subscription("sub_1"),
    )
    .await
    .expect("the call hung");
    assert_eq!(answer, Err(ApiError::Unavailable("timed out".to_owned())));
    // Four attempts of 200 ms with backoffs of 0.5, 1 and 2 s between them.
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
