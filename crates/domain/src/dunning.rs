//! Dunning: where a subscription stands when its renewal payments fail, and what that does to
//! access. Pure: the moment of the assessment is an argument, never a clock read.
//!
//! - `ok`: nothing owed.
//! - `past_due`: a renewal payment failed and Stripe is retrying; access is kept until the
//!   grace period (from the first failed payment) ends.
//! - `suspended`: the grace period is over and it is still unpaid, or Stripe marked the
//!   subscription `unpaid`: access falls back to the default plan (unless the policy lets
//!   `unpaid` keep the plan).
//! - `ended`: the subscription ended while payment was owed (canceled for non-payment).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::billing::{SubscriptionSnapshot, SubscriptionStatus};
use crate::catalog::AccessPolicy;
use crate::ids::InvoiceId;

/// The failed-payment facts of a subscription's oldest unpaid renewal invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnpaidInvoice {
    pub invoice: InvoiceId,
    /// When the first payment attempt failed (Stripe time).
    pub since: DateTime<Utc>,
    pub attempt: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum DunningState {
    Ok,
    Ended,
    PastDue,
    Suspended,
}

/// A subscription's (or, the most serious of them, a customer's) dunning view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dunning {
    pub state: DunningState,
    /// Failed attempts so far.
    pub attempt: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub grace_ends_at: Option<DateTime<Utc>>,
    /// Since when payment has been owed.
    pub since: Option<DateTime<Utc>>,
}

impl DunningState {
    /// The name the API answers with.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Ended => "ended",
            Self::PastDue => "past_due",
            Self::Suspended => "suspended",
        }
    }
}

impl Dunning {
    pub const OK: Self = Self {
        state: DunningState::Ok,
        attempt: 0,
        next_attempt_at: None,
        grace_ends_at: None,
        since: None,
    };

    /// Where `subscription` stands at `at`, given its unpaid renewal invoice, if any.
    pub fn assess(
        subscription: &SubscriptionSnapshot,
        unpaid: Option<&UnpaidInvoice>,
        policy: &AccessPolicy,
        at: DateTime<Utc>,
    ) -> Self {
        // Stripe's times arrive in signed events and may be anywhere chrono can hold: a grace
        // period that would end past the last representable moment never ends.
        let grace_ends_at = unpaid.and_then(|u| u.since.checked_add_signed(policy.grace_period));
        let from_invoice = |state: DunningState| Self {
            state,
            attempt: unpaid.map_or(0, |u| u.attempt),
            next_attempt_at: unpaid.and_then(|u| u.next_attempt_at),
            grace_ends_at,
            since: unpaid.map(|u| u.since),
        };
        match subscription.status {
            SubscriptionStatus::Unpaid => from_invoice(DunningState::Suspended),
            // Paused after failed payments (flexible billing mode): owed, and no access.
            SubscriptionStatus::Paused if unpaid.is_some() => from_invoice(DunningState::Suspended),
            SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
                if unpaid.is_some() =>
            {
                Self {
                    next_attempt_at: None,
                    ..from_invoice(DunningState::Ended)
                }
            }
            // A failed renewal may be known before the status change to past_due arrives.
            SubscriptionStatus::PastDue
            | SubscriptionStatus::Active
            | SubscriptionStatus::Trialing => {
                match unpaid {
                    Some(_) if grace_ends_at.is_some_and(|ends| at >= ends) => {
                        from_invoice(DunningState::Suspended)
                    }
                    Some(_) => from_invoice(DunningState::PastDue),
                    // past_due before the failed invoice arrived: owed, grace unknown yet.
                    None if subscription.status == SubscriptionStatus::PastDue => {
                        from_invoice(DunningState::PastDue)
                    }
                    None => Self::OK,
                }
            }
            _ => Self::OK,
        }
    }

    /// Whether this state takes the subscription's plan away.
    pub fn blocks_access(&self) -> bool {
        matches!(self.state, DunningState::Suspended | DunningState::Ended)
    }

    /// The most serious of several: suspended, then past due, then ended, then ok.
    pub fn most_serious(all: impl IntoIterator<Item = Self>) -> Self {
        all.into_iter().max_by_key(|d| d.state).unwrap_or(Self::OK)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::ids::{CustomerId, SubscriptionId};

    fn at(day: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_767_225_600, 0).unwrap() + Duration::days(day)
    }

    fn subscription(status: SubscriptionStatus) -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            id: SubscriptionId::new("sub_1"),
            customer_id: CustomerId::new("cus_1"),
            status,
            items: vec![],
            cancel_at_period_end: false,
            cancel_at: None,
            current_period_end: None,
            trial_end: None,
            pending_update_invoice: None,
            started_at: None,
        }
    }

    fn unpaid(attempt: u32) -> UnpaidInvoice {
        UnpaidInvoice {
            invoice: InvoiceId::new("in_1"),
            since: at(0),
            attempt,
            next_attempt_at: Some(at(3)),
        }
    }

    #[test]
    fn it_keeps_entitlements_during_the_grace_period() {
        let policy = AccessPolicy::default();
        let dunning = Dunning::assess(
            &subscription(SubscriptionStatus::PastDue),
            Some(&unpaid(1)),
            &policy,
            at(6),
        );
        assert_eq!(dunning.state, DunningState::PastDue);
        assert_eq!(dunning.grace_ends_at, Some(at(7)));
        assert_eq!(dunning.next_attempt_at, Some(at(3)));
        assert!(!dunning.blocks_access());
    }

    #[test]
    fn a_failure_at_the_end_of_representable_time_keeps_a_grace_period_that_never_ends() {
        // A signed event may carry any `created` chrono can hold; adding the grace period to
        // the last one overflowed and panicked.
        let late = UnpaidInvoice {
            since: DateTime::<Utc>::MAX_UTC,
            ..unpaid(1)
        };
        let dunning = Dunning::assess(
            &subscription(SubscriptionStatus::PastDue),
            Some(&late),
            &AccessPolicy::default(),
            DateTime::<Utc>::MAX_UTC,
        );
        assert_eq!(dunning.state, DunningState::PastDue);
        assert_eq!(dunning.grace_ends_at, None);
        assert_eq!(dunning.since, Some(DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn it_suspends_when_the_grace_period_is_over() {
        let policy = AccessPolicy::default();
        let dunning = Dunning::assess(
            &subscription(SubscriptionStatus::PastDue),
            Some(&unpaid(2)),
            &policy,
            at(7),
        );
        assert_eq!(dunning.state, DunningState::Suspended);
        assert!(dunning.blocks_access());
        let unpaid_status = Dunning::assess(
            &subscription(SubscriptionStatus::Unpaid),
            None,
            &policy,
            at(1),
        );
        assert_eq!(unpaid_status.state, DunningState::Suspended);
    }

    #[test]
    fn it_reports_a_subscription_ended_for_non_payment() {
        let policy = AccessPolicy::default();
        let dunning = Dunning::assess(
            &subscription(SubscriptionStatus::Canceled),
            Some(&unpaid(5)),
            &policy,
            at(21),
        );
        assert_eq!(dunning.state, DunningState::Ended);
        assert_eq!(dunning.next_attempt_at, None);
        let canceled_by_choice = Dunning::assess(
            &subscription(SubscriptionStatus::Canceled),
            None,
            &policy,
            at(21),
        );
        assert_eq!(canceled_by_choice, Dunning::OK);
    }

    #[test]
    fn it_counts_a_failure_known_before_the_status_change() {
        let policy = AccessPolicy::default();
        let dunning = Dunning::assess(
            &subscription(SubscriptionStatus::Active),
            Some(&unpaid(1)),
            &policy,
            at(1),
        );
        assert_eq!(dunning.state, DunningState::PastDue);
    }

    #[test]
    fn the_most_serious_state_wins() {
        let suspended = Dunning {
            state: DunningState::Suspended,
            ..Dunning::OK
        };
        let ended = Dunning {
            state: DunningState::Ended,
            ..Dunning::OK
        };
        assert_eq!(
            Dunning::most_serious([Dunning::OK, suspended.clone(), ended]),
            suspended
        );
        assert_eq!(Dunning::most_serious([]), Dunning::OK);
    }
}
