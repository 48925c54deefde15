//! Operations on the simulated account, and the test clock that makes time-based billing run.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Months, Utc};
use serde_json::{json, Value};

use crate::model::{
    Card, Charge, ChargeResult, Customer, Dispute, Interval, Invoice, InvoiceStatus, PauseBehavior,
    PaymentIntent, PaymentMethod, Price, RetryPolicy, Subscription, SubscriptionItem,
    SubscriptionStatus, WhenRetriesRunOut,
};
use crate::render;

/// A request the simulated Stripe refuses, as Stripe would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no such {kind}: `{id}`")]
    NotFound { kind: &'static str, id: String },
    #[error("`{0}` already exists")]
    AlreadyExists(String),
    #[error("`{0}` is not a Stripe test card (expected one of: {list})", list = Card::TEST_IDS.join(", "))]
    UnknownCard(String),
    #[error("test clocks only move forward: {to} is before the clock's {now}")]
    ClockBackwards {
        now: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error("{0}")]
    Invalid(String),
    /// A paid subscription without a trial for a customer with no payment method: Stripe
    /// answers 400 `resource_missing` and creates nothing (`../shared/STRIPE.md`, signup).
    #[error("customer `{0}` has no attached payment source or default payment method")]
    NoPaymentMethod(String),
}

/// How long an `incomplete` subscription waits for its first payment.
const INCOMPLETE_EXPIRY: Duration = Duration::hours(23);
/// `customer.subscription.trial_will_end` comes this long before the trial ends.
const TRIAL_WILL_END_NOTICE: Duration = Duration::days(3);
/// Stripe allows trials of up to 730 days.
const MAX_TRIAL_DAYS: u32 = 730;
/// A guard against a simulation bug turning an advance into an endless loop.
const MAX_ACTIONS_PER_ADVANCE: usize = 100_000;

/// A simulated Stripe account on one test clock.
#[derive(Debug, Clone)]
pub struct Simulator {
    now: DateTime<Utc>,
    clock_id: String,
    counter: u64,
    policy: RetryPolicy,
    customers: BTreeMap<String, Customer>,
    prices: BTreeMap<String, Price>,
    payment_methods: BTreeMap<String, PaymentMethod>,
    subscriptions: BTreeMap<String, Subscription>,
    invoices: BTreeMap<String, Invoice>,
    payment_intents: BTreeMap<String, PaymentIntent>,
    charges: BTreeMap<String, Charge>,
    disputes: BTreeMap<String, Dispute>,
    events: Vec<Value>,
    taken: usize,
    advances: u64,
    /// Subscription schedules in force, by subscription.
    schedules: BTreeMap<String, String>,
    /// Every schedule ever made (released ones too) and its subscription, by schedule id.
    schedule_subscriptions: BTreeMap<String, String>,
    /// The last Entitlements API summary sent per customer (feature lookup keys).
    summaries: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Stripe's known gap: no summary update when a trial ends paused.
    suppress_summaries: bool,
    /// Distinguishes the ids of several simulators (test clocks) in one account.
    space: u32,
    name: Option<String>,
}

/// Something the clock makes happen.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    CancelAt(String),
    ExpireIncomplete(String),
    TrialWillEnd(String),
    PeriodEnd(String),
    Retry(String),
}

/// How a payment attempt on an invoice went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Paid,
    Failed,
    RequiresAction,
}

impl Simulator {
    pub fn new(start: DateTime<Utc>, policy: RetryPolicy) -> Self {
        let mut simulator = Self {
            now: start,
            clock_id: String::new(),
            counter: 0,
            policy,
            customers: BTreeMap::new(),
            prices: BTreeMap::new(),
            payment_methods: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            invoices: BTreeMap::new(),
            payment_intents: BTreeMap::new(),
            charges: BTreeMap::new(),
            disputes: BTreeMap::new(),
            events: Vec::new(),
            taken: 0,
            advances: 0,
            schedules: BTreeMap::new(),
            schedule_subscriptions: BTreeMap::new(),
            summaries: BTreeMap::new(),
            suppress_summaries: false,
            space: 0,
            name: None,
        };
        simulator.clock_id = simulator.next_id("clock");
        simulator
    }

    /// A simulator whose ids cannot collide with those of simulators in other `space`s.
    pub fn in_space(
        start: DateTime<Utc>,
        policy: RetryPolicy,
        space: u32,
        name: Option<String>,
    ) -> Self {
        let mut simulator = Self::new(start, policy);
        simulator.space = space;
        simulator.name = name;
        simulator.counter = 0;
        simulator.clock_id = simulator.next_id("clock");
        simulator
    }

    /// A new id for an object the caller is about to create (`cus`, `sub`, `price`, …).
    pub fn fresh_id(&mut self, prefix: &str) -> String {
        self.next_id(prefix)
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    pub fn clock_id(&self) -> &str {
        &self.clock_id
    }

    /// How many times the clock was advanced.
    pub fn advances(&self) -> u64 {
        self.advances
    }

    /// Every event emitted so far, in emission order.
    pub fn events(&self) -> &[Value] {
        &self.events
    }

    /// The events emitted since the last call.
    pub fn take_new_events(&mut self) -> Vec<Value> {
        let new = self.events[self.taken..].to_vec();
        self.taken = self.events.len();
        new
    }

    /// Drops the events not yet taken, as if what caused them had emitted none: a change at
    /// Stripe that no webhook and no `GET /v1/events` will ever tell (a Dashboard change of
    /// an event type the endpoint does not subscribe to, or one older than Stripe's 30 days
    /// of events).
    pub fn forget_new_events(&mut self) -> usize {
        let forgotten = self.events.len() - self.taken;
        self.events.truncate(self.taken);
        forgotten
    }

    pub fn subscription(&self, id: &str) -> Result<&Subscription, SimError> {
        self.subscriptions
            .get(id)
            .ok_or_else(|| not_found("subscription", id))
    }

    /// A subscription's invoices, oldest first.
    pub fn invoices_of(&self, subscription: &str) -> Vec<&Invoice> {
        self.invoices
            .values()
            .filter(|invoice| invoice.subscription.as_deref() == Some(subscription))
            .collect()
    }

    pub fn customer(&self, id: &str) -> Result<&Customer, SimError> {
        self.customers
            .get(id)
            .ok_or_else(|| not_found("customer", id))
    }

    pub fn customers(&self) -> impl Iterator<Item = &Customer> {
        self.customers.values()
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }

    pub fn invoices(&self) -> impl Iterator<Item = &Invoice> {
        self.invoices.values()
    }

    /// Every PaymentIntent, as `GET /v1/payment_intents` lists them.
    pub fn payment_intents_json(&self) -> Vec<Value> {
        self.payment_intents
            .values()
            .map(render::payment_intent)
            .collect()
    }

    /// Every subscription schedule this clock made (released ones too).
    pub fn schedule_ids(&self) -> impl Iterator<Item = &str> {
        self.schedule_subscriptions.keys().map(String::as_str)
    }

    /// Ids sort in creation order: a prefix, the space, and a zero-padded counter.
    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        if self.space == 0 {
            format!("{prefix}_sim{:010}", self.counter)
        } else {
            format!("{prefix}_sim{}x{:010}", self.space, self.counter)
        }
    }

    // ---- Stripe's JSON for the REST API --------------------------------------------------

    pub fn customer_json(&self, id: &str) -> Result<Value, SimError> {
        self.render_customer(id)
    }

    pub fn subscription_json(&self, id: &str) -> Result<Value, SimError> {
        self.render_subscription(id)
    }

    pub fn invoice_json(&self, id: &str) -> Result<Value, SimError> {
        self.render_invoice(id)
    }

    pub fn payment_method_json(&self, id: &str) -> Result<Value, SimError> {
        self.payment_methods
            .get(id)
            .map(render::payment_method)
            .ok_or_else(|| not_found("payment_method", id))
    }

    pub fn price_json(&self, id: &str) -> Result<Value, SimError> {
        self.price(id).map(render::price)
    }

    pub fn has_price(&self, id: &str) -> bool {
        self.prices.contains_key(id)
    }

    pub fn has_invoice(&self, id: &str) -> bool {
        self.invoices.contains_key(id)
    }

    pub fn has_subscription(&self, id: &str) -> bool {
        self.subscriptions.contains_key(id)
    }

    /// The test clock object, `ready`: advances here are synchronous.
    pub fn clock_json(&self) -> Value {
        let mut clock = subledger_stripe::fixtures::resource("test_helpers.test_clock");
        clock["id"] = json!(self.clock_id);
        clock["frozen_time"] = render::ts(self.now);
        clock["status"] = json!("ready");
        clock["name"] = json!(self.name);
        clock["livemode"] = json!(false);
        clock
    }

    fn emit(&mut self, event_type: &str, object: Value, previous: Option<Value>) {
        // Stripe's event ids carry no order; neither do these (a scrambled counter), so nothing
        // downstream can get order from them by accident.
        // The space is part of the seed: two clocks of one account never share an event id.
        self.counter += 1;
        let seed = (u64::from(self.space) << 40) | self.counter;
        let id = format!("evt_sim{:016x}", crate::rng::Rng::new(seed).next_u64());
        let mut data = json!({ "object": object });
        if let Some(previous) = previous {
            data["previous_attributes"] = previous;
        }
        self.events.push(json!({
            "id": id,
            "object": "event",
            "api_version": render::API_VERSION,
            "created": self.now.timestamp(),
            "data": data,
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": event_type,
        }));
    }

    // ---- rendering -------------------------------------------------------------------

    fn render_subscription(&self, id: &str) -> Result<Value, SimError> {
        let subscription = self.subscription(id)?;
        let prices = |price: &str| self.prices.get(price).map(render::price);
        let mut object = render::subscription(subscription, &prices, &self.clock_id);
        object["schedule"] = json!(self.schedules.get(id));
        Ok(object)
    }

    fn render_invoice(&self, id: &str) -> Result<Value, SimError> {
        let invoice = self
            .invoices
            .get(id)
            .ok_or_else(|| not_found("invoice", id))?;
        Ok(render::invoice(invoice, &self.clock_id))
    }

    fn render_customer(&self, id: &str) -> Result<Value, SimError> {
        Ok(render::customer(self.customer(id)?, &self.clock_id))
    }

    /// Changes a subscription and emits `customer.subscription.updated` with what changed.
    fn update_subscription(
        &mut self,
        id: &str,
        change: impl FnOnce(&mut Subscription),
    ) -> Result<(), SimError> {
        let before = self.render_subscription(id)?;
        change(
            self.subscriptions
                .get_mut(id)
                .ok_or_else(|| not_found("subscription", id))?,
        );
        let after = self.render_subscription(id)?;
        if let Some(previous) = render::previous_attributes(&before, &after) {
            self.emit("customer.subscription.updated", after, Some(previous));
        }
        if let Some(customer) = self.subscriptions.get(id).map(|s| s.customer.clone()) {
            self.sync_entitlement_summary(&customer);
        }
        Ok(())
    }

    // ---- catalog and customers ---------------------------------------------------------

    /// Creates a recurring price (and its product, named after it).
    pub fn create_price(
        &mut self,
        id: &str,
        unit_amount: i64,
        currency: &str,
        interval: Interval,
        lookup_key: Option<&str>,
    ) -> Result<(), SimError> {
        if self.prices.contains_key(id) {
            return Err(SimError::AlreadyExists(id.to_owned()));
        }
        if unit_amount < 0 {
            return Err(SimError::Invalid(format!(
                "price `{id}` has a negative amount"
            )));
        }
        let price = Price {
            id: id.to_owned(),
            product: format!("prod_{id}"),
            unit_amount,
            currency: currency.to_owned(),
            interval,
            lookup_key: lookup_key.map(str::to_owned),
            created: self.now,
            features: Vec::new(),
        };
        let rendered = render::price(&price);
        self.prices.insert(id.to_owned(), price);
        self.emit("price.created", rendered, None);
        Ok(())
    }

    /// Makes a price created elsewhere in the account usable here, without an event (prices
    /// belong to the account, not to a test clock).
    pub fn register_price(&mut self, price: &Price) {
        self.prices
            .entry(price.id.clone())
            .or_insert_with(|| price.clone());
    }

    pub fn prices_all(&self) -> impl Iterator<Item = &Price> {
        self.prices.values()
    }

    pub fn price_record(&self, id: &str) -> Option<&Price> {
        self.prices.get(id)
    }

    pub fn create_customer(
        &mut self,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), SimError> {
        if self.customers.contains_key(id) {
            return Err(SimError::AlreadyExists(id.to_owned()));
        }
        self.customers.insert(
            id.to_owned(),
            Customer {
                id: id.to_owned(),
                metadata,
                default_payment_method: None,
                created: self.now,
                deleted: false,
            },
        );
        let rendered = self.render_customer(id)?;
        self.emit("customer.created", rendered, None);
        Ok(())
    }

    /// Attaches a test card (`pm_card_visa`, …) and makes it the default payment method.
    /// Declining cards attach too, as through Checkout; their charges fail.
    pub fn attach_card(&mut self, customer: &str, test_card: &str) -> Result<String, SimError> {
        let id = self.attach_payment_method(customer, test_card)?;
        self.set_default_payment_method(customer, &id)?;
        Ok(id)
    }

    /// Attaches a test card without making it the default (`POST /v1/payment_methods/…/attach`).
    pub fn attach_payment_method(
        &mut self,
        customer: &str,
        test_card: &str,
    ) -> Result<String, SimError> {
        let card = Card::from_test_id(test_card)
            .ok_or_else(|| SimError::UnknownCard(test_card.to_owned()))?;
        self.customer(customer)?;
        let id = self.next_id("pm");
        let method = PaymentMethod {
            id: id.clone(),
            customer: customer.to_owned(),
            card,
            created: self.now,
        };
        let rendered = render::payment_method(&method);
        self.payment_methods.insert(id.clone(), method);
        self.emit("payment_method.attached", rendered, None);
        Ok(id)
    }

    /// Makes an attached payment method the customer's default.
    pub fn set_default_payment_method(
        &mut self,
        customer: &str,
        payment_method: &str,
    ) -> Result<(), SimError> {
        let owner = self
            .payment_methods
            .get(payment_method)
            .map(|m| m.customer.clone());
        if owner.as_deref() != Some(customer) {
            return Err(SimError::Invalid(format!(
                "payment method `{payment_method}` is not attached to customer `{customer}`"
            )));
        }
        let before = self.render_customer(customer)?;
        if let Some(record) = self.customers.get_mut(customer) {
            record.default_payment_method = Some(payment_method.to_owned());
        }
        let after = self.render_customer(customer)?;
        if let Some(previous) = render::previous_attributes(&before, &after) {
            self.emit("customer.updated", after, Some(previous));
        }
        Ok(())
    }

    pub fn update_customer_metadata(
        &mut self,
        customer: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), SimError> {
        let before = self.render_customer(customer)?;
        if let Some(record) = self.customers.get_mut(customer) {
            record.metadata.extend(metadata);
        }
        let after = self.render_customer(customer)?;
        if let Some(previous) = render::previous_attributes(&before, &after) {
            self.emit("customer.updated", after, Some(previous));
        }
        Ok(())
    }

    fn card_of(&self, customer: &str) -> Option<Card> {
        let method = self
            .customers
            .get(customer)?
            .default_payment_method
            .as_ref()?;
        self.payment_methods.get(method).map(|m| m.card)
    }

    // ---- subscriptions -----------------------------------------------------------------

    fn price(&self, id: &str) -> Result<&Price, SimError> {
        self.prices.get(id).ok_or_else(|| not_found("price", id))
    }

    fn period_end(&self, anchor: DateTime<Utc>, interval: Interval, periods: u32) -> DateTime<Utc> {
        anchor
            .checked_add_months(Months::new(interval.months() * periods))
            .unwrap_or(anchor)
    }

    fn amount_of(&self, subscription: &Subscription) -> (i64, String) {
        let mut total = 0i64;
        let mut currency = "usd".to_owned();
        for item in &subscription.items {
            if let Some(price) = self.prices.get(&item.price) {
                let quantity = i64::try_from(item.quantity).unwrap_or(i64::MAX);
                total = total.saturating_add(price.unit_amount.saturating_mul(quantity));
                currency.clone_from(&price.currency);
            }
        }
        (total, currency)
    }

    fn interval_of(&self, subscription: &Subscription) -> Interval {
        subscription
            .items
            .first()
            .and_then(|item| self.prices.get(&item.price))
            .map_or(Interval::Month, |price| price.interval)
    }

    /// Creates a subscription to one price, charging the default card now unless there is a
    /// trial. Without a trial it starts `incomplete` and becomes `active` when the first
    /// invoice is paid.
    pub fn subscribe(
        &mut self,
        customer: &str,
        id: &str,
        price: &str,
        quantity: u64,
        trial_days: Option<u32>,
    ) -> Result<(), SimError> {
        self.customer(customer)?;
        let interval = self.price(price)?.interval;
        if self.subscriptions.contains_key(id) {
            return Err(SimError::AlreadyExists(id.to_owned()));
        }
        if quantity == 0 {
            return Err(SimError::Invalid("quantity must be at least 1".to_owned()));
        }
        let now = self.now;
        if trial_days.is_some_and(|d| d > MAX_TRIAL_DAYS) {
            return Err(SimError::Invalid(format!(
                "trials last at most {MAX_TRIAL_DAYS} days"
            )));
        }
        let trial_end = trial_days
            .filter(|d| *d > 0)
            .map(|d| now + Duration::days(i64::from(d)));
        let paid = self.price(price)?.unit_amount > 0;
        if trial_end.is_none() && paid && self.customer(customer)?.default_payment_method.is_none()
        {
            return Err(SimError::NoPaymentMethod(customer.to_owned()));
        }
        let anchor = trial_end.unwrap_or(now);
        let item_id = self.next_id("si");
        let subscription = Subscription {
            id: id.to_owned(),
            customer: customer.to_owned(),
            status: if trial_end.is_some() {
                SubscriptionStatus::Trialing
            } else {
                SubscriptionStatus::Incomplete
            },
            items: vec![SubscriptionItem {
                id: item_id,
                price: price.to_owned(),
                quantity,
            }],
            created: now,
            billing_cycle_anchor: anchor,
            current_period_start: now,
            current_period_end: trial_end.unwrap_or_else(|| self.period_end(anchor, interval, 1)),
            trial_start: trial_end.map(|_| now),
            trial_end,
            trial_will_end_sent: false,
            cancel_at_period_end: false,
            cancel_at: None,
            canceled_at: None,
            ended_at: None,
            pause_collection: None,
            latest_invoice: None,
            scheduled_price: None,
        };
        let (amount, currency) = if trial_end.is_some() {
            (0, self.price(price)?.currency.clone())
        } else {
            self.amount_of(&subscription)
        };
        let period = (
            subscription.current_period_start,
            subscription.current_period_end,
        );
        self.subscriptions.insert(id.to_owned(), subscription);
        let invoice = self.new_invoice(
            customer,
            id,
            "subscription_create",
            amount,
            &currency,
            period,
        );
        if let Some(record) = self.subscriptions.get_mut(id) {
            record.latest_invoice = Some(invoice.clone());
        }
        let rendered = self.render_subscription(id)?;
        self.emit("customer.subscription.created", rendered, None);
        self.emit_invoice_created_and_finalized(&invoice)?;
        if trial_end.is_some() {
            // A trial's first invoice is for nothing and is paid at once.
            self.mark_paid(&invoice)?;
            self.sync_entitlement_summary(customer);
            return Ok(());
        }
        if self.attempt_payment(&invoice)? == Attempt::Paid {
            self.update_subscription(id, |s| s.status = SubscriptionStatus::Active)?;
        }
        self.sync_entitlement_summary(customer);
        Ok(())
    }

    /// Changes the subscription's price now. `always_invoice` bills the prorated difference at
    /// once; `create_prorations` and `none` bill nothing now.
    pub fn change_price_now(
        &mut self,
        subscription: &str,
        price: &str,
        proration_behavior: &str,
    ) -> Result<(), SimError> {
        let new_price = self.price(price)?.clone();
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        if !matches!(
            proration_behavior,
            "always_invoice" | "create_prorations" | "none"
        ) {
            return Err(SimError::Invalid(format!(
                "proration_behavior `{proration_behavior}` is not always_invoice, create_prorations or none"
            )));
        }
        let (old_amount, _) = self.amount_of(&current);
        let quantity = current.items.first().map_or(1, |item| item.quantity);
        self.update_subscription(subscription, |s| {
            if let Some(item) = s.items.first_mut() {
                item.price = price.to_owned();
            }
            s.scheduled_price = None;
        })?;
        if proration_behavior != "always_invoice" {
            return Ok(());
        }
        let new_amount = new_price
            .unit_amount
            .saturating_mul(i64::try_from(quantity).unwrap_or(i64::MAX));
        let period = (current.current_period_end - current.current_period_start)
            .num_seconds()
            .max(1);
        let remaining = (current.current_period_end - self.now)
            .num_seconds()
            .clamp(0, period);
        let difference =
            i128::from(new_amount - old_amount).max(0) * i128::from(remaining) / i128::from(period);
        let amount = i64::try_from(difference).unwrap_or(i64::MAX);
        let invoice = self.new_invoice(
            &current.customer,
            subscription,
            "subscription_update",
            amount,
            &new_price.currency,
            (self.now, current.current_period_end),
        );
        self.subscriptions
            .get_mut(subscription)
            .ok_or_else(|| not_found("subscription", subscription))?
            .latest_invoice = Some(invoice.clone());
        self.emit_invoice_created_and_finalized(&invoice)?;
        if amount == 0 {
            self.mark_paid(&invoice)?;
        } else {
            let outcome = self.attempt_payment(&invoice)?;
            self.after_renewal_attempt(subscription, outcome)?;
        }
        Ok(())
    }

    /// Records a price change for the end of the current period, as a schedule's next phase
    /// does (`POST /v1/subscription_schedules/…`), without an event of its own.
    pub fn schedule_price_change(
        &mut self,
        subscription: &str,
        price: &str,
    ) -> Result<(), SimError> {
        self.price(price)?;
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        self.subscriptions
            .get_mut(subscription)
            .ok_or_else(|| not_found("subscription", subscription))?
            .scheduled_price = Some(price.to_owned());
        Ok(())
    }

    /// Changes the price when the current period ends (a subscription schedule). Returns the
    /// schedule's id.
    pub fn change_price_at_period_end(
        &mut self,
        subscription: &str,
        price: &str,
    ) -> Result<String, SimError> {
        self.schedule_change(subscription, price, None)
    }

    /// Schedules `price` for the end of the current period on schedule `schedule_id` (a new
    /// schedule when `None`), and emits the schedule as Stripe does.
    pub fn schedule_change(
        &mut self,
        subscription: &str,
        price: &str,
        schedule_id: Option<&str>,
    ) -> Result<String, SimError> {
        self.schedule_price_change(subscription, price)?;
        let existing = self.schedules.get(subscription).cloned();
        let (id, event_type) = match (schedule_id, existing) {
            (Some(id), _) => (id.to_owned(), "subscription_schedule.updated"),
            (None, Some(id)) => (id, "subscription_schedule.updated"),
            (None, None) => (self.next_id("sub_sched"), "subscription_schedule.created"),
        };
        self.schedules.insert(subscription.to_owned(), id.clone());
        self.schedule_subscriptions
            .insert(id.clone(), subscription.to_owned());
        let current = self.subscription(subscription)?.clone();
        let rendered =
            render::schedule(&id, &current, Some(price), false, self.now, &self.clock_id);
        self.emit(event_type, rendered, None);
        Ok(id)
    }

    fn ensure_live(&self, subscription: &Subscription) -> Result<(), SimError> {
        if subscription.status.is_ended() {
            return Err(SimError::Invalid(format!(
                "subscription `{}` has ended ({})",
                subscription.id,
                subscription.status.as_str()
            )));
        }
        Ok(())
    }

    pub fn cancel_at_period_end(&mut self, subscription: &str) -> Result<(), SimError> {
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        let now = self.now;
        self.update_subscription(subscription, |s| {
            s.cancel_at_period_end = true;
            s.cancel_at = Some(s.current_period_end);
            s.canceled_at = Some(now);
        })
    }

    /// Cancels at a set moment (`cancel_at`), which must be in the future.
    pub fn cancel_at(&mut self, subscription: &str, at: DateTime<Utc>) -> Result<(), SimError> {
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        if at <= self.now {
            return Err(SimError::Invalid(format!(
                "cancel_at {at} is not in the future"
            )));
        }
        self.update_subscription(subscription, |s| {
            s.cancel_at_period_end = false;
            s.cancel_at = Some(at);
        })
    }

    pub fn undo_cancel(&mut self, subscription: &str) -> Result<(), SimError> {
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        if !current.cancel_at_period_end && current.cancel_at.is_none() {
            return Err(SimError::Invalid(format!(
                "subscription `{subscription}` is not set to cancel"
            )));
        }
        self.update_subscription(subscription, |s| {
            s.cancel_at_period_end = false;
            s.cancel_at = None;
            s.canceled_at = None;
        })
    }

    /// `DELETE /v1/customers/{id}`: Stripe cancels the customer's live subscriptions at once
    /// (a `customer.subscription.deleted` each), then sends `customer.deleted` carrying the
    /// customer's last state. A deleted customer stays deleted.
    pub fn delete_customer(&mut self, id: &str) -> Result<(), SimError> {
        if self.customer(id)?.deleted {
            return Err(not_found("customer", id));
        }
        let live: Vec<String> = self
            .subscriptions
            .values()
            .filter(|s| s.customer == id && !s.status.is_ended())
            .map(|s| s.id.clone())
            .collect();
        for subscription in live {
            self.end_subscription(&subscription, SubscriptionStatus::Canceled)?;
        }
        let last_state = self.render_customer(id)?;
        if let Some(customer) = self.customers.get_mut(id) {
            customer.deleted = true;
        }
        self.emit("customer.deleted", last_state, None);
        Ok(())
    }

    pub fn cancel_now(&mut self, subscription: &str) -> Result<(), SimError> {
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        self.end_subscription(subscription, SubscriptionStatus::Canceled)
    }

    fn end_subscription(
        &mut self,
        subscription: &str,
        status: SubscriptionStatus,
    ) -> Result<(), SimError> {
        let now = self.now;
        let record = self
            .subscriptions
            .get_mut(subscription)
            .ok_or_else(|| not_found("subscription", subscription))?;
        record.status = status;
        record.ended_at = Some(now);
        record.canceled_at.get_or_insert(now);
        let rendered = self.render_subscription(subscription)?;
        self.emit("customer.subscription.deleted", rendered, None);
        if let Some(customer) = self
            .subscriptions
            .get(subscription)
            .map(|s| s.customer.clone())
        {
            self.sync_entitlement_summary(&customer);
        }
        Ok(())
    }

    /// `pause_collection`: the subscription stays `active`; renewal invoices are kept as
    /// drafts, voided, or marked uncollectible instead of charged.
    pub fn pause_collection(&mut self, subscription: &str, behavior: &str) -> Result<(), SimError> {
        let behavior = PauseBehavior::parse(behavior).ok_or_else(|| {
            SimError::Invalid(format!(
                "pause_collection behavior `{behavior}` is not keep_as_draft, mark_uncollectible or void"
            ))
        })?;
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        self.update_subscription(subscription, |s| s.pause_collection = Some(behavior))
    }

    pub fn resume_collection(&mut self, subscription: &str) -> Result<(), SimError> {
        self.subscription(subscription)?;
        self.update_subscription(subscription, |s| s.pause_collection = None)
    }

    /// The customer completes the 3-D Secure challenge of the latest invoice's payment.
    pub fn complete_3ds(&mut self, subscription: &str) -> Result<(), SimError> {
        let invoice = self.pending_action_invoice(subscription)?;
        let intent_id = self
            .invoices
            .get(&invoice)
            .and_then(|i| i.payment_intent.clone());
        let intent_id = intent_id.ok_or_else(|| not_found("payment_intent", &invoice))?;
        self.succeed_payment(&invoice, &intent_id)?;
        let status = self.subscription(subscription)?.status;
        if matches!(
            status,
            SubscriptionStatus::Incomplete
                | SubscriptionStatus::PastDue
                | SubscriptionStatus::Unpaid
        ) {
            self.update_subscription(subscription, |s| s.status = SubscriptionStatus::Active)?;
        }
        Ok(())
    }

    /// The customer walks away from the 3-D Secure challenge: nothing happens now; the
    /// subscription expires or goes through retries as the clock moves.
    pub fn abandon_3ds(&mut self, subscription: &str) -> Result<(), SimError> {
        self.pending_action_invoice(subscription).map(|_| ())
    }

    fn pending_action_invoice(&self, subscription: &str) -> Result<String, SimError> {
        let latest = self.subscription(subscription)?.latest_invoice.clone();
        let invoice = latest.ok_or_else(|| not_found("invoice of subscription", subscription))?;
        let waiting = self
            .invoices
            .get(&invoice)
            .and_then(|i| i.payment_intent.as_ref())
            .and_then(|pi| self.payment_intents.get(pi))
            .is_some_and(|pi| pi.status == "requires_action");
        if !waiting {
            return Err(SimError::Invalid(format!(
                "the latest invoice of `{subscription}` is not waiting for 3-D Secure authentication"
            )));
        }
        Ok(invoice)
    }

    /// Opens a dispute on the customer's latest successful charge.
    pub fn open_dispute(&mut self, customer: &str) -> Result<String, SimError> {
        let charge = self
            .charges
            .values()
            .filter(|c| c.customer == customer && c.succeeded && !c.disputed)
            .max_by_key(|c| (c.created, c.id.clone()))
            .cloned()
            .ok_or_else(|| {
                SimError::Invalid(format!(
                    "customer `{customer}` has no undisputed successful charge"
                ))
            })?;
        let id = self.next_id("dp");
        let dispute = Dispute {
            id: id.clone(),
            charge: charge.id.clone(),
            payment_intent: charge.payment_intent.clone(),
            amount: charge.amount,
            currency: charge.currency.clone(),
            status: "needs_response",
            created: self.now,
        };
        if let Some(record) = self.charges.get_mut(&charge.id) {
            record.disputed = true;
        }
        let rendered = render::dispute(&dispute);
        self.disputes.insert(id.clone(), dispute);
        self.emit("charge.dispute.created", rendered, None);
        Ok(id)
    }

    /// Closes the customer's open dispute as `won` or `lost`.
    pub fn close_dispute(&mut self, customer: &str, outcome: &str) -> Result<(), SimError> {
        let status = match outcome {
            "won" => "won",
            "lost" => "lost",
            other => {
                return Err(SimError::Invalid(format!(
                    "dispute outcome `{other}` is not won or lost"
                )))
            }
        };
        let charges: Vec<String> = self
            .charges
            .values()
            .filter(|c| c.customer == customer)
            .map(|c| c.id.clone())
            .collect();
        let dispute = self
            .disputes
            .values_mut()
            .find(|d| d.status == "needs_response" && charges.contains(&d.charge))
            .ok_or_else(|| {
                SimError::Invalid(format!("customer `{customer}` has no open dispute"))
            })?;
        dispute.status = status;
        let rendered = render::dispute(dispute);
        self.emit("charge.dispute.closed", rendered, None);
        Ok(())
    }

    // ---- Stripe's Entitlements API ---------------------------------------------------------

    /// Attaches Entitlements API features (lookup keys) to a price's product.
    pub fn set_price_features(
        &mut self,
        price: &str,
        features: Vec<String>,
    ) -> Result<(), SimError> {
        let record = self
            .prices
            .get_mut(price)
            .ok_or_else(|| not_found("price", price))?;
        record.features = features;
        Ok(())
    }

    /// Emits `entitlements.active_entitlement_summary.updated` when the customer's active
    /// features (those of products on subscriptions that are active, trialing or past due)
    /// changed since the last summary.
    pub fn has_schedule(&self, id: &str) -> bool {
        self.schedule_subscriptions.contains_key(id)
    }

    /// `GET /v1/subscription_schedules/{id}`: the schedule now; released once its change took
    /// effect.
    pub fn schedule_json(&self, id: &str) -> Result<Value, SimError> {
        let subscription = self
            .schedule_subscriptions
            .get(id)
            .ok_or_else(|| not_found("subscription_schedule", id))?;
        let current = self.subscription(subscription)?;
        let in_force = self.schedules.get(subscription).map(String::as_str) == Some(id);
        let next_price = current.scheduled_price.as_deref().filter(|_| in_force);
        Ok(render::schedule(
            id,
            current,
            next_price,
            !in_force,
            self.now,
            &self.clock_id,
        ))
    }

    /// `GET /v1/entitlements/active_entitlements?customer=…`: the customer's active
    /// entitlements now, as one list.
    pub fn active_entitlements_json(&self, customer: &str) -> Result<Value, SimError> {
        self.customer(customer)?;
        let summary = render::entitlement_summary(customer, &self.active_features(customer));
        let mut list = summary["entitlements"].clone();
        list["object"] = json!("list");
        Ok(list)
    }

    /// The lookup keys of the features the customer's live subscriptions grant.
    fn active_features(&self, customer: &str) -> std::collections::BTreeSet<String> {
        self.subscriptions
            .values()
            .filter(|s| s.customer == customer)
            .filter(|s| {
                matches!(
                    s.status,
                    SubscriptionStatus::Active
                        | SubscriptionStatus::Trialing
                        | SubscriptionStatus::PastDue
                )
            })
            .flat_map(|s| s.items.iter())
            .filter_map(|item| self.prices.get(&item.price))
            .flat_map(|price| price.features.iter().cloned())
            .collect()
    }

    fn sync_entitlement_summary(&mut self, customer: &str) {
        if self.suppress_summaries {
            return;
        }
        let active = self.active_features(customer);
        let unchanged = self
            .summaries
            .get(customer)
            .map_or(active.is_empty(), |last| *last == active);
        if unchanged {
            return;
        }
        // Like every `*.updated` event, it names what it replaced.
        let replaced = self.summaries.get(customer).cloned().unwrap_or_default();
        let before = render::entitlement_summary(customer, &replaced);
        let rendered = render::entitlement_summary(customer, &active);
        let previous = render::previous_attributes(&before, &rendered);
        self.summaries.insert(customer.to_owned(), active);
        self.emit(
            "entitlements.active_entitlement_summary.updated",
            rendered,
            previous,
        );
    }

    // ---- one-off orders ----------------------------------------------------------------

    /// A one-off payment for an order: a PaymentIntent with `metadata.order_id`, confirmed at
    /// once with the customer's default card.
    pub fn create_order(
        &mut self,
        order_id: &str,
        customer: &str,
        amount: i64,
        currency: &str,
    ) -> Result<(), SimError> {
        self.customer(customer)?;
        if self
            .payment_intents
            .values()
            .any(|pi| pi.order_id.as_deref() == Some(order_id))
        {
            return Err(SimError::AlreadyExists(order_id.to_owned()));
        }
        if amount <= 0 {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` must have a positive amount"
            )));
        }
        let id = self.next_id("pi");
        let intent = PaymentIntent {
            id: id.clone(),
            customer: customer.to_owned(),
            amount,
            currency: currency.to_owned(),
            status: "requires_payment_method",
            invoice: None,
            payment_method: None,
            last_error: None,
            latest_charge: None,
            created: self.now,
            order_id: Some(order_id.to_owned()),
        };
        let rendered = render::payment_intent(&intent);
        self.payment_intents.insert(id, intent);
        self.emit("payment_intent.created", rendered, None);
        self.pay_order(order_id)
    }

    fn order_intent(&self, order_id: &str) -> Result<PaymentIntent, SimError> {
        self.payment_intents
            .values()
            .find(|pi| pi.order_id.as_deref() == Some(order_id))
            .cloned()
            .ok_or_else(|| not_found("order", order_id))
    }

    /// Tries the order's payment again with the customer's current default card.
    pub fn pay_order(&mut self, order_id: &str) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        if matches!(intent.status, "succeeded" | "canceled") {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is already {}",
                intent.status
            )));
        }
        let card = self.card_of(&intent.customer);
        match card.map_or(ChargeResult::Declined("no_payment_method"), Card::charge) {
            ChargeResult::Succeeded => self.succeed_intent(&intent.id),
            ChargeResult::Declined(decline_code) => {
                let charge = self.new_charge(&intent.id, false, Some(decline_code))?;
                if let Some(pi) = self.payment_intents.get_mut(&intent.id) {
                    pi.status = "requires_payment_method";
                    pi.latest_charge = Some(charge);
                    pi.last_error = Some(("card_declined", decline_code));
                }
                self.emit_intent(&intent.id, "payment_intent.payment_failed");
                Ok(())
            }
            ChargeResult::RequiresAction => {
                if let Some(pi) = self.payment_intents.get_mut(&intent.id) {
                    pi.status = "requires_action";
                }
                self.emit_intent(&intent.id, "payment_intent.requires_action");
                Ok(())
            }
        }
    }

    /// The customer completes the 3-D Secure challenge of the order's payment.
    pub fn complete_order_3ds(&mut self, order_id: &str) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        if intent.status != "requires_action" {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is not waiting for 3-D Secure"
            )));
        }
        self.succeed_intent(&intent.id)
    }

    pub fn cancel_order(&mut self, order_id: &str) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        if matches!(intent.status, "succeeded" | "canceled") {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is {} and cannot be canceled",
                intent.status
            )));
        }
        if let Some(pi) = self.payment_intents.get_mut(&intent.id) {
            pi.status = "canceled";
        }
        self.emit_intent(&intent.id, "payment_intent.canceled");
        Ok(())
    }

    /// Refunds the order's payment in full (`charge.refunded`).
    pub fn refund_order(&mut self, order_id: &str) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        let charge_id = intent
            .latest_charge
            .filter(|_| intent.status == "succeeded")
            .ok_or_else(|| {
                SimError::Invalid(format!(
                    "order `{order_id}` has no successful payment to refund"
                ))
            })?;
        let charge = self
            .charges
            .get_mut(&charge_id)
            .ok_or_else(|| not_found("charge", &charge_id))?;
        if charge.refunded {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is already refunded"
            )));
        }
        charge.refunded = true;
        let rendered = render::charge(charge);
        self.emit("charge.refunded", rendered, None);
        Ok(())
    }

    fn succeed_intent(&mut self, intent_id: &str) -> Result<(), SimError> {
        let charge = self.new_charge(intent_id, true, None)?;
        if let Some(pi) = self.payment_intents.get_mut(intent_id) {
            pi.status = "succeeded";
            pi.latest_charge = Some(charge);
            pi.last_error = None;
        }
        self.emit_intent(intent_id, "payment_intent.succeeded");
        Ok(())
    }

    fn emit_intent(&mut self, intent_id: &str, event_type: &str) {
        let rendered = self
            .payment_intents
            .get(intent_id)
            .map(render::payment_intent);
        if let Some(rendered) = rendered {
            self.emit(event_type, rendered, None);
        }
    }

    /// An order's PaymentIntent status, as Stripe reports it.
    pub fn order_status(&self, order_id: &str) -> Result<&'static str, SimError> {
        self.order_intent(order_id).map(|pi| pi.status)
    }

    // ---- invoices and payments ---------------------------------------------------------

    fn new_invoice(
        &mut self,
        customer: &str,
        subscription: &str,
        billing_reason: &'static str,
        amount: i64,
        currency: &str,
        period: (DateTime<Utc>, DateTime<Utc>),
    ) -> String {
        let id = self.next_id("in");
        self.invoices.insert(
            id.clone(),
            Invoice {
                id: id.clone(),
                customer: customer.to_owned(),
                subscription: Some(subscription.to_owned()),
                status: InvoiceStatus::Draft,
                amount_due: amount,
                amount_paid: 0,
                currency: currency.to_owned(),
                attempt_count: 0,
                next_payment_attempt: None,
                billing_reason,
                payment_intent: None,
                created: self.now,
                period_start: period.0,
                period_end: period.1,
                first_failure: None,
            },
        );
        id
    }

    fn emit_invoice_created_and_finalized(&mut self, invoice: &str) -> Result<(), SimError> {
        let draft = self.render_invoice(invoice)?;
        self.emit("invoice.created", draft.clone(), None);
        if let Some(record) = self.invoices.get_mut(invoice) {
            record.status = InvoiceStatus::Open;
        }
        let open = self.render_invoice(invoice)?;
        let previous = render::previous_attributes(&draft, &open);
        self.emit("invoice.finalized", open, previous);
        Ok(())
    }

    fn mark_paid(&mut self, invoice: &str) -> Result<(), SimError> {
        if let Some(record) = self.invoices.get_mut(invoice) {
            record.status = InvoiceStatus::Paid;
            record.amount_paid = record.amount_due;
            record.next_payment_attempt = None;
        }
        let paid = self.render_invoice(invoice)?;
        self.emit("invoice.paid", paid.clone(), None);
        self.emit("invoice.payment_succeeded", paid, None);
        Ok(())
    }

    /// Charges the invoice to the customer's default card, as Stripe's automatic collection.
    fn attempt_payment(&mut self, invoice: &str) -> Result<Attempt, SimError> {
        let record = self
            .invoices
            .get(invoice)
            .cloned()
            .ok_or_else(|| not_found("invoice", invoice))?;
        let intent_id = match &record.payment_intent {
            Some(id) => id.clone(),
            None => {
                let id = self.next_id("pi");
                let intent = PaymentIntent {
                    id: id.clone(),
                    customer: record.customer.clone(),
                    amount: record.amount_due,
                    currency: record.currency.clone(),
                    status: "requires_payment_method",
                    invoice: Some(invoice.to_owned()),
                    payment_method: None,
                    last_error: None,
                    latest_charge: None,
                    created: self.now,
                    order_id: None,
                };
                let rendered = render::payment_intent(&intent);
                self.payment_intents.insert(id.clone(), intent);
                if let Some(r) = self.invoices.get_mut(invoice) {
                    r.payment_intent = Some(id.clone());
                }
                self.emit("payment_intent.created", rendered, None);
                id
            }
        };
        let result = self
            .card_of(&record.customer)
            .map_or(ChargeResult::Declined("no_payment_method"), Card::charge);
        match result {
            ChargeResult::Succeeded => {
                self.succeed_payment(invoice, &intent_id)?;
                Ok(Attempt::Paid)
            }
            ChargeResult::Declined(decline_code) => {
                self.fail_payment(invoice, &intent_id, decline_code)?;
                Ok(Attempt::Failed)
            }
            ChargeResult::RequiresAction => {
                let payment_method = self
                    .customers
                    .get(&record.customer)
                    .and_then(|c| c.default_payment_method.clone());
                if let Some(intent) = self.payment_intents.get_mut(&intent_id) {
                    intent.status = "requires_action";
                    intent.payment_method = payment_method;
                }
                let rendered = self
                    .payment_intents
                    .get(&intent_id)
                    .map(render::payment_intent);
                if let Some(rendered) = rendered {
                    self.emit("payment_intent.requires_action", rendered, None);
                }
                self.bump_attempt(invoice)?;
                let rendered = self.render_invoice(invoice)?;
                self.emit("invoice.payment_action_required", rendered, None);
                Ok(Attempt::RequiresAction)
            }
        }
    }

    fn new_charge(
        &mut self,
        intent_id: &str,
        succeeded: bool,
        decline_code: Option<&'static str>,
    ) -> Result<String, SimError> {
        let intent = self
            .payment_intents
            .get(intent_id)
            .cloned()
            .ok_or_else(|| not_found("payment_intent", intent_id))?;
        let id = self.next_id("ch");
        let charge = Charge {
            id: id.clone(),
            customer: intent.customer.clone(),
            payment_intent: intent_id.to_owned(),
            amount: intent.amount,
            currency: intent.currency.clone(),
            succeeded,
            decline_code,
            disputed: false,
            refunded: false,
            created: self.now,
        };
        let rendered = render::charge(&charge);
        self.charges.insert(id.clone(), charge);
        self.emit(
            if succeeded {
                "charge.succeeded"
            } else {
                "charge.failed"
            },
            rendered,
            None,
        );
        Ok(id)
    }

    fn succeed_payment(&mut self, invoice: &str, intent_id: &str) -> Result<(), SimError> {
        let charge = self.new_charge(intent_id, true, None)?;
        let customer = self
            .invoices
            .get(invoice)
            .map(|i| i.customer.clone())
            .unwrap_or_default();
        let payment_method = self
            .customers
            .get(&customer)
            .and_then(|c| c.default_payment_method.clone());
        if let Some(intent) = self.payment_intents.get_mut(intent_id) {
            intent.status = "succeeded";
            intent.latest_charge = Some(charge);
            intent.last_error = None;
            intent.payment_method = payment_method;
        }
        let rendered = self
            .payment_intents
            .get(intent_id)
            .map(render::payment_intent);
        if let Some(rendered) = rendered {
            self.emit("payment_intent.succeeded", rendered, None);
        }
        self.bump_attempt(invoice)?;
        self.mark_paid(invoice)?;
        let paid = self
            .invoices
            .get(invoice)
            .cloned()
            .ok_or_else(|| not_found("invoice", invoice))?;
        let id = self.next_id("inpay");
        let rendered = render::invoice_payment(&id, &paid, intent_id, self.now);
        self.emit("invoice_payment.paid", rendered, None);
        Ok(())
    }

    fn fail_payment(
        &mut self,
        invoice: &str,
        intent_id: &str,
        decline_code: &'static str,
    ) -> Result<(), SimError> {
        let charge = self.new_charge(intent_id, false, Some(decline_code))?;
        if let Some(intent) = self.payment_intents.get_mut(intent_id) {
            intent.status = "requires_payment_method";
            intent.latest_charge = Some(charge);
            intent.last_error = Some(("card_declined", decline_code));
        }
        let rendered = self
            .payment_intents
            .get(intent_id)
            .map(render::payment_intent);
        if let Some(rendered) = rendered {
            self.emit("payment_intent.payment_failed", rendered, None);
        }
        self.bump_attempt(invoice)?;
        let rendered = self.render_invoice(invoice)?;
        self.emit("invoice.payment_failed", rendered, None);
        Ok(())
    }

    /// Counts an attempt and schedules the next retry for renewal invoices.
    fn bump_attempt(&mut self, invoice: &str) -> Result<(), SimError> {
        let now = self.now;
        let delays = self.policy.retry_after_days.clone();
        let record = self
            .invoices
            .get_mut(invoice)
            .ok_or_else(|| not_found("invoice", invoice))?;
        record.attempt_count += 1;
        // First invoices are not retried: the subscription expires after 23 hours instead.
        if record.billing_reason == "subscription_create" {
            record.next_payment_attempt = None;
            return Ok(());
        }
        let first_failure = *record.first_failure.get_or_insert(now);
        let retry_index = usize::try_from(record.attempt_count)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        record.next_payment_attempt = delays
            .get(retry_index)
            .map(|days| first_failure + Duration::days(*days));
        Ok(())
    }

    // ---- the test clock ----------------------------------------------------------------

    pub fn advance_by(&mut self, by: Duration) -> Result<usize, SimError> {
        let to = self.now.checked_add_signed(by).ok_or_else(|| {
            SimError::Invalid(format!(
                "advancing by {by} leaves the representable calendar"
            ))
        })?;
        self.advance_to(to)
    }

    /// Moves the clock to `to`, running everything that falls due on the way, in time order.
    /// Returns how many things happened.
    pub fn advance_to(&mut self, to: DateTime<Utc>) -> Result<usize, SimError> {
        if to < self.now {
            return Err(SimError::ClockBackwards { now: self.now, to });
        }
        let mut actions = 0;
        while let Some((at, due)) = self.next_due(to) {
            if actions >= MAX_ACTIONS_PER_ADVANCE {
                return Err(SimError::Invalid(
                    "the advance triggered too many actions".to_owned(),
                ));
            }
            self.now = self.now.max(at);
            self.run(due)?;
            actions += 1;
        }
        self.now = to;
        self.advances += 1;
        let mut clock = subledger_stripe::fixtures::resource("test_helpers.test_clock");
        clock["id"] = json!(self.clock_id);
        clock["frozen_time"] = render::ts(to);
        clock["status"] = json!("ready");
        self.emit("test_helpers.test_clock.ready", clock, None);
        Ok(actions)
    }

    fn next_due(&self, until: DateTime<Utc>) -> Option<(DateTime<Utc>, Due)> {
        let mut due: Vec<(DateTime<Utc>, Due)> = Vec::new();
        for s in self.subscriptions.values() {
            match s.status {
                SubscriptionStatus::Incomplete => {
                    due.push((
                        s.created + INCOMPLETE_EXPIRY,
                        Due::ExpireIncomplete(s.id.clone()),
                    ));
                }
                SubscriptionStatus::Trialing => {
                    if let Some(trial_end) = s.trial_end {
                        if !s.trial_will_end_sent {
                            let notice = (trial_end - TRIAL_WILL_END_NOTICE).max(s.created);
                            due.push((notice, Due::TrialWillEnd(s.id.clone())));
                        }
                    }
                    due.push((s.current_period_end, Due::PeriodEnd(s.id.clone())));
                }
                SubscriptionStatus::Active
                | SubscriptionStatus::PastDue
                | SubscriptionStatus::Unpaid => {
                    due.push((s.current_period_end, Due::PeriodEnd(s.id.clone())));
                }
                _ => {}
            }
            // A cancellation at a set date, before the period would end.
            if let Some(cancel_at) = s
                .cancel_at
                .filter(|_| !s.cancel_at_period_end && !s.status.is_ended())
            {
                due.push((cancel_at, Due::CancelAt(s.id.clone())));
            }
        }
        for invoice in self.invoices.values() {
            if invoice.status != InvoiceStatus::Open {
                continue;
            }
            let retrying = invoice
                .subscription
                .as_ref()
                .and_then(|s| self.subscriptions.get(s))
                .is_some_and(|s| {
                    matches!(
                        s.status,
                        SubscriptionStatus::PastDue | SubscriptionStatus::Active
                    )
                });
            if let (Some(at), true) = (invoice.next_payment_attempt, retrying) {
                due.push((at, Due::Retry(invoice.id.clone())));
            }
        }
        due.into_iter().filter(|(at, _)| *at <= until).min()
    }

    fn run(&mut self, due: Due) -> Result<(), SimError> {
        match due {
            Due::CancelAt(id) => self.end_subscription(&id, SubscriptionStatus::Canceled),
            Due::ExpireIncomplete(id) => {
                let latest = self.subscription(&id)?.latest_invoice.clone();
                if let Some(invoice) = latest {
                    self.void_invoice(&invoice)?;
                }
                let now = self.now;
                self.update_subscription(&id, |s| {
                    s.status = SubscriptionStatus::IncompleteExpired;
                    s.ended_at = Some(now);
                })
            }
            Due::TrialWillEnd(id) => {
                if let Some(s) = self.subscriptions.get_mut(&id) {
                    s.trial_will_end_sent = true;
                }
                let rendered = self.render_subscription(&id)?;
                self.emit("customer.subscription.trial_will_end", rendered, None);
                Ok(())
            }
            Due::PeriodEnd(id) => self.end_period(&id),
            Due::Retry(invoice) => self.retry(&invoice),
        }
    }

    fn void_invoice(&mut self, invoice: &str) -> Result<(), SimError> {
        let open = self
            .invoices
            .get(invoice)
            .is_some_and(|i| matches!(i.status, InvoiceStatus::Open | InvoiceStatus::Draft));
        if open {
            if let Some(record) = self.invoices.get_mut(invoice) {
                record.status = InvoiceStatus::Void;
                record.next_payment_attempt = None;
            }
            let rendered = self.render_invoice(invoice)?;
            self.emit("invoice.voided", rendered, None);
        }
        Ok(())
    }

    /// The end of a billing period (or of a trial): cancel if asked, apply a scheduled price,
    /// start the next period and bill it.
    fn end_period(&mut self, id: &str) -> Result<(), SimError> {
        let current = self.subscription(id)?.clone();
        if current.cancel_at_period_end {
            return self.end_subscription(id, SubscriptionStatus::Canceled);
        }
        let ending_trial = current.status == SubscriptionStatus::Trialing;
        if ending_trial && self.card_of(&current.customer).is_none() {
            // A trial that ends without a payment method pauses the subscription, and Stripe
            // sends no entitlement summary update for it (a reported gap, reproduced here).
            self.suppress_summaries = true;
            let paused = self.update_subscription(id, |s| s.status = SubscriptionStatus::Paused);
            self.suppress_summaries = false;
            paused?;
            let rendered = self.render_subscription(id)?;
            self.emit("customer.subscription.paused", rendered, None);
            return Ok(());
        }
        let interval = current
            .scheduled_price
            .as_ref()
            .and_then(|p| self.prices.get(p))
            .map_or_else(|| self.interval_of(&current), |p| p.interval);
        // Count whole periods from the anchor, so month ends never drift.
        let mut periods = 1;
        let mut next_end = self.period_end(current.billing_cycle_anchor, interval, periods);
        while next_end <= current.current_period_end {
            periods += 1;
            next_end = self.period_end(current.billing_cycle_anchor, interval, periods);
        }
        let start = current.current_period_end;
        let paused = current.pause_collection;
        let released_schedule = current
            .scheduled_price
            .as_ref()
            .and_then(|_| self.schedules.remove(id));
        self.update_subscription(id, |s| {
            if let Some(price) = s.scheduled_price.take() {
                if let Some(item) = s.items.first_mut() {
                    item.price = price;
                }
            }
            s.current_period_start = start;
            s.current_period_end = next_end;
            if ending_trial {
                s.status = SubscriptionStatus::Active;
            }
        })?;
        let renewed = self.subscription(id)?.clone();
        if let Some(schedule_id) = released_schedule {
            // The change took effect: the schedule releases the subscription.
            let rendered =
                render::schedule(&schedule_id, &renewed, None, true, self.now, &self.clock_id);
            self.emit("subscription_schedule.released", rendered, None);
        }
        let (amount, currency) = self.amount_of(&renewed);
        let invoice = self.new_invoice(
            &renewed.customer,
            id,
            "subscription_cycle",
            amount,
            &currency,
            (start, next_end),
        );
        if let Some(s) = self.subscriptions.get_mut(id) {
            s.latest_invoice = Some(invoice.clone());
        }
        if let Some(behavior) = paused {
            let draft = self.render_invoice(&invoice)?;
            self.emit("invoice.created", draft, None);
            return match behavior {
                PauseBehavior::KeepAsDraft => Ok(()),
                PauseBehavior::Void => {
                    self.finalize(&invoice)?;
                    self.void_invoice(&invoice)
                }
                PauseBehavior::MarkUncollectible => {
                    self.finalize(&invoice)?;
                    if let Some(record) = self.invoices.get_mut(&invoice) {
                        record.status = InvoiceStatus::Uncollectible;
                    }
                    let rendered = self.render_invoice(&invoice)?;
                    self.emit("invoice.marked_uncollectible", rendered, None);
                    Ok(())
                }
            };
        }
        self.emit_invoice_created_and_finalized(&invoice)?;
        if amount == 0 {
            return self.mark_paid(&invoice);
        }
        if renewed.status == SubscriptionStatus::Unpaid {
            // Unpaid subscriptions keep invoicing but are not charged automatically.
            return Ok(());
        }
        let outcome = self.attempt_payment(&invoice)?;
        self.after_renewal_attempt(id, outcome)
    }

    fn finalize(&mut self, invoice: &str) -> Result<(), SimError> {
        let draft = self.render_invoice(invoice)?;
        if let Some(record) = self.invoices.get_mut(invoice) {
            record.status = InvoiceStatus::Open;
        }
        let open = self.render_invoice(invoice)?;
        let previous = render::previous_attributes(&draft, &open);
        self.emit("invoice.finalized", open, previous);
        Ok(())
    }

    fn after_renewal_attempt(&mut self, id: &str, outcome: Attempt) -> Result<(), SimError> {
        let status = self.subscription(id)?.status;
        match outcome {
            Attempt::Paid
                if matches!(
                    status,
                    SubscriptionStatus::PastDue | SubscriptionStatus::Unpaid
                ) =>
            {
                self.update_subscription(id, |s| s.status = SubscriptionStatus::Active)
            }
            Attempt::Failed | Attempt::RequiresAction if status == SubscriptionStatus::Active => {
                self.update_subscription(id, |s| s.status = SubscriptionStatus::PastDue)
            }
            _ => Ok(()),
        }
    }

    fn retry(&mut self, invoice: &str) -> Result<(), SimError> {
        let subscription = self
            .invoices
            .get(invoice)
            .and_then(|i| i.subscription.clone())
            .ok_or_else(|| not_found("subscription of invoice", invoice))?;
        let outcome = self.attempt_payment(invoice)?;
        self.after_renewal_attempt(&subscription, outcome)?;
        let exhausted = outcome != Attempt::Paid
            && self
                .invoices
                .get(invoice)
                .is_some_and(|i| i.next_payment_attempt.is_none());
        if !exhausted {
            return Ok(());
        }
        match self.policy.when_exhausted {
            WhenRetriesRunOut::Cancel => {
                self.end_subscription(&subscription, SubscriptionStatus::Canceled)
            }
            WhenRetriesRunOut::MarkUnpaid => {
                self.update_subscription(&subscription, |s| s.status = SubscriptionStatus::Unpaid)
            }
            WhenRetriesRunOut::LeavePastDue => Ok(()),
        }
    }
}

fn not_found(kind: &'static str, id: &str) -> SimError {
    SimError::NotFound {
        kind,
        id: id.to_owned(),
    }
}
