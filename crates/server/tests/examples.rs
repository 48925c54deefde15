//! The README's Python example (`examples/python/subledger_check.py`, standard library only)
//! against a real server: a check, the change feed, and a notification's signature. Without
//! `python3` the test says so and passes, except in CI, where it must run.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use axum::http::StatusCode;
use serde_json::json;
use subledger_engine::WebhookSecret;
use subledger_store::scratch::ScratchDatabase;

use common::*;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/python/subledger_check.py")
}

fn python(args: &[&str]) -> Option<(i32, String, String)> {
    match Command::new("python3").args(args).output() {
        Ok(out) => Some((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        Err(error) if std::env::var_os("CI").is_some() => {
            panic!("python3 is needed in CI: {error}")
        }
        Err(error) => {
            eprintln!("skipped: python3 cannot be run ({error})");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_checks_reads_the_feed_and_verifies_notifications() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    let subscribed = subscription_event(
        "evt_1",
        "customer.subscription.created",
        now() - 60,
        "active",
        "price_1ProMonthly",
    );
    assert_eq!(
        send(&app, signed_webhook(&subscribed)).await.0,
        StatusCode::OK
    );
    engine.drain().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let script = example().display().to_string();

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            python(&args)
        })
    };
    let Some((code, out, err)) = run(vec![
        script.clone(),
        base.clone(),
        "cus_1".into(),
        "seats".into(),
    ])
    .await
    .unwrap() else {
        return;
    };
    assert_eq!((code, out.trim()), (0, "yes (limit 10)"), "{err}");
    let (code, out, _) = run(vec![
        script.clone(),
        base.clone(),
        "cus_1".into(),
        "audit_log".into(),
    ])
    .await
    .unwrap()
    .unwrap();
    assert_eq!((code, out.trim()), (1, "no"));
    let (code, _, err) = run(vec![
        script.clone(),
        base.clone(),
        "cus_nobody".into(),
        "sso".into(),
    ])
    .await
    .unwrap()
    .unwrap();
    assert_eq!(code, 2);
    assert!(
        err.contains("404") && err.contains("customer_not_found"),
        "{err}"
    );
    let (code, out, err) = run(vec![script.clone(), base.clone(), "--changes".into()])
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|line| line.ends_with("cus_1 pro")), "{out}");

    // A notification signed by Subledger verifies with either secret, and not with another.
    let body = serde_json::to_vec(
        &json!({"id": "chg_1", "type": "entitlements.updated", "created": 1, "data": {}}),
    )
    .unwrap();
    let t = now();
    let header = subledger_engine::notify::signature(
        &[
            WebhookSecret::new("old-secret"),
            WebhookSecret::new("new-secret"),
        ],
        t,
        &body,
    );
    let check = format!(
        "import sys; sys.path.insert(0, {dir:?}); import subledger_check as s\n\
         body = {body:?}.encode()\n\
         print(s.verify_notification(['new-secret'], {header:?}, body)['id'])\n\
         try:\n    s.verify_notification(['other'], {header:?}, body)\nexcept ValueError as e:\n    print('refused:', e)\n",
        dir = example().parent().unwrap().display().to_string(),
        body = String::from_utf8(body.clone()).unwrap(),
    );
    let (code, out, err) = run(vec!["-c".into(), check]).await.unwrap().unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "chg_1\nrefused: no signature matches\n");
    engine.close().await;
}
