//! The entitlement change feed: `GET /v1/changes` and `GET /v1/changes/stream`, on every
//! configured store, with several servers sharing one PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use subledger_engine::clock::ManualClock;
use subledger_engine::{Engine, WebhookSecret};
use subledger_store::scratch::ScratchDatabase;

use common::*;

/// Every change after `after` (`None`: from the first), page by page.
async fn changes(app: &Router, after: Option<&str>) -> (Vec<Value>, Option<String>) {
    let mut all = Vec::new();
    let mut cursor = after.map(str::to_owned);
    loop {
        let uri = match &cursor {
            Some(cursor) => format!("/v1/changes?limit=2&after={cursor}"),
            None => "/v1/changes?limit=2".to_owned(),
        };
        let (status, page) = send(app, admin_get(&uri)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        all.extend(page["changes"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if page["has_more"] != json!(true) {
            return (all, cursor);
        }
    }
}

fn customer_event(id: &str, customer: &str, created: i64) -> Value {
    fixtures::event(
        id,
        "customer.created",
        created,
        fixtures::customer(customer, json!({})),
    )
}

#[tokio::test]
async fn changes_are_listed_once_in_order_and_resumed_by_cursor() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let name = test_db.name;
        let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
        let (empty, cursor) = changes(&app, None).await;
        assert!(empty.is_empty() && cursor.is_none(), "{name}");

        let subscribed = subscription_event(
            "evt_1",
            "customer.subscription.created",
            now() - 60,
            "active",
            "price_1ProMonthly",
        );
        for event in [
            customer_event("evt_0", "cus_1", now() - 90),
            subscribed.clone(),
        ] {
            send(&app, signed_webhook(&event)).await;
            engine.drain().await.unwrap();
        }
        let (first, cursor) = changes(&app, None).await;
        let plans: Vec<&Value> = first.iter().map(|c| &c["entitlements"]["plans"]).collect();
        assert_eq!(
            plans,
            [&json!(["free"]), &json!(["pro"])],
            "{name}: {first:#?}"
        );
        assert!(first.iter().all(|c| c["customer"] == json!("cus_1")));
        assert!(
            first[1]["cause"].as_str().unwrap().starts_with("log:"),
            "{name}"
        );
        assert_eq!(cursor.as_deref(), first[1]["cursor"].as_str());

        // A redelivery, and a fact that changes no answer, record nothing.
        send(&app, signed_webhook(&subscribed)).await;
        let mut renamed = fixtures::customer("cus_1", json!({ "note": "vip" }));
        renamed["email"] = json!("ops@example.com");
        send(
            &app,
            signed_webhook(&fixtures::event(
                "evt_2",
                "customer.updated",
                now() - 30,
                renamed,
            )),
        )
        .await;
        engine.drain().await.unwrap();
        let (none, same) = changes(&app, cursor.as_deref()).await;
        assert!(none.is_empty(), "{name}: {none:#?}");
        assert_eq!(same, cursor, "{name}: nothing newer keeps the cursor");

        // An operator's hold is a change too; resuming from the cursor gives only it.
        let (status, _) = send(
            &app,
            json_request(
                "POST",
                "/v1/customers/cus_1/holds",
                json!({ "reason": "chargeback review", "hold_id": "hold_a" }),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        engine.drain().await.unwrap();
        let (held, _) = changes(&app, cursor.as_deref()).await;
        assert_eq!(held.len(), 1, "{name}: {held:#?}");
        assert_eq!(held[0]["entitlements"]["plans"], json!(["free"]));
        assert_eq!(held[0]["entitlements"]["holds"][0]["id"], json!("hold_a"));

        // The whole feed again, from the start: the same changes, the same cursors.
        let (again, _) = changes(&app, None).await;
        assert_eq!(again.len(), 3, "{name}");
        assert_eq!(again[..2], first[..], "{name}");
        engine.close().await;
    }
}

#[tokio::test]
async fn a_bad_cursor_or_limit_gets_a_400_naming_the_parameter() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
    send(
        &app,
        signed_webhook(&customer_event("evt_0", "cus_1", now())),
    )
    .await;
    engine.drain().await.unwrap();
    for (query, code, names) in [
        ("after=tomorrow", "invalid_cursor", "after"),
        ("after=chg_", "invalid_cursor", "after"),
        ("after=chg_-1", "invalid_cursor", "after"),
        ("after=chg_99999", "unknown_cursor", "after"),
        ("limit=0", "invalid_limit", "limit"),
        ("limit=1001", "invalid_limit", "limit"),
        ("limit=ten", "invalid_limit", "limit"),
    ] {
        let (status, body) = send(&app, admin_get(&format!("/v1/changes?{query}"))).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!(code)),
            "{query}: {body}"
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(&format!("`{names}`")),
            "{query}: {body}"
        );
    }
    let mut resume = admin_get("/v1/changes/stream");
    resume
        .headers_mut()
        .insert("last-event-id", "chg_99999".parse().unwrap());
    let (status, body) = send(&app, resume).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("unknown_cursor"))
    );
    // Reads need a token when tokens are configured, as every /v1 route does.
    let (status, _) = send(&app, get("/v1/changes")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    engine.close().await;
}

/// The next Server-Sent Event of `body` that carries data, within a few seconds.
async fn next_event(body: &mut Body) -> (String, Value) {
    let mut text = String::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
        if let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                event
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{name}:")))
                    .map(|v| v.trim().to_owned())
            };
            if let (Some(id), Some(data)) = (field("id"), field("data")) {
                assert_eq!(field("event").as_deref(), Some("entitlements.updated"));
                return (id, serde_json::from_str(&data).unwrap());
            }
        }
    }
}

#[tokio::test]
async fn the_stream_starts_from_now_or_resumes_after_the_last_event_id() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
    for (i, customer) in ["cus_a", "cus_b"].iter().enumerate() {
        send(
            &app,
            signed_webhook(&customer_event(&format!("evt_{i}"), customer, now())),
        )
        .await;
    }
    engine.drain().await.unwrap();
    let (before, _) = changes(&app, None).await;
    assert_eq!(before.len(), 2);

    use tower::ServiceExt;
    let live = app
        .clone()
        .oneshot(admin_get("/v1/changes/stream"))
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    assert_eq!(
        live.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut live = live.into_body();
    // It opens by naming where it starts, with no data: the last change so far.
    let opening = tokio::time::timeout(Duration::from_secs(10), live.frame())
        .await
        .expect("the opening block")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let opening = String::from_utf8_lossy(&opening).into_owned();
    assert!(
        opening
            .lines()
            .any(|line| line == format!("id: {}", before[1]["cursor"].as_str().unwrap()))
            && !opening.contains("data:"),
        "{opening:?}"
    );
    let mut resumed = admin_get("/v1/changes/stream");
    resumed.headers_mut().insert(
        "last-event-id",
        before[0]["cursor"].as_str().unwrap().parse().unwrap(),
    );
    let mut resumed = app.clone().oneshot(resumed).await.unwrap().into_body();

    // Resuming gives what came after the cursor, then what comes next; a stream from now
    // gives only what comes next.
    let (id, change) = next_event(&mut resumed).await;
    assert_eq!(
        (id.as_str(), &change),
        (before[1]["cursor"].as_str().unwrap(), &before[1])
    );
    send(
        &app,
        signed_webhook(&customer_event("evt_c", "cus_c", now())),
    )
    .await;
    engine.drain().await.unwrap();
    let (id_live, change_live) = next_event(&mut live).await;
    let (id_resumed, change_resumed) = next_event(&mut resumed).await;
    assert_eq!(change_live["customer"], json!("cus_c"));
    assert_eq!((id_live, change_live), (id_resumed, change_resumed));
    engine.close().await;
}

/// A change whose stored answer is damaged (by hand: this build never writes one) is never
/// passed on as a change with no answer: the list and the bulk read refuse with a 500 naming
/// it, and a stream ends at it saying why.
#[tokio::test]
async fn a_damaged_change_is_refused_by_name_not_passed_on_empty() {
    let test_db = ScratchDatabase::sqlite_file().await.unwrap();
    let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
    for (i, customer) in ["cus_a", "cus_b"].iter().enumerate() {
        send(
            &app,
            signed_webhook(&customer_event(&format!("evt_{i}"), customer, now())),
        )
        .await;
    }
    engine.drain().await.unwrap();
    let (before, _) = changes(&app, None).await;
    assert_eq!(before.len(), 2);
    let subledger_store::Database::Sqlite(pool) = &test_db.database else {
        unreachable!("a SQLite scratch database")
    };
    sqlx::query("UPDATE entitlement_changes SET answer = 'null' WHERE seq = 2")
        .execute(pool)
        .await
        .unwrap();
    for path in [
        "/v1/changes",
        "/v1/changes?after=chg_1",
        "/v1/entitlements?changed_since=chg_0",
    ] {
        let (status, body) = send(&app, admin_get(path)).await;
        assert_eq!(
            (status, &body["error"]),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                &json!("unreadable_change")
            ),
            "{path}: {body}"
        );
        assert!(
            body["message"].as_str().unwrap().contains("chg_2"),
            "{path}: {body}"
        );
    }
    // Before it, the feed reads as it did.
    let (status, page) = send(&app, admin_get("/v1/changes?limit=1")).await;
    assert_eq!((status, &page["changes"][0]), (StatusCode::OK, &before[0]));

    let mut resume = admin_get("/v1/changes/stream");
    resume
        .headers_mut()
        .insert("last-event-id", "chg_1".parse().unwrap());
    let body = send_raw(&app, resume).await.into_body();
    let text = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("the stream ends at the damaged change")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("change chg_2 cannot be read") && !text.contains("data:"),
        "{text}"
    );
    engine.close().await;
    test_db.cleanup().await.unwrap();
}

/// The response itself, headers and all.
async fn send_raw(app: &Router, request: Request<Body>) -> axum::response::Response {
    use tower::ServiceExt;
    app.clone().oneshot(request).await.unwrap()
}

fn with_header(mut request: Request<Body>, name: &'static str, value: &str) -> Request<Body> {
    request.headers_mut().insert(name, value.parse().unwrap());
    request
}

#[tokio::test]
async fn answers_carry_an_etag_and_bulk_reads_agree_with_the_feed() {
    for test_db in ScratchDatabase::all().await.unwrap() {
        let name = test_db.name;
        let (engine, app) = start_with(&test_db, &[], &[ADMIN]).await;
        let subscribed = subscription_event(
            "evt_1",
            "customer.subscription.created",
            now() - 60,
            "active",
            "price_1ProMonthly",
        );
        for event in [customer_event("evt_2", "cus_2", now() - 90), subscribed] {
            send(&app, signed_webhook(&event)).await;
        }
        engine.drain().await.unwrap();
        let whole = "/v1/customers/cus_1/entitlements";
        let first = send_raw(&app, admin_get(whole)).await;
        assert_eq!(first.status(), StatusCode::OK);
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        assert_eq!(etag.len(), 18, "{name}: a quoted 16-digit digest: {etag}");
        assert_eq!(first.headers()["cache-control"], "private, max-age=0");
        let body = first.into_body().collect().await.unwrap().to_bytes();

        // The client has it: 304, no body; the feature route validates with the same tag.
        for uri in [whole, "/v1/customers/cus_1/entitlements/sso"] {
            let again = send_raw(&app, with_header(admin_get(uri), "if-none-match", &etag)).await;
            assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{name}: {uri}");
            assert_eq!(again.headers()["etag"].to_str().unwrap(), etag);
            assert!(again
                .into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .is_empty());
        }
        let listed = format!("\"0000000000000000\", W/{etag}");
        let weak = send_raw(
            &app,
            with_header(admin_get(whole), "if-none-match", &listed),
        )
        .await;
        assert_eq!(
            weak.status(),
            StatusCode::NOT_MODIFIED,
            "{name}: one of a list, weak"
        );

        // Bulk by name: the same answers, and who is unknown.
        let (status, bulk) = send(
            &app,
            admin_get("/v1/entitlements?customers=cus_1,%20cus_2,cus_nope"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{bulk}");
        let single: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(bulk["entitlements"][0], single, "{name}");
        assert_eq!(bulk["entitlements"][1]["customer"], json!("cus_2"));
        assert_eq!(bulk["not_found"], json!(["cus_nope"]));

        // A change: the old tag no longer matches; bulk since a cursor gives the new answer.
        let (_, feed) = send(&app, admin_get("/v1/changes")).await;
        let before_hold = feed["next_cursor"].as_str().unwrap().to_owned();
        send(
            &app,
            json_request(
                "POST",
                "/v1/customers/cus_1/holds",
                json!({ "reason": "review", "hold_id": "hold_a" }),
            ),
        )
        .await;
        engine.drain().await.unwrap();
        let changed = send_raw(&app, with_header(admin_get(whole), "if-none-match", &etag)).await;
        assert_eq!(changed.status(), StatusCode::OK, "{name}");
        assert_ne!(changed.headers()["etag"].to_str().unwrap(), etag);
        let (status, since) = send(
            &app,
            admin_get(&format!("/v1/entitlements?changed_since={before_hold}")),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{since}");
        assert_eq!(
            since["entitlements"].as_array().unwrap().len(),
            1,
            "{name}: {since}"
        );
        assert_eq!(since["entitlements"][0]["holds"][0]["id"], json!("hold_a"));
        let (_, feed) = send(&app, admin_get("/v1/changes")).await;
        assert_eq!(since["next_cursor"], feed["next_cursor"]);
        assert_eq!(since["has_more"], json!(false));

        // An answer about the past has a tag of its own.
        let past = format!(
            "{whole}?at={}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        let asked = send_raw(&app, admin_get(&past)).await;
        assert_eq!(asked.status(), StatusCode::OK, "{name}");
        let past_tag = asked.headers()["etag"].to_str().unwrap().to_owned();
        let again = send_raw(
            &app,
            with_header(admin_get(&past), "if-none-match", &past_tag),
        )
        .await;
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{name}");

        for (query, code) in [
            ("", "invalid_query"),
            ("customers=cus_1&changed_since=chg_1", "invalid_query"),
            ("customers=cus_1,,cus_2", "invalid_customers"),
            ("customers=cus%201", "invalid_customers"),
            ("changed_since=chg_x", "invalid_cursor"),
            ("changed_since=chg_1&limit=5000", "invalid_limit"),
        ] {
            let (status, body) = send(&app, admin_get(&format!("/v1/entitlements?{query}"))).await;
            assert_eq!(
                (status, &body["error"]),
                (StatusCode::BAD_REQUEST, &json!(code)),
                "{query}: {body}"
            );
        }
        let many: Vec<String> = (0..101).map(|i| format!("cus_{i}")).collect();
        let (status, body) = send(
            &app,
            admin_get(&format!("/v1/entitlements?customers={}", many.join(","))),
        )
        .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("too_many_customers"))
        );
        engine.close().await;
    }
}

/// A server on `scratch` with its worker and projector running, on `clock`.
async fn server_on(
    scratch: &ScratchDatabase,
    clock: Arc<ManualClock>,
    catalog: &str,
) -> (Arc<Engine>, Router) {
    let mut config = engine_config(scratch, catalog);
    config.clock = clock;
    // Long enough that the answer's own deadline is what bounds `max-age`.
    config.answer_max_age = Duration::from_secs(30 * 86_400);
    let engine = Engine::start(config).await.unwrap();
    let app = app(&engine, &[], &[]);
    (engine, app)
}

fn signed_at(event: &Value, at: i64) -> Request<Body> {
    let body = serde_json::to_vec(event).unwrap();
    Request::post("/webhooks/stripe")
        .header(
            "stripe-signature",
            WebhookSecret::new(SECRET).header(at, &body),
        )
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

/// A grace period that ends changes the answer without any event: the feed records it, once,
/// caused by the deadline.
#[tokio::test]
async fn a_grace_period_that_ends_is_a_change_of_its_own() {
    let catalog = format!("policy:\n  grace_period_days: 3\n{CATALOG}");
    for scratch in ScratchDatabase::all().await.unwrap() {
        let name = scratch.name;
        let start = chrono::Utc::now();
        let clock = Arc::new(ManualClock::new(start));
        let (engine, app) = server_on(&scratch, clock.clone(), &catalog).await;
        let t = start.timestamp();
        let subscribed = subscription_event(
            "evt_1",
            "customer.subscription.created",
            t - 60,
            "active",
            "price_1ProMonthly",
        );
        let mut invoice = fixtures::invoice("in_1", "cus_1", "sub_1", false, 1);
        invoice["billing_reason"] = json!("subscription_cycle");
        invoice["next_payment_attempt"] = json!(t + 86_400);
        let failed = fixtures::event("evt_2", "invoice.payment_failed", t - 30, invoice);
        for event in [subscribed, failed] {
            send(&app, signed_at(&event, t)).await;
        }
        engine.drain().await.unwrap();
        let (owed, cursor) = changes(&app, None).await;
        let last = &owed.last().unwrap()["entitlements"];
        assert_eq!(
            last["dunning"]["state"],
            json!("past_due"),
            "{name}: {owed:#?}"
        );
        // Reusable until the grace period ends, not a second longer.
        let answer = send_raw(&app, get("/v1/customers/cus_1/entitlements")).await;
        let grace_ends: chrono::DateTime<chrono::Utc> = last["dunning"]["grace_ends_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            answer.headers()["cache-control"].to_str().unwrap(),
            format!("private, max-age={}", (grace_ends - start).num_seconds()),
            "{name}"
        );

        clock.set(start + chrono::Duration::days(3));
        engine.project().await.unwrap();
        let (ended, _) = changes(&app, cursor.as_deref()).await;
        assert_eq!(ended.len(), 1, "{name}: {ended:#?}");
        assert_eq!(
            ended[0]["entitlements"]["dunning"]["state"],
            json!("suspended")
        );
        assert_eq!(ended[0]["entitlements"]["plans"], json!(["free"]));
        assert!(
            ended[0]["cause"].as_str().unwrap().starts_with("deadline:"),
            "{name}: {ended:#?}"
        );
        // Asked again later, nothing more: the deadline is behind it.
        clock.set(start + chrono::Duration::days(4));
        engine.project().await.unwrap();
        assert_eq!(changes(&app, cursor.as_deref()).await.0.len(), 1, "{name}");
        engine.close().await;
    }
}

/// An event that arrives after a grace period ended, before the feed looked again: one
/// change, not one for the event and one for the deadline.
#[tokio::test]
async fn an_event_after_a_passed_deadline_makes_one_change() {
    let catalog = format!("policy:\n  grace_period_days: 3\n{CATALOG}");
    let scratch = ScratchDatabase::sqlite().await.unwrap();
    let start = chrono::Utc::now();
    let clock = Arc::new(ManualClock::new(start));
    let (engine, app) = server_on(&scratch, clock.clone(), &catalog).await;
    let t = start.timestamp();
    let mut invoice = fixtures::invoice("in_1", "cus_1", "sub_1", false, 1);
    invoice["billing_reason"] = json!("subscription_cycle");
    for event in [
        subscription_event(
            "evt_1",
            "customer.subscription.created",
            t - 60,
            "active",
            "price_1ProMonthly",
        ),
        fixtures::event("evt_2", "invoice.payment_failed", t - 30, invoice),
    ] {
        send(&app, signed_at(&event, t)).await;
    }
    engine.drain().await.unwrap();
    let (_, cursor) = changes(&app, None).await;

    let later = start + chrono::Duration::days(4);
    clock.set(later);
    let renamed = fixtures::event(
        "evt_3",
        "customer.updated",
        later.timestamp(),
        fixtures::customer("cus_1", json!({ "note": "vip" })),
    );
    send(&app, signed_at(&renamed, later.timestamp())).await;
    engine.drain().await.unwrap();
    let (after, _) = changes(&app, cursor.as_deref()).await;
    assert_eq!(after.len(), 1, "{after:#?}");
    assert_eq!(
        after[0]["entitlements"]["dunning"]["state"],
        json!("suspended")
    );
    engine.close().await;
}

/// Servers sharing one PostgreSQL record each change once, whichever server heard it; a
/// consumer that follows any of them, across a server killed and started again, sees every
/// change once and in order.
#[tokio::test]
async fn servers_sharing_a_store_record_each_change_once() {
    let Some(url) = std::env::var("SUBLEDGER_TEST_POSTGRES_URL").ok() else {
        eprintln!("skipped: SUBLEDGER_TEST_POSTGRES_URL is not set");
        return;
    };
    let scratch = ScratchDatabase::postgres_at(&url).await.unwrap();
    let start = chrono::Utc::now();
    let clock = Arc::new(ManualClock::new(start));
    let t = start.timestamp();
    let (a, app_a) = server_on(&scratch, clock.clone(), CATALOG).await;
    let (b, app_b) = server_on(&scratch, clock.clone(), CATALOG).await;
    let (shutdown_tx, shutdown) = subledger_engine::Shutdown::new();
    let run = |engine: &Arc<Engine>| {
        vec![
            engine.spawn_worker(shutdown.clone()),
            engine.spawn_projector(shutdown.clone()),
        ]
    };
    let mut tasks = run(&a);
    let mut b_tasks = run(&b);
    let customers: Vec<String> = (0..12).map(|i| format!("cus_{i:02}")).collect();
    let mut seen: Vec<Value> = Vec::new();
    let mut cursor: Option<String> = None;
    let (mut b_engine, mut b_app) = (b, app_b);
    for (i, customer) in customers.iter().enumerate() {
        let app = if i % 2 == 0 { &app_a } else { &b_app };
        send(
            app,
            signed_at(&customer_event(&format!("evt_{i}"), customer, t), t),
        )
        .await;
        if i == 5 {
            // Server B stops dead, wherever its worker and projector were, and a new one
            // takes its place.
            for task in b_tasks.drain(..) {
                task.abort();
            }
            let (engine, app) = server_on(&scratch, clock.clone(), CATALOG).await;
            b_tasks = run(&engine);
            (b_engine, b_app) = (engine, app);
        }
        // The consumer reads from either server as it goes.
        let reader = if i % 3 == 0 { &app_a } else { &b_app };
        let (more, next) = changes(reader, cursor.as_deref()).await;
        seen.extend(more);
        cursor = next.or(cursor);
    }
    // A row the dead server had claimed is taken up again once its lease runs out.
    clock.advance(chrono::Duration::minutes(10));
    for engine in [&a, &b_engine] {
        engine.drain().await.unwrap();
    }
    let (rest, _) = changes(&app_a, cursor.as_deref()).await;
    seen.extend(rest);
    let mut heard: Vec<&str> = seen
        .iter()
        .map(|c| c["customer"].as_str().unwrap())
        .collect();
    let cursors: Vec<i64> = seen
        .iter()
        .map(|c| c["cursor"].as_str().unwrap()[4..].parse().unwrap())
        .collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "in order: {cursors:?}"
    );
    heard.sort_unstable();
    assert_eq!(heard, customers, "each customer's creation once: {seen:#?}");
    let (everything, _) = changes(&app_a, None).await;
    assert_eq!(everything, seen, "the feed reads the same from the start");
    shutdown_tx.send(true).unwrap();
    tasks.extend(b_tasks);
    for task in tasks {
        let _ = task.await;
    }
    scratch.cleanup().await.unwrap();
}
