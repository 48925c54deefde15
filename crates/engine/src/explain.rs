//! Why a customer has (or lacks) a feature: the plans and catalog rules that grant it, the
//! subscriptions they come through, what blocks them, and the domain events (with their Stripe
//! event ids) behind each of those.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use subledger_domain::catalog::{Catalog, FeatureGrant};
use subledger_domain::customer::CustomerEvent;
use subledger_domain::entitlements::{BillingView, Entitlements};
use subledger_domain::grants::{CustomerGrant, GrantMode, GrantValue};
use subledger_domain::ids::SubscriptionId;

use crate::engine::TimelineEntry;

/// A decision and its reasons.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Explanation {
    pub customer: String,
    pub feature: String,
    pub enabled: bool,
    pub limit: Option<u64>,
    /// The moment the decision is about.
    pub at: DateTime<Utc>,
    /// What grants the feature.
    pub reasons: Vec<Reason>,
    /// What would grant it but is blocked.
    pub blockers: Vec<Blocker>,
    /// The catalog version in force at `at`, whose rules these are.
    pub catalog: crate::catalogs::CatalogRef,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reason {
    /// `subscription`, `default_plan`, `stripe_entitlements` or `grant`.
    pub source: &'static str,
    pub plan: Option<String>,
    /// The catalog rule, e.g. `plan pro grants sso: true`.
    pub rule: String,
    pub subscription: Option<SubscriptionId>,
    pub status: Option<String>,
    pub evidence: Vec<Evidence>,
    /// For a `grant`: which, who gave it, why, from and until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<CustomerGrant>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Blocker {
    /// `dunning`, `hold`, `dispute`, `status`, `deleted_customer`,
    /// `no_access_for_stripe_entitlements`, or for a grant of the feature that does not count
    /// now: `grant_not_in_force` (before its start, after its expiry), `grant_ended` (its
    /// subscription ended), `grant_paused` (an addition to a subscription that gives nothing)
    /// or `hold_covers_grants`.
    pub kind: &'static str,
    pub subscription: Option<SubscriptionId>,
    pub detail: String,
    pub evidence: Vec<Evidence>,
    /// For a `hold`: the holds in force, with who's reason (an answer may grow, never change,
    /// so the reasons are here rather than in `detail`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<subledger_domain::entitlements::Hold>,
    /// For the `grant_*` kinds: the grant that does not count.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant: Option<CustomerGrant>,
}

/// A domain event behind a reason, with the Stripe event it came from, or who recorded it
/// without one (an operator, backfill, or the reconciler with the drift it corrected).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Evidence {
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub stripe_event_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
}

fn rule(plan: &str, feature: &str, grant: FeatureGrant) -> String {
    match grant {
        FeatureGrant::Enabled => format!("plan {plan} grants {feature}: true"),
        FeatureGrant::Disabled => format!("plan {plan} sets {feature}: false"),
        FeatureGrant::Limit(limit) => format!("plan {plan} grants {feature}: {limit}"),
    }
}

/// The events that concern one subscription (or, with `None`, the customer as a whole).
fn evidence(timeline: &[TimelineEntry], subscription: Option<&SubscriptionId>) -> Vec<Evidence> {
    timeline
        .iter()
        .filter(|entry| match (&entry.event, subscription) {
            (
                CustomerEvent::SubscriptionStarted {
                    subscription: s, ..
                }
                | CustomerEvent::SubscriptionChanged {
                    subscription: s, ..
                }
                | CustomerEvent::SubscriptionEnded {
                    subscription: s, ..
                },
                Some(id),
            ) => s.id == *id,
            (
                CustomerEvent::InvoicePaid { invoice, .. }
                | CustomerEvent::InvoicePaymentFailed { invoice, .. }
                | CustomerEvent::InvoiceWrittenOff { invoice, .. },
                Some(id),
            ) => invoice.subscription_id.as_ref() == Some(id),
            (
                CustomerEvent::HoldPlaced {
                    subscription: s, ..
                },
                id,
            ) => s.is_none() || s.as_ref() == id,
            (CustomerEvent::HoldLifted { .. }, _) => true,
            (
                CustomerEvent::DisputeRecorded {
                    subscription: s, ..
                },
                Some(id),
            ) => s.as_ref() == Some(id),
            (
                CustomerEvent::StripeEntitlementsRecorded { .. }
                | CustomerEvent::CustomerDeleted { .. },
                None,
            ) => true,
            _ => false,
        })
        .map(Evidence::of)
        .collect()
}

impl Evidence {
    fn of(entry: &TimelineEntry) -> Self {
        Self {
            event_type: entry.event_type.clone(),
            occurred_at: entry.occurred_at,
            stripe_event_id: entry.stripe_event_id.clone(),
            actor: entry.actor.clone(),
            drift: entry.drift.clone(),
        }
    }
}

pub(crate) fn explain(
    view: &BillingView,
    version: &crate::catalogs::CatalogVersion,
    timeline: &[TimelineEntry],
    feature: &str,
    at: DateTime<Utc>,
) -> Explanation {
    let catalog: &Catalog = &version.catalog;
    let resolved = Entitlements::resolve(view, catalog, at);
    let value = resolved.feature(feature);
    let mut reasons = Vec::new();
    let mut blockers = Vec::new();
    for entitlement in &resolved.subscriptions {
        let Some(snapshot) = view.subscriptions.get(&entitlement.id) else {
            continue;
        };
        let current = snapshot
            .items
            .iter()
            .find_map(|item| catalog.plan_of_item(&view.customer_id, item));
        let plan = current.map(|plan| catalog.as_started(plan, snapshot.started_at));
        let Some((plan, grant)) = plan.and_then(|p| p.features.get(feature).map(|g| (p, *g)))
        else {
            continue;
        };
        let status = Some(entitlement.status.as_str().to_owned());
        let evidence = evidence(timeline, Some(&entitlement.id));
        if entitlement.grants_access {
            let mut rule = rule(&plan.name, feature, grant);
            if let (Some(current), Some(started)) = (current, snapshot.started_at) {
                if !std::ptr::eq(current, plan) {
                    rule.push_str(&format!(
                        ", as the plan stood for a subscription started {}: its changes since apply to new subscriptions only",
                        started.to_rfc3339_opts(SecondsFormat::Secs, true)
                    ));
                }
            }
            reasons.push(Reason {
                source: "subscription",
                plan: Some(plan.name.clone()),
                rule,
                subscription: Some(entitlement.id.clone()),
                status,
                evidence,
                grant: None,
            });
            continue;
        }
        let (kind, detail) = if view.deleted {
            (
                "deleted_customer",
                "the customer was deleted at Stripe".to_owned(),
            )
        } else if !entitlement.holds.is_empty() {
            ("hold", format!("held by {}", entitlement.holds.join(", ")))
        } else if !entitlement.disputes.is_empty() {
            (
                "dispute",
                format!("payment disputed: {}", entitlement.disputes.join(", ")),
            )
        } else if entitlement.dunning.blocks_access() {
            let state = entitlement.dunning.state.as_str();
            let since = entitlement
                .dunning
                .since
                .map(|t| format!(" since {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)))
                .unwrap_or_default();
            ("dunning", format!("payment owed: {state}{since}"))
        } else {
            (
                "status",
                format!(
                    "subscription status {} grants nothing",
                    entitlement.status.as_str()
                ),
            )
        };
        let holds = if kind == "hold" {
            entitlement
                .holds
                .iter()
                .filter_map(|id| view.holds.get(id).cloned())
                .collect()
        } else {
            Vec::new()
        };
        blockers.push(Blocker {
            kind,
            subscription: Some(entitlement.id.clone()),
            detail: format!("{} ({})", detail, rule(&plan.name, feature, grant)),
            evidence,
            holds,
            grant: None,
        });
    }
    let default = catalog.default_plan();
    if resolved.plans == [default.name.clone()] {
        if let Some(grant) = default.features.get(feature) {
            reasons.push(Reason {
                source: "default_plan",
                plan: Some(default.name.clone()),
                rule: rule(&default.name, feature, *grant),
                subscription: None,
                status: None,
                evidence: Vec::new(),
                grant: None,
            });
        }
    }
    if view.stripe_features.contains(feature) {
        let evidence = evidence(timeline, None)
            .into_iter()
            .filter(|e| e.event_type == "StripeEntitlementsRecorded")
            .collect();
        if resolved.subscriptions.iter().any(|s| s.grants_access) {
            reasons.push(Reason {
                source: "stripe_entitlements",
                plan: None,
                rule: format!("Stripe's Entitlements API lists {feature} as active"),
                subscription: None,
                status: None,
                evidence,
                grant: None,
            });
        } else {
            blockers.push(Blocker {
                kind: "no_access_for_stripe_entitlements",
                subscription: None,
                detail: format!("Stripe lists {feature}, but no subscription grants access now"),
                evidence,
                holds: Vec::new(),
                grant: None,
            });
        }
    }
    explain_grants(
        view,
        &resolved,
        timeline,
        feature,
        at,
        &mut reasons,
        &mut blockers,
    );
    Explanation {
        customer: view.customer_id.to_string(),
        feature: feature.to_owned(),
        enabled: value.enabled,
        limit: value.limit,
        at,
        reasons,
        blockers,
        catalog: version.reference(),
    }
}

/// What a grant does to a feature, in a rule's words.
fn grant_rule(grant: &CustomerGrant) -> String {
    let value = match grant.terms.value {
        GrantValue::Enabled(enabled) => enabled.to_string(),
        GrantValue::Limit(limit) => limit.to_string(),
    };
    let verb = match grant.terms.mode {
        GrantMode::Set => "sets",
        GrantMode::Add => "adds",
    };
    let until = grant
        .terms
        .expires_at
        .map(|t| format!(" until {}", t.to_rfc3339_opts(SecondsFormat::Secs, true)))
        .unwrap_or_default();
    format!(
        "grant {} by {} {verb} {}: {value}{until} ({})",
        grant.id, grant.granted_by, grant.terms.feature, grant.terms.reason
    )
}

/// The grants of `feature`: those that count are reasons, the others blockers saying why not.
fn explain_grants(
    view: &BillingView,
    resolved: &Entitlements,
    timeline: &[TimelineEntry],
    feature: &str,
    at: DateTime<Utc>,
    reasons: &mut Vec<Reason>,
    blockers: &mut Vec<Blocker>,
) {
    for grant in view.grants.values().filter(|g| g.terms.feature == feature) {
        let evidence: Vec<Evidence> = timeline
            .iter()
            .filter(|entry| {
                matches!(&entry.event, CustomerEvent::GrantGiven { grant: g, .. } if g.id == grant.id)
            })
            .map(Evidence::of)
            .collect();
        if resolved.grants.iter().any(|counted| counted.id == grant.id) {
            reasons.push(Reason {
                source: "grant",
                plan: None,
                rule: grant_rule(grant),
                subscription: grant.terms.subscription.clone(),
                status: None,
                evidence,
                grant: Some(grant.clone()),
            });
            continue;
        }
        let subscription = grant
            .terms
            .subscription
            .as_ref()
            .and_then(|id| resolved.subscriptions.iter().find(|s| &s.id == id));
        let (kind, detail) = if view.deleted {
            (
                "deleted_customer",
                "the customer was deleted at Stripe".to_owned(),
            )
        } else if let Some(hold) = view
            .holds
            .values()
            .find(|h| h.subscription.is_none() && h.covers_grants)
        {
            (
                "hold_covers_grants",
                format!("hold {} takes grants away too", hold.id),
            )
        } else if !grant.in_window(at) {
            let window = match grant.terms.expires_at {
                Some(end) => format!(
                    "counts from {} until {}",
                    grant.starts().to_rfc3339_opts(SecondsFormat::Secs, true),
                    end.to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
                None => format!(
                    "counts from {}",
                    grant.starts().to_rfc3339_opts(SecondsFormat::Secs, true)
                ),
            };
            ("grant_not_in_force", window)
        } else if subscription.is_none_or(|s| s.status.is_terminal()) {
            (
                "grant_ended",
                "its subscription ended, and the grant with it".to_owned(),
            )
        } else {
            (
                "grant_paused",
                "it adds to a subscription that gives nothing now".to_owned(),
            )
        };
        blockers.push(Blocker {
            kind,
            subscription: grant.terms.subscription.clone(),
            detail: format!("{detail} ({})", grant_rule(grant)),
            evidence,
            holds: Vec::new(),
            grant: Some(grant.clone()),
        });
    }
}
