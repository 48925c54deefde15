//! The operators' dashboard through the router: sign-in and sessions, search, the customer,
//! explanation and inbox pages, holds, security headers, and readable error pages. (The same
//! pages in a real browser: `crates/scenario/tests/dashboard.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use subledger_store::scratch::ScratchDatabase;

use common::*;

/// A subscription event whose status no Stripe API version has: it cannot be applied.
fn subledger_event_with_status(id: &str, status: &str) -> Value {
    subscription_event(
        id,
        "customer.subscription.updated",
        now(),
        status,
        "price_1ProMonthly",
    )
}

/// A dashboard request: `cookie` is a signed-in browser's session, `form` a posted form.
fn page(method: &str, uri: &str, cookie: Option<&str>, form: Option<&str>) -> Request<Body> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "subledger.test");
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if form.is_some() {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    request
        .body(Body::from(form.unwrap_or_default().to_owned()))
        .unwrap()
}

/// A dashboard page as a browser with `cookie` sees it: status and body.
async fn show(app: &Router, uri: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let (status, body, _) = visit(app, page("GET", uri, cookie, None), "x").await;
    (status, body)
}

/// The answer's status, body, and the one header asked for.
async fn visit(
    app: &Router,
    request: Request<Body>,
    wanted: &str,
) -> (StatusCode, String, Option<String>) {
    use tower::ServiceExt;
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let header = response
        .headers()
        .get(wanted)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.starts_with("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned(), header)
}

/// The dashboard as an operator uses it, through the router: sign in with the admin token
/// (once; the browser keeps a session cookie), find a customer, read their entitlements,
/// place and lift a hold; every refusal a readable page with the right status and the strict
/// security headers; a change posted from another site refused.
#[tokio::test]
async fn operators_sign_in_find_a_customer_and_hold_it_on_the_dashboard() {
    let test_db = ScratchDatabase::sqlite().await.unwrap();
    let (engine, app) = start_with(&test_db, &["tok_read"], &[ADMIN]).await;
    let customer = fixtures::event(
        "evt_c",
        "customer.created",
        now() - 10,
        fixtures::customer("cus_1", json!({ "user_id": "u_1" })),
    );
    let subscription = subscription_event(
        "evt_s",
        "customer.subscription.created",
        now() - 5,
        "active",
        "price_1ProMonthly",
    );
    // Two more customers share an email (Stripe allows it); cus_1 has one of its own.
    let with_email = |id: &str, event_id: &str, email: &str| {
        let mut customer = fixtures::customer(id, json!({}));
        customer["email"] = json!(email);
        fixtures::event(event_id, "customer.created", now() - 10, customer)
    };
    let mut customer = customer;
    customer["data"]["object"]["email"] = json!("ada@example.com");
    let shared = [
        with_email("cus_2", "evt_c2", "Team@Example.com"),
        with_email("cus_3", "evt_c3", "team@example.com"),
    ];
    for event in [customer, subscription].into_iter().chain(shared) {
        assert_eq!(send(&app, signed_webhook(&event)).await.0, StatusCode::OK);
    }
    engine.drain().await.unwrap();

    // Not signed in: a page that leads to the sign-in form.
    let (status, body, kind) =
        visit(&app, page("GET", "/dashboard", None, None), "content-type").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(kind.is_some_and(|k| k.starts_with("text/html")));
    assert!(body.contains("href=\"/dashboard/login\""), "{body}");
    let (status, body, _) = visit(&app, page("GET", "/dashboard/login", None, None), "x").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("<label for=\"token\">Admin token</label>"));

    // A read token or a wrong one does not sign in; the admin token does, once.
    for wrong in ["token=tok_read", "token=nope", "nothing=1"] {
        let (status, body, cookie) = visit(
            &app,
            page("POST", "/dashboard/login", None, Some(wrong)),
            "set-cookie",
        )
        .await;
        assert!(
            status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
            "{wrong}: {status}"
        );
        assert!(
            cookie.is_none() && body.contains("role=\"alert\""),
            "{wrong}"
        );
    }
    let (status, _, cookie) = visit(
        &app,
        page(
            "POST",
            "/dashboard/login",
            None,
            Some(&format!("token={ADMIN}")),
        ),
        "set-cookie",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = cookie.unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/dashboard"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(
        !cookie.contains(ADMIN),
        "the token itself must not be the cookie"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let signed_in = Some(session.as_str());

    let (status, body) = show(&app, "/dashboard", signed_in).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("Find a customer") && body.contains("Stripe event(s) waiting"),
        "{body}"
    );

    // Find by user id and by Stripe id; a miss and an empty search are readable pages.
    for q in ["u_1", "cus_1"] {
        let (status, _, location) = visit(
            &app,
            page("GET", &format!("/dashboard/search?q={q}"), signed_in, None),
            "location",
        )
        .await;
        assert_eq!(
            (status, location.as_deref()),
            (StatusCode::SEE_OTHER, Some("/dashboard/customers/cus_1")),
            "{q}"
        );
    }
    // By email, ignoring case: one customer's page, or the customers who share it.
    let (status, _, location) = visit(
        &app,
        page(
            "GET",
            "/dashboard/search?q=ADA%40example.com",
            signed_in,
            None,
        ),
        "location",
    )
    .await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/dashboard/customers/cus_1"))
    );
    let (status, body) = show(&app, "/dashboard/search?q=team%40example.com", signed_in).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("href=\"/dashboard/customers/cus_2\"")
            && body.contains("href=\"/dashboard/customers/cus_3\""),
        "{body}"
    );
    let (status, body) = show(&app, "/dashboard/search?q=nobody%40example.com", signed_in).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("nobody@example.com"), "{body}");
    let (status, body) = show(&app, "/dashboard/search?q=u_nobody", signed_in).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body.contains("u_nobody"));
    let (status, _) = show(&app, "/dashboard/search?q=", signed_in).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The customer's page: plans, features, subscriptions.
    let (status, body) = show(&app, "/dashboard/customers/cus_1", signed_in).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("<strong>pro</strong>")
            && body.contains("<td>sso</td>")
            && body.contains("sub_1"),
        "{body}"
    );
    assert!(body.contains("No hold is in force."));
    assert!(
        body.contains("href=\"/dashboard/customers/cus_1/features/sso\""),
        "{body}"
    );

    // Why it has sso: the catalog rule, the subscription, and the Stripe event behind it.
    let (status, body, _) = visit(
        &app,
        page(
            "GET",
            "/dashboard/customers/cus_1/features/sso",
            signed_in,
            None,
        ),
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("Why cus_1 has sso") && body.contains("plan pro grants sso: true"),
        "{body}"
    );
    assert!(
        body.contains("href=\"https://dashboard.stripe.com/test/events/evt_s\""),
        "{body}"
    );

    // A hold placed and lifted from the page; one posted from another site is refused.
    let mut forged = page(
        "POST",
        "/dashboard/customers/cus_1/holds",
        signed_in,
        Some("reason=x"),
    );
    forged
        .headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    assert_eq!(visit(&app, forged, "x").await.0, StatusCode::FORBIDDEN);
    // Fetch Metadata, when the browser sends it, decides: another site's page is refused even
    // when its Origin is hidden ("null").
    for (site, origin) in [("cross-site", "null"), ("same-site", "https://app.example")] {
        let mut forged = page(
            "POST",
            "/dashboard/customers/cus_1/holds",
            signed_in,
            Some("reason=x"),
        );
        forged
            .headers_mut()
            .insert("sec-fetch-site", site.parse().unwrap());
        forged
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
        assert_eq!(
            visit(&app, forged, "x").await.0,
            StatusCode::FORBIDDEN,
            "{site}"
        );
    }
    let (status, _, location) = visit(
        &app,
        page(
            "POST",
            "/dashboard/customers/cus_1/holds",
            signed_in,
            Some("reason=fraud+review"),
        ),
        "location",
    )
    .await;
    assert_eq!(
        (status, location.as_deref()),
        (StatusCode::SEE_OTHER, Some("/dashboard/customers/cus_1"))
    );
    let (_, body) = show(&app, "/dashboard/customers/cus_1", signed_in).await;
    assert!(
        body.contains("fraud review") && body.contains("<strong>free</strong>"),
        "{body}"
    );
    let (_, why, _) = visit(
        &app,
        page(
            "GET",
            "/dashboard/customers/cus_1/features/sso",
            signed_in,
            None,
        ),
        "x",
    )
    .await;
    assert!(
        why.contains("Why cus_1 lacks sso") && why.contains("fraud review"),
        "{why}"
    );
    let lift = body
        .split("action=\"")
        .find_map(|rest| {
            rest.split('"')
                .next()
                .filter(|href| href.ends_with("/lift"))
        })
        .unwrap()
        .to_owned();
    assert_eq!(
        visit(&app, page("POST", &lift, signed_in, None), "x")
            .await
            .0,
        StatusCode::SEE_OTHER
    );
    let (_, body) = show(&app, "/dashboard/customers/cus_1", signed_in).await;
    assert!(body.contains("No hold is in force.") && body.contains("<strong>pro</strong>"));
    let (status, _, _) = visit(
        &app,
        page(
            "POST",
            "/dashboard/customers/cus_1/holds",
            signed_in,
            Some("reason="),
        ),
        "x",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Unknown customers and pages are readable 404s; an admin bearer token works too.
    for uri in [
        "/dashboard/customers/cus_nobody",
        "/dashboard/customers/acct_1%2Fcus_1",
        "/dashboard/nowhere",
    ] {
        let (status, body) = show(&app, uri, signed_in).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert!(body.contains("<h1>"), "{uri}");
    }
    let (status, _, _) = visit(&app, admin_get("/dashboard/customers/cus_1"), "x").await;
    assert_eq!(status, StatusCode::OK);

    // The inbox: a delivery that cannot be applied is listed with its error, and retried on
    // demand.
    let bad = subledger_event_with_status("evt_bad", "not_a_status");
    assert_eq!(send(&app, signed_webhook(&bad)).await.0, StatusCode::OK);
    engine.process_inbox().await.unwrap();
    let (status, body) = show(&app, "/dashboard/inbox", signed_in).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("evt_bad") && body.contains("unknown subscription status"),
        "{body}"
    );
    assert!(
        body.contains("action=\"/dashboard/inbox/evt_bad/retry\""),
        "{body}"
    );
    for (uri, status) in [
        ("/dashboard/inbox/evt_bad/retry", StatusCode::SEE_OTHER),
        ("/dashboard/inbox/evt_nothing/retry", StatusCode::NOT_FOUND),
        (
            "/dashboard/inbox/not-an-event/retry",
            StatusCode::BAD_REQUEST,
        ),
    ] {
        assert_eq!(
            visit(&app, page("POST", uri, signed_in, None), "x").await.0,
            status,
            "{uri}"
        );
    }

    // Signing out ends the session.
    let (status, _, cleared) = visit(
        &app,
        page("POST", "/dashboard/logout", signed_in, None),
        "set-cookie",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(cleared.is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(
        show(&app, "/dashboard", signed_in).await.0,
        StatusCode::UNAUTHORIZED
    );
    engine.close().await;
}
