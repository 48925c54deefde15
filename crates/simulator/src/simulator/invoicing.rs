//! Invoices, payment attempts, renewals at the period end, and Smart Retries.

use chrono::{DateTime, Duration, Utc};

use super::{not_found, Attempt, SimError, Simulator};
use crate::model::{
    CancellationReason, ChargeResult, Decline, Invoice, InvoiceLine, InvoiceStatus,
    MissingPaymentMethod, PauseBehavior, PaymentIntent, PaymentIntentStatus, Session, Subscription,
    SubscriptionStatus, WhenRetriesRunOut,
};
use crate::render;

/// How long a renewal's draft invoice waits before Stripe finalizes and charges it: the
/// account's invoice finalization grace period, 1 hour by default (Stripe's docs, "Configure
/// an invoice finalization grace period"; "How subscriptions work"; `../shared/STRIPE.md`).
pub(super) const RENEWAL_FINALIZATION_DELAY: Duration = Duration::hours(1);

/// How long before a renewal `invoice.upcoming` is sent. Stripe takes it from the account's
/// subscription settings ("Upcoming renewal events"); the simulated account says 7 days.
const UPCOMING_RENEWAL_NOTICE: Duration = Duration::days(7);

impl Simulator {
    pub(super) fn new_invoice(
        &mut self,
        customer: &str,
        subscription: &str,
        billing_reason: &'static str,
        lines: Vec<InvoiceLine>,
        currency: &str,
        period: (DateTime<Utc>, DateTime<Utc>),
    ) -> String {
        let id = self.next_id("in");
        let invoice = Invoice {
            id: id.clone(),
            ..Invoice::draft(
                customer,
                subscription,
                billing_reason,
                lines,
                currency,
                period,
                self.now,
            )
        };
        self.invoices.insert(id.clone(), invoice);
        id
    }

    pub(super) fn emit_invoice_created_and_finalized(
        &mut self,
        invoice: &str,
    ) -> Result<(), SimError> {
        let draft = self.render_invoice(invoice)?;
        self.emit("invoice.created", draft, None);
        self.finalize(invoice)
    }

    pub(super) fn mark_paid(&mut self, invoice: &str) -> Result<(), SimError> {
        if let Some(record) = self.invoices.get_mut(invoice) {
            record.status = InvoiceStatus::Paid;
            record.amount_paid = record.amount_due;
            record.next_payment_attempt = None;
            record.paid_at = Some(self.now);
        }
        let paid = self.render_invoice(invoice)?;
        self.emit("invoice.paid", paid.clone(), None);
        self.emit("invoice.payment_succeeded", paid, None);
        let customer = self.invoices.get(invoice).map(|i| i.customer.clone());
        match customer {
            Some(customer) => self.set_delinquent(&customer, false),
            None => Ok(()),
        }
    }

    /// The invoice's PaymentIntent, made (`payment_intent.created`) if it has none yet.
    pub(super) fn open_payment_intent(&mut self, invoice: &str) -> Result<String, SimError> {
        let record = self
            .invoices
            .get(invoice)
            .cloned()
            .ok_or_else(|| not_found("invoice", invoice))?;
        if let Some(id) = record.payment_intent {
            return Ok(id);
        }
        let id = self.next_id("pi");
        let intent = PaymentIntent {
            id: id.clone(),
            customer: record.customer.clone(),
            amount: record.amount_due,
            currency: record.currency.clone(),
            status: PaymentIntentStatus::RequiresPaymentMethod,
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
        Ok(id)
    }

    /// Charges the invoice to `payment_method`, or to the customer's default one as Stripe's
    /// automatic collection does. Without any payment method there is nothing to charge:
    /// Stripe sends `invoice.payment_failed` with no PaymentIntent and no charge, and does not
    /// retry (`../shared/STRIPE.md`, forgiveness and Smart Retries).
    pub(super) fn attempt_payment(
        &mut self,
        invoice: &str,
        payment_method: Option<&str>,
        session: Session,
    ) -> Result<Attempt, SimError> {
        let customer = self
            .invoices
            .get(invoice)
            .map(|i| i.customer.clone())
            .ok_or_else(|| not_found("invoice", invoice))?;
        let Some((method, card)) =
            self.method_to_charge(&customer, payment_method.map(str::to_owned))
        else {
            self.fail_without_payment_method(invoice)?;
            return Ok(Attempt::Failed(None));
        };
        let intent_id = self.open_payment_intent(invoice)?;
        if let Some(intent) = self.payment_intents.get_mut(&intent_id) {
            intent.payment_method = Some(method);
        }
        match card.charge(session) {
            ChargeResult::Succeeded => {
                self.succeed_payment(invoice, &intent_id)?;
                if let Some(kind) = card.dispute_after_charge() {
                    self.dispute_latest_charge(&intent_id, kind)?;
                }
                Ok(Attempt::Paid)
            }
            ChargeResult::Declined(decline) => {
                self.fail_payment(invoice, &intent_id, decline)?;
                Ok(Attempt::Failed(Some(decline)))
            }
            ChargeResult::RequiresAction => {
                if let Some(intent) = self.payment_intents.get_mut(&intent_id) {
                    intent.status = PaymentIntentStatus::RequiresAction;
                }
                self.emit_intent(&intent_id, "payment_intent.requires_action");
                // Waiting for the customer counts as a failed attempt for retries.
                self.count_attempt(invoice, Some(false))?;
                let rendered = self.render_invoice(invoice)?;
                self.emit("invoice.payment_action_required", rendered, None);
                Ok(Attempt::RequiresAction)
            }
        }
    }

    pub(super) fn succeed_payment(
        &mut self,
        invoice: &str,
        intent_id: &str,
    ) -> Result<(), SimError> {
        let before = self.render_invoice(invoice)?;
        let charge = self.new_charge(intent_id, None)?;
        if let Some(intent) = self.payment_intents.get_mut(intent_id) {
            intent.status = PaymentIntentStatus::Succeeded;
            intent.latest_charge = Some(charge);
            intent.last_error = None;
        }
        self.emit_intent(intent_id, "payment_intent.succeeded");
        self.count_attempt(invoice, None)?;
        self.mark_paid(invoice)?;
        let paid = self
            .invoices
            .get(invoice)
            .cloned()
            .ok_or_else(|| not_found("invoice", invoice))?;
        let id = self.next_id("inpay");
        let rendered = render::invoice_payment(&id, &paid, intent_id, self.now);
        self.emit("invoice_payment.paid", rendered, None);
        self.announce_invoice(invoice, &before)
    }

    /// `invoice.updated` with what changed since `before` (`../shared/STRIPE.md`, renewal:
    /// sent after a payment attempt, paid or failed).
    fn announce_invoice(
        &mut self,
        invoice: &str,
        before: &serde_json::Value,
    ) -> Result<(), SimError> {
        let after = self.render_invoice(invoice)?;
        if let Some(previous) = render::previous_attributes(before, &after) {
            self.emit("invoice.updated", after, Some(previous));
        }
        Ok(())
    }

    pub(super) fn fail_payment(
        &mut self,
        invoice: &str,
        intent_id: &str,
        decline: Decline,
    ) -> Result<(), SimError> {
        let before = self.render_invoice(invoice)?;
        let charge = self.new_charge(intent_id, Some(decline))?;
        if let Some(intent) = self.payment_intents.get_mut(intent_id) {
            intent.status = PaymentIntentStatus::RequiresPaymentMethod;
            intent.latest_charge = Some(charge);
            intent.last_error = Some(decline);
        }
        self.emit_intent(intent_id, "payment_intent.payment_failed");
        self.count_attempt(invoice, Some(decline.is_hard()))?;
        let rendered = self.render_invoice(invoice)?;
        self.emit("invoice.payment_failed", rendered, None);
        self.announce_invoice(invoice, &before)?;
        self.after_automatic_failure(invoice)
    }

    /// An attempt on an invoice whose customer has no payment method: only
    /// `invoice.payment_failed`, and no retry.
    fn fail_without_payment_method(&mut self, invoice: &str) -> Result<(), SimError> {
        let before = self.render_invoice(invoice)?;
        self.count_attempt(invoice, Some(true))?;
        let rendered = self.render_invoice(invoice)?;
        self.emit("invoice.payment_failed", rendered, None);
        self.announce_invoice(invoice, &before)?;
        self.after_automatic_failure(invoice)
    }

    /// A failed automatic payment makes the customer `delinquent`.
    fn after_automatic_failure(&mut self, invoice: &str) -> Result<(), SimError> {
        let customer = self.invoices.get(invoice).map(|i| i.customer.clone());
        match customer {
            Some(customer) => self.set_delinquent(&customer, true),
            None => Ok(()),
        }
    }

    /// Counts an attempt and, after a failure (`Some(final)`), schedules the next retry of a
    /// renewal unless the failure is `final` (a hard decline, no payment method). Smart
    /// Retries choose their own moments (Stripe's docs, "Smart Retries"), so each retry falls
    /// some hours before the policy's whole day, at an hour derived from the invoice.
    pub(super) fn count_attempt(
        &mut self,
        invoice: &str,
        failed: Option<bool>,
    ) -> Result<(), SimError> {
        let now = self.now;
        let delays = self.policy.retry_after_days.clone();
        let record = self
            .invoices
            .get_mut(invoice)
            .ok_or_else(|| not_found("invoice", invoice))?;
        record.attempt_count += 1;
        // First invoices are not retried (the subscription expires after 23 hours instead),
        // nor is the invoice of a resume.
        let retried = failed == Some(false) && record.retried;
        if !retried {
            if failed.is_some() {
                record.first_failure.get_or_insert(now);
            }
            record.next_payment_attempt = None;
            return Ok(());
        }
        let first_failure = *record.first_failure.get_or_insert(now);
        let retry_index = usize::try_from(record.attempt_count)
            .unwrap_or(usize::MAX)
            .saturating_sub(1);
        let early = retry_hours_early(&record.id, record.attempt_count);
        record.next_payment_attempt = delays
            .get(retry_index)
            .map(|days| first_failure + Duration::days(*days) - Duration::hours(early));
        Ok(())
    }

    pub(super) fn void_invoice(&mut self, invoice: &str) -> Result<(), SimError> {
        let open = self
            .invoices
            .get(invoice)
            .is_some_and(|i| matches!(i.status, InvoiceStatus::Open | InvoiceStatus::Draft));
        if open {
            if let Some(record) = self.invoices.get_mut(invoice) {
                record.status = InvoiceStatus::Void;
                record.next_payment_attempt = None;
                record.finalize_at = None;
                record.voided_at = Some(self.now);
            }
            let rendered = self.render_invoice(invoice)?;
            self.emit("invoice.voided", rendered, None);
        }
        Ok(())
    }

    /// The end of a billing period (or of a trial): cancel if asked, apply a scheduled price,
    /// start the next period and bill it.
    pub(super) fn end_period(&mut self, id: &str) -> Result<(), SimError> {
        let current = self.subscription(id)?.clone();
        if current.cancel_at_period_end {
            return self.end_subscription(
                id,
                SubscriptionStatus::Canceled,
                Some(CancellationReason::CancellationRequested),
            );
        }
        let ending_trial = current.status == SubscriptionStatus::Trialing;
        if ending_trial && self.card_of(&current.customer).is_none() {
            match current.missing_payment_method {
                MissingPaymentMethod::Pause => {
                    // Stripe sends no entitlement summary update for a trial that ends paused
                    // (a reported gap, reproduced here).
                    self.suppress_summaries = true;
                    let paused = self.pause_subscription(id);
                    self.suppress_summaries = false;
                    return paused;
                }
                MissingPaymentMethod::Cancel => {
                    return self.end_subscription(id, SubscriptionStatus::Canceled, None);
                }
                // The default: the period rolls over and is invoiced below; the invoice
                // cannot be paid and the subscription goes `past_due`.
                MissingPaymentMethod::CreateInvoice => {}
            }
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
        let mut next = current.clone();
        if let Some(price) = next.scheduled_price.take() {
            if let Some(item) = next.items.first_mut() {
                item.price = price;
            }
        }
        let (lines, currency) = self.lines_of(&next);
        let invoice = self.new_invoice(
            &current.customer,
            id,
            "subscription_cycle",
            lines,
            &currency,
            (start, next_end),
        );
        // One `customer.subscription.updated` announces the new period, the new price and the
        // new `latest_invoice` together.
        self.update_subscription(id, |s| {
            s.items = next.items;
            s.scheduled_price = None;
            s.current_period_start = start;
            s.current_period_end = next_end;
            s.latest_invoice = Some(invoice.clone());
            if ending_trial {
                s.status = SubscriptionStatus::Active;
            }
        })?;
        let draft = self.render_invoice(&invoice)?;
        self.emit("invoice.created", draft, None);
        match paused {
            Some(PauseBehavior::KeepAsDraft) => Ok(()),
            Some(PauseBehavior::Void) => {
                self.finalize(&invoice)?;
                self.void_invoice(&invoice)
            }
            Some(PauseBehavior::MarkUncollectible) => {
                self.finalize(&invoice)?;
                let now = self.now;
                if let Some(record) = self.invoices.get_mut(&invoice) {
                    record.status = InvoiceStatus::Uncollectible;
                    record.marked_uncollectible_at = Some(now);
                }
                let rendered = self.render_invoice(&invoice)?;
                self.emit("invoice.marked_uncollectible", rendered, None);
                Ok(())
            }
            // The draft waits about an hour before it is finalized and charged.
            None => {
                if let Some(record) = self.invoices.get_mut(&invoice) {
                    record.finalize_at = Some(start + RENEWAL_FINALIZATION_DELAY);
                }
                Ok(())
            }
        }
    }

    /// A renewal's draft, an hour old: finalized and, unless nothing is owed or the
    /// subscription no longer collects automatically, charged to the default card.
    pub(super) fn finalize_renewal(&mut self, invoice: &str) -> Result<(), SimError> {
        let record = self
            .invoices
            .get(invoice)
            .cloned()
            .ok_or_else(|| not_found("invoice", invoice))?;
        if record.status != InvoiceStatus::Draft {
            return Ok(());
        }
        self.finalize(invoice)?;
        if record.amount_due == 0 {
            return self.mark_paid(invoice);
        }
        let Some(subscription) = record.subscription else {
            return Ok(());
        };
        let status = self.subscription(&subscription)?.status;
        // Unpaid subscriptions keep invoicing but are not charged automatically, and an ended
        // subscription's invoices are no longer collected.
        if status == SubscriptionStatus::Unpaid || status.is_ended() {
            return Ok(());
        }
        let outcome = self.attempt_payment(invoice, None, Session::Off)?;
        self.after_renewal_attempt(&subscription, invoice, outcome)
    }

    /// When `invoice.upcoming` is due for the subscription's next renewal: a set number of
    /// days before it, for a renewal that will be charged automatically, once per period and
    /// only when the period started before that moment.
    pub(super) fn upcoming_renewal_notice(&self, s: &Subscription) -> Option<DateTime<Utc>> {
        let renews = matches!(
            s.status,
            SubscriptionStatus::Active | SubscriptionStatus::PastDue | SubscriptionStatus::Trialing
        ) && !s.cancel_at_period_end
            && s.cancel_at.is_none_or(|at| at > s.current_period_end)
            && s.pause_collection.is_none();
        let at = s.current_period_end - UPCOMING_RENEWAL_NOTICE;
        (renews && s.upcoming_sent_for != Some(s.current_period_end) && at > s.current_period_start)
            .then_some(at)
    }

    /// `invoice.upcoming`: a preview of the renewal's invoice, which has no id yet (Stripe's
    /// event reference: "the received Invoice object will not have an invoice ID").
    pub(super) fn send_upcoming_invoice(&mut self, id: &str) -> Result<(), SimError> {
        let current = self.subscription(id)?.clone();
        let mut next = current.clone();
        if let Some(price) = next.scheduled_price.take() {
            if let Some(item) = next.items.first_mut() {
                item.price = price;
            }
        }
        let interval = self.interval_of(&next);
        let (lines, currency) = self.lines_of(&next);
        let start = current.current_period_end;
        let mut preview = Invoice::draft(
            &current.customer,
            id,
            "upcoming",
            lines,
            &currency,
            (start, self.period_end(start, interval, 1)),
            start,
        );
        preview.next_payment_attempt = Some(start + RENEWAL_FINALIZATION_DELAY);
        let mut rendered = render::invoice(&preview, &self.clock_id);
        rendered["id"] = serde_json::Value::Null;
        rendered["number"] = serde_json::Value::Null;
        if let Some(s) = self.subscriptions.get_mut(id) {
            s.upcoming_sent_for = Some(start);
        }
        self.emit("invoice.upcoming", rendered, None);
        Ok(())
    }

    pub(super) fn finalize(&mut self, invoice: &str) -> Result<(), SimError> {
        let draft = self.render_invoice(invoice)?;
        let now = self.now;
        if let Some(record) = self.invoices.get_mut(invoice) {
            record.status = InvoiceStatus::Open;
            record.finalize_at = None;
            record.finalized_at = Some(now);
        }
        let open = self.render_invoice(invoice)?;
        let previous = render::previous_attributes(&draft, &open);
        self.emit("invoice.finalized", open, previous);
        Ok(())
    }

    /// The subscription's status after an attempt on one of its invoices: paying the newest
    /// invoice makes it `active` again; a failure on the newest makes an `active` one
    /// `past_due`. Attempts on older invoices leave it alone.
    pub(super) fn after_renewal_attempt(
        &mut self,
        id: &str,
        invoice: &str,
        outcome: Attempt,
    ) -> Result<(), SimError> {
        if !self.is_latest_invoice(id, invoice) {
            return Ok(());
        }
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
            Attempt::Failed(_) | Attempt::RequiresAction
                if matches!(
                    status,
                    SubscriptionStatus::Active | SubscriptionStatus::Trialing
                ) =>
            {
                self.update_subscription(id, |s| s.status = SubscriptionStatus::PastDue)
            }
            _ => Ok(()),
        }
    }

    pub(super) fn retry(&mut self, invoice: &str) -> Result<(), SimError> {
        let subscription = self
            .invoices
            .get(invoice)
            .and_then(|i| i.subscription.clone())
            .ok_or_else(|| not_found("subscription of invoice", invoice))?;
        let outcome = self.attempt_payment(invoice, None, Session::Off)?;
        self.after_renewal_attempt(&subscription, invoice, outcome)?;
        let retries = self.policy.retry_after_days.len();
        let exhausted = outcome != Attempt::Paid
            && self
                .invoices
                .get(invoice)
                .is_some_and(|i| usize::try_from(i.attempt_count).unwrap_or(usize::MAX) > retries);
        // Only the subscription's newest invoice decides its status: when an older one runs
        // out of retries after a newer one was paid, Stripe leaves the status alone.
        if !exhausted || !self.is_latest_invoice(&subscription, invoice) {
            return Ok(());
        }
        match self.policy.when_exhausted {
            WhenRetriesRunOut::Cancel => self.end_subscription(
                &subscription,
                SubscriptionStatus::Canceled,
                Some(CancellationReason::PaymentFailed),
            ),
            WhenRetriesRunOut::MarkUnpaid => {
                self.update_subscription(&subscription, |s| s.status = SubscriptionStatus::Unpaid)
            }
            WhenRetriesRunOut::LeavePastDue => Ok(()),
            WhenRetriesRunOut::Pause => self.pause_subscription(&subscription),
        }
    }

    /// The subscription becomes `paused`: `customer.subscription.updated`, then
    /// `customer.subscription.paused`. Its open invoice stays open and is no longer retried.
    pub(super) fn pause_subscription(&mut self, id: &str) -> Result<(), SimError> {
        self.update_subscription(id, |s| s.status = SubscriptionStatus::Paused)?;
        let rendered = self.render_subscription(id)?;
        self.emit("customer.subscription.paused", rendered, None);
        Ok(())
    }

    pub(super) fn is_latest_invoice(&self, subscription: &str, invoice: &str) -> bool {
        self.subscriptions
            .get(subscription)
            .and_then(|s| s.latest_invoice.as_deref())
            == Some(invoice)
    }
}

/// How many hours (1 to 10) before the policy's day a retry happens: fixed per invoice and
/// attempt, so runs repeat exactly.
fn retry_hours_early(invoice: &str, attempt: u32) -> i64 {
    let seed = invoice
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
        ^ u64::from(attempt);
    let hours = crate::rng::Rng::new(seed).next_u64() % 10;
    i64::try_from(hours).unwrap_or(0) + 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;

    use chrono::{DateTime, Duration, Utc};

    use crate::model::{Card, Interval, RetryPolicy, SubscriptionStatus};
    use crate::Simulator;

    /// Smart Retries do not retry a hard decline (Stripe's docs, "Smart Retries"). No test card
    /// attaches and then fails hard, so the card expires after it was set up, as real cards do.
    #[test]
    fn a_hard_decline_is_not_retried() {
        let start = DateTime::parse_from_rfc3339("2026-01-10T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut sim = Simulator::new(start, RetryPolicy::default());
        sim.create_price("price_pro", 2000, "usd", Interval::Month, None)
            .unwrap();
        sim.create_customer("cus_a", BTreeMap::new()).unwrap();
        let card = sim.attach_card("cus_a", "pm_card_visa").unwrap();
        sim.subscribe("cus_a", "sub_a", "price_pro", 1, None)
            .unwrap();
        if let Some(method) = sim.payment_methods.get_mut(&card) {
            method.card = Card::ExpiredCard;
        }
        // The renewal is charged an hour after the period ends.
        sim.advance_by(Duration::days(31) + Duration::hours(1))
            .unwrap();
        let renewal = sim.invoices_of("sub_a")[1].clone();
        assert_eq!(renewal.attempt_count, 1);
        assert_eq!(renewal.next_payment_attempt, None);
        sim.advance_by(Duration::days(25)).unwrap();
        assert_eq!(
            sim.invoices_of("sub_a")[1].attempt_count,
            1,
            "never retried"
        );
        assert_eq!(
            sim.subscription("sub_a").unwrap().status,
            SubscriptionStatus::PastDue
        );
    }
}
