//! Subscriptions: signup, price changes, cancellation, pausing collection, 3-D Secure.

use chrono::{DateTime, Duration, Utc};

use super::{not_found, Attempt, SimError, Simulator};
use crate::model::{
    PauseBehavior, PaymentIntentStatus, Subscription, SubscriptionItem, SubscriptionStatus,
};

/// Stripe allows trials of up to 730 days.
const MAX_TRIAL_DAYS: u32 = 730;

impl Simulator {
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

    pub fn cancel_now(&mut self, subscription: &str) -> Result<(), SimError> {
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        self.end_subscription(subscription, SubscriptionStatus::Canceled)
    }

    pub(super) fn end_subscription(
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
