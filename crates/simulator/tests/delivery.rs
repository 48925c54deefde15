//! `Chaos` delivery produces what Stripe's retries produce over hours: an event arriving after
//! dozens of later ones and after later steps (clock advances), and one event in flight twice
//! at once (`../shared/STRIPE.md`, delivery).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use subledger_simulator::delivery::{Deliverer, DeliveryMode, Target};
use subledger_stripe::{WebhookSecret, WebhookVerifier};

const SECRET: &str = "whsec_test";

/// What the receiver saw: event ids in arrival order, and the most requests in flight at once.
#[derive(Default)]
struct Seen {
    arrivals: Mutex<Vec<u64>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// Verifies signatures as Subledger does (a mangled delivery gets 400 and is retried), and
/// records what arrives.
fn receiver(seen: Arc<Seen>) -> Router {
    let verifier = Arc::new(WebhookVerifier::new(
        vec![WebhookSecret::new(SECRET)],
        WebhookVerifier::DEFAULT_TOLERANCE,
    ));
    Router::new().route(
        "/webhooks/stripe",
        post(move |headers: HeaderMap, body: Bytes| {
            let seen = Arc::clone(&seen);
            let verifier = Arc::clone(&verifier);
            async move {
                let signature = headers
                    .get("stripe-signature")
                    .and_then(|v| v.to_str().ok());
                if verifier
                    .verify(signature, &body, chrono::Utc::now().timestamp())
                    .is_err()
                {
                    return (StatusCode::BAD_REQUEST, "bad signature");
                }
                let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
                // Long enough for a twin request to arrive while this one is open.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let event: Value = serde_json::from_slice(&body).unwrap();
                let n = event["data"]["object"]["n"].as_u64().unwrap();
                seen.arrivals.lock().unwrap().push(n);
                seen.in_flight.fetch_sub(1, Ordering::SeqCst);
                (StatusCode::OK, "ok")
            }
        }),
    )
}

fn event(n: u64) -> Value {
    json!({ "id": format!("evt_{n}"), "object": "event", "type": "test", "data": { "object": { "n": n } } })
}

/// Events `0..400` in 40 steps of 10 (a step: what one clock advance emits), then a flush.
async fn deliver_story(seed: u64, mode: DeliveryMode) -> (Vec<u64>, usize, Deliverer) {
    let seen = Arc::new(Seen::default());
    let mut deliverer = Deliverer::new(
        mode,
        seed,
        WebhookSecret::new(SECRET),
        Target::Router(receiver(Arc::clone(&seen))),
    );
    for step in 0..40u64 {
        deliverer.enqueue((step * 10..step * 10 + 10).map(event).collect());
        deliverer.deliver(false).await.unwrap();
    }
    deliverer.deliver(true).await.unwrap();
    let arrivals = seen.arrivals.lock().unwrap().clone();
    (
        arrivals,
        seen.most_in_flight.load(Ordering::SeqCst),
        deliverer,
    )
}

#[tokio::test]
async fn chaos_delivers_some_events_after_dozens_of_later_ones_and_some_twice_at_once() {
    for seed in 1..=3 {
        let (arrivals, most_in_flight, deliverer) = deliver_story(seed, DeliveryMode::Chaos).await;
        // Every event arrives (some twice).
        let mut distinct = arrivals.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct, (0..400).collect::<Vec<_>>(), "seed {seed}");
        // How many later events arrived before each event's first arrival.
        let mut first_seen = vec![usize::MAX; 400];
        for (position, n) in arrivals.iter().enumerate() {
            let slot = &mut first_seen[usize::try_from(*n).unwrap()];
            *slot = (*slot).min(position);
        }
        let overtaken_by = |n: usize| {
            (n + 1..400)
                .filter(|later| first_seen[*later] < first_seen[n])
                .count()
        };
        let furthest = (0..400).map(overtaken_by).max().unwrap();
        assert!(
            furthest >= 30,
            "seed {seed}: no event arrived after dozens of later ones (at most {furthest})"
        );
        assert!(deliverer.stats().stragglers > 0, "seed {seed}");
        assert_eq!(
            most_in_flight, 2,
            "seed {seed}: a twin delivery was in flight at once"
        );
        assert!(deliverer.stats().concurrent_duplicates > 0, "seed {seed}");
    }
}

#[tokio::test]
async fn in_order_delivery_is_in_order_once_each() {
    let (arrivals, most_in_flight, _) = deliver_story(1, DeliveryMode::InOrder).await;
    assert_eq!(arrivals, (0..400).collect::<Vec<_>>());
    assert_eq!(most_in_flight, 1);
}
