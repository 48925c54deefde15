//! The test clock: advancing it runs everything that falls due, in time order.

use chrono::{DateTime, Duration, Utc};
use serde_json::json;

use super::{Due, SimError, Simulator};
use crate::model::{CancellationReason, InvoiceStatus, SubscriptionStatus};
use crate::render;

/// How long an `incomplete` subscription waits for its first payment.
const INCOMPLETE_EXPIRY: Duration = Duration::hours(23);
/// `customer.subscription.trial_will_end` comes this long before the trial ends.
const TRIAL_WILL_END_NOTICE: Duration = Duration::days(3);
/// A guard against a simulation bug turning an advance into an endless loop.
const MAX_ACTIONS_PER_ADVANCE: usize = 100_000;

impl Simulator {
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
            Due::PeriodEnd(id) => self.end_period(&id),
            Due::Retry(invoice) => self.retry(&invoice),
        }
    }
}
