//! The Stripe facts that the aggregates record, already translated out of Stripe's JSON.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, InvoiceId, PriceId, SubscriptionId};
use crate::money::Money;

/// A subscription status, exactly the set Stripe documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Unpaid,
    Canceled,
    Paused,
}

impl SubscriptionStatus {
    /// Parses Stripe's spelling; `None` for a status this build does not know.
    pub fn parse(status: &str) -> Option<Self> {
        Some(match status {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "unpaid" => Self::Unpaid,
            "canceled" => Self::Canceled,
            "paused" => Self::Paused,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
            Self::Canceled => "canceled",
            Self::Paused => "paused",
        }
    }

    /// Whether a subscription in this status grants its plan's features. `past_due` keeps access
    /// while Stripe retries the payment.
    pub fn grants_access(self) -> bool {
        matches!(self, Self::Trialing | Self::Active | Self::PastDue)
    }

    /// Stripe never moves a subscription out of these statuses.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Canceled | Self::IncompleteExpired)
    }

    /// Whether Stripe moves a subscription from `self` to `next` in one step. Sources:
    /// Stripe's subscription lifecycle docs; `active → trialing` when a trial is added to a
    /// running subscription (`trial_end`); `paused → past_due` when a resume's payment fails
    /// (pause payment collection / resume docs); `active`/`past_due → paused` by the pause
    /// endpoint or, in flexible billing mode, after failed payments.
    pub fn can_become(self, next: Self) -> bool {
        use SubscriptionStatus::*;
        match self {
            Incomplete => matches!(next, Active | IncompleteExpired | Canceled),
            Trialing => matches!(next, Active | PastDue | Paused | Canceled | Unpaid),
            Active => matches!(next, Trialing | PastDue | Unpaid | Canceled | Paused),
            PastDue => matches!(next, Active | Unpaid | Canceled | Paused),
            Unpaid => matches!(next, Active | PastDue | Canceled),
            Paused => matches!(next, Active | PastDue | Canceled),
            Canceled | IncompleteExpired => false,
        }
    }
}

/// Where a snapshot sits in the object's history, as far as the Stripe event tells. Stripe's
/// `created` has one-second resolution, so this is what orders facts from the same second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The snapshot is the object's creation (a `*.created` event): its first state.
    pub creation: bool,
    /// `previous_attributes.status`: the status this change moved the object from.
    pub previous_status: Option<SubscriptionStatus>,
    /// The other fields `previous_attributes` lists, with the values the change moved away from.
    #[serde(default)]
    pub previous: PreviousFields,
    /// The snapshot was fetched from Stripe's API to settle a same-second tie the events could
    /// not: Stripe's own answer for that second, so it follows every event from it.
    #[serde(default)]
    pub fetched: bool,
}

/// Where a customer's details sit in their history, as far as the event tells: what orders
/// two `customer.*` snapshots from the same second.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetailsProvenance {
    /// From `customer.created`: the customer's first state.
    pub creation: bool,
    /// `previous_attributes.metadata`: the keys the change touched and their earlier values
    /// (`None`: the key was not set).
    pub previous_metadata: Option<BTreeMap<String, Option<String>>>,
    /// Fetched from Stripe's API to settle a same-second tie: follows every event from it.
    pub fetched: bool,
    /// The customer object's `created`: when Stripe created the customer. The same in every
    /// snapshot, so it is known whichever snapshot arrives (absent in details recorded before
    /// it was read).
    #[serde(default)]
    pub stripe_created: Option<DateTime<Utc>>,
    /// `previous_attributes.email`, when the change touched the email (`Was(None)`: it had
    /// none). Absent in details recorded before emails were read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_email: Option<Was<Option<String>>>,
}

/// What Subledger keeps of a Stripe customer object's own fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerDetails {
    pub metadata: BTreeMap<String, String>,
    pub email: Option<String>,
}

impl DetailsProvenance {
    /// Whether this change moved the details away from `details`: `None` when the event lists
    /// no earlier values of the fields Subledger keeps.
    pub fn moved_away_from(&self, details: &CustomerDetails) -> Option<bool> {
        let metadata = self
            .previous_metadata
            .as_ref()
            .filter(|p| !p.is_empty())
            .map(|previous| {
                previous
                    .iter()
                    .all(|(key, was)| details.metadata.get(key) == was.as_ref())
            });
        let email = self.previous_email.as_ref().map(|w| w.was == details.email);
        match (metadata, email) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(true) && b.unwrap_or(true)),
        }
    }
}

/// Where a Stripe Entitlements summary sits in its history: each summary is the customer's
/// whole list of active features, and `previous_attributes` names the list it replaced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryProvenance {
    /// The lookup keys of the list this summary replaced, when the event says.
    pub previous_features: Option<std::collections::BTreeSet<String>>,
    /// Fetched from Stripe's API to settle a same-second tie: follows every event from it.
    pub fetched: bool,
}

impl SummaryProvenance {
    /// Whether this summary replaced `features`: `None` when the event does not say.
    pub fn moved_away_from(&self, features: &std::collections::BTreeSet<String>) -> Option<bool> {
        self.previous_features
            .as_ref()
            .map(|previous| previous == features)
    }
}

/// Fields of a subscription's earlier state, as `previous_attributes` reports them. `None`: the
/// change did not touch that field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousFields {
    pub cancel_at_period_end: Option<bool>,
    /// `Was` keeps "listed, and it was null" apart from "not listed" once stored as JSON.
    pub cancel_at: Option<Was<Option<DateTime<Utc>>>>,
    pub price_ids: Option<Vec<PriceId>>,
    /// The items' quantities, in item order, when a quantity is what changed.
    #[serde(default)]
    pub quantities: Option<Vec<u64>>,
}

/// An earlier value of a field that may itself be null.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Was<T> {
    pub was: T,
}

impl Provenance {
    /// A snapshot fetched from Stripe's API (see [`Provenance::fetched`]).
    pub fn fetched() -> Self {
        Self {
            fetched: true,
            ..Self::default()
        }
    }

    /// Whether this change moved the subscription away from `state`: `None` when the event
    /// says nothing about what it changed.
    pub fn moved_away_from(&self, state: &SubscriptionSnapshot) -> Option<bool> {
        let checks = [
            self.previous_status.map(|s| s == state.status),
            self.previous
                .cancel_at_period_end
                .map(|c| c == state.cancel_at_period_end),
            self.previous
                .cancel_at
                .as_ref()
                .map(|c| c.was == state.cancel_at),
            self.previous
                .price_ids
                .as_ref()
                .map(|ids| ids.iter().eq(state.items.iter().map(|item| &item.price_id))),
            self.previous.quantities.as_ref().map(|quantities| {
                quantities
                    .iter()
                    .eq(state.items.iter().map(|i| &i.quantity))
            }),
        ];
        let listed: Vec<bool> = checks.into_iter().flatten().collect();
        (!listed.is_empty()).then(|| listed.into_iter().all(|matches| matches))
    }
}

/// One line of a subscription: which price, and how many.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionItem {
    pub price_id: PriceId,
    pub lookup_key: Option<String>,
    pub quantity: u64,
}

/// A vector with room for what it holds and no more. serde's own grows by doubling, from four,
/// when the format does not say how many elements come (JSON does not): a subscription's one
/// item would keep room for four in every view a server holds in memory.
fn exact_vec<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    let mut elements = Vec::<T>::deserialize(deserializer)?;
    elements.shrink_to_fit();
    Ok(elements)
}

/// A subscription as Stripe described it at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionSnapshot {
    pub id: SubscriptionId,
    pub customer_id: CustomerId,
    pub status: SubscriptionStatus,
    #[serde(deserialize_with = "exact_vec")]
    pub items: Vec<SubscriptionItem>,
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<DateTime<Utc>>,
    pub current_period_end: Option<DateTime<Utc>>,
    pub trial_end: Option<DateTime<Utc>>,
    /// The invoice of a change made with `payment_behavior: pending_if_incomplete` that is
    /// waiting to be paid (the subscription's `latest_invoice` while `pending_update` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_update_invoice: Option<InvoiceId>,
    /// Stripe's `start_date`: when the subscription began (a backdated one, before it was
    /// created), the same in every snapshot. A plan whose changes apply to new subscriptions
    /// only gives the subscription the features of the catalog version in force then. Absent
    /// in facts recorded before Subledger kept it: such a subscription follows every change
    /// until Stripe describes it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
}

/// How Stripe stopped asking for an invoice's payment without it being paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum WriteOff {
    /// `invoice.voided`: the invoice no longer exists as a claim.
    Void,
    /// `invoice.marked_uncollectible`: given up on (it may still be paid later).
    Uncollectible,
}

/// A subscription schedule's next phase: the items the subscription will have from `starts_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextPhase {
    pub starts_at: DateTime<Utc>,
    #[serde(deserialize_with = "exact_vec")]
    pub items: Vec<SubscriptionItem>,
}

/// What a `subscription_schedule.*` event tells: the change a schedule will make, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleFacts {
    pub id: String,
    pub subscription_id: SubscriptionId,
    /// `None` once the schedule is released, canceled or completed, or has no later phase.
    pub next_phase: Option<NextPhase>,
    #[serde(default)]
    pub stage: ScheduleStage,
}

/// Where a schedule is in its life (Stripe's `status`): what orders two snapshots of one
/// schedule from the same second when nothing else does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleStage {
    NotStarted,
    #[default]
    Active,
    /// Released, canceled or completed: it changes nothing any more.
    Ended,
}

/// Where a schedule snapshot sits in its history, as far as the event tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleProvenance {
    /// From `subscription_schedule.created`: the schedule's first state.
    pub creation: bool,
    /// Fetched from Stripe's API to settle a same-second tie: follows every event from it.
    pub fetched: bool,
}

/// What a `charge.dispute.*` event tells, with the invoice the disputed payment paid (when
/// known), which scopes the dispute to that invoice's subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeFacts {
    pub id: String,
    pub payment_intent: crate::ids::PaymentIntentId,
    pub invoice: Option<InvoiceId>,
    /// Stripe's status: `needs_response`, `under_review`, `won`, `lost`, `warning_*`.
    pub status: String,
    pub reason: Option<String>,
}

impl DisputeFacts {
    /// Stripe decided; the dispute will not change again.
    pub fn is_closed(&self) -> bool {
        matches!(self.status.as_str(), "won" | "lost" | "warning_closed")
    }

    /// Where the status sits in Stripe's dispute lifecycle: an inquiry (`warning_*`) comes
    /// before a chargeback it may turn into, a response before its review, a review before its
    /// outcome. `None` for a status Stripe may add later.
    fn stage(&self) -> Option<u8> {
        Some(match self.status.as_str() {
            "warning_needs_response" => 0,
            "warning_under_review" => 1,
            "warning_closed" => 2,
            "needs_response" => 3,
            "under_review" => 4,
            "won" | "lost" => 5,
            _ => return None,
        })
    }

    /// Whether this state comes before `other` in the lifecycle: what orders two updates of
    /// one dispute from the same second.
    pub fn precedes(&self, other: &Self) -> bool {
        matches!((self.stage(), other.stage()), (Some(a), Some(b)) if a < b)
    }
}

/// What an invoice event tells about the invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceFacts {
    pub id: InvoiceId,
    pub subscription_id: Option<SubscriptionId>,
    pub amount_due: Money,
    pub amount_paid: Money,
    pub attempt_count: u32,
    pub next_payment_attempt: Option<DateTime<Utc>>,
}
