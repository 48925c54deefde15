//! Stripe's Entitlements API: features on products and the customer's active summary.

use serde_json::{json, Value};

use super::{not_found, SimError, Simulator};
use crate::model::SubscriptionStatus;
use crate::render;

impl Simulator {
    /// Attaches Entitlements API features (lookup keys) to a price's product.
    pub fn set_price_features(
        &mut self,
        price: &str,
        features: Vec<String>,
    ) -> Result<(), SimError> {
        let record = self
            .prices
            .get_mut(price)
            .ok_or_else(|| not_found("price", price))?;
        record.features = features;
        Ok(())
    }

    /// `GET /v1/entitlements/active_entitlements?customer=…`: the customer's active
    /// entitlements now, as one list.
    pub fn active_entitlements_json(&self, customer: &str) -> Result<Value, SimError> {
        self.customer(customer)?;
        let summary = render::entitlement_summary(customer, &self.active_features(customer));
        let mut list = summary["entitlements"].clone();
        list["object"] = json!("list");
        Ok(list)
    }

    /// The lookup keys of the features the customer's live subscriptions grant.
    pub(super) fn active_features(&self, customer: &str) -> std::collections::BTreeSet<String> {
        self.subscriptions
            .values()
            .filter(|s| s.customer == customer)
            .filter(|s| {
                matches!(
                    s.status,
                    SubscriptionStatus::Active
                        | SubscriptionStatus::Trialing
                        | SubscriptionStatus::PastDue
                )
            })
            .flat_map(|s| s.items.iter())
            .filter_map(|item| self.prices.get(&item.price))
            .flat_map(|price| price.features.iter().cloned())
            .collect()
    }

    /// Emits `entitlements.active_entitlement_summary.updated` when the customer's active
    /// features (those of products on subscriptions that are active, trialing or past due)
    /// changed since the last summary.
    pub(super) fn sync_entitlement_summary(&mut self, customer: &str) {
        if self.suppress_summaries {
            return;
        }
        let active = self.active_features(customer);
        let unchanged = self
            .summaries
            .get(customer)
            .map_or(active.is_empty(), |last| *last == active);
        if unchanged {
            return;
        }
        // Like every `*.updated` event, it names what it replaced.
        let replaced = self.summaries.get(customer).cloned().unwrap_or_default();
        let before = render::entitlement_summary(customer, &replaced);
        let rendered = render::entitlement_summary(customer, &active);
        let previous = render::previous_attributes(&before, &rendered);
        self.summaries.insert(customer.to_owned(), active);
        self.emit(
            "entitlements.active_entitlement_summary.updated",
            rendered,
            previous,
        );
    }
}
