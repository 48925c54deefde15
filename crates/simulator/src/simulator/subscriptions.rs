//! Subscriptions: signup, price changes, cancellation, pausing collection, 3-D Secure.

use chrono::{DateTime, Duration, Utc};

use super::{not_found, Attempt, SimError, Simulator};
use crate::model::{
    CancellationReason, Card, ChargeResult, InvoiceLine, MissingPaymentMethod, PauseBehavior,
    PaymentBehavior, PaymentIntentStatus, PendingUpdate, ScheduleStatus, Session, Subscription,
    SubscriptionItem, SubscriptionStatus,
};

/// What `POST /v1/subscriptions` was asked for beyond the customer, price and quantity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SubscribeOptions {
    pub trial_days: Option<u32>,
    pub payment_behavior: PaymentBehavior,
    pub missing_payment_method: MissingPaymentMethod,
}

/// Stripe allows trials of up to 730 days.
const MAX_TRIAL_DAYS: u32 = 730;

/// The longest a pending update waits for its invoice to be paid (Stripe's docs, "Pending
/// updates reference", "Expiration").
const PENDING_UPDATE_EXPIRY: Duration = Duration::hours(23);

impl Simulator {
    /// Creates a subscription with Stripe's defaults: `payment_behavior: allow_incomplete`
    /// and, for a trial, `missing_payment_method: create_invoice`.
    pub fn subscribe(
        &mut self,
        customer: &str,
        id: &str,
        price: &str,
        quantity: u64,
        trial_days: Option<u32>,
    ) -> Result<(), SimError> {
        let options = SubscribeOptions {
            trial_days,
            ..SubscribeOptions::default()
        };
        self.subscribe_with(customer, id, price, quantity, options)
    }

    /// `POST /v1/subscriptions` (API reference, "Create a subscription"; `../shared/STRIPE.md`,
    /// signup). Without a trial, the first invoice is finalized at once and:
    /// - `allow_incomplete`: charged to the default card on-session. When that succeeds the
    ///   subscription is *created* `active` and the payment's events follow a second later;
    ///   otherwise it is created `incomplete` and expires after 23 hours unpaid.
    /// - `default_incomplete`: created `incomplete` with an unconfirmed PaymentIntent; nothing
    ///   is attempted until the client confirms ([`Simulator::confirm_payment`]).
    /// - `error_if_incomplete`: a first payment that would not succeed is a 402 and nothing is
    ///   created.
    ///
    /// A paid subscription without a trial needs a payment method unless the client is to
    /// confirm one (400 `resource_missing`).
    pub fn subscribe_with(
        &mut self,
        customer: &str,
        id: &str,
        price: &str,
        quantity: u64,
        options: SubscribeOptions,
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
        if options.trial_days.is_some_and(|d| d > MAX_TRIAL_DAYS) {
            return Err(SimError::Invalid(format!(
                "trials last at most {MAX_TRIAL_DAYS} days"
            )));
        }
        let trial_end = options
            .trial_days
            .filter(|d| *d > 0)
            .map(|d| now + Duration::days(i64::from(d)));
        let paid = self.price(price)?.unit_amount > 0;
        let charged_now = trial_end.is_none() && paid;
        let behavior = options.payment_behavior;
        let card = self.card_of(customer);
        if charged_now && behavior != PaymentBehavior::DefaultIncomplete && card.is_none() {
            return Err(SimError::NoPaymentMethod(customer.to_owned()));
        }
        let first_charge = card.map(|card| card.charge(Session::On));
        if charged_now && behavior == PaymentBehavior::ErrorIfIncomplete {
            match first_charge {
                Some(ChargeResult::Declined(decline)) => {
                    return Err(SimError::CardDeclined(decline))
                }
                Some(ChargeResult::RequiresAction) => return Err(SimError::RequiresAuthentication),
                _ => {}
            }
        }
        let status = if trial_end.is_some() {
            SubscriptionStatus::Trialing
        } else if !charged_now
            || (behavior != PaymentBehavior::DefaultIncomplete
                && first_charge == Some(ChargeResult::Succeeded))
        {
            SubscriptionStatus::Active
        } else {
            SubscriptionStatus::Incomplete
        };
        let anchor = trial_end.unwrap_or(now);
        let item_id = self.next_id("si");
        let subscription = Subscription {
            id: id.to_owned(),
            customer: customer.to_owned(),
            status,
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
            missing_payment_method: options.missing_payment_method,
            cancellation_reason: None,
            upcoming_sent_for: None,
            pending_update: None,
        };
        // A trial's first invoice bills the items at nothing.
        let (mut lines, currency) = self.lines_of(&subscription);
        if trial_end.is_some() {
            for line in &mut lines {
                line.amount = 0;
            }
        }
        let amount = lines
            .iter()
            .fold(0i64, |total, line| total.saturating_add(line.amount));
        let period = (
            subscription.current_period_start,
            subscription.current_period_end,
        );
        self.subscriptions.insert(id.to_owned(), subscription);
        let invoice = self.new_invoice(
            customer,
            id,
            "subscription_create",
            lines,
            &currency,
            period,
        );
        if let Some(record) = self.subscriptions.get_mut(id) {
            record.latest_invoice = Some(invoice.clone());
        }
        let rendered = self.render_subscription(id)?;
        self.emit("customer.subscription.created", rendered, None);
        self.emit_invoice_created_and_finalized(&invoice)?;
        // The payment's events come a second after the subscription's.
        self.event_lag = Duration::seconds(1);
        let outcome = if amount == 0 {
            // A trial's first invoice (or a free price's) is for nothing and is paid at once.
            self.mark_paid(&invoice)
        } else if behavior == PaymentBehavior::DefaultIncomplete {
            self.open_payment_intent(&invoice).map(|_| ())
        } else {
            self.attempt_payment(&invoice, None, Session::On)
                .map(|_| ())
        };
        self.event_lag = Duration::zero();
        outcome?;
        self.sync_entitlement_summary(customer);
        Ok(())
    }

    /// The client confirms the first invoice's PaymentIntent with a card (Stripe.js
    /// `confirmCardPayment` with a `pm_card_*` test card): the payment is attempted on-session;
    /// when it succeeds the card is attached, made the default, and the subscription becomes
    /// `active`. A declining card fails here, which is where its story happens at Stripe.
    pub fn confirm_payment(&mut self, subscription: &str, test_card: &str) -> Result<(), SimError> {
        let card = Card::from_test_id(test_card)
            .ok_or_else(|| SimError::UnknownCard(test_card.to_owned()))?;
        let current = self.subscription(subscription)?.clone();
        if current.status != SubscriptionStatus::Incomplete {
            return Err(SimError::Invalid(format!(
                "subscription `{subscription}` is {}, not incomplete: it has no payment to confirm",
                current.status.as_str()
            )));
        }
        let invoice = current
            .latest_invoice
            .clone()
            .ok_or_else(|| not_found("invoice of subscription", subscription))?;
        let method = self.new_payment_method(&current.customer, card);
        match self.attempt_payment(&invoice, Some(&method), Session::On)? {
            Attempt::Paid => {
                self.attach_existing(&method)?;
                self.set_default_payment_method(&current.customer, &method)?;
                self.update_subscription(subscription, |s| {
                    s.status = SubscriptionStatus::Active;
                })?;
                self.sync_entitlement_summary(&current.customer);
            }
            Attempt::Failed(_) | Attempt::RequiresAction => {}
        }
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
        self.change_price_now_with(subscription, price, proration_behavior, false)
    }

    /// [`Simulator::change_price_now`], optionally with `payment_behavior:
    /// pending_if_incomplete`: then an `always_invoice` change applies only once its invoice
    /// is paid. When the payment fails the subscription keeps its price and status, and
    /// carries a `pending_update` that expires at the period end or after 23 hours, whichever
    /// is first; then the invoice is voided (Stripe's docs, "Pending updates" and its
    /// reference, "Expiration").
    pub fn change_price_now_with(
        &mut self,
        subscription: &str,
        price: &str,
        proration_behavior: &str,
        pending_if_incomplete: bool,
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
        if current.pending_update.is_some() {
            return Err(SimError::Invalid(format!(
                "subscription `{subscription}` has a pending update; pay or let it expire first"
            )));
        }
        let pending = pending_if_incomplete && proration_behavior == "always_invoice";
        let old_amount = self.amount_of(&current);
        let quantity = current.items.first().map_or(1, |item| item.quantity);
        let apply_price = |s: &mut Subscription| {
            if let Some(item) = s.items.first_mut() {
                item.price = price.to_owned();
            }
            s.scheduled_price = None;
        };
        if proration_behavior != "always_invoice" {
            return self.update_subscription(subscription, apply_price);
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
        let line = InvoiceLine {
            price: price.to_owned(),
            quantity,
            amount,
            proration: true,
            subscription_item: current.items.first().map(|i| i.id.clone()),
        };
        let invoice = self.new_invoice(
            &current.customer,
            subscription,
            "subscription_update",
            vec![line],
            &new_price.currency,
            (self.now, current.current_period_end),
        );
        if pending {
            // A pending update's invoice is the customer's to pay; Smart Retries leave it.
            if let Some(record) = self.invoices.get_mut(&invoice) {
                record.retried = false;
            }
        } else {
            // One `customer.subscription.updated` announces the new price and the invoice
            // that bills it.
            self.update_subscription(subscription, |s| {
                apply_price(s);
                s.latest_invoice = Some(invoice.clone());
            })?;
        }
        self.emit_invoice_created_and_finalized(&invoice)?;
        let outcome = if amount == 0 {
            self.mark_paid(&invoice).map(|()| Attempt::Paid)?
        } else {
            self.attempt_payment(&invoice, None, Session::Off)?
        };
        if !pending {
            return self.after_renewal_attempt(subscription, &invoice, outcome);
        }
        let now = self.now;
        if outcome == Attempt::Paid {
            return self.update_subscription(subscription, |s| {
                apply_price(s);
                s.latest_invoice = Some(invoice);
            });
        }
        let expires_at = current.current_period_end.min(now + PENDING_UPDATE_EXPIRY);
        self.update_subscription(subscription, |s| {
            s.latest_invoice = Some(invoice.clone());
            s.pending_update = Some(PendingUpdate {
                price: price.to_owned(),
                invoice,
                expires_at,
            });
        })
    }

    /// The pending update's invoice was paid: the change applies
    /// (`customer.subscription.pending_update_applied`, and `updated` with the same object).
    pub(super) fn apply_pending_update(&mut self, subscription: &str) -> Result<(), SimError> {
        let Some(pending) = self.subscription(subscription)?.pending_update.clone() else {
            return Ok(());
        };
        self.update_subscription(subscription, |s| {
            if let Some(item) = s.items.first_mut() {
                item.price = pending.price;
            }
            s.pending_update = None;
        })?;
        let rendered = self.render_subscription(subscription)?;
        self.emit(
            "customer.subscription.pending_update_applied",
            rendered,
            None,
        );
        Ok(())
    }

    /// The pending update's time ran out unpaid: its invoice is voided and the update is
    /// discarded (`customer.subscription.pending_update_expired`, and `updated`).
    pub(super) fn expire_pending_update(&mut self, subscription: &str) -> Result<(), SimError> {
        let Some(pending) = self.subscription(subscription)?.pending_update.clone() else {
            return Ok(());
        };
        self.void_invoice(&pending.invoice)?;
        self.update_subscription(subscription, |s| s.pending_update = None)?;
        let rendered = self.render_subscription(subscription)?;
        self.emit(
            "customer.subscription.pending_update_expired",
            rendered,
            None,
        );
        Ok(())
    }

    pub(super) fn ensure_live(&self, subscription: &Subscription) -> Result<(), SimError> {
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
            s.cancellation_reason = Some(CancellationReason::CancellationRequested);
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
            s.cancellation_reason = Some(CancellationReason::CancellationRequested);
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
            s.cancellation_reason = None;
        })
    }

    /// `DELETE /v1/subscriptions/{id}`. An `incomplete` subscription ends
    /// `incomplete_expired`, with `canceled_at` set and its open invoice voided, as Stripe
    /// does (`../shared/STRIPE.md`, cancellation); any other ends `canceled`.
    pub fn cancel_now(&mut self, subscription: &str) -> Result<(), SimError> {
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        if current.status == SubscriptionStatus::Incomplete {
            if let Some(invoice) = &current.latest_invoice {
                self.void_invoice(invoice)?;
            }
            return self.end_subscription(
                subscription,
                SubscriptionStatus::IncompleteExpired,
                Some(CancellationReason::CancellationRequested),
            );
        }
        self.end_subscription(
            subscription,
            SubscriptionStatus::Canceled,
            Some(CancellationReason::CancellationRequested),
        )
    }

    /// Ends the subscription now (`customer.subscription.deleted`), saying why in
    /// `cancellation_details.reason` when there is a reason Stripe names.
    pub(super) fn end_subscription(
        &mut self,
        subscription: &str,
        status: SubscriptionStatus,
        reason: Option<CancellationReason>,
    ) -> Result<(), SimError> {
        let now = self.now;
        let record = self
            .subscriptions
            .get_mut(subscription)
            .ok_or_else(|| not_found("subscription", subscription))?;
        record.status = status;
        record.ended_at = Some(now);
        record.canceled_at.get_or_insert(now);
        if reason.is_some() {
            record.cancellation_reason = reason;
        }
        // Its schedule ends with it.
        if let Some(schedule) = self.schedule_of(subscription) {
            self.end_schedule(&schedule, ScheduleStatus::Canceled)?;
        }
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

    /// `POST /v1/subscriptions/{id}/resume` of a `paused` subscription (API reference, "Resume
    /// a subscription"; `../shared/STRIPE.md`, lifecycle): the billing cycle restarts now and
    /// its invoice is charged at once. Stripe sends `customer.subscription.resumed` and
    /// `customer.subscription.updated` with the same object. When the payment fails the
    /// subscription is `past_due` and the invoice is not retried.
    pub fn resume_subscription(&mut self, subscription: &str) -> Result<(), SimError> {
        let current = self.subscription(subscription)?.clone();
        if current.status != SubscriptionStatus::Paused {
            return Err(SimError::Invalid(format!(
                "subscription `{subscription}` is {}, and only a paused subscription resumes",
                current.status.as_str()
            )));
        }
        let now = self.now;
        let interval = self.interval_of(&current);
        let end = self.period_end(now, interval, 1);
        let (lines, currency) = self.lines_of(&current);
        let amount = self.amount_of(&current);
        let before = self.render_subscription(subscription)?;
        // Stripe's docs do not name a resume invoice's `billing_reason`; the new cycle's is
        // used, and Subledger does not read it.
        let invoice = self.new_invoice(
            &current.customer,
            subscription,
            "subscription_cycle",
            lines,
            &currency,
            (now, end),
        );
        if let Some(record) = self.invoices.get_mut(&invoice) {
            record.retried = false;
        }
        if let Some(s) = self.subscriptions.get_mut(subscription) {
            s.billing_cycle_anchor = now;
            s.current_period_start = now;
            s.current_period_end = end;
            s.latest_invoice = Some(invoice.clone());
            s.status = SubscriptionStatus::Active;
        }
        self.emit_invoice_created_and_finalized(&invoice)?;
        let outcome = if amount == 0 {
            self.mark_paid(&invoice).map(|()| Attempt::Paid)?
        } else {
            self.attempt_payment(&invoice, None, Session::Off)?
        };
        if outcome != Attempt::Paid {
            if let Some(s) = self.subscriptions.get_mut(subscription) {
                s.status = SubscriptionStatus::PastDue;
            }
        }
        let after = self.render_subscription(subscription)?;
        let previous = crate::render::previous_attributes(&before, &after);
        self.emit(
            "customer.subscription.resumed",
            after.clone(),
            previous.clone(),
        );
        self.emit("customer.subscription.updated", after, previous);
        self.sync_entitlement_summary(&current.customer);
        Ok(())
    }

    /// `POST /v1/invoices/{id}/pay` on the subscription's newest open invoice.
    pub fn pay_invoice(&mut self, subscription: &str) -> Result<(), SimError> {
        let invoice = self
            .subscription(subscription)?
            .latest_invoice
            .clone()
            .ok_or_else(|| {
                SimError::Invalid(format!(
                    "subscription `{subscription}` has no open invoice to pay"
                ))
            })?;
        self.pay_invoice_now(&invoice)
    }

    /// `POST /v1/invoices/{id}/pay`: an open invoice charged to the customer's default card
    /// with the customer present (a hosted invoice page).
    pub fn pay_invoice_now(&mut self, invoice: &str) -> Result<(), SimError> {
        let record = self
            .invoices
            .get(invoice)
            .cloned()
            .ok_or_else(|| not_found("invoice", invoice))?;
        if record.status != crate::model::InvoiceStatus::Open {
            return Err(SimError::Invalid(format!(
                "invoice `{invoice}` is {}, and only an open invoice can be paid",
                record.status.as_str()
            )));
        }
        if self.card_of(&record.customer).is_none() {
            return Err(SimError::NoPaymentMethod(record.customer));
        }
        let outcome = self.attempt_payment(invoice, None, Session::On)?;
        if let Some(subscription) = &record.subscription {
            let pending_invoice = self
                .subscription(subscription)?
                .pending_update
                .as_ref()
                .map(|p| p.invoice.clone());
            if pending_invoice.as_deref() == Some(invoice) {
                if outcome == Attempt::Paid {
                    self.apply_pending_update(subscription)?;
                }
                return match outcome {
                    Attempt::Failed(Some(decline)) => Err(SimError::CardDeclined(decline)),
                    _ => Ok(()),
                };
            }
            let status = self.subscription(subscription)?.status;
            self.after_renewal_attempt(subscription, invoice, outcome)?;
            if outcome == Attempt::Paid && status == SubscriptionStatus::Incomplete {
                self.update_subscription(subscription, |s| {
                    s.status = SubscriptionStatus::Active;
                })?;
            }
        }
        // The attempt happened (its events are sent); the request itself answers with the
        // card error, as Stripe's does.
        match outcome {
            Attempt::Failed(Some(decline)) => Err(SimError::CardDeclined(decline)),
            _ => Ok(()),
        }
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
        // A card the client confirmed with is saved once its payment succeeds.
        let confirmed_with = self
            .payment_intents
            .get(&intent_id)
            .and_then(|pi| pi.payment_method.clone())
            .and_then(|pm| self.payment_methods.get(&pm))
            .filter(|pm| !pm.attached)
            .map(|pm| (pm.id.clone(), pm.customer.clone()));
        if let Some((method, customer)) = confirmed_with {
            self.attach_existing(&method)?;
            self.set_default_payment_method(&customer, &method)?;
        }
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

    pub(super) fn pending_action_invoice(&self, subscription: &str) -> Result<String, SimError> {
        let latest = self.subscription(subscription)?.latest_invoice.clone();
        let invoice = latest.ok_or_else(|| not_found("invoice of subscription", subscription))?;
        let waiting = self
            .invoices
            .get(&invoice)
            .and_then(|i| i.payment_intent.as_ref())
            .and_then(|pi| self.payment_intents.get(pi))
            .is_some_and(|pi| pi.status == PaymentIntentStatus::RequiresAction);
        if !waiting {
            return Err(SimError::Invalid(format!(
                "the latest invoice of `{subscription}` is not waiting for 3-D Secure authentication"
            )));
        }
        Ok(invoice)
    }
}
