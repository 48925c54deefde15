//! Subscription schedules: a price change at the end of the current period.

use serde_json::Value;

use super::{not_found, SimError, Simulator};
use crate::render;

impl Simulator {
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
}
