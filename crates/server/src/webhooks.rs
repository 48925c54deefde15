//! `POST /webhooks/stripe`: verify the signature over the raw bytes, store the event durably,
//! answer. The answer waits for the commit, so a 200 means the event cannot be lost.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use subledger_engine::IngestError;

use crate::error::ApiError;
use crate::AppState;

/// Whether reading the body failed because it stopped arriving (the server's body timeout).
fn timed_out(rejection: &BytesRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

/// Stripe's webhook endpoint: verify the signature over the raw body, store, acknowledge.
#[utoipa::path(post, path = "/webhooks/stripe", tag = "webhooks",
    params(("Stripe-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256>")),
    request_body(content = Object, description = "A Stripe event, exactly as Stripe sent it"),
    responses((status = 200, description = "Stored (or already stored)", body = WebhookReceipt),
        (status = 400, description = "Bad signature or not a Stripe event", body = crate::error::ApiErrorBody),
        (status = 413, description = "Body over 1 MiB", body = crate::error::ApiErrorBody),
        (status = 408, description = "The body stopped arriving", body = crate::error::ApiErrorBody),
        (status = 503, description = "Store unavailable: Stripe retries", body = crate::error::ApiErrorBody)))]
pub(crate) async fn receive(
    state: State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let answered = store(state, headers, body).await;
    // `subledger_webhooks_received_total`: accepted, duplicate, or rejected with the reason
    // (the error code the answer carries).
    let (outcome, reason) = match &answered {
        Ok((_, receipt)) if receipt.duplicate => ("duplicate", ""),
        Ok(_) => ("accepted", ""),
        Err(error) => ("rejected", error.code),
    };
    metrics::counter!("subledger_webhooks_received_total", "outcome" => outcome, "reason" => reason)
        .increment(1);
    answered.map(|(response, _)| response)
}

async fn store(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Response, WebhookReceipt), ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "webhook bodies are limited to {} bytes",
                    crate::MAX_WEBHOOK_BODY
                ),
            )
        } else if timed_out(&rejection) {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body stopped arriving (see --http-body-timeout-ms)",
            )
        } else {
            ApiError::new(rejection.status(), "unreadable_body", rejection.body_text())
        }
    })?;
    let signature = match headers.get("stripe-signature") {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_signature_header",
                "Stripe-Signature is not ASCII",
            )
        })?),
    };
    let correlation_id = correlation_id(&headers);
    match state
        .engine
        .receive_webhook(signature, &body, &correlation_id)
        .await
    {
        Ok(receipt) => {
            let receipt = WebhookReceipt {
                received: true,
                duplicate: receipt.duplicate,
            };
            let response = ([("x-request-id", correlation_id)], Json(receipt)).into_response();
            Ok((response, receipt))
        }
        Err(error) => Err(ingest_error(error)),
    }
}

#[derive(Clone, Copy, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookReceipt {
    received: bool,
    /// The event id was already stored (a redelivery).
    duplicate: bool,
}

fn ingest_error(error: IngestError) -> ApiError {
    match error {
        IngestError::Signature(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, e.code(), e.to_string())
        }
        IngestError::NotAnEvent(e) => {
            ApiError::new(StatusCode::BAD_REQUEST, "not_a_stripe_event", e.to_string())
        }
        IngestError::NoSecretsConfigured => {
            tracing::error!("webhook refused: SUBLEDGER_WEBHOOK_SECRETS is not set");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "webhook_secrets_not_configured",
                "the receiver has no webhook signing secret configured",
            )
        }
        IngestError::StoreUnavailable(cause) => {
            tracing::error!(error = %cause, "webhook not stored; asking Stripe to retry");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the event could not be stored; retry later",
            )
        }
    }
}

/// The caller's `X-Request-Id` when it is a sane token, else a fresh one.
pub(crate) fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .filter(|id| {
            !id.is_empty()
                && id.len() <= 128
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned)
}
