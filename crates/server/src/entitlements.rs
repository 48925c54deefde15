//! Entitlement reads. The usual question ("now") is answered from the engine's in-memory
//! index: no query per request, the whole-customer answer serialized when it last changed.
//! Questions about the past (`?at=`, `?as_known_at=`) replay the customer's events.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use subledger_domain::entitlements::{Entitlements, FeatureValue};
use subledger_domain::ids::CustomerId;
use subledger_engine::{answer_digest, Basis};

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
    client_has: IfNoneMatch,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    entitlements_of(&state, customer.as_str(), AsOf::parse(query)?, &client_has).await
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
    client_has: IfNoneMatch,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let as_of = AsOf::parse(query)?;
    entitlements_of(
        &state,
        &customer_of_user(&state, &names)?,
        as_of,
        &client_has,
    )
    .await
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
fn etag_of(bytes: &[u8]) -> Result<HeaderValue, ApiError> {
    etag(answer_digest(bytes))
}

/// An answer's `ETag`: its digest in hex between double quotes, written on the stack (every
/// entitlement check sends one) and copied once into the header.
fn etag(digest: [u8; 8]) -> Result<HeaderValue, ApiError> {
    let mut quoted = [b'"'; 18];
    hex::encode_to_slice(digest, &mut quoted[1..17]).map_err(engine_failed)?;
    HeaderValue::from_bytes(&quoted).map_err(engine_failed)
}

/// `Cache-Control` for an answer that may be reused for `max_age` seconds.
pub(crate) fn cache_control(max_age: u64) -> HeaderValue {
    // A formatted number always makes a valid header; `no-cache` is the safe side regardless.
    HeaderValue::try_from(format!("private, max-age={max_age}"))
        .unwrap_or_else(|_| HeaderValue::from_static("no-cache"))
}

/// The request's `If-None-Match` values: the only header these routes read, taken without
/// copying the request's whole header map (this runs on every entitlement check).
#[derive(Debug)]
pub(crate) struct IfNoneMatch(Vec<HeaderValue>);

impl<S: Send + Sync> FromRequestParts<S> for IfNoneMatch {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .headers
                .get_all(header::IF_NONE_MATCH)
                .iter()
                .cloned()
                .collect(),
        ))
    }
}

impl IfNoneMatch {
    /// Whether the client names `etag` (or `*`), weak or strong.
    fn names(&self, etag: &HeaderValue) -> bool {
        self.0
            .iter()
            .flat_map(|list| list.as_bytes().split(|byte| *byte == b','))
            .map(|tag| {
                let tag = tag.trim_ascii();
                tag.strip_prefix(b"W/").unwrap_or(tag)
            })
            .any(|tag| tag == etag.as_bytes() || tag == b"*")
    }
}

/// How long a prepared answer may be reused: the engine's answer max age, never past the
/// answer's own deadline (`valid_until`, the next grace end).
fn answer_cache_control(state: &AppState, valid_until: Option<DateTime<Utc>>) -> HeaderValue {
    match valid_until {
        None => state.answer_cache_control.clone(),
        Some(until) => {
            let left = u64::try_from((until - state.engine.now()).num_seconds()).unwrap_or(0);
            if left >= state.engine.answer_max_age().as_secs() {
                state.answer_cache_control.clone()
            } else {
                cache_control(left)
            }
        }
    }
}

/// An answer with its validator and how long it may be reused: `304 Not Modified` (no body)
/// when the client already has it.
fn validated(
    client_has: &IfNoneMatch,
    etag: HeaderValue,
    cache_control: HeaderValue,
    body: Bytes,
) -> Response {
    let not_modified = client_has.names(&etag);
    let cache = [(header::ETAG, etag), (header::CACHE_CONTROL, cache_control)];
    if not_modified {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

async fn entitlements_of(
    state: &AppState,
    customer_id: &str,
    as_of: Option<(DateTime<Utc>, Basis)>,
    client_has: &IfNoneMatch,
) -> Result<Response, ApiError> {
    if let Some(past) = in_the_past(state, customer_id, as_of).await? {
        let body = Bytes::from(serde_json::to_vec(&past).map_err(engine_failed)?);
        // A later-learned fact can still change an answer about the past: revalidate.
        return Ok(validated(
            client_has,
            etag_of(&body)?,
            cache_control(0),
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
        client_has,
        etag(found.raw_digest())?,
        answer_cache_control(state, found.valid_until()),
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
    client_has: IfNoneMatch,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    feature_of(
        &state,
        &customer,
        names.feature()?,
        AsOf::parse(query)?,
        &client_has,
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
    client_has: IfNoneMatch,
    query: Result<Query<AsOf>, QueryRejection>,
) -> Result<Response, ApiError> {
    let as_of = AsOf::parse(query)?;
    let customer = CustomerId::new(customer_of_user(&state, &names)?);
    feature_of(&state, &customer, names.feature()?, as_of, &client_has).await
}

async fn feature_of(
    state: &AppState,
    customer: &CustomerId,
    feature: &str,
    as_of: Option<(DateTime<Utc>, Basis)>,
    client_has: &IfNoneMatch,
) -> Result<Response, ApiError> {
    let customer_id = customer.as_str();
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
            client_has,
            etag(found.raw_digest())?,
            answer_cache_control(state, found.valid_until()),
            Bytes::from(body),
        ),
        None => validated(
            client_has,
            etag_of(&body)?,
            cache_control(0),
            Bytes::from(body),
        ),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(values: &[&'static str]) -> IfNoneMatch {
        IfNoneMatch(values.iter().map(|v| HeaderValue::from_static(v)).collect())
    }

    #[test]
    fn if_none_match_names_the_tag_in_any_of_its_forms() {
        let etag = HeaderValue::from_static("\"00ff00ff00ff00ff\"");
        for values in [
            &["\"00ff00ff00ff00ff\""][..],
            &["W/\"00ff00ff00ff00ff\""],
            &["\"0000000000000000\" , \"00ff00ff00ff00ff\""],
            &["\"0000000000000000\"", "W/\"00ff00ff00ff00ff\""],
            &["*"],
        ] {
            assert!(asked(values).names(&etag), "{values:?}");
        }
        for values in [
            &[][..],
            &["\"0000000000000000\""],
            &["00ff00ff00ff00ff"],
            &["\"00ff00ff00ff00ff"],
        ] {
            assert!(!asked(values).names(&etag), "{values:?}");
        }
    }
}
