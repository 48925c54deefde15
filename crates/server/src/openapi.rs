//! The OpenAPI document of this API, generated from the handlers' and types' annotations, so
//! it cannot drift from the code: `GET /openapi.json`.

use axum::Json;
use utoipa::openapi::path::{ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Required;
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
        crate::grants::give,
        crate::grants::revoke,
        crate::orders::order,
        crate::changes::list,
        crate::changes::stream,
        crate::changes::bulk,
        crate::changes::notifications,
    ),
    components(schemas(crate::error::ApiErrorBody)),
    modifiers(&BearerTokens, &ConnectedAccounts)
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

/// Each `/v1` operation again under `/v1/accounts/{account}`, for a connected account's
/// customers, users and orders (the router serves both; see `paths`).
struct ConnectedAccounts;

impl Modify for ConnectedAccounts {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let account = ParameterBuilder::new()
            .name("account")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some("The Stripe Connect connected account (acct_…)"))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build();
        let twins: Vec<(String, PathItem)> = openapi
            .paths
            .paths
            .iter()
            .filter(|(path, _)| {
                path.starts_with("/v1/")
                    && !path.starts_with("/v1/changes")
                    && path.as_str() != "/v1/entitlements"
                    && path.as_str() != "/v1/notifications"
            })
            .map(|(path, item)| {
                let mut item = item.clone();
                for operation in operations(&mut item) {
                    let parameters = operation.parameters.get_or_insert_with(Vec::new);
                    parameters.insert(0, utoipa::openapi::RefOr::T(account.clone()));
                    operation.operation_id = operation
                        .operation_id
                        .as_ref()
                        .map(|id| format!("{id}_of_connected_account"));
                }
                (crate::paths::connected(path), item)
            })
            .collect();
        openapi.paths.paths.extend(twins);
    }
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        item.get.as_mut(),
        item.post.as_mut(),
        item.put.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

pub(crate) async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
