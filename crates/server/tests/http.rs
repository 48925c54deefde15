//! The HTTP API through the router, on every configured backend, including an end-to-end run
//! where the background worker and projector turn signed webhooks into entitlements.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use subledger_engine::{Engine, Shutdown, WebhookSecret};
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe::fixtures;

mod common;

use common::*;

#[tokio::test]
async fn webhooks_are_acknowledged_once_stored_and_duplicates_say_so() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let (engine, app) = start(&test_db, &[]).await;
        let event = subscription_event(
            "evt_1",
            "customer.subscription.created",
            now(),
            "active",
            "price_1ProMonthly",
        );
        let (status, body) = send(&app, signed_webhook(&event)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                json!({ "received": true, "duplicate": false })
            )
        );
        let (status, body) = send(&app, signed_webhook(&event)).await;
        assert_eq!(
            (status, body),
            (
                StatusCode::OK,
                json!({ "received": true, "duplicate": true })
            )
        );
        engine.close().await;
        test_db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn bad_deliveries_get_a_400_naming_the_reason_and_store_nothing() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    let body = serde_json::to_vec(&subscription_event(
        "evt_1",
        "customer.subscription.created",
        now(),
        "active",
        "p",
    ))
    .unwrap();
    let good = WebhookSecret::new(SECRET).header(now(), &body);
    let cases: Vec<(Option<String>, Vec<u8>, &str)> = vec![
        (None, body.clone(), "missing_signature"),
        (
            Some("t=abc,v1=00".to_owned()),
            body.clone(),
            "malformed_signature_header",
        ),
        (
            Some(format!("t={},v0=00", now())),
            body.clone(),
            "no_v1_signature",
        ),
        (
            Some(WebhookSecret::new("whsec_other").header(now(), &body)),
            body.clone(),
            "signature_mismatch",
        ),
        (
            Some(WebhookSecret::new(SECRET).header(now() - 3600, &body)),
            body.clone(),
            "timestamp_outside_tolerance",
        ),
        (
            Some(good.clone()),
            b"tampered".to_vec(),
            "signature_mismatch",
        ),
        (
            Some(WebhookSecret::new(SECRET).header(now(), b"not json")),
            b"not json".to_vec(),
            "not_a_stripe_event",
        ),
    ];
    for (header, body, code) in cases {
        let mut request = Request::post("/webhooks/stripe");
        if let Some(header) = header {
            request = request.header("stripe-signature", header);
        }
        let (status, answer) = send(&app, request.body(Body::from(body)).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{code}: {answer}");
        assert_eq!(answer["error"], json!(code), "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(engine.inbox_stats().await.unwrap().pending, 0);
    engine.close().await;
}

#[tokio::test]
async fn an_oversized_body_gets_a_413() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    let body = vec![b' '; subledger_server::MAX_WEBHOOK_BODY + 1];
    let header = WebhookSecret::new(SECRET).header(now(), &body);
    let request = Request::post("/webhooks/stripe")
        .header("stripe-signature", header)
        .body(Body::from(body))
        .unwrap();
    let (status, answer) = send(&app, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(answer["error"], json!("payload_too_large"));
    engine.close().await;
}

#[tokio::test]
async fn an_unreachable_store_gets_a_503_so_stripe_retries() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    engine.close().await;
    let event = subscription_event(
        "evt_1",
        "customer.subscription.created",
        now(),
        "active",
        "p",
    );
    let (status, answer) = send(&app, signed_webhook(&event)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer["error"], json!("store_unavailable"));
    // The process lives (liveness, from memory); it is not ready (the store, bounded).
    assert_eq!(send(&app, get("/healthz")).await.0, StatusCode::OK);
    let (status, ready) = send(&app, get("/readyz")).await;
    assert_eq!(
        (status, ready["error"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!("store_unavailable"))
    );
}

/// Every `/v1` operation the OpenAPI document lists, with its path parameters filled in and a
/// query string that would be malformed: without a token each is a 401, never a 400 or an answer.
#[tokio::test]
async fn every_v1_operation_refuses_a_request_without_a_valid_token() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &["tok_a"], &[ADMIN]).await;
    let (_, document) = send(&app, get("/openapi.json")).await;
    let paths = document["paths"].as_object().unwrap();
    let mut checked = 0;
    for (path, operations) in paths.iter().filter(|(path, _)| path.starts_with("/v1/")) {
        let mut uri = String::new();
        for segment in path.split('/').skip(1) {
            uri.push('/');
            uri.push_str(if segment.starts_with('{') {
                "x"
            } else {
                segment
            });
        }
        uri.push_str("?at=not-a-time");
        for method in operations.as_object().unwrap().keys() {
            for authorization in [None, Some("Bearer tok_b"), Some("tok_a")] {
                let mut request = Request::builder()
                    .method(method.to_uppercase().as_str())
                    .uri(&uri)
                    .header("content-type", "application/json");
                if let Some(value) = authorization {
                    request = request.header("authorization", value);
                }
                let (status, body) = send(&app, request.body(Body::from("{}")).unwrap()).await;
                assert_eq!(
                    (status, body["error"].clone()),
                    (StatusCode::UNAUTHORIZED, json!("unauthorized")),
                    "{method} {uri} with {authorization:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} operations under /v1");
    engine.close().await;
}

/// Reads take a read or an admin token; every `/v1` operation that is not a read (each the
/// OpenAPI document lists) refuses a read token with 403 and takes an admin token; with no
/// admin token configured, writes are refused whatever is sent, while reads are open only
/// when no token at all is configured.
#[tokio::test]
async fn writes_need_an_admin_token_and_reads_take_either() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &["tok_read"], &[ADMIN]).await;
    let with = |method: &str, uri: &str, token: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(r#"{"reason": "review"}"#))
            .unwrap()
    };
    for token in ["tok_read", ADMIN] {
        let (status, body) =
            send(&app, with("GET", "/v1/customers/cus_x/entitlements", token)).await;
        assert_eq!(
            (status, body["error"].clone()),
            (StatusCode::NOT_FOUND, json!("customer_not_found")),
            "{token}"
        );
    }
    let (_, document) = send(&app, get("/openapi.json")).await;
    let mut writes = 0;
    for (path, operations) in document["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        let uri = path.replace('{', "x").replace('}', "");
        for method in operations
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| *m != "get")
        {
            let method = method.to_uppercase();
            let (status, body) = send(&app, with(&method, &uri, "tok_read")).await;
            assert_eq!(
                (status, body["error"].clone()),
                (StatusCode::FORBIDDEN, json!("forbidden")),
                "{method} {uri}"
            );
            let (status, body) = send(&app, with(&method, &uri, ADMIN)).await;
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {uri}: {body}");
            assert_ne!(status, StatusCode::FORBIDDEN, "{method} {uri}: {body}");
            writes += 1;
        }
    }
    assert!(writes >= 2, "only {writes} writes under /v1");
    engine.close().await;

    let (engine, open) = start_with(&test_db, &[], &[]).await;
    let (status, body) = send(&open, get("/v1/customers/cus_x/entitlements")).await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::NOT_FOUND, json!("customer_not_found"))
    );
    for token in ["anything", ADMIN] {
        let (status, body) = send(&open, with("POST", "/v1/customers/cus_x/holds", token)).await;
        assert_eq!(
            (status, body["error"].clone()),
            (StatusCode::FORBIDDEN, json!("admin_disabled"))
        );
    }
    engine.close().await;

    let (engine, admin_only) = start_with(&test_db, &[], &[ADMIN]).await;
    assert_eq!(
        send(&admin_only, get("/v1/customers/cus_x/entitlements"))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    engine.close().await;
}

#[tokio::test]
async fn the_api_requires_a_configured_token_but_webhooks_and_health_do_not() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &["tok_a", "tok_b"]).await;
    let (status, body) = send(&app, get("/v1/customers/cus_1/entitlements")).await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::UNAUTHORIZED, json!("unauthorized"))
    );
    let wrong = Request::get("/v1/customers/cus_1/entitlements")
        .header("authorization", "Bearer tok_c")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, wrong).await.0, StatusCode::UNAUTHORIZED);
    let right = Request::get("/v1/customers/cus_1/entitlements")
        .header("authorization", "Bearer tok_b")
        .body(Body::empty())
        .unwrap();
    // Authorized, and the customer is unknown.
    let (status, body) = send(&app, right).await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::NOT_FOUND, json!("customer_not_found"))
    );
    let (status, body) = send(&app, get("/healthz")).await;
    assert_eq!(
        (status, body["status"].clone()),
        (StatusCode::OK, json!("ok"))
    );
    let event = subscription_event(
        "evt_1",
        "customer.subscription.created",
        now(),
        "active",
        "p",
    );
    assert_eq!(send(&app, signed_webhook(&event)).await.0, StatusCode::OK);
    engine.close().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    let (status, body) = send(&app, get("/nope")).await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::NOT_FOUND, json!("not_found"))
    );
    let (status, body) = send(&app, get("/webhooks/stripe")).await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::METHOD_NOT_ALLOWED, json!("method_not_allowed"))
    );
    engine.close().await;
}

/// Waits for the background worker and projector to make `check` true.
async fn eventually(app: &Router, uri: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = send(app, get(uri)).await;
        if status == StatusCode::OK && check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting on {uri}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn signed_webhooks_change_what_the_entitlement_endpoint_returns() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let (engine, app) = start(&test_db, &[]).await;
        let (stop, shutdown) = Shutdown::new();
        let worker = engine.spawn_worker(shutdown.clone());
        let projector = engine.spawn_projector(shutdown);
        let uri = "/v1/customers/cus_1/entitlements";
        let t0 = now() - 60;

        let created = subscription_event(
            "evt_1",
            "customer.subscription.created",
            t0,
            "active",
            "price_1ProMonthly",
        );
        assert_eq!(send(&app, signed_webhook(&created)).await.0, StatusCode::OK);
        let paid = fixtures::event(
            "evt_2",
            "invoice.paid",
            t0 + 1,
            fixtures::invoice("in_1", "cus_1", "sub_1", true, 1),
        );
        assert_eq!(send(&app, signed_webhook(&paid)).await.0, StatusCode::OK);
        let body = eventually(&app, uri, |b| b["plans"] == json!(["pro"])).await;
        assert_eq!(body["customer"], json!("cus_1"));
        assert_eq!(body["subscriptions"][0]["id"], json!("sub_1"));
        assert_eq!(body["subscriptions"][0]["plan"], json!("pro"));
        assert_eq!(
            body["features"]["sso"],
            json!({ "enabled": true, "limit": null })
        );
        assert_eq!(
            body["features"]["seats"],
            json!({ "enabled": true, "limit": 10 })
        );

        let upgraded = subscription_event(
            "evt_3",
            "customer.subscription.updated",
            t0 + 10,
            "active",
            "price_team",
        );
        assert_eq!(
            send(&app, signed_webhook(&upgraded)).await.0,
            StatusCode::OK
        );
        eventually(&app, uri, |b| b["features"]["seats"]["limit"] == json!(50)).await;
        let (status, feature) = send(&app, get("/v1/customers/cus_1/entitlements/seats")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            feature,
            json!({ "customer": "cus_1", "feature": "seats", "enabled": true, "limit": 50 })
        );

        let deleted = subscription_event(
            "evt_4",
            "customer.subscription.deleted",
            t0 + 20,
            "canceled",
            "price_team",
        );
        assert_eq!(send(&app, signed_webhook(&deleted)).await.0, StatusCode::OK);
        // A stale update delivered after the deletion must not bring the plan back.
        let stale = subscription_event(
            "evt_5",
            "customer.subscription.updated",
            t0 + 15,
            "active",
            "price_team",
        );
        assert_eq!(send(&app, signed_webhook(&stale)).await.0, StatusCode::OK);
        let body = eventually(&app, uri, |b| b["plans"] == json!(["free"])).await;
        assert_eq!(body["subscriptions"][0]["status"], json!("canceled"));
        let (_, sso) = send(&app, get("/v1/customers/cus_1/entitlements/sso")).await;
        assert_eq!(sso["enabled"], json!(false));
        let (_, unknown) = send(&app, get("/v1/customers/cus_1/entitlements/teleportation")).await;
        assert_eq!(unknown["enabled"], json!(false));

        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, after) = send(&app, get(uri)).await;
        assert_eq!(
            after["plans"],
            json!(["free"]),
            "the stale update resurrected the plan"
        );

        stop.send(true).unwrap();
        worker.await.unwrap();
        projector.await.unwrap();
        engine.close().await;
        test_db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn the_past_can_be_asked_by_stripe_time_or_by_what_was_known_and_the_timeline_shows_both() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let (engine, app) = start(&test_db, &[]).await;
        let t0 = now() - 3600;
        let created = subscription_event(
            "evt_1",
            "customer.subscription.created",
            t0,
            "active",
            "price_1ProMonthly",
        );
        assert_eq!(send(&app, signed_webhook(&created)).await.0, StatusCode::OK);
        let canceled = subscription_event(
            "evt_2",
            "customer.subscription.deleted",
            t0 + 600,
            "canceled",
            "price_1ProMonthly",
        );
        assert_eq!(
            send(&app, signed_webhook(&canceled)).await.0,
            StatusCode::OK
        );
        engine.drain().await.unwrap();

        let at = |secs: i64| {
            chrono::DateTime::from_timestamp(secs, 0)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        };
        let uri = |query: String| format!("/v1/customers/cus_1/entitlements?{query}");
        let (status, before) = send(&app, get(&uri(format!("at={}", at(t0 - 1))))).await;
        assert_eq!(
            (status, before["error"].clone()),
            (StatusCode::NOT_FOUND, json!("customer_not_found")),
            "{}",
            test_db.name
        );
        let (_, during) = send(&app, get(&uri(format!("at={}", at(t0 + 60))))).await;
        assert_eq!(during["plans"], json!(["pro"]), "{}", test_db.name);
        let (_, after) = send(&app, get(&uri(format!("at={}", at(t0 + 601))))).await;
        assert_eq!(after["plans"], json!(["free"]), "{}", test_db.name);
        let (_, feature) = send(
            &app,
            get(&format!(
                "/v1/customers/cus_1/entitlements/sso?at={}",
                at(t0 + 60)
            )),
        )
        .await;
        assert_eq!(feature["enabled"], json!(true));
        // Subledger learned both facts just now: an hour ago it knew nothing.
        let (status, _) = send(&app, get(&uri(format!("as_known_at={}", at(now() - 1800))))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (_, known_now) = send(&app, get(&uri(format!("as_known_at={}", at(now() + 5))))).await;
        assert_eq!(known_now["plans"], json!(["free"]));

        for bad in ["at=yesterday", "as_known_at=2026-13-01T00:00:00Z"] {
            let (status, answer) = send(&app, get(&uri(bad.to_owned()))).await;
            assert_eq!(
                (status, answer["error"].clone()),
                (StatusCode::BAD_REQUEST, json!("invalid_time")),
                "{bad}"
            );
        }
        // Both: what Subledger knew at one time about another. Half an hour ago it knew
        // nothing of the subscription; now it knows it was active a minute after it started.
        let both = |known: i64| uri(format!("at={}&as_known_at={}", at(t0 + 60), at(known)));
        let (status, _) = send(&app, get(&both(now() - 1800))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{}", test_db.name);
        let (_, believed) = send(&app, get(&both(now() + 5))).await;
        assert_eq!(believed["plans"], json!(["pro"]), "{}", test_db.name);
        let (_, timeline_then) = send(
            &app,
            get(&format!(
                "/v1/customers/cus_1/timeline?at={}&as_known_at={}",
                at(t0 + 60),
                at(now() + 5)
            )),
        )
        .await;
        assert_eq!(
            timeline_then["events"].as_array().unwrap().len(),
            1,
            "only the start had happened then: {timeline_then}"
        );

        let (status, timeline) = send(&app, get("/v1/customers/cus_1/timeline")).await;
        assert_eq!(status, StatusCode::OK);
        let events = timeline["events"].as_array().unwrap();
        assert_eq!(events.len(), 2, "{timeline}");
        assert_eq!(events[0]["event_type"], json!("SubscriptionStarted"));
        assert_eq!(events[0]["stripe_event_id"], json!("evt_1"));
        assert_eq!(
            events[1]["stripe_event_type"],
            json!("customer.subscription.deleted")
        );
        assert_eq!(events[1]["occurred_at"], json!(at(t0 + 600)));
        assert!(events[1]["recorded_at"].is_string());
        let (status, _) = send(&app, get("/v1/customers/cus_nobody/timeline")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        engine.close().await;
        test_db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn product_services_can_ask_by_their_own_user_id() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    let t0 = now() - 600;
    let customer = |id: &str, created: i64, event_type: &str, user: &str| {
        fixtures::event(
            id,
            event_type,
            created,
            fixtures::customer("cus_1", json!({ "user_id": user })),
        )
    };
    send(
        &app,
        signed_webhook(&customer("evt_c1", t0, "customer.created", "u_1")),
    )
    .await;
    send(
        &app,
        signed_webhook(&subscription_event(
            "evt_s1",
            "customer.subscription.created",
            t0 + 1,
            "active",
            "price_1ProMonthly",
        )),
    )
    .await;
    engine.drain().await.unwrap();
    let (status, by_user) = send(&app, get("/v1/users/u_1/entitlements")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_user["customer"], json!("cus_1"));
    assert_eq!(by_user["plans"], json!(["pro"]));
    let (_, feature) = send(&app, get("/v1/users/u_1/entitlements/sso")).await;
    assert_eq!(feature["enabled"], json!(true));

    // The user id moves: the old one is no longer an answer.
    send(
        &app,
        signed_webhook(&customer("evt_c2", t0 + 2, "customer.updated", "u_2")),
    )
    .await;
    engine.drain().await.unwrap();
    let (status, moved) = send(&app, get("/v1/users/u_1/entitlements")).await;
    assert_eq!(
        (status, moved["error"].clone()),
        (StatusCode::NOT_FOUND, json!("user_not_found"))
    );
    assert_eq!(
        send(&app, get("/v1/users/u_2/entitlements")).await.0,
        StatusCode::OK
    );
    engine.close().await;
}

#[tokio::test]
async fn an_order_is_pending_until_stripe_says_it_succeeded() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    let intent = |status: &str| {
        let mut pi = fixtures::resource("payment_intent");
        pi["id"] = json!("pi_order");
        pi["status"] = json!(status);
        pi["metadata"] = json!({ "order_id": "order_42" });
        pi["last_payment_error"] = serde_json::Value::Null;
        pi
    };
    let t0 = now() - 60;
    send(
        &app,
        signed_webhook(&fixtures::event(
            "evt_p1",
            "payment_intent.created",
            t0,
            intent("requires_payment_method"),
        )),
    )
    .await;
    engine.drain().await.unwrap();
    let (status, order) = send(&app, get("/v1/orders/order_42")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(order["state"], json!("pending"));
    assert_eq!(order["payment_intent"], json!("pi_order"));
    send(
        &app,
        signed_webhook(&fixtures::event(
            "evt_p2",
            "payment_intent.succeeded",
            t0 + 5,
            intent("succeeded"),
        )),
    )
    .await;
    engine.drain().await.unwrap();
    let (_, order) = send(&app, get("/v1/orders/order_42")).await;
    assert_eq!(order["state"], json!("paid"));
    let (status, missing) = send(&app, get("/v1/orders/order_nope")).await;
    assert_eq!(
        (status, missing["error"].clone()),
        (StatusCode::NOT_FOUND, json!("order_not_found"))
    );
    engine.close().await;
}

#[tokio::test]
async fn operators_place_and_lift_holds() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
        let created = subscription_event(
            "evt_1",
            "customer.subscription.created",
            now() - 60,
            "active",
            "price_1ProMonthly",
        );
        send(&app, signed_webhook(&created)).await;
        engine.drain().await.unwrap();
        let uri = "/v1/customers/cus_1/entitlements";
        assert_eq!(send(&app, admin_get(uri)).await.1["plans"], json!(["pro"]));

        let (status, hold) = send(
            &app,
            json_request(
                "POST",
                "/v1/customers/cus_1/holds",
                json!({ "reason": "chargeback review", "hold_id": "hold_a" }),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{hold}");
        assert_eq!(hold["hold_id"], json!("hold_a"));
        let (_, held) = send(&app, admin_get(uri)).await;
        assert_eq!(held["plans"], json!(["free"]), "{}", test_db.name);
        assert_eq!(held["holds"][0]["reason"], json!("chargeback review"));
        // Retrying the same request places no second hold.
        send(
            &app,
            json_request(
                "POST",
                "/v1/customers/cus_1/holds",
                json!({ "reason": "chargeback review", "hold_id": "hold_a" }),
            ),
        )
        .await;
        assert_eq!(
            send(&app, admin_get(uri)).await.1["holds"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let (status, lifted) = send(
            &app,
            json_request("DELETE", "/v1/customers/cus_1/holds/hold_a", json!({})),
        )
        .await;
        assert_eq!(
            (status, lifted["lifted"].clone()),
            (StatusCode::OK, json!(true))
        );
        assert_eq!(send(&app, admin_get(uri)).await.1["plans"], json!(["pro"]));

        let (status, again) = send(
            &app,
            json_request("DELETE", "/v1/customers/cus_1/holds/hold_a", json!({})),
        )
        .await;
        assert_eq!(
            (status, again["error"].clone()),
            (StatusCode::NOT_FOUND, json!("hold_not_found"))
        );
        let (status, bad) = send(
            &app,
            json_request("POST", "/v1/customers/cus_1/holds", json!({ "why": "no" })),
        )
        .await;
        assert_eq!(
            (status, bad["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("invalid_body"))
        );
        let (status, bad_id) = send(
            &app,
            json_request(
                "POST",
                "/v1/customers/cus_1/holds",
                json!({ "reason": "x", "hold_id": "" }),
            ),
        )
        .await;
        assert_eq!(
            (status, bad_id["error"].clone()),
            (StatusCode::BAD_REQUEST, json!("invalid_body"))
        );
        assert!(
            bad_id["message"]
                .as_str()
                .is_some_and(|m| m.contains("hold_id")),
            "{bad_id}"
        );
        let (status, nobody) = send(
            &app,
            json_request(
                "POST",
                "/v1/customers/cus_nobody/holds",
                json!({ "reason": "x" }),
            ),
        )
        .await;
        assert_eq!(
            (status, nobody["error"].clone()),
            (StatusCode::NOT_FOUND, json!("customer_not_found"))
        );
        let (status, no_sub) = send(
            &app,
            json_request(
                "POST",
                "/v1/customers/cus_1/holds",
                json!({ "reason": "x", "subscription": "sub_nope" }),
            ),
        )
        .await;
        assert_eq!(
            (status, no_sub["error"].clone()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!("subscription_not_found")
            )
        );
        engine.close().await;
        test_db.cleanup().await.unwrap();
    }
}

#[tokio::test]
async fn a_decision_comes_with_its_reasons_and_the_stripe_events_behind_them() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
    let t0 = now() - 600;
    send(
        &app,
        signed_webhook(&subscription_event(
            "evt_s1",
            "customer.subscription.created",
            t0,
            "active",
            "price_1ProMonthly",
        )),
    )
    .await;
    engine.drain().await.unwrap();
    let (status, why) = send(
        &app,
        admin_get("/v1/customers/cus_1/entitlements/sso/explain"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(why["enabled"], json!(true));
    assert_eq!(why["reasons"][0]["source"], json!("subscription"));
    assert_eq!(why["reasons"][0]["plan"], json!("pro"));
    assert_eq!(
        why["reasons"][0]["rule"],
        json!("plan pro grants sso: true")
    );
    assert_eq!(why["reasons"][0]["subscription"], json!("sub_1"));
    assert_eq!(
        why["reasons"][0]["evidence"][0]["stripe_event_id"],
        json!("evt_s1")
    );

    send(
        &app,
        json_request(
            "POST",
            "/v1/customers/cus_1/holds",
            json!({ "reason": "abuse report", "hold_id": "hold_x" }),
        ),
    )
    .await;
    let (_, held) = send(
        &app,
        admin_get("/v1/customers/cus_1/entitlements/sso/explain"),
    )
    .await;
    assert_eq!(held["enabled"], json!(false));
    assert_eq!(held["blockers"][0]["kind"], json!("hold"));
    assert!(held["blockers"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("hold_x"));

    // The default plan is a reason too, and the past can be explained.
    let (_, api_calls) = send(
        &app,
        admin_get("/v1/customers/cus_1/entitlements/api_calls/explain"),
    )
    .await;
    assert_eq!(api_calls["reasons"][0]["source"], json!("default_plan"));
    assert_eq!(api_calls["limit"], json!(1000));
    let before_hold = chrono::DateTime::from_timestamp(t0 + 1, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, past) = send(
        &app,
        admin_get(&format!(
            "/v1/customers/cus_1/entitlements/sso/explain?at={before_hold}"
        )),
    )
    .await;
    assert_eq!(past["enabled"], json!(true), "{past}");
    // A status that grants nothing is named as Stripe names it.
    let incomplete = fixtures::event(
        "evt_s2",
        "customer.subscription.created",
        t0,
        fixtures::subscription("sub_2", "cus_2", "incomplete", "price_1ProMonthly"),
    );
    send(&app, signed_webhook(&incomplete)).await;
    engine.drain().await.unwrap();
    let (_, blocked) = send(
        &app,
        admin_get("/v1/customers/cus_2/entitlements/sso/explain"),
    )
    .await;
    assert_eq!(blocked["blockers"][0]["kind"], json!("status"), "{blocked}");
    assert!(
        blocked["blockers"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("subscription status incomplete grants nothing"),
        "{blocked}"
    );
    let (status, _) = send(
        &app,
        admin_get("/v1/customers/cus_nobody/entitlements/sso/explain"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    engine.close().await;
}

#[tokio::test]
async fn the_openapi_document_describes_every_route_the_router_serves() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start(&test_db, &[]).await;
    let (status, document) = send(&app, get("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (path, operations) in paths {
        for method in operations.as_object().unwrap().keys() {
            // Each documented operation exists: the router never answers "no such route".
            // (A stream never ends: its own tests read it.)
            if path.ends_with("/stream") {
                continue;
            }
            let uri = path.replace('{', "x").replace('}', "");
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let (_, answer) = send(&app, request).await;
            assert_ne!(answer["error"], json!("not_found"), "{method} {path}");
            assert_ne!(
                answer["error"],
                json!("method_not_allowed"),
                "{method} {path}"
            );
        }
    }
    for expected in [
        "/webhooks/stripe",
        "/v1/customers/{customer_id}/entitlements",
        "/v1/customers/{customer_id}/entitlements/{feature}/explain",
        "/v1/users/{user_id}/entitlements",
        "/v1/orders/{order_id}",
        "/v1/customers/{customer_id}/holds",
        "/v1/customers/{customer_id}/timeline",
        "/v1/accounts/{account}/customers/{customer_id}/entitlements",
        "/v1/accounts/{account}/users/{user_id}/entitlements",
        "/v1/accounts/{account}/orders/{order_id}",
        "/v1/accounts/{account}/customers/{customer_id}/holds/{hold_id}",
        "/v1/changes",
        "/v1/changes/stream",
    ] {
        assert!(paths.contains_key(expected), "{expected} is not documented");
    }
    // The feed covers every account: it has no per-account twin.
    assert!(!paths.contains_key("/v1/accounts/{account}/changes"));
    let account = &paths["/v1/accounts/{account}/customers/{customer_id}/entitlements"]["get"]
        ["parameters"][0];
    assert_eq!(
        (&account["name"], &account["in"]),
        (&json!("account"), &json!("path"))
    );
    let entitlements = &document["components"]["schemas"]["Entitlements"]["properties"];
    for property in [
        "customer",
        "subscriptions",
        "plans",
        "features",
        "dunning",
        "scheduled_changes",
        "holds",
    ] {
        assert!(
            entitlements.get(property).is_some(),
            "Entitlements.{property} is not documented"
        );
    }
    assert!(
        entitlements.get("valid_until").is_none(),
        "an internal field leaked into the API"
    );
    engine.close().await;
}

/// `/readyz` reports what waits in the inbox and how far the answers are behind the log; it
/// reads only the pending rows and the log's head. `/healthz` asks the store nothing.
#[tokio::test]
async fn readiness_reports_the_pending_inbox_and_the_projection_lag() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let (engine, app) = start(&test_db, &[]).await;
        let (status, ready) = send(&app, get("/readyz")).await;
        assert_eq!(status, StatusCode::OK, "{ready}");
        assert_eq!(ready["inbox"]["pending"], json!(0));
        assert_eq!(ready["projection"]["lag_events"], json!(0));
        for (n, id) in ["evt_r1", "evt_r2"].iter().enumerate() {
            let event = subscription_event(
                id,
                "customer.subscription.created",
                now() - 10 + i64::try_from(n).unwrap(),
                "active",
                "price_1ProMonthly",
            );
            assert_eq!(send(&app, signed_webhook(&event)).await.0, StatusCode::OK);
        }
        let (_, ready) = send(&app, get("/readyz")).await;
        assert_eq!(
            ready["inbox"]["pending"],
            json!(2),
            "{}: {ready}",
            test_db.name
        );
        assert!(
            ready["inbox"]["oldest_pending_age_seconds"]
                .as_f64()
                .unwrap()
                >= 0.0
        );
        while engine.process_inbox().await.unwrap().handled() > 0 {}
        // Applied, not yet projected: the answers are behind the log.
        let (_, ready) = send(&app, get("/readyz")).await;
        assert_eq!(ready["inbox"]["pending"], json!(0), "{ready}");
        assert!(
            ready["projection"]["lag_events"].as_i64().unwrap() > 0,
            "{ready}"
        );
        engine.drain().await.unwrap();
        let (_, ready) = send(&app, get("/readyz")).await;
        assert_eq!(ready["projection"]["lag_events"], json!(0), "{ready}");
        let (_, health) = send(&app, get("/healthz")).await;
        assert_eq!(
            health["projected_position"],
            ready["projection"]["position"]
        );
        engine.close().await;
    }
}

/// A handler that panics answers its request with a JSON 500; the router keeps answering.
#[tokio::test]
async fn a_panicking_handler_answers_500_in_json_and_the_server_lives() {
    use axum::routing::get as route_get;
    let app = subledger_server::contain_panics(
        Router::new()
            .route(
                "/boom",
                route_get(|| async {
                    panic!("a defect");
                    #[allow(unreachable_code)]
                    "never"
                }),
            )
            .route("/fine", route_get(|| async { "fine" })),
    );
    let (status, body) = send(&app, get("/boom")).await;
    assert_eq!(
        (status, body["error"].clone()),
        (StatusCode::INTERNAL_SERVER_ERROR, json!("internal_error"))
    );
    assert!(!body.to_string().contains("a defect"), "{body}");
    let (status, body) = send(&app, get("/fine")).await;
    assert_eq!(
        (status, body["raw"].clone()),
        (StatusCode::OK, json!("fine"))
    );
}

/// Stripe's docs, "Connect webhooks": an event of a connected account carries `account`.
fn in_account(account: &str, mut event: Value) -> Value {
    event["account"] = json!(account);
    event
}

/// A connected account's customers, users and orders are answered under
/// `/v1/accounts/{account}` and never mixed with the platform's, even with the same ids; the
/// platform's routes cannot be made to reach them; a connected account's lookup key selects
/// no plan.
#[tokio::test]
async fn connected_accounts_are_kept_apart_from_the_platform() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
        let t0 = now() - 600;
        let customer = |id: &str| {
            let object = fixtures::customer("cus_1", json!({ "user_id": "u_1" }));
            fixtures::event(id, "customer.created", t0, object)
        };
        let subscription = |id: &str, sub: &str, customer: &str, price: &str, key: Option<&str>| {
            let mut object = fixtures::subscription(sub, customer, "active", price);
            object["items"]["data"][0]["price"]["lookup_key"] = json!(key);
            fixtures::event(id, "customer.subscription.created", t0 + 1, object)
        };
        let intent = |id: &str| {
            let mut pi = fixtures::resource("payment_intent");
            pi["id"] = json!(id);
            pi["status"] = json!("succeeded");
            pi["customer"] = json!("cus_1");
            pi["metadata"] = json!({ "order_id": "order_42" });
            pi["last_payment_error"] = Value::Null;
            fixtures::event(&format!("evt_{id}"), "payment_intent.succeeded", t0 + 2, pi)
        };
        for event in [
            customer("evt_c_platform"),
            subscription(
                "evt_s_platform",
                "sub_p",
                "cus_1",
                "price_1ProMonthly",
                None,
            ),
            in_account("acct_1Shop", customer("evt_c_shop")),
            in_account(
                "acct_1Shop",
                subscription("evt_s_shop", "sub_s", "cus_1", "price_team", None),
            ),
            // The platform's `pro_monthly` lookup key on a price of another connected account.
            in_account(
                "acct_1Key",
                subscription(
                    "evt_s_key",
                    "sub_k",
                    "cus_k",
                    "price_its_own",
                    Some("pro_monthly"),
                ),
            ),
            intent("pi_platform"),
            in_account("acct_1Shop", intent("pi_shop")),
        ] {
            let (status, body) = send(&app, signed_webhook(&event)).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        engine.drain().await.unwrap();

        let (status, platform) = send(&app, admin_get("/v1/customers/cus_1/entitlements")).await;
        assert_eq!(status, StatusCode::OK, "{platform}");
        assert_eq!(platform["plans"], json!(["pro"]));
        assert!(platform.get("account").is_none(), "{platform}");
        let shop_uri = "/v1/accounts/acct_1Shop/customers/cus_1/entitlements";
        let (status, shop) = send(&app, admin_get(shop_uri)).await;
        assert_eq!(status, StatusCode::OK, "{shop}");
        assert_eq!(
            (&shop["customer"], &shop["account"], &shop["plans"]),
            (&json!("cus_1"), &json!("acct_1Shop"), &json!(["team"]))
        );
        let (_, seats) = send(&app, admin_get(&format!("{shop_uri}/seats"))).await;
        assert_eq!(
            (&seats["limit"], &seats["account"]),
            (&json!(50), &json!("acct_1Shop"))
        );
        let (_, key) = send(
            &app,
            admin_get("/v1/accounts/acct_1Key/customers/cus_k/entitlements"),
        )
        .await;
        assert_eq!(
            key["plans"],
            json!(["free"]),
            "a connected account's lookup key: {key}"
        );

        // Users and orders are names within an account.
        let (_, user) = send(&app, admin_get("/v1/users/u_1/entitlements")).await;
        assert_eq!(user["plans"], json!(["pro"]));
        let (_, user) = send(
            &app,
            admin_get("/v1/accounts/acct_1Shop/users/u_1/entitlements"),
        )
        .await;
        assert_eq!(
            (&user["account"], &user["plans"]),
            (&json!("acct_1Shop"), &json!(["team"]))
        );
        let (_, order) = send(&app, admin_get("/v1/orders/order_42")).await;
        assert_eq!(order["payment_intent"], json!("pi_platform"));
        let (_, order) = send(&app, admin_get("/v1/accounts/acct_1Shop/orders/order_42")).await;
        assert_eq!(
            (
                &order["payment_intent"],
                &order["order_id"],
                &order["customer"]
            ),
            (&json!("pi_shop"), &json!("order_42"), &json!("cus_1"))
        );

        // A hold on the shop's customer leaves the platform's alone.
        let hold = json!({ "hold_id": "hold_1", "reason": "fraud review" });
        let (status, placed) = send(
            &app,
            json_request(
                "POST",
                "/v1/accounts/acct_1Shop/customers/cus_1/holds",
                hold,
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{placed}");
        assert_eq!(placed["account"], json!("acct_1Shop"));
        engine.drain().await.unwrap();
        assert_eq!(
            send(&app, admin_get(shop_uri)).await.1["plans"],
            json!(["free"])
        );
        let (_, platform) = send(&app, admin_get("/v1/customers/cus_1/entitlements")).await;
        assert_eq!(platform["plans"], json!(["pro"]));
        let (_, timeline) = send(
            &app,
            admin_get("/v1/accounts/acct_1Shop/customers/cus_1/timeline"),
        )
        .await;
        assert_eq!(timeline["account"], json!("acct_1Shop"));
        assert_eq!(
            timeline["events"].as_array().map(Vec::len),
            Some(3),
            "{timeline}"
        );

        // The platform's routes cannot be made to name a connected account's customer, and
        // an account must be an account id.
        for (uri, status, error) in [
            (
                "/v1/customers/acct_1Shop%2Fcus_1/entitlements",
                StatusCode::BAD_REQUEST,
                "invalid_id",
            ),
            (
                "/v1/orders/acct_1Shop%2Forder_42",
                StatusCode::BAD_REQUEST,
                "invalid_id",
            ),
            (
                "/v1/customers/acct_1Shop/cus_1/entitlements",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "/v1/accounts/shop/customers/cus_1/entitlements",
                StatusCode::BAD_REQUEST,
                "invalid_account",
            ),
            (
                "/v1/accounts/acct_1Other/customers/cus_1/entitlements",
                StatusCode::NOT_FOUND,
                "customer_not_found",
            ),
            (
                "/v1/accounts/acct_1Other/users/u_1/entitlements",
                StatusCode::NOT_FOUND,
                "user_not_found",
            ),
            (
                "/v1/accounts/acct_1Other/orders/order_42",
                StatusCode::NOT_FOUND,
                "order_not_found",
            ),
        ] {
            let (got, body) = send(&app, admin_get(uri)).await;
            assert_eq!(
                (got, body["error"].as_str()),
                (status, Some(error)),
                "{uri}: {body}"
            );
        }
        engine.close().await;
    }
}

/// What a store holds, to show a refused request changed none of it.
async fn stored(engine: &Engine) -> (i64, i64, i64, String) {
    let inbox = engine.inbox_stats().await.unwrap();
    let ready = engine.readiness(Duration::from_secs(5)).await.unwrap();
    let views = serde_json::to_string(&engine.current_views().await).unwrap();
    (
        inbox.pending + inbox.processed + inbox.ignored,
        inbox.failing,
        ready.log_head,
        views,
    )
}

/// The bad-input table of the HTTP API: every endpoint, each way a caller can get it wrong.
/// Each answer is the status and JSON error code in the table, and nothing stored changes.
#[tokio::test]
async fn every_endpoint_refuses_bad_input_with_a_json_error_and_stores_nothing() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let (engine, app) = start_with(&test_db, &["tok_read"], &[ADMIN]).await;
        let event = subscription_event(
            "evt_1",
            "customer.subscription.created",
            now(),
            "active",
            "price_1ProMonthly",
        );
        assert_eq!(send(&app, signed_webhook(&event)).await.0, StatusCode::OK);
        engine.drain().await.unwrap();
        let before = stored(&engine).await;

        let body = serde_json::to_vec(&subscription_event(
            "evt_2",
            "customer.subscription.updated",
            now(),
            "canceled",
            "price_team",
        ))
        .unwrap();
        let secret = WebhookSecret::new(SECRET);
        let webhook = |signature: Option<String>, body: Vec<u8>| {
            let mut request =
                Request::post("/webhooks/stripe").header("content-type", "application/json");
            if let Some(signature) = signature {
                request = request.header("stripe-signature", signature);
            }
            request.body(Body::from(body)).unwrap()
        };
        let signed = |body: &[u8]| Some(secret.header(now(), body));
        let not_an_event = br#"{"id":"evt_3","object":"customer","type":"x","created":1,"livemode":false,"data":{"object":{}}}"#.to_vec();
        let request = |method: &str, uri: &str, token: Option<&str>, body: Option<&str>| {
            let mut request = Request::builder().method(method).uri(uri);
            if let Some(token) = token {
                request = request.header("authorization", format!("Bearer {token}"));
            }
            if body.is_some() {
                request = request.header("content-type", "application/json");
            }
            request
                .body(Body::from(body.unwrap_or_default().to_owned()))
                .unwrap()
        };
        let admin = Some(ADMIN);
        let hold = "/v1/customers/cus_1/holds";
        let cases: Vec<(&str, Request<Body>, StatusCode, &str)> = vec![
            (
                "webhook without a signature",
                webhook(None, body.clone()),
                StatusCode::BAD_REQUEST,
                "missing_signature",
            ),
            (
                "webhook with a garbled signature header",
                webhook(Some("t=abc,v1".to_owned()), body.clone()),
                StatusCode::BAD_REQUEST,
                "malformed_signature_header",
            ),
            (
                "webhook signed with another secret",
                webhook(
                    Some(WebhookSecret::new("whsec_other").header(now(), &body)),
                    body.clone(),
                ),
                StatusCode::BAD_REQUEST,
                "signature_mismatch",
            ),
            (
                "webhook signed an hour ago",
                webhook(Some(secret.header(now() - 3600, &body)), body.clone()),
                StatusCode::BAD_REQUEST,
                "timestamp_outside_tolerance",
            ),
            (
                "webhook whose body changed after signing",
                webhook(signed(&body), [&body[..], b" "].concat()),
                StatusCode::BAD_REQUEST,
                "signature_mismatch",
            ),
            (
                "webhook that is not JSON",
                webhook(signed(b"not json"), b"not json".to_vec()),
                StatusCode::BAD_REQUEST,
                "not_a_stripe_event",
            ),
            (
                "webhook that is not an event",
                webhook(signed(&not_an_event), not_an_event.clone()),
                StatusCode::BAD_REQUEST,
                "not_a_stripe_event",
            ),
            (
                "webhook over 1 MiB",
                webhook(
                    signed(&[b' '; 1024 * 1024 + 1]),
                    vec![b' '; 1024 * 1024 + 1],
                ),
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
            ),
            (
                "read without a token",
                request("GET", "/v1/customers/cus_1/entitlements", None, None),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                "read with an unknown token",
                request(
                    "GET",
                    "/v1/customers/cus_1/entitlements",
                    Some("tok_nope"),
                    None,
                ),
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                "malformed time",
                request(
                    "GET",
                    "/v1/customers/cus_1/entitlements?at=yesterday",
                    admin,
                    None,
                ),
                StatusCode::BAD_REQUEST,
                "invalid_time",
            ),
            (
                "two moments, one malformed",
                request(
                    "GET",
                    "/v1/customers/cus_1/entitlements/sso?at=2026-01-01T00:00:00Z&as_known_at=soon",
                    admin,
                    None,
                ),
                StatusCode::BAD_REQUEST,
                "invalid_time",
            ),
            (
                "unknown customer",
                request("GET", "/v1/customers/cus_nobody/entitlements", admin, None),
                StatusCode::NOT_FOUND,
                "customer_not_found",
            ),
            (
                "a path that is not UTF-8",
                request("GET", "/v1/customers/cus_%FF/entitlements", admin, None),
                StatusCode::BAD_REQUEST,
                "invalid_path",
            ),
            (
                "an account key through a platform route",
                request("GET", "/v1/customers/acct_1%2Fcus_1/timeline", admin, None),
                StatusCode::BAD_REQUEST,
                "invalid_id",
            ),
            (
                "an account that is no account id",
                request(
                    "GET",
                    "/v1/accounts/me/customers/cus_1/entitlements",
                    admin,
                    None,
                ),
                StatusCode::BAD_REQUEST,
                "invalid_account",
            ),
            (
                "unknown user",
                request("GET", "/v1/users/u_nobody/entitlements/sso", admin, None),
                StatusCode::NOT_FOUND,
                "user_not_found",
            ),
            (
                "explain for an unknown customer",
                request(
                    "GET",
                    "/v1/customers/cus_nobody/entitlements/sso/explain",
                    admin,
                    None,
                ),
                StatusCode::NOT_FOUND,
                "customer_not_found",
            ),
            (
                "timeline of an unknown customer",
                request("GET", "/v1/customers/cus_nobody/timeline", admin, None),
                StatusCode::NOT_FOUND,
                "customer_not_found",
            ),
            (
                "unknown order",
                request("GET", "/v1/orders/order_nobody", admin, None),
                StatusCode::NOT_FOUND,
                "order_not_found",
            ),
            (
                "hold with a read token",
                request("POST", hold, Some("tok_read"), Some(r#"{"reason":"r"}"#)),
                StatusCode::FORBIDDEN,
                "forbidden",
            ),
            (
                "hold without a body",
                request("POST", hold, admin, None),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                "hold whose body is not JSON",
                request("POST", hold, admin, Some("{reason")),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                "hold with a field of the wrong type",
                request("POST", hold, admin, Some(r#"{"reason":7}"#)),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                "hold without a reason",
                request("POST", hold, admin, Some(r#"{"reason":"  "}"#)),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                "hold with a bad hold_id",
                request(
                    "POST",
                    hold,
                    admin,
                    Some(r#"{"reason":"r","hold_id":"a b"}"#),
                ),
                StatusCode::BAD_REQUEST,
                "invalid_body",
            ),
            (
                "hold at a malformed time",
                request("POST", hold, admin, Some(r#"{"reason":"r","at":"soon"}"#)),
                StatusCode::BAD_REQUEST,
                "invalid_time",
            ),
            (
                "hold on a subscription the customer lacks",
                request(
                    "POST",
                    hold,
                    admin,
                    Some(r#"{"reason":"r","subscription":"sub_other"}"#),
                ),
                StatusCode::UNPROCESSABLE_ENTITY,
                "subscription_not_found",
            ),
            (
                "hold on an unknown customer",
                request(
                    "POST",
                    "/v1/customers/cus_nobody/holds",
                    admin,
                    Some(r#"{"reason":"r"}"#),
                ),
                StatusCode::NOT_FOUND,
                "customer_not_found",
            ),
            (
                "lifting a hold not in force",
                request("DELETE", "/v1/customers/cus_1/holds/hold_none", admin, None),
                StatusCode::NOT_FOUND,
                "hold_not_found",
            ),
            (
                "lifting at a malformed time",
                request(
                    "DELETE",
                    "/v1/customers/cus_1/holds/hold_none?at=later",
                    admin,
                    None,
                ),
                StatusCode::BAD_REQUEST,
                "invalid_time",
            ),
            (
                "unknown route",
                request("GET", "/v2/anything", admin, None),
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "wrong method",
                request("PUT", "/v1/customers/cus_1/entitlements", admin, None),
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
        ];
        let tried = cases.len();
        for (case, request, status, code) in cases {
            let (got, body) = send(&app, request).await;
            assert_eq!(
                (got, body["error"].as_str()),
                (status, Some(code)),
                "{}: {case}: {body}",
                test_db.name
            );
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{case}: {body}"
            );
        }
        engine.drain().await.unwrap();
        assert_eq!(
            stored(&engine).await,
            before,
            "{}: a refused request changed the store",
            test_db.name
        );
        println!(
            "{}: {tried} bad inputs refused, nothing stored",
            test_db.name
        );
        engine.close().await;
    }
}

/// The body of a request's answer, as text.
async fn text(app: &Router, request: Request<Body>) -> (StatusCode, String, Option<String>) {
    use tower::ServiceExt;
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&bytes).into_owned(),
        content_type,
    )
}

/// `GET /metrics`: an operator route (admin token) in Prometheus' text format, open on the
/// separate metrics router; every metric described once, the store's and the answers' gauges
/// read at the scrape, and the alert rules and the Grafana dashboard name only metrics
/// Subledger exports.
#[tokio::test]
async fn metrics_are_exported_for_prometheus_behind_an_admin_token() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &["tok_read"], &[ADMIN]).await;
    let event = subscription_event(
        "evt_m1",
        "customer.subscription.created",
        now(),
        "active",
        "price_1ProMonthly",
    );
    assert_eq!(send(&app, signed_webhook(&event)).await.0, StatusCode::OK);
    assert_eq!(send(&app, signed_webhook(&event)).await.0, StatusCode::OK);
    let forged = Request::post("/webhooks/stripe")
        .header("stripe-signature", "t=1,v1=00")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(send(&app, forged).await.0, StatusCode::BAD_REQUEST);
    engine.drain().await.unwrap();
    send(&app, admin_get("/v1/customers/cus_1/entitlements")).await;

    for (token, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("tok_read"), StatusCode::FORBIDDEN),
    ] {
        let mut request = Request::get("/metrics");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        assert_eq!(
            send(&app, request.body(Body::empty()).unwrap()).await.0,
            status
        );
    }
    let (status, exposition, content_type) = text(&app, admin_get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.is_some_and(|t| t.starts_with("text/plain; version=0.0.4")));
    for expected in [
        r#"subledger_webhooks_received_total{outcome="accepted",reason=""}"#,
        r#"subledger_webhooks_received_total{outcome="duplicate",reason=""}"#,
        r#"subledger_webhooks_received_total{outcome="rejected",reason="signature_mismatch"}"#,
        r#"subledger_inbox_rows_total{outcome="applied"}"#,
        r#"subledger_customers{dunning_state="ok"} 1"#,
        r#"subledger_customers{dunning_state="past_due"} 0"#,
        "subledger_inbox_pending 0",
        "subledger_projection_lag_events 0",
        "subledger_store_up 1",
        r#"subledger_http_requests_total{route="/v1/customers/{customer_id}/entitlements",method="GET",status="200"}"#,
        "subledger_http_request_duration_seconds_bucket{",
        "subledger_ack_to_projection_seconds_bucket{",
        "# HELP subledger_inbox_pending Stripe events stored and not applied yet.",
        "# TYPE subledger_webhooks_received_total counter",
        "process_resident_memory_bytes ",
    ] {
        assert!(
            exposition.contains(expected),
            "{expected} missing from:\n{exposition}"
        );
    }
    // Each request's id comes back: the caller's, or (for anything but a read without one) a
    // new one, which is also the webhook's correlation id.
    use tower::ServiceExt;
    let echoed = app
        .clone()
        .oneshot(
            Request::get("/v1/customers/cus_1/entitlements")
                .header("authorization", format!("Bearer {ADMIN}"))
                .header("x-request-id", "req-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "req-42");
    let hold = json_request(
        "POST",
        "/v1/customers/cus_1/holds",
        json!({ "reason": "r" }),
    );
    let given = app.clone().oneshot(hold).await.unwrap();
    assert!(
        given.headers()["x-request-id"].len() >= 32,
        "{:?}",
        given.headers()
    );

    // The open router of --metrics-addr answers without a token, and only /metrics.
    let open = subledger_server::metrics_router(engine.clone());
    let (status, body, _) = text(&open, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("subledger_store_up 1"));
    assert_eq!(
        send(&open, get("/v1/customers/cus_1/entitlements")).await.0,
        StatusCode::NOT_FOUND
    );

    // The alert rules and the dashboard query only metrics Subledger exports.
    let known: Vec<&str> = subledger_server::metrics::METRICS
        .iter()
        .map(|(name, _, _)| *name)
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/subledger.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let mut named = 0;
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("subledger_") || word.starts_with("process_")) {
                continue;
            }
            let metric = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix).filter(|m| known.contains(m)))
                .unwrap_or(word);
            assert!(
                known.contains(&metric),
                "{file} names {word}, which Subledger does not export"
            );
            named += 1;
        }
        assert!(named >= 7, "{file} names only {named} metrics");
    }
    engine.close().await;
}
