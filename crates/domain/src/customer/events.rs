use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::billing::{
    DetailsProvenance, InvoiceFacts, Provenance, SubscriptionSnapshot, SummaryProvenance,
};

/// What happened to a customer's billing account. Every event keeps `occurred_at`, the time
/// Stripe says it happened, so projections never need a clock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CustomerEvent {
    DetailsRecorded {
        metadata: BTreeMap<String, String>,
        /// The customer's email at Stripe (absent in details recorded before emails were read).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        email: Option<String>,
        occurred_at: DateTime<Utc>,
        provenance: DetailsProvenance,
    },
    CustomerDeleted {
        occurred_at: DateTime<Utc>,
    },
    SubscriptionStarted {
        subscription: SubscriptionSnapshot,
        occurred_at: DateTime<Utc>,
        provenance: Provenance,
    },
    SubscriptionChanged {
        subscription: SubscriptionSnapshot,
        occurred_at: DateTime<Utc>,
        provenance: Provenance,
    },
    SubscriptionEnded {
        subscription: SubscriptionSnapshot,
        occurred_at: DateTime<Utc>,
        provenance: Provenance,
    },
    StripeEntitlementsRecorded {
        features: BTreeSet<String>,
        occurred_at: DateTime<Utc>,
        provenance: SummaryProvenance,
    },
    HoldPlaced {
        hold_id: String,
        subscription: Option<crate::ids::SubscriptionId>,
        reason: String,
        /// A customer-wide hold that takes the customer's `set` grants away too.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        covers_grants: bool,
        occurred_at: DateTime<Utc>,
    },
    HoldLifted {
        hold_id: String,
        occurred_at: DateTime<Utc>,
    },
    /// An operator gave the customer a feature beyond the plans (see [`crate::grants`]).
    GrantGiven {
        grant: crate::grants::CustomerGrant,
        occurred_at: DateTime<Utc>,
    },
    GrantRevoked {
        grant_id: String,
        revoked_by: String,
        occurred_at: DateTime<Utc>,
    },
    ScheduleRecorded {
        schedule: crate::billing::ScheduleFacts,
        occurred_at: DateTime<Utc>,
        provenance: crate::billing::ScheduleProvenance,
    },
    /// A dispute opened or changed; `subscription` is the one the disputed invoice belongs to.
    DisputeRecorded {
        dispute: crate::billing::DisputeFacts,
        subscription: Option<crate::ids::SubscriptionId>,
        occurred_at: DateTime<Utc>,
    },
    InvoicePaid {
        invoice: InvoiceFacts,
        occurred_at: DateTime<Utc>,
    },
    InvoicePaymentFailed {
        invoice: InvoiceFacts,
        occurred_at: DateTime<Utc>,
    },
    /// Voided or marked uncollectible: no longer owed (Stripe returns the subscription to
    /// `active` when it was the one keeping it `past_due`).
    InvoiceWrittenOff {
        invoice: InvoiceFacts,
        outcome: crate::billing::WriteOff,
        occurred_at: DateTime<Utc>,
    },
}

impl CustomerEvent {
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::DetailsRecorded { occurred_at, .. }
            | Self::CustomerDeleted { occurred_at }
            | Self::SubscriptionStarted { occurred_at, .. }
            | Self::SubscriptionChanged { occurred_at, .. }
            | Self::SubscriptionEnded { occurred_at, .. }
            | Self::StripeEntitlementsRecorded { occurred_at, .. }
            | Self::HoldPlaced { occurred_at, .. }
            | Self::HoldLifted { occurred_at, .. }
            | Self::GrantGiven { occurred_at, .. }
            | Self::GrantRevoked { occurred_at, .. }
            | Self::ScheduleRecorded { occurred_at, .. }
            | Self::DisputeRecorded { occurred_at, .. }
            | Self::InvoicePaid { occurred_at, .. }
            | Self::InvoicePaymentFailed { occurred_at, .. }
            | Self::InvoiceWrittenOff { occurred_at, .. } => *occurred_at,
        }
    }
}

impl DomainEvent for CustomerEvent {
    fn event_type(&self) -> String {
        match self {
            Self::DetailsRecorded { .. } => "DetailsRecorded",
            Self::CustomerDeleted { .. } => "CustomerDeleted",
            Self::SubscriptionStarted { .. } => "SubscriptionStarted",
            Self::SubscriptionChanged { .. } => "SubscriptionChanged",
            Self::SubscriptionEnded { .. } => "SubscriptionEnded",
            Self::StripeEntitlementsRecorded { .. } => "StripeEntitlementsRecorded",
            Self::HoldPlaced { .. } => "HoldPlaced",
            Self::HoldLifted { .. } => "HoldLifted",
            Self::GrantGiven { .. } => "GrantGiven",
            Self::GrantRevoked { .. } => "GrantRevoked",
            Self::ScheduleRecorded { .. } => "ScheduleRecorded",
            Self::DisputeRecorded { .. } => "DisputeRecorded",
            Self::InvoicePaid { .. } => "InvoicePaid",
            Self::InvoicePaymentFailed { .. } => "InvoicePaymentFailed",
            Self::InvoiceWrittenOff { .. } => "InvoiceWrittenOff",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::schema::CUSTOMER_EVENTS.to_owned()
    }
}
