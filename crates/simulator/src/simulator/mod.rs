//! The simulated account: its state, ids and events. Operations live in one module per Stripe
//! area; each adds to [`Simulator`]'s methods.

mod catalog;
mod clock;
mod customers;
mod entitlements;
mod invoicing;
mod payments;
mod schedules;
mod subscriptions;

pub use subscriptions::SubscribeOptions;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use crate::model::{
    Card, Charge, Customer, Decline, Dispute, Invoice, PaymentIntent, PaymentMethod, Price,
    RetryPolicy, Schedule, Subscription,
};
use crate::render;

/// A request the simulated Stripe refuses, as Stripe would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("no such {kind}: `{id}`")]
    NotFound { kind: &'static str, id: String },
    #[error("`{0}` already exists")]
    AlreadyExists(String),
    #[error("`{0}` is not a Stripe test card (expected one of: {list})", list = Card::test_ids().collect::<Vec<_>>().join(", "))]
    UnknownCard(String),
    #[error("test clocks only move forward: {to} is before the clock's {now}")]
    ClockBackwards {
        now: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    /// An advance beyond two intervals of the shortest subscription on the clock.
    #[error("the test clock can be advanced at most two intervals of its shortest subscription at a time: to {limit}, not {to}")]
    AdvanceTooFar {
        to: DateTime<Utc>,
        limit: DateTime<Utc>,
    },
    #[error("{0}")]
    Invalid(String),
    /// A paid subscription without a trial for a customer with no payment method: Stripe
    /// answers 400 `resource_missing` and creates nothing (`../shared/STRIPE.md`, signup).
    #[error("customer `{0}` has no attached payment source or default payment method")]
    NoPaymentMethod(String),
    /// A card error (HTTP 402): a declining test card refused when attached, or a first
    /// payment that failed under `payment_behavior: error_if_incomplete`.
    #[error("{message}", message = crate::render::decline_text(*.0))]
    CardDeclined(Decline),
    /// `error_if_incomplete` and the first payment needs authentication (HTTP 402).
    #[error("the subscription's first payment requires authentication; nothing was created")]
    RequiresAuthentication,
}

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
    /// Every subscription schedule ever made (ended ones too), by id.
    schedules: BTreeMap<String, Schedule>,
    /// The last Entitlements API summary sent per customer (feature lookup keys).
    summaries: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// Stripe's known gap: no summary update when a trial ends paused.
    suppress_summaries: bool,
    /// How far after the clock's time events are stamped: the events of one operation span
    /// more than one second at Stripe (`../shared/STRIPE.md`, delivery and renewal).
    event_lag: Duration,
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
    /// A pending update's time runs out (before a period end at the same moment).
    PendingUpdateExpiry(String),
    /// `invoice.upcoming`, some days before a renewal.
    UpcomingRenewal(String),
    /// A schedule's last phase ends (before the subscription's period end at the same
    /// moment: the renewal is no longer the schedule's).
    ScheduleEnd(String),
    PeriodEnd(String),
    /// A renewal's draft invoice is finalized and charged.
    FinalizeRenewal(String),
    Retry(String),
}

/// How a payment attempt on an invoice went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Paid,
    /// Declined by the card, or (`None`) there was no payment method to charge.
    Failed(Option<Decline>),
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
            summaries: BTreeMap::new(),
            suppress_summaries: false,
            event_lag: Duration::zero(),
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

    /// Ids sort in creation order: a prefix, the space, and a zero-padded counter.
    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        if self.space == 0 {
            format!("{prefix}_sim{:010}", self.counter)
        } else {
            format!("{prefix}_sim{}x{:010}", self.space, self.counter)
        }
    }

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

    /// The test clock object. Advances here finish within the request, so it is `ready`
    /// whenever it is read.
    pub fn clock_json(&self) -> Value {
        let mut clock = subledger_stripe::fixtures::resource("test_helpers.test_clock");
        clock["id"] = json!(self.clock_id);
        clock["frozen_time"] = render::ts(self.now);
        clock["status"] = json!("ready");
        clock["name"] = json!(self.name);
        clock["livemode"] = json!(false);
        clock
    }

    /// The test clock as an advance to `to` shows it while it runs.
    pub fn advancing_clock_json(&self, to: DateTime<Utc>) -> Value {
        let mut clock = self.clock_json();
        clock["status"] = json!("advancing");
        clock["status_details"] = json!({ "advancing": { "target_frozen_time": to.timestamp() } });
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
        let mut event = json!({
            "id": id,
            "object": "event",
            "api_version": render::API_VERSION,
            "created": (self.now + self.event_lag).timestamp(),
            "data": data,
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": event_type,
        });
        // Stripe's docs, "Connect webhooks": every event of a connected account carries a
        // top-level `account`; the platform's own events have none.
        if let Some(account) = self.account_of(&event["data"]["object"]) {
            event["account"] = json!(account);
        }
        self.events.push(event);
    }

    /// The connected account customer `id` belongs to; `None` for the platform's own (and for
    /// a customer this Stripe does not know).
    pub fn account_of_customer(&self, id: &str) -> Option<&str> {
        self.customers.get(id)?.account.as_deref()
    }

    /// Whose object `id` (a customer, subscription, invoice, schedule or PaymentIntent) is:
    /// `Some(account)` (`Some(None)`: the platform's own) when this clock holds it, `None`
    /// when it does not.
    pub fn owner_of_id(&self, id: &str) -> Option<Option<&str>> {
        let customer = if self.customers.contains_key(id) {
            id
        } else if let Some(subscription) = self.subscriptions.get(id) {
            subscription.customer.as_str()
        } else if let Some(invoice) = self.invoices.get(id) {
            invoice.customer.as_str()
        } else if let Some(schedule) = self.schedules.get(id) {
            schedule.customer.as_str()
        } else {
            self.payment_intents.get(id)?.customer.as_str()
        };
        Some(self.account_of_customer(customer))
    }

    /// The connected account whose order `order_id` is (its PaymentIntent's customer's).
    pub fn account_of_order(&self, order_id: &str) -> Option<&str> {
        let intent = self
            .payment_intents
            .values()
            .find(|pi| pi.order_id.as_deref() == Some(order_id))?;
        self.account_of_customer(&intent.customer)
    }

    /// The connected account `object` (as rendered) lives in: its customer's, found through
    /// the customer, PaymentIntent or invoice it names. `None` for the platform's own objects
    /// and for objects of no customer (prices, test clocks).
    pub fn account_of(&self, object: &Value) -> Option<String> {
        let named = |field: &str| object.get(field).and_then(Value::as_str);
        let customer = if named("object") == Some("customer") {
            named("id")
        } else if let Some(customer) = named("customer") {
            Some(customer)
        } else if let Some(intent) = named("payment_intent") {
            self.payment_intents
                .get(intent)
                .map(|p| p.customer.as_str())
        } else {
            named("invoice")
                .and_then(|invoice| self.invoices.get(invoice).map(|i| i.customer.as_str()))
        }?;
        self.customers.get(customer)?.account.clone()
    }

    fn render_subscription(&self, id: &str) -> Result<Value, SimError> {
        let subscription = self.subscription(id)?;
        let prices = |price: &str| self.prices.get(price).map(render::price);
        let mut object = render::subscription(subscription, &prices, &self.clock_id);
        object["schedule"] = json!(self.schedule_of(id));
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
        self.announce_subscription(id, &before)
    }

    /// Emits `customer.subscription.updated` with what changed since `before`, if anything.
    fn announce_subscription(&mut self, id: &str, before: &Value) -> Result<(), SimError> {
        let after = self.render_subscription(id)?;
        if let Some(previous) = render::previous_attributes(before, &after) {
            self.emit("customer.subscription.updated", after, Some(previous));
        }
        if let Some(customer) = self.subscriptions.get(id).map(|s| s.customer.clone()) {
            self.sync_entitlement_summary(&customer);
        }
        Ok(())
    }
}

fn not_found(kind: &'static str, id: &str) -> SimError {
    SimError::NotFound {
        kind,
        id: id.to_owned(),
    }
}
