//! The part of Stripe's REST API that Subledger's own code calls, served by the simulator:
//! test clocks (create, retrieve, advance), customers, payment methods, prices,
//! subscriptions, invoices and events (with `delivery_success`). Requests are form-encoded
//! and answers are Stripe's JSON, lists and errors, so async-stripe pointed at this base URL
//! works. Mutating requests honour `Idempotency-Key` as Stripe does.
//!
//! Objects created with `test_clock` live on that clock; the rest live on a default clock that
//! stays at the time the account was created. Every event emitted is forwarded, signed, to the
//! configured webhook endpoint, and its delivery outcome is what `delivery_success` filters.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use subledger_stripe::WebhookSecret;
use tokio::sync::Mutex;

use crate::delivery::{Deliverer, DeliveryMode, Target};
use crate::model::{Interval, MissingPaymentMethod, PaymentBehavior, RetryPolicy};
use crate::simulator::{SimError, Simulator};

/// Where the account forwards its events.
#[derive(Debug, Clone)]
pub struct Forwarding {
    pub target: Target,
    pub secret: WebhookSecret,
}

/// A simulated Stripe account: several test clocks and what lives on them.
#[derive(Debug)]
pub struct Account {
    clocks: BTreeMap<String, Simulator>,
    default_clock: String,
    policy: RetryPolicy,
    next_space: u32,
    idempotency: HashMap<String, (String, StatusCode, Value)>,
    delivered: HashMap<String, bool>,
    forwarding: Option<Deliverer>,
    /// Webhook delivery switched off (`POST /v1/test_helpers/webhooks enabled=false`): events
    /// still happen and are listed with `delivery_success=false`, as for an endpoint that is
    /// down or disabled.
    webhooks_off: bool,
    /// How many of the next requests to answer `429` (`POST /v1/test_helpers/rate_limit`).
    rate_limited: u32,
}

pub type SharedAccount = Arc<Mutex<Account>>;

impl Account {
    pub fn new(now: DateTime<Utc>, policy: RetryPolicy, forwarding: Option<Forwarding>) -> Self {
        let default = Simulator::in_space(now, policy.clone(), 1, Some("default".to_owned()));
        let default_clock = default.clock_id().to_owned();
        Self {
            clocks: BTreeMap::from([(default_clock.clone(), default)]),
            default_clock,
            policy,
            next_space: 2,
            idempotency: HashMap::new(),
            delivered: HashMap::new(),
            forwarding: forwarding
                .map(|f| Deliverer::new(DeliveryMode::InOrder, 0, f.secret, f.target)),
            webhooks_off: false,
            rate_limited: 0,
        }
    }

    /// An account whose default clock is `simulator`, built beforehand (a story told with
    /// the simulator's own API), so its objects are listed as an account's are.
    pub fn with_default_clock(
        simulator: Simulator,
        policy: RetryPolicy,
        forwarding: Option<Forwarding>,
    ) -> Self {
        let mut account = Self::new(simulator.now(), policy, forwarding);
        account.default_clock = simulator.clock_id().to_owned();
        account.clocks = BTreeMap::from([(simulator.clock_id().to_owned(), simulator)]);
        account.next_space = 1_000;
        account
    }

    /// The default clock's simulator, to tell a story on it directly.
    pub fn default_simulator_mut(&mut self) -> Option<&mut Simulator> {
        self.clocks.get_mut(&self.default_clock)
    }

    /// Lists these events as never delivered (`delivery_success=false`).
    pub fn mark_undelivered(&mut self, event_ids: impl IntoIterator<Item = String>) {
        for id in event_ids {
            self.delivered.insert(id, false);
        }
    }

    /// Marks every event so far as never delivered (an endpoint that was never set up, or
    /// was down for all of it).
    pub fn mark_all_undelivered(&mut self) {
        for sim in self.clocks.values_mut() {
            for event in sim.take_new_events() {
                if let Some(id) = event["id"].as_str() {
                    self.delivered.insert(id.to_owned(), false);
                }
            }
        }
    }

    pub fn shared(self) -> SharedAccount {
        Arc::new(Mutex::new(self))
    }

    fn clock_of(&self, predicate: impl Fn(&Simulator) -> bool) -> Option<String> {
        self.clocks
            .iter()
            .find(|(_, sim)| predicate(sim))
            .map(|(id, _)| id.clone())
    }

    fn sim(&mut self, clock: &str) -> Result<&mut Simulator, ApiError> {
        self.clocks
            .get_mut(clock)
            .ok_or_else(|| ApiError::missing("test_clock", clock))
    }

    /// Whose object `id` is, over every clock: `Some(account)` (`Some(None)`: the
    /// platform's own), `None` for an id no clock holds.
    fn owner_of_id(&self, id: &str) -> Option<Option<String>> {
        self.clocks
            .values()
            .find_map(|sim| sim.owner_of_id(id))
            .map(|owner| owner.map(str::to_owned))
    }

    /// Whose rendered object is: an event names its account; anything else belongs to the
    /// customer it is, or names (itself or through its invoice or PaymentIntent). `None` for
    /// objects of no customer (prices, test clocks), which every account sees here.
    fn owner_of(&self, object: &Value) -> Option<Option<String>> {
        if object.get("object").and_then(Value::as_str) == Some("event") {
            return Some(
                object
                    .get("account")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            );
        }
        ["id", "customer", "invoice", "payment_intent"]
            .iter()
            .filter_map(|field| object.get(*field).and_then(Value::as_str))
            .find_map(|id| self.owner_of_id(id))
    }

    fn customer_clock(&self, customer: &str) -> Result<String, ApiError> {
        self.clock_of(|sim| sim.customer(customer).is_ok())
            .ok_or_else(|| ApiError::missing("customer", customer))
    }

    fn schedule_clock(&self, schedule: &str) -> Result<String, ApiError> {
        self.clock_of(|sim| sim.has_schedule(schedule))
            .ok_or_else(|| ApiError::missing("subscription_schedule", schedule))
    }

    fn subscription_clock(&self, subscription: &str) -> Result<String, ApiError> {
        self.clock_of(|sim| sim.has_subscription(subscription))
            .ok_or_else(|| ApiError::missing("subscription", subscription))
    }

    /// Forwards every event not yet delivered and records each outcome.
    async fn forward(&mut self) {
        let mut events = Vec::new();
        for sim in self.clocks.values_mut() {
            events.extend(sim.take_new_events());
        }
        if self.webhooks_off {
            for event in events {
                if let Some(id) = event["id"].as_str() {
                    self.delivered.insert(id.to_owned(), false);
                }
            }
            return;
        }
        let Some(deliverer) = self.forwarding.as_mut() else {
            return;
        };
        for event in events {
            let id = event["id"].as_str().unwrap_or_default().to_owned();
            let ok = deliverer.deliver_one(event).await;
            self.delivered.insert(id, ok);
        }
    }

    /// Every event Stripe still keeps: those of the last 30 days (Stripe's `GET /v1/events`
    /// docs), by the time of the clock each happened on.
    fn all_events(&self) -> Vec<&Value> {
        const RETENTION_SECS: i64 = 30 * 24 * 3600;
        let mut events: Vec<(usize, &Value)> = Vec::new();
        for sim in self.clocks.values() {
            let kept_from = sim.now().timestamp() - RETENTION_SECS;
            events.extend(
                sim.events()
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e["created"].as_i64().is_some_and(|t| t >= kept_from)),
            );
        }
        // Newest first, as Stripe lists them; emission order breaks ties within a clock.
        events.sort_by(|(ia, a), (ib, b)| {
            (b["created"].as_i64(), ib).cmp(&(a["created"].as_i64(), ia))
        });
        events.into_iter().map(|(_, e)| e).collect()
    }
}

/// An error in Stripe's shape: `{"error": {"type", "code", "message", "param"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    decline_code: Option<&'static str>,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            kind: "invalid_request_error",
            code: None,
            decline_code: None,
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    fn missing(kind: &str, id: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            kind: "invalid_request_error",
            code: Some("resource_missing"),
            decline_code: None,
            message: format!("No such {kind}: '{id}'"),
            param: Some("id".to_owned()),
        }
    }
}

impl From<SimError> for ApiError {
    fn from(error: SimError) -> Self {
        match error {
            SimError::NotFound { kind, id } => Self::missing(kind, &id),
            SimError::UnknownCard(_) => Self::invalid(error.to_string(), Some("payment_method")),
            SimError::NoPaymentMethod(_) => Self {
                code: Some("resource_missing"),
                ..Self::invalid(
                    "This customer has no attached payment source or default payment method. \
                     Please consider adding a default payment method.",
                    None,
                )
            },
            // A card error is HTTP 402 `card_error` (Stripe's API reference, errors).
            SimError::CardDeclined(decline) => Self {
                status: StatusCode::PAYMENT_REQUIRED,
                kind: "card_error",
                code: Some(decline.code),
                decline_code: decline.decline_code,
                ..Self::invalid(error.to_string(), Some("payment_method"))
            },
            SimError::RequiresAuthentication => Self {
                status: StatusCode::PAYMENT_REQUIRED,
                kind: "card_error",
                code: Some("card_declined"),
                decline_code: Some("authentication_required"),
                ..Self::invalid(error.to_string(), None)
            },
            SimError::AdvanceTooFar { .. } => Self::invalid(error.to_string(), Some("frozen_time")),
            other => Self::invalid(other.to_string(), None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": {
            "type": self.kind,
            "code": self.code,
            "decline_code": self.decline_code,
            "message": self.message,
            "param": self.param,
        }});
        (self.status, Json(body)).into_response()
    }
}

type Params = Vec<(String, String)>;

fn param<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

fn required<'a>(params: &'a Params, key: &str) -> Result<&'a str, ApiError> {
    param(params, key)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::invalid(format!("Missing required param: {key}."), Some(key)))
}

fn number<T: std::str::FromStr>(params: &Params, key: &str) -> Result<Option<T>, ApiError> {
    param(params, key)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::invalid(format!("Invalid integer: {v}"), Some(key)))
        })
        .transpose()
}

fn metadata(params: &Params) -> BTreeMap<String, String> {
    params
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|rest| rest.strip_suffix(']'))
                .map(|key| (key.to_owned(), v.clone()))
        })
        .collect()
}

fn time(params: &Params, key: &str) -> Result<DateTime<Utc>, ApiError> {
    let secs: i64 = number(params, key)?
        .ok_or_else(|| ApiError::invalid(format!("Missing required param: {key}."), Some(key)))?;
    DateTime::from_timestamp(secs, 0)
        .ok_or_else(|| ApiError::invalid("Invalid timestamp", Some(key)))
}

/// Serves the simulated REST API for `account`.
pub fn router(account: SharedAccount) -> Router {
    Router::new()
        .route("/v1/test_helpers/test_clocks", post(create_clock))
        .route("/v1/test_helpers/test_clocks/{id}", get(retrieve_clock))
        .route(
            "/v1/test_helpers/test_clocks/{id}/advance",
            post(advance_clock),
        )
        .route("/v1/customers", post(create_customer).get(list_customers))
        .route(
            "/v1/customers/{id}",
            get(retrieve_customer)
                .post(update_customer)
                .delete(delete_customer),
        )
        .route(
            "/v1/payment_methods/{id}/attach",
            post(attach_payment_method),
        )
        .route("/v1/prices", post(create_price).get(list_prices))
        .route(
            "/v1/subscriptions",
            post(create_subscription).get(list_subscriptions),
        )
        .route(
            "/v1/subscriptions/{id}",
            get(retrieve_subscription)
                .post(update_subscription)
                .delete(cancel_subscription),
        )
        .route("/v1/subscriptions/{id}/resume", post(resume_subscription))
        .route("/v1/invoices/{id}/pay", post(pay_invoice))
        .route(
            "/v1/subscription_schedules",
            post(create_schedule).get(list_schedules),
        )
        .route("/v1/payment_intents", get(list_payment_intents))
        .route("/v1/test_helpers/webhooks", post(switch_webhooks))
        .route("/v1/test_helpers/rate_limit", post(rate_limit))
        .route(
            "/v1/subscription_schedules/{id}",
            get(retrieve_schedule).post(update_schedule),
        )
        .route(
            "/v1/subscription_schedules/{id}/release",
            post(release_schedule),
        )
        .route("/v1/invoices", get(list_invoices))
        .route(
            "/v1/entitlements/active_entitlements",
            get(list_active_entitlements),
        )
        .route("/v1/invoices/{id}", get(retrieve_invoice))
        .route("/v1/events", get(list_events))
        .route("/v1/events/{id}", get(retrieve_event))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&account),
            keep_accounts_apart,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&account),
            answer_rate_limited,
        ))
        .layer(axum::middleware::from_fn(require_api_key))
        .with_state(account)
}

/// Answers `429` while the account is told to (`POST /v1/test_helpers/rate_limit`), as
/// Stripe does past its rate limit: HTTP 429 with `error.type: rate_limit_error` (Stripe's
/// rate limits and error handling docs). Stripe documents backing off, not `Retry-After`;
/// the simulator sends one (1 s) so that the reader's handling of it is exercised, and the
/// reader backs off exponentially when a real answer carries none.
async fn answer_rate_limited(
    State(account): State<SharedAccount>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limited = {
        let mut account = account.lock().await;
        let limited =
            account.rate_limited > 0 && request.uri().path() != "/v1/test_helpers/rate_limit";
        if limited {
            account.rate_limited -= 1;
        }
        limited
    };
    if limited {
        let body = json!({ "error": {
            "type": "rate_limit_error",
            "code": "rate_limit",
            "message": "Request rate limit exceeded. Please retry after a short wait.",
        }});
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            Json(body),
        )
            .into_response();
    }
    next.run(request).await
}

/// `POST /v1/test_helpers/rate_limit` (`requests`: how many of the next requests get `429`).
/// The simulator's own helper: Stripe has no such endpoint.
async fn rate_limit(
    State(account): State<SharedAccount>,
    Form(params): Form<Params>,
) -> Result<Json<Value>, ApiError> {
    let requests = number::<u32>(&params, "requests")?
        .ok_or_else(|| ApiError::invalid("Missing required param: requests.", Some("requests")))?;
    account.lock().await.rate_limited = requests;
    Ok(Json(
        json!({ "object": "rate_limit", "requests": requests }),
    ))
}

/// `POST /v1/test_helpers/webhooks` (`enabled`: true | false): switches delivery to the
/// endpoint on or off. The simulator's own helper: at Stripe, an endpoint is disabled in the
/// Dashboard or is simply down.
async fn switch_webhooks(
    State(account): State<SharedAccount>,
    Form(params): Form<Params>,
) -> Result<Json<Value>, ApiError> {
    let enabled = match param(&params, "enabled") {
        Some("true") => true,
        Some("false") => false,
        _ => {
            return Err(ApiError::invalid(
                "enabled must be true or false",
                Some("enabled"),
            ))
        }
    };
    account.lock().await.webhooks_off = !enabled;
    Ok(Json(
        json!({ "object": "webhook_endpoint", "enabled": enabled }),
    ))
}

/// Stripe keeps each connected account's objects apart: a request made for one (the
/// `Stripe-Account` header; none: the platform's own account) finds, lists and changes only
/// that account's objects, and anything else is `No such …` (Stripe's docs, "Making API calls
/// for connected accounts"). Here the objects of every account live in one simulator, and
/// this layer draws the lines: objects named in the path or by `?customer=` must be the
/// account's, lists keep only its objects, and a retrieved object of another account is 404.
/// Of the creating calls, only `POST /v1/customers` acts in a connected account here (the
/// scenario runner makes the rest of a connected account's story on the simulator itself);
/// any other is refused rather than made in the platform's account by mistake.
async fn keep_accounts_apart(
    State(account): State<SharedAccount>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let asked = match request.headers().get("stripe-account").map(|v| v.to_str()) {
        None => None,
        Some(Ok(id)) if id.starts_with("acct_") => Some(id.to_owned()),
        Some(_) => {
            return ApiError::invalid("Stripe-Account must be an account id (acct_…)", None)
                .into_response()
        }
    };
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let named_customer = request.uri().query().and_then(|query| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix("customer="))
            .map(str::to_owned)
    });
    let mut segments = path.trim_start_matches('/').split('/');
    let resource = segments.nth(1).unwrap_or_default().to_owned();
    let in_path = segments.next().map(str::to_owned);
    {
        let account = account.lock().await;
        for id in in_path.iter().chain(named_customer.iter()) {
            if account.owner_of_id(id).is_some_and(|owner| owner != asked) {
                return ApiError::missing(resource.trim_end_matches('s'), id).into_response();
            }
        }
    }
    if asked.is_some() && method == Method::POST && in_path.is_none() && path != "/v1/customers" {
        return ApiError::invalid(
            format!("the simulator makes only customers in a connected account, not `{path}`"),
            None,
        )
        .into_response();
    }
    let response = next.run(request).await;
    if method != Method::GET || !response.status().is_success() {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::invalid("the answer could not be read", None).into_response();
    };
    let Ok(mut answer) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let account = account.lock().await;
    if let Some(data) = answer.get_mut("data").and_then(Value::as_array_mut) {
        data.retain(|object| account.owner_of(object).is_none_or(|owner| owner == asked));
    } else if account
        .owner_of(&answer)
        .is_some_and(|owner| owner != asked)
    {
        let id = in_path.unwrap_or_default();
        return ApiError::missing(resource.trim_end_matches('s'), &id).into_response();
    }
    let mut parts = parts;
    // The filtered list is shorter than the answer's length said.
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = serde_json::to_vec(&answer).unwrap_or_default();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Stripe refuses requests without a secret or restricted key.
async fn require_api_key(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let key = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !(key.starts_with("sk_test_") || key.starts_with("rk_test_")) {
        let body = json!({ "error": {
            "type": "authentication_error",
            "message": "Invalid API Key provided: this simulator takes test-mode keys (sk_test_… or rk_test_…)",
        }});
        return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
    }
    next.run(request).await
}

/// Runs a mutating request once per `Idempotency-Key`, replaying the first answer for the
/// same request and refusing the key for a different one, as Stripe does.
async fn idempotent(
    account: &SharedAccount,
    headers: &HeaderMap,
    fingerprint: String,
    work: impl FnOnce(&mut Account) -> Result<Value, ApiError>,
) -> Response {
    let mut account = account.lock().await;
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(key) = &key {
        if let Some((seen, status, body)) = account.idempotency.get(key) {
            if *seen != fingerprint {
                let body = json!({ "error": {
                    "type": "idempotency_error",
                    "message": format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}'."),
                }});
                return (StatusCode::BAD_REQUEST, Json(body)).into_response();
            }
            return (*status, Json(body.clone())).into_response();
        }
    }
    let body = match work(&mut account) {
        Ok(body) => body,
        Err(error) => return error.into_response(),
    };
    let status = StatusCode::OK;
    account.forward().await;
    if let Some(key) = key {
        account
            .idempotency
            .insert(key, (fingerprint, status, body.clone()));
    }
    (status, Json(body)).into_response()
}

fn fingerprint(method: &Method, path: &str, params: &Params) -> String {
    let mut sorted = params.clone();
    sorted.sort();
    format!("{method} {path} {sorted:?}")
}

async fn create_clock(
    State(account): State<SharedAccount>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(&Method::POST, "/v1/test_helpers/test_clocks", &params);
    idempotent(&account, &headers, print, |account| {
        let frozen = time(&params, "frozen_time")?;
        let space = account.next_space;
        account.next_space += 1;
        let mut sim = Simulator::in_space(
            frozen,
            account.policy.clone(),
            space,
            param(&params, "name").map(str::to_owned),
        );
        // Prices belong to the account: make every known price usable on the new clock.
        let prices: Vec<_> = account
            .clocks
            .values()
            .flat_map(|s| s.prices_all().cloned().collect::<Vec<_>>())
            .collect();
        for price in &prices {
            sim.register_price(price);
        }
        let body = sim.clock_json();
        account.clocks.insert(sim.clock_id().to_owned(), sim);
        Ok(body)
    })
    .await
}

async fn retrieve_clock(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut account = account.lock().await;
    Ok(Json(account.sim(&id)?.clock_json()))
}

async fn advance_clock(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(
        &Method::POST,
        &format!("/v1/test_helpers/test_clocks/{id}/advance"),
        &params,
    );
    idempotent(&account, &headers, print, |account| {
        let to = time(&params, "frozen_time")?;
        let sim = account.sim(&id)?;
        if to <= sim.now() {
            return Err(ApiError::invalid(
                "The test clock can only be advanced to a time after its current frozen_time.",
                Some("frozen_time"),
            ));
        }
        sim.advance_to(to)?;
        // Stripe answers while the clock is still moving; this one has already arrived, and
        // reads as `ready` from now on (`../shared/STRIPE.md`, test clocks).
        Ok(sim.advancing_clock_json(to))
    })
    .await
}

async fn create_customer(
    State(account): State<SharedAccount>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(&Method::POST, "/v1/customers", &params);
    idempotent(&account, &headers, print, |account| {
        let clock = param(&params, "test_clock")
            .map_or_else(|| account.default_clock.clone(), str::to_owned);
        let sim = account.sim(&clock)?;
        let id = sim.fresh_id("cus");
        let connected = headers.get("stripe-account").and_then(|v| v.to_str().ok());
        sim.create_customer_in(connected, &id, metadata(&params))?;
        if let Some(card) = param(&params, "payment_method") {
            let pm = sim.attach_payment_method(&id, card)?;
            if param(&params, "invoice_settings[default_payment_method]").is_some() {
                sim.set_default_payment_method(&id, &pm)?;
            }
        }
        Ok(sim.customer_json(&id)?)
    })
    .await
}

async fn update_customer(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(&Method::POST, &format!("/v1/customers/{id}"), &params);
    idempotent(&account, &headers, print, |account| {
        let clock = account.customer_clock(&id)?;
        let sim = account.sim(&clock)?;
        let metadata = metadata(&params);
        if !metadata.is_empty() {
            sim.update_customer_metadata(&id, metadata)?;
        }
        if let Some(pm) = param(&params, "invoice_settings[default_payment_method]") {
            sim.set_default_payment_method(&id, pm)?;
        }
        Ok(sim.customer_json(&id)?)
    })
    .await
}

async fn retrieve_customer(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut account = account.lock().await;
    let clock = account.customer_clock(&id)?;
    Ok(Json(account.sim(&clock)?.customer_json(&id)?))
}

async fn delete_customer(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let print = fingerprint(&Method::DELETE, &format!("/v1/customers/{id}"), &Vec::new());
    idempotent(&account, &headers, print, |account| {
        let clock = account.customer_clock(&id)?;
        account.sim(&clock)?.delete_customer(&id)?;
        Ok(json!({ "id": id, "object": "customer", "deleted": true }))
    })
    .await
}

async fn attach_payment_method(
    State(account): State<SharedAccount>,
    Path(card): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(
        &Method::POST,
        &format!("/v1/payment_methods/{card}/attach"),
        &params,
    );
    idempotent(&account, &headers, print, |account| {
        let customer = required(&params, "customer")?.to_owned();
        let clock = account.customer_clock(&customer)?;
        let sim = account.sim(&clock)?;
        let pm = sim.attach_payment_method(&customer, &card)?;
        Ok(sim.payment_method_json(&pm)?)
    })
    .await
}

async fn create_price(
    State(account): State<SharedAccount>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(&Method::POST, "/v1/prices", &params);
    idempotent(&account, &headers, print, |account| {
        let amount: i64 = number(&params, "unit_amount")?.ok_or_else(|| {
            ApiError::invalid("Missing required param: unit_amount.", Some("unit_amount"))
        })?;
        let currency = required(&params, "currency")?.to_owned();
        let interval = match required(&params, "recurring[interval]")? {
            "month" => Interval::Month,
            "year" => Interval::Year,
            other => {
                return Err(ApiError::invalid(
                    format!("Invalid recurring[interval]: must be month or year, not {other}"),
                    Some("recurring[interval]"),
                ))
            }
        };
        let lookup_key = param(&params, "lookup_key").map(str::to_owned);
        let default_clock = account.default_clock.clone();
        let sim = account.sim(&default_clock)?;
        let id = sim.fresh_id("price");
        sim.create_price(&id, amount, &currency, interval, lookup_key.as_deref())?;
        let price = sim.price_record(&id).cloned();
        let body = sim.price_json(&id)?;
        if let Some(price) = price {
            for sim in account.clocks.values_mut() {
                sim.register_price(&price);
            }
        }
        Ok(body)
    })
    .await
}

async fn create_subscription(
    State(account): State<SharedAccount>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(&Method::POST, "/v1/subscriptions", &params);
    idempotent(&account, &headers, print, |account| {
        let customer = required(&params, "customer")?.to_owned();
        let price = required(&params, "items[0][price]")?.to_owned();
        let quantity = number(&params, "items[0][quantity]")?.unwrap_or(1);
        let trial_days = number(&params, "trial_period_days")?;
        let payment_behavior = match param(&params, "payment_behavior") {
            None => PaymentBehavior::default(),
            Some(value) => PaymentBehavior::parse(value).ok_or_else(|| {
                ApiError::invalid(
                    format!("Invalid payment_behavior: must be one of allow_incomplete, default_incomplete or error_if_incomplete (got `{value}`)"),
                    Some("payment_behavior"),
                )
            })?,
        };
        let key = "trial_settings[end_behavior][missing_payment_method]";
        let missing_payment_method = match param(&params, key) {
            None => MissingPaymentMethod::default(),
            Some(value) => MissingPaymentMethod::parse(value).ok_or_else(|| {
                ApiError::invalid(
                    format!("Invalid {key}: must be one of create_invoice, pause or cancel (got `{value}`)"),
                    Some(key),
                )
            })?,
        };
        let clock = account.customer_clock(&customer)?;
        let sim = account.sim(&clock)?;
        let id = sim.fresh_id("sub");
        let options = crate::SubscribeOptions {
            trial_days,
            payment_behavior,
            missing_payment_method,
        };
        sim.subscribe_with(&customer, &id, &price, quantity, options)?;
        Ok(sim.subscription_json(&id)?)
    })
    .await
}

async fn update_subscription(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(&Method::POST, &format!("/v1/subscriptions/{id}"), &params);
    idempotent(&account, &headers, print, |account| {
        let clock = account.subscription_clock(&id)?;
        let sim = account.sim(&clock)?;
        let cancel_scheduled = sim.subscription(&id)?.cancel_at_period_end;
        match param(&params, "cancel_at_period_end") {
            Some("true") => sim.cancel_at_period_end(&id)?,
            Some("false") if cancel_scheduled => sim.undo_cancel(&id)?,
            Some("false") | None => {}
            Some(other) => {
                return Err(ApiError::invalid(
                    format!("Invalid boolean: {other}"),
                    Some("cancel_at_period_end"),
                ))
            }
        }
        let cancel_at = param(&params, "cancel_at");
        if cancel_at == Some("") {
            let current = sim.subscription(&id)?;
            if current.cancel_at.is_some() || current.cancel_at_period_end {
                sim.undo_cancel(&id)?;
            }
        } else if let Some(at) = number::<i64>(&params, "cancel_at")? {
            let at = DateTime::from_timestamp(at, 0)
                .ok_or_else(|| ApiError::invalid("Invalid timestamp", Some("cancel_at")))?;
            sim.cancel_at(&id, at)?;
        }
        if let Some(price) = param(&params, "items[0][price]") {
            let proration = param(&params, "proration_behavior").unwrap_or("create_prorations");
            let pending = match param(&params, "payment_behavior") {
                None | Some("allow_incomplete") => false,
                Some("pending_if_incomplete") => true,
                Some(other) => {
                    return Err(ApiError::invalid(
                        format!("Invalid payment_behavior: {other} (this simulator changes prices with allow_incomplete or pending_if_incomplete)"),
                        Some("payment_behavior"),
                    ))
                }
            };
            sim.change_price_now_with(&id, price, proration, pending)?;
        }
        if let Some(behavior) = param(&params, "pause_collection[behavior]") {
            sim.pause_collection(&id, behavior)?;
        } else if param(&params, "pause_collection") == Some("") {
            sim.resume_collection(&id)?;
        }
        Ok(sim.subscription_json(&id)?)
    })
    .await
}

async fn cancel_subscription(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let print = fingerprint(
        &Method::DELETE,
        &format!("/v1/subscriptions/{id}"),
        &Vec::new(),
    );
    idempotent(&account, &headers, print, |account| {
        let clock = account.subscription_clock(&id)?;
        let sim = account.sim(&clock)?;
        sim.cancel_now(&id)?;
        Ok(sim.subscription_json(&id)?)
    })
    .await
}

/// `POST /v1/subscriptions/{id}/resume` (API reference, "Resume a subscription").
async fn resume_subscription(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/subscriptions/{id}/resume");
    let print = fingerprint(&Method::POST, &path, &Vec::new());
    idempotent(&account, &headers, print, |account| {
        let clock = account.subscription_clock(&id)?;
        let sim = account.sim(&clock)?;
        sim.resume_subscription(&id)?;
        Ok(sim.subscription_json(&id)?)
    })
    .await
}

/// `POST /v1/invoices/{id}/pay` (API reference, "Pay an invoice").
async fn pay_invoice(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/invoices/{id}/pay");
    let print = fingerprint(&Method::POST, &path, &Vec::new());
    idempotent(&account, &headers, print, |account| {
        let clock = account
            .clock_of(|sim| sim.has_invoice(&id))
            .ok_or_else(|| ApiError::missing("invoice", &id))?;
        let sim = account.sim(&clock)?;
        sim.pay_invoice_now(&id)?;
        Ok(sim.invoice_json(&id)?)
    })
    .await
}

async fn retrieve_subscription(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut account = account.lock().await;
    let clock = account.subscription_clock(&id)?;
    Ok(Json(account.sim(&clock)?.subscription_json(&id)?))
}

async fn retrieve_invoice(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut account = account.lock().await;
    let clock = account
        .clock_of(|sim| sim.has_invoice(&id))
        .ok_or_else(|| ApiError::missing("invoice", &id))?;
    Ok(Json(account.sim(&clock)?.invoice_json(&id)?))
}

async fn retrieve_event(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    account
        .all_events()
        .into_iter()
        .find(|e| e["id"] == id.as_str())
        .cloned()
        .map(Json)
        .ok_or_else(|| ApiError::missing("event", &id))
}

/// A Stripe list page: newest first, `limit` (1–100, default 10), `starting_after`.
fn page(
    objects: Vec<Value>,
    url: &str,
    query: &HashMap<String, String>,
) -> Result<Json<Value>, ApiError> {
    let limit: usize = match query.get("limit") {
        Some(l) => l
            .parse()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| ApiError::invalid("limit must be between 1 and 100", Some("limit")))?,
        None => 10,
    };
    let start = match query.get("starting_after") {
        Some(after) => objects
            .iter()
            .position(|o| o["id"] == after.as_str())
            .map(|i| i + 1)
            .ok_or_else(|| ApiError::missing("object", after))?,
        None => 0,
    };
    let rest = objects.len().saturating_sub(start);
    let data: Vec<Value> = objects.into_iter().skip(start).take(limit).collect();
    Ok(Json(
        json!({ "object": "list", "data": data, "has_more": rest > limit, "url": url }),
    ))
}

/// A list page of `objects`, newest first, after `created[gte]`.
fn newest_listed(
    objects: Vec<Value>,
    url: &str,
    query: &HashMap<String, String>,
) -> Result<Json<Value>, ApiError> {
    page(created_since(newest_first(objects), query)?, url, query)
}

fn newest_first(mut objects: Vec<Value>) -> Vec<Value> {
    objects.sort_by(|a, b| {
        (b["created"].as_i64(), b["id"].as_str()).cmp(&(a["created"].as_i64(), a["id"].as_str()))
    });
    objects
}

/// The clocks a list looks at: the named one, or (like Stripe, which hides test-clock objects
/// unless asked) the default clock.
fn listed_clocks<'a>(
    account: &'a Account,
    query: &HashMap<String, String>,
) -> Result<Vec<&'a Simulator>, ApiError> {
    match query.get("test_clock") {
        Some(clock) => account
            .clocks
            .get(clock)
            .map(|sim| vec![sim])
            .ok_or_else(|| ApiError::missing("test_clock", clock)),
        None => Ok(account
            .clocks
            .get(&account.default_clock)
            .into_iter()
            .collect()),
    }
}

async fn list_customers(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let mut objects = Vec::new();
    for sim in listed_clocks(&account, &query)? {
        for customer in sim.customers() {
            objects.push(sim.customer_json(&customer.id)?);
        }
    }
    newest_listed(objects, "/v1/customers", &query)
}

/// `GET /v1/prices`: Stripe's API reference ("List all prices") lists the active prices
/// unless `active=false` asks for the archived ones; this simulator archives none.
async fn list_prices(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let mut objects = Vec::new();
    if query.get("active").map(String::as_str) != Some("false") {
        // Prices belong to the account: every clock holds them all.
        if let Some(sim) = account.clocks.get(&account.default_clock) {
            for price in sim.prices_all() {
                objects.push(sim.price_json(&price.id)?);
            }
        }
    }
    newest_listed(objects, "/v1/prices", &query)
}

async fn list_subscriptions(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let status = query.get("status").map(String::as_str);
    let mut objects = Vec::new();
    let clocks: Vec<&Simulator> = match query.get("customer") {
        Some(customer) => account
            .clocks
            .values()
            .filter(|s| s.customer(customer).is_ok())
            .collect(),
        None => listed_clocks(&account, &query)?,
    };
    for sim in clocks {
        for subscription in sim.subscriptions() {
            if query
                .get("customer")
                .is_some_and(|c| *c != subscription.customer)
            {
                continue;
            }
            let shown = match status {
                // Like Stripe: canceled subscriptions only with status=all or status=canceled.
                None => subscription.status.as_str() != "canceled",
                Some("all") => true,
                Some(wanted) => subscription.status.as_str() == wanted,
            };
            if shown {
                let mut object = sim.subscription_json(&subscription.id)?;
                // `expand[]=data.latest_invoice`: the invoice object in place of its id
                // (Stripe's "Expanding responses" docs: list expansions take `data.` paths).
                if query.get("expand[]").map(String::as_str) == Some("data.latest_invoice") {
                    if let Some(invoice) = object["latest_invoice"].as_str().map(str::to_owned) {
                        object["latest_invoice"] = sim.invoice_json(&invoice)?;
                    }
                }
                objects.push(object);
            }
        }
    }
    newest_listed(objects, "/v1/subscriptions", &query)
}

async fn list_active_entitlements(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let customer = query
        .get("customer")
        .ok_or_else(|| ApiError::invalid("Missing required param: customer.", Some("customer")))?;
    let mut account = account.lock().await;
    let clock = account.customer_clock(customer)?;
    Ok(Json(
        account.sim(&clock)?.active_entitlements_json(customer)?,
    ))
}

async fn list_invoices(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let mut objects = Vec::new();
    for sim in account.clocks.values() {
        for invoice in sim.invoices() {
            let wanted = query.get("customer").is_none_or(|c| *c == invoice.customer)
                && query
                    .get("subscription")
                    .is_none_or(|s| Some(s) == invoice.subscription.as_ref())
                && query
                    .get("status")
                    .is_none_or(|s| s == invoice.status.as_str());
            if wanted {
                objects.push(sim.invoice_json(&invoice.id)?);
            }
        }
    }
    newest_listed(objects, "/v1/invoices", &query)
}

async fn list_events(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let delivery_success = match query.get("delivery_success").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            return Err(ApiError::invalid(
                "delivery_success must be true or false",
                Some("delivery_success"),
            ))
        }
    };
    let objects: Vec<Value> = account
        .all_events()
        .into_iter()
        .filter(|e| query.get("type").is_none_or(|t| e["type"] == t.as_str()))
        .filter(|e| {
            delivery_success.is_none_or(|wanted| {
                e["id"].as_str().and_then(|id| account.delivered.get(id)) == Some(&wanted)
            })
        })
        .cloned()
        .collect();
    page(created_since(objects, &query)?, "/v1/events", &query)
}

/// `created[gte]`, as every Stripe list takes it.
fn created_since(
    objects: Vec<Value>,
    query: &HashMap<String, String>,
) -> Result<Vec<Value>, ApiError> {
    let Some(since) = query.get("created[gte]") else {
        return Ok(objects);
    };
    let since: i64 = since
        .parse()
        .map_err(|_| ApiError::invalid("created[gte] must be a Unix timestamp", Some("created")))?;
    Ok(objects
        .into_iter()
        .filter(|o| o["created"].as_i64().is_some_and(|c| c >= since))
        .collect())
}

async fn list_payment_intents(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let objects: Vec<Value> = listed_clocks(&account, &query)?
        .into_iter()
        .flat_map(Simulator::payment_intents_json)
        .filter(|pi| {
            query
                .get("customer")
                .is_none_or(|c| pi["customer"] == c.as_str())
        })
        .collect();
    newest_listed(objects, "/v1/payment_intents", &query)
}

/// Every schedule on the listed clock (ended ones too).
async fn list_schedules(
    State(account): State<SharedAccount>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let mut objects = Vec::new();
    for sim in listed_clocks(&account, &query)? {
        for id in sim.schedule_ids() {
            objects.push(sim.schedule_json(id)?);
        }
    }
    let objects = objects
        .into_iter()
        .filter(|s| {
            query
                .get("customer")
                .is_none_or(|c| s["customer"] == c.as_str())
        })
        .collect();
    newest_listed(objects, "/v1/subscription_schedules", &query)
}

/// `POST /v1/subscription_schedules` with `from_subscription` (API reference, "Create a
/// schedule"): one phase, the current price until the period ends.
async fn create_schedule(
    State(account): State<SharedAccount>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(&Method::POST, "/v1/subscription_schedules", &params);
    idempotent(&account, &headers, print, |account| {
        let subscription = required(&params, "from_subscription")?.to_owned();
        let clock = account.subscription_clock(&subscription)?;
        let sim = account.sim(&clock)?;
        let id = sim.create_schedule(&subscription).map_err(|e| match e {
            SimError::Invalid(message) => ApiError::invalid(message, Some("from_subscription")),
            other => other.into(),
        })?;
        Ok(sim.schedule_json(&id)?)
    })
    .await
}

async fn retrieve_schedule(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let account = account.lock().await;
    let clock = account.schedule_clock(&id)?;
    let sim = account
        .clocks
        .get(&clock)
        .ok_or_else(|| ApiError::missing("test_clock", &clock))?;
    Ok(Json(sim.schedule_json(&id)?))
}

/// Accepts the two-phase update that schedules a price for the end of the current period:
/// `phases[1][items][0][price]` is the next phase's price.
async fn update_schedule(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    let print = fingerprint(
        &Method::POST,
        &format!("/v1/subscription_schedules/{id}"),
        &params,
    );
    idempotent(&account, &headers, print, |account| {
        let clock = account.schedule_clock(&id)?;
        let next = required(&params, "phases[1][items][0][price]")?.to_owned();
        let sim = account.sim(&clock)?;
        let subscription = sim.schedule_json(&id)?["subscription"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("subscription schedule {id} has ended and cannot be updated"),
                    None,
                )
            })?;
        sim.schedule_change(&subscription, &next, Some(&id))?;
        Ok(sim.schedule_json(&id)?)
    })
    .await
}

/// `POST /v1/subscription_schedules/{id}/release` (API reference, "Release a schedule"): the
/// subscription stays, without the schedule.
async fn release_schedule(
    State(account): State<SharedAccount>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/v1/subscription_schedules/{id}/release");
    let print = fingerprint(&Method::POST, &path, &Vec::new());
    idempotent(&account, &headers, print, |account| {
        let clock = account.schedule_clock(&id)?;
        let sim = account.sim(&clock)?;
        sim.release_schedule(&id)?;
        Ok(sim.schedule_json(&id)?)
    })
    .await
}
