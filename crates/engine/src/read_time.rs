//! When a fact read from Stripe's API happened, in Stripe's time.
//!
//! A fetched object is recorded as Stripe's answer at the moment it was read, so that a later
//! webhook is judged against it (older: no effect, newer: applied). For an object on a test
//! clock that moment is the clock's `frozen_time`, not the wall clock: the events of test-clock
//! objects carry frozen time (Stripe's test clocks docs), and a snapshot dated at wall time
//! would outrank every event the clock emits afterwards. An object not on a test clock (or one
//! Stripe does not say the clock of, such as a PaymentIntent) was read now.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use subledger_stripe_client::{ApiError, StripeReader};

/// Frozen times of the test clocks seen in one run, and the clock of each customer.
#[derive(Debug, Default)]
pub(crate) struct ReadTime {
    clocks: HashMap<String, DateTime<Utc>>,
    customers: HashMap<String, String>,
}

impl ReadTime {
    /// When `object` (or, for an entitlement list, customer `owner`'s) was read.
    pub(crate) async fn of(
        &mut self,
        reader: &StripeReader,
        object: &Value,
        owner: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, ApiError> {
        let clock = object
            .get("test_clock")
            .and_then(|c| c.as_str().or_else(|| c.get("id").and_then(Value::as_str)))
            .map(str::to_owned);
        if let (Some(clock), Some("customer"), Some(id)) = (
            &clock,
            object.get("object").and_then(Value::as_str),
            object.get("id").and_then(Value::as_str),
        ) {
            self.customers.insert(id.to_owned(), clock.clone());
        }
        let clock = clock.or_else(|| owner.and_then(|c| self.customers.get(c).cloned()));
        let Some(clock) = clock else {
            return Ok(now);
        };
        if let Some(frozen) = self.clocks.get(&clock) {
            return Ok(*frozen);
        }
        let found = reader.retrieve("test_helpers/test_clocks", &clock).await?;
        let frozen = found
            .get("frozen_time")
            .and_then(Value::as_i64)
            .and_then(|t| DateTime::from_timestamp(t, 0))
            .ok_or_else(|| {
                ApiError::Unexpected(format!("test clock `{clock}` has no frozen_time"))
            })?;
        self.clocks.insert(clock, frozen);
        Ok(frozen)
    }
}
