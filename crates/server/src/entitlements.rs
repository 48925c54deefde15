//! Entitlement reads, answered from the engine's in-memory index: no query per request, and
//! the whole-customer answer was serialized when the facts last changed.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use subledger_engine::CustomerEntitlements;

use crate::error::ApiError;
use crate::AppState;

fn lookup(
    state: &AppState,
    customer_id: &str,
) -> Result<std::sync::Arc<CustomerEntitlements>, ApiError> {
    state.engine.entitlements(customer_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "customer_not_found",
            format!("no billing facts are known for customer `{customer_id}`"),
        )
    })
}

pub(crate) async fn customer_entitlements(
    State(state): State<AppState>,
    Path(customer_id): Path<String>,
) -> Result<Response, ApiError> {
    let found = lookup(&state, &customer_id)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        found.json.clone(),
    )
        .into_response())
}

#[derive(Serialize)]
struct FeatureAnswer<'a> {
    customer: &'a str,
    feature: &'a str,
    enabled: bool,
    limit: Option<u64>,
}

pub(crate) async fn customer_feature(
    State(state): State<AppState>,
    Path((customer_id, feature)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let found = lookup(&state, &customer_id)?;
    let value = found.entitlements.feature(&feature);
    Ok(Json(FeatureAnswer {
        customer: &customer_id,
        feature: &feature,
        enabled: value.enabled,
        limit: value.limit,
    })
    .into_response())
}
