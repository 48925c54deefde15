//! The client's local copy answers as the server does: after every scenario file, filled by
//! the bulk read and kept current by the stream; and with the fallback when Subledger cannot
//! be reached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use subledger_client::{Config, Entitlements, Fallback};
use subledger_engine::Engine;
use subledger_scenario::format::files_in;
use subledger_scenario::{parse_file, run, AtTheEnd, RunOptions};
use subledger_server::ApiTokens;
use subledger_simulator::delivery::DeliveryMode;

fn number(cursor: &str) -> u64 {
    cursor["chg_".len()..].parse().unwrap()
}

/// Waits until the copy has applied change `last` (or gives up after 10 s).
async fn caught_up(copy: &Entitlements, last: i64) -> bool {
    let last = u64::try_from(last).unwrap();
    for _ in 0..1000 {
        if copy.is_synced() && copy.cursor().is_some_and(|c| number(&c) >= last) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Every feature of every customer, locally and from the server; the differences.
fn differences(engine: &Engine, copy: &Entitlements, customers: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for customer in customers {
        let Some(answer) = engine.entitlements(customer) else {
            continue;
        };
        let answer: Value = serde_json::from_slice(&answer.json().unwrap()).unwrap();
        for (feature, value) in answer["features"].as_object().unwrap() {
            let local = copy.feature(customer, feature);
            let (enabled, limit) = (value["enabled"].as_bool().unwrap(), value["limit"].as_u64());
            if (local.enabled, local.limit) != (enabled, limit) {
                found.push(format!(
                    "{customer}.{feature}: locally {local:?}, served enabled={enabled} limit={limit:?}"
                ));
            }
        }
    }
    found
}

async fn compare(engine: Arc<Engine>) -> Vec<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = subledger_server::router(Arc::clone(&engine), ApiTokens::none());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    engine.project().await.unwrap();
    let customers: Vec<String> = engine
        .current_views()
        .await
        .iter()
        .map(|view| view.customer_id.as_str().to_owned())
        .collect();
    let copy = Entitlements::start(Config::new(&base)).unwrap();
    let mut failures = Vec::new();
    if !caught_up(&copy, engine.last_change().await.unwrap()).await {
        failures.push(format!(
            "the local copy did not catch up: at {:?}",
            copy.cursor()
        ));
    }
    failures.extend(differences(&engine, &copy, &customers));

    // A change after the copy synced reaches it through the stream.
    if let Some(customer) = customers.first() {
        engine
            .place_hold(
                customer,
                subledger_engine::NewHold {
                    hold_id: "hold_client_test".to_owned(),
                    reason: "client test".to_owned(),
                    ..subledger_engine::NewHold::default()
                },
                "client-test",
            )
            .await
            .unwrap();
        engine.project().await.unwrap();
        if !caught_up(&copy, engine.last_change().await.unwrap()).await {
            failures.push(format!(
                "the hold on {customer} did not reach the local copy"
            ));
        }
        failures.extend(differences(&engine, &copy, std::slice::from_ref(customer)));
    }
    server.abort();
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_copy_answers_as_the_server_after_every_scenario() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let check = AtTheEnd(Arc::new(|engine| Box::pin(compare(engine))));
    let files = files_in(&dir).unwrap();
    assert!(files.len() > 20, "the scenario files: {files:?}");
    for file in files {
        let scenario = parse_file(&file).unwrap();
        let options = RunOptions {
            delivery: DeliveryMode::InOrder,
            seed: 0,
            database_url: None,
            at_the_end: Some(check.clone()),
        };
        let report = run(&scenario, &options).await.unwrap();
        assert!(report.passed(), "{}", report.render());
    }
}

#[tokio::test]
async fn without_subledger_the_fallback_answers() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let copy = Entitlements::start(
        Config::new(&format!("http://127.0.0.1:{port}"))
            .fallback(Fallback::new().enabled("api_calls", Some(1000))),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!copy.is_synced());
    assert!(copy.can("cus_anyone", "api_calls"));
    assert_eq!(copy.limit("cus_anyone", "api_calls"), Some(1000));
    assert!(!copy.can("cus_anyone", "sso"));
}
