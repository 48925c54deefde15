//! `GET /v1/orders/{order_id}`: a one-off payment (a PaymentIntent with `metadata.order_id`),
//! `pending` until Stripe reports it succeeded.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::auth::Authorized;
use crate::entitlements::engine_failed;
use crate::error::ApiError;
use crate::paths::RouteNames;

#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, description = "The PaymentIntent's metadata.order_id")),
    responses((status = 200, body = subledger_domain::payment::OrderView),
        (status = 404, body = crate::error::ApiErrorBody)),
    security(("bearer" = [])))]
pub(crate) async fn order(
    Authorized(state): Authorized,
    names: RouteNames,
) -> Result<Response, ApiError> {
    let (account, order_id) = names.order()?;
    let order = state
        .engine
        .order(account, order_id)
        .await
        .map_err(engine_failed)?;
    let order = order.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "order_not_found",
            format!("no payment is known for order `{order_id}`"),
        )
    })?;
    Ok(Json(order).into_response())
}
