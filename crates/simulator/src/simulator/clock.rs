//! The test clock: advancing it runs everything that falls due, in time order.

use chrono::{DateTime, Duration, Months, Utc};

use super::{Due, SimError, Simulator};
use crate::model::{CancellationReason, InvoiceStatus, ScheduleStatus, SubscriptionStatus};

/// How long an `incomplete` subscription waits for its first payment.
const INCOMPLETE_EXPIRY: Duration = Duration::hours(23);
/// `customer.subscription.trial_will_end` comes this long before the trial ends.
const TRIAL_WILL_END_NOTICE: Duration = Duration::days(3);
/// A guard against a simulation bug turning an advance into an endless loop.
const MAX_ACTIONS_PER_ADVANCE: usize = 100_000;

impl Simulator {
    /// One advance by `by` (see [`Simulator::advance_to`]).
    pub fn advance_by(&mut self, by: Duration) -> Result<usize, SimError> {
        let to = self.now.checked_add_signed(by).ok_or_else(|| {
            SimError::Invalid(format!(
                "advancing by {by} leaves the representable calendar"
            ))
        })?;
        self.advance_to(to)
    }

    /// One advance of the test clock to `to`, as `POST /v1/test_helpers/test_clocks/{id}/advance`
    /// makes it: refused beyond two intervals of the shortest subscription on the clock,
    /// announced by `test_helpers.test_clock.advancing`, then everything that falls due on the
    /// way runs in time order, and `test_helpers.test_clock.ready` ends it (Stripe's docs,
    /// "Test clocks": advancing is asynchronous and limited to two intervals). Returns how
    /// many things happened.
    pub fn advance_to(&mut self, to: DateTime<Utc>) -> Result<usize, SimError> {
        if to < self.now {
            return Err(SimError::ClockBackwards { now: self.now, to });
        }
        if let Some(limit) = self.advance_limit().filter(|limit| to > *limit) {
            return Err(SimError::AdvanceTooFar { to, limit });
        }
        let advancing = self.advancing_clock_json(to);
        self.emit("test_helpers.test_clock.advancing", advancing, None);
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
        let ready = self.clock_json();
        self.emit("test_helpers.test_clock.ready", ready, None);
        Ok(actions)
    }

    /// Moves the clock to `to` in as many advances as Stripe requires (each at most two
    /// intervals of the shortest subscription), as a client driving a real test clock does.
    pub fn advance_through(&mut self, to: DateTime<Utc>) -> Result<usize, SimError> {
        if to < self.now {
            return Err(SimError::ClockBackwards { now: self.now, to });
        }
        let mut actions = 0;
        loop {
            let step = self.advance_limit().map_or(to, |limit| limit.min(to));
            actions += self.advance_to(step)?;
            if step >= to {
                return Ok(actions);
            }
        }
    }

    /// The furthest one advance may go: two intervals of the shortest subscription period on
    /// the clock (subscriptions that have not ended), or anywhere without one.
    pub fn advance_limit(&self) -> Option<DateTime<Utc>> {
        let shortest = self
            .subscriptions
            .values()
            .filter(|s| !s.status.is_ended())
            .map(|s| self.interval_of(s).months())
            .min()?;
        self.now.checked_add_months(Months::new(2 * shortest))
    }

    pub(super) fn next_due(&self, until: DateTime<Utc>) -> Option<(DateTime<Utc>, Due)> {
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
            if let Some(pending) = &s.pending_update {
                due.push((pending.expires_at, Due::PendingUpdateExpiry(s.id.clone())));
            }
            if let Some(at) = self.upcoming_renewal_notice(s) {
                due.push((at, Due::UpcomingRenewal(s.id.clone())));
            }
            // A cancellation at a set date, before the period would end.
            if let Some(cancel_at) = s
                .cancel_at
                .filter(|_| !s.cancel_at_period_end && !s.status.is_ended())
            {
                due.push((cancel_at, Due::CancelAt(s.id.clone())));
            }
        }
        for (at, schedule) in self.schedule_ends() {
            due.push((at, Due::ScheduleEnd(schedule.to_owned())));
        }
        for invoice in self.invoices.values() {
            if let (InvoiceStatus::Draft, Some(at)) = (invoice.status, invoice.finalize_at) {
                due.push((at, Due::FinalizeRenewal(invoice.id.clone())));
            }
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

    pub(super) fn run(&mut self, due: Due) -> Result<(), SimError> {
        match due {
            Due::CancelAt(id) => self.end_subscription(
                &id,
                SubscriptionStatus::Canceled,
                Some(CancellationReason::CancellationRequested),
            ),
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
            Due::PendingUpdateExpiry(id) => self.expire_pending_update(&id),
            Due::UpcomingRenewal(id) => self.send_upcoming_invoice(&id),
            Due::ScheduleEnd(id) => self
                .end_schedule(&id, ScheduleStatus::Completed)
                .map(|_| ()),
            Due::PeriodEnd(id) => self.end_period(&id),
            Due::FinalizeRenewal(invoice) => self.finalize_renewal(&invoice),
            Due::Retry(invoice) => self.retry(&invoice),
        }
    }
}
