//! What a route names: a customer, user or order of the platform's own Stripe account
//! (`/v1/customers/{customer_id}/…`) or of a connected account
//! (`/v1/accounts/{account}/customers/{customer_id}/…`). Every route of the first kind has a
//! twin of the second ([`connected`]); both reach the same handler, which reads the names
//! through [`RouteNames`].
//!
//! A connected account's customer is kept under `acct_…/cus_…`
//! ([`CustomerId::in_account`]). Stripe's ids never contain `/`, and a platform route refuses
//! one (`%2F` included, since axum decodes it into the segment), so no request can reach a
//! connected account's customer in the platform's name.

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;
use axum::http::StatusCode;
use subledger_domain::ids::{is_account_id, CustomerId, ACCOUNT_SEPARATOR};

use crate::error::ApiError;

/// The route's twin for connected accounts: `/v1/customers/…` → `/v1/accounts/{account}/customers/…`.
pub(crate) fn connected(path: &str) -> String {
    match path.strip_prefix("/v1/") {
        Some(rest) => format!("/v1/accounts/{{account}}/{rest}"),
        None => path.to_owned(),
    }
}

/// The names in a request's path, checked as they are read. They stay as axum matched and
/// percent-decoded them and are found by a scan (a route has one to three): copying them into
/// a map of their own cost allocations on every entitlement check.
#[derive(Debug)]
pub(crate) struct RouteNames(RawPathParams);

impl<S: Send + Sync> FromRequestParts<S> for RouteNames {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let names = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_path",
                    rejection.body_text(),
                )
            })?;
        Ok(Self(names))
    }
}

impl RouteNames {
    fn named(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find_map(|(key, value)| (key == name).then_some(value))
    }

    fn get(&self, name: &str) -> Result<&str, ApiError> {
        self.named(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path",
                format!("the path names no `{name}`"),
            )
        })
    }

    /// The connected account the route is under; `None` for the platform's routes.
    pub(crate) fn account(&self) -> Result<Option<&str>, ApiError> {
        match self.named("account") {
            None => Ok(None),
            Some(account) if is_account_id(account) => Ok(Some(account)),
            Some(account) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_account",
                format!("`{account}` is not a Stripe account id (acct_ and letters and digits)"),
            )),
        }
    }

    /// An id segment (`customer_id`, `order_id`, …) that cannot smuggle in an account.
    fn id(&self, name: &str) -> Result<&str, ApiError> {
        let id = self.get(name)?;
        if id.contains(ACCOUNT_SEPARATOR) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                format!(
                    "`{name}` must not contain `{ACCOUNT_SEPARATOR}`; a connected account's \
                     objects are under /v1/accounts/{{account}}/…"
                ),
            ));
        }
        Ok(id)
    }

    /// The customer the route names, keyed within its account.
    pub(crate) fn customer(&self) -> Result<CustomerId, ApiError> {
        Ok(CustomerId::in_account(
            self.account()?,
            self.id("customer_id")?,
        ))
    }

    /// The order the route names, keyed within its account.
    pub(crate) fn order(&self) -> Result<(Option<&str>, &str), ApiError> {
        Ok((self.account()?, self.id("order_id")?))
    }

    /// The product user id the route names and its account. A user id is the product's own
    /// name, so any text is one; it is looked up within the account.
    pub(crate) fn user(&self) -> Result<(Option<&str>, &str), ApiError> {
        Ok((self.account()?, self.get("user_id")?))
    }

    pub(crate) fn feature(&self) -> Result<&str, ApiError> {
        self.get("feature")
    }

    pub(crate) fn hold_id(&self) -> Result<&str, ApiError> {
        self.get("hold_id")
    }

    pub(crate) fn grant_id(&self) -> Result<&str, ApiError> {
        self.get("grant_id")
    }
}
