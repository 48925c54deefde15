//! Operators' holds: `POST /v1/customers/{id}/holds` takes access away (from the customer, or
//! from one subscription) until `DELETE /v1/customers/{id}/holds/{hold_id}` lifts it.

use axum::extract::rejection::JsonRejection;
use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use subledger_domain::customer::CustomerError;
use subledger_domain::ids::SubscriptionId;
use subledger_engine::EngineError;

use crate::auth::Admin;
use crate::entitlements::{engine_failed, optional_time, AtQuery};
use crate::error::ApiError;
use crate::paths::RouteNames;
use crate::webhooks::correlation_id;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewHold {
    reason: String,
    /// Only this subscription; the whole customer when absent.
    subscription: Option<String>,
    /// Makes retries safe: the same id places one hold. 1–100 characters, no `/` or whitespace.
    hold_id: Option<String>,
    /// RFC 3339: when the hold started, to record one decided earlier (default: now).
    at: Option<String>,
    /// A customer-wide hold that takes the customer's grants away too (default: grants
    /// stand; see the README's "Grants").
    #[serde(default)]
    covers_grants: bool,
}

fn refused(error: EngineError, customer_id: &str) -> ApiError {
    match error {
        EngineError::UnknownCustomer(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no billing facts are known for customer `{customer_id}`"),
        ),
        EngineError::Refused(CustomerError::NoSuchHold(hold)) => ApiError::new(
            StatusCode::NOT_FOUND,
            "hold_not_found",
            format!("no hold `{hold}` is in force for customer `{customer_id}`"),
        ),
        EngineError::Refused(CustomerError::NoSuchSubscription(subscription)) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "subscription_not_found",
            format!("customer `{customer_id}` has no subscription `{subscription}`"),
        ),
        other => engine_failed(other),
    }
}

/// An operator takes access away (from the customer, or one subscription) until lifted.
/// Needs an admin token (`SUBLEDGER_ADMIN_TOKENS`).
#[utoipa::path(post, path = "/v1/customers/{customer_id}/holds", tag = "operations",
    params(("customer_id" = String, Path)),
    request_body = NewHold,
    responses((status = 201, description = "The hold is in force"),
        (status = 400, body = crate::error::ApiErrorBody),
        (status = 401, description = "No valid token", body = crate::error::ApiErrorBody),
        (status = 403, description = "Not an admin token, or no admin token is configured", body = crate::error::ApiErrorBody),
        (status = 404, body = crate::error::ApiErrorBody),
        (status = 422, description = "The customer has no such subscription", body = crate::error::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn place(
    Admin(state): Admin,
    names: RouteNames,
    headers: HeaderMap,
    body: Result<Json<NewHold>, JsonRejection>,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    let customer_id = customer.as_str();
    let Json(hold) = body.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            rejection.body_text(),
        )
    })?;
    let reason = hold.reason.trim();
    if reason.is_empty() || reason.len() > 500 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "`reason` must say why, in at most 500 characters",
        ));
    }
    // A caller-chosen id makes a retried POST land on the same hold, so a bad one is refused
    // rather than swapped for a fresh id (which would turn each retry into another hold).
    let hold_id = match hold.hold_id {
        None => format!("hold_{}", uuid::Uuid::new_v4().simple()),
        Some(id)
            if !id.is_empty()
                && id.len() <= 100
                && !id.contains(|c: char| c == '/' || c.is_whitespace()) =>
        {
            id
        }
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "`hold_id` must be 1 to 100 characters without `/` or whitespace",
            ))
        }
    };
    if hold.covers_grants && hold.subscription.is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "`covers_grants` is for a hold on the whole customer: leave out `subscription`",
        ));
    }
    let subscription = hold.subscription.map(SubscriptionId::new);
    let at = optional_time("at", hold.at.as_deref())?;
    state
        .engine
        .place_hold(
            customer_id,
            subledger_engine::NewHold {
                hold_id: hold_id.clone(),
                subscription: subscription.clone(),
                reason: reason.to_owned(),
                covers_grants: hold.covers_grants,
                at,
            },
            &correlation_id(&headers),
        )
        .await
        .map_err(|e| refused(e, customer_id))?;
    let mut body = json!({
        "hold_id": hold_id,
        "customer": customer.stripe_id(),
        "subscription": subscription,
        "reason": reason,
        "covers_grants": hold.covers_grants,
    });
    if let Some(account) = customer.account() {
        body["account"] = json!(account);
    }
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// Lifts a hold. Needs an admin token (`SUBLEDGER_ADMIN_TOKENS`).
#[utoipa::path(delete, path = "/v1/customers/{customer_id}/holds/{hold_id}", tag = "operations",
    params(("customer_id" = String, Path), ("hold_id" = String, Path),
        ("at" = Option<String>, Query, description = "RFC 3339: when it was lifted (default now)")),
    responses((status = 200, description = "Lifted"),
        (status = 401, description = "No valid token", body = crate::error::ApiErrorBody),
        (status = 403, description = "Not an admin token, or no admin token is configured", body = crate::error::ApiErrorBody),
        (status = 404, description = "No such hold in force", body = crate::error::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn lift(
    Admin(state): Admin,
    names: RouteNames,
    Query(lifted): Query<AtQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let customer = names.customer()?;
    let hold_id = names.hold_id()?;
    let at = optional_time("at", lifted.at.as_deref())?;
    state
        .engine
        .lift_hold(customer.as_str(), hold_id, at, &correlation_id(&headers))
        .await
        .map_err(|e| refused(e, customer.as_str()))?;
    Ok(Json(json!({ "hold_id": hold_id, "lifted": true })).into_response())
}
