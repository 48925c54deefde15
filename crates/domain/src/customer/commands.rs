use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::billing::{
    DetailsProvenance, InvoiceFacts, Provenance, SubscriptionSnapshot, SummaryProvenance,
};

/// What the Stripe translator asks a `Customer` to record. `occurred_at` is the Stripe event's
/// `created`: when the fact became true at Stripe, not when Subledger learned it.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomerCommand {
    RecordDetails {
        metadata: BTreeMap<String, String>,
        email: Option<String>,
        occurred_at: DateTime<Utc>,
        provenance: DetailsProvenance,
    },
    RecordDeletion {
        occurred_at: DateTime<Utc>,
    },
    RecordSubscription {
        subscription: SubscriptionSnapshot,
        occurred_at: DateTime<Utc>,
        provenance: Provenance,
    },
    /// Stripe's Entitlements API: the customer's active features (lookup keys), as of the
    /// summary's event.
    RecordStripeEntitlements {
        features: BTreeSet<String>,
        occurred_at: DateTime<Utc>,
        provenance: SummaryProvenance,
    },
    /// An operator takes access away until the hold is lifted: from one subscription, or from
    /// the whole customer when `subscription` is `None`.
    PlaceHold {
        hold_id: String,
        subscription: Option<crate::ids::SubscriptionId>,
        reason: String,
        /// Takes the customer's `set` grants away too (customer-wide holds only).
        covers_grants: bool,
        placed_at: DateTime<Utc>,
    },
    /// An operator gives a feature beyond the plans; the same id and terms again is a retry.
    GiveGrant {
        grant: crate::grants::CustomerGrant,
    },
    RevokeGrant {
        grant_id: String,
        revoked_by: String,
        revoked_at: DateTime<Utc>,
    },
    LiftHold {
        hold_id: String,
        lifted_at: DateTime<Utc>,
    },
    RecordSchedule {
        schedule: crate::billing::ScheduleFacts,
        occurred_at: DateTime<Utc>,
        provenance: crate::billing::ScheduleProvenance,
    },
    RecordDispute {
        dispute: crate::billing::DisputeFacts,
        occurred_at: DateTime<Utc>,
    },
    RecordInvoicePaid {
        invoice: InvoiceFacts,
        occurred_at: DateTime<Utc>,
    },
    RecordInvoicePaymentFailed {
        invoice: InvoiceFacts,
        occurred_at: DateTime<Utc>,
    },
    /// Stripe voided the invoice or marked it uncollectible: it no longer counts as owed.
    RecordInvoiceWrittenOff {
        invoice: InvoiceFacts,
        outcome: crate::billing::WriteOff,
        occurred_at: DateTime<Utc>,
    },
}
