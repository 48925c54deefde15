//! Operators' grants: `POST /v1/customers/{id}/grants` gives a customer a feature beyond their
//! plans (`set` replaces the plans' value, `add` raises a limit on top), for a while or until
//! `DELETE /v1/customers/{id}/grants/{grant_id}` revokes it. How grants meet holds and dunning:
//! `subledger_domain::grants` and the README's "Grants".

use axum::extract::rejection::JsonRejection;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use subledger_domain::customer::CustomerError;
use subledger_domain::grants::{CustomerGrant, GrantMode, GrantTerms, GrantValue};
use subledger_domain::ids::SubscriptionId;
use subledger_engine::EngineError;

use crate::auth::{token_fingerprint, Admin};
use crate::entitlements::{engine_failed, optional_time, AtQuery};
use crate::error::ApiError;
use crate::paths::RouteNames;
use crate::webhooks::correlation_id;

/// A grant as an operator asks for it: `enabled` for a boolean feature or `limit` for a
/// metered one.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewGrant {
    /// Makes retries safe: the same id with the same terms is one grant. 1–100 characters, no
    /// `/` or whitespace.
    grant_id: String,
    /// A feature of the catalog.
    feature: String,
    /// For a boolean feature: on (or, with `set`, off).
    enabled: Option<bool>,
    /// For a metered feature: the limit (`set`) or how much it rises (`add`).
    limit: Option<u64>,
    /// `set` (default) replaces the plans' value; `add` raises a limit on top of it.
    mode: Option<GrantMode>,
    /// Only while this subscription of the customer's lasts.
    subscription: Option<String>,
    /// RFC 3339; default: now.
    starts_at: Option<String>,
    /// RFC 3339; default: until revoked.
    expires_at: Option<String>,
    /// Why, for whoever reads the explanation later.
    reason: String,
    /// Who gives it (a person's name); recorded beside the admin token's fingerprint.
    granted_by: Option<String>,
    /// RFC 3339: when it was given, to record one decided earlier (default: now).
    at: Option<String>,
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", message)
}

/// `granted_by` (or `revoked_by`): the name given, and always the token that acted.
fn operator(headers: &HeaderMap, name: Option<&str>) -> Result<String, ApiError> {
    let token = token_fingerprint(headers).unwrap_or_else(|| "an admin token".to_owned());
    match name.map(str::trim) {
        None => Ok(token),
        Some(name) if !name.is_empty() && name.len() <= 100 => Ok(format!("{name} ({token})")),
        Some(_) => Err(bad("`granted_by` must be 1 to 100 characters")),
    }
}

fn refused(error: EngineError, customer_id: &str) -> ApiError {
    match error {
        EngineError::UnknownCustomer(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no billing facts are known for customer `{customer_id}`"),
        ),
        EngineError::InvalidGrant(invalid) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_grant",
            invalid.to_string(),
        ),
        EngineError::Refused(CustomerError::NoSuchSubscription(subscription)) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "subscription_not_found",
            format!(
                "customer `{customer_id}` has no subscription `{subscription}` that has not ended"
            ),
        ),
        EngineError::Refused(conflict @ CustomerError::GrantConflict { .. }) => {
            ApiError::new(StatusCode::CONFLICT, "grant_conflict", conflict.to_string())
        }
        EngineError::Refused(CustomerError::NoSuchGrant(grant)) => ApiError::new(
            StatusCode::NOT_FOUND,
            "grant_not_found",
            format!("no grant `{grant}` was given to customer `{customer_id}`"),
        ),
        other => engine_failed(other),
    }
}

/// Gives a customer a feature beyond their plans. Needs an admin token.
#[utoipa::path(post, path = "/v1/customers/{customer_id}/grants", tag = "operations",
    params(("customer_id" = String, Path)),
    request_body = NewGrant,
    responses((status = 201, description = "The grant as recorded (on a retry with the same terms, as first recorded)", body = CustomerGrant),
        (status = 400, description = "A malformed body or time", body = crate::error::ApiErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ApiErrorBody),
        (status = 403, description = "Not an admin token, or no admin token is configured", body = crate::error::ApiErrorBody),
        (status = 404, description = "Unknown customer", body = crate::error::ApiErrorBody),
        (status = 409, description = "The grant id was used with other terms, or revoked", body = crate::error::ApiErrorBody),
        (status = 422, description = "An unknown feature, a value of the wrong kind, an expiry before the start, a subscription the customer does not have", body = crate::error::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn give(
    Admin(state): Admin,
    names: RouteNames,
    headers: HeaderMap,
    body: Result<Json<NewGrant>, JsonRejection>,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    let Json(asked) = body.map_err(|rejection| bad(rejection.body_text()))?;
    let id = asked.grant_id;
    if id.is_empty() || id.len() > 100 || id.contains(|c: char| c == '/' || c.is_whitespace()) {
        return Err(bad(
            "`grant_id` must be 1 to 100 characters without `/` or whitespace",
        ));
    }
    let reason = asked.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(bad("`reason` must say why, in at most 500 characters"));
    }
    let value = match (asked.enabled, asked.limit) {
        (Some(enabled), None) => GrantValue::Enabled(enabled),
        (None, Some(limit)) => GrantValue::Limit(limit),
        _ => {
            return Err(bad(
                "give exactly one of `enabled` (a boolean feature) and `limit` (a metered one)",
            ))
        }
    };
    let grant = CustomerGrant {
        terms: GrantTerms {
            feature: asked.feature,
            value,
            mode: asked.mode.unwrap_or(GrantMode::Set),
            subscription: asked.subscription.map(SubscriptionId::new),
            starts_at: optional_time("starts_at", asked.starts_at.as_deref())?,
            expires_at: optional_time("expires_at", asked.expires_at.as_deref())?,
            reason: reason.to_owned(),
        },
        id,
        granted_by: operator(&headers, asked.granted_by.as_deref())?,
        granted_at: optional_time("at", asked.at.as_deref())?.unwrap_or_else(|| state.engine.now()),
    };
    let recorded = state
        .engine
        .give_grant(customer.as_str(), grant, &correlation_id(&headers))
        .await
        .map_err(|e| refused(e, customer.as_str()))?;
    Ok((StatusCode::CREATED, Json(recorded)).into_response())
}

/// Revokes a grant; revoking it again is no error. Needs an admin token.
#[utoipa::path(delete, path = "/v1/customers/{customer_id}/grants/{grant_id}", tag = "operations",
    params(("customer_id" = String, Path), ("grant_id" = String, Path),
        ("at" = Option<String>, Query, description = "RFC 3339: when it was revoked (default now)")),
    responses((status = 200, description = "Revoked"),
        (status = 401, description = "No valid token", body = crate::error::ApiErrorBody),
        (status = 403, description = "Not an admin token, or no admin token is configured", body = crate::error::ApiErrorBody),
        (status = 404, description = "No such customer or grant", body = crate::error::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn revoke(
    Admin(state): Admin,
    names: RouteNames,
    Query(revoked): Query<AtQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    let grant_id = names.grant_id()?;
    let at = optional_time("at", revoked.at.as_deref())?;
    if state.engine.entitlements(customer.as_str()).is_none() {
        return Err(refused(
            EngineError::UnknownCustomer(customer.as_str().to_owned()),
            customer.as_str(),
        ));
    }
    state
        .engine
        .revoke_grant(
            customer.as_str(),
            grant_id,
            &operator(&headers, None)?,
            at,
            &correlation_id(&headers),
        )
        .await
        .map_err(|e| refused(e, customer.as_str()))?;
    Ok(Json(json!({ "grant_id": grant_id, "revoked": true })).into_response())
}
