//! What a customer may use, derived from their recorded subscriptions and the catalog.
//!
//! [`BillingView`] is the catalog-independent read model a projector keeps per customer
//! (facts only, so it never goes stale when the catalog changes); [`Entitlements::resolve`]
//! turns it into the answer product services ask for.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::billing::{SubscriptionSnapshot, SubscriptionStatus};
use crate::catalog::{AccessPolicy, Catalog, FeatureGrant, Grant};
use crate::customer::CustomerEvent;
use crate::dunning::{Dunning, UnpaidInvoice};
use crate::grants::{CustomerGrant, GrantMode, GrantValue};
use crate::ids::{CustomerId, InvoiceId, SubscriptionId};
use crate::small_map::SmallMap;

/// The per-customer facts that entitlements depend on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingView {
    pub customer_id: CustomerId,
    pub deleted: bool,
    pub metadata: SmallMap<String, String>,
    /// The customer's email at Stripe, for operators looking a customer up (never in answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub subscriptions: SmallMap<SubscriptionId, SubscriptionSnapshot>,
    /// Each subscription's invoices whose payment failed and that are neither paid nor
    /// written off, by invoice.
    #[serde(default)]
    pub unpaid: SmallMap<SubscriptionId, SmallMap<InvoiceId, UnpaidInvoice>>,
    /// Invoices of pending updates (`payment_behavior: pending_if_incomplete`): when their
    /// payment fails the change is not made and nothing is owed (Stripe's docs, "Pending
    /// updates"), so they never count in dunning.
    #[serde(default)]
    pub pending_updates: BTreeSet<InvoiceId>,
    /// Each subscription's most recently paid invoice.
    #[serde(default)]
    pub last_paid: SmallMap<SubscriptionId, PaidInvoice>,
    /// The customer's active features by Stripe's Entitlements API (lookup keys).
    #[serde(default)]
    pub stripe_features: BTreeSet<String>,
    /// Operator holds in force, by id.
    #[serde(default)]
    pub holds: SmallMap<String, Hold>,
    /// Operators' grants not revoked, by id (whether each counts is decided at a moment).
    #[serde(default)]
    pub grants: SmallMap<String, CustomerGrant>,
    /// Disputes of subscription payments, by dispute id.
    #[serde(default)]
    pub disputes: SmallMap<String, DisputeBlock>,
    /// Changes subscription schedules will make, by subscription.
    #[serde(default)]
    pub scheduled: SmallMap<SubscriptionId, crate::billing::NextPhase>,
    /// When Stripe created the customer (the customer object's `created`), once a snapshot of
    /// its details told: the same whichever snapshot arrived, in whatever order.
    #[serde(default)]
    pub stripe_created: Option<DateTime<Utc>>,
}

/// An invoice of a subscription that was paid, and when (Stripe time).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaidInvoice {
    pub invoice: crate::ids::InvoiceId,
    pub at: DateTime<Utc>,
}

impl BillingView {
    /// The subscription's unpaid invoice that dunning counts. An older invoice left open
    /// when a newer one was paid no longer does: Stripe returns the subscription to `active`
    /// and leaves its status alone when the older one runs out of retries (Stripe's billing
    /// lifecycle docs). Both facts fold in any order.
    pub fn owed(&self, subscription: &SubscriptionId) -> Option<&UnpaidInvoice> {
        self.unpaid(subscription).filter(|unpaid| {
            !self
                .last_paid
                .get(subscription)
                .is_some_and(|paid| paid.invoice != unpaid.invoice && paid.at >= unpaid.since)
        })
    }

    /// The subscription's oldest unpaid renewal invoice: of its failed invoices that are not
    /// pending updates, the one owed the longest. Decided by the facts, not by the order they
    /// arrived in.
    pub fn unpaid(&self, subscription: &SubscriptionId) -> Option<&UnpaidInvoice> {
        self.unpaid
            .get(subscription)?
            .values()
            .filter(|unpaid| !self.pending_updates.contains(&unpaid.invoice))
            .min_by(|a, b| (a.since, &a.invoice).cmp(&(b.since, &b.invoice)))
    }

    pub fn new(customer_id: CustomerId) -> Self {
        Self {
            customer_id,
            deleted: false,
            metadata: SmallMap::new(),
            email: None,
            subscriptions: SmallMap::new(),
            unpaid: SmallMap::new(),
            pending_updates: BTreeSet::new(),
            last_paid: SmallMap::new(),
            stripe_features: BTreeSet::new(),
            holds: SmallMap::new(),
            grants: SmallMap::new(),
            scheduled: SmallMap::new(),
            disputes: SmallMap::new(),
            stripe_created: None,
        }
    }

    /// An invoice no longer owed: paid, voided or written off.
    fn settle(&mut self, subscription: &SubscriptionId, invoice: &InvoiceId) {
        if let Some(failed) = self.unpaid.get_mut(subscription) {
            failed.remove(invoice);
            if failed.is_empty() {
                self.unpaid.remove(subscription);
            }
        }
    }

    pub fn apply(&mut self, event: &CustomerEvent) {
        match event {
            CustomerEvent::DetailsRecorded {
                metadata,
                email,
                provenance,
                ..
            } => {
                self.metadata = SmallMap::from(metadata.clone());
                self.email.clone_from(email);
                self.stripe_created = provenance.stripe_created.or(self.stripe_created);
            }
            CustomerEvent::CustomerDeleted { .. } => self.deleted = true,
            CustomerEvent::SubscriptionStarted { subscription, .. }
            | CustomerEvent::SubscriptionChanged { subscription, .. }
            | CustomerEvent::SubscriptionEnded { subscription, .. } => {
                if let Some(invoice) = &subscription.pending_update_invoice {
                    self.pending_updates.insert(invoice.clone());
                }
                self.subscriptions
                    .insert(subscription.id.clone(), subscription.clone());
            }
            CustomerEvent::StripeEntitlementsRecorded { features, .. } => {
                self.stripe_features = features.clone();
            }
            CustomerEvent::HoldPlaced {
                hold_id,
                subscription,
                reason,
                covers_grants,
                occurred_at,
            } => {
                self.holds.insert(
                    hold_id.clone(),
                    Hold {
                        id: hold_id.clone(),
                        subscription: subscription.clone(),
                        reason: reason.clone(),
                        since: *occurred_at,
                        covers_grants: *covers_grants,
                    },
                );
            }
            CustomerEvent::HoldLifted { hold_id, .. } => {
                self.holds.remove(hold_id);
            }
            CustomerEvent::GrantGiven { grant, .. } => {
                self.grants.insert(grant.id.clone(), grant.clone());
            }
            CustomerEvent::GrantRevoked { grant_id, .. } => {
                self.grants.remove(grant_id);
            }
            CustomerEvent::DisputeRecorded {
                dispute,
                subscription,
                occurred_at,
            } => {
                let since = self
                    .disputes
                    .get(&dispute.id)
                    .map_or(*occurred_at, |d| d.since);
                self.disputes.insert(
                    dispute.id.clone(),
                    DisputeBlock {
                        id: dispute.id.clone(),
                        subscription: subscription.clone(),
                        status: dispute.status.clone(),
                        since,
                    },
                );
            }
            CustomerEvent::ScheduleRecorded { schedule, .. } => match &schedule.next_phase {
                Some(next) => {
                    self.scheduled
                        .insert(schedule.subscription_id.clone(), next.clone());
                }
                None => {
                    self.scheduled.remove(&schedule.subscription_id);
                }
            },
            CustomerEvent::InvoicePaymentFailed {
                invoice,
                occurred_at,
            } => {
                if let Some(subscription) = &invoice.subscription_id {
                    let unpaid = self
                        .unpaid
                        .get_or_insert_with(subscription.clone(), SmallMap::new)
                        .get_or_insert_with(invoice.id.clone(), || UnpaidInvoice {
                            invoice: invoice.id.clone(),
                            since: *occurred_at,
                            attempt: 0,
                            next_attempt_at: None,
                        });
                    // Of one invoice's attempts, the earliest dates the debt and the latest
                    // says where the retries are, in whatever order they arrived.
                    unpaid.since = unpaid.since.min(*occurred_at);
                    if invoice.attempt_count >= unpaid.attempt {
                        unpaid.attempt = invoice.attempt_count;
                        unpaid.next_attempt_at = invoice.next_payment_attempt;
                    }
                }
            }
            CustomerEvent::InvoicePaid {
                invoice,
                occurred_at,
            } => {
                if let Some(subscription) = &invoice.subscription_id {
                    self.settle(subscription, &invoice.id);
                    let latest = self.last_paid.get(subscription).map(|p| p.at);
                    if latest.is_none_or(|at| at <= *occurred_at) {
                        self.last_paid.insert(
                            subscription.clone(),
                            PaidInvoice {
                                invoice: invoice.id.clone(),
                                at: *occurred_at,
                            },
                        );
                    }
                }
            }
            CustomerEvent::InvoiceWrittenOff { invoice, .. } => {
                // Recovery: the owed invoice was voided or given up on.
                if let Some(subscription) = &invoice.subscription_id {
                    self.settle(subscription, &invoice.id);
                }
            }
        }
    }
}

/// An operator's hold: access taken away from one subscription, or from the whole customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hold {
    pub id: String,
    /// `None`: the whole customer is on hold.
    pub subscription: Option<SubscriptionId>,
    pub reason: String,
    pub since: DateTime<Utc>,
    /// A customer-wide hold that takes the customer's grants away too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub covers_grants: bool,
}

/// A dispute of a subscription's payment. While it is open, or after it is lost, the
/// subscription grants nothing; a won dispute blocks nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DisputeBlock {
    pub id: String,
    /// The subscription whose invoice the disputed payment paid; `None` for other payments.
    pub subscription: Option<SubscriptionId>,
    pub status: String,
    pub since: DateTime<Utc>,
}

impl DisputeBlock {
    /// Whether the dispute takes its subscription's access away: a chargeback that is open or
    /// lost does (the money was withdrawn). An inquiry (`warning_needs_response`,
    /// `warning_under_review`, `warning_closed`) does not: it is the bank's question, moves no
    /// funds, and becomes a chargeback (which then blocks) only if the bank escalates it
    /// (Stripe's docs, "Disputes: inquiries"; `../shared/STRIPE.md`, test cards).
    pub fn blocks(&self) -> bool {
        !(self.status == "won" || self.status.starts_with("warning_"))
    }

    /// Whether the dispute still waits for an outcome: every status but `won`, `lost` and
    /// `warning_closed` (Stripe's API reference, the Dispute object's `status`).
    pub fn is_open(&self) -> bool {
        !matches!(self.status.as_str(), "won" | "lost" | "warning_closed")
    }
}

/// One feature's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SubscriptionEntitlement {
    pub id: SubscriptionId,
    pub status: SubscriptionStatus,
    /// The catalog plan of the subscription's first item whose price the catalog knows.
    pub plan: Option<String>,
    /// Whether this subscription currently grants its plan.
    pub grants_access: bool,
    pub cancel_at_period_end: bool,
    pub current_period_end: Option<DateTime<Utc>>,
    pub dunning: Dunning,
    /// Holds on this subscription (or on the whole customer), by id.
    pub holds: Vec<String>,
    /// Open or lost disputes of this subscription's payments, by id.
    pub disputes: Vec<String>,
}

/// A change Stripe will make later, reported in advance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScheduledChange {
    pub subscription: SubscriptionId,
    /// `cancel`: the subscription ends and its plan with it; `plan_change`: its items change
    /// (a schedule's next phase) to `plan`.
    pub change: String,
    pub at: Option<DateTime<Utc>>,
    /// The plan after a `plan_change`, when the catalog knows the new price.
    pub plan: Option<String>,
}

/// What a customer may use right now, with the subscriptions it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Entitlements {
    /// The customer's Stripe id.
    pub customer: CustomerId,
    /// The connected account the customer belongs to; absent for the platform's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    pub deleted: bool,
    pub subscriptions: Vec<SubscriptionEntitlement>,
    /// The plans in effect: those of entitling subscriptions, else the default plan.
    pub plans: Vec<String>,
    pub features: BTreeMap<String, FeatureValue>,
    /// The most serious dunning state among the subscriptions.
    pub dunning: Dunning,
    pub scheduled_changes: Vec<ScheduledChange>,
    pub holds: Vec<Hold>,
    /// Operators' grants that count in this answer (see [`crate::grants`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<CustomerGrant>,
    /// When this answer stops being true without any new fact (a grace period ends, a grant
    /// starts or expires).
    #[serde(skip)]
    pub valid_until: Option<DateTime<Utc>>,
}

/// Applies the grants that count at `at` to the plans' `features` by the rule in
/// [`crate::grants`], and moves `valid_until` to the next start or expiry of any; returns the
/// grants that counted.
fn apply_grants(
    view: &BillingView,
    subscriptions: &[SubscriptionEntitlement],
    features: &mut BTreeMap<String, FeatureValue>,
    at: DateTime<Utc>,
    valid_until: &mut Option<DateTime<Utc>>,
) -> Vec<CustomerGrant> {
    if view.deleted
        || view
            .holds
            .values()
            .any(|hold| hold.subscription.is_none() && hold.covers_grants)
    {
        return Vec::new();
    }
    // A grant scoped to a subscription ends with it.
    let live: Vec<&CustomerGrant> = view
        .grants
        .values()
        .filter(|grant| {
            grant.terms.subscription.as_ref().is_none_or(|id| {
                view.subscriptions
                    .get(id)
                    .is_some_and(|subscription| !subscription.status.is_terminal())
            })
        })
        .collect();
    for edge in live.iter().filter_map(|grant| grant.next_edge(at)) {
        *valid_until = Some(valid_until.map_or(edge, |t| t.min(edge)));
    }
    let mut counted: Vec<&CustomerGrant> = live
        .into_iter()
        .filter(|grant| grant.in_window(at))
        .filter(
            |grant| match (&grant.terms.subscription, grant.terms.mode) {
                // An addition to what a subscription gives pauses while it gives nothing.
                (Some(id), GrantMode::Add) => {
                    subscriptions.iter().any(|s| &s.id == id && s.grants_access)
                }
                _ => true,
            },
        )
        .collect();
    // Sets in the order they were given, so the last one given wins; then additions.
    counted.sort_by(|a, b| {
        (a.terms.mode == GrantMode::Add, a.granted_at, &a.id).cmp(&(
            b.terms.mode == GrantMode::Add,
            b.granted_at,
            &b.id,
        ))
    });
    for grant in &counted {
        let value = features
            .entry(grant.terms.feature.clone())
            .or_insert(FeatureValue::DISABLED);
        *value = match (grant.terms.mode, grant.terms.value) {
            (GrantMode::Set, GrantValue::Enabled(enabled)) => FeatureValue {
                enabled,
                limit: None,
            },
            (GrantMode::Set, GrantValue::Limit(limit)) => FeatureValue {
                enabled: limit > 0,
                limit: Some(limit),
            },
            (GrantMode::Add, GrantValue::Limit(more)) => {
                let limit = value.limit.unwrap_or(0).saturating_add(more);
                FeatureValue {
                    enabled: limit > 0,
                    limit: Some(limit),
                }
            }
            // Refused when given (only a limit can be added to); changes nothing if stored.
            (GrantMode::Add, GrantValue::Enabled(_)) => *value,
        };
    }
    counted.into_iter().cloned().collect()
}

/// Whether a subscription in `status`, with `dunning`, grants its plan under `policy`.
fn grants_access(status: SubscriptionStatus, dunning: &Dunning, policy: &AccessPolicy) -> bool {
    match status {
        SubscriptionStatus::Unpaid => policy.unpaid == Grant::Plan,
        SubscriptionStatus::Paused => policy.paused == Grant::Plan,
        status => status.grants_access() && !dunning.blocks_access(),
    }
}

impl Entitlements {
    /// What `view` entitles the customer to at `at`.
    pub fn resolve(view: &BillingView, catalog: &Catalog, at: DateTime<Utc>) -> Self {
        let policy = catalog.policy();
        let plan_of = |subscription: &SubscriptionSnapshot| {
            subscription
                .items
                .iter()
                .find_map(|item| catalog.plan_of_item(&view.customer_id, item))
        };
        let mut subscriptions = Vec::new();
        let mut plans: Vec<&crate::catalog::Plan> = Vec::new();
        let mut scheduled_changes = Vec::new();
        let mut valid_until: Option<DateTime<Utc>> = None;
        for subscription in view.subscriptions.values() {
            let dunning = Dunning::assess(subscription, view.owed(&subscription.id), policy, at);
            if let Some(grace_ends_at) = dunning.grace_ends_at.filter(|t| *t > at) {
                valid_until = Some(valid_until.map_or(grace_ends_at, |t| t.min(grace_ends_at)));
            }
            let holds: Vec<String> = view
                .holds
                .values()
                .filter(|h| {
                    h.subscription
                        .as_ref()
                        .is_none_or(|s| *s == subscription.id)
                })
                .map(|h| h.id.clone())
                .collect();
            let disputes: Vec<String> = view
                .disputes
                .values()
                .filter(|d| d.blocks() && d.subscription.as_ref() == Some(&subscription.id))
                .map(|d| d.id.clone())
                .collect();
            let grants = grants_access(subscription.status, &dunning, policy)
                && !view.deleted
                && holds.is_empty()
                && disputes.is_empty();
            if grants {
                for item in &subscription.items {
                    if let Some(plan) = catalog.plan_of_item(&view.customer_id, item) {
                        // Two subscriptions on one plan may hold different versions of it.
                        let plan = catalog.as_started(plan, subscription.started_at);
                        if !plans.iter().any(|known| std::ptr::eq(*known, plan)) {
                            plans.push(plan);
                        }
                    }
                }
                // Either way Stripe ends the subscription later: at the period end, or at cancel_at.
                if subscription.cancel_at_period_end
                    || subscription.cancel_at.is_some_and(|t| t > at)
                {
                    scheduled_changes.push(ScheduledChange {
                        subscription: subscription.id.clone(),
                        change: "cancel".to_owned(),
                        at: subscription.cancel_at.or(subscription.current_period_end),
                        plan: None,
                    });
                }
                if let Some(next) = view
                    .scheduled
                    .get(&subscription.id)
                    .filter(|next| next.starts_at > at)
                {
                    scheduled_changes.push(ScheduledChange {
                        subscription: subscription.id.clone(),
                        change: "plan_change".to_owned(),
                        at: Some(next.starts_at),
                        plan: next
                            .items
                            .iter()
                            .find_map(|item| catalog.plan_of_item(&view.customer_id, item))
                            .map(|plan| plan.name.clone()),
                    });
                }
            }
            subscriptions.push(SubscriptionEntitlement {
                id: subscription.id.clone(),
                status: subscription.status,
                plan: plan_of(subscription).map(|plan| plan.name.clone()),
                grants_access: grants,
                cancel_at_period_end: subscription.cancel_at_period_end,
                current_period_end: subscription.current_period_end,
                dunning,
                holds,
                disputes,
            });
        }
        // A deleted customer has no plan at all, not even the default one.
        // A hold on the whole customer leaves the default plan, like any loss of access.
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
        // Stripe's Entitlements API grants boolean features too, but only while a subscription
        // grants access: Stripe sends no new summary when a trial ends paused, so a summary
        // alone must never keep access on.
        if subscriptions.iter().any(|s| s.grants_access) {
            for name in &view.stripe_features {
                let value = features
                    .entry(name.clone())
                    .or_insert(FeatureValue::DISABLED);
                *value = value.combine(FeatureGrant::Enabled);
            }
        }
        // Summed limits: every entitling item counts, times its quantity.
        let mut sums: BTreeMap<&str, u64> = BTreeMap::new();
        for entitlement in subscriptions.iter().filter(|s| s.grants_access) {
            let Some(subscription) = view.subscriptions.get(&entitlement.id) else {
                continue;
            };
            for item in &subscription.items {
                let plan = catalog
                    .plan_of_item(&view.customer_id, item)
                    .map(|plan| catalog.as_started(plan, subscription.started_at));
                for (name, grant) in plan.iter().flat_map(|plan| &plan.features) {
                    if let (true, FeatureGrant::Limit(limit)) = (catalog.sums(name), grant) {
                        let sum = sums.entry(name.as_str()).or_insert(0);
                        *sum = sum.saturating_add(limit.saturating_mul(item.quantity));
                    }
                }
            }
        }
        for (name, sum) in sums {
            if let Some(value) = features.get_mut(name) {
                *value = FeatureValue {
                    enabled: sum > 0,
                    limit: Some(sum),
                };
            }
        }
        let grants = apply_grants(view, &subscriptions, &mut features, at, &mut valid_until);
        Self {
            customer: CustomerId::new(view.customer_id.stripe_id()),
            account: view.customer_id.account().map(str::to_owned),
            deleted: view.deleted,
            dunning: Dunning::most_serious(subscriptions.iter().map(|s| s.dunning.clone())),
            subscriptions,
            plans: plans.iter().fold(Vec::new(), |mut names, plan| {
                if !names.contains(&plan.name) {
                    names.push(plan.name.clone());
                }
                names
            }),
            features,
            scheduled_changes,
            holds: view.holds.values().cloned().collect(),
            grants,
            valid_until,
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
    use crate::billing::{InvoiceFacts, SubscriptionItem};
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

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_500, 0).unwrap()
    }

    fn catalog() -> Catalog {
        Catalog::from_yaml("test", CATALOG).unwrap()
    }

    fn view_with(subscriptions: &[(&str, SubscriptionStatus, &str)]) -> BillingView {
        view_of(CustomerId::new("cus_1"), subscriptions)
    }

    fn view_of(
        customer: CustomerId,
        subscriptions: &[(&str, SubscriptionStatus, &str)],
    ) -> BillingView {
        let mut view = BillingView::new(customer.clone());
        for (id, status, price) in subscriptions {
            let subscription = SubscriptionSnapshot {
                id: SubscriptionId::new(*id),
                customer_id: customer.clone(),
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
                pending_update_invoice: None,
                started_at: None,
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
        let entitlements = Entitlements::resolve(&view_with(&[]), &catalog(), now());
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
            now(),
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
            now(),
        );
        assert_eq!(entitlements.plans, ["pro"]);
    }

    #[test]
    fn a_connected_accounts_lookup_key_selects_no_plan() {
        let connected = CustomerId::in_account(Some("acct_1"), "cus_1");
        let by_key = view_of(
            connected.clone(),
            &[("sub_1", SubscriptionStatus::Active, "price_by_key")],
        );
        let entitlements = Entitlements::resolve(&by_key, &catalog(), now());
        assert_eq!(entitlements.plans, ["free"]);
        assert_eq!(entitlements.subscriptions[0].plan, None);
        assert!(!entitlements.feature("sso").enabled);
        // Its price ids still name plans: the catalog chose them.
        let by_price = view_of(
            connected,
            &[("sub_1", SubscriptionStatus::Active, "price_pro")],
        );
        let entitlements = Entitlements::resolve(&by_price, &catalog(), now());
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
            now(),
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
            let entitlements = Entitlements::resolve(
                &view_with(&[("sub_1", status, "price_pro")]),
                &catalog(),
                now(),
            );
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
        let entitlements = Entitlements::resolve(&view, &catalog(), now());
        assert!(entitlements.plans.is_empty());
        assert!(!entitlements.feature("api_calls").enabled);
    }

    /// A $29 invoice of `subscription`, paid or not, after `attempt` attempts.
    fn invoice_of(subscription: &str, invoice: &str, paid: bool, attempt: u32) -> InvoiceFacts {
        use crate::ids::InvoiceId;
        use crate::money::Money;
        InvoiceFacts {
            id: InvoiceId::new(invoice),
            subscription_id: Some(SubscriptionId::new(subscription)),
            amount_due: Money::new(2900, "usd"),
            amount_paid: Money::new(if paid { 2900 } else { 0 }, "usd"),
            attempt_count: attempt,
            next_payment_attempt: None,
        }
    }

    fn failed(
        view: &mut BillingView,
        subscription: &str,
        invoice: &str,
        attempt: u32,
        at: DateTime<Utc>,
    ) {
        view.apply(&CustomerEvent::InvoicePaymentFailed {
            invoice: InvoiceFacts {
                next_payment_attempt: Some(at + chrono::Duration::days(3)),
                ..invoice_of(subscription, invoice, false, attempt)
            },
            occurred_at: at,
        });
    }

    #[test]
    fn the_grace_period_runs_from_the_first_attempt_whatever_order_attempts_arrive_in() {
        let mut late_first = view_with(&[("sub_1", SubscriptionStatus::PastDue, "price_pro")]);
        failed(
            &mut late_first,
            "sub_1",
            "in_1",
            2,
            now() + chrono::Duration::days(3),
        );
        failed(&mut late_first, "sub_1", "in_1", 1, now());
        let mut in_order = view_with(&[("sub_1", SubscriptionStatus::PastDue, "price_pro")]);
        failed(&mut in_order, "sub_1", "in_1", 1, now());
        failed(
            &mut in_order,
            "sub_1",
            "in_1",
            2,
            now() + chrono::Duration::days(3),
        );
        assert_eq!(late_first.unpaid, in_order.unpaid);
        let unpaid = late_first.unpaid(&SubscriptionId::new("sub_1")).unwrap();
        assert_eq!((unpaid.since, unpaid.attempt), (now(), 2));
        let after_grace = now() + chrono::Duration::days(7);
        assert_eq!(
            Entitlements::resolve(&late_first, &catalog(), after_grace)
                .dunning
                .state,
            crate::dunning::DunningState::Suspended
        );
    }

    #[test]
    fn a_newer_invoice_paid_ends_the_dunning_of_an_older_one_left_open_in_any_order() {
        let paid = |invoice: &str, at| CustomerEvent::InvoicePaid {
            invoice: invoice_of("sub_1", invoice, true, 1),
            occurred_at: at,
        };
        let month = now() + chrono::Duration::days(30);
        let after_grace = now() + chrono::Duration::days(40);
        let mut failure_first = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
        failed(&mut failure_first, "sub_1", "in_old", 3, now());
        failure_first.apply(&paid("in_new", month));
        let mut payment_first = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
        payment_first.apply(&paid("in_new", month));
        failed(&mut payment_first, "sub_1", "in_old", 3, now());
        for view in [&failure_first, &payment_first] {
            let answer = Entitlements::resolve(view, &catalog(), after_grace);
            assert_eq!(answer.dunning.state, crate::dunning::DunningState::Ok);
            assert_eq!(answer.plans, ["pro"]);
        }
        // A later retry of the older invoice does not bring its debt back; an invoice that
        // first fails after the payment is owed.
        failed(
            &mut payment_first,
            "sub_1",
            "in_old",
            4,
            month + chrono::Duration::days(1),
        );
        assert!(payment_first.owed(&SubscriptionId::new("sub_1")).is_none());
        let mut later = view_with(&[("sub_1", SubscriptionStatus::PastDue, "price_pro")]);
        later.apply(&paid("in_new", month));
        failed(
            &mut later,
            "sub_1",
            "in_next",
            1,
            month + chrono::Duration::days(30),
        );
        assert!(later.owed(&SubscriptionId::new("sub_1")).is_some());
    }

    /// A change made with `payment_behavior: pending_if_incomplete` whose payment failed is
    /// not applied and owes nothing (Stripe's docs, "Pending updates"). Whatever order the
    /// subscription's `pending_update` snapshot, the update's failure and a later renewal's
    /// failure arrive in, only the renewal is owed, from its own first failure.
    #[test]
    fn a_pending_updates_failed_payment_is_no_debt_in_any_order() {
        let pending = |view: &mut BillingView| {
            let mut subscription = view
                .subscriptions
                .get(&SubscriptionId::new("sub_1"))
                .unwrap()
                .clone();
            subscription.pending_update_invoice = Some(InvoiceId::new("in_update"));
            view.apply(&CustomerEvent::SubscriptionChanged {
                subscription,
                occurred_at: now(),
                provenance: Default::default(),
            });
        };
        let renewal_at = now() + chrono::Duration::hours(20);
        let steps: [&dyn Fn(&mut BillingView); 3] = [
            &|view| pending(view),
            &|view| failed(view, "sub_1", "in_update", 1, now()),
            &|view| failed(view, "sub_1", "in_renewal", 1, renewal_at),
        ];
        let orders = [
            [0, 1, 2],
            [1, 0, 2],
            [1, 2, 0],
            [2, 1, 0],
            [0, 2, 1],
            [2, 0, 1],
        ];
        let mut outcomes = Vec::new();
        for order in orders {
            let mut view = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
            let before_renewal = {
                let mut only_update = view.clone();
                pending(&mut only_update);
                failed(&mut only_update, "sub_1", "in_update", 1, now());
                only_update
            };
            assert!(before_renewal.owed(&SubscriptionId::new("sub_1")).is_none());
            let answer = Entitlements::resolve(
                &before_renewal,
                &catalog(),
                now() + chrono::Duration::days(30),
            );
            assert_eq!(answer.dunning.state, crate::dunning::DunningState::Ok);
            for step in order {
                steps[step](&mut view);
            }
            let owed = view.owed(&SubscriptionId::new("sub_1")).cloned().unwrap();
            assert_eq!(
                (owed.invoice.as_str(), owed.since),
                ("in_renewal", renewal_at),
                "{order:?}"
            );
            outcomes.push(view.unpaid.clone());
        }
        assert!(outcomes.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn chargebacks_block_until_won_and_inquiries_never_do() {
        let block = |status: &str| DisputeBlock {
            id: "dp_1".to_owned(),
            subscription: Some(SubscriptionId::new("sub_1")),
            status: status.to_owned(),
            since: now(),
        };
        for status in [
            "needs_response",
            "under_review",
            "lost",
            "a_status_stripe_adds_later",
        ] {
            assert!(block(status).blocks(), "{status}");
        }
        for status in [
            "won",
            "warning_needs_response",
            "warning_under_review",
            "warning_closed",
        ] {
            assert!(!block(status).blocks(), "{status}");
        }
    }

    #[test]
    fn a_subscription_paused_after_failed_payments_is_in_dunning() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::Paused, "price_pro")]);
        failed(&mut view, "sub_1", "in_1", 4, now());
        let answer = Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::days(1));
        assert_eq!(
            answer.dunning.state,
            crate::dunning::DunningState::Suspended
        );
        assert_eq!(answer.dunning.attempt, 4);
        let paused_by_request = view_with(&[("sub_1", SubscriptionStatus::Paused, "price_pro")]);
        let answer = Entitlements::resolve(&paused_by_request, &catalog(), now());
        assert_eq!(answer.dunning.state, crate::dunning::DunningState::Ok);
    }

    #[test]
    fn a_written_off_invoice_no_longer_counts_as_owed() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::PastDue, "price_pro")]);
        failed(&mut view, "sub_1", "in_1", 2, now());
        view.apply(&CustomerEvent::InvoiceWrittenOff {
            invoice: invoice_of("sub_1", "in_1", false, 2),
            outcome: crate::billing::WriteOff::Uncollectible,
            occurred_at: now() + chrono::Duration::days(1),
        });
        assert!(view.unpaid.is_empty());
        // Past the grace period nothing owed suspends the plan (Stripe's own status change
        // back to `active` arrives as a subscription snapshot of its own).
        let later = Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::days(30));
        assert_ne!(later.dunning.state, crate::dunning::DunningState::Suspended);
        assert_eq!(later.plans, ["pro"]);
    }

    #[test]
    fn a_failed_renewal_keeps_the_plan_for_the_grace_period_then_suspends_it() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::PastDue, "price_pro")]);
        failed(&mut view, "sub_1", "in_1", 1, now());
        let during = Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::days(6));
        assert_eq!(during.plans, ["pro"]);
        assert_eq!(during.dunning.state, crate::dunning::DunningState::PastDue);
        assert_eq!(during.dunning.attempt, 1);
        assert_eq!(during.valid_until, Some(now() + chrono::Duration::days(7)));
        let after = Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::days(7));
        assert_eq!(after.plans, ["free"]);
        assert_eq!(after.dunning.state, crate::dunning::DunningState::Suspended);
        assert!(!after.subscriptions[0].grants_access);
    }

    #[test]
    fn paying_the_owed_invoice_recovers_full_access() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
        failed(&mut view, "sub_1", "in_1", 1, now());
        view.apply(&CustomerEvent::InvoicePaid {
            invoice: invoice_of("sub_1", "in_1", true, 2),
            occurred_at: now() + chrono::Duration::days(10),
        });
        let recovered =
            Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::days(10));
        assert_eq!(recovered.dunning, Dunning::OK);
        assert_eq!(recovered.plans, ["pro"]);
    }

    #[test]
    fn a_block_on_one_subscription_leaves_another_paid_up_one_alone() {
        let mut view = view_with(&[
            ("sub_1", SubscriptionStatus::PastDue, "price_pro"),
            ("sub_2", SubscriptionStatus::Active, "price_team"),
        ]);
        failed(&mut view, "sub_1", "in_1", 2, now());
        let entitlements =
            Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::days(8));
        assert_eq!(entitlements.plans, ["team"]);
        assert!(entitlements.feature("audit_log").enabled);
        assert!(
            !entitlements.feature("sso").enabled,
            "sso came only from the suspended subscription"
        );
        assert_eq!(entitlements.subscriptions[1].dunning, Dunning::OK);
    }

    #[test]
    fn the_policy_decides_what_unpaid_and_paused_grant() {
        let text = format!("{CATALOG}policy:\n  unpaid: plan\n  paused: plan\n");
        let generous = Catalog::from_yaml("test", &text).unwrap();
        for status in [SubscriptionStatus::Unpaid, SubscriptionStatus::Paused] {
            let view = view_with(&[("sub_1", status, "price_pro")]);
            assert_eq!(
                Entitlements::resolve(&view, &generous, now()).plans,
                ["pro"],
                "{status:?}"
            );
            assert_eq!(
                Entitlements::resolve(&view, &catalog(), now()).plans,
                ["free"],
                "{status:?}"
            );
        }
    }

    #[test]
    fn a_cancellation_at_period_end_is_reported_in_advance() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
        if let Some(subscription) = view.subscriptions.values_mut().next() {
            subscription.cancel_at_period_end = true;
            subscription.current_period_end = Some(now() + chrono::Duration::days(20));
        }
        let entitlements = Entitlements::resolve(&view, &catalog(), now());
        assert_eq!(entitlements.plans, ["pro"]);
        assert_eq!(entitlements.scheduled_changes.len(), 1);
        assert_eq!(entitlements.scheduled_changes[0].change, "cancel");
        assert_eq!(
            entitlements.scheduled_changes[0].at,
            Some(now() + chrono::Duration::days(20))
        );
    }

    #[test]
    fn summed_limits_add_up_across_subscriptions_and_quantities() {
        let text = format!("{CATALOG}sum_limits: [seats]\n");
        let catalog = Catalog::from_yaml("test", &text).unwrap();
        let mut view = view_with(&[
            ("sub_1", SubscriptionStatus::Active, "price_pro"),
            ("sub_2", SubscriptionStatus::Active, "price_team"),
            ("sub_3", SubscriptionStatus::Canceled, "price_team"),
        ]);
        if let Some(subscription) = view.subscriptions.get_mut(&SubscriptionId::new("sub_2")) {
            subscription.items[0].quantity = 2;
        }
        let entitlements = Entitlements::resolve(&view, &catalog, now());
        // pro 10 + team 50 x 2; the canceled subscription counts for nothing.
        assert_eq!(
            entitlements.feature("seats"),
            FeatureValue {
                enabled: true,
                limit: Some(110)
            }
        );
        // Not summed: the largest wins.
        assert_eq!(entitlements.feature("api_calls").limit, Some(100_000));
        let error =
            Catalog::from_yaml("test", &format!("{CATALOG}sum_limits: [parking]\n")).unwrap_err();
        assert!(error.message.contains("`parking`"), "{error}");
    }

    #[test]
    fn stripe_entitlements_add_boolean_features_only_while_a_subscription_grants_access() {
        let record = |view: &mut BillingView| {
            view.apply(&CustomerEvent::StripeEntitlementsRecorded {
                features: BTreeSet::from(["sso".to_owned(), "priority_support".to_owned()]),
                occurred_at: now(),
                provenance: Default::default(),
            });
        };
        let mut active = view_with(&[("sub_1", SubscriptionStatus::Active, "price_team")]);
        record(&mut active);
        let entitlements = Entitlements::resolve(&active, &catalog(), now());
        assert!(entitlements.feature("priority_support").enabled);
        assert!(entitlements.feature("sso").enabled);
        assert_eq!(
            entitlements.feature("seats").limit,
            Some(50),
            "limits still come from the catalog"
        );
        // The known gap: a trial that ends paused sends no new summary. The stale one must not
        // keep access on.
        let mut paused = view_with(&[("sub_1", SubscriptionStatus::Paused, "price_team")]);
        record(&mut paused);
        let entitlements = Entitlements::resolve(&paused, &catalog(), now());
        assert!(!entitlements.feature("priority_support").enabled);
        assert!(!entitlements.feature("sso").enabled);
    }

    #[test]
    fn a_hold_takes_away_one_subscription_or_the_whole_customer_until_lifted() {
        let mut view = view_with(&[
            ("sub_1", SubscriptionStatus::Active, "price_pro"),
            ("sub_2", SubscriptionStatus::Active, "price_team"),
        ]);
        let hold = |id: &str, subscription: Option<&str>| CustomerEvent::HoldPlaced {
            hold_id: id.to_owned(),
            subscription: subscription.map(SubscriptionId::new),
            reason: "fraud review".to_owned(),
            covers_grants: false,
            occurred_at: now(),
        };
        view.apply(&hold("hold_1", Some("sub_1")));
        let entitlements = Entitlements::resolve(&view, &catalog(), now());
        assert_eq!(entitlements.plans, ["team"]);
        assert_eq!(entitlements.subscriptions[0].holds, ["hold_1"]);
        view.apply(&hold("hold_2", None));
        let entitlements = Entitlements::resolve(&view, &catalog(), now());
        assert_eq!(entitlements.plans, ["free"]);
        assert_eq!(entitlements.holds.len(), 2);
        for id in ["hold_1", "hold_2"] {
            view.apply(&CustomerEvent::HoldLifted {
                hold_id: id.to_owned(),
                occurred_at: now(),
            });
        }
        assert_eq!(
            Entitlements::resolve(&view, &catalog(), now()).plans,
            ["pro", "team"]
        );
    }

    fn give(
        id: &str,
        feature: &str,
        value: GrantValue,
        mode: GrantMode,
        subscription: Option<&str>,
        window: (Option<i64>, Option<i64>),
        granted: i64,
    ) -> CustomerEvent {
        let t = |offset: i64| now() + chrono::Duration::seconds(offset);
        CustomerEvent::GrantGiven {
            grant: CustomerGrant {
                id: id.to_owned(),
                terms: crate::grants::GrantTerms {
                    feature: feature.to_owned(),
                    value,
                    mode,
                    subscription: subscription.map(SubscriptionId::new),
                    starts_at: window.0.map(t),
                    expires_at: window.1.map(t),
                    reason: "sales".to_owned(),
                },
                granted_by: "ops".to_owned(),
                granted_at: t(granted),
            },
            occurred_at: t(granted),
        }
    }

    #[test]
    fn a_set_grant_replaces_the_plans_value_and_an_add_grant_raises_it() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::Active, "price_team")]);
        view.apply(&give(
            "g_sso",
            "sso",
            GrantValue::Enabled(true),
            GrantMode::Set,
            None,
            (None, None),
            -10,
        ));
        view.apply(&give(
            "g_seats",
            "seats",
            GrantValue::Limit(5),
            GrantMode::Add,
            None,
            (None, None),
            -10,
        ));
        let answer = Entitlements::resolve(&view, &catalog(), now());
        assert!(
            answer.feature("sso").enabled,
            "team has no sso; the grant gives it"
        );
        assert_eq!(answer.feature("seats").limit, Some(55));
        assert_eq!(answer.grants.len(), 2);
        // Two sets of one feature: the one given last wins, whatever order they were applied in.
        let first = give(
            "g_b",
            "seats",
            GrantValue::Limit(7),
            GrantMode::Set,
            None,
            (None, None),
            -5,
        );
        let second = give(
            "g_a",
            "seats",
            GrantValue::Limit(3),
            GrantMode::Set,
            None,
            (None, None),
            -4,
        );
        for order in [[&first, &second], [&second, &first]] {
            let mut both = view.clone();
            for event in order {
                both.apply(event);
            }
            let answer = Entitlements::resolve(&both, &catalog(), now());
            assert_eq!(answer.feature("seats").limit, Some(8), "set 3, then add 5");
        }
    }

    #[test]
    fn grants_start_and_expire_with_no_event_and_the_answer_says_until_when() {
        let mut view = view_with(&[]);
        view.apply(&give(
            "g_1",
            "api_calls",
            GrantValue::Limit(500),
            GrantMode::Add,
            None,
            (Some(60), Some(120)),
            -10,
        ));
        let before = Entitlements::resolve(&view, &catalog(), now());
        assert_eq!(before.feature("api_calls").limit, Some(1000));
        assert_eq!(
            before.valid_until,
            Some(now() + chrono::Duration::seconds(60))
        );
        let during =
            Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::seconds(60));
        assert_eq!(during.feature("api_calls").limit, Some(1500));
        assert_eq!(
            during.valid_until,
            Some(now() + chrono::Duration::seconds(120))
        );
        let after =
            Entitlements::resolve(&view, &catalog(), now() + chrono::Duration::seconds(120));
        assert_eq!(after.feature("api_calls").limit, Some(1000));
        assert_eq!(after.valid_until, None);
        // Given later than the moment asked about: it did not count then.
        let mut late = view_with(&[]);
        late.apply(&give(
            "g_2",
            "sso",
            GrantValue::Enabled(true),
            GrantMode::Set,
            None,
            (None, None),
            30,
        ));
        assert!(
            !Entitlements::resolve(&late, &catalog(), now())
                .feature("sso")
                .enabled
        );
    }

    #[test]
    fn holds_and_dunning_take_plans_not_set_grants_unless_the_hold_covers_grants() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
        view.apply(&give(
            "g_sso",
            "audit_log",
            GrantValue::Enabled(true),
            GrantMode::Set,
            None,
            (None, None),
            -10,
        ));
        view.apply(&give(
            "g_seats",
            "seats",
            GrantValue::Limit(5),
            GrantMode::Add,
            Some("sub_1"),
            (None, None),
            -10,
        ));
        let held = |covers_grants: bool| CustomerEvent::HoldPlaced {
            hold_id: "hold_1".to_owned(),
            subscription: None,
            reason: "review".to_owned(),
            covers_grants,
            occurred_at: now(),
        };
        let mut on_hold = view.clone();
        on_hold.apply(&held(false));
        let answer = Entitlements::resolve(&on_hold, &catalog(), now());
        assert_eq!(answer.plans, ["free"]);
        assert!(answer.feature("audit_log").enabled, "a set grant stands");
        assert_eq!(
            answer.feature("seats"),
            FeatureValue::DISABLED,
            "an addition to a subscription that gives nothing pauses"
        );
        let mut covered = view.clone();
        covered.apply(&held(true));
        let answer = Entitlements::resolve(&covered, &catalog(), now());
        assert!(!answer.feature("audit_log").enabled);
        assert!(answer.grants.is_empty());
        // A grant scoped to a subscription ends with it.
        let mut ended = view.clone();
        if let Some(subscription) = ended.subscriptions.values_mut().next() {
            subscription.status = SubscriptionStatus::Canceled;
        }
        let answer = Entitlements::resolve(&ended, &catalog(), now());
        assert_eq!(answer.grants.len(), 1);
        assert_eq!(answer.grants[0].id, "g_sso");
        // A deleted customer has nothing.
        let mut deleted = view;
        deleted.apply(&CustomerEvent::CustomerDeleted { occurred_at: now() });
        assert!(Entitlements::resolve(&deleted, &catalog(), now())
            .grants
            .is_empty());
    }

    #[test]
    fn a_cancellation_at_a_set_date_is_reported_in_advance_too() {
        let mut view = view_with(&[("sub_1", SubscriptionStatus::Active, "price_pro")]);
        if let Some(subscription) = view.subscriptions.values_mut().next() {
            subscription.cancel_at = Some(now() + chrono::Duration::days(3));
        }
        let entitlements = Entitlements::resolve(&view, &catalog(), now());
        assert_eq!(entitlements.scheduled_changes[0].change, "cancel");
        assert_eq!(
            entitlements.scheduled_changes[0].at,
            Some(now() + chrono::Duration::days(3))
        );
        // Undone: cancel_at cleared.
        if let Some(subscription) = view.subscriptions.values_mut().next() {
            subscription.cancel_at = None;
        }
        assert!(Entitlements::resolve(&view, &catalog(), now())
            .scheduled_changes
            .is_empty());
    }
}
