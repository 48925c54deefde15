//! Settling what Stripe's events cannot: when two snapshots of one object (a subscription, a
//! schedule, a customer's details or Stripe entitlements) carry the same second and nothing in either event orders them, the
//! worker asks Stripe's API for the object and records what it fetched as a domain event, with
//! `fetched` provenance. Arrival order is never taken as evidence.

use std::future::Future;
use std::pin::Pin;

use subledger_stripe_client::StripeApi;

/// What a fetch yields: the object as Stripe's API returns it, or why it could not be had.
pub type Fetched<'a> = Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send + 'a>>;

/// What the worker may ask Stripe for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripeResource {
    Subscription,
    Customer,
    SubscriptionSchedule,
    /// A customer's active entitlements: every page, as one list object.
    ActiveEntitlements,
}

impl StripeResource {
    /// The API path segment (`/v1/{path}/{id}`); `None` for the active entitlements, which are
    /// listed by customer.
    fn path(self) -> Option<&'static str> {
        match self {
            Self::Subscription => Some("subscriptions"),
            Self::Customer => Some("customers"),
            Self::SubscriptionSchedule => Some("subscription_schedules"),
            Self::ActiveEntitlements => None,
        }
    }
}

impl std::fmt::Display for StripeResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Subscription => "subscription",
            Self::Customer => "customer",
            Self::SubscriptionSchedule => "subscription schedule",
            Self::ActiveEntitlements => "active entitlements of customer",
        })
    }
}

/// Read access to Stripe's objects: async-stripe with a restricted read key in production, the
/// simulator in tests and scenarios.
pub trait StripeObjects: Send + Sync {
    /// `resource` `id` as Stripe's API returns it (for the active entitlements, `id` is the
    /// customer's). `account` is the connected account the object lives in, sent as the
    /// `Stripe-Account` header (Stripe's docs, "Making API calls for connected accounts");
    /// without it Stripe looks in the platform's own account and answers 404.
    fn retrieve<'a>(
        &'a self,
        resource: StripeResource,
        id: &'a str,
        account: Option<&'a str>,
    ) -> Fetched<'a>;
}

impl StripeObjects for StripeApi {
    fn retrieve<'a>(
        &'a self,
        resource: StripeResource,
        id: &'a str,
        account: Option<&'a str>,
    ) -> Fetched<'a> {
        Box::pin(async move {
            let fetched = match resource.path() {
                Some(path) => self.object(path, id, account).await,
                None => self.active_entitlements(id, account).await,
            };
            fetched.map_err(|e| format!("fetching {resource} `{id}` from Stripe failed: {e}"))
        })
    }
}
