//! The billing projector: a catch-up projector over the global event log.
//!
//! It keeps one [`BillingView`] per customer in memory, saves changed views with its checkpoint
//! in one transaction, and publishes freshly resolved entitlements (with their JSON answer
//! already serialized) to the [`EntitlementIndex`] that serves reads without touching the
//! database. Several processes may run it against one PostgreSQL: each keeps its own memory
//! current from the log, and whichever saves first moves the shared checkpoint.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use sha2::{Digest, Sha256};
use subledger_domain::catalog::Catalog;
use subledger_domain::customer::{Customer, CustomerEvent};
use subledger_domain::dunning::DunningState;
use subledger_domain::entitlements::{BillingView, Entitlements, FeatureValue};
use subledger_domain::ids::CustomerId;
use subledger_domain::payment::Payment;
use subledger_store::projection::{QuarantinedEvent, ViewRow};
use subledger_store::{Checkpoint, Database, EventMetadata, Origin, StoreError, StoredEvent};

use crate::clock::Clock;
use crate::compact_answer::{AnswerDictionary, CompactJson, CorruptAnswer};

/// How many log events one step reads.
const BATCH: i64 = 500;

/// The shape of a saved [`BillingView`]. Raise it whenever that shape (or what the projection
/// computes into it) changes: a server that finds saved views of another version rebuilds
/// them from the log on start instead of trusting them or refusing to start.
///
/// - 1: the first saved shape.
/// - 2: an unpaid invoice's `since` is its earliest failed attempt in whatever order the
///   attempts arrived (a late first attempt used to be lost), written-off invoices no longer
///   count as unpaid, and each subscription's last paid invoice is kept (`last_paid`).
/// - 3: every failed invoice is kept per subscription (`unpaid`, by invoice) and the oldest
///   counts whatever order the failures arrived in; a pending update's invoice never counts
///   (`pending_updates`).
/// - 4: `first_seen_at`, the Stripe time of a customer's earliest fact (which customer answers
///   for a user id several name).
/// - 5: `stripe_created` (the customer object's `created`) replaces `first_seen_at`, and
///   `updated_at` is gone: both depended on the delivery order (a fact older than one already
///   recorded, or the same as it, records nothing), which the ordering properties found
///   (`crates/domain/tests/ordering_properties.rs`).
/// - 6: `email`, the customer's email at Stripe, for the dashboard's search.
pub const BILLING_VIEW_VERSION: i32 = 6;

/// A customer's features, shared by every customer whose features are the same (most
/// customers of one plan are).
pub type Features = BTreeMap<String, FeatureValue>;

/// A customer's prepared answer: what a request needs, and nothing it does not. The full
/// [`Entitlements`] are not kept (they cost more than the JSON made from them); the JSON is
/// kept compressed (see [`crate::compact_answer`]), the features are shared with every
/// customer that has the same ones, and the view is the projector's own.
#[derive(Debug)]
pub struct CustomerEntitlements {
    /// `GET /v1/customers/{id}/entitlements`, serialized once when the answer changed.
    json: CompactJson,
    features: Arc<Features>,
    /// When the answer stops holding without any new event (a grace period's end).
    valid_until: Option<DateTime<Utc>>,
    /// The facts it was resolved from, to resolve again when a deadline passes.
    view: Arc<BillingView>,
    /// The most serious dunning state of the answer, for the metrics' census.
    dunning: DunningState,
    /// The first 8 bytes of the answer's SHA-256: its `ETag`, and what the change feed
    /// compares.
    digest: [u8; 8],
}

impl CustomerEntitlements {
    /// The answer of `GET /v1/customers/{id}/entitlements`, as JSON.
    pub fn json(&self) -> Result<Bytes, CorruptAnswer> {
        self.json.expand()
    }

    /// One feature's answer; a feature the customer's plans do not grant is disabled.
    pub fn feature(&self, name: &str) -> FeatureValue {
        self.features
            .get(name)
            .copied()
            .unwrap_or(FeatureValue::DISABLED)
    }

    /// The answer's digest, in hex: the same answer has the same digest on every server.
    pub fn digest(&self) -> String {
        digest_hex(&self.digest)
    }

    /// The answer's digest as bytes, for an `ETag` made without an intermediate string.
    pub fn raw_digest(&self) -> [u8; 8] {
        self.digest
    }

    /// When the answer stops holding without any new fact (the next grace period's end).
    pub fn valid_until(&self) -> Option<DateTime<Utc>> {
        self.valid_until
    }

    /// The most serious dunning state of the customer's subscriptions.
    pub fn dunning_state(&self) -> DunningState {
        self.dunning
    }

    /// Whether the answer still holds at `at` (no grace period has ended since).
    fn holds_at(&self, at: DateTime<Utc>) -> bool {
        self.valid_until.is_none_or(|until| at < until)
    }
}

/// The digest of an answer's JSON: the first 8 bytes of its SHA-256. What `ETag`s and the
/// change feed compare, for prepared answers and answers about the past alike.
pub fn answer_digest(json: &[u8]) -> [u8; 8] {
    let mut digest = [0; 8];
    digest.copy_from_slice(&Sha256::digest(json)[..8]);
    digest
}

/// A digest (or any bytes) in lower-case hex.
pub fn digest_hex(digest: &[u8]) -> String {
    hex::encode(digest)
}

/// The customers by dunning state, and the disputes still open: see
/// [`EntitlementIndex::census`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    pub by_dunning_state: BTreeMap<DunningState, u64>,
    pub open_disputes: usize,
}

/// Feature sets in use, so that customers with the same features share one copy.
#[derive(Debug, Default)]
struct FeaturePool {
    sets: HashSet<Arc<Features>>,
    /// The pool's size after the last sweep; the next sweep comes when it has doubled.
    swept_at: usize,
}

impl FeaturePool {
    fn share(&mut self, features: Features) -> Arc<Features> {
        if let Some(shared) = self.sets.get(&features) {
            return Arc::clone(shared);
        }
        if self.sets.len() >= 2 * self.swept_at.max(64) {
            // Sets no customer holds any more: only the pool's own reference is left.
            self.sets.retain(|set| Arc::strong_count(set) > 1);
            self.swept_at = self.sets.len();
        }
        let shared = Arc::new(features);
        self.sets.insert(Arc::clone(&shared));
        shared
    }
}

/// Entitlements by customer id, read by request handlers, written by the projector; and the
/// customer of each product user id (the customer metadata key the config names).
#[derive(Debug)]
pub struct EntitlementIndex {
    by_customer: RwLock<HashMap<String, Arc<CustomerEntitlements>>>,
    users: RwLock<UserIndex>,
    user_key: String,
    features: Mutex<FeaturePool>,
    dictionary: Arc<AnswerDictionary>,
    /// The log position the answers reflect, for readiness checks (which must not wait for
    /// the projector's lock while it works through a long batch).
    projected: AtomicI64,
}

/// The customers each product user id names. When several customers' metadata name one user
/// id, the one that answers for it is, in this order: a customer that is not deleted; the one
/// Stripe created most recently (the customer object's `created`: a user who signs up again
/// gets a new customer); the greatest customer id. Each part is a fact Stripe states the same
/// in every snapshot, not of the order the facts or the views arrived in, so every server
/// answers the same, before and after a restart, however Stripe delivered.
///
/// A user id is a name within one Stripe account: a connected account's customers claim
/// user ids of that account only, so two accounts' `u_1` are two users.
#[derive(Debug, Default)]
struct UserIndex {
    claims: HashMap<AccountUser, Vec<UserClaim>>,
    user_of: HashMap<String, AccountUser>,
}

/// A product user id within an account (`None`: the platform's own).
type AccountUser = (Option<String>, String);

/// One customer's claim on a user id, ordered so that the greatest answers for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct UserClaim {
    not_deleted: bool,
    created: Option<DateTime<Utc>>,
    customer: String,
}

impl EntitlementIndex {
    /// An empty index for answers resolved with `catalog`.
    pub fn new(user_key: impl Into<String>, catalog: &Catalog) -> Self {
        Self {
            by_customer: RwLock::default(),
            users: RwLock::default(),
            user_key: user_key.into(),
            features: Mutex::default(),
            dictionary: AnswerDictionary::for_catalog(catalog),
            projected: AtomicI64::new(0),
        }
    }

    /// How many customers are in each dunning state, and how many disputes are open, by the
    /// answers as prepared (a grace period that ended since counts when next asked).
    pub fn census(&self) -> Census {
        let answers = self
            .by_customer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut census = Census::default();
        for answer in answers.values() {
            *census.by_dunning_state.entry(answer.dunning).or_default() += 1;
            census.open_disputes += answer
                .view
                .disputes
                .values()
                .filter(|dispute| dispute.is_open())
                .count();
        }
        census
    }

    /// The log position the answers reflect.
    pub fn projected_position(&self) -> i64 {
        self.projected.load(Ordering::Relaxed)
    }

    fn mark_projected(&self, checkpoint: Checkpoint) {
        self.projected.store(checkpoint.position, Ordering::Relaxed);
    }

    /// The customer of `account` (`None`: the platform) whose metadata names `user_id`.
    pub fn customer_of_user(&self, account: Option<&str>, user_id: &str) -> Option<String> {
        let key = (account.map(str::to_owned), user_id.to_owned());
        self.users
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .claims
            .get(&key)
            .and_then(|claims| claims.iter().max())
            .map(|claim| claim.customer.clone())
    }

    /// Every customer with an answer.
    pub fn customer_ids(&self) -> Vec<String> {
        self.by_customer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// The customers whose email at Stripe is `email`, ignoring case (Stripe lets several
    /// customers share one), in id order, at most `limit` of them. A scan of the answers in
    /// memory: an operator's search, not a product's hot path, so no index costs memory.
    pub fn customers_with_email(&self, email: &str, limit: usize) -> Vec<String> {
        let answers = self
            .by_customer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut found: Vec<String> = answers
            .iter()
            .filter(|(_, answer)| {
                answer
                    .view
                    .email
                    .as_deref()
                    .is_some_and(|known| known.eq_ignore_ascii_case(email))
            })
            .map(|(customer, _)| customer.clone())
            .collect();
        found.sort_unstable();
        found.truncate(limit);
        found
    }

    /// A customer's entitlements now: the prepared answer, or, when a deadline (the end of a
    /// grace period) has passed since it was prepared, a fresh one that replaces it. The clock
    /// is read only for an answer that has a deadline: most have none, and this is the path
    /// every entitlement check takes.
    pub fn get(
        &self,
        customer_id: &str,
        catalog: &Catalog,
        clock: &dyn Clock,
    ) -> Option<Arc<CustomerEntitlements>> {
        let found = self
            .by_customer
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(customer_id)
            .cloned()?;
        if found.valid_until.is_none() {
            return Some(found);
        }
        let at = clock.now();
        if found.holds_at(at) {
            return Some(found);
        }
        match self.prepare(Arc::clone(&found.view), catalog, at) {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                self.publish(vec![(customer_id.to_owned(), Arc::clone(&fresh))]);
                Some(fresh)
            }
            Err(error) => {
                tracing::error!(%error, customer_id, "entitlements cannot be serialized");
                Some(found)
            }
        }
    }

    /// The prepared answer for `view` at `at`.
    pub(crate) fn prepare(
        &self,
        view: Arc<BillingView>,
        catalog: &Catalog,
        at: DateTime<Utc>,
    ) -> Result<CustomerEntitlements, serde_json::Error> {
        let entitlements = Entitlements::resolve(&view, catalog, at);
        // Room for a typical answer (about 600 bytes) from the start: grown from nothing, the
        // buffer was reallocated about seven times per answer (7% of preparing a replay's
        // answers in perf).
        let mut plain = Vec::with_capacity(1024);
        serde_json::to_writer(&mut plain, &entitlements)?;
        let digest = answer_digest(&plain);
        let json = self.dictionary.compress(&plain);
        let features = self
            .features
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .share(entitlements.features);
        Ok(CustomerEntitlements {
            json,
            features,
            valid_until: entitlements.valid_until,
            view,
            dunning: entitlements.dunning.state,
            digest,
        })
    }

    fn publish(&self, updates: Vec<(String, Arc<CustomerEntitlements>)>) {
        {
            let mut users = self
                .users
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (customer, found) in &updates {
                users.record(customer, &found.view, &self.user_key);
            }
        }
        let mut map = self
            .by_customer
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.extend(updates);
    }

    /// Puts `answers` in place of every answer at once: a reader sees the old set or the new
    /// one, never an empty index in between (a reload or a replay must not answer 404).
    fn replace_all(&self, answers: Vec<(String, Arc<CustomerEntitlements>)>) {
        let mut users = UserIndex::default();
        for (customer, found) in &answers {
            users.record(customer, &found.view, &self.user_key);
        }
        let answers: HashMap<_, _> = answers.into_iter().collect();
        let previous = {
            let mut map = self
                .by_customer
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *self
                .users
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = users;
            std::mem::replace(&mut *map, answers)
        };
        // Freed outside the lock.
        drop(previous);
    }
}

impl UserIndex {
    /// Records what `customer`'s view now says: the user id its metadata names under
    /// `user_key` (or none), whether it is deleted, when it was first seen.
    fn record(&mut self, customer: &str, view: &BillingView, user_key: &str) {
        if let Some(previous) = self.user_of.remove(customer) {
            if let Some(claims) = self.claims.get_mut(&previous) {
                claims.retain(|claim| claim.customer != customer);
                if claims.is_empty() {
                    self.claims.remove(&previous);
                }
            }
        }
        let Some(user) = view.metadata.get(user_key) else {
            return;
        };
        let user = (view.customer_id.account().map(str::to_owned), user.clone());
        self.claims
            .entry(user.clone())
            .or_default()
            .push(UserClaim {
                not_deleted: !view.deleted,
                created: view.stripe_created,
                customer: customer.to_owned(),
            });
        self.user_of.insert(customer.to_owned(), user);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event {aggregate_id} #{sequence} ({event_type}) cannot be read: {source}")]
    UnreadableEvent {
        aggregate_id: String,
        sequence: i64,
        event_type: String,
        source: serde_json::Error,
    },
    #[error("entitlements cannot be serialized: {0}")]
    Serialize(#[from] serde_json::Error),
    #[error(transparent)]
    NewerEvent(#[from] subledger_domain::schema::UnknownVersion),
    #[error("a projection task stopped: {0}")]
    Task(String),
}

/// A stored domain event's payload in today's shape (upcast from the version it was stored
/// in), or which event could not be read.
pub(crate) fn decode<E: serde::de::DeserializeOwned>(
    stored: &StoredEvent,
) -> Result<E, ProjectionError> {
    let unreadable = |source| ProjectionError::UnreadableEvent {
        aggregate_id: stored.aggregate_id.clone(),
        sequence: stored.sequence,
        event_type: stored.event_type.clone(),
        source,
    };
    if subledger_domain::schema::is_current(&stored.event_type, &stored.event_version) {
        return serde_json::from_str(&stored.payload).map_err(unreadable);
    }
    let stored_shape = serde_json::from_str(&stored.payload).map_err(unreadable)?;
    let payload =
        subledger_domain::schema::upcast(&stored.event_type, &stored.event_version, stored_shape)?;
    serde_json::from_value(payload).map_err(unreadable)
}

#[derive(Debug)]
pub(crate) struct BillingProjector {
    /// Shared with the prepared answers in the index; changed copy-on-write.
    views: BTreeMap<CustomerId, Arc<BillingView>>,
    /// Where each view last changed, so a save can include every view the shared checkpoint
    /// has not seen yet, even after another process saved for a while.
    changed_at: HashMap<CustomerId, Checkpoint>,
    /// How far this process has applied the log.
    applied: Checkpoint,
    /// The checkpoint stored in the database, as last seen.
    saved: Checkpoint,
    /// The generation of the saved views this projector started from.
    generation: i64,
    /// When the saved views' generation was last read.
    generation_checked: std::time::Instant,
    last_step_idle: bool,
    /// A save was refused because the saved views are of another generation.
    save_refused_by_rebuild: bool,
    /// Events skipped because they cannot be decoded, not recorded in the store yet (a
    /// rebuild's are all it found).
    quarantined: Vec<QuarantinedEvent>,
}

/// What a batch the live projector just published tells the metrics: how long each event took
/// from being recorded (a webhook's acknowledgement) to being in the answers, the payments
/// that failed, and the disputes opened. A rebuild records none of it: it is history.
fn record_projected(events: &[StoredEvent], disputes_opened: u64) {
    let now = Utc::now();
    let lag = metrics::histogram!("subledger_ack_to_projection_seconds");
    let logged = tracing::enabled!(tracing::Level::DEBUG);
    for event in events {
        if let Ok(metadata) = event.metadata() {
            let millis = (now - metadata.received_at).num_milliseconds().max(0);
            lag.record(
                std::time::Duration::from_millis(u64::try_from(millis).unwrap_or(0)).as_secs_f64(),
            );
            // The last line about a webhook: its fact is in the answers.
            if let (true, Origin::Webhook { event_id, .. }) = (logged, &metadata.origin) {
                tracing::debug!(
                    stripe_event_id = %event_id, correlation_id = %metadata.correlation_id,
                    aggregate = %event.aggregate_id, event_type = %event.event_type,
                    lag_ms = millis, "projected"
                );
            }
        }
        let failed = match (event.aggregate_type.as_str(), event.event_type.as_str()) {
            (Customer::TYPE, "InvoicePaymentFailed") => Some("invoice"),
            (Payment::TYPE, "PaymentFailed") => Some("order"),
            _ => None,
        };
        if let Some(kind) = failed {
            metrics::counter!("subledger_payments_failed_total", "kind" => kind).increment(1);
        }
    }
    metrics::counter!("subledger_disputes_opened_total").increment(disputes_opened);
}

/// Saved views, or why they cannot be trusted.
fn decode_views(rows: &[ViewRow]) -> Result<BTreeMap<CustomerId, Arc<BillingView>>, String> {
    rows.iter()
        .map(|row| {
            serde_json::from_str::<BillingView>(&row.json)
                .map(|view| (view.customer_id.clone(), Arc::new(view)))
                .map_err(|e| format!("the saved view of {} cannot be read: {e}", row.key))
        })
        .collect()
}

impl BillingProjector {
    /// Starts from the saved views and checkpoint; rebuilds them from the log first when they
    /// are of another version or cannot be read.
    pub(crate) async fn load(
        db: &Database,
        catalog: &Catalog,
        index: &EntitlementIndex,
        now: DateTime<Utc>,
    ) -> Result<Self, ProjectionError> {
        let saved = db.load_billing_views().await?;
        let nothing_saved = saved.rows.is_empty() && saved.checkpoint == Checkpoint::default();
        let views = if saved.version == BILLING_VIEW_VERSION || nothing_saved {
            decode_views(&saved.rows)
        } else {
            Err(format!(
                "they are version {} and this build writes version {BILLING_VIEW_VERSION}",
                saved.version
            ))
        };
        let (views, checkpoint, generation) = match views {
            // A new store: stamp it with this build's version, nothing to rebuild.
            Ok(views) if saved.version != BILLING_VIEW_VERSION => {
                let generation = db
                    .replace_billing_views(saved.checkpoint, &[], BILLING_VIEW_VERSION)
                    .await?;
                (views, saved.checkpoint, generation)
            }
            Ok(views) => (views, saved.checkpoint, saved.generation),
            Err(why) => {
                tracing::warn!(%why, "rebuilding the saved billing views from the event log");
                let rebuilt = Self::rebuild(db, None, &mut |_| {}).await?;
                let generation = rebuilt.replace_saved(db).await?;
                tracing::info!(
                    customers = rebuilt.views.len(),
                    "saved billing views rebuilt"
                );
                (rebuilt.views, rebuilt.applied, generation)
            }
        };
        let projector = Self {
            views,
            changed_at: HashMap::new(),
            applied: checkpoint,
            saved: checkpoint,
            generation,
            generation_checked: std::time::Instant::now(),
            last_step_idle: true,
            save_refused_by_rebuild: false,
            quarantined: Vec::new(),
        };
        index.replace_all(projector.resolve(projector.views.keys(), index, catalog, now)?);
        index.mark_projected(projector.applied);
        Ok(projector)
    }

    /// A projector built from the log alone, up to `until` (default: everything committed),
    /// that never saves by itself. Memory grows with the number of customers, not with the
    /// length of the history: the log is read a batch at a time.
    pub(crate) async fn rebuild(
        db: &Database,
        until: Option<Checkpoint>,
        on_progress: &mut (dyn FnMut(u64) + Send + Sync),
    ) -> Result<Self, ProjectionError> {
        let mut fresh = Self::empty();
        let mut applied = 0;
        let mut events = db.read_events_after(fresh.applied, BATCH).await?;
        loop {
            let Some(last) = events.last().map(|event| event.checkpoint) else {
                return Ok(fresh);
            };
            // The next batch is read while this one is applied: the store works on one core
            // while the projection works on the other. A task of its own, because a driver
            // that hands rows over a bounded channel (sqlx's SQLite) only reads ahead while
            // it is polled.
            let reader = db.clone();
            let next = tokio::spawn(async move { reader.read_events_after(last, BATCH).await });
            let mut reached_until = false;
            for event in &events {
                if until.is_some_and(|until| event.checkpoint > until) {
                    reached_until = true;
                    break;
                }
                fresh.apply_to_view(event);
                fresh.applied = event.checkpoint;
                applied += 1;
            }
            if reached_until {
                next.abort();
                return Ok(fresh);
            }
            on_progress(applied);
            events = next
                .await
                .map_err(|e| ProjectionError::Task(e.to_string()))??;
        }
    }

    /// Saves this projector's views in place of every saved one (see
    /// [`Database::replace_billing_views`]); returns the new generation.
    pub(crate) async fn replace_saved(&self, db: &Database) -> Result<i64, ProjectionError> {
        self.spawn_replace_saved(db)
            .await
            .map_err(|e| ProjectionError::Task(e.to_string()))?
    }

    /// [`Self::replace_saved`] in a task of its own, serializing the views there too, so that
    /// the caller can prepare the answers on the other core meanwhile (a replay's save and
    /// its answers took about as long as each other, one after the other).
    pub(crate) fn spawn_replace_saved(
        &self,
        db: &Database,
    ) -> tokio::task::JoinHandle<Result<i64, ProjectionError>> {
        let views: Vec<Arc<BillingView>> = self.views.values().cloned().collect();
        let applied = self.applied;
        let quarantined = self.quarantined.clone();
        let db = db.clone();
        tokio::spawn(async move {
            let rows = views
                .iter()
                .map(|view| {
                    Ok(ViewRow {
                        key: view.customer_id.as_str().to_owned(),
                        json: serde_json::to_string(view)?,
                    })
                })
                .collect::<Result<Vec<_>, serde_json::Error>>()?;
            let generation = db
                .replace_billing_views(applied, &rows, BILLING_VIEW_VERSION)
                .await?;
            db.replace_projection_quarantine(&quarantined).await?;
            Ok(generation)
        })
    }

    /// Every customer's answer from this projector's views, for [`Self::adopt_as_saved`].
    pub(crate) fn prepare_answers(
        &self,
        catalog: &Catalog,
        index: &EntitlementIndex,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, Arc<CustomerEntitlements>)>, ProjectionError> {
        self.resolve(self.views.keys(), index, catalog, now)
    }

    /// This rebuilt projector, saved as `generation`, made the one that serves: it saves from
    /// now on, and the index answers with `answers` (from [`Self::prepare_answers`]).
    pub(crate) fn adopt_as_saved(
        mut self,
        generation: i64,
        answers: Vec<(String, Arc<CustomerEntitlements>)>,
        index: &EntitlementIndex,
    ) -> Self {
        self.saved = self.applied;
        self.generation = generation;
        self.generation_checked = std::time::Instant::now();
        self.changed_at.clear();
        // Saved with the views.
        self.quarantined.clear();
        index.replace_all(answers);
        index.mark_projected(self.applied);
        self
    }

    /// Whether the saved views were rebuilt (by `subledger replay`, or another server's
    /// start) since this projector loaded them.
    pub(crate) async fn rebuilt_elsewhere(
        &mut self,
        db: &Database,
    ) -> Result<bool, ProjectionError> {
        let (_, generation) = db.billing_views_state().await?;
        self.generation_checked = std::time::Instant::now();
        self.save_refused_by_rebuild = false;
        Ok(generation != self.generation)
    }

    /// Whether to ask for the saved views' generation before the next step: after a step that
    /// found nothing to apply (and before the first), after a save a rebuild refused, or once
    /// `interval` has passed. Saves are safe in between: a rebuild refuses them.
    pub(crate) fn should_check_generation(&self, interval: std::time::Duration) -> bool {
        self.last_step_idle
            || self.save_refused_by_rebuild
            || self.generation_checked.elapsed() >= interval
    }

    /// A projector at position 0 with no views, that never saves: for rebuilds.
    pub(crate) fn empty() -> Self {
        Self {
            views: BTreeMap::new(),
            changed_at: HashMap::new(),
            applied: Checkpoint::default(),
            saved: Checkpoint {
                tx: i64::MAX,
                position: i64::MAX,
            },
            generation: 0,
            generation_checked: std::time::Instant::now(),
            last_step_idle: true,
            save_refused_by_rebuild: false,
            quarantined: Vec::new(),
        }
    }

    /// Applies everything the log has after the checkpoint, awaiting `between_batches` after
    /// each batch it saved. Returns how many events it applied.
    pub(crate) async fn catch_up<Pause: std::future::Future<Output = ()>>(
        &mut self,
        db: &Database,
        catalog: &Catalog,
        index: &EntitlementIndex,
        now: DateTime<Utc>,
        mut between_batches: impl FnMut() -> Pause,
    ) -> Result<usize, ProjectionError> {
        let mut applied = 0;
        loop {
            if applied > 0 {
                between_batches().await;
            }
            let events = db.read_events_after(self.applied, BATCH).await?;
            let Some(last) = events.last().map(|e| e.checkpoint) else {
                self.last_step_idle = applied == 0;
                return Ok(applied);
            };
            applied += events.len();
            let mut changed = BTreeSet::new();
            let mut disputes_opened = 0_u64;
            for event in &events {
                disputes_opened += u64::from(self.opens_dispute(event));
                if let Some(customer_id) = self.apply(event) {
                    changed.insert(customer_id);
                }
            }
            self.applied = last;
            index.publish(self.resolve(changed.iter(), index, catalog, now)?);
            index.mark_projected(last);
            record_projected(&events, disputes_opened);
            // Recorded before the checkpoint moves past them; kept in memory until recorded.
            db.quarantine_projection_events(&self.quarantined).await?;
            self.quarantined.clear();
            self.save(db).await?;
        }
    }

    /// Whether `stored` records a dispute its customer's view does not hold yet (read before
    /// [`Self::apply`]). Only dispute events are decoded here.
    fn opens_dispute(&self, stored: &StoredEvent) -> bool {
        if stored.aggregate_type != Customer::TYPE || stored.event_type != "DisputeRecorded" {
            return false;
        }
        let Ok(CustomerEvent::DisputeRecorded { dispute, .. }) = decode(stored) else {
            return false;
        };
        let customer = CustomerId::new(stored.aggregate_id.as_str());
        self.views
            .get(&customer)
            .is_none_or(|view| !view.disputes.contains_key(&dispute.id))
    }

    /// Applies one log event; the customer whose view changed, if any, noted as changed at
    /// the event's checkpoint for the next save.
    fn apply(&mut self, stored: &StoredEvent) -> Option<CustomerId> {
        let customer_id = self.apply_to_view(stored)?;
        self.changed_at
            .insert(customer_id.clone(), stored.checkpoint);
        Some(customer_id)
    }

    /// [`Self::apply`] without noting where the view changed: a rebuild saves every view
    /// anyway, and the note (a hashed map entry per event) was a fifth of a replay's applying.
    /// An event that cannot be decoded (a damaged row, a shape only a newer build knows) is
    /// quarantined and skipped: its customer's view misses it until a replay by a build that
    /// reads it, while every other customer's answers stay current.
    fn apply_to_view(&mut self, stored: &StoredEvent) -> Option<CustomerId> {
        if stored.aggregate_type != Customer::TYPE {
            return None;
        }
        let event: CustomerEvent = match decode(stored) {
            Ok(event) => event,
            Err(error) => {
                let (stripe_event_id, correlation_id) = match stored.metadata() {
                    Ok(EventMetadata {
                        origin: Origin::Webhook { event_id, .. },
                        correlation_id,
                        ..
                    }) => (Some(event_id), Some(correlation_id)),
                    Ok(metadata) => (None, Some(metadata.correlation_id)),
                    Err(_) => (None, None),
                };
                tracing::error!(
                    %error, position = stored.checkpoint.position, ?stripe_event_id, ?correlation_id,
                    "event quarantined: the projection skips it"
                );
                self.quarantined.push(QuarantinedEvent {
                    position: stored.checkpoint.position,
                    aggregate_type: stored.aggregate_type.clone(),
                    aggregate_id: stored.aggregate_id.clone(),
                    sequence: stored.sequence,
                    event_type: stored.event_type.clone(),
                    error: error.to_string(),
                    quarantined_at_ms: Utc::now().timestamp_millis(),
                });
                return None;
            }
        };
        let customer_id = CustomerId::new(stored.aggregate_id.as_str());
        let view = self
            .views
            .entry(customer_id.clone())
            .or_insert_with(|| Arc::new(BillingView::new(customer_id.clone())));
        // A copy only while the index still serves the previous answer from this view.
        Arc::make_mut(view).apply(&event);
        Some(customer_id)
    }

    fn resolve<'a>(
        &self,
        customers: impl Iterator<Item = &'a CustomerId>,
        index: &EntitlementIndex,
        catalog: &Catalog,
        at: DateTime<Utc>,
    ) -> Result<Vec<(String, Arc<CustomerEntitlements>)>, ProjectionError> {
        customers
            .filter_map(|id| self.views.get(id))
            .map(|view| {
                let prepared = index.prepare(Arc::clone(view), catalog, at)?;
                Ok((view.customer_id.as_str().to_owned(), Arc::new(prepared)))
            })
            .collect()
    }

    /// Saves every view changed since the stored checkpoint and moves it to `applied`.
    async fn save(&mut self, db: &Database) -> Result<(), ProjectionError> {
        if self.applied <= self.saved {
            return Ok(());
        }
        let mut rows = Vec::new();
        for (customer_id, at) in &self.changed_at {
            if *at > self.saved {
                if let Some(view) = self.views.get(customer_id) {
                    rows.push(ViewRow {
                        key: customer_id.as_str().to_owned(),
                        json: serde_json::to_string(view)?,
                    });
                }
            }
        }
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        if db
            .save_billing_views(self.saved, self.applied, self.generation, &rows)
            .await?
        {
            self.saved = self.applied;
            self.changed_at.clear();
        } else {
            // Another process moved the checkpoint; read where it is now and keep serving from
            // memory. Views changed after that point are saved on the next step.
            let (stored, generation) = db.billing_views_state().await?;
            tracing::debug!(?stored, applied = ?self.applied, "billing views saved by another process");
            self.save_refused_by_rebuild = generation != self.generation;
            self.saved = stored;
            let saved = self.saved;
            self.changed_at.retain(|_, at| *at > saved);
        }
        Ok(())
    }

    /// How far this projector has applied the log.
    pub(crate) fn applied(&self) -> Checkpoint {
        self.applied
    }

    /// The views in memory, for rebuild comparisons.
    pub(crate) fn views(&self) -> &BTreeMap<CustomerId, Arc<BillingView>> {
        &self.views
    }

    pub(crate) fn into_views(self) -> BTreeMap<CustomerId, BillingView> {
        self.views
            .into_iter()
            .map(|(id, view)| (id, Arc::unwrap_or_clone(view)))
            .collect()
    }
}
