//! What a customer may use, derived from their recorded subscriptions and the catalog.
//!
//! [`BillingView`] is the catalog-independent read model a projector keeps per customer
//! (facts only, so it never goes stale when the catalog changes); [`Entitlements::resolve`]
//! turns it into the answer product services ask for.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::billing::{SubscriptionSnapshot, SubscriptionStatus};
use crate::catalog::{Catalog, FeatureGrant};
use crate::customer::CustomerEvent;
use crate::ids::{CustomerId, SubscriptionId};

/// The per-customer facts that entitlements depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingView {
    pub customer_id: CustomerId,
    pub deleted: bool,
    pub metadata: BTreeMap<String, String>,
    pub subscriptions: BTreeMap<SubscriptionId, SubscriptionSnapshot>,
    /// Stripe time of the latest fact applied.
    pub updated_at: Option<DateTime<Utc>>,
}

impl BillingView {
    pub fn new(customer_id: CustomerId) -> Self {
        Self {
            customer_id,
            deleted: false,
            metadata: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            updated_at: None,
        }
    }

    pub fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::DetailsRecorded { metadata, .. } => self.metadata = metadata.clone(),
            CustomerEvent::CustomerDeleted { .. } => self.deleted = true,
            CustomerEvent::SubscriptionStarted { subscription, .. }
            | CustomerEvent::SubscriptionChanged { subscription, .. }
            | CustomerEvent::SubscriptionEnded { subscription, .. } => {
                self.subscriptions
                    .insert(subscription.id.clone(), subscription.clone());
            }
            CustomerEvent::InvoicePaid { .. } | CustomerEvent::InvoicePaymentFailed { .. } => {}
        }
        let occurred_at = event.occurred_at();
        self.updated_at = Some(self.updated_at.map_or(occurred_at, |t| t.max(occurred_at)));
    }
}

/// One feature's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureValue {
    pub enabled: bool,
    /// The limit for a metered feature; `null` for a boolean one.
    pub limit: Option<u64>,
}

impl FeatureValue {
    pub const DISABLED: Self = Self {
        enabled: false,
        limit: None,
    };

    /// Combines grants from several plans: a feature is on if any plan turns it on, and a
    /// limit is the largest any plan gives.
    fn combine(self, grant: FeatureGrant) -> Self {
        match grant {
            FeatureGrant::Disabled => self,
            FeatureGrant::Enabled => Self {
                enabled: true,
                limit: self.limit,
            },
            FeatureGrant::Limit(limit) => Self {
                enabled: self.enabled || limit > 0,
                limit: Some(self.limit.map_or(limit, |known| known.max(limit))),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEntitlement {
    pub id: SubscriptionId,
    pub status: SubscriptionStatus,
    /// The catalog plan of the subscription's first item whose price the catalog knows.
    pub plan: Option<String>,
    /// Whether this subscription currently grants its plan.
    pub grants_access: bool,
}

/// What a customer may use right now, with the subscriptions it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    pub customer: CustomerId,
    pub deleted: bool,
    pub subscriptions: Vec<SubscriptionEntitlement>,
    /// The plans in effect: those of entitling subscriptions, else the default plan.
    pub plans: Vec<String>,
    pub features: BTreeMap<String, FeatureValue>,
}

impl Entitlements {
    pub fn resolve(view: &BillingView, catalog: &Catalog) -> Self {
        let subscriptions: Vec<SubscriptionEntitlement> = view
            .subscriptions
            .values()
            .map(|subscription| SubscriptionEntitlement {
                id: subscription.id.clone(),
                status: subscription.status,
                plan: subscription
                    .items
                    .iter()
                    .find_map(|item| {
                        catalog.plan_for_price(item.price_id.as_str(), item.lookup_key.as_deref())
                    })
                    .map(|plan| plan.name.clone()),
                grants_access: subscription.status.grants_access() && !view.deleted,
            })
            .collect();

        let mut plans: Vec<&crate::catalog::Plan> = Vec::new();
        for subscription in view.subscriptions.values() {
            if !subscription.status.grants_access() || view.deleted {
                continue;
            }
            for item in &subscription.items {
                if let Some(plan) =
                    catalog.plan_for_price(item.price_id.as_str(), item.lookup_key.as_deref())
                {
                    if !plans.iter().any(|known| known.name == plan.name) {
                        plans.push(plan);
                    }
                }
            }
        }
        // A deleted customer has no plan at all, not even the default one.
        if plans.is_empty() && !view.deleted {
            plans.push(catalog.default_plan());
        }

        let mut features: BTreeMap<String, FeatureValue> = catalog
            .features()
            .iter()
            .map(|name| (name.clone(), FeatureValue::DISABLED))
            .collect();
        for plan in &plans {
            for (name, grant) in &plan.features {
                let value = features
                    .entry(name.clone())
                    .or_insert(FeatureValue::DISABLED);
                *value = value.combine(*grant);
            }
        }
        Self {
            customer: view.customer_id.clone(),
            deleted: view.deleted,
            subscriptions,
            plans: plans.iter().map(|plan| plan.name.clone()).collect(),
            features,
        }
    }

    /// One feature; a feature no plan of the customer grants is disabled.
    pub fn feature(&self, name: &str) -> FeatureValue {
        self.features
            .get(name)
            .copied()
            .unwrap_or(FeatureValue::DISABLED)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::billing::SubscriptionItem;
    use crate::ids::PriceId;

    const CATALOG: &str = "\
default_plan: free
plans:
  free:
    features: { api_calls: 1000 }
  pro:
    prices: [price_pro, pro_monthly]
    features: { sso: true, seats: 10, api_calls: 100000 }
  team:
    prices: [price_team]
    features: { seats: 50, audit_log: true }
";

    fn catalog() -> Catalog {
        Catalog::from_yaml("test", CATALOG).unwrap()
    }

    fn view_with(subscriptions: &[(&str, SubscriptionStatus, &str)]) -> BillingView {
        let mut view = BillingView::new(CustomerId::new("cus_1"));
        for (id, status, price) in subscriptions {
            let subscription = SubscriptionSnapshot {
                id: SubscriptionId::new(*id),
                customer_id: CustomerId::new("cus_1"),
                status: *status,
                items: vec![SubscriptionItem {
                    price_id: PriceId::new(*price),
                    lookup_key: Some("pro_monthly".to_owned()).filter(|_| *price == "price_by_key"),
                    quantity: 1,
                }],
                cancel_at_period_end: false,
                cancel_at: None,
                current_period_end: None,
                trial_end: None,
            };
            view.apply(&CustomerEvent::SubscriptionStarted {
                subscription,
                occurred_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
                provenance: Default::default(),
            });
        }
        view
    }

    #[test]
    fn a_customer_without_subscriptions_gets_the_default_plan() {
        let entitlements = Entitlements::resolve(&view_with(&[]), &catalog());
        assert_eq!(entitlements.plans, ["free"]);
        assert_eq!(
            entitlements.feature("api_calls"),
            FeatureValue {
                enabled: true,
                limit: Some(1000)
            }
        );
        assert_eq!(entitlements.feature("sso"), FeatureValue::DISABLED);
        assert_eq!(
            entitlements.feature("no_such_feature"),
            FeatureValue::DISABLED
        );
    }

    #[test]
    fn an_active_subscription_grants_its_plan_instead_of_the_default() {
        let entitlements = Entitlements::resolve(
            &view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]),
            &catalog(),
        );
        assert_eq!(entitlements.plans, ["pro"]);
        assert_eq!(entitlements.subscriptions[0].plan.as_deref(), Some("pro"));
        assert_eq!(
            entitlements.feature("sso"),
            FeatureValue {
                enabled: true,
                limit: None
            }
        );
        assert_eq!(entitlements.feature("api_calls").limit, Some(100_000));
    }

    #[test]
    fn a_lookup_key_selects_the_plan_too() {
        let entitlements = Entitlements::resolve(
            &view_with(&[("sub_1", SubscriptionStatus::Trialing, "price_by_key")]),
            &catalog(),
        );
        assert_eq!(entitlements.plans, ["pro"]);
    }

    #[test]
    fn features_combine_across_subscriptions() {
        let entitlements = Entitlements::resolve(
            &view_with(&[
                ("sub_1", SubscriptionStatus::Active, "price_pro"),
                ("sub_2", SubscriptionStatus::PastDue, "price_team"),
            ]),
            &catalog(),
        );
        assert_eq!(
            entitlements.feature("seats"),
            FeatureValue {
                enabled: true,
                limit: Some(50)
            }
        );
        assert!(entitlements.feature("sso").enabled);
        assert!(entitlements.feature("audit_log").enabled);
    }

    #[test]
    fn ended_and_unpaid_subscriptions_grant_nothing() {
        for status in [
            SubscriptionStatus::Canceled,
            SubscriptionStatus::Unpaid,
            SubscriptionStatus::Incomplete,
            SubscriptionStatus::IncompleteExpired,
            SubscriptionStatus::Paused,
        ] {
            let entitlements =
                Entitlements::resolve(&view_with(&[("sub_1", status, "price_pro")]), &catalog());
            assert_eq!(entitlements.plans, ["free"], "{status:?}");
            assert!(!entitlements.feature("sso").enabled, "{status:?}");
        }
    }

    #[test]
    fn a_deleted_customer_has_no_plan() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
        view.apply(&CustomerEvent::CustomerDeleted {
            occurred_at: Utc.timestamp_opt(1_700_000_100, 0).unwrap(),
        });
        let entitlements = Entitlements::resolve(&view, &catalog());
        assert!(entitlements.plans.is_empty());
        assert!(!entitlements.feature("api_calls").enabled);
    }
}
