use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::Serialize;
use subledger_domain::customer::{Customer, CustomerCommand, CustomerError, CustomerEvent};
use subledger_domain::dunning::{Dunning, DunningState};
use subledger_domain::entitlements::{BillingView, Entitlements};
use subledger_domain::ids::{CustomerId, SubscriptionId};
use subledger_domain::payment::{OrderView, Payment, PaymentEvent};
use subledger_store::{
    Backend, CommandBus, Database, EventMetadata, InboxFilter, InboxRow, InboxStats, Origin,
    QuarantinedEvent, StoreError,
};
use subledger_stripe::WebhookVerifier;
use tokio::sync::{watch, Mutex, Notify};
use tokio::task::JoinHandle;

use crate::config::EngineConfig;
use crate::explain::Explanation;
use crate::ingest::{inbox_row, InboxWriter, IngestError, Receipt};
use crate::projector::{BillingProjector, CustomerEntitlements, EntitlementIndex, ProjectionError};

/// What `/readyz` reports: see [`Engine::readiness`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Inbox rows not applied yet.
    pub pending: i64,
    /// Of those, the rows whose last attempt failed (retried with backoff).
    pub failing: i64,
    /// How long the oldest of them has waited since it was received.
    pub oldest_pending_age: Option<Duration>,
    /// The newest event's position in the log.
    pub log_head: i64,
    /// The position this process's answers reflect.
    pub projected: i64,
    /// Events in the log that this process's answers do not reflect yet.
    pub projection_lag: i64,
    /// Events the projector skipped because it cannot decode them (see
    /// [`Engine::projection_quarantine`]).
    pub quarantined: i64,
}

/// Why a readiness check failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadinessError {
    #[error("the store did not answer within {0:?}")]
    Slow(Duration),
    #[error(transparent)]
    Store(StoreError),
}

/// How long an operator's command (a hold, a grant) waits for its answer to be projected.
const OPERATOR_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// Subledger's application façade. Share it as `Arc<Engine>`.
#[derive(Debug)]
pub struct Engine {
    pub(crate) db: Database,
    pub(crate) config: EngineConfig,
    pub(crate) customers: CommandBus<Customer>,
    pub(crate) payments: CommandBus<Payment>,
    verifier: WebhookVerifier,
    inbox: InboxWriter,
    projector: Mutex<BillingProjector>,
    pub(crate) entitlements: EntitlementIndex,
    /// Rows were stored in the inbox: wake the worker.
    inbox_stored: Arc<Notify>,
    /// Domain events were appended: wake the projector.
    pub(crate) events_appended: Notify,
    /// This process recorded entitlement changes: wake the notifier.
    pub(crate) changes_recorded: Notify,
    /// The changes this process recorded, as recorded, for the change streams: they need not
    /// read back what this process just wrote (see [`Engine::recorded_changes`]).
    pub(crate) recorded: tokio::sync::broadcast::Sender<crate::changes::RecordedChanges>,
    /// Whether this process has compared every answer with the feed once (see
    /// [`crate::changes`]).
    pub(crate) feed_compared_all: std::sync::atomic::AtomicBool,
    /// Where the feed was last found quiet (see [`crate::changes`]).
    pub(crate) feed_quiet: std::sync::Mutex<Option<crate::changes::QuietFeed>>,
    /// Every catalog version recorded, for answers about any moment (see [`crate::catalogs`]).
    pub(crate) catalogs: crate::catalogs::CatalogHistory,
}

/// Whether `entry` had happened (or was known) at `at`.
fn counts(entry: &TimelineEntry, at: DateTime<Utc>, basis: Basis) -> bool {
    let known_by = |t: DateTime<Utc>| entry.recorded_at.is_some_and(|recorded| recorded <= t);
    match basis {
        Basis::Effective => entry.occurred_at <= at,
        Basis::Known => known_by(at),
        Basis::KnownBy(known_at) => entry.occurred_at <= at && known_by(known_at),
    }
}

impl TimelineEntry {
    /// Whether this event counts in an answer about `at` on `basis`.
    pub fn counts(&self, at: DateTime<Utc>, basis: Basis) -> bool {
        counts(self, at, basis)
    }
}

/// The customer's billing view from their timeline, optionally only what counts at a moment.
fn fold_view(
    customer_id: &str,
    timeline: &[TimelineEntry],
    as_of: Option<(DateTime<Utc>, Basis)>,
) -> Option<BillingView> {
    let mut view: Option<BillingView> = None;
    for entry in timeline {
        if as_of.is_none_or(|(at, basis)| counts(entry, at, basis)) {
            view.get_or_insert_with(|| BillingView::new(CustomerId::new(customer_id)))
                .apply(&entry.event);
        }
    }
    view
}

/// An operator's hold as asked for (see [`Engine::place_hold`]).
#[derive(Debug, Clone, Default)]
pub struct NewHold {
    /// Makes retries safe: the same id places one hold.
    pub hold_id: String,
    /// Only this subscription; the whole customer when `None`.
    pub subscription: Option<SubscriptionId>,
    pub reason: String,
    /// A customer-wide hold that takes the customer's grants away too.
    pub covers_grants: bool,
    /// When the hold starts: now when `None` (a replayed back-office action or a simulated
    /// story passes its own).
    pub at: Option<DateTime<Utc>>,
}

/// Which clock a question about the past is asked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// When things happened at Stripe (`?at=`).
    Effective,
    /// When Subledger learned them (`?as_known_at=`).
    Known,
    /// Both: what had happened at Stripe by the moment asked, of what Subledger had learned by
    /// this time (`?at=` with `?as_known_at=`: "what did we believe last Tuesday about the
    /// first of the month?").
    KnownBy(DateTime<Utc>),
}

/// One domain event of a customer, with both clocks and its Stripe origin.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TimelineEntry {
    pub sequence: i64,
    pub event_type: String,
    /// When it happened at Stripe.
    pub occurred_at: DateTime<Utc>,
    /// When Subledger learned it.
    pub recorded_at: Option<DateTime<Utc>>,
    pub stripe_event_id: Option<String>,
    pub stripe_event_type: Option<String>,
    /// Who recorded it when no Stripe event did: `operator`, `backfill` or `reconciler`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// For a reconciler's correction: why Subledger had it wrong (the drift class).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drift: Option<String>,
    /// The domain event itself, keyed by its type.
    #[serde(rename = "data")]
    #[schema(value_type = Object)]
    pub event: CustomerEvent,
}

/// A stretch of Stripe time a customer spent owing money: past due (in grace) or suspended,
/// from the moment the facts made it so until the moment they no longer did (`None`: still).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DunningSpan {
    pub state: DunningState,
    pub from: DateTime<Utc>,
    pub until: Option<DateTime<Utc>>,
}

/// What `subledger replay` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaySummary {
    pub customers: usize,
    /// The saved views' generation after the swap.
    pub generation: i64,
    /// Reading the whole log and applying it, before the views were saved and swapped in.
    pub rebuilt_in: Duration,
    pub elapsed: Duration,
}

/// A customer whose saved view differs from a rebuild (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewDifference {
    pub customer: String,
    pub saved: Option<String>,
    pub rebuilt: Option<String>,
}

/// The longest a busy projector goes without checking whether the saved views were rebuilt.
const GENERATION_CHECK: Duration = Duration::from_secs(5);

/// The longest a busy worker waits between batches for webhook deliveries to be stored.
const WORKER_YIELD: Duration = Duration::from_millis(20);

/// How long [`Engine::drain`] waits for the projection to catch up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The domain said no (an operator's request that does not fit the facts).
    #[error(transparent)]
    Refused(#[from] CustomerError),
    #[error("unknown customer `{0}`")]
    UnknownCustomer(String),
    #[error(transparent)]
    Catalog(#[from] crate::catalogs::CatalogHistoryError),
    /// A grant whose terms do not fit the catalog or each other.
    #[error(transparent)]
    InvalidGrant(#[from] subledger_domain::grants::GrantInvalid),
    #[error("the command could not be stored: {0}")]
    Command(String),
    #[error("the projection did not catch up within {0:?}: a long transaction in the database holds back the events")]
    NotCaughtUp(Duration),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Projection(#[from] ProjectionError),
}

/// Tells background loops to stop; they finish the item in hand first.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the handle that fires it.
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (sender, receiver) = watch::channel(false);
        (sender, Self(receiver))
    }

    pub(crate) fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits up to `timeout` or until shutdown is requested.
    pub(crate) async fn sleep(&mut self, timeout: Duration, wake: &Notify) {
        tokio::select! {
            _ = tokio::time::sleep(timeout) => {}
            _ = wake.notified() => {}
            _ = self.0.wait_for(|stop| *stop) => {}
        }
    }
}

impl Engine {
    /// Connects, migrates, loads the saved read models and starts the inbox writer.
    pub async fn start(mut config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let db = Database::connect_with(&config.database_url, Some(config.store_timeout)).await?;
        db.migrate().await?;
        let catalogs = crate::catalogs::settle(
            &db,
            &config.catalog,
            config.catalog_publish,
            &config.catalog_published_by,
            config
                .catalog_published_at
                .unwrap_or_else(|| config.clock.now()),
        )
        .await?;
        // From here on the catalog is the one in force, whatever the file said.
        config.catalog = Arc::clone(&catalogs.current().catalog);
        let entitlements =
            EntitlementIndex::new(config.user_id_metadata_key.clone(), &config.catalog);
        let projector =
            BillingProjector::load(&db, &config.catalog, &entitlements, config.clock.now()).await?;
        let inbox_stored = Arc::new(Notify::new());
        let engine = Self {
            customers: CommandBus::new(&db, subledger_domain::schema::upcasters),
            payments: CommandBus::new(&db, subledger_domain::schema::upcasters),
            verifier: WebhookVerifier::new(
                config.webhook_secrets.clone(),
                config.signature_tolerance,
            ),
            inbox: InboxWriter::spawn(db.clone(), Arc::clone(&inbox_stored)),
            projector: Mutex::new(projector),
            entitlements,
            inbox_stored,
            events_appended: Notify::new(),
            changes_recorded: Notify::new(),
            recorded: tokio::sync::broadcast::channel(crate::changes::RECORDED_CAPACITY).0,
            feed_compared_all: std::sync::atomic::AtomicBool::new(false),
            feed_quiet: std::sync::Mutex::new(None),
            catalogs,
            db,
            config,
        };
        Ok(Arc::new(engine))
    }

    /// Which of Stripe's modes this deployment serves (`--livemode`).
    pub fn livemode(&self) -> bool {
        self.config.livemode
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.config.clock.now().timestamp_millis()
    }

    /// Verifies a delivery and stores it in the inbox. Nothing else happens here: the answer
    /// goes back to Stripe as soon as the row is committed.
    #[tracing::instrument(skip_all, fields(correlation_id = %correlation_id))]
    pub async fn receive_webhook(
        &self,
        signature: Option<&str>,
        body: &[u8],
        correlation_id: &str,
    ) -> Result<Receipt, IngestError> {
        if !self.verifier.has_secrets() {
            return Err(IngestError::NoSecretsConfigured);
        }
        let now = self.config.clock.now();
        self.verifier.verify(signature, body, now.timestamp())?;
        let row = inbox_row(body, now.timestamp_millis(), correlation_id)?;
        let event_id = row.event_id.clone();
        // Bounded even when the statement ahead of it in the writer's queue hangs: Stripe gets
        // a 503 and retries, rather than a request held open until it gives up. A row stored
        // after all is answered as a duplicate then.
        let timeout = self.config.store_timeout;
        let is_new = tokio::time::timeout(timeout, self.inbox.store(row))
            .await
            .map_err(|_| IngestError::StoreUnavailable(Arc::new(StoreError::TimedOut(timeout))))?
            .map_err(IngestError::StoreUnavailable)?;
        tracing::debug!(stripe_event_id = %event_id, %correlation_id, duplicate = !is_new, "webhook stored");
        Ok(Receipt {
            event_id,
            duplicate: !is_new,
        })
    }

    /// Applies every new event in the log to the read models. First, when the previous step
    /// found nothing new, a save was refused by a rebuild, or [`GENERATION_CHECK`] has
    /// passed, it asks whether the saved views were rebuilt elsewhere and reloads them if so.
    /// A busy projector pays no extra query per batch; it can never save over a rebuild,
    /// since the save itself is conditional on the generation; an idle one notices a
    /// `subledger replay` at its next poll.
    pub async fn project(&self) -> Result<usize, ProjectionError> {
        self.project_pausing(|| std::future::ready(())).await
    }

    /// [`Self::project`], awaiting `between_batches` after each batch of the log it saved.
    async fn project_pausing<Pause: std::future::Future<Output = ()>>(
        &self,
        between_batches: impl FnMut() -> Pause,
    ) -> Result<usize, ProjectionError> {
        let mut projector = self.projector.lock().await;
        let now = self.config.clock.now();
        if projector.should_check_generation(GENERATION_CHECK)
            && projector.rebuilt_elsewhere(&self.db).await?
        {
            tracing::info!("the saved billing views were rebuilt; reloading them");
            *projector =
                BillingProjector::load(&self.db, &self.config.catalog, &self.entitlements, now)
                    .await?;
            self.feed_may_have_changed();
        }
        let applied = projector
            .catch_up(
                &self.db,
                &self.config.catalog,
                &self.entitlements,
                now,
                between_batches,
            )
            .await?;
        // The answers are at the projector's checkpoint while its lock is held: the feed
        // compares them there. A failure leaves the feed where it was, to be tried next time.
        if let Err(error) = self.record_changes(projector.applied()).await {
            tracing::warn!(%error, "entitlement changes could not be recorded; retrying later");
        }
        Ok(applied)
    }

    /// Processes the inbox until nothing is due, then projects until every committed event is
    /// applied. For tests and one-shot runs. On PostgreSQL the last step waits for the
    /// visibility horizon (see ARCHITECTURE.md), at most [`DRAIN_TIMEOUT`].
    pub async fn drain(&self) -> Result<(), EngineError> {
        while self.process_inbox().await?.handled() > 0 {}
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        loop {
            self.project().await?;
            let applied = self.projector.lock().await.applied();
            if !self.db.has_events_after(applied).await? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(EngineError::NotCaughtUp(DRAIN_TIMEOUT));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How long an answer may be reused without asking again (see
    /// [`EngineConfig::answer_max_age`]).
    pub fn answer_max_age(&self) -> Duration {
        self.config.answer_max_age
    }

    /// Now, by the engine's clock (a scenario's simulated time in tests).
    pub fn now(&self) -> DateTime<Utc> {
        self.config.clock.now()
    }

    /// A customer's current entitlements, from memory. `None` for a customer never seen.
    pub fn entitlements(&self, customer_id: &str) -> Option<Arc<CustomerEntitlements>> {
        self.entitlements.get(
            customer_id,
            &self.config.catalog,
            self.config.clock.as_ref(),
        )
    }

    /// A customer's domain events in order, with both clocks and the Stripe event behind each.
    pub async fn timeline(&self, customer_id: &str) -> Result<Vec<TimelineEntry>, EngineError> {
        let stored = self.db.events_of(Customer::TYPE, customer_id).await?;
        stored
            .into_iter()
            .map(|stored| {
                let event: CustomerEvent = crate::projector::decode(&stored)?;
                let metadata = stored.metadata()?;
                let (stripe_event_id, stripe_event_type) = match &metadata.origin {
                    Origin::Webhook {
                        event_id,
                        event_type,
                        ..
                    } => (Some(event_id.clone()), event_type.clone()),
                    _ => (None, None),
                };
                let drift = match &metadata.origin {
                    Origin::Reconciliation { drift, .. } => Some(drift.clone()),
                    _ => None,
                };
                Ok(TimelineEntry {
                    sequence: stored.sequence,
                    event_type: stored.event_type,
                    occurred_at: event.occurred_at(),
                    recorded_at: Some(metadata.received_at),
                    stripe_event_id,
                    stripe_event_type,
                    actor: metadata.origin.actor().map(str::to_owned),
                    drift,
                    event,
                })
            })
            .collect()
    }

    /// The stretches of Stripe time, from `from` to now, the customer spent past due or
    /// suspended, by their `timeline` (as [`Engine::timeline`] returns it). The state can only
    /// change when a fact happened or a grace period ended, so it is resolved at those moments
    /// alone, each from the facts that had happened by then: the same answers `?at=` gives.
    pub fn dunning_history(
        &self,
        customer_id: &str,
        timeline: &[TimelineEntry],
        from: DateTime<Utc>,
    ) -> Vec<DunningSpan> {
        let now = self.config.clock.now();
        let dunning_at = |at: DateTime<Utc>| {
            fold_view(customer_id, timeline, Some((at, Basis::Effective)))
                .map_or(Dunning::OK, |view| {
                    Entitlements::resolve(&view, &self.catalogs.at(at).catalog, at).dunning
                })
        };
        let mut states = BTreeMap::new();
        let mut grace_ends = Vec::new();
        let moments: BTreeSet<DateTime<Utc>> = timeline
            .iter()
            .map(|entry| entry.occurred_at)
            .filter(|at| (from..=now).contains(at))
            .collect();
        for at in moments {
            let dunning = dunning_at(at);
            grace_ends.extend(dunning.grace_ends_at.filter(|end| (at..=now).contains(end)));
            states.insert(at, dunning.state);
        }
        for end in grace_ends {
            states.entry(end).or_insert_with(|| dunning_at(end).state);
        }
        let mut spans = Vec::new();
        let mut current: Option<(DunningState, DateTime<Utc>)> = None;
        for (at, state) in states {
            if current.is_some_and(|(known, _)| known == state) {
                continue;
            }
            if let Some((known, since)) = current.replace((state, at)) {
                spans.push(DunningSpan {
                    state: known,
                    from: since,
                    until: Some(at),
                });
            }
        }
        if let Some((state, since)) = current {
            spans.push(DunningSpan {
                state,
                from: since,
                until: None,
            });
        }
        spans.retain(|span| matches!(span.state, DunningState::PastDue | DunningState::Suspended));
        spans
    }

    /// An operator places a hold: the customer (or one subscription) loses access until it is
    /// lifted. Placing the same `hold_id` again changes nothing.
    pub async fn place_hold(
        &self,
        customer_id: &str,
        hold: NewHold,
        correlation_id: &str,
    ) -> Result<(), EngineError> {
        if self.entitlements(customer_id).is_none() {
            return Err(EngineError::UnknownCustomer(customer_id.to_owned()));
        }
        let command = CustomerCommand::PlaceHold {
            hold_id: hold.hold_id,
            subscription: hold.subscription,
            reason: hold.reason,
            covers_grants: hold.covers_grants,
            placed_at: hold.at.unwrap_or_else(|| self.config.clock.now()),
        };
        self.operator_command(customer_id, command, correlation_id)
            .await
    }

    pub async fn lift_hold(
        &self,
        customer_id: &str,
        hold_id: &str,
        at: Option<DateTime<Utc>>,
        correlation_id: &str,
    ) -> Result<(), EngineError> {
        let command = CustomerCommand::LiftHold {
            hold_id: hold_id.to_owned(),
            lifted_at: at.unwrap_or_else(|| self.config.clock.now()),
        };
        self.operator_command(customer_id, command, correlation_id)
            .await
    }

    /// An operator gives the customer a feature beyond the plans (see
    /// `subledger_domain::grants`). The terms must fit this server's catalog: a feature it
    /// names, `enabled` for a boolean feature and a `limit` for a metered one. The same id with
    /// the same terms again changes nothing; other terms are refused.
    ///
    /// Returns the grant as recorded: on a retry, the first request's (its time and operator).
    pub async fn give_grant(
        &self,
        customer_id: &str,
        grant: subledger_domain::grants::CustomerGrant,
        correlation_id: &str,
    ) -> Result<subledger_domain::grants::CustomerGrant, EngineError> {
        if self.entitlements(customer_id).is_none() {
            return Err(EngineError::UnknownCustomer(customer_id.to_owned()));
        }
        let catalog = &self.config.catalog;
        let feature = grant.terms.feature.as_str();
        grant.terms.check(
            catalog.features().contains(feature),
            catalog.is_metered(feature),
        )?;
        let id = grant.id.clone();
        self.operator_command(
            customer_id,
            CustomerCommand::GiveGrant {
                grant: grant.clone(),
            },
            correlation_id,
        )
        .await?;
        let recorded = self
            .timeline(customer_id)
            .await?
            .into_iter()
            .find_map(|entry| match entry.event {
                CustomerEvent::GrantGiven { grant, .. } if grant.id == id => Some(grant),
                _ => None,
            });
        Ok(recorded.unwrap_or(grant))
    }

    /// Revokes a grant; revoking it again changes nothing.
    pub async fn revoke_grant(
        &self,
        customer_id: &str,
        grant_id: &str,
        revoked_by: &str,
        at: Option<DateTime<Utc>>,
        correlation_id: &str,
    ) -> Result<(), EngineError> {
        let command = CustomerCommand::RevokeGrant {
            grant_id: grant_id.to_owned(),
            revoked_by: revoked_by.to_owned(),
            revoked_at: at.unwrap_or_else(|| self.config.clock.now()),
        };
        self.operator_command(customer_id, command, correlation_id)
            .await
    }

    /// Runs an operator's command; its events carry who asked and when (no Stripe event).
    async fn operator_command(
        &self,
        customer_id: &str,
        command: CustomerCommand,
        correlation_id: &str,
    ) -> Result<(), EngineError> {
        let metadata = EventMetadata {
            received_at: self.config.clock.now(),
            correlation_id: correlation_id.to_owned(),
            origin: Origin::Operator,
            order_id: None,
        };
        // A worker may append to the same customer meanwhile: re-run on the fresh aggregate.
        let result = self
            .customers
            .execute(customer_id, command, &metadata)
            .await;
        match result {
            Ok(()) => {}
            Err(cqrs_es::AggregateError::UserError(refused)) => {
                return Err(EngineError::Refused(refused))
            }
            Err(other) => return Err(EngineError::Command(other.to_string())),
        }
        self.events_appended.notify_one();
        // The operator expects the answer to reflect the command at once. On PostgreSQL the
        // projector reads only transactions older than every running one, so while any other
        // transaction is open (a worker's, another server's) one pass may stop short of this
        // event: project until the log's end as of now is applied, for a moment at most.
        let end = self.db.log_end().await?;
        let deadline = std::time::Instant::now() + OPERATOR_ANSWER_WAIT;
        loop {
            self.project().await?;
            if self.projector.lock().await.applied() >= end {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(
                    wait = ?OPERATOR_ANSWER_WAIT,
                    "an operator's command is recorded; its answer follows when running transactions end"
                );
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Records a fact read from Stripe's API (backfill, reconciliation) under `metadata`,
    /// which says who recorded it and why. The aggregate judges it like any other: a fact it
    /// already has records nothing.
    pub(crate) async fn record_fact(
        &self,
        translation: subledger_stripe::Translation,
        metadata: EventMetadata,
    ) -> Result<(), String> {
        use subledger_stripe::Translation;
        match translation {
            Translation::Ignored { .. } => return Ok(()),
            Translation::Customer {
                customer_id,
                command,
            } => self
                .customers
                .execute(customer_id.as_str(), command, &metadata)
                .await
                .map_err(|e| e.to_string())?,
            Translation::Payment {
                payment_intent_id,
                order_id,
                command,
            } => {
                let metadata = EventMetadata {
                    order_id,
                    ..metadata
                };
                self.payments
                    .execute(payment_intent_id.as_str(), command, &metadata)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        self.events_appended.notify_one();
        Ok(())
    }

    /// A customer's billing view as their whole timeline describes it now.
    pub(crate) async fn current_view(
        &self,
        customer_id: &str,
    ) -> Result<Option<BillingView>, EngineError> {
        let timeline = self.timeline(customer_id).await?;
        Ok(fold_view(customer_id, &timeline, None))
    }

    /// An order (a PaymentIntent with `metadata.order_id`) as its payments' events describe it;
    /// `None` when no payment for it is known. Several attempts (PaymentIntents) fold together
    /// in Stripe time.
    /// `account` is the connected account whose order it is (`None`: the platform's); the
    /// answer names the order and its customer as that account knows them.
    pub async fn order(
        &self,
        account: Option<&str>,
        order_id: &str,
    ) -> Result<Option<OrderView>, EngineError> {
        let mut events: Vec<(DateTime<Utc>, i64, PaymentEvent)> = Vec::new();
        let key = subledger_domain::ids::scoped(account, order_id);
        for payment_intent in self.db.payments_of_order(&key).await? {
            for stored in self.db.events_of(Payment::TYPE, &payment_intent).await? {
                let event: PaymentEvent = crate::projector::decode(&stored)?;
                events.push((event.occurred_at(), stored.sequence, event));
            }
        }
        events.sort_by_key(|(at, sequence, _)| (*at, *sequence));
        let view = events.iter().fold(None, |view, (_, _, event)| {
            OrderView::fold(view, order_id, event)
        });
        Ok(view.map(|mut view| {
            view.customer = view
                .customer
                .map(|customer| CustomerId::new(customer.stripe_id()));
            view
        }))
    }

    /// What the customer was entitled to at `at`: by when things happened at Stripe
    /// ([`Basis::Effective`]), or by what Subledger had learned by then ([`Basis::Known`]).
    /// `None` for a customer not known at that moment.
    pub async fn entitlements_at(
        &self,
        customer_id: &str,
        at: DateTime<Utc>,
        basis: Basis,
    ) -> Result<Option<Entitlements>, EngineError> {
        let timeline = self.timeline(customer_id).await?;
        let view = fold_view(customer_id, &timeline, Some((at, basis)));
        Ok(view.map(|view| Entitlements::resolve(&view, &self.catalogs.at(at).catalog, at)))
    }

    /// Why the customer has (or lacks) `feature`, now or as of a moment in the past.
    pub async fn explain(
        &self,
        customer_id: &str,
        feature: &str,
        as_of: Option<(DateTime<Utc>, Basis)>,
    ) -> Result<Option<Explanation>, EngineError> {
        let timeline = self.timeline(customer_id).await?;
        let at = as_of.map_or_else(|| self.config.clock.now(), |(at, _)| at);
        let counted: Vec<TimelineEntry> = timeline
            .into_iter()
            .filter(|entry| as_of.is_none_or(|(at, basis)| counts(entry, at, basis)))
            .collect();
        let view = fold_view(customer_id, &counted, None);
        Ok(view.map(|view| {
            crate::explain::explain(&view, self.catalogs.at(at), &counted, feature, at)
        }))
    }

    pub async fn inbox_stats(&self) -> Result<InboxStats, StoreError> {
        self.db.inbox_stats().await
    }

    /// Customers by dunning state and the disputes still open, from this process's answers
    /// (memory only: cheap enough for every metrics scrape).
    pub fn census(&self) -> crate::projector::Census {
        self.entitlements.census()
    }

    /// The log position this process's answers reflect (from memory).
    pub fn projected_position(&self) -> i64 {
        self.entitlements.projected_position()
    }

    /// Whether this process can do its work, for `/readyz`: the store answers within
    /// `bound`, and how far behind the inbox and the answers are. Reads only the pending part
    /// of the inbox and the log's newest position, so its cost does not grow with history.
    pub async fn readiness(&self, bound: Duration) -> Result<Readiness, ReadinessError> {
        let checks = async {
            let pending = self.db.pending_inbox().await?;
            let head = self.db.log_head().await?;
            let quarantined = self.db.projection_quarantine_count().await?;
            Ok::<_, StoreError>((pending, head, quarantined))
        };
        let (pending, head, quarantined) = tokio::time::timeout(bound, checks)
            .await
            .map_err(|_| ReadinessError::Slow(bound))?
            .map_err(ReadinessError::Store)?;
        let projected = self.entitlements.projected_position();
        let now_ms = self.now_ms();
        Ok(Readiness {
            pending: pending.pending,
            failing: pending.failing,
            oldest_pending_age: pending.oldest_received_at_ms.map(|received| {
                Duration::from_millis(u64::try_from(now_ms.saturating_sub(received)).unwrap_or(0))
            }),
            log_head: head,
            projected,
            projection_lag: head.saturating_sub(projected).max(0),
            quarantined,
        })
    }

    /// Events the projector skipped because it cannot decode them, in log order.
    pub async fn projection_quarantine(&self) -> Result<Vec<QuarantinedEvent>, StoreError> {
        self.db.projection_quarantine().await
    }

    /// Inbox rows for operators (`subledger inbox list`).
    pub async fn inbox_rows(&self, filter: &InboxFilter) -> Result<Vec<InboxRow>, StoreError> {
        self.db.list_inbox(filter).await
    }

    /// Makes pending rows due now (`subledger inbox retry`): for each id, the row's status, or
    /// `None` when the inbox does not hold it.
    pub async fn retry_inbox(
        &self,
        event_ids: &[String],
    ) -> Result<Vec<(String, Option<String>)>, StoreError> {
        let mut statuses = Vec::new();
        for id in event_ids {
            let status = self.db.retry_inbox_event_now(id, self.now_ms()).await?;
            statuses.push((id.clone(), status));
        }
        self.inbox_stored.notify_one();
        Ok(statuses)
    }

    /// Puts processed and ignored rows back in line for today's translator
    /// (`subledger inbox reprocess`). Commands are idempotent, so facts already recorded
    /// record nothing again; what an older translator missed is recorded now.
    pub async fn reprocess_inbox(
        &self,
        event_type: Option<&str>,
        since: Option<DateTime<Utc>>,
    ) -> Result<u64, StoreError> {
        let count = self
            .db
            .reprocess_inbox(
                event_type,
                since.map(|t| t.timestamp_millis()),
                self.now_ms(),
            )
            .await?;
        self.inbox_stored.notify_one();
        Ok(count)
    }

    /// Replays the whole log into fresh views, without touching the saved ones, and returns
    /// them: a projection can be dropped and rebuilt at any time and must come out identical.
    pub async fn rebuild_views(&self) -> Result<Vec<BillingView>, ProjectionError> {
        let fresh = BillingProjector::rebuild(&self.db, None, &mut |_| {}).await?;
        Ok(fresh.into_views().into_values().collect())
    }

    /// `subledger replay`: rebuilds the read models from the global event log and puts them
    /// in place of the saved ones in one transaction. Every running server notices the new
    /// generation at its next projection step and reloads, without a restart.
    /// `on_progress` hears how many events have been applied, after each batch.
    pub async fn replay(
        &self,
        on_progress: &mut (dyn FnMut(u64) + Send + Sync),
    ) -> Result<ReplaySummary, EngineError> {
        let started = std::time::Instant::now();
        let rebuilt = BillingProjector::rebuild(&self.db, None, on_progress).await?;
        let rebuilt_in = started.elapsed();
        let customers = rebuilt.views().len();
        // The views are saved in a task of their own while the answers are prepared here:
        // the answers are published only once the save has committed.
        let save = rebuilt.spawn_replace_saved(&self.db);
        let answers = rebuilt.prepare_answers(
            &self.config.catalog,
            &self.entitlements,
            self.config.clock.now(),
        );
        let generation = save
            .await
            .map_err(|e| ProjectionError::Task(e.to_string()))??;
        // This process serves from the rebuilt views too: they are already in memory, so they
        // take the place of its projector's instead of being read back from the store.
        {
            let mut projector = self.projector.lock().await;
            *projector = rebuilt.adopt_as_saved(generation, answers?, &self.entitlements);
        }
        self.project().await?;
        Ok(ReplaySummary {
            customers,
            generation,
            rebuilt_in,
            elapsed: started.elapsed(),
        })
    }

    /// `subledger replay --verify`: rebuilds in memory up to the saved views' checkpoint and
    /// compares, customer by customer, with what is saved. Changes nothing.
    pub async fn verify_views(
        &self,
        on_progress: &mut (dyn FnMut(u64) + Send + Sync),
    ) -> Result<Vec<ViewDifference>, EngineError> {
        let saved = self.db.load_billing_views().await?;
        let rebuilt = BillingProjector::rebuild(&self.db, Some(saved.checkpoint), on_progress)
            .await?
            .into_views();
        let mut saved_views: BTreeMap<String, String> = saved
            .rows
            .into_iter()
            .map(|row| (row.key, row.json))
            .collect();
        let mut differences = Vec::new();
        for (customer, view) in rebuilt {
            let rebuilt_json = serde_json::to_string(&view).map_err(ProjectionError::from)?;
            let stored = saved_views.remove(customer.as_str());
            let same = stored.as_deref().is_some_and(|stored| {
                serde_json::from_str::<serde_json::Value>(stored).ok()
                    == serde_json::from_str::<serde_json::Value>(&rebuilt_json).ok()
            });
            if !same {
                differences.push(ViewDifference {
                    customer: customer.as_str().to_owned(),
                    saved: stored,
                    rebuilt: Some(rebuilt_json),
                });
            }
        }
        differences.extend(
            saved_views
                .into_iter()
                .map(|(customer, json)| ViewDifference {
                    customer,
                    saved: Some(json),
                    rebuilt: None,
                }),
        );
        Ok(differences)
    }

    /// The views this engine serves from, for comparison with a rebuild.
    pub async fn current_views(&self) -> Vec<BillingView> {
        self.projector
            .lock()
            .await
            .views()
            .values()
            .map(|view| BillingView::clone(view))
            .collect()
    }

    /// The customer whose metadata carries this product user id.
    /// `account` is the connected account whose user it is; `None` for the platform's.
    pub fn customer_of_user(&self, account: Option<&str>, user_id: &str) -> Option<String> {
        self.entitlements.customer_of_user(account, user_id)
    }

    /// The customers whose email at Stripe is `email` (ignoring case), at most `limit`.
    pub fn customers_with_email(&self, email: &str, limit: usize) -> Vec<String> {
        self.entitlements.customers_with_email(email, limit)
    }

    pub fn knows_customer(&self, customer_id: &CustomerId) -> bool {
        self.entitlements(customer_id.as_str()).is_some()
    }

    /// Runs the inbox worker until shutdown.
    pub fn spawn_worker(self: &Arc<Self>, mut shutdown: Shutdown) -> JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            while !shutdown.is_requested() {
                match engine.process_inbox().await {
                    Ok(report) if report.handled() > 0 => {
                        engine.yield_to_ingest().await;
                        continue;
                    }
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "inbox worker could not reach the store"),
                }
                shutdown
                    .sleep(engine.config.poll_interval, &engine.inbox_stored)
                    .await;
            }
        })
    }

    /// Between batches, a busy worker (or projector) lets webhook deliveries that are waiting
    /// go first: each holds Stripe's request open, while the worker's rows only wait in the
    /// inbox and the projector's events in the log. It waits at most [`WORKER_YIELD`] per
    /// batch, so it still keeps up under sustained ingest, and not at all when nothing is
    /// waiting. (`make bench`: with ingest at half its one-connection rate and the worker
    /// applying the same deliveries, acknowledgements queued behind the worker and the
    /// projector on 2 cores, SQLite's one writer most of all.)
    async fn yield_to_ingest(&self) {
        let deadline = tokio::time::Instant::now() + WORKER_YIELD;
        while self.inbox.waiting() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Runs the projector until shutdown.
    pub fn spawn_projector(self: &Arc<Self>, mut shutdown: Shutdown) -> JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut catalog_checked = tokio::time::Instant::now();
            let mut warned_of: Option<String> = None;
            while !shutdown.is_requested() {
                // Between batches it lets waiting deliveries go first, as the worker does:
                // its saves share the store's writer with them.
                if let Err(error) = engine.project_pausing(|| engine.yield_to_ingest()).await {
                    tracing::error!(%error, "projector failed; retrying");
                }
                // Another server published a catalog: this one keeps its version until it
                // restarts, and says so once per version.
                if catalog_checked.elapsed() >= GENERATION_CHECK {
                    catalog_checked = tokio::time::Instant::now();
                    if let Ok(Some(newer)) = engine.catalog_outdated().await {
                        if warned_of.as_deref() != Some(newer.version.as_str()) {
                            tracing::warn!(
                                version = %newer.version,
                                published_by = %newer.published_by,
                                served = %engine.catalogs.current().version,
                                "a newer catalog version was published; this server serves its own until restarted"
                            );
                            warned_of = Some(newer.version);
                        }
                    }
                }
                shutdown
                    .sleep(engine.config.poll_interval, &engine.events_appended)
                    .await;
            }
        })
    }

    pub async fn close(&self) {
        self.db.close().await;
    }
}
