//! Outbound notifications against a real receiver on loopback: every change arrives at least
//! once, signed, in order per customer, through receiver outages, answers that come too late,
//! and a server that dies and is replaced.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use subledger_engine::notify::NotifyConfig;
use subledger_engine::{Engine, Shutdown, WebhookSecret, WebhookVerifier};
use subledger_store::scratch::ScratchDatabase;
use tokio::task::JoinHandle;

use common::*;

const OLD_SECRET: &str = "notify-secret-old-0123456789abcdef0123";
const NEW_SECRET: &str = "notify-secret-new-0123456789abcdef0123";

/// How the receiver answers.
const ANSWER_OK: u8 = 0;
const ANSWER_UNAVAILABLE: u8 = 1;
/// 200, after the sender stopped waiting.
const ANSWER_LATE: u8 = 2;

#[derive(Default)]
struct Receiver {
    mode: AtomicU8,
    /// Every delivery that verified: (event id, customer, entitlements), in arrival order.
    received: Mutex<Vec<(String, String, Value)>>,
    refused: Mutex<usize>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // Either secret verifies it: the receiver may rotate.
    let signature = headers
        .get("subledger-signature")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    for secret in [OLD_SECRET, NEW_SECRET] {
        let verifier =
            WebhookVerifier::new(vec![WebhookSecret::new(secret)], Duration::from_secs(300));
        assert!(
            verifier
                .verify(signature.as_deref(), &body, chrono::Utc::now().timestamp())
                .is_ok(),
            "a notification signed wrongly: {signature:?}"
        );
    }
    let mode = receiver.mode.load(Ordering::SeqCst);
    if mode == ANSWER_UNAVAILABLE {
        *receiver.refused.lock().unwrap() += 1;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let event: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(event["type"], json!("entitlements.updated"));
    assert_eq!(event["id"], event["data"]["cursor"]);
    // Taken in as it arrives: a late answer is one the receiver acted on.
    receiver.received.lock().unwrap().push((
        event["id"].as_str().unwrap().to_owned(),
        event["data"]["customer"].as_str().unwrap().to_owned(),
        event["data"]["entitlements"].clone(),
    ));
    if mode == ANSWER_LATE {
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    StatusCode::OK
}

/// A server with its worker, projector and notifier, POSTing to `endpoint`.
async fn server(
    scratch: &ScratchDatabase,
    endpoint: &str,
    shutdown: &Shutdown,
) -> (Arc<Engine>, Router, Vec<JoinHandle<()>>) {
    let mut config = engine_config(scratch, CATALOG);
    let mut notify = NotifyConfig::new(
        vec![endpoint.to_owned()],
        vec![
            WebhookSecret::new(OLD_SECRET),
            WebhookSecret::new(NEW_SECRET),
        ],
    );
    notify.timeout = Duration::from_millis(300);
    notify.first_retry = Duration::from_millis(50);
    notify.lease = Duration::from_millis(500);
    config.notify = Some(notify);
    let engine = Engine::start(config).await.unwrap();
    let tasks = vec![
        engine.spawn_worker(shutdown.clone()),
        engine.spawn_projector(shutdown.clone()),
        engine.spawn_notifier(shutdown.clone()).unwrap(),
    ];
    let app = app(&engine, &[], &[ADMIN]);
    (engine, app, tasks)
}

async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gave up waiting: {what}");
}

/// Waits until `check` holds of the answers `app` serves.
async fn until_answered(app: &Router, what: &str, check: impl Fn(&Value) -> bool) {
    for _ in 0..400 {
        let (_, answers) = send(
            app,
            admin_get("/v1/entitlements?customers=cus_0,cus_1,cus_2,cus_3,cus_4,cus_5"),
        )
        .await;
        if check(&answers) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gave up waiting: {what}");
}

/// Waits until the feed holds every customer's current answer (the answers are served a
/// moment before their change is recorded), then until every change has reached the receiver.
async fn all_arrive(app: &Router, receiver: &Arc<Receiver>) {
    let mut recorded = Vec::new();
    let mut caught_up = false;
    for _ in 0..400 {
        recorded = feed(app).await;
        let (_, answers) = send(
            app,
            admin_get("/v1/entitlements?customers=cus_0,cus_1,cus_2,cus_3,cus_4,cus_5"),
        )
        .await;
        let current = answers["entitlements"].as_array().unwrap();
        let fed = current.iter().all(|answer| {
            recorded
                .iter()
                .rev()
                .find(|c| c["customer"] == answer["customer"])
                .is_some_and(|c| &c["entitlements"] == answer)
        });
        if fed {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        caught_up,
        "the feed never held every current answer: {recorded:#?}"
    );
    let cursors: Vec<String> = recorded
        .iter()
        .map(|c| c["cursor"].as_str().unwrap().to_owned())
        .collect();
    let receiver = Arc::clone(receiver);
    until("every recorded change at the receiver", move || {
        let got = receiver.received.lock().unwrap();
        cursors.iter().all(|c| got.iter().any(|r| &r.0 == c))
    })
    .await;
}

/// Every change recorded for customers, by cursor.
async fn feed(app: &Router) -> Vec<Value> {
    let (status, page) = send(app, admin_get("/v1/changes?limit=1000")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["changes"].as_array().unwrap().clone()
}

#[tokio::test]
async fn every_change_reaches_the_receiver_in_order_per_customer_through_outages_and_kills() {
    // Two servers one after the other on the same data: SQLite in a file, not in memory.
    for scratch in ScratchDatabase::shared().await.unwrap() {
        let name = scratch.name;
        let receiver = Arc::new(Receiver::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}/hooks", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/hooks", post(receive))
            .with_state(Arc::clone(&receiver));
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let (stop, shutdown) = Shutdown::new();
        let (engine, app, tasks) = server(&scratch, &endpoint, &shutdown).await;
        // The endpoint starts at the newest change: wait until its lanes exist.
        for _ in 0..400 {
            let (_, status) = send(&app, admin_get("/v1/notifications")).await;
            if status["lanes"].as_array().is_some_and(|l| l.len() == 8) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let t = now();
        let deliver = |event: Value| {
            let app = app.clone();
            async move { assert_eq!(send(&app, signed_webhook(&event)).await.0, StatusCode::OK) }
        };
        for i in 0..6 {
            let customer = format!("cus_{i}");
            deliver(fixtures::event(
                &format!("evt_c{i}"),
                "customer.created",
                t - 100,
                fixtures::customer(&customer, json!({})),
            ))
            .await;
            deliver(fixtures::event(
                &format!("evt_s{i}"),
                "customer.subscription.created",
                t - 50,
                fixtures::subscription(
                    &format!("sub_{i}"),
                    &customer,
                    "active",
                    "price_1ProMonthly",
                ),
            ))
            .await;
        }
        until_answered(&app, "six subscriptions", |a| {
            a["entitlements"].as_array().is_some_and(|all| {
                all.len() == 6 && all.iter().all(|e| e["plans"] == json!(["pro"]))
            })
        })
        .await;
        all_arrive(&app, &receiver).await;

        // The receiver is down: changes wait and are retried, then arrive.
        receiver.mode.store(ANSWER_UNAVAILABLE, Ordering::SeqCst);
        let hold = |id: &str| {
            json_request(
                "POST",
                "/v1/customers/cus_1/holds",
                json!({ "reason": "review", "hold_id": id }),
            )
        };
        assert_eq!(send(&app, hold("hold_a")).await.0, StatusCode::CREATED);
        let refused = Arc::clone(&receiver);
        until("refused twice", move || {
            *refused.refused.lock().unwrap() >= 2
        })
        .await;
        let (_, status) = send(&app, admin_get("/v1/notifications")).await;
        let attempts = status["attempts"].as_array().unwrap();
        assert!(
            attempts
                .iter()
                .any(|a| a["outcome"] == json!("failed") && a["status"] == json!(503)),
            "{name}: {status:#}"
        );
        assert!(status["lanes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["retrying"].is_string()));
        receiver.mode.store(ANSWER_OK, Ordering::SeqCst);
        all_arrive(&app, &receiver).await;

        // Answers that come after the sender gave up waiting: the change is sent again, and the
        // next one of that customer only after it.
        receiver.mode.store(ANSWER_LATE, Ordering::SeqCst);
        let lift = json_request("DELETE", "/v1/customers/cus_1/holds/hold_a", json!({}));
        send(&app, lift).await;
        assert_eq!(send(&app, hold("hold_b")).await.0, StatusCode::CREATED);
        let twice = Arc::clone(&receiver);
        until("a change sent again after a late answer", move || {
            let got = twice.received.lock().unwrap();
            let distinct: std::collections::BTreeSet<&String> = got.iter().map(|r| &r.0).collect();
            got.len() > distinct.len()
        })
        .await;
        receiver.mode.store(ANSWER_OK, Ordering::SeqCst);
        all_arrive(&app, &receiver).await;

        // The server dies mid-work; another takes over its lanes once their lease runs out.
        for task in tasks {
            task.abort();
        }
        let (_, second_app, second_tasks) = server(&scratch, &endpoint, &shutdown).await;
        for i in 0..6 {
            let event = fixtures::event(
                &format!("evt_u{i}"),
                "customer.subscription.updated",
                t - 10,
                fixtures::subscription(
                    &format!("sub_{i}"),
                    &format!("cus_{i}"),
                    "canceled",
                    "price_1ProMonthly",
                ),
            );
            assert_eq!(
                send(&second_app, signed_webhook(&event)).await.0,
                StatusCode::OK
            );
        }
        until_answered(&second_app, "six cancellations", |a| {
            a["entitlements"].as_array().is_some_and(|all| {
                all.len() == 6 && all.iter().all(|e| e["plans"] == json!(["free"]))
            })
        })
        .await;
        all_arrive(&second_app, &receiver).await;

        // Per customer, first arrivals follow the feed's order, and the last one is the answer.
        let received = receiver.received.lock().unwrap().clone();
        let number = |id: &str| id["chg_".len()..].parse::<i64>().unwrap();
        let mut first_seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        let mut seen = std::collections::BTreeSet::new();
        for (id, customer, _) in &received {
            if seen.insert(id.clone()) {
                first_seen
                    .entry(customer.clone())
                    .or_default()
                    .push(number(id));
            }
        }
        for (customer, numbers) in &first_seen {
            assert!(
                numbers.windows(2).all(|w| w[0] < w[1]),
                "{name}: {customer} out of order: {numbers:?}"
            );
        }
        assert!(
            received.len() > seen.len(),
            "{name}: the late answers made some arrive twice"
        );
        for i in 0..6 {
            let customer = format!("cus_{i}");
            let last = received.iter().rev().find(|r| r.1 == customer).unwrap();
            let (_, now) = send(
                &second_app,
                admin_get(&format!("/v1/customers/{customer}/entitlements")),
            )
            .await;
            let story: Vec<(String, Value, Value)> = received
                .iter()
                .filter(|r| r.1 == customer)
                .map(|r| {
                    (
                        r.0.clone(),
                        r.2["plans"].clone(),
                        r.2["subscriptions"][0]["status"].clone(),
                    )
                })
                .collect();
            let fed: Vec<(Value, Value, Value)> = feed(&second_app)
                .await
                .iter()
                .filter(|c| c["customer"] == json!(customer))
                .map(|c| {
                    (
                        c["cursor"].clone(),
                        c["entitlements"]["plans"].clone(),
                        c["cause"].clone(),
                    )
                })
                .collect();
            assert_eq!(
                last.2, now,
                "{name}: {customer}: received (id, plans, status) {story:?}, feed {fed:?}"
            );
        }
        stop.send(true).unwrap();
        for task in second_tasks {
            let _ = task.await;
        }
        let _ = engine;
        scratch.cleanup().await.unwrap();
    }
}
