//! Subscription schedules: a price change at the end of the current period, the schedule's
//! life through its last phase, and its end (completed, released or canceled).
//!
//! Sources: Stripe's docs, "Subscription schedules" (statuses `active`, `completed`,
//! `released`, `canceled`; `end_behavior: release`) and the event list in the API reference
//! (`subscription_schedule.created|updated|completed|released|canceled`); `../shared/STRIPE.md`.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{not_found, SimError, Simulator};
use crate::model::{Schedule, SchedulePhase, ScheduleStatus};
use crate::render;

impl Simulator {
    /// `POST /v1/subscription_schedules` with `from_subscription`: a schedule with one phase,
    /// the current price until the period ends. Stripe sends `subscription_schedule.created`
    /// and `customer.subscription.updated` (its `schedule` is set).
    pub fn create_schedule(&mut self, subscription: &str) -> Result<String, SimError> {
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        if let Some(existing) = self.schedule_of(subscription) {
            return Err(SimError::Invalid(format!(
                "subscription `{subscription}` is already managed by subscription schedule `{existing}`"
            )));
        }
        let before = self.render_subscription(subscription)?;
        let id = self.next_id("sub_sched");
        let item = current.items.first();
        let schedule = Schedule {
            id: id.clone(),
            subscription: subscription.to_owned(),
            customer: current.customer.clone(),
            phases: vec![SchedulePhase {
                price: item.map(|i| i.price.clone()).unwrap_or_default(),
                quantity: item.map_or(1, |i| i.quantity),
                start: current.current_period_start,
                end: current.current_period_end,
            }],
            status: ScheduleStatus::Active,
            created: self.now,
            ended_at: None,
        };
        self.schedules.insert(id.clone(), schedule);
        self.emit_schedule(&id, "subscription_schedule.created")?;
        self.announce_subscription(subscription, &before)?;
        Ok(id)
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

    /// Schedules `price` for the period after the current one on schedule `schedule_id` (the
    /// subscription's schedule, made first when it has none): the schedule gets a last phase
    /// one period long and Stripe sends `subscription_schedule.updated`.
    pub fn schedule_change(
        &mut self,
        subscription: &str,
        price: &str,
        schedule_id: Option<&str>,
    ) -> Result<String, SimError> {
        let next_interval = self.price(price)?.interval;
        let current = self.subscription(subscription)?.clone();
        self.ensure_live(&current)?;
        let id = match (schedule_id, self.schedule_of(subscription)) {
            (Some(asked), Some(in_force)) if asked != in_force => {
                return Err(SimError::Invalid(format!(
                    "subscription `{subscription}` is managed by schedule `{in_force}`, not `{asked}`"
                )))
            }
            (Some(asked), None) => return Err(not_found("active subscription_schedule", asked)),
            (_, Some(in_force)) => in_force,
            (None, None) => self.create_schedule(subscription)?,
        };
        let start = current.current_period_end;
        let end = self.period_end(start, next_interval, 1);
        let quantity = current.items.first().map_or(1, |i| i.quantity);
        let schedule = self
            .schedules
            .get_mut(&id)
            .ok_or_else(|| not_found("subscription_schedule", &id))?;
        schedule.phases.retain(|p| p.start < start);
        schedule.phases.push(SchedulePhase {
            price: price.to_owned(),
            quantity,
            start,
            end,
        });
        self.subscriptions
            .get_mut(subscription)
            .ok_or_else(|| not_found("subscription", subscription))?
            .scheduled_price = Some(price.to_owned());
        self.emit_schedule(&id, "subscription_schedule.updated")?;
        Ok(id)
    }

    /// `POST /v1/subscription_schedules/{id}/release`: the subscription leaves the schedule
    /// and keeps its current price; a change not yet in force is dropped. The only way a
    /// schedule becomes `released`.
    pub fn release_schedule(&mut self, id: &str) -> Result<(), SimError> {
        let subscription = self.end_schedule(id, ScheduleStatus::Released)?;
        if let Some(s) = self.subscriptions.get_mut(&subscription) {
            s.scheduled_price = None;
        }
        Ok(())
    }

    /// Releases the schedule managing `subscription`.
    pub fn release_schedule_of(&mut self, subscription: &str) -> Result<(), SimError> {
        self.subscription(subscription)?;
        let schedule = self.schedule_of(subscription).ok_or_else(|| {
            SimError::Invalid(format!(
                "subscription `{subscription}` has no subscription schedule to release"
            ))
        })?;
        self.release_schedule(&schedule)
    }

    /// The schedule in force on a subscription.
    pub(super) fn schedule_of(&self, subscription: &str) -> Option<String> {
        self.schedules
            .values()
            .find(|s| s.subscription == subscription && s.status == ScheduleStatus::Active)
            .map(|s| s.id.clone())
    }

    /// When an active schedule's last phase ends.
    pub(super) fn schedule_ends(&self) -> impl Iterator<Item = (DateTime<Utc>, &str)> {
        self.schedules
            .values()
            .filter(|s| s.status == ScheduleStatus::Active)
            .filter_map(|s| s.phases.last().map(|p| (p.end, s.id.as_str())))
    }

    /// Ends a schedule as `status`, with its event, and announces that the subscription is no
    /// longer managed by it. Returns the subscription.
    pub(super) fn end_schedule(
        &mut self,
        id: &str,
        status: ScheduleStatus,
    ) -> Result<String, SimError> {
        let now = self.now;
        let schedule = self
            .schedules
            .get(id)
            .ok_or_else(|| not_found("subscription_schedule", id))?;
        if schedule.status != ScheduleStatus::Active {
            return Err(SimError::Invalid(format!(
                "subscription schedule `{id}` is {}, not active",
                schedule.status.as_str()
            )));
        }
        let subscription = schedule.subscription.clone();
        let before = self.render_subscription(&subscription)?;
        if let Some(schedule) = self.schedules.get_mut(id) {
            schedule.status = status;
            schedule.ended_at = Some(now);
        }
        let event_type = match status {
            ScheduleStatus::Completed => "subscription_schedule.completed",
            ScheduleStatus::Released => "subscription_schedule.released",
            ScheduleStatus::Canceled | ScheduleStatus::Active => "subscription_schedule.canceled",
        };
        self.emit_schedule(id, event_type)?;
        // A canceled subscription's own `deleted` event already tells its end.
        if status != ScheduleStatus::Canceled {
            self.announce_subscription(&subscription, &before)?;
        }
        Ok(subscription)
    }

    fn emit_schedule(&mut self, id: &str, event_type: &str) -> Result<(), SimError> {
        let rendered = self.schedule_json(id)?;
        self.emit(event_type, rendered, None);
        Ok(())
    }

    pub fn has_schedule(&self, id: &str) -> bool {
        self.schedules.contains_key(id)
    }

    /// Every subscription schedule this clock made (ended ones too).
    pub fn schedule_ids(&self) -> impl Iterator<Item = &str> {
        self.schedules.keys().map(String::as_str)
    }

    /// `GET /v1/subscription_schedules/{id}`.
    pub fn schedule_json(&self, id: &str) -> Result<Value, SimError> {
        let schedule = self
            .schedules
            .get(id)
            .ok_or_else(|| not_found("subscription_schedule", id))?;
        Ok(render::schedule(schedule, self.now, &self.clock_id))
    }
}
