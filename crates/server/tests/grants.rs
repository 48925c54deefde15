//! Operators' grants over HTTP: given and revoked once whatever the retries, refused by name
//! when they do not fit, explained, and counted only within their window, by Stripe time and
//! by what Subledger knew.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{json, Value};
use subledger_engine::clock::ManualClock;
use subledger_engine::Engine;
use subledger_store::scratch::ScratchDatabase;

use common::*;

const READ: &str = "sl_read_grants";

fn give(body: Value) -> axum::http::Request<axum::body::Body> {
    json_request("POST", "/v1/customers/cus_1/grants", body)
}

fn seats(limit: u64) -> Value {
    json!({
        "grant_id": "g_seats",
        "feature": "seats",
        "limit": limit,
        "mode": "add",
        "reason": "seat pack promised by sales",
        "granted_by": "dana",
    })
}

async fn subscribed(app: &axum::Router, engine: &Engine) {
    let created = subscription_event(
        "evt_1",
        "customer.subscription.created",
        now() - 60,
        "active",
        "price_1ProMonthly",
    );
    assert_eq!(send(app, signed_webhook(&created)).await.0, StatusCode::OK);
    engine.drain().await.unwrap();
}

#[tokio::test]
async fn a_grant_is_given_once_explained_and_revoked_once() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let name = test_db.name;
        let (engine, app) = start_with(&test_db, &[READ], &[ADMIN]).await;
        subscribed(&app, &engine).await;
        let uri = "/v1/customers/cus_1/entitlements";

        let (status, given) = send(&app, give(seats(5))).await;
        assert_eq!(status, StatusCode::CREATED, "{name}: {given}");
        assert_eq!(given["id"], json!("g_seats"));
        let by = given["granted_by"].as_str().unwrap();
        assert!(by.starts_with("dana (admin token "), "{by}");
        let (_, answer) = send(&app, admin_get(uri)).await;
        assert_eq!(
            answer["features"]["seats"],
            json!({"enabled": true, "limit": 15})
        );
        assert_eq!(answer["grants"][0]["id"], json!("g_seats"), "{name}");

        // A retry is the same grant, answered as first recorded.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let (status, again) = send(&app, give(seats(5))).await;
        assert_eq!((status, &again), (StatusCode::CREATED, &given), "{name}");
        let (status, conflict) = send(&app, give(seats(6))).await;
        assert_eq!(
            (status, &conflict["error"]),
            (StatusCode::CONFLICT, &json!("grant_conflict")),
            "{name}: {conflict}"
        );

        // Explained: which grant, who, why.
        let (_, explained) = send(
            &app,
            admin_get("/v1/customers/cus_1/entitlements/seats/explain"),
        )
        .await;
        let reason = explained["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["source"] == json!("grant"))
            .unwrap_or_else(|| panic!("{name}: no grant among the reasons: {explained:#}"));
        assert_eq!(reason["grant"]["id"], json!("g_seats"));
        let rule = reason["rule"].as_str().unwrap();
        assert!(
            rule.contains("adds seats: 5") && rule.contains("dana") && rule.contains("seat pack"),
            "{rule}"
        );
        assert_eq!(reason["evidence"][0]["event_type"], json!("GrantGiven"));
        let (_, timeline) = send(&app, admin_get("/v1/customers/cus_1/timeline")).await;
        assert!(timeline.to_string().contains("GrantGiven"), "{timeline}");

        // Revoked once; revoking again is no error; the id cannot be given again.
        for _ in 0..2 {
            let (status, revoked) = send(
                &app,
                json_request("DELETE", "/v1/customers/cus_1/grants/g_seats", json!({})),
            )
            .await;
            assert_eq!(
                (status, &revoked["revoked"]),
                (StatusCode::OK, &json!(true)),
                "{name}: {revoked}"
            );
        }
        let (_, answer) = send(&app, admin_get(uri)).await;
        assert_eq!(answer["features"]["seats"]["limit"], json!(10));
        assert!(answer.get("grants").is_none(), "{answer}");
        let (status, reused) = send(&app, give(seats(5))).await;
        assert_eq!(
            (status, &reused["error"]),
            (StatusCode::CONFLICT, &json!("grant_conflict"))
        );
        assert!(reused["message"].as_str().unwrap().contains("revoked"));
        let (status, missing) = send(
            &app,
            json_request("DELETE", "/v1/customers/cus_1/grants/g_nope", json!({})),
        )
        .await;
        assert_eq!(
            (status, &missing["error"]),
            (StatusCode::NOT_FOUND, &json!("grant_not_found"))
        );
        engine.close().await;
        test_db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn grants_that_do_not_fit_are_refused_by_name() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &[READ], &[ADMIN]).await;
    subscribed(&app, &engine).await;
    let with = |changes: Value| {
        let mut body = json!({
            "grant_id": "g_1",
            "feature": "sso",
            "enabled": true,
            "reason": "pilot",
        });
        for (key, value) in changes.as_object().unwrap() {
            if value.is_null() {
                body.as_object_mut().unwrap().remove(key);
            } else {
                body[key] = value.clone();
            }
        }
        body
    };
    for (changes, status, code, names) in [
        (
            json!({"feature": "teleport"}),
            422,
            "invalid_grant",
            "teleport",
        ),
        (
            json!({"enabled": null, "limit": 3}),
            422,
            "invalid_grant",
            "boolean feature",
        ),
        (
            json!({"feature": "seats"}),
            422,
            "invalid_grant",
            "metered feature",
        ),
        (
            json!({"enabled": null, "limit": 3, "mode": "add"}),
            422,
            "invalid_grant",
            "added to",
        ),
        (
            json!({"starts_at": "2026-02-01T00:00:00Z", "expires_at": "2026-01-01T00:00:00Z"}),
            422,
            "invalid_grant",
            "expires_at",
        ),
        (
            json!({"subscription": "sub_other"}),
            422,
            "subscription_not_found",
            "sub_other",
        ),
        (json!({"limit": 3}), 400, "invalid_body", "exactly one"),
        (json!({"enabled": null}), 400, "invalid_body", "exactly one"),
        (
            json!({"expires_at": "next week"}),
            400,
            "invalid_time",
            "expires_at",
        ),
        (json!({"grant_id": "a b"}), 400, "invalid_body", "grant_id"),
        (json!({"reason": " "}), 400, "invalid_body", "reason"),
        (json!({"mode": "multiply"}), 400, "invalid_body", "mode"),
        (json!({"colour": "red"}), 400, "invalid_body", "colour"),
    ] {
        let (got, body) = send(&app, give(with(changes.clone()))).await;
        assert_eq!(
            (got.as_u16(), body["error"].as_str().unwrap_or_default()),
            (status, code),
            "{changes}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap_or_default().contains(names),
            "{changes}: {body}"
        );
    }
    let (status, body) = send(
        &app,
        json_request("POST", "/v1/customers/cus_nobody/grants", with(json!({}))),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("customer_not_found"))
    );
    // A read token may not give one.
    let mut request = give(with(json!({})));
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {READ}").parse().unwrap());
    assert_eq!(send(&app, request).await.0, StatusCode::FORBIDDEN);
    // Nothing refused was recorded.
    let (_, answer) = send(&app, admin_get("/v1/customers/cus_1/entitlements")).await;
    assert!(answer.get("grants").is_none(), "{answer}");
    assert_eq!(answer["features"]["sso"]["enabled"], json!(true));
    engine.close().await;
}

/// A grant counts from its start until its expiry: the answer, its `Cache-Control`, `?at=`,
/// `?as_known_at=` and the change feed all see it come and go without any event.
#[tokio::test]
async fn a_grant_counts_within_its_window_and_its_expiry_is_a_change() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let name = test_db.name;
        // Whole seconds, as the expiry is written.
        let start = chrono::DateTime::from_timestamp(now(), 0).unwrap();
        let clock = Arc::new(ManualClock::new(start));
        let mut config = engine_config(&test_db, CATALOG);
        config.clock = clock.clone();
        config.answer_max_age = Duration::from_secs(30 * 86_400);
        let engine = Engine::start(config).await.unwrap();
        let app = app(&engine, &[READ], &[ADMIN]);
        subscribed(&app, &engine).await;
        // Given a minute after Subledger learned of the subscription.
        clock.advance(chrono::Duration::minutes(1));
        let rfc =
            |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let expires = start + chrono::Duration::hours(2);
        let (status, given) = send(
            &app,
            give(json!({
                "grant_id": "g_calls",
                "feature": "api_calls",
                "limit": 5000,
                "mode": "add",
                "expires_at": rfc(expires),
                "reason": "outage credit",
            })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{given}");
        let uri = "/v1/customers/cus_1/entitlements";
        let answer = send_raw(&app, admin_get(uri)).await;
        let max_age = answer.headers()["cache-control"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            max_age,
            format!("private, max-age={}", 2 * 3600 - 60),
            "{name}"
        );
        let (_, answer) = send(&app, admin_get(uri)).await;
        assert_eq!(answer["features"]["api_calls"]["limit"], json!(105_000));

        // Before it was given, by Stripe time and by what Subledger knew: no grant.
        let before = rfc(start + chrono::Duration::seconds(30));
        for basis in ["at", "as_known_at"] {
            let (_, then) = send(&app, admin_get(&format!("{uri}?{basis}={before}"))).await;
            assert_eq!(
                then["features"]["api_calls"]["limit"],
                json!(100_000),
                "{name} {basis}: {then}"
            );
        }
        let during = rfc(start + chrono::Duration::hours(1));
        let (_, then) = send(&app, admin_get(&format!("{uri}?at={during}"))).await;
        assert_eq!(then["features"]["api_calls"]["limit"], json!(105_000));

        // It expires with no event: the answer and the feed follow.
        clock.advance(chrono::Duration::hours(3));
        engine.project().await.unwrap();
        let (_, answer) = send(&app, admin_get(uri)).await;
        assert_eq!(
            answer["features"]["api_calls"]["limit"],
            json!(100_000),
            "{name}"
        );
        let (_, feed) = send(&app, admin_get("/v1/changes")).await;
        let last = feed["changes"].as_array().unwrap().last().unwrap().clone();
        assert_eq!(
            last["cause"],
            json!(format!("deadline:{}", rfc(expires))),
            "{name}: {feed:#}"
        );
        assert_eq!(last["entitlements"], answer);
        engine.close().await;
        test_db.cleanup().await.unwrap();
    }
}

async fn send_raw(
    app: &axum::Router,
    request: axum::http::Request<axum::body::Body>,
) -> axum::response::Response {
    use tower::ServiceExt;
    app.clone().oneshot(request).await.unwrap()
}
