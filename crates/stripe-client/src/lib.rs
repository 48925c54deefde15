//! Subledger's calls to Stripe's API, through async-stripe.
//!
//! - Every mutating call carries a deterministic idempotency key the caller names (so a retry,
//!   or a re-run of the same step, can never create a second object).
//! - Failures are classified as Stripe documents them ([`ApiError`]): card declines and
//!   invalid requests are final, API errors, rate limits and network failures are retried
//!   with exponential backoff under the same key, authentication failures stop at once.
//! - The API key never reaches `Debug` output or logs.
//!
//! The base URL is configurable so the same code runs against Subledger's Stripe simulator.

pub mod reader;

pub use reader::{ListPage, ReadPolicy, StripeReader};

use secrecy::{ExposeSecret, SecretString};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use stripe::{Client, ClientBuilder, IdempotencyKey, RequestStrategy, StripeError, StripeRequest};
use stripe_billing::invoice::ListInvoice;
use stripe_billing::subscription::{
    CancelSubscription, CreateSubscription, CreateSubscriptionItems, RetrieveSubscription,
    UpdateSubscription, UpdateSubscriptionCancelAt, UpdateSubscriptionItems,
    UpdateSubscriptionPauseCollection, UpdateSubscriptionPauseCollectionBehavior,
    UpdateSubscriptionPaymentBehavior, UpdateSubscriptionProrationBehavior,
};
use stripe_billing::subscription_schedule::{
    CreateSubscriptionSchedule, ReleaseSubscriptionSchedule, UpdateSubscriptionSchedule,
    UpdateSubscriptionSchedulePhases, UpdateSubscriptionSchedulePhasesDuration,
    UpdateSubscriptionSchedulePhasesDurationInterval, UpdateSubscriptionSchedulePhasesEndDate,
    UpdateSubscriptionSchedulePhasesItems, UpdateSubscriptionSchedulePhasesStartDate,
};
use stripe_billing::test_helpers_test_clock::{
    AdvanceTestHelpersTestClock, CreateTestHelpersTestClock, RetrieveTestHelpersTestClock,
};
use stripe_client_core::{AccountId, RequestBuilder, StripeMethod};
use stripe_core::customer::{
    CreateCustomer, DeleteCustomer, UpdateCustomer, UpdateCustomerInvoiceSettings,
};
use stripe_payment::payment_method::AttachPaymentMethod;
use stripe_product::price::{
    CreatePrice, CreatePriceProductData, CreatePriceRecurring, CreatePriceRecurringInterval,
};

/// A Stripe secret or restricted key. Never printed; zeroed when dropped (`secrecy`).
#[derive(Clone)]
pub struct ApiKey(SecretString);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        Self(SecretString::from(key.into()))
    }

    /// Test-mode keys only: this crate's callers drive test clocks.
    pub fn is_test_mode(&self) -> bool {
        let key = self.0.expose_secret();
        key.starts_with("sk_test_") || key.starts_with("rk_test_")
    }

    /// The key itself, for the one place it is sent: the `Authorization` header.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A failed Stripe call, by Stripe's error classes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// A card was declined: final for this attempt; show the customer a friendly message.
    #[error("card declined ({})", decline_code.as_deref().unwrap_or("no decline code"))]
    Card { decline_code: Option<String> },
    /// Our request was wrong: a bug to fix, never retried.
    #[error("invalid request: {message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    /// The key was refused or rolled: stop making calls and alert.
    #[error("Stripe refused the API key")]
    Authentication,
    /// The key works but may not do this (a restricted key without the permission).
    #[error("the API key lacks a permission this needs: {0}")]
    Permission(String),
    /// No such object (`resource_missing`).
    #[error("not found at Stripe: {0}")]
    NotFound(String),
    /// An idempotency key was reused with different parameters.
    #[error("idempotency key reused with different parameters: {0}")]
    Idempotency(String),
    /// Still rate limited after retries.
    #[error("rate limited by Stripe")]
    RateLimit,
    /// Stripe failed (5xx, `api_error`), or the network did, after retries.
    #[error("Stripe or the network failed: {0}")]
    Unavailable(String),
    /// Stripe answered something this build cannot read.
    #[error("unexpected answer from Stripe: {0}")]
    Unexpected(String),
}

impl ApiError {
    /// The error's class, as metrics and alerts name it.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Card { .. } => "card",
            Self::InvalidRequest { .. } => "invalid_request",
            Self::Authentication => "authentication",
            Self::Permission(_) => "permission",
            Self::NotFound(_) => "not_found",
            Self::Idempotency(_) => "idempotency",
            Self::RateLimit => "rate_limit",
            Self::Unavailable(_) => "unavailable",
            Self::Unexpected(_) => "unexpected",
        }
    }

    fn from_stripe(error: StripeError) -> Self {
        match error {
            StripeError::Stripe(details, status) => {
                let message = details.message.clone().unwrap_or_default();
                match (status, details.type_.as_str()) {
                    (401, _) | (_, "authentication_error") => Self::Authentication,
                    (429, _) | (_, "rate_limit_error") => Self::RateLimit,
                    (_, "card_error") => Self::Card {
                        decline_code: details.decline_code.clone(),
                    },
                    (_, "idempotency_error") => Self::Idempotency(message),
                    (_, "invalid_request_error") => Self::InvalidRequest {
                        message,
                        param: details.param.clone(),
                    },
                    _ => Self::Unavailable(format!("{status}: {message}")),
                }
            }
            StripeError::ClientError(e) => Self::Unavailable(e),
            StripeError::Timeout => Self::Unavailable("timed out".to_owned()),
            StripeError::JSONDeserialize(e) => Self::Unexpected(e),
            StripeError::ConfigError(e) => Self::Unexpected(e),
        }
    }

    /// Worth another attempt with the same idempotency key.
    fn is_transient(&self) -> bool {
        matches!(self, Self::RateLimit | Self::Unavailable(_))
    }
}

/// A test clock as Stripe reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestClock {
    pub id: String,
    pub frozen_time: i64,
    /// `advancing`, `ready` or `internal_failure`.
    pub status: String,
}

/// The parts of a subscription the callers need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionState {
    pub id: String,
    pub status: String,
    pub first_item: Option<String>,
    /// The subscription schedule managing it, if any.
    pub schedule: Option<String>,
}

/// Stripe's API, with retries and deterministic idempotency keys.
#[derive(Debug, Clone)]
pub struct StripeApi {
    client: Client,
    /// Prefixes every idempotency key: one namespace per run.
    namespace: String,
    max_attempts: u32,
    first_backoff: Duration,
    /// The longest one attempt may take, connecting included: a hung call must not hold a
    /// worker for ever. A timed-out attempt is retried like a network failure.
    request_timeout: Duration,
}

const MAX_ATTEMPTS: u32 = 4;

impl StripeApi {
    /// The default [`Self::with_request_timeout`]: Stripe answers reads in well under a second;
    /// its own clients wait 80 s, meant for slow writes this client does not make in a worker.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

    /// The same client with a different per-attempt timeout.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

impl StripeApi {
    /// A client for `key`; `base_url` (ending in `/`) points it at another Stripe, such as the
    /// simulator. Keys of idempotent calls are prefixed with `namespace`.
    pub fn new(key: &ApiKey, base_url: Option<&str>, namespace: &str) -> Result<Self, ApiError> {
        let mut builder = ClientBuilder::new(key.expose());
        if let Some(url) = base_url {
            builder = builder.url(url);
        }
        let client = builder
            .build()
            .map_err(|e| ApiError::Unexpected(format!("cannot build the Stripe client: {e}")))?;
        Ok(Self {
            client,
            namespace: namespace.to_owned(),
            max_attempts: MAX_ATTEMPTS,
            first_backoff: Duration::from_millis(500),
            request_timeout: Self::DEFAULT_REQUEST_TIMEOUT,
        })
    }

    fn key(&self, name: &str) -> Result<IdempotencyKey, ApiError> {
        IdempotencyKey::new(format!("{}:{name}", self.namespace))
            .map_err(|e| ApiError::Unexpected(format!("bad idempotency key `{name}`: {e}")))
    }

    /// Runs `call` until it succeeds, fails for good, or runs out of attempts, backing off
    /// exponentially between transient failures. The same idempotency key rides every attempt.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T, ApiError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StripeError>>,
    {
        let mut wait = self.first_backoff;
        let mut attempt = 1;
        loop {
            let answered = tokio::time::timeout(self.request_timeout, call())
                .await
                .unwrap_or_else(|_| Err(StripeError::Timeout))
                .map_err(ApiError::from_stripe);
            record_attempt("api", answered.as_ref().err());
            match answered {
                Ok(value) => return Ok(value),
                Err(error) if error.is_transient() && attempt < self.max_attempts => {
                    tracing::warn!(%error, attempt, what, "Stripe call failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends a mutating request under idempotency key `key` (namespaced), with retries.
    async fn send_idempotent<R>(
        &self,
        what: &str,
        key: &str,
        request: &R,
    ) -> Result<R::Output, ApiError>
    where
        R: StripeRequest,
        R::Output: miniserde::Deserialize,
    {
        let strategy = RequestStrategy::Idempotent(self.key(key)?);
        self.with_retries(what, || {
            request
                .customize()
                .request_strategy(strategy.clone())
                .send(&self.client)
        })
        .await
    }

    pub async fn create_test_clock(
        &self,
        key: &str,
        frozen_time: i64,
        name: &str,
    ) -> Result<TestClock, ApiError> {
        let request = CreateTestHelpersTestClock::new(frozen_time).name(name);
        let clock = self
            .send_idempotent("create test clock", key, &request)
            .await?;
        Ok(clock_state(&clock))
    }

    pub async fn test_clock(&self, id: &str) -> Result<TestClock, ApiError> {
        let request = RetrieveTestHelpersTestClock::new(id);
        let clock = self
            .with_retries("retrieve test clock", || request.send(&self.client))
            .await?;
        Ok(clock_state(&clock))
    }

    pub async fn advance_test_clock(
        &self,
        key: &str,
        id: &str,
        frozen_time: i64,
    ) -> Result<TestClock, ApiError> {
        let request = AdvanceTestHelpersTestClock::new(id, frozen_time);
        let clock = self
            .send_idempotent("advance test clock", key, &request)
            .await?;
        Ok(clock_state(&clock))
    }

    /// A monthly or yearly price (with its product), carrying `lookup_key` (taken over from
    /// an older price that had it, so reruns keep working).
    pub async fn create_price(
        &self,
        key: &str,
        unit_amount: i64,
        currency: &str,
        yearly: bool,
        lookup_key: Option<&str>,
        product_name: &str,
    ) -> Result<String, ApiError> {
        let currency =
            currency
                .parse::<stripe_types::Currency>()
                .map_err(|_| ApiError::InvalidRequest {
                    message: format!("unknown currency {currency}"),
                    param: Some("currency".to_owned()),
                })?;
        let interval = if yearly {
            CreatePriceRecurringInterval::Year
        } else {
            CreatePriceRecurringInterval::Month
        };
        let mut request = CreatePrice::new(currency)
            .unit_amount(unit_amount)
            .recurring(CreatePriceRecurring::new(interval))
            .product_data(CreatePriceProductData::new(product_name));
        if let Some(lookup_key) = lookup_key {
            request = request.lookup_key(lookup_key).transfer_lookup_key(true);
        }
        let price = self.send_idempotent("create price", key, &request).await?;
        Ok(price.id.to_string())
    }

    pub async fn create_customer(
        &self,
        key: &str,
        test_clock: &str,
        metadata: HashMap<String, String>,
    ) -> Result<String, ApiError> {
        let request = CreateCustomer::new()
            .test_clock(test_clock)
            .metadata(metadata);
        let customer = self
            .send_idempotent("create customer", key, &request)
            .await?;
        Ok(customer.id.to_string())
    }

    /// Attaches a test card (`pm_card_visa`, …) and makes it the customer's default.
    pub async fn attach_default_card(
        &self,
        key: &str,
        customer: &str,
        test_card: &str,
    ) -> Result<String, ApiError> {
        let attach = AttachPaymentMethod::new(test_card).customer(customer);
        let method = self
            .send_idempotent("attach payment method", &format!("{key}:attach"), &attach)
            .await?;
        let method_id = method.id.to_string();
        let mut settings = UpdateCustomerInvoiceSettings::new();
        settings.default_payment_method = Some(method_id.clone());
        let update = UpdateCustomer::new(customer).invoice_settings(settings);
        self.send_idempotent(
            "set default payment method",
            &format!("{key}:default"),
            &update,
        )
        .await?;
        Ok(method_id)
    }

    /// `payment_behavior` (`allow_incomplete`, …) and, for a trial, what happens when it ends
    /// without a payment method (`create_invoice`, `pause`, `cancel`) are Stripe's words.
    pub async fn create_subscription(
        &self,
        key: &str,
        customer: &str,
        price: &str,
        quantity: u64,
        trial: Option<(u32, &str)>,
        payment_behavior: &str,
    ) -> Result<SubscriptionState, ApiError> {
        let mut item = CreateSubscriptionItems::new();
        item.price = Some(price.to_owned());
        item.quantity = Some(quantity);
        let behavior = payment_behavior
            .parse::<stripe_billing::subscription::CreateSubscriptionPaymentBehavior>()
            .map_err(|_| ApiError::InvalidRequest {
                message: format!("`{payment_behavior}` is not a payment_behavior"),
                param: Some("payment_behavior".to_owned()),
            })?;
        let mut request = CreateSubscription::new()
            .customer(customer)
            .items(vec![item])
            .payment_behavior(behavior);
        if let Some((days, missing_payment_method)) = trial {
            let missing = missing_payment_method
                .parse::<stripe_billing::subscription::CreateSubscriptionTrialSettingsEndBehaviorMissingPaymentMethod>()
                .map_err(|_| ApiError::InvalidRequest {
                    message: format!("`{missing_payment_method}` is not a missing_payment_method"),
                    param: Some("trial_settings[end_behavior][missing_payment_method]".to_owned()),
                })?;
            let mut end_behavior =
                stripe_billing::subscription::CreateSubscriptionTrialSettingsEndBehavior::new();
            end_behavior.missing_payment_method = Some(missing);
            request = request.trial_period_days(days).trial_settings(
                stripe_billing::subscription::CreateSubscriptionTrialSettings::new(end_behavior),
            );
        }
        let subscription = self
            .send_idempotent("create subscription", key, &request)
            .await?;
        Ok(subscription_state(&subscription))
    }

    pub async fn subscription(&self, id: &str) -> Result<SubscriptionState, ApiError> {
        let request = RetrieveSubscription::new(id);
        let subscription = self
            .with_retries("retrieve subscription", || request.send(&self.client))
            .await?;
        Ok(subscription_state(&subscription))
    }

    /// Releases the schedule managing `subscription` (`POST
    /// /v1/subscription_schedules/{id}/release`): the subscription keeps its current price and
    /// a change the schedule had not made yet is dropped.
    pub async fn release_schedule_of(&self, key: &str, subscription: &str) -> Result<(), ApiError> {
        let current = self.subscription(subscription).await?;
        let schedule = current.schedule.ok_or_else(|| ApiError::InvalidRequest {
            message: format!("subscription {subscription} has no subscription schedule to release"),
            param: None,
        })?;
        let request = ReleaseSubscriptionSchedule::new(schedule.as_str());
        self.send_idempotent("release subscription schedule", key, &request)
            .await
            .map(|_| ())
    }

    /// Moves the subscription's first item to `price` now.
    pub async fn change_price(
        &self,
        key: &str,
        subscription: &str,
        price: &str,
        proration: &str,
        pending_if_incomplete: bool,
    ) -> Result<(), ApiError> {
        let current = self.subscription(subscription).await?;
        let mut item = UpdateSubscriptionItems::new();
        item.id = current.first_item;
        item.price = Some(price.to_owned());
        let proration = match proration {
            "always_invoice" => UpdateSubscriptionProrationBehavior::AlwaysInvoice,
            "none" => UpdateSubscriptionProrationBehavior::None,
            _ => UpdateSubscriptionProrationBehavior::CreateProrations,
        };
        let mut request = UpdateSubscription::new(subscription)
            .items(vec![item])
            .proration_behavior(proration);
        if pending_if_incomplete {
            request =
                request.payment_behavior(UpdateSubscriptionPaymentBehavior::PendingIfIncomplete);
        }
        self.send_idempotent("change price", key, &request)
            .await
            .map(|_| ())
    }

    /// Moves the subscription to `price` when its current period ends, as Stripe does it: a
    /// schedule made from the subscription, whose current phase ends with the period and
    /// whose next phase has the new price; the schedule then releases the subscription.
    pub async fn change_price_at_period_end(
        &self,
        key: &str,
        subscription: &str,
        price: &str,
    ) -> Result<(), ApiError> {
        let create = CreateSubscriptionSchedule::new().from_subscription(subscription);
        let schedule = self
            .send_idempotent(
                "create subscription schedule",
                &format!("{key}:schedule"),
                &create,
            )
            .await?;
        let current = schedule.phases.first().ok_or_else(|| {
            ApiError::Unexpected("a schedule made from a subscription has no phase".to_owned())
        })?;
        let current_item = current.items.first().ok_or_else(|| {
            ApiError::Unexpected("the schedule's current phase has no item".to_owned())
        })?;
        let item = |price: String| {
            let mut item = UpdateSubscriptionSchedulePhasesItems::new();
            item.price = Some(price);
            item.quantity = current_item.quantity;
            item
        };
        let mut now =
            UpdateSubscriptionSchedulePhases::new(vec![item(current_item.price.id().to_string())]);
        now.start_date = Some(UpdateSubscriptionSchedulePhasesStartDate::Timestamp(
            current.start_date,
        ));
        now.end_date = Some(UpdateSubscriptionSchedulePhasesEndDate::Timestamp(
            current.end_date,
        ));
        let mut next = UpdateSubscriptionSchedulePhases::new(vec![item(price.to_owned())]);
        next.duration = Some(UpdateSubscriptionSchedulePhasesDuration::new(
            UpdateSubscriptionSchedulePhasesDurationInterval::Month,
        ));
        let update = UpdateSubscriptionSchedule::new(schedule.id.as_str())
            .phases(vec![now, next])
            .end_behavior(stripe_shared::SubscriptionScheduleEndBehavior::Release);
        self.send_idempotent(
            "schedule the price change",
            &format!("{key}:phases"),
            &update,
        )
        .await
        .map(|_| ())
    }

    pub async fn set_cancel_at_period_end(
        &self,
        key: &str,
        subscription: &str,
        cancel: bool,
    ) -> Result<(), ApiError> {
        let request = UpdateSubscription::new(subscription).cancel_at_period_end(cancel);
        self.send_idempotent("set cancel_at_period_end", key, &request)
            .await
            .map(|_| ())
    }

    /// Cancels the subscription at a set moment (`cancel_at`, unix seconds).
    pub async fn set_cancel_at(
        &self,
        key: &str,
        subscription: &str,
        at: i64,
    ) -> Result<(), ApiError> {
        let request = UpdateSubscription::new(subscription)
            .cancel_at(UpdateSubscriptionCancelAt::Timestamp(at));
        self.send_idempotent("set cancel_at", key, &request)
            .await
            .map(|_| ())
    }

    /// Deletes a customer (Stripe cancels its subscriptions). A DELETE takes no idempotency
    /// key; it is idempotent in effect, so a retry that finds the customer gone is success.
    pub async fn delete_customer(&self, customer: &str) -> Result<(), ApiError> {
        let request = DeleteCustomer::new(customer);
        match self
            .with_retries("delete customer", || request.send(&self.client))
            .await
        {
            Ok(_) => Ok(()),
            Err(ApiError::InvalidRequest { message, .. })
                if message.contains("No such customer") =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    pub async fn cancel_subscription(&self, key: &str, subscription: &str) -> Result<(), ApiError> {
        let request = CancelSubscription::new(subscription);
        self.send_idempotent("cancel subscription", key, &request)
            .await
            .map(|_| ())
    }

    pub async fn pause_collection(
        &self,
        key: &str,
        subscription: &str,
        behavior: &str,
    ) -> Result<(), ApiError> {
        let behavior = match behavior {
            "keep_as_draft" => UpdateSubscriptionPauseCollectionBehavior::KeepAsDraft,
            "mark_uncollectible" => UpdateSubscriptionPauseCollectionBehavior::MarkUncollectible,
            "void" => UpdateSubscriptionPauseCollectionBehavior::Void,
            other => {
                return Err(ApiError::InvalidRequest {
                    message: format!("pause_collection behavior {other} is not keep_as_draft, mark_uncollectible or void"),
                    param: Some("pause_collection[behavior]".to_owned()),
                })
            }
        };
        let request = UpdateSubscription::new(subscription)
            .pause_collection(UpdateSubscriptionPauseCollection::new(behavior));
        self.send_idempotent("pause collection", key, &request)
            .await
            .map(|_| ())
    }

    /// Undoes a scheduled cancellation, whether at period end or at a set date. Stripe clears
    /// `cancel_at` with an empty value, which async-stripe's builder cannot send: built by hand.
    pub async fn undo_cancellation(&self, key: &str, subscription: &str) -> Result<(), ApiError> {
        let strategy = RequestStrategy::Idempotent(self.key(key)?);
        let path = format!("/subscriptions/{subscription}");
        let form = std::collections::BTreeMap::from([
            ("cancel_at", ""),
            ("cancel_at_period_end", "false"),
        ]);
        self.with_retries("undo cancellation", || {
            RequestBuilder::new(StripeMethod::Post, path.clone())
                .form(&form)
                .customize::<stripe_shared::Subscription>()
                .request_strategy(strategy.clone())
                .send(&self.client)
        })
        .await
        .map(|_| ())
    }

    /// Resumes collection. Stripe unsets `pause_collection` with an empty value, which
    /// async-stripe's typed builder cannot express, so this one request is built by hand.
    pub async fn resume_collection(&self, key: &str, subscription: &str) -> Result<(), ApiError> {
        let strategy = RequestStrategy::Idempotent(self.key(key)?);
        let path = format!("/subscriptions/{subscription}");
        self.with_retries("resume collection", || {
            RequestBuilder::new(StripeMethod::Post, path.clone())
                .form(&std::collections::BTreeMap::from([(
                    "pause_collection",
                    "",
                )]))
                .customize::<stripe_shared::Subscription>()
                .request_strategy(strategy.clone())
                .send(&self.client)
        })
        .await
        .map(|_| ())
    }

    /// Resumes a `paused` subscription (`POST /v1/subscriptions/{id}/resume`): the billing
    /// cycle restarts now and its invoice is charged.
    pub async fn resume_subscription(&self, key: &str, subscription: &str) -> Result<(), ApiError> {
        let path = format!("/subscriptions/{}/resume", stripe_id(subscription)?);
        let strategy = RequestStrategy::Idempotent(self.key(key)?);
        self.with_retries("resume subscription", || {
            RequestBuilder::new(StripeMethod::Post, path.clone())
                .customize::<stripe_shared::Subscription>()
                .request_strategy(strategy.clone())
                .send(&self.client)
        })
        .await
        .map(|_| ())
    }

    /// Pays the subscription's newest invoice now (`POST /v1/invoices/{id}/pay`) with the
    /// customer's default payment method.
    pub async fn pay_latest_invoice(&self, key: &str, subscription: &str) -> Result<(), ApiError> {
        let object = self.object("subscriptions", subscription, None).await?;
        let invoice = object["latest_invoice"]
            .as_str()
            .or_else(|| object["latest_invoice"]["id"].as_str())
            .ok_or_else(|| ApiError::InvalidRequest {
                message: format!("subscription `{subscription}` has no invoice to pay"),
                param: Some("subscription".to_owned()),
            })?
            .to_owned();
        let path = format!("/invoices/{}/pay", stripe_id(&invoice)?);
        let strategy = RequestStrategy::Idempotent(self.key(key)?);
        self.with_retries("pay invoice", || {
            RequestBuilder::new(StripeMethod::Post, path.clone())
                .customize::<stripe_shared::Invoice>()
                .request_strategy(strategy.clone())
                .send(&self.client)
        })
        .await
        .map(|_| ())
    }

    /// An object of `resource` (`subscriptions`, `customers`, `subscription_schedules`)
    /// exactly as Stripe returns it, whatever the account's API version: the worker reads it
    /// with the same translator as the events, which tolerates every shape, where async-stripe's
    /// typed model follows one version.
    /// `account` is the connected account it lives in (the `Stripe-Account` header); `None`
    /// for the platform's own.
    pub async fn object(
        &self,
        resource: &str,
        id: &str,
        account: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let id = stripe_id(id)?;
        self.get_json(&format!("/{resource}/{id}"), &BTreeMap::new(), account)
            .await
    }

    /// A customer's active entitlements (`GET /v1/entitlements/active_entitlements`), every
    /// page, as one list object.
    pub async fn active_entitlements(
        &self,
        customer: &str,
        account: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let mut entries: Vec<serde_json::Value> = Vec::new();
        loop {
            let mut query = BTreeMap::from([("customer", customer), ("limit", "100")]);
            let after = entries
                .last()
                .and_then(|last| last.get("id"))
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned);
            if let Some(after) = after.as_deref() {
                query.insert("starting_after", after);
            }
            let page = self
                .get_json("/entitlements/active_entitlements", &query, account)
                .await?;
            let data = page.get("data").and_then(serde_json::Value::as_array);
            let Some(data) = data.filter(|d| !d.is_empty()) else {
                break;
            };
            entries.extend(data.iter().cloned());
            if page.get("has_more") != Some(&serde_json::Value::Bool(true)) {
                break;
            }
        }
        Ok(serde_json::json!({ "object": "list", "data": entries, "has_more": false }))
    }

    /// A GET whose answer is kept as JSON rather than read into async-stripe's types, in
    /// connected account `account` when one is named.
    async fn get_json(
        &self,
        path: &str,
        query: &BTreeMap<&str, &str>,
        account: Option<&str>,
    ) -> Result<serde_json::Value, ApiError> {
        let answer = self
            .with_retries(path, || {
                let request = RequestBuilder::new(StripeMethod::Get, path)
                    .query(query)
                    .customize::<miniserde::json::Value>();
                match account {
                    Some(account) => request.account_id(AccountId::from(account)),
                    None => request,
                }
                .send(&self.client)
            })
            .await?;
        serde_json::from_str(&miniserde::json::to_string(&answer))
            .map_err(|e| ApiError::Unexpected(format!("Stripe's answer is not JSON: {e}")))
    }

    /// The statuses of a subscription's invoices, oldest first.
    pub async fn invoice_statuses(&self, subscription: &str) -> Result<Vec<String>, ApiError> {
        let request = ListInvoice::new().subscription(subscription).limit(100);
        let list = self
            .with_retries("list invoices", || request.send(&self.client))
            .await?;
        let mut invoices: Vec<(i64, String, String)> = list
            .data
            .iter()
            .map(|invoice| {
                let status = invoice
                    .status
                    .as_ref()
                    .map_or("draft", |s| s.as_str())
                    .to_owned();
                let id = invoice
                    .id
                    .as_ref()
                    .map(|id| id.to_string())
                    .unwrap_or_default();
                (invoice.created, id, status)
            })
            .collect();
        invoices.sort();
        Ok(invoices.into_iter().map(|(_, _, status)| status).collect())
    }
}

/// An id that becomes part of a path: only Stripe's id alphabet may reach it.
/// Counts one request to Stripe (`subledger_stripe_requests_total`): by `client` (`api`:
/// async-stripe's calls; `reader`: whole-account reads), outcome, and the error's class.
pub(crate) fn record_attempt(client: &'static str, error: Option<&ApiError>) {
    let (outcome, class) = match error {
        None => ("ok", ""),
        Some(error) => ("error", error.class()),
    };
    metrics::counter!(
        "subledger_stripe_requests_total",
        "client" => client,
        "outcome" => outcome,
        "class" => class
    )
    .increment(1);
}

pub(crate) fn stripe_id(id: &str) -> Result<&str, ApiError> {
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(ApiError::InvalidRequest {
            message: format!("`{id}` is not a Stripe id"),
            param: Some("id".to_owned()),
        });
    }
    Ok(id)
}

fn clock_state(clock: &stripe_shared::TestHelpersTestClock) -> TestClock {
    TestClock {
        id: clock.id.to_string(),
        frozen_time: clock.frozen_time,
        status: clock.status.as_str().to_owned(),
    }
}

fn subscription_state(subscription: &stripe_shared::Subscription) -> SubscriptionState {
    SubscriptionState {
        id: subscription.id.to_string(),
        status: subscription.status.as_str().to_owned(),
        first_item: subscription
            .items
            .data
            .first()
            .map(|item| item.id.to_string()),
        schedule: subscription
            .schedule
            .as_ref()
            .map(|schedule| schedule.id().to_string()),
    }
}
