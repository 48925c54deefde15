//! The simulated Stripe objects: plain data, rendered to Stripe's JSON by [`crate::render`].

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

/// How a test card behaves, after Stripe's "Testing" docs (test card numbers and their
/// `pm_card_*` PaymentMethods); see `../shared/STRIPE.md`, test cards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Card {
    /// 4242 4242 4242 4242: every charge succeeds.
    Visa,
    /// 4000 0000 0000 0002: declined, `generic_decline`; refused when attached.
    ChargeDeclined,
    /// 4000 0000 0000 9995: declined, `insufficient_funds`; refused when attached.
    InsufficientFunds,
    /// 4000 0000 0000 0069: declined with error code `expired_card` and no `decline_code`;
    /// refused when attached.
    ExpiredCard,
    /// 4000 0025 0000 3155 (`pm_card_authenticationRequiredOnSetup`): on-session payments need
    /// 3-D Secure; once set up, off-session payments (renewals, retries) succeed.
    AuthenticateUnlessSetUp,
    /// 4000 0027 6000 3184 (`pm_card_authenticationRequired`): every payment needs
    /// authentication, renewals included.
    AlwaysAuthenticate,
    /// 4000 0000 0000 3220 (`pm_card_threeDSecure2Required`): 3-D Secure 2 on every payment.
    ThreeDSecure2Required,
    /// 4000 0000 0000 0341: attaches, then every charge fails.
    ChargeCustomerFail,
    /// 4000 0000 0000 0259 (`pm_card_createDispute`): the charge succeeds, then is disputed as
    /// fraudulent within seconds.
    FraudulentDispute,
    /// 4000 0000 0000 1976 (`pm_card_createDisputeInquiry`): the charge succeeds, then an
    /// inquiry opens, which moves no funds.
    DisputeInquiry,
}

/// Why a payment failed: the card error's `code`, and its `decline_code` when it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decline {
    pub code: &'static str,
    pub decline_code: Option<&'static str>,
}

impl Decline {
    const fn card_declined(decline_code: &'static str) -> Self {
        Self {
            code: "card_declined",
            decline_code: Some(decline_code),
        }
    }

    /// Issuers' refusals that no retry will change (Stripe's docs, "Smart Retries": hard
    /// declines such as a lost, stolen or expired card are not retried).
    pub fn is_hard(self) -> bool {
        self.code == "expired_card"
            || matches!(
                self.decline_code,
                Some("lost_card" | "stolen_card" | "expired_card" | "pickup_card")
            )
    }
}

impl Card {
    /// Stripe's test PaymentMethod ids.
    pub fn from_test_id(id: &str) -> Option<Self> {
        Self::ALL
            .iter()
            .find(|(test_id, _)| *test_id == id)
            .map(|(_, card)| *card)
    }

    const ALL: [(&'static str, Self); 10] = [
        ("pm_card_visa", Self::Visa),
        ("pm_card_chargeDeclined", Self::ChargeDeclined),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            Self::InsufficientFunds,
        ),
        ("pm_card_chargeDeclinedExpiredCard", Self::ExpiredCard),
        (
            "pm_card_authenticationRequiredOnSetup",
            Self::AuthenticateUnlessSetUp,
        ),
        ("pm_card_authenticationRequired", Self::AlwaysAuthenticate),
        ("pm_card_threeDSecure2Required", Self::ThreeDSecure2Required),
        ("pm_card_chargeCustomerFail", Self::ChargeCustomerFail),
        ("pm_card_createDispute", Self::FraudulentDispute),
        ("pm_card_createDisputeInquiry", Self::DisputeInquiry),
    ];

    pub fn test_ids() -> impl Iterator<Item = &'static str> {
        Self::ALL.iter().map(|(id, _)| *id)
    }

    pub fn last4(self) -> &'static str {
        match self {
            Self::Visa => "4242",
            Self::ChargeDeclined => "0002",
            Self::InsufficientFunds => "9995",
            Self::ExpiredCard => "0069",
            Self::AuthenticateUnlessSetUp => "3155",
            Self::AlwaysAuthenticate => "3184",
            Self::ThreeDSecure2Required => "3220",
            Self::ChargeCustomerFail => "0341",
            Self::FraudulentDispute => "0259",
            Self::DisputeInquiry => "1976",
        }
    }

    /// The decline with which attaching this card to a customer is refused (HTTP 402): Stripe
    /// checks the card when it is attached, so the declining test cards never attach.
    pub fn refused_when_attached(self) -> Option<Decline> {
        match self {
            Self::ChargeDeclined | Self::InsufficientFunds | Self::ExpiredCard => {
                match self.charge(Session::On) {
                    ChargeResult::Declined(decline) => Some(decline),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// What a charge on this card does, with the customer present or not.
    pub fn charge(self, session: Session) -> ChargeResult {
        match self {
            Self::Visa | Self::FraudulentDispute | Self::DisputeInquiry => ChargeResult::Succeeded,
            Self::ChargeDeclined | Self::ChargeCustomerFail => {
                ChargeResult::Declined(Decline::card_declined("generic_decline"))
            }
            Self::InsufficientFunds => {
                ChargeResult::Declined(Decline::card_declined("insufficient_funds"))
            }
            Self::ExpiredCard => ChargeResult::Declined(Decline {
                code: "expired_card",
                decline_code: None,
            }),
            Self::AuthenticateUnlessSetUp => match session {
                Session::On => ChargeResult::RequiresAction,
                Session::Off => ChargeResult::Succeeded,
            },
            Self::AlwaysAuthenticate | Self::ThreeDSecure2Required => ChargeResult::RequiresAction,
        }
    }

    /// The dispute a successful charge on this card opens at once.
    pub fn dispute_after_charge(self) -> Option<DisputeKind> {
        match self {
            Self::FraudulentDispute => Some(DisputeKind::Fraudulent),
            Self::DisputeInquiry => Some(DisputeKind::Inquiry),
            _ => None,
        }
    }
}

/// Whether the customer is there to authenticate: signup and one-off payments are on-session;
/// renewals and retries are off-session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeResult {
    Succeeded,
    Declined(Decline),
    RequiresAction,
}

/// A chargeback (funds withdrawn) or an inquiry (no funds move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisputeKind {
    Fraudulent,
    Inquiry,
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
    /// The connected account the customer belongs to (`None`: the platform's own).
    pub account: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub default_payment_method: Option<String>,
    pub created: DateTime<Utc>,
    pub deleted: bool,
    /// Set by an automatic payment failure, cleared by a payment or a write-off (API
    /// reference, customer object, `delinquent`).
    pub delinquent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentMethod {
    pub id: String,
    /// The customer it is attached to, or is being confirmed for.
    pub customer: String,
    pub card: Card,
    pub created: DateTime<Utc>,
    pub attached: bool,
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

/// `trial_settings.end_behavior.missing_payment_method`: what a trial that ends without a
/// payment method does. Stripe's default is `create_invoice` (API reference, subscription
/// object; docs "Use trial periods on subscriptions"): the invoice cannot be paid, the
/// subscription goes `past_due`, and nothing is retried until a payment method exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingPaymentMethod {
    #[default]
    CreateInvoice,
    Pause,
    Cancel,
}

impl MissingPaymentMethod {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "create_invoice" => Self::CreateInvoice,
            "pause" => Self::Pause,
            "cancel" => Self::Cancel,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CreateInvoice => "create_invoice",
            Self::Pause => "pause",
            Self::Cancel => "cancel",
        }
    }
}

/// `payment_behavior` of `POST /v1/subscriptions` (API reference, create a subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PaymentBehavior {
    /// The default: the first invoice is charged at once; a failure leaves it `incomplete`.
    #[default]
    AllowIncomplete,
    /// Created `incomplete`; nothing is attempted until the client confirms the payment.
    DefaultIncomplete,
    /// A first payment that does not succeed answers 402 and creates nothing.
    ErrorIfIncomplete,
}

impl PaymentBehavior {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "allow_incomplete" => Self::AllowIncomplete,
            "default_incomplete" => Self::DefaultIncomplete,
            "error_if_incomplete" => Self::ErrorIfIncomplete,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AllowIncomplete => "allow_incomplete",
            Self::DefaultIncomplete => "default_incomplete",
            Self::ErrorIfIncomplete => "error_if_incomplete",
        }
    }
}

/// `cancellation_details.reason` (API reference, subscription object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancellationReason {
    CancellationRequested,
    PaymentFailed,
}

impl CancellationReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CancellationRequested => "cancellation_requested",
            Self::PaymentFailed => "payment_failed",
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
    pub missing_payment_method: MissingPaymentMethod,
    pub cancellation_reason: Option<CancellationReason>,
    /// The period end whose `invoice.upcoming` was sent.
    pub upcoming_sent_for: Option<DateTime<Utc>>,
    /// A change made with `payment_behavior: pending_if_incomplete` whose invoice is unpaid.
    pub pending_update: Option<PendingUpdate>,
}

/// A price change waiting for its invoice to be paid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpdate {
    pub price: String,
    pub invoice: String,
    pub expires_at: DateTime<Utc>,
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
    /// Whether Smart Retries retry it after a failure (not the invoice of a resume).
    pub retried: bool,
    /// What it bills: one line per subscription item, or one proration line.
    pub lines: Vec<InvoiceLine>,
    /// When a renewal's draft is finalized and charged: about an hour after it was created
    /// (`../shared/STRIPE.md`, renewal).
    pub finalize_at: Option<DateTime<Utc>>,
    /// `status_transitions`: when it was finalized, paid, voided or written off.
    pub finalized_at: Option<DateTime<Utc>>,
    pub paid_at: Option<DateTime<Utc>>,
    pub voided_at: Option<DateTime<Utc>>,
    pub marked_uncollectible_at: Option<DateTime<Utc>>,
}

impl Invoice {
    /// A new draft billing `lines` for `period`, nothing attempted yet, without an id (an
    /// upcoming invoice has none).
    pub fn draft(
        customer: &str,
        subscription: &str,
        billing_reason: &'static str,
        lines: Vec<InvoiceLine>,
        currency: &str,
        period: (DateTime<Utc>, DateTime<Utc>),
        created: DateTime<Utc>,
    ) -> Self {
        let amount_due = lines
            .iter()
            .fold(0i64, |total, line| total.saturating_add(line.amount));
        Self {
            id: String::new(),
            customer: customer.to_owned(),
            subscription: Some(subscription.to_owned()),
            status: InvoiceStatus::Draft,
            amount_due,
            amount_paid: 0,
            currency: currency.to_owned(),
            attempt_count: 0,
            next_payment_attempt: None,
            billing_reason,
            payment_intent: None,
            created,
            period_start: period.0,
            period_end: period.1,
            first_failure: None,
            retried: billing_reason != "subscription_create",
            lines,
            finalize_at: None,
            finalized_at: None,
            paid_at: None,
            voided_at: None,
            marked_uncollectible_at: None,
        }
    }
}

/// A subscription schedule (`POST /v1/subscription_schedules` with `from_subscription`):
/// phases of prices in time order, the last one ending where the schedule completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub id: String,
    pub subscription: String,
    pub customer: String,
    pub phases: Vec<SchedulePhase>,
    pub status: ScheduleStatus,
    pub created: DateTime<Utc>,
    /// When it completed, was released, or was canceled with its subscription.
    pub ended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulePhase {
    pub price: String,
    pub quantity: u64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleStatus {
    Active,
    Completed,
    Released,
    Canceled,
}

impl ScheduleStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Completed => "completed",
            Self::Released => "released",
            Self::Canceled => "canceled",
        }
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvoiceLine {
    pub price: String,
    pub quantity: u64,
    pub amount: i64,
    /// A credit or charge for part of a period after a plan change.
    pub proration: bool,
    pub subscription_item: Option<String>,
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
    /// Why the last attempt failed.
    pub last_error: Option<Decline>,
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
    /// Why it failed, when it did.
    pub decline: Option<Decline>,
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
    WarningNeedsResponse,
    WarningClosed,
}

impl DisputeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeedsResponse => "needs_response",
            Self::Won => "won",
            Self::Lost => "lost",
            Self::WarningNeedsResponse => "warning_needs_response",
            Self::WarningClosed => "warning_closed",
        }
    }

    /// Open: waiting for the merchant's response.
    pub fn is_open(self) -> bool {
        matches!(self, Self::NeedsResponse | Self::WarningNeedsResponse)
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
    /// Pause the subscription, the newer outcome for subscriptions in the flexible billing
    /// mode (Stripe's docs, "Automate payment retries": "pause the subscription";
    /// `../shared/STRIPE.md`, lifecycle).
    Pause,
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
