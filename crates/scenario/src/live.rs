//! Scenario files against Stripe itself: test mode, real test clocks, through async-stripe
//! (`subledger scenario run --stripe`), with a running Subledger receiving Stripe's webhooks
//! (forwarded by `stripe listen`).
//!
//! Stripe's limits shape the run: at most three customers per test clock (more clocks are
//! made and advanced together), each advance at most two intervals of the shortest
//! subscription period on the clock (longer advances are split), and advancing is
//! asynchronous (each clock is polled until `ready`). Expectations are polled until the
//! webhooks have arrived and been applied, or the settle timeout passes. Every mutating call
//! has a deterministic idempotency key derived from the run and the step.
//!
//! The same code runs against Subledger's simulator by pointing the client at its base URL,
//! which is how it is tested.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Months, Utc};
use serde_json::Value;
use subledger_simulator::delivery::http_request;
use subledger_simulator::model::Interval;
use subledger_stripe_client::{ApiError, StripeApi};

use crate::format::{Action, Expectation, Scenario};
use crate::runner::{check_entitlements, ScenarioReport, StepReport};

#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub api: StripeApi,
    /// The running Subledger whose answers are checked (`host:port`).
    pub engine: SocketAddr,
    /// A bearer token for its `/v1` API, if it requires one.
    pub engine_token: Option<String>,
    /// How long an expectation may wait for webhooks to arrive and be applied.
    pub settle_timeout: Duration,
    /// How long a test clock may take to become `ready` after an advance.
    pub clock_timeout: Duration,
    pub poll_interval: Duration,
}

const CUSTOMERS_PER_CLOCK: usize = 3;

struct Clock {
    id: String,
    customers: usize,
}

struct LiveRun<'a> {
    options: &'a LiveOptions,
    /// Prefixes idempotency keys: the scenario file, so scenarios of one run never share keys.
    scope: String,
    now: DateTime<Utc>,
    clocks: Vec<Clock>,
    ids: HashMap<String, String>,
    price_intervals: HashMap<String, Interval>,
    subscription_intervals: HashMap<String, Interval>,
    advances: u64,
}

/// Plays `scenario` against Stripe's API. Steps Stripe's API cannot drive (completing 3-D
/// Secure, opening disputes, scheduled downgrades) fail with a message saying so.
pub async fn run_live(scenario: &Scenario, options: &LiveOptions) -> ScenarioReport {
    let started = Instant::now();
    let mut run = LiveRun {
        options,
        scope: scope(scenario),
        now: scenario.start,
        clocks: Vec::new(),
        ids: HashMap::new(),
        price_intervals: HashMap::new(),
        subscription_intervals: HashMap::new(),
        advances: 0,
    };
    let mut steps = Vec::new();
    let mut setup = StepReport::price_setup(scenario.prices.len());
    for price in &scenario.prices {
        if !price.features.is_empty() {
            setup.failures.push(format!(
                "price {}: Entitlements API features are not set up against Stripe by this runner (run this scenario on the simulator)",
                price.id
            ));
            continue;
        }
        let yearly = price.interval == Interval::Year;
        let key = format!("{}:price:{}", scope(scenario), price.id);
        match options
            .api
            .create_price(
                &key,
                price.amount,
                &price.currency,
                yearly,
                price.lookup_key.as_deref(),
                &price.id,
            )
            .await
        {
            Ok(id) => {
                run.ids.insert(price.id.clone(), id);
                run.price_intervals.insert(price.id.clone(), price.interval);
            }
            Err(error) => setup.failures.push(format!("price {}: {error}", price.id)),
        }
    }
    let mut stopped = !setup.failures.is_empty();
    steps.push(setup);
    for step in &scenario.steps {
        if stopped {
            break;
        }
        let mut report = StepReport::of(step);
        let outcome = match &step.action {
            Action::Expect(expectation) => {
                report.failures = run.expect(expectation).await;
                Ok(())
            }
            action => run.apply(action, step.line).await,
        };
        if let Err(error) = outcome {
            report.failures.push(error);
            stopped = true;
        }
        steps.push(report);
    }
    ScenarioReport {
        file: scenario.path.display().to_string(),
        name: scenario.name.clone(),
        delivery: subledger_simulator::delivery::DeliveryMode::InOrder,
        seed: 0,
        steps,
        elapsed: started.elapsed(),
        advances: run.advances,
        events: 0,
        delivery_stats: Default::default(),
        final_views: String::new(),
        against_stripe: true,
    }
}

fn stripe_failed(error: ApiError) -> String {
    format!("Stripe: {error}")
}

/// The scenario's file name, which scopes its idempotency keys within a run.
fn scope(scenario: &Scenario) -> String {
    scenario.path.file_stem().map_or_else(
        || scenario.name.clone(),
        |stem| stem.to_string_lossy().into_owned(),
    )
}

impl LiveRun<'_> {
    fn key(&self, key: String) -> String {
        format!("{}:{key}", self.scope)
    }

    fn id(&self, alias: &str) -> Result<String, String> {
        self.ids
            .get(alias)
            .cloned()
            .ok_or_else(|| format!("`{alias}` was not created earlier in this scenario"))
    }

    /// A clock with room for another customer, made at the scenario's current time if needed.
    async fn clock_for_new_customer(&mut self) -> Result<String, String> {
        if let Some(clock) = self
            .clocks
            .iter_mut()
            .find(|c| c.customers < CUSTOMERS_PER_CLOCK)
        {
            clock.customers += 1;
            return Ok(clock.id.clone());
        }
        let n = self.clocks.len();
        let clock = self
            .options
            .api
            .create_test_clock(
                &self.key(format!("clock:{n}")),
                self.now.timestamp(),
                &format!("subledger scenario clock {n}"),
            )
            .await
            .map_err(stripe_failed)?;
        self.clocks.push(Clock {
            id: clock.id.clone(),
            customers: 1,
        });
        Ok(clock.id)
    }

    async fn apply(&mut self, action: &Action, line: usize) -> Result<(), String> {
        let api = &self.options.api;
        match action {
            Action::CreateCustomer { account: Some(_), .. } => {
                return Err("customers of connected accounts are simulated only: this runner drives the platform account (run this scenario on the simulator)".to_owned())
            }
            Action::CreateCustomer { id, card, metadata, .. } => {
                let clock = self.clock_for_new_customer().await?;
                let metadata: HashMap<String, String> = metadata.clone().into_iter().collect();
                let real = api.create_customer(&self.key(format!("customer:{id}")), &clock, metadata).await.map_err(stripe_failed)?;
                if let Some(card) = card {
                    api.attach_default_card(&self.key(format!("card:{id}:{line}")), &real, card).await.map_err(stripe_failed)?;
                }
                self.ids.insert(id.clone(), real);
            }
            Action::ChangeCard { customer, card } => {
                let real = self.id(customer)?;
                api.attach_default_card(&self.key(format!("card:{customer}:{line}")), &real, card).await.map_err(stripe_failed)?;
            }
            Action::Confirm { .. } => {
                return Err("confirming a payment with a card the customer types needs Stripe.js in a browser (run this scenario on the simulator)".to_owned())
            }
            Action::ResumeSubscription { subscription } => {
                api.resume_subscription(&self.key(format!("resume_subscription:{subscription}:{line}")), &self.id(subscription)?)
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::PayInvoice { subscription } => {
                api.pay_latest_invoice(&self.key(format!("pay_invoice:{subscription}:{line}")), &self.id(subscription)?)
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::Subscribe {
                customer,
                subscription,
                price,
                quantity,
                trial_days,
                payment_behavior,
                missing_payment_method,
            } => {
                let trial = trial_days.map(|days| (days, missing_payment_method.as_str()));
                let created = api
                    .create_subscription(
                        &self.key(format!("subscription:{subscription}")),
                        &self.id(customer)?,
                        &self.id(price)?,
                        *quantity,
                        trial,
                        payment_behavior.as_str(),
                    )
                    .await
                    .map_err(stripe_failed)?;
                self.ids.insert(subscription.clone(), created.id);
                let interval = self.price_intervals.get(price).copied().unwrap_or(Interval::Month);
                self.subscription_intervals.insert(subscription.clone(), interval);
            }
            Action::Advance(step) => {
                let to = step
                    .from(self.now)
                    .ok_or_else(|| "the clock would overflow".to_owned())?;
                self.advance_to(to).await?;
            }
            Action::AdvanceTo(to) => self.advance_to(*to).await?,
            Action::Upgrade {
                subscription,
                price,
                proration,
                pending_if_incomplete,
            } => {
                api.change_price(&self.key(format!("upgrade:{subscription}:{line}")), &self.id(subscription)?, &self.id(price)?, proration, *pending_if_incomplete)
                    .await
                    .map_err(stripe_failed)?;
                if let Some(interval) = self.price_intervals.get(price).copied() {
                    self.subscription_intervals.insert(subscription.clone(), interval);
                }
            }
            Action::Cancel {
                subscription,
                at_period_end,
            } => {
                let real = self.id(subscription)?;
                let key = self.key(format!("cancel:{subscription}:{line}"));
                if *at_period_end {
                    api.set_cancel_at_period_end(&key, &real, true).await.map_err(stripe_failed)?;
                } else {
                    api.cancel_subscription(&key, &real).await.map_err(stripe_failed)?;
                    self.subscription_intervals.remove(subscription);
                }
            }
            Action::CancelAt { subscription, at } => {
                api.set_cancel_at(&self.key(format!("cancel_at:{subscription}:{line}")), &self.id(subscription)?, at.timestamp())
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::PlaceHold {
                customer,
                id,
                subscription,
                reason,
                covers_grants,
            } => {
                // Subledger's clock is the wall clock; the story's is the test clock: say when.
                let body = serde_json::json!({
                    "hold_id": id,
                    "reason": reason,
                    "covers_grants": covers_grants,
                    "at": self.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "subscription": subscription.as_deref().map(|s| self.id(s)).transpose()?,
                });
                self.engine_call("POST", &format!("/v1/customers/{}/holds", self.id(customer)?), Some(body)).await?;
            }
            Action::Grant {
                customer,
                id,
                feature,
                value,
                mode,
                subscription,
                starts_at,
                expires_at,
                reason,
            } => {
                let time = |t: &chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                let mut body = serde_json::json!({
                    "grant_id": id,
                    "feature": feature,
                    "mode": mode,
                    "reason": reason,
                    "at": time(&self.now),
                    "subscription": subscription.as_deref().map(|s| self.id(s)).transpose()?,
                    "starts_at": starts_at.as_ref().map(time),
                    "expires_at": expires_at.as_ref().map(time),
                });
                match value {
                    subledger_domain::grants::GrantValue::Enabled(enabled) => body["enabled"] = serde_json::json!(enabled),
                    subledger_domain::grants::GrantValue::Limit(limit) => body["limit"] = serde_json::json!(limit),
                }
                self.engine_call("POST", &format!("/v1/customers/{}/grants", self.id(customer)?), Some(body)).await?;
            }
            Action::RevokeGrant { customer, id } => {
                let at = self.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                self.engine_call("DELETE", &format!("/v1/customers/{}/grants/{id}?at={at}", self.id(customer)?), None).await?;
            }
            Action::LiftHold { customer, id } => {
                let at = self.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                self.engine_call("DELETE", &format!("/v1/customers/{}/holds/{id}?at={at}", self.id(customer)?), None).await?;
            }
            Action::ReleaseSchedule { subscription } => {
                api.release_schedule_of(&self.key(format!("release:{subscription}:{line}")), &self.id(subscription)?)
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::UndoCancel { subscription } => {
                api.undo_cancellation(&self.key(format!("undo_cancel:{subscription}:{line}")), &self.id(subscription)?)
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::DeleteCustomer { id } => {
                api.delete_customer(&self.id(id)?).await.map_err(stripe_failed)?;
            }
            Action::Pause { subscription, behavior } => {
                api.pause_collection(&self.key(format!("pause:{subscription}:{line}")), &self.id(subscription)?, behavior)
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::Resume { subscription } => {
                api.resume_collection(&self.key(format!("resume:{subscription}:{line}")), &self.id(subscription)?)
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::Abandon3ds { .. } => {}
            Action::Complete3ds { .. } => {
                return Err("completing 3-D Secure needs a customer in a browser; Stripe's API cannot do it (run this scenario on the simulator)".to_owned())
            }
            Action::OpenDispute { .. } | Action::CloseDispute { .. } => {
                return Err("Stripe's API cannot open or settle a dispute on an existing charge; test mode makes disputes only from special card numbers (run this scenario on the simulator)".to_owned())
            }
            Action::Downgrade { subscription, price } => {
                api.change_price_at_period_end(&self.key(format!("downgrade:{subscription}:{line}")), &self.id(subscription)?, &self.id(price)?)
                    .await
                    .map_err(stripe_failed)?;
            }
            Action::Order { .. } | Action::OrderAction { .. } => {
                return Err("one-off orders are not driven against Stripe by this runner yet (run this scenario on the simulator)".to_owned())
            }
            Action::Webhooks { .. } | Action::Silently(_) => {
                return Err("Stripe's API cannot hold back webhooks from `stripe listen` or change an object without an event (run this scenario on the simulator)".to_owned())
            }
            Action::Backfill { .. } | Action::Reconcile { .. } => {
                return Err("run `subledger backfill` and `subledger reconcile` against the engine under test yourself; this runner only drives Stripe (run this scenario on the simulator)".to_owned())
            }
            Action::PublishCatalog(_) | Action::ExpectCatalog { .. } => {
                return Err("publishing a catalog restarts the Subledger under test with --catalog-publish; this runner only drives Stripe (run this scenario on the simulator)".to_owned())
            }
            Action::Expect(_) => {}
        }
        Ok(())
    }

    /// Advances every clock to `to` in steps Stripe accepts, waiting for each to be ready.
    async fn advance_to(&mut self, to: DateTime<Utc>) -> Result<(), String> {
        if to <= self.now {
            return Err(format!(
                "test clocks only move forward: {to} is not after {}",
                self.now
            ));
        }
        while self.now < to {
            // At most two intervals of the shortest subscription period per advance.
            let shortest = self
                .subscription_intervals
                .values()
                .map(|i| i.months())
                .min();
            let step_end = match shortest {
                Some(months) => self
                    .now
                    .checked_add_months(Months::new(2 * months))
                    .map_or(to, |limit| limit.min(to)),
                None => to,
            };
            for clock in &self.clocks {
                let key = self.key(format!("advance:{}:{}", clock.id, step_end.timestamp()));
                self.options
                    .api
                    .advance_test_clock(&key, &clock.id, step_end.timestamp())
                    .await
                    .map_err(stripe_failed)?;
            }
            for clock in &self.clocks {
                self.wait_until_ready(&clock.id).await?;
            }
            self.now = step_end;
            self.advances += 1;
        }
        Ok(())
    }

    async fn wait_until_ready(&self, clock: &str) -> Result<(), String> {
        let deadline = Instant::now() + self.options.clock_timeout;
        loop {
            let state = self
                .options
                .api
                .test_clock(clock)
                .await
                .map_err(stripe_failed)?;
            match state.status.as_str() {
                "ready" => return Ok(()),
                "internal_failure" => {
                    return Err(format!("test clock {clock} failed while advancing"))
                }
                _ if Instant::now() >= deadline => {
                    return Err(format!(
                        "test clock {clock} was not ready after {:?}",
                        self.options.clock_timeout
                    ))
                }
                _ => tokio::time::sleep(self.options.poll_interval).await,
            }
        }
    }

    /// Polls until the expectation holds (webhooks arrive asynchronously) or time runs out.
    async fn expect(&self, expectation: &Expectation) -> Vec<String> {
        let deadline = Instant::now() + self.options.settle_timeout;
        loop {
            let failures = match self.check(expectation).await {
                Ok(failures) => failures,
                Err(error) => vec![error],
            };
            if failures.is_empty() || Instant::now() >= deadline {
                return failures;
            }
            tokio::time::sleep(self.options.poll_interval).await;
        }
    }

    async fn check(&self, expectation: &Expectation) -> Result<Vec<String>, String> {
        let mut failures = Vec::new();
        if let Some(customer) = &expectation.customer {
            let real = self.id(customer)?;
            // The engine knows Stripe's ids; translate the scenario's names.
            let mut translated = expectation.clone();
            translated.subscriptions = expectation
                .subscriptions
                .iter()
                .map(|(alias, status)| Ok((self.id(alias)?, status.clone())))
                .collect::<Result<BTreeMap<_, _>, String>>()?;
            translated.scheduled = expectation
                .scheduled
                .iter()
                .map(|(alias, change)| Ok((self.id(alias)?, change.clone())))
                .collect::<Result<BTreeMap<_, _>, String>>()?;
            match self.entitlements(&real, self.now).await? {
                None => failures.push(format!(
                    "Subledger knows nothing about customer {customer} ({real}) yet"
                )),
                Some(answer) => check_entitlements(&translated, &answer, &mut failures),
            }
        }
        if let (Some(user), Some(customer)) = (&expectation.user, &expectation.customer) {
            let answer = self
                .entitlement_answer(&format!("/v1/users/{user}/entitlements"))
                .await?;
            let found = answer.as_ref().map(|a| a["customer"].clone());
            if found.as_ref().and_then(Value::as_str) != Some(self.id(customer)?.as_str()) {
                failures.push(format!(
                    "user {user}: expected customer {customer}, Subledger finds {found:?}"
                ));
            }
        }
        for (subscription, expected) in &expectation.stripe {
            let actual = self
                .options
                .api
                .subscription(&self.id(subscription)?)
                .await
                .map_err(stripe_failed)?;
            if actual.status != *expected {
                failures.push(format!(
                    "Stripe's subscription {subscription}: expected {expected}, is {}",
                    actual.status
                ));
            }
        }
        for (subscription, expected) in &expectation.invoices {
            let actual = self
                .options
                .api
                .invoice_statuses(&self.id(subscription)?)
                .await
                .map_err(stripe_failed)?;
            if actual != *expected {
                failures.push(format!(
                    "invoices of {subscription}: expected {expected:?}, are {actual:?}"
                ));
            }
        }
        Ok(failures)
    }

    /// One request to the running Subledger, with its API token when one is configured.
    async fn engine_request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, String), String> {
        let authorization = self
            .options
            .engine_token
            .as_ref()
            .map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|a| ("Authorization", a.as_str()))
            .collect();
        headers.push(("Content-Type", "application/json"));
        let body = body.map(Value::to_string).unwrap_or_default();
        http_request(self.options.engine, method, path, &headers, body.as_bytes())
            .await
            .map_err(|e| format!("cannot reach Subledger: {e}"))
    }

    /// An operator's action on the running Subledger's own API.
    async fn engine_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), String> {
        let (status, answer) = self.engine_request(method, path, body.as_ref()).await?;
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(format!("Subledger answered {status}: {answer}"))
        }
    }

    /// The customer's entitlements as of the test clock's time: "now" in the story.
    async fn entitlements(
        &self,
        customer: &str,
        at: DateTime<Utc>,
    ) -> Result<Option<Value>, String> {
        let at = at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.entitlement_answer(&format!("/v1/customers/{customer}/entitlements?at={at}"))
            .await
    }

    /// An entitlement answer: `None` for a 404 (not known yet).
    async fn entitlement_answer(&self, path: &str) -> Result<Option<Value>, String> {
        let (status, body) = self.engine_request("GET", path, None).await?;
        match status {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| format!("Subledger answered something that is not JSON: {e}")),
            404 => Ok(None),
            other => Err(format!("Subledger answered {other}: {body}")),
        }
    }
}
