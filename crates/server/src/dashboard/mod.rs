//! The operators' dashboard at `/dashboard`: server-rendered HTML (askama templates compiled
//! into the binary, `templates/dashboard/`), no JavaScript, one stylesheet served from here.
//!
//! - Who may look: a request with an admin bearer token, or a browser that signed in once on
//!   `/dashboard/login` with one. The token is checked there and never stored; the browser
//!   keeps a random session id in an HTTP-only, `Secure`, `SameSite=Strict` cookie scoped to
//!   `/dashboard`, and the server keeps the session in memory for [`SESSION_LIFETIME`] (a
//!   restart, or another server, asks to sign in again).
//! - Changes (holds) are forms posted to the same origin: the strict cookie is not sent from
//!   another site, and a post whose `Origin` names another host is refused.
//! - Every answer carries a strict Content-Security-Policy (`default-src 'none'`, the
//!   stylesheet from this server only, `frame-ancestors 'none'`) and the other headers
//!   browsers expect; every problem is a readable page with the right status.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use subledger_engine::domain::entitlements::Entitlements;
use subledger_engine::domain::ids::CustomerId;
use subledger_engine::NewHold;

mod timeline;

use timeline::TimelinePicture;

use crate::auth::Scope;
use crate::paths::RouteNames;
use crate::AppState;

/// How long a signed-in browser stays signed in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

const SESSION_COOKIE: &str = "subledger_session";

/// Signed-in browsers: session id → when it expires. In memory only: sessions die with the
/// process, which costs a sign-in and keeps no credential anywhere.
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<String, Instant>>);

impl Sessions {
    fn open(&self) -> String {
        let id = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, expires| *expires > now);
        sessions.insert(id.clone(), now + SESSION_LIFETIME);
        id
    }

    fn is_open(&self, id: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|expires| *expires > Instant::now())
    }

    fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The dashboard's routes, under `/dashboard`.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(home))
        .route("/dashboard/login", get(login_page).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/search", get(search))
        .route("/dashboard/customers/{customer_id}", get(customer))
        .route(
            "/dashboard/accounts/{account}/customers/{customer_id}",
            get(customer),
        )
        .route("/dashboard/customers/{customer_id}/holds", post(place_hold))
        .route(
            "/dashboard/accounts/{account}/customers/{customer_id}/holds",
            post(place_hold),
        )
        .route(
            "/dashboard/customers/{customer_id}/holds/{hold_id}/lift",
            post(lift_hold),
        )
        .route(
            "/dashboard/accounts/{account}/customers/{customer_id}/holds/{hold_id}/lift",
            post(lift_hold),
        )
        .route(
            "/dashboard/customers/{customer_id}/features/{feature}",
            get(explain),
        )
        .route(
            "/dashboard/accounts/{account}/customers/{customer_id}/features/{feature}",
            get(explain),
        )
        .route("/dashboard/inbox", get(inbox))
        .route("/dashboard/inbox/{event_id}/retry", post(retry))
        .route("/dashboard/assets/dashboard.css", get(stylesheet))
        .layer(axum::middleware::from_fn(security_headers))
}

/// An unknown page under `/dashboard` (the router's fallback sends those here).
pub(crate) async fn not_found() -> Response {
    let mut response = page_error(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page.",
        true,
    );
    add_security_headers(response.headers_mut());
    response
}

/// The headers every dashboard answer carries.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    add_security_headers(response.headers_mut());
    response
}

fn add_security_headers(headers: &mut HeaderMap) {
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        // Other sites (Stripe's Dashboard, from an event's link) learn nothing of these pages'
        // addresses; posts to this server still carry their origin (see `cross_site`).
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

async fn stylesheet() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../../assets/dashboard.css"),
    )
        .into_response()
}

/// A page, or a plain 500 page when the template cannot render (a defect, logged).
fn render(template: &impl Template, status: StatusCode) -> Response {
    match template.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(%error, "a dashboard page cannot be rendered");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Error</title><p>This page cannot be shown; the error is logged.</p>".to_owned()),
            )
                .into_response()
        }
    }
}

#[derive(Template)]
#[template(path = "dashboard/error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    signed_in: bool,
}

fn page_error(status: StatusCode, title: &str, message: &str, signed_in: bool) -> Response {
    render(
        &ErrorPage {
            title,
            message,
            signed_in,
        },
        status,
    )
}

/// The page for a store that failed or did not answer in time: `what` could not be done.
fn store_unavailable(error: &dyn std::fmt::Display, what: &str) -> Response {
    tracing::warn!(%error, what, "dashboard: the store failed");
    page_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Store unavailable",
        &format!("{what}; try again shortly."),
        true,
    )
}

/// The state, for a request from a signed-in browser or with an admin bearer token. Anyone
/// else gets a 401 page that leads to the sign-in form.
pub(crate) struct Operator(AppState);

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let bearer = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        let by_token = bearer.is_some_and(|t| state.api_tokens.scope_of(t) == Some(Scope::Admin));
        let by_session = session_id(&parts.headers).is_some_and(|id| state.sessions.is_open(&id));
        if by_token || by_session {
            return Ok(Self(state.clone()));
        }
        Err(page_error(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "The dashboard needs an admin token: sign in with one, or send it as a bearer token.",
            false,
        ))
    }
}

fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|cookies| cookies.split(';'))
        .find_map(|cookie| cookie.trim().strip_prefix("subledger_session="))
        .map(str::to_owned)
}

/// The refusal of a change posted from another site. `None` when the post may go on.
///
/// A browser says where the post comes from: `Sec-Fetch-Site` (Fetch Metadata) when it sends
/// it, else the page's `Origin`, which must be this server's host. Pages here send their
/// origin to themselves (`Referrer-Policy: same-origin`: under `no-referrer` Chromium posts
/// `Origin: null`, which says nothing; the browser test found that).
fn cross_site(headers: &HeaderMap) -> Option<Response> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let from_elsewhere = match text(header::HeaderName::from_static("sec-fetch-site")) {
        Some(site) => !matches!(site, "same-origin" | "none"),
        None => {
            let origin = text(header::ORIGIN)?;
            let host = text(header::HOST)?;
            origin.split_once("://").map(|(_, rest)| rest) != Some(host)
        }
    };
    from_elsewhere.then(|| {
        page_error(
            StatusCode::FORBIDDEN,
            "Refused",
            "This change came from another site's page and was not made.",
            true,
        )
    })
}

#[derive(Template)]
#[template(path = "dashboard/login.html")]
struct LoginPage<'a> {
    problem: Option<&'a str>,
}

async fn login_page() -> Response {
    render(&LoginPage { problem: None }, StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Ok(Form(form)) = form else {
        return render(
            &LoginPage {
                problem: Some("Enter an admin token."),
            },
            StatusCode::BAD_REQUEST,
        );
    };
    if state.api_tokens.scope_of(form.token.trim().as_bytes()) != Some(Scope::Admin) {
        return render(
            &LoginPage {
                problem: Some("That is not an admin token of this server."),
            },
            StatusCode::UNAUTHORIZED,
        );
    }
    let id = state.sessions.open();
    let cookie = format!(
        "{SESSION_COOKIE}={id}; Path=/dashboard; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    );
    let mut response = Redirect::to("/dashboard").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_id(&headers) {
        state.sessions.close(&id);
    }
    let mut response = Redirect::to("/dashboard/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "subledger_session=; Path=/dashboard; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

#[derive(Template)]
#[template(path = "dashboard/home.html")]
struct HomePage {
    pending: i64,
    failing: i64,
    quarantined: i64,
    census: Vec<(&'static str, u64)>,
}

async fn home(Operator(state): Operator) -> Response {
    let ready = match state.engine.readiness(crate::READINESS_BOUND).await {
        Ok(ready) => ready,
        Err(error) => {
            return store_unavailable(&error, "The store did not answer in time");
        }
    };
    let census = state.engine.census();
    let census = census
        .by_dunning_state
        .iter()
        .map(|(state, count)| (state.as_str(), *count))
        .collect();
    render(
        &HomePage {
            pending: ready.pending,
            failing: ready.failing,
            quarantined: ready.quarantined,
            census,
        },
        StatusCode::OK,
    )
}

#[derive(Deserialize)]
struct SearchQuery {
    q: Option<String>,
}

/// The customer page of `customer`'s key.
fn customer_href(customer: &CustomerId) -> String {
    match customer.account() {
        Some(account) => format!(
            "/dashboard/accounts/{account}/customers/{}",
            customer.stripe_id()
        ),
        None => format!("/dashboard/customers/{}", customer.stripe_id()),
    }
}

/// How many customers sharing one email the results page lists.
const MOST_RESULTS: usize = 50;

/// One customer found by email.
struct FoundRow {
    customer: String,
    account: Option<String>,
    href: String,
    plans: String,
    dunning: &'static str,
}

#[derive(Template)]
#[template(path = "dashboard/results.html")]
struct ResultsPage {
    q: String,
    found: Vec<FoundRow>,
    more: bool,
}

/// A Stripe customer id (`cus_…`, or `acct_…/cus_…` for a connected account's), else a
/// product user id of the platform's customers, else an email (customers of any account;
/// several may share one: then a list to choose from).
async fn search(
    Operator(state): Operator,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query
        .ok()
        .and_then(|Query(query)| query.q)
        .map(|q| q.trim().to_owned())
        .unwrap_or_default();
    if q.is_empty() || q.len() > 200 || q.chars().any(char::is_control) {
        return page_error(
            StatusCode::BAD_REQUEST,
            "Nothing to find",
            "Enter a Stripe customer id (cus_…), a user id or an email of at most 200 characters.",
            true,
        );
    }
    let found = if state.engine.entitlements(&q).is_some() {
        Some(CustomerId::new(q.as_str()))
    } else {
        state
            .engine
            .customer_of_user(None, &q)
            .map(|id| CustomerId::new(id.as_str()))
    };
    if let Some(customer) = found {
        return Redirect::to(&customer_href(&customer)).into_response();
    }
    let by_email = if q.contains('@') {
        state.engine.customers_with_email(&q, MOST_RESULTS + 1)
    } else {
        Vec::new()
    };
    match by_email.as_slice() {
        [] => page_error(
            StatusCode::NOT_FOUND,
            "No such customer",
            &format!("No customer has the id, user id or email “{q}”."),
            true,
        ),
        [only] => Redirect::to(&customer_href(&CustomerId::new(only.as_str()))).into_response(),
        several => {
            let found = several
                .iter()
                .take(MOST_RESULTS)
                .map(|id| {
                    let customer = CustomerId::new(id.as_str());
                    let answer = state.engine.entitlements(id);
                    FoundRow {
                        customer: customer.stripe_id().to_owned(),
                        account: customer.account().map(str::to_owned),
                        href: customer_href(&customer),
                        plans: answer
                            .as_ref()
                            .and_then(|a| a.json().ok())
                            .and_then(|json| serde_json::from_slice::<Entitlements>(&json).ok())
                            .map(|e| e.plans.join(", "))
                            .unwrap_or_default(),
                        dunning: answer.map_or("unknown", |a| a.dunning_state().as_str()),
                    }
                })
                .collect();
            render(
                &ResultsPage {
                    q,
                    found,
                    more: several.len() > MOST_RESULTS,
                },
                StatusCode::OK,
            )
        }
    }
}

/// One feature's row.
struct FeatureRow {
    name: String,
    enabled: bool,
    limit: Option<u64>,
    explain_href: String,
}

struct SubscriptionRow {
    id: String,
    status: &'static str,
    plan: String,
    grants_access: bool,
    dunning: &'static str,
    attempt: u32,
    period_end: String,
}

struct HoldRow {
    id: String,
    scope: String,
    reason: String,
    since: String,
    lift_href: String,
}

#[derive(Template)]
#[template(path = "dashboard/customer.html")]
struct CustomerPage {
    customer: String,
    account: Option<String>,
    deleted: bool,
    plans: Vec<String>,
    dunning: &'static str,
    features: Vec<FeatureRow>,
    subscriptions: Vec<SubscriptionRow>,
    scheduled: Vec<String>,
    holds: Vec<HoldRow>,
    place_hold_href: String,
    timeline: TimelinePicture,
    history: Vec<HistoryRow>,
}

/// One fact of the customer's timeline, as the table under the picture lists it.
struct HistoryRow {
    happened: String,
    learned: String,
    what: String,
    stripe_event: Option<(String, String)>,
    /// Who recorded it, when no Stripe event did.
    source: String,
}

fn not_a_customer(names: &RouteNames) -> Response {
    let message = match names.customer() {
        Ok(customer) => format!("Subledger has no billing facts about {customer}."),
        Err(error) => error.message,
    };
    page_error(StatusCode::NOT_FOUND, "No such customer", &message, true)
}

async fn customer(Operator(state): Operator, names: RouteNames) -> Response {
    let Ok(customer) = names.customer() else {
        return not_a_customer(&names);
    };
    let Some(answer) = state.engine.entitlements(customer.as_str()) else {
        return not_a_customer(&names);
    };
    let entitlements: Entitlements = match answer
        .json()
        .ok()
        .and_then(|json| serde_json::from_slice(&json).ok())
    {
        Some(entitlements) => entitlements,
        None => {
            return page_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Cannot show this customer",
                "Their entitlements cannot be read right now; the error is logged.",
                true,
            )
        }
    };
    let entries = match state.engine.timeline(customer.as_str()).await {
        Ok(entries) => entries,
        Err(error) => return store_unavailable(&error, "The customer's history could not be read"),
    };
    let drawn = &entries[entries.len().saturating_sub(timeline::MOST_MARKS)..];
    let spans = drawn.first().map_or_else(Vec::new, |first| {
        state
            .engine
            .dunning_history(customer.as_str(), &entries, first.occurred_at)
    });
    let picture = TimelinePicture::draw(drawn, &spans, state.engine.now());
    let (livemode, account) = (state.engine.livemode(), customer.account());
    let history = drawn
        .iter()
        .rev()
        .map(|entry| HistoryRow {
            happened: entry.occurred_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            learned: entry
                .recorded_at
                .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S").to_string()),
            what: match &entry.stripe_event_type {
                Some(stripe) => format!("{} ({stripe})", entry.event_type),
                None => entry.event_type.clone(),
            },
            stripe_event: entry
                .stripe_event_id
                .as_ref()
                .map(|id| (id.clone(), stripe_event_link(id, livemode, account))),
            source: entry.actor.clone().unwrap_or_default(),
        })
        .collect();
    let href = customer_href(&customer);
    let holds = entitlements
        .holds
        .iter()
        .map(|hold| HoldRow {
            id: hold.id.clone(),
            scope: hold
                .subscription
                .as_ref()
                .map_or_else(|| "the whole customer".to_owned(), ToString::to_string),
            reason: hold.reason.clone(),
            since: hold.since.format("%Y-%m-%d %H:%M UTC").to_string(),
            lift_href: format!("{href}/holds/{}/lift", hold.id),
        })
        .collect();
    let page = CustomerPage {
        customer: customer.stripe_id().to_owned(),
        account: customer.account().map(str::to_owned),
        deleted: entitlements.deleted,
        plans: entitlements.plans.clone(),
        dunning: entitlements.dunning.state.as_str(),
        features: entitlements
            .features
            .iter()
            .map(|(name, value)| FeatureRow {
                name: name.clone(),
                enabled: value.enabled,
                limit: value.limit,
                explain_href: format!("{href}/features/{name}"),
            })
            .collect(),
        subscriptions: entitlements
            .subscriptions
            .iter()
            .map(|s| SubscriptionRow {
                id: s.id.to_string(),
                status: s.status.as_str(),
                plan: s.plan.clone().unwrap_or_else(|| "none".to_owned()),
                grants_access: s.grants_access,
                dunning: s.dunning.state.as_str(),
                attempt: s.dunning.attempt,
                period_end: s
                    .current_period_end
                    .map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string()),
            })
            .collect(),
        scheduled: entitlements
            .scheduled_changes
            .iter()
            .map(|change| {
                let at = change.at.map_or_else(
                    || "a date Stripe has not set".to_owned(),
                    |t| t.format("%Y-%m-%d").to_string(),
                );
                match &change.plan {
                    Some(plan) => format!(
                        "{}: {} to {plan} on {at}",
                        change.subscription, change.change
                    ),
                    None => format!("{}: {} on {at}", change.subscription, change.change),
                }
            })
            .collect(),
        holds,
        place_hold_href: format!("{href}/holds"),
        timeline: picture,
        history,
    };
    render(&page, StatusCode::OK)
}

/// A fact behind a decision, with a link to the Stripe event it came from.
struct EvidenceRow {
    what: String,
    at: String,
    stripe_event: Option<(String, String)>,
}

/// A reason or a blocker, as a person reads it.
struct ReasonRow {
    headline: String,
    detail: String,
    evidence: Vec<EvidenceRow>,
}

#[derive(Template)]
#[template(path = "dashboard/explain.html")]
struct ExplainPage {
    customer: String,
    customer_href: String,
    feature: String,
    enabled: bool,
    limit: Option<u64>,
    at: String,
    reasons: Vec<ReasonRow>,
    blockers: Vec<ReasonRow>,
}

/// Stripe's Dashboard page of an event (the test-mode one for a test-mode deployment; a
/// connected account's under its account).
fn stripe_event_link(event_id: &str, livemode: bool, account: Option<&str>) -> String {
    let mode = if livemode { "" } else { "test/" };
    match account {
        Some(account) => format!("https://dashboard.stripe.com/{account}/{mode}events/{event_id}"),
        None => format!("https://dashboard.stripe.com/{mode}events/{event_id}"),
    }
}

fn evidence_rows(
    evidence: &[subledger_engine::explain::Evidence],
    livemode: bool,
    account: Option<&str>,
) -> Vec<EvidenceRow> {
    evidence
        .iter()
        .map(|e| EvidenceRow {
            what: match (&e.actor, &e.drift) {
                (Some(actor), Some(drift)) => format!("{} (by {actor}: {drift})", e.event_type),
                (Some(actor), None) => format!("{} (by {actor})", e.event_type),
                _ => e.event_type.clone(),
            },
            at: e.occurred_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            stripe_event: e
                .stripe_event_id
                .as_ref()
                .map(|id| (id.clone(), stripe_event_link(id, livemode, account))),
        })
        .collect()
}

/// Why the customer has, or lacks, one feature.
async fn explain(Operator(state): Operator, names: RouteNames) -> Response {
    let (Ok(customer), Ok(feature)) = (names.customer(), names.feature()) else {
        return not_a_customer(&names);
    };
    let explanation = match state.engine.explain(customer.as_str(), feature, None).await {
        Ok(Some(explanation)) => explanation,
        Ok(None) => return not_a_customer(&names),
        Err(error) => {
            return store_unavailable(&error, "The explanation could not be computed");
        }
    };
    let (livemode, account) = (state.engine.livemode(), customer.account());

    let on = |subscription: &Option<subledger_engine::domain::ids::SubscriptionId>| {
        subscription
            .as_ref()
            .map_or_else(String::new, |s| format!(" through {s}"))
    };
    let page = ExplainPage {
        customer: customer.stripe_id().to_owned(),
        customer_href: customer_href(&customer),
        feature: explanation.feature.clone(),
        enabled: explanation.enabled,
        limit: explanation.limit,
        at: explanation.at.format("%Y-%m-%d %H:%M UTC").to_string(),
        reasons: explanation
            .reasons
            .iter()
            .map(|reason| ReasonRow {
                headline: reason.rule.clone(),
                detail: format!(
                    "{}{}{}",
                    reason.source.replace('_', " "),
                    on(&reason.subscription),
                    reason
                        .status
                        .as_ref()
                        .map_or_else(String::new, |s| format!(", status {s}"))
                ),
                evidence: evidence_rows(&reason.evidence, livemode, account),
            })
            .collect(),
        blockers: explanation
            .blockers
            .iter()
            .map(|blocker| ReasonRow {
                headline: if blocker.holds.is_empty() {
                    blocker.detail.clone()
                } else {
                    let reasons: Vec<String> = blocker
                        .holds
                        .iter()
                        .map(|hold| format!("{} ({})", hold.id, hold.reason))
                        .collect();
                    format!("{}: {}", blocker.detail, reasons.join("; "))
                },
                detail: format!(
                    "{}{}",
                    blocker.kind.replace('_', " "),
                    on(&blocker.subscription)
                ),
                evidence: evidence_rows(&blocker.evidence, livemode, account),
            })
            .collect(),
    };
    render(&page, StatusCode::OK)
}

/// An inbox row as the page lists it.
struct InboxLine {
    event_id: String,
    stripe_href: String,
    event_type: String,
    attempts: i32,
    received: String,
    error: String,
}

struct QuarantineLine {
    position: i64,
    customer: String,
    event_type: String,
    error: String,
}

#[derive(Template)]
#[template(path = "dashboard/inbox.html")]
struct InboxPage {
    failing: Vec<InboxLine>,
    waiting: Vec<InboxLine>,
    quarantined: Vec<QuarantineLine>,
    reconciliation: Option<LastReconciliation>,
}

/// The newest reconciliation, as the inbox page shows it.
struct LastReconciliation {
    run_id: String,
    finished: String,
    /// `None`: the stored report has a shape this build cannot read.
    report: Option<ReportSummary>,
}

struct ReportSummary {
    customers_checked: u64,
    differences: usize,
    corrected: usize,
    /// The first [`MOST_DIFFERENCES`] differences.
    shown: Vec<StoredDifference>,
}

/// A reconciliation's report as stored (`subledger reconcile --json`'s shape), as far as the
/// page reads it.
#[derive(Deserialize)]
struct StoredReport {
    customers_checked: u64,
    differences: Vec<StoredDifference>,
}

#[derive(Deserialize)]
struct StoredDifference {
    customer: String,
    object_type: String,
    object: String,
    field: String,
    subledger: serde_json::Value,
    stripe: serde_json::Value,
    drift: String,
    applied: bool,
}

impl StoredDifference {
    fn customer_href(&self) -> String {
        customer_href(&CustomerId::new(self.customer.as_str()))
    }
}

impl From<StoredReport> for ReportSummary {
    fn from(mut report: StoredReport) -> Self {
        let (differences, corrected) = (
            report.differences.len(),
            report.differences.iter().filter(|d| d.applied).count(),
        );
        report.differences.truncate(MOST_DIFFERENCES);
        Self {
            customers_checked: report.customers_checked,
            differences,
            corrected,
            shown: report.differences,
        }
    }
}

/// How many of the last reconciliation's differences the inbox page lists.
const MOST_DIFFERENCES: usize = 100;

/// How many rows of each kind the inbox page lists (oldest first).
const INBOX_PAGE_ROWS: i64 = 100;

/// The events that wait or fail, with their errors, and those the projection set aside.
async fn inbox(Operator(state): Operator) -> Response {
    let rows = |wanted| subledger_store::InboxFilter {
        state: Some(wanted),
        event_type: None,
        since_ms: None,
        limit: INBOX_PAGE_ROWS,
    };
    let (failing, pending, quarantined) = match (
        state
            .engine
            .inbox_rows(&rows(subledger_store::InboxState::Failing))
            .await,
        state
            .engine
            .inbox_rows(&rows(subledger_store::InboxState::Pending))
            .await,
        state.engine.projection_quarantine().await,
    ) {
        (Ok(failing), Ok(pending), Ok(quarantined)) => (failing, pending, quarantined),
        (Err(error), _, _) | (_, Err(error), _) | (_, _, Err(error)) => {
            return store_unavailable(&error, "The inbox could not be read");
        }
    };
    let reconciliation = match state.engine.last_reconciliation().await {
        Ok(run) => run.map(|run| {
            let report = serde_json::from_str::<StoredReport>(&run.report)
                .inspect_err(|error| {
                    tracing::warn!(%error, run_id = %run.run_id, "a stored reconciliation report cannot be read");
                })
                .ok()
                .map(ReportSummary::from);
            LastReconciliation {
                run_id: run.run_id,
                finished: chrono::DateTime::from_timestamp_millis(run.finished_at_ms)
                    .map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M UTC").to_string()),
                report,
            }
        }),
        Err(error) => return store_unavailable(&error, "The last reconciliation could not be read"),
    };
    let livemode = state.engine.livemode();
    let line = |row: subledger_store::InboxRow| InboxLine {
        stripe_href: stripe_event_link(&row.event_id, livemode, None),
        event_id: row.event_id,
        event_type: row.event_type,
        attempts: row.attempts,
        received: chrono::DateTime::from_timestamp_millis(row.received_at_ms)
            .map_or_else(String::new, |t| {
                t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
            }),
        error: row.last_error.unwrap_or_default(),
    };
    let page = InboxPage {
        failing: failing.into_iter().map(line).collect(),
        waiting: pending
            .into_iter()
            .filter(|row| row.last_error.is_none())
            .map(line)
            .collect(),
        quarantined: quarantined
            .into_iter()
            .map(|q| QuarantineLine {
                position: q.position,
                customer: q.aggregate_id,
                event_type: q.event_type,
                error: q.error,
            })
            .collect(),
        reconciliation,
    };
    render(&page, StatusCode::OK)
}

/// Makes a waiting or failing event due now, then back to the inbox.
async fn retry(
    Operator(state): Operator,
    axum::extract::Path(event_id): axum::extract::Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let well_formed = event_id.starts_with("evt_")
        && event_id.len() <= 255
        && event_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !well_formed {
        return page_error(
            StatusCode::BAD_REQUEST,
            "Not an event id",
            "A Stripe event id looks like evt_ followed by letters and digits.",
            true,
        );
    }
    match state
        .engine
        .retry_inbox(std::slice::from_ref(&event_id))
        .await
    {
        Ok(statuses) if statuses.iter().any(|(_, status)| status.is_some()) => {
            Redirect::to("/dashboard/inbox").into_response()
        }
        Ok(_) => page_error(
            StatusCode::NOT_FOUND,
            "No such event",
            &format!("The inbox holds no event {event_id}."),
            true,
        ),
        Err(error) => store_unavailable(&error, "The retry could not be recorded"),
    }
}

#[derive(Deserialize)]
struct HoldForm {
    reason: String,
}

async fn place_hold(
    Operator(state): Operator,
    names: RouteNames,
    headers: HeaderMap,
    form: Result<Form<HoldForm>, FormRejection>,
) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let Ok(customer) = names.customer() else {
        return not_a_customer(&names);
    };
    let reason = form
        .map(|Form(f)| f.reason.trim().to_owned())
        .unwrap_or_default();
    if reason.is_empty() || reason.len() > 500 {
        return page_error(
            StatusCode::BAD_REQUEST,
            "A hold needs a reason",
            "Say why the hold is placed, in at most 500 characters.",
            true,
        );
    }
    let hold_id = format!("hold_{}", uuid::Uuid::new_v4().simple());
    match state
        .engine
        .place_hold(
            customer.as_str(),
            NewHold {
                hold_id: hold_id.clone(),
                reason: reason.clone(),
                ..NewHold::default()
            },
            "dashboard",
        )
        .await
    {
        Ok(()) => after_change(&state, &customer).await,
        Err(error) => {
            tracing::warn!(%error, customer = %customer, "dashboard: a hold was refused");
            not_a_customer(&names)
        }
    }
}

async fn lift_hold(Operator(state): Operator, names: RouteNames, headers: HeaderMap) -> Response {
    if let Some(refused) = cross_site(&headers) {
        return refused;
    }
    let (Ok(customer), Ok(hold_id)) = (names.customer(), names.hold_id()) else {
        return not_a_customer(&names);
    };
    match state
        .engine
        .lift_hold(customer.as_str(), hold_id, None, "dashboard")
        .await
    {
        Ok(()) => after_change(&state, &customer).await,
        Err(error) => {
            tracing::warn!(%error, customer = %customer, "dashboard: lifting a hold was refused");
            page_error(
                StatusCode::NOT_FOUND,
                "No such hold",
                &format!("No hold “{hold_id}” is in force for {customer}."),
                true,
            )
        }
    }
}

/// Back to the customer's page once the change is in the answers.
async fn after_change(state: &AppState, customer: &CustomerId) -> Response {
    if let Err(error) = state.engine.project().await {
        tracing::warn!(%error, "dashboard: the change is recorded; the answers catch up shortly");
    }
    Redirect::to(&customer_href(customer)).into_response()
}
