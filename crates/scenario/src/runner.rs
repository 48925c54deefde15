//! Plays a scenario: each step runs on the simulated Stripe, its events are delivered as
//! signed webhooks to a fresh engine through its router, and at each `expect` every delivery is
//! flushed, the engine catches up, and Subledger's answers are compared with the expectation.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use subledger_domain::catalog::Catalog;
use subledger_engine::refetch::{Fetched, StripeResource};
use subledger_engine::{
    BackfillOptions, Basis, Engine, EngineConfig, ReconcileOptions, ReconcileReport, StripeObjects,
    WebhookSecret,
};
use subledger_simulator::api::{router as stripe_router, Account};
use subledger_simulator::delivery::{Deliverer, DeliveryMode, DeliveryStats, Target};
use subledger_simulator::Simulator;
use subledger_store::scratch::ScratchDatabase;
use subledger_stripe_client::{ApiKey, ReadPolicy, StripeReader};
use tokio::sync::Mutex;

use crate::format::{Action, Expectation, FeatureExpectation, OrderAction, Scenario, Step};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub delivery: DeliveryMode,
    pub seed: u64,
    /// `None`: an in-memory SQLite store. A `postgres://` URL gets a fresh schema per run.
    pub database_url: Option<String>,
    /// A check of the engine at the story's end (its failures fail the story).
    pub at_the_end: Option<AtTheEnd>,
}

/// A check run on the engine when a story has ended, before the engine closes: the failures
/// it returns are the story's (the client crate's test compares its local copy this way).
#[derive(Clone)]
pub struct AtTheEnd(pub Arc<EngineCheck>);

/// What [`AtTheEnd`] runs: the engine in, the failures out.
pub type EngineCheck = dyn Fn(Arc<Engine>) -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<String>> + Send>>
    + Send
    + Sync;

impl std::fmt::Debug for AtTheEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtTheEnd(..)")
    }
}

#[derive(Debug, Clone)]
pub struct StepReport {
    pub line: usize,
    pub description: String,
    /// Empty when the step did what was expected.
    pub failures: Vec<String>,
}

impl StepReport {
    fn new(line: usize, description: String) -> Self {
        Self {
            line,
            description,
            failures: Vec::new(),
        }
    }

    /// The setup before a story's first line: its prices.
    pub(crate) fn price_setup(count: usize) -> Self {
        Self::new(0, format!("create {count} price(s)"))
    }

    pub(crate) fn of(step: &Step) -> Self {
        Self::new(step.line, step.action.describe())
    }
}

#[derive(Debug, Clone)]
pub struct ScenarioReport {
    pub file: String,
    pub name: String,
    pub delivery: DeliveryMode,
    pub seed: u64,
    pub steps: Vec<StepReport>,
    pub elapsed: Duration,
    pub advances: u64,
    pub events: usize,
    pub delivery_stats: DeliveryStats,
    /// The engine's billing views at the end, serialized, for comparing runs.
    pub final_views: String,
    /// Played against Stripe's API and a running Subledger rather than the simulator.
    pub against_stripe: bool,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.failures.is_empty())
    }

    /// The human-readable report: one line per step, expected versus actual on failure.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let how = if self.against_stripe {
            "against Stripe's API".to_owned()
        } else {
            format!("delivery {}, seed {}", self.delivery.as_str(), self.seed)
        };
        let _ = writeln!(out, "{} — {} ({how})", self.file, self.name);
        for (index, step) in self.steps.iter().enumerate() {
            let mark = if step.failures.is_empty() {
                "ok  "
            } else {
                "FAIL"
            };
            let place = if step.line == 0 {
                String::new()
            } else {
                format!(" (line {})", step.line)
            };
            let _ = writeln!(
                out,
                "  {mark} {:>2}. {}{place}",
                index + 1,
                step.description
            );
            for failure in &step.failures {
                let _ = writeln!(out, "           {failure}");
            }
        }
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let elapsed = self.elapsed.as_millis();
        if self.against_stripe {
            let _ = writeln!(
                out,
                "  {verdict} in {elapsed} ms, {} clock advances",
                self.advances
            );
        } else {
            let stats = self.delivery_stats;
            let _ = writeln!(
                out,
                "  {verdict} in {elapsed} ms: {} events, {} deliveries ({} duplicates, {} of them in flight at once, {} delayed, {} of them for several steps, {} failed attempts), {} clock advances",
                self.events, stats.deliveries, stats.duplicates, stats.concurrent_duplicates, stats.delayed, stats.stragglers, stats.failed_attempts, self.advances
            );
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start the engine: {0}")]
    Engine(String),
}

const SECRET: &str = "whsec_subledger_scenario_runner";

/// How a story is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telling {
    /// As written: webhooks held back while off, silent changes silent, operators reading
    /// Stripe, expectations checked.
    Story,
    /// The same Stripe-side story with every webhook delivered and nothing silent: what a
    /// story that drifts must end in once backfill and reconciliation have done their work.
    Reference,
}

/// Runs one scenario against a fresh engine. A story in which webhooks are held back or
/// objects change without events is told a second time with every webhook delivered, and
/// both must end with every customer answering the same.
pub async fn run(scenario: &Scenario, options: &RunOptions) -> Result<ScenarioReport, RunError> {
    play(scenario, options, Telling::Story)
        .await
        .map(|(report, _)| report)
}

/// Every customer's answer at the end of a story, by customer id.
type Answers = std::collections::BTreeMap<String, String>;

async fn play(
    scenario: &Scenario,
    options: &RunOptions,
    telling: Telling,
) -> Result<(ScenarioReport, Answers), RunError> {
    let started = Instant::now();
    let reference = telling == Telling::Reference;
    // Publishing a catalog starts the engine again on the same store: in memory, the second
    // would find an empty one.
    let restarts = scenario
        .steps
        .iter()
        .any(|step| matches!(step.action, Action::PublishCatalog(_)));
    let scratch = match options.database_url.as_deref() {
        None if restarts => ScratchDatabase::sqlite_file().await,
        None => ScratchDatabase::sqlite().await,
        Some(url) if url.starts_with("postgres") => ScratchDatabase::postgres_at(url).await,
        Some(url) => {
            // A SQLite file the caller chose: used as it is.
            ScratchDatabase::sqlite_at(url).await
        }
    }
    .map_err(|e| RunError::Engine(e.to_string()))?;
    let shared = Arc::new(Mutex::new(Simulator::new(
        scenario.start,
        scenario.retry_policy.clone(),
    )));
    // The engine as a start with `catalog` makes it, publishing it at `at` (story time).
    let config = |catalog: &Catalog, at: DateTime<Utc>| {
        let mut config = EngineConfig::new(scratch.url.clone(), catalog.clone());
        config.webhook_secrets = vec![WebhookSecret::new(SECRET)];
        // The simulator is the Stripe the worker asks when events cannot be ordered.
        config.stripe_objects = Some(Arc::new(SimulatorObjects(Arc::clone(&shared))));
        config.catalog_publish = true;
        config.catalog_published_by = "scenario".to_owned();
        config.catalog_published_at = Some(at);
        config
    };
    let mut engine = Engine::start(config(&scenario.catalog, scenario.start))
        .await
        .map_err(|e| RunError::Engine(e.to_string()))?;
    let router = subledger_server::router(engine.clone(), subledger_server::ApiTokens::none());
    let mut deliverer = Deliverer::new(
        options.delivery,
        options.seed,
        WebhookSecret::new(SECRET),
        Target::Router(router),
    );
    let mut simulator = shared.lock().await;

    let mut steps = Vec::new();
    let mut setup = StepReport::price_setup(scenario.prices.len());
    for price in &scenario.prices {
        if let Err(e) = simulator.create_price(
            &price.id,
            price.amount,
            &price.currency,
            price.interval,
            price.lookup_key.as_deref(),
        ) {
            setup.failures.push(e.to_string());
        }
        if !price.features.is_empty() {
            if let Err(e) = simulator.set_price_features(&price.id, price.features.clone()) {
                setup.failures.push(e.to_string());
            }
        }
    }
    let mut stopped = !setup.failures.is_empty();
    steps.push(setup);
    let mut webhooks_on = true;
    // Events made while webhooks were off: Stripe lists them with delivery_success=false.
    let mut undelivered: Vec<String> = Vec::new();

    for step in &scenario.steps {
        if stopped {
            break;
        }
        let mut report = StepReport::of(step);
        let outcome = match &step.action {
            Action::Expect(_)
            | Action::ExpectCatalog { .. }
            | Action::Backfill { .. }
            | Action::Reconcile { .. }
                if reference =>
            {
                Ok(())
            }
            Action::PublishCatalog(catalog) => {
                drop(simulator);
                let restarted = async {
                    // What was sent before the restart is applied by the engine that took it.
                    settle(&engine, &mut deliverer, &shared).await?;
                    engine.close().await;
                    let at = shared.lock().await.now();
                    Engine::start(config(catalog, at))
                        .await
                        .map_err(|e| format!("Subledger did not start with the catalog: {e}"))
                }
                .await;
                simulator = shared.lock().await;
                restarted.map(|restarted| {
                    engine = restarted;
                    let router = subledger_server::router(
                        engine.clone(),
                        subledger_server::ApiTokens::none(),
                    );
                    deliverer.retarget(Target::Router(router));
                })
            }
            Action::ExpectCatalog { versions, in_force } => {
                let catalogs = engine.catalogs();
                if let Some(expected) = versions {
                    let recorded = catalogs.versions().len();
                    if recorded != *expected {
                        report.failures.push(format!(
                            "catalog versions: expected {expected}, Subledger recorded {recorded}"
                        ));
                    }
                }
                if let Some((source, expected)) = in_force {
                    let now = catalogs.at(simulator.now());
                    if now.version != *expected {
                        report.failures.push(format!(
                            "catalog in force: expected {source} ({expected}), Subledger has {} ({})",
                            now.catalog.source(),
                            now.version
                        ));
                    }
                }
                Ok(())
            }
            Action::Webhooks { on } => {
                webhooks_on = *on || reference;
                Ok(())
            }
            Action::Silently(action) => {
                let applied = apply(action, &mut simulator).map_err(|e| e.to_string());
                if !reference {
                    simulator.forget_new_events();
                }
                applied
            }
            Action::Backfill { account } => {
                drop(simulator);
                let read =
                    read_account(&engine, &mut deliverer, &shared, scenario, &undelivered).await;
                let outcome = match read {
                    Err(e) => Err(e),
                    Ok(stripe) => engine
                        .backfill(
                            &stripe.reader,
                            &BackfillOptions {
                                account: account.clone(),
                                ..BackfillOptions::default()
                            },
                            &mut |_| {},
                        )
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("backfill failed: {e}")),
                };
                simulator = shared.lock().await;
                outcome
            }
            Action::Reconcile { apply, expect } => {
                drop(simulator);
                let read =
                    read_account(&engine, &mut deliverer, &shared, scenario, &undelivered).await;
                let outcome = match read {
                    Err(e) => Err(e),
                    Ok(account) => {
                        let options = ReconcileOptions {
                            customers: Vec::new(),
                            apply: *apply,
                        };
                        match engine
                            .reconcile(&account.reader, &options, &mut |_, _| {})
                            .await
                        {
                            Err(e) => Err(format!("reconcile failed: {e}")),
                            Ok(found) => {
                                // Invoices are named by their subscription (`sub_x/invoice`):
                                // their ids are the simulator's to choose.
                                let invoices: std::collections::HashMap<String, String> = shared
                                    .lock()
                                    .await
                                    .invoices()
                                    .filter_map(|i| {
                                        Some((
                                            i.id.clone(),
                                            format!("{}/invoice", i.subscription.as_ref()?),
                                        ))
                                    })
                                    .collect();
                                report
                                    .failures
                                    .extend(check_reconciled(&found, expect, *apply, &invoices));
                                Ok(())
                            }
                        }
                    }
                };
                simulator = shared.lock().await;
                outcome
            }
            Action::Expect(expectation) => {
                drop(simulator);
                let settled = settle(&engine, &mut deliverer, &shared).await;
                simulator = shared.lock().await;
                match settled {
                    Ok(()) => report.failures = check(expectation, &engine, &simulator).await,
                    Err(e) => report.failures.push(e),
                }
                Ok(())
            }
            Action::PlaceHold {
                customer,
                id,
                subscription,
                reason,
                covers_grants,
            } => {
                // An operator holds a customer Subledger already answers for: what was sent
                // so far arrives first (the reference story, which skips expectations, too).
                drop(simulator);
                let settled = settle(&engine, &mut deliverer, &shared).await;
                simulator = shared.lock().await;
                match settled {
                    Err(e) => Err(e),
                    Ok(()) => engine
                        .place_hold(
                            &customer_key(&simulator, customer),
                            subledger_engine::NewHold {
                                hold_id: id.clone(),
                                subscription: subscription
                                    .as_deref()
                                    .map(subledger_domain::ids::SubscriptionId::new),
                                reason: reason.clone(),
                                covers_grants: *covers_grants,
                                at: Some(simulator.now()),
                            },
                            "scenario",
                        )
                        .await
                        .map_err(|e| format!("Subledger refused the hold: {e}")),
                }
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
                // As with a hold: what was sent so far arrives first.
                drop(simulator);
                let settled = settle(&engine, &mut deliverer, &shared).await;
                simulator = shared.lock().await;
                let grant = subledger_domain::grants::CustomerGrant {
                    id: id.clone(),
                    terms: subledger_domain::grants::GrantTerms {
                        feature: feature.clone(),
                        value: *value,
                        mode: *mode,
                        subscription: subscription
                            .as_deref()
                            .map(subledger_domain::ids::SubscriptionId::new),
                        starts_at: *starts_at,
                        expires_at: *expires_at,
                        reason: reason.clone(),
                    },
                    granted_by: "scenario".to_owned(),
                    granted_at: simulator.now(),
                };
                match settled {
                    Err(e) => Err(e),
                    Ok(()) => engine
                        .give_grant(&customer_key(&simulator, customer), grant, "scenario")
                        .await
                        .map(drop)
                        .map_err(|e| format!("Subledger refused the grant: {e}")),
                }
            }
            Action::RevokeGrant { customer, id } => engine
                .revoke_grant(
                    &customer_key(&simulator, customer),
                    id,
                    "scenario",
                    Some(simulator.now()),
                    "scenario",
                )
                .await
                .map_err(|e| format!("Subledger refused to revoke the grant: {e}")),
            Action::LiftHold { customer, id } => engine
                .lift_hold(
                    &customer_key(&simulator, customer),
                    id,
                    Some(simulator.now()),
                    "scenario",
                )
                .await
                .map_err(|e| format!("Subledger refused to lift the hold: {e}")),
            action => apply(action, &mut simulator).map_err(|e| e.to_string()),
        };
        if let Err(error) = outcome {
            report.failures.push(error);
            stopped = true;
        } else {
            let events = simulator.take_new_events();
            if webhooks_on {
                deliverer.enqueue(events);
            } else {
                undelivered.extend(
                    events
                        .iter()
                        .filter_map(|e| e["id"].as_str().map(str::to_owned)),
                );
            }
            if let Err(error) = deliverer.deliver(false).await {
                report.failures.push(error.to_string());
                stopped = true;
            }
        }
        steps.push(report);
    }

    let mut closing = StepReport::new(
        0,
        "deliver everything; the projection equals a rebuild from the log".to_owned(),
    );
    let mut final_views = String::new();
    drop(simulator);
    let settled = settle(&engine, &mut deliverer, &shared).await;
    let simulator = shared.lock().await;
    match settled {
        Err(e) => closing.failures.push(e),
        Ok(()) => {
            let live = engine.current_views().await;
            match engine.rebuild_views().await {
                Ok(rebuilt) if rebuilt == live => {
                    final_views = serde_json::to_string(&live).unwrap_or_default();
                }
                Ok(_) => closing.failures.push(
                    "the live billing views differ from a rebuild from the event log".to_owned(),
                ),
                Err(e) => closing.failures.push(format!("rebuild failed: {e}")),
            }
        }
    }
    let answers = final_answers(&engine, &simulator).await;
    let drifts = scenario.steps.iter().any(|step| {
        matches!(
            step.action,
            Action::Webhooks { on: false } | Action::Silently(_)
        )
    });
    if drifts && !reference && !stopped {
        match Box::pin(play(scenario, options, Telling::Reference)).await {
            Err(e) => closing
                .failures
                .push(format!("the reference run failed: {e}")),
            Ok((told, informed)) => {
                if !told.passed() {
                    closing.failures.push(format!(
                        "the reference run (every webhook delivered) failed:\n{}",
                        told.render()
                    ));
                }
                for (customer, answer) in &answers {
                    let heard = informed.get(customer).map_or("(unknown)", String::as_str);
                    if heard != answer {
                        closing.failures.push(format!(
                            "{customer} answers differently from the same story with every webhook delivered:\n  this run:  {answer}\n  reference: {heard}"
                        ));
                    }
                }
            }
        }
        closing
            .description
            .push_str("; every customer answers as with every webhook delivered");
    }
    if let (Some(check), false) = (&options.at_the_end, reference) {
        closing
            .failures
            .extend((check.0)(Arc::clone(&engine)).await);
    }
    steps.push(closing);

    engine.close().await;
    let _ = scratch.cleanup().await;
    let report = ScenarioReport {
        file: scenario.path.display().to_string(),
        name: scenario.name.clone(),
        delivery: options.delivery,
        seed: options.seed,
        steps,
        elapsed: started.elapsed(),
        advances: simulator.advances(),
        events: simulator.events().len(),
        delivery_stats: deliverer.stats(),
        final_views,
        against_stripe: false,
    };
    Ok((report, answers))
}

/// Every customer's entitlements at the story's end.
async fn final_answers(engine: &Engine, sim: &Simulator) -> Answers {
    let mut answers = Answers::new();
    for customer in sim.customers() {
        let answer = match engine
            .entitlements_at(
                &customer_key(sim, &customer.id),
                sim.now(),
                Basis::Effective,
            )
            .await
        {
            Ok(answer) => serde_json::to_string(&answer).unwrap_or_default(),
            Err(e) => format!("error: {e}"),
        };
        answers.insert(customer.id.clone(), answer);
    }
    answers
}

/// The simulated account as `subledger backfill` and `subledger reconcile` read it: first
/// every delivery still pending arrives and is applied (so what they find does not depend on
/// the delivery order), then a snapshot of the account is served over loopback HTTP, with
/// the events made while webhooks were off listed as undelivered. The server stops when the
/// returned value is dropped.
async fn read_account(
    engine: &Engine,
    deliverer: &mut Deliverer,
    shared: &Mutex<Simulator>,
    scenario: &Scenario,
    undelivered: &[String],
) -> Result<ServedAccount, String> {
    settle(engine, deliverer, shared).await?;
    let snapshot = shared.lock().await.clone();
    let mut account = Account::with_default_clock(snapshot, scenario.retry_policy.clone(), None);
    account.mark_undelivered(undelivered.iter().cloned());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("cannot serve the simulated account: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot serve the simulated account: {e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let app = stripe_router(account.shared());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    let reader = StripeReader::new(
        &ApiKey::new("rk_test_scenario_runner"),
        Some(&format!("http://{addr}/")),
        ReadPolicy {
            max_requests_per_second: 10_000,
            first_backoff: Duration::from_millis(20),
            ..ReadPolicy::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(ServedAccount {
        reader,
        _stop: stop,
    })
}

/// A simulated account served for one step.
struct ServedAccount {
    reader: StripeReader,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The differences a reconcile step found against those it was expected to find, exactly.
fn check_reconciled(
    report: &ReconcileReport,
    expected: &std::collections::BTreeMap<String, String>,
    apply: bool,
    invoices: &std::collections::HashMap<String, String>,
) -> Vec<String> {
    let name = |object: &String| invoices.get(object).unwrap_or(object).clone();
    let found: std::collections::BTreeSet<(String, String)> = report
        .differences
        .iter()
        .map(|d| (name(&d.object), d.drift.as_str().to_owned()))
        .collect();
    let wanted: std::collections::BTreeSet<(String, String)> = expected
        .iter()
        .map(|(object, drift)| (object.clone(), drift.clone()))
        .collect();
    let mut failures = Vec::new();
    for (object, drift) in wanted.difference(&found) {
        failures.push(format!(
            "reconcile: expected {object}: {drift}, not reported"
        ));
    }
    for (object, drift) in found.difference(&wanted) {
        let detail: Vec<String> = report
            .differences
            .iter()
            .filter(|d| name(&d.object) == *object)
            .map(|d| format!("{} {} → {}", d.field, d.subledger, d.stripe))
            .collect();
        failures.push(format!(
            "reconcile: reported {object}: {drift} ({}), not expected",
            detail.join("; ")
        ));
    }
    if apply && report.unresolved() > 0 {
        failures.push(format!(
            "reconcile --apply left {} difference(s) unresolved",
            report.unresolved()
        ));
    }
    failures
}

/// Delivers everything still pending and lets the engine apply it. The simulator is not held
/// meanwhile: the worker may fetch from it.
async fn settle(
    engine: &Engine,
    deliverer: &mut Deliverer,
    simulator: &Mutex<Simulator>,
) -> Result<(), String> {
    let events = simulator.lock().await.take_new_events();
    deliverer.enqueue(events);
    deliverer.deliver(true).await.map_err(|e| e.to_string())?;
    // A row parked for a fact that had not arrived (a dispute before its invoice) is retried
    // after a short backoff: wait for those, within reason, as Stripe's retries would.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        engine
            .drain()
            .await
            .map_err(|e| format!("the engine failed: {e}"))?;
        let stats = engine.inbox_stats().await.map_err(|e| e.to_string())?;
        if stats.pending == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{} inbox event(s) failed to apply (see the worker's log)",
                stats.pending
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The simulated Stripe's API as the worker's source of objects.
struct SimulatorObjects(Arc<Mutex<Simulator>>);

impl StripeObjects for SimulatorObjects {
    fn retrieve<'a>(
        &'a self,
        resource: StripeResource,
        id: &'a str,
        account: Option<&'a str>,
    ) -> Fetched<'a> {
        Box::pin(async move {
            let simulator = self.0.lock().await;
            let object = match resource {
                StripeResource::Subscription => simulator.subscription_json(id),
                StripeResource::Customer => simulator.customer_json(id),
                StripeResource::SubscriptionSchedule => simulator.schedule_json(id),
                StripeResource::ActiveEntitlements => simulator.active_entitlements_json(id),
            }
            .map_err(|e| e.to_string())?;
            // As at Stripe, an object is found only in the account it lives in: a request
            // without (or with another) `Stripe-Account` answers 404 (Stripe's docs, "Making
            // API calls for connected accounts").
            let owner = match resource {
                StripeResource::Customer | StripeResource::ActiveEntitlements => {
                    simulator.account_of_customer(id).map(str::to_owned)
                }
                _ => simulator.account_of(&object),
            };
            if owner.as_deref() != account {
                return Err(format!(
                    "No such {resource}: '{id}' in {}",
                    account.unwrap_or("the platform's account")
                ));
            }
            Ok(object)
        })
    }
}

/// The key Subledger keeps simulated customer `id` under: within its connected account, if
/// it has one.
fn customer_key(sim: &Simulator, id: &str) -> String {
    subledger_domain::ids::scoped(sim.account_of_customer(id), id)
}

fn apply(action: &Action, sim: &mut Simulator) -> Result<(), subledger_simulator::SimError> {
    match action {
        Action::CreateCustomer {
            id,
            account,
            card,
            metadata,
        } => {
            sim.create_customer_in(account.as_deref(), id, metadata.clone())?;
            if let Some(card) = card {
                sim.attach_card(id, card)?;
            }
            Ok(())
        }
        Action::ChangeCard { customer, card } => sim.attach_card(customer, card).map(|_| ()),
        Action::Subscribe {
            customer,
            subscription,
            price,
            quantity,
            trial_days,
            payment_behavior,
            missing_payment_method,
        } => {
            let options = subledger_simulator::SubscribeOptions {
                trial_days: *trial_days,
                payment_behavior: *payment_behavior,
                missing_payment_method: *missing_payment_method,
            };
            sim.subscribe_with(customer, subscription, price, *quantity, options)
        }
        Action::Confirm { subscription, card } => sim.confirm_payment(subscription, card),
        Action::ResumeSubscription { subscription } => sim.resume_subscription(subscription),
        Action::PayInvoice { subscription } => sim.pay_invoice(subscription),
        // A test clock moves at most two intervals of its shortest subscription per advance;
        // a longer step is several advances, as a client of Stripe's API makes them.
        Action::Advance(step) => {
            let to = step.from(sim.now()).ok_or_else(|| {
                subledger_simulator::SimError::Invalid("the clock would overflow".to_owned())
            })?;
            sim.advance_through(to).map(|_| ())
        }
        Action::AdvanceTo(to) => sim.advance_through(*to).map(|_| ()),
        Action::Upgrade {
            subscription,
            price,
            proration,
            pending_if_incomplete,
        } => sim.change_price_now_with(subscription, price, proration, *pending_if_incomplete),
        Action::Downgrade {
            subscription,
            price,
        } => sim
            .change_price_at_period_end(subscription, price)
            .map(|_| ()),
        Action::Cancel {
            subscription,
            at_period_end,
        } => {
            if *at_period_end {
                sim.cancel_at_period_end(subscription)
            } else {
                sim.cancel_now(subscription)
            }
        }
        Action::CancelAt { subscription, at } => sim.cancel_at(subscription, *at),
        Action::UndoCancel { subscription } => sim.undo_cancel(subscription),
        Action::ReleaseSchedule { subscription } => sim.release_schedule_of(subscription),
        Action::DeleteCustomer { id } => sim.delete_customer(id),
        Action::PlaceHold { .. }
        | Action::LiftHold { .. }
        | Action::Grant { .. }
        | Action::RevokeGrant { .. } => Ok(()),
        Action::Pause {
            subscription,
            behavior,
        } => sim.pause_collection(subscription, behavior),
        Action::Resume { subscription } => sim.resume_collection(subscription),
        Action::Complete3ds { subscription } => sim.complete_3ds(subscription),
        Action::Abandon3ds { subscription } => sim.abandon_3ds(subscription),
        Action::OpenDispute { customer } => sim.open_dispute(customer).map(|_| ()),
        Action::CloseDispute { customer, outcome } => sim.close_dispute(customer, outcome),
        Action::Order {
            id,
            customer,
            amount,
            currency,
            card,
        } => sim.create_order(id, customer, *amount, currency, card.as_deref()),
        Action::OrderAction { action, id, card } => match action {
            OrderAction::Pay => sim.pay_order(id, card.as_deref()),
            OrderAction::Complete3ds => sim.complete_order_3ds(id),
            OrderAction::Cancel => sim.cancel_order(id),
            OrderAction::Refund => sim.refund_order(id),
        },
        // Handled by the runner itself.
        Action::Webhooks { .. }
        | Action::Silently(_)
        | Action::Backfill { .. }
        | Action::Reconcile { .. }
        | Action::Expect(_)
        | Action::PublishCatalog(_)
        | Action::ExpectCatalog { .. } => Ok(()),
    }
}

/// Compares an expectation with the engine's answers and the simulator's state. The engine is
/// asked as of the simulated clock's time (`?at=`), since that is "now" in the story.
async fn check(expectation: &Expectation, engine: &Engine, sim: &Simulator) -> Vec<String> {
    let mut failures = Vec::new();
    if let Some(customer) = &expectation.customer {
        match engine
            .entitlements_at(&customer_key(sim, customer), sim.now(), Basis::Effective)
            .await
        {
            Err(e) => failures.push(format!("Subledger failed to answer: {e}")),
            Ok(None) => failures.push(format!("Subledger knows nothing about customer {customer}")),
            Ok(Some(answer)) => match serde_json::to_value(&answer) {
                Ok(answer) => check_entitlements(expectation, &answer, &mut failures),
                Err(e) => failures.push(format!("the answer does not serialize: {e}")),
            },
        }
    }
    if let (Some(user), Some(customer)) = (&expectation.user, &expectation.customer) {
        let found = engine.customer_of_user(sim.account_of_customer(customer), user);
        if found.as_deref() != Some(customer_key(sim, customer).as_str()) {
            failures.push(format!(
                "user {user}: expected customer {customer}, Subledger finds {found:?}"
            ));
        }
    }
    for (order, expected) in &expectation.orders {
        match engine.order(sim.account_of_order(order), order).await {
            Err(e) => failures.push(format!("Subledger failed to answer for order {order}: {e}")),
            Ok(None) => failures.push(format!(
                "order {order}: expected {}, Subledger does not know it",
                expected.state
            )),
            Ok(Some(view)) => {
                let state = serde_json::to_value(view.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                if state != expected.state
                    || expected
                        .decline_code
                        .as_ref()
                        .is_some_and(|code| view.decline_code.as_ref() != Some(code))
                    || expected
                        .message
                        .as_ref()
                        .is_some_and(|message| view.message.as_ref() != Some(message))
                {
                    failures.push(format!(
                        "order {order}: expected {}{}, Subledger says {state} (decline code {:?}, message {:?})",
                        expected.state,
                        expected.decline_code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default(),
                        view.decline_code,
                        view.message
                    ));
                }
            }
        }
    }
    for (subscription, expected) in &expectation.stripe {
        match sim.subscription(subscription) {
            Ok(actual) if actual.status.as_str() == expected => {}
            Ok(actual) => failures.push(format!(
                "Stripe's subscription {subscription}: expected {expected}, is {}",
                actual.status.as_str()
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    for (subscription, expected) in &expectation.invoices {
        let actual: Vec<&str> = sim
            .invoices_of(subscription)
            .iter()
            .map(|i| i.status.as_str())
            .collect();
        if actual != *expected {
            failures.push(format!(
                "invoices of {subscription}: expected {expected:?}, are {actual:?}"
            ));
        }
    }
    failures
}

pub(crate) fn check_entitlements(
    expectation: &Expectation,
    answer: &Value,
    failures: &mut Vec<String>,
) {
    for (subscription, expected) in &expectation.subscriptions {
        let actual = answer["subscriptions"]
            .as_array()
            .and_then(|subs| subs.iter().find(|s| s["id"] == subscription.as_str()))
            .and_then(|s| s["status"].as_str());
        match actual {
            Some(actual) if actual == expected => {}
            Some(actual) => failures.push(format!(
                "subscription {subscription}: expected {expected}, Subledger says {actual}"
            )),
            None => failures.push(format!(
                "subscription {subscription}: expected {expected}, Subledger does not know it"
            )),
        }
    }
    if let Some(plans) = &expectation.plans {
        let actual: Vec<&str> = answer["plans"]
            .as_array()
            .map(|p| p.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if actual != *plans {
            failures.push(format!(
                "plans: expected {plans:?}, Subledger says {actual:?}"
            ));
        }
    }
    if let Some(grants) = &expectation.grants {
        let actual: Vec<&str> = answer["grants"]
            .as_array()
            .map(|g| g.iter().filter_map(|g| g["id"].as_str()).collect())
            .unwrap_or_default();
        if actual != *grants {
            failures.push(format!(
                "grants: expected {grants:?}, Subledger says {actual:?}"
            ));
        }
    }
    if let Some(expected) = &expectation.dunning {
        let state = answer["dunning"]["state"].as_str().unwrap_or("missing");
        let attempt = answer["dunning"]["attempt"].as_u64();
        if state != expected.state
            || expected
                .attempt
                .is_some_and(|a| Some(u64::from(a)) != attempt)
        {
            failures.push(format!(
                "dunning: expected {}{}, Subledger says {}",
                expected.state,
                expected
                    .attempt
                    .map(|a| format!(" (attempt {a})"))
                    .unwrap_or_default(),
                answer["dunning"]
            ));
        }
    }
    for (subscription, expected) in &expectation.scheduled {
        let changes: Vec<&str> = answer["scheduled_changes"]
            .as_array()
            .map(|all| {
                all.iter()
                    .filter(|c| c["subscription"] == subscription.as_str())
                    .filter_map(|c| c["change"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let matches = if expected == "none" {
            changes.is_empty()
        } else {
            changes.contains(&expected.as_str())
        };
        if !matches {
            failures.push(format!("scheduled change of {subscription}: expected {expected}, Subledger says {changes:?}"));
        }
    }
    for (feature, expected) in &expectation.features {
        let value = &answer["features"][feature];
        let enabled = value["enabled"].as_bool().unwrap_or(false);
        let limit = value["limit"].as_u64();
        let ok = match expected {
            FeatureExpectation::Enabled(on) => enabled == *on,
            FeatureExpectation::Limit(n) => limit == Some(*n),
        };
        if !ok {
            let expected = match expected {
                FeatureExpectation::Enabled(on) => format!("enabled: {on}"),
                FeatureExpectation::Limit(n) => format!("limit {n}"),
            };
            failures.push(format!(
                "feature {feature}: expected {expected}, Subledger says {value}"
            ));
        }
    }
}
