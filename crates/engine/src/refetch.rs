//! Settling what Stripe's events cannot: when two snapshots of a subscription (or of a
//! customer's details) carry the same second and nothing in either event orders them, the
//! worker asks Stripe's API for the object and records what it fetched as a domain event, with
//! `fetched` provenance. Arrival order is never taken as evidence.

use std::future::Future;
use std::pin::Pin;

use subledger_stripe_client::StripeApi;

/// What a fetch yields: the object as Stripe's API returns it, or why it could not be had.
pub type Fetched<'a> = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + 'a>>;

/// Read access to Stripe's objects: async-stripe with a restricted read key in production, the
/// simulator in tests and scenarios.
pub trait StripeObjects: Send + Sync {
    fn subscription<'a>(&'a self, id: &'a str) -> Fetched<'a>;
    fn customer<'a>(&'a self, id: &'a str) -> Fetched<'a>;
    fn schedule<'a>(&'a self, id: &'a str) -> Fetched<'a>;
    /// The customer's active entitlements, every page, as one list object.
    fn active_entitlements<'a>(&'a self, customer: &'a str) -> Fetched<'a>;
}

impl StripeObjects for StripeApi {
    fn subscription<'a>(&'a self, id: &'a str) -> Fetched<'a> {
        Box::pin(async move {
            self.object("subscriptions", id)
                .await
                .map_err(|e| format!("fetching subscription `{id}` from Stripe failed: {e}"))
        })
    }

    fn customer<'a>(&'a self, id: &'a str) -> Fetched<'a> {
        Box::pin(async move {
            self.object("customers", id)
                .await
                .map_err(|e| format!("fetching customer `{id}` from Stripe failed: {e}"))
        })
    }

    fn schedule<'a>(&'a self, id: &'a str) -> Fetched<'a> {
        Box::pin(async move {
            self.object("subscription_schedules", id)
                .await
                .map_err(|e| format!("fetching subscription schedule `{id}` failed: {e}"))
        })
    }

    fn active_entitlements<'a>(&'a self, customer: &'a str) -> Fetched<'a> {
        Box::pin(async move {
            StripeApi::active_entitlements(self, customer)
                .await
                .map_err(|e| format!("fetching the entitlements of `{customer}` failed: {e}"))
        })
    }
}
