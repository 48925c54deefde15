//! The OpenAPI document of this API, generated from the handlers' and types' annotations, so
//! it cannot drift from the code: `GET /openapi.json`.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Subledger",
        description = "Billing state engine for Stripe: verified webhooks in, entitlements out."
    ),
    paths(
        crate::webhooks::receive,
        crate::entitlements::customer_entitlements,
        crate::entitlements::customer_feature,
        crate::entitlements::user_entitlements,
        crate::entitlements::user_feature,
        crate::entitlements::explain_feature,
        crate::entitlements::customer_timeline,
        crate::holds::place,
        crate::holds::lift,
        crate::orders::order,
    ),
    components(schemas(crate::error::ApiErrorBody)),
    modifiers(&BearerTokens)
)]
pub struct ApiDoc;

/// `/v1` takes `Authorization: Bearer <token>` when tokens are configured.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
