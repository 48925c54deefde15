//! The simulated Stripe objects: plain data, rendered to Stripe's JSON by [`crate::render`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// How a test card behaves, after Stripe's test cards (see STRIPE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    /// 4242 4242 4242 4242: every charge succeeds.
    Visa,
    /// 4000 0000 0000 0002: declined, `generic_decline`.
    ChargeDeclined,
    /// 4000 0000 0000 9995: declined, `insufficient_funds`.
    InsufficientFunds,
    /// 4000 0000 0000 0069: declined, `expired_card`.
    ExpiredCard,
    /// 4000 0025 0000 3155: every payment needs 3-D Secure authentication.
    AuthenticationRequired,
    /// 4000 0000 0000 0341: attaches, then every charge fails.
    ChargeCustomerFail,
}

impl Card {
    /// Stripe's test PaymentMethod ids.
    pub fn from_test_id(id: &str) -> Option<Self> {
        Some(match id {
            "pm_card_visa" => Self::Visa,
            "pm_card_chargeDeclined" => Self::ChargeDeclined,
            "pm_card_chargeDeclinedInsufficientFunds" => Self::InsufficientFunds,
            "pm_card_chargeDeclinedExpiredCard" => Self::ExpiredCard,
            "pm_card_authenticationRequired" => Self::AuthenticationRequired,
            "pm_card_chargeCustomerFail" => Self::ChargeCustomerFail,
            _ => return None,
        })
    }

    pub const TEST_IDS: [&'static str; 6] = [
        "pm_card_visa",
        "pm_card_chargeDeclined",
        "pm_card_chargeDeclinedInsufficientFunds",
        "pm_card_chargeDeclinedExpiredCard",
        "pm_card_authenticationRequired",
        "pm_card_chargeCustomerFail",
    ];

    pub fn last4(self) -> &'static str {
        match self {
            Self::Visa => "4242",
            Self::ChargeDeclined => "0002",
            Self::InsufficientFunds => "9995",
            Self::ExpiredCard => "0069",
            Self::AuthenticationRequired => "3155",
            Self::ChargeCustomerFail => "0341",
        }
    }

    /// What a charge on this card does.
    pub fn charge(self) -> ChargeResult {
        match self {
            Self::Visa => ChargeResult::Succeeded,
            Self::ChargeDeclined | Self::ChargeCustomerFail => {
                ChargeResult::Declined("generic_decline")
            }
            Self::InsufficientFunds => ChargeResult::Declined("insufficient_funds"),
            Self::ExpiredCard => ChargeResult::Declined("expired_card"),
            Self::AuthenticationRequired => ChargeResult::RequiresAction,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeResult {
    Succeeded,
    /// `card_declined` with this `decline_code`.
    Declined(&'static str),
    RequiresAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    Month,
    Year,
}

impl Interval {
    pub fn months(self) -> u32 {
        match self {
            Self::Month => 1,
            Self::Year => 12,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    pub id: String,
    pub product: String,
    pub unit_amount: i64,
    pub currency: String,
    pub interval: Interval,
    pub lookup_key: Option<String>,
    pub created: DateTime<Utc>,
    /// Entitlements API features (lookup keys) attached to the price's product.
    pub features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: String,
    pub metadata: BTreeMap<String, String>,
    pub default_payment_method: Option<String>,
    pub created: DateTime<Utc>,
    pub deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethod {
    pub id: String,
    pub customer: String,
    pub card: Card,
    pub created: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    pub fn is_ended(self) -> bool {
        matches!(self, Self::Canceled | Self::IncompleteExpired)
    }
}

/// `pause_collection.behavior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseBehavior {
    KeepAsDraft,
    MarkUncollectible,
    Void,
}

impl PauseBehavior {
    pub fn parse(behavior: &str) -> Option<Self> {
        Some(match behavior {
            "keep_as_draft" => Self::KeepAsDraft,
            "mark_uncollectible" => Self::MarkUncollectible,
            "void" => Self::Void,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepAsDraft => "keep_as_draft",
            Self::MarkUncollectible => "mark_uncollectible",
            Self::Void => "void",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionItem {
    pub id: String,
    pub price: String,
    pub quantity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: String,
    pub customer: String,
    pub status: SubscriptionStatus,
    pub items: Vec<SubscriptionItem>,
    pub created: DateTime<Utc>,
    /// Periods are counted from here, so month ends never drift.
    pub billing_cycle_anchor: DateTime<Utc>,
    pub current_period_start: DateTime<Utc>,
    pub current_period_end: DateTime<Utc>,
    pub trial_start: Option<DateTime<Utc>>,
    pub trial_end: Option<DateTime<Utc>>,
    pub trial_will_end_sent: bool,
    pub cancel_at_period_end: bool,
    pub cancel_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub pause_collection: Option<PauseBehavior>,
    pub latest_invoice: Option<String>,
    /// A price change that takes effect at the end of the current period (a schedule).
    pub scheduled_price: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceStatus {
    Draft,
    Open,
    Paid,
    Void,
    Uncollectible,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Open => "open",
            Self::Paid => "paid",
            Self::Void => "void",
            Self::Uncollectible => "uncollectible",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub id: String,
    pub customer: String,
    pub subscription: Option<String>,
    pub status: InvoiceStatus,
    pub amount_due: i64,
    pub amount_paid: i64,
    pub currency: String,
    pub attempt_count: u32,
    pub next_payment_attempt: Option<DateTime<Utc>>,
    /// `subscription_create`, `subscription_cycle`, `subscription_update`.
    pub billing_reason: &'static str,
    pub payment_intent: Option<String>,
    pub created: DateTime<Utc>,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// When the first attempt failed, for the retry schedule.
    pub first_failure: Option<DateTime<Utc>>,
}

/// The PaymentIntent statuses the simulator reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentIntentStatus {
    RequiresPaymentMethod,
    RequiresAction,
    Succeeded,
    Canceled,
}

impl PaymentIntentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RequiresPaymentMethod => "requires_payment_method",
            Self::RequiresAction => "requires_action",
            Self::Succeeded => "succeeded",
            Self::Canceled => "canceled",
        }
    }

    /// Succeeded or canceled: nothing more can happen to it.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Canceled)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentIntent {
    pub id: String,
    pub customer: String,
    pub amount: i64,
    pub currency: String,
    pub status: PaymentIntentStatus,
    pub invoice: Option<String>,
    pub payment_method: Option<String>,
    /// `(code, decline_code)` of the last failure.
    pub last_error: Option<(&'static str, &'static str)>,
    pub latest_charge: Option<String>,
    pub created: DateTime<Utc>,
    /// `metadata.order_id`: a one-off order this PaymentIntent pays for.
    pub order_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub id: String,
    pub customer: String,
    pub payment_intent: String,
    pub amount: i64,
    pub currency: String,
    pub succeeded: bool,
    pub decline_code: Option<&'static str>,
    pub disputed: bool,
    pub refunded: bool,
    pub created: DateTime<Utc>,
}

/// A dispute's status (Stripe's docs, "Dispute object"; the `warning_*` ones belong to
/// inquiries, which move no funds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputeStatus {
    NeedsResponse,
    Won,
    Lost,
}

impl DisputeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeedsResponse => "needs_response",
            Self::Won => "won",
            Self::Lost => "lost",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    pub id: String,
    pub charge: String,
    pub payment_intent: String,
    pub amount: i64,
    pub currency: String,
    pub status: DisputeStatus,
    pub created: DateTime<Utc>,
}

/// What happens when Smart Retries give up on a renewal invoice (an account setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenRetriesRunOut {
    Cancel,
    MarkUnpaid,
    LeavePastDue,
}

/// When failed renewals are retried, after the first failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Days after the first failed attempt at which each retry happens.
    pub retry_after_days: Vec<i64>,
    pub when_exhausted: WhenRetriesRunOut,
}

impl Default for RetryPolicy {
    /// Stripe's default Smart Retries setting: 4 retries within 3 weeks, then cancel.
    fn default() -> Self {
        Self {
            retry_after_days: vec![3, 7, 14, 21],
            when_exhausted: WhenRetriesRunOut::Cancel,
        }
    }
}
