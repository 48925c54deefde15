//! Entitlement reads. The usual question ("now") is answered from the engine's in-memory
//! index: no query per request, the whole-customer answer serialized when it last changed.
//! Questions about the past (`?at=`, `?as_known_at=`) replay the customer's events.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use subledger_domain::entitlements::{Entitlements, FeatureValue};
use subledger_domain::ids::CustomerId;
use subledger_engine::{answer_digest, digest_hex, Basis};

use crate::auth::Authorized;
use crate::error::ApiError;
use crate::paths::RouteNames;
use crate::AppState;

/// `?at=<RFC 3339>` (by when things happened at Stripe), `?as_known_at=<RFC 3339>` (by what
/// Subledger had learned then), or both (what Subledger had learned by `as_known_at` about the
/// moment `at`).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct AsOf {
    /// RFC 3339: answer by what had happened at Stripe then
    at: Option<String>,
    /// RFC 3339: answer by what Subledger had learned by then
    as_known_at: Option<String>,
}

/// `?at=<RFC 3339>` on an operator's change: when it happened (default: now).
#[derive(Debug, Deserialize)]
pub(crate) struct AtQuery {
    pub(crate) at: Option<String>,
}

/// An optional RFC 3339 time named `name`, or a `400 invalid_time` naming it.
pub(crate) fn optional_time(
    name: &str,
    value: Option<&str>,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    value.map(|value| parse_time(name, value)).transpose()
}

fn parse_time(name: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_time",
                format!(
                    "`{name}` must be an RFC 3339 time like 2026-01-31T12:00:00Z, not `{value}`"
                ),
            )
        })
}

impl AsOf {
    fn parse(
        query: Result<Query<AsOf>, QueryRejection>,
    ) -> Result<Option<(DateTime<Utc>, Basis)>, ApiError> {
        let Query(query) = query.map_err(|rejection| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                rejection.body_text(),
            )
        })?;
        match (query.at, query.as_known_at) {
            (Some(at), Some(known)) => Ok(Some((
                parse_time("at", &at)?,
                Basis::KnownBy(parse_time("as_known_at", &known)?),
            ))),
            (Some(at), None) => Ok(Some((parse_time("at", &at)?, Basis::Effective))),
            (None, Some(known)) => Ok(Some((parse_time("as_known_at", &known)?, Basis::Known))),
            (None, None) => Ok(None),
        }
    }
}

fn not_found(customer_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "customer_not_found",
        format!("no billing facts are known for customer `{customer_id}`"),
    )
}

pub(crate) fn engine_failed(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "engine query failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "the answer could not be computed; retry later",
    )
}

/// The answer about the past, or `None` when the question is about now.
async fn in_the_past(
    state: &AppState,
    customer_id: &str,
    as_of: Option<(DateTime<Utc>, Basis)>,
) -> Result<Option<Entitlements>, ApiError> {
    let Some((at, basis)) = as_of else {
        return Ok(None);
    };
    state
        .engine
        .entitlements_at(customer_id, at, basis)
        .await
        .map_err(engine_failed)?
        .map(Some)
        .ok_or_else(|| not_found(customer_id))
}

/// A customer's entitlements: plans, features, subscriptions, dunning, scheduled changes.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/entitlements", tag = "entitlements",
    params(("customer_id" = String, Path, description = "Stripe customer id"),
        AsOf,
    ),
    responses((status = 200, body = subledger_domain::entitlements::Entitlements),
        (status = 400, description = "A malformed time or query", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 404, description = "Unknown customer", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn customer_entitlements(
    Authorized(state): Authorized,
    names: RouteNames,
    headers: HeaderMap,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    entitlements_of(&state, customer.as_str(), AsOf::parse(query)?, &headers).await
}

/// `GET /v1/users/{user_id}/entitlements`: the same answer, found by the product's user id.
#[utoipa::path(get, path = "/v1/users/{user_id}/entitlements", tag = "entitlements",
    params(("user_id" = String, Path, description = "Your product's user id, from the customer's metadata"),
        AsOf,
    ),
    responses((status = 200, body = subledger_domain::entitlements::Entitlements),
        (status = 400, description = "A malformed time or query", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 404, description = "Unknown customer", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn user_entitlements(
    Authorized(state): Authorized,
    names: RouteNames,
    headers: HeaderMap,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let as_of = AsOf::parse(query)?;
    entitlements_of(&state, &customer_of_user(&state, &names)?, as_of, &headers).await
}

fn customer_of_user(state: &AppState, names: &RouteNames) -> Result<String, ApiError> {
    let (account, user_id) = names.user()?;
    state
        .engine
        .customer_of_user(account, user_id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "user_not_found",
                format!("no customer's metadata names user `{user_id}`"),
            )
        })
}

/// The `ETag` of an answer's bytes (a past answer's, a feature's of the past: those not
/// prepared with a digest).
fn etag_of(bytes: &[u8]) -> String {
    format!("\"{}\"", digest_hex(&answer_digest(bytes)))
}

/// Whether the client's `If-None-Match` names `etag` (or `*`).
fn client_has(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(|tag| tag.trim().trim_start_matches("W/"))
        .any(|tag| tag == etag || tag == "*")
}

/// An answer with its validator and how long it may be reused: `304 Not Modified` (no body)
/// when the client already has it. `max_age` never reaches past `valid_until`.
fn validated(
    headers: &HeaderMap,
    etag: &str,
    max_age: std::time::Duration,
    valid_until: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    body: Bytes,
) -> Response {
    let until_deadline = valid_until.map_or(u64::MAX, |until| {
        u64::try_from((until - now).num_seconds()).unwrap_or(0)
    });
    let max_age = max_age.as_secs().min(until_deadline);
    let cache = [
        (header::ETAG, etag.to_owned()),
        (header::CACHE_CONTROL, format!("private, max-age={max_age}")),
    ];
    if client_has(headers, etag) {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (cache, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn entitlements_of(
    state: &AppState,
    customer_id: &str,
    as_of: Option<(DateTime<Utc>, Basis)>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let now = state.engine.now();
    if let Some(past) = in_the_past(state, customer_id, as_of).await? {
        let body = Bytes::from(serde_json::to_vec(&past).map_err(engine_failed)?);
        // A later-learned fact can still change an answer about the past: revalidate.
        let etag = etag_of(&body);
        return Ok(validated(
            headers,
            &etag,
            std::time::Duration::ZERO,
            None,
            now,
            body,
        ));
    }
    let found = state
        .engine
        .entitlements(customer_id)
        .ok_or_else(|| not_found(customer_id))?;
    let json = found.json().map_err(|error| {
        tracing::error!(%error, customer_id, "a prepared answer cannot be expanded");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "answer_unavailable",
            "this customer's entitlements cannot be answered right now",
        )
    })?;
    Ok(validated(
        headers,
        &format!("\"{}\"", found.digest()),
        state.engine.answer_max_age(),
        found.valid_until(),
        now,
        json,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct FeatureAnswer {
    customer: String,
    /// The connected account the customer belongs to; absent for the platform's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    feature: String,
    enabled: bool,
    /// The limit of a metered feature; null for a boolean one.
    limit: Option<u64>,
}

/// A customer's domain events, oldest first.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Timeline {
    customer: String,
    /// The connected account the customer belongs to; absent for the platform's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    account: Option<String>,
    events: Vec<subledger_engine::TimelineEntry>,
}

/// One feature; a feature the customer's plans do not grant is disabled.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/entitlements/{feature}", tag = "entitlements",
    params(("customer_id" = String, Path), ("feature" = String, Path),
        AsOf,
    ),
    responses((status = 200, body = FeatureAnswer),
        (status = 400, description = "A malformed time or query", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 404, description = "Unknown customer", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn customer_feature(
    Authorized(state): Authorized,
    names: RouteNames,
    headers: HeaderMap,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    feature_of(
        &state,
        &customer,
        names.feature()?,
        AsOf::parse(query)?,
        &headers,
    )
    .await
}

#[utoipa::path(get, path = "/v1/users/{user_id}/entitlements/{feature}", tag = "entitlements",
    params(("user_id" = String, Path), ("feature" = String, Path),
        AsOf,
    ),
    responses((status = 200, body = FeatureAnswer),
        (status = 400, description = "A malformed time or query", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 404, description = "Unknown customer", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn user_feature(
    Authorized(state): Authorized,
    names: RouteNames,
    headers: HeaderMap,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let as_of = AsOf::parse(query)?;
    let customer = CustomerId::new(customer_of_user(&state, &names)?);
    feature_of(&state, &customer, names.feature()?, as_of, &headers).await
}

async fn feature_of(
    state: &AppState,
    customer: &CustomerId,
    feature: &str,
    as_of: Option<(DateTime<Utc>, Basis)>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let customer_id = customer.as_str();
    let now = state.engine.now();
    // The whole answer's digest stands for the feature's too (the same answer, the same
    // feature), so the hot path hashes nothing; an answer about the past is hashed.
    let (value, prepared): (FeatureValue, _) = match in_the_past(state, customer_id, as_of).await? {
        Some(past) => (past.feature(feature), None),
        None => {
            let found = state
                .engine
                .entitlements(customer_id)
                .ok_or_else(|| not_found(customer_id))?;
            (found.feature(feature), Some(found))
        }
    };
    let body = serde_json::to_vec(&FeatureAnswer {
        customer: customer.stripe_id().to_owned(),
        account: customer.account().map(str::to_owned),
        feature: feature.to_owned(),
        enabled: value.enabled,
        limit: value.limit,
    })
    .map_err(engine_failed)?;
    Ok(match prepared {
        Some(found) => validated(
            headers,
            &format!("\"{}\"", found.digest()),
            state.engine.answer_max_age(),
            found.valid_until(),
            now,
            Bytes::from(body),
        ),
        None => {
            let etag = etag_of(&body);
            validated(
                headers,
                &etag,
                std::time::Duration::ZERO,
                None,
                now,
                Bytes::from(body),
            )
        }
    })
}

/// `GET /v1/customers/{id}/entitlements/{feature}/explain`: the decision with its reasons.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/entitlements/{feature}/explain", tag = "entitlements",
    params(("customer_id" = String, Path), ("feature" = String, Path),
        AsOf,
    ),
    responses((status = 200, body = subledger_engine::explain::Explanation),
        (status = 400, description = "A malformed time or query", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 404, description = "Unknown customer", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn explain_feature(
    Authorized(state): Authorized,
    names: RouteNames,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let as_of = AsOf::parse(query)?;
    let customer = names.customer()?;
    let explanation = state
        .engine
        .explain(customer.as_str(), names.feature()?, as_of)
        .await
        .map_err(engine_failed)?
        .ok_or_else(|| not_found(customer.as_str()))?;
    Ok(Json(explanation).into_response())
}

/// `GET /v1/customers/{id}/timeline`: the customer's domain events in order, each with when it
/// happened at Stripe, when Subledger learned it, and the Stripe event behind it.
#[utoipa::path(get, path = "/v1/customers/{customer_id}/timeline", tag = "history",
    params(("customer_id" = String, Path), AsOf),
    responses((status = 200, body = Timeline),
        (status = 400, description = "A malformed time or query", body = crate::error::ApiErrorBody),
        (status = 401, description = "Missing or wrong API token", body = crate::error::ApiErrorBody),
        (status = 404, description = "Unknown customer", body = crate::error::ApiErrorBody),
    ),
    security(("bearer" = [])))]
pub(crate) async fn customer_timeline(
    Authorized(state): Authorized,
    names: RouteNames,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    let as_of = AsOf::parse(query)?;
    let mut events = state
        .engine
        .timeline(customer.as_str())
        .await
        .map_err(engine_failed)?;
    if events.is_empty() {
        return Err(not_found(customer.as_str()));
    }
    // About the past: only the events that count then (an empty list: nothing yet).
    if let Some((at, basis)) = as_of {
        events.retain(|event| event.counts(at, basis));
    }
    Ok(Json(Timeline {
        customer: customer.stripe_id().to_owned(),
        account: customer.account().map(str::to_owned),
        events,
    })
    .into_response())
}
