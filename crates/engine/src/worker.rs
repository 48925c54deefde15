//! The inbox worker: claim rows, translate each Stripe event into a domain command, run it on
//! its aggregate, and finish the row. Stripe's JSON goes no further than the translator.
//!
//! Commands are idempotent (an aggregate emits nothing for a fact it already has), so a row
//! re-run after a crash or an expired lease changes nothing twice. A row that fails is retried
//! later with backoff and its error recorded; it never holds up other rows.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cqrs_es::AggregateError;
use subledger_domain::customer::{Customer, CustomerCommand, CustomerError, TiedObject};
use subledger_domain::ids::{CustomerId, PaymentIntentId};
use subledger_store::{
    Backend, ClaimedEvent, EventMetadata, FinishedRow, InboxStatus, Origin, StoreError, UnitOfWork,
    WorkCommit,
};
use subledger_stripe::{translate, translate_fetched, Translation};

use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::refetch::StripeResource;

/// What one pass over the inbox did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkReport {
    pub applied: usize,
    pub ignored: usize,
    pub failed: usize,
}

impl WorkReport {
    pub fn handled(&self) -> usize {
        self.applied + self.ignored + self.failed
    }
}

/// The longest a failing row waits between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// Exponential backoff from 1 s, capped: attempt 1 waits 1 s, attempt 2 2 s, …
pub(crate) fn backoff(attempts: i32) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1).clamp(0, 12)).unwrap_or(12);
    Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
}

enum Outcome {
    Applied(String),
    Ignored(String),
}

/// Why a row could not be handled this time. Each kind has its own retry policy and log
/// level, and the row keeps the kind in its error (`defect: …`), so an operator can tell a
/// broken delivery from an outage at a glance.
#[derive(Debug, thiserror::Error)]
enum RowFailure {
    /// The delivery cannot be read or translated, or a stored event cannot be decoded:
    /// retrying soon will not help (it takes a new build or a data fix), so the retries start
    /// at [`DEFECT_FIRST_RETRY`] and it is logged as an error.
    #[error("defect: {0}")]
    Defect(String),
    /// The store failed, or the aggregate kept changing underneath (lost optimistic
    /// concurrency races): transient.
    #[error("store: {0}")]
    Store(String),
    /// Stripe could not be asked (no read key configured, or the call failed).
    #[error("stripe: {0}")]
    Stripe(String),
    /// An aggregate refused the command by its rules (for example a fact that needs another
    /// one first).
    #[error("refused: {0}")]
    Refused(String),
    /// The row took longer than the worker's bound per row (a hung call): transient.
    #[error("took longer than {0:?} (--worker-row-timeout-secs); retried later")]
    TimedOut(Duration),
}

/// The first wait of a row that failed for a defect; later ones double from there.
const DEFECT_FIRST_RETRY: Duration = Duration::from_secs(60);

impl RowFailure {
    /// How long the row waits before its next attempt, after `attempts` failed ones.
    fn retry_in(&self, attempts: i32) -> Duration {
        match self {
            Self::Defect(_) => (backoff(attempts) * 60).clamp(DEFECT_FIRST_RETRY, MAX_BACKOFF),
            Self::Store(_) | Self::Stripe(_) | Self::Refused(_) | Self::TimedOut(_) => {
                backoff(attempts)
            }
        }
    }

    /// A command's failure on its aggregate, by kind.
    fn of_command<E: std::error::Error>(error: AggregateError<E>) -> Self {
        match error {
            AggregateError::UserError(refusal) => Self::Refused(refusal.to_string()),
            AggregateError::AggregateConflict => Self::Store(
                "aggregate kept changing underneath (optimistic concurrency conflicts)".to_owned(),
            ),
            AggregateError::DatabaseConnectionError(error) => Self::Store(error.to_string()),
            AggregateError::DeserializationError(error) => Self::Defect(error.to_string()),
            AggregateError::UnexpectedError(error) => Self::Store(error.to_string()),
        }
    }
}

/// A lane's rows after staging: what was decided in memory, and what runs one by one.
struct StagedLane {
    work: UnitOfWork<Customer>,
    decided: Vec<(ClaimedEvent, Outcome)>,
    later: Vec<ClaimedEvent>,
}

/// How a handled row is finished, counted in `report`.
fn finish(row: &ClaimedEvent, outcome: Outcome, report: &mut WorkReport) -> FinishedRow {
    let (status, outcome, counted) = match outcome {
        Outcome::Applied(text) => {
            report.applied += 1;
            (InboxStatus::Processed, text, "applied")
        }
        Outcome::Ignored(reason) => {
            report.ignored += 1;
            (InboxStatus::Ignored, reason, "ignored")
        }
    };
    metrics::counter!("subledger_inbox_rows_total", "outcome" => counted).increment(1);
    tracing::debug!(
        stripe_event_id = %row.event_id, correlation_id = %row.correlation_id,
        event_type = %row.event_type, outcome = counted, "stripe event handled"
    );
    FinishedRow {
        event_id: row.event_id.clone(),
        status,
        outcome,
    }
}

/// Splits a claimed batch into at most `width` lanes: all rows of one ordering key (customer)
/// in one lane, in claim order; keys spread so lanes are about equally long. Rows without a
/// key each stand alone.
fn lanes(claimed: Vec<ClaimedEvent>, width: usize) -> Vec<Vec<ClaimedEvent>> {
    // One lane is the batch as claimed (Stripe's order), as one worker always ran it.
    if width <= 1 {
        return vec![claimed];
    }
    let mut groups: Vec<Vec<ClaimedEvent>> = Vec::new();
    let mut group_of: HashMap<String, usize> = HashMap::new();
    for row in claimed {
        let known = row
            .ordering_key
            .as_ref()
            .and_then(|key| group_of.get(key))
            .copied();
        match known.and_then(|group| groups.get_mut(group)) {
            Some(group) => group.push(row),
            None => {
                if let Some(key) = &row.ordering_key {
                    group_of.insert(key.clone(), groups.len());
                }
                groups.push(vec![row]);
            }
        }
    }
    let mut lanes: Vec<Vec<ClaimedEvent>> = (0..width.max(1)).map(|_| Vec::new()).collect();
    for group in groups {
        if let Some(shortest) = lanes.iter_mut().min_by_key(|lane| lane.len()) {
            shortest.extend(group);
        }
    }
    lanes.retain(|lane| !lane.is_empty());
    lanes
}

impl Engine {
    /// How many rows a claim takes: as configured, or the store's default.
    fn batch_size(&self) -> i64 {
        self.config
            .worker_batch_size
            .unwrap_or(match self.db.backend() {
                Backend::Sqlite => EngineConfig::DEFAULT_BATCH_SQLITE,
                Backend::Postgres => EngineConfig::DEFAULT_BATCH_POSTGRES,
            })
    }

    /// Claims and handles one batch of due inbox rows.
    ///
    /// Customers' commands are decided in memory, several customers at once on PostgreSQL
    /// (each customer's rows in one lane, in order), and their events are appended together
    /// with the rows' finish in one transaction. A customer's rows from its first one that
    /// needs more (a payment, a fetch from Stripe, a refusal) run one at a time afterwards,
    /// in order; so does the whole batch when another writer appended to one of its
    /// aggregates first. A crash before a commit re-runs rows whose commands are idempotent.
    pub async fn process_inbox(&self) -> Result<WorkReport, StoreError> {
        let now = self.now_ms();
        let lease = i64::try_from(self.config.worker_lease.as_millis()).unwrap_or(i64::MAX);
        let claimed = self
            .db
            .claim_inbox_events(now, lease, self.batch_size())
            .await?;
        if claimed.is_empty() {
            return Ok(WorkReport::default());
        }
        let width = match self.db.backend() {
            Backend::Sqlite => 1,
            Backend::Postgres => self.config.worker_concurrency.max(1),
        };
        let staged = futures_util::future::join_all(
            lanes(claimed, width)
                .into_iter()
                .map(|lane| self.stage_lane(lane)),
        )
        .await;
        let mut report = WorkReport::default();
        let mut work = UnitOfWork::default();
        let mut finished = Vec::new();
        // Each lane's rows in its order: a customer's decided rows come before its held-back
        // ones, so this is the order to run them in should the commit lose a race.
        let mut in_order = Vec::new();
        let mut later = Vec::new();
        for lane in staged {
            work.absorb(lane.work);
            for (row, outcome) in lane.decided {
                finished.push(finish(&row, outcome, &mut report));
                in_order.push(row);
            }
            in_order.extend(lane.later.iter().cloned());
            later.extend(lane.later);
        }
        match self
            .db
            .commit_work(work.events(), &finished, self.now_ms())
            .await?
        {
            WorkCommit::Committed => self.customers.committed(work),
            WorkCommit::Conflict => {
                // The cache holds only committed states: the staged ones are simply dropped.
                tracing::debug!("another writer appended first; running the batch row by row");
                report = WorkReport::default();
                later = in_order;
            }
        }
        self.run_one_by_one(later, &mut report).await?;
        if report.applied > 0 {
            self.events_appended.notify_one();
        }
        Ok(report)
    }

    /// Decides a lane's rows in memory, in order, until one of a customer's rows needs more:
    /// that row and the customer's later ones are left for [`Engine::run_one_by_one`].
    async fn stage_lane(&self, lane: Vec<ClaimedEvent>) -> StagedLane {
        let mut staged = StagedLane {
            work: UnitOfWork::default(),
            decided: Vec::new(),
            later: Vec::new(),
        };
        // Each row read and translated once, and the lane's customers loaded in one query
        // rather than one each.
        let translated: Vec<(ClaimedEvent, Option<Translation>)> = lane
            .into_iter()
            .map(|row| {
                let translation = serde_json::from_str::<serde_json::Value>(&row.payload)
                    .ok()
                    .and_then(|event| self.translate(&event).ok());
                (row, translation)
            })
            .collect();
        let customers: Vec<&str> = translated
            .iter()
            .filter_map(|(_, translation)| match translation {
                Some(Translation::Customer { customer_id, .. }) => Some(customer_id.as_str()),
                _ => None,
            })
            .collect();
        if let Err(error) = self
            .customers
            .preload(&self.db, &mut staged.work, &customers)
            .await
        {
            // Staging then loads each customer itself.
            tracing::warn!(%error, "the batch's customers could not be loaded at once");
        }
        let mut held_back: HashSet<String> = HashSet::new();
        for (row, translation) in translated {
            let waits = row
                .ordering_key
                .as_ref()
                .is_some_and(|key| held_back.contains(key));
            let decided = if waits {
                None
            } else {
                self.stage(&mut staged.work, &row, translation).await
            };
            match decided {
                Some(outcome) => staged.decided.push((row, outcome)),
                None => {
                    if let Some(key) = &row.ordering_key {
                        held_back.insert(key.clone());
                    }
                    staged.later.push(row);
                }
            }
        }
        staged
    }

    /// What an event means for this deployment: nothing, when it is of the other mode;
    /// otherwise what the translator makes of it. Every Stripe event says its mode: `livemode`
    /// is a required boolean of the Event object (Stripe's API reference, "The Event object";
    /// async-stripe-shared's `Event`, generated from Stripe's OpenAPI spec), and the receiver
    /// refuses a body without it (`EventEnvelope::parse`), so the default below is never used
    /// for a stored row. A test-mode endpoint and a live-mode endpoint may point at the same
    /// URL; only one mode's events may become this deployment's facts.
    fn translate(
        &self,
        event: &serde_json::Value,
    ) -> Result<Translation, subledger_stripe::TranslationError> {
        let livemode = event
            .get("livemode")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        if livemode != self.config.livemode {
            let (event_mode, served) = if livemode {
                ("live", "test")
            } else {
                ("test", "live")
            };
            return Ok(Translation::Ignored {
                reason: format!(
                    "a {event_mode}-mode event; this deployment serves {served} mode (--livemode)"
                ),
            });
        }
        translate(event)
    }

    /// A row's outcome when it can be decided in memory: an ignored event, or a customer's
    /// command staged in `work`. `None` for everything else (an untranslatable row included:
    /// run on its own, it reports why).
    async fn stage(
        &self,
        work: &mut UnitOfWork<Customer>,
        row: &ClaimedEvent,
        translation: Option<Translation>,
    ) -> Option<Outcome> {
        match translation? {
            Translation::Ignored { reason } => Some(Outcome::Ignored(reason)),
            Translation::Customer {
                customer_id,
                command,
            } => {
                self.customers
                    .stage(work, customer_id.as_str(), command, &metadata(row))
                    .await
                    .ok()?;
                Some(Outcome::Applied(format!("Customer {customer_id}")))
            }
            Translation::Payment { .. } => None,
        }
    }

    /// Handles rows one at a time, in order, finishing those handled in one transaction and
    /// scheduling the rest for a retry.
    async fn run_one_by_one(
        &self,
        rows: Vec<ClaimedEvent>,
        report: &mut WorkReport,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut finished = Vec::new();
        let mut failed = Vec::new();
        for row in rows {
            match self.handle_within_bound(&row).await {
                Ok(outcome) => finished.push(finish(&row, outcome, report)),
                Err(error) => failed.push((row, error)),
            }
        }
        // A row may have failed for want of a fact that a later row of this same batch brought
        // (a dispute before its invoice): give those one more try before backing off.
        if !failed.is_empty() && report.applied > 0 {
            let mut still_failing = Vec::new();
            for (row, _) in failed {
                match self.handle_within_bound(&row).await {
                    Ok(outcome) => finished.push(finish(&row, outcome, report)),
                    Err(error) => still_failing.push((row, error)),
                }
            }
            failed = still_failing;
        }
        self.db
            .finish_inbox_events(&finished, self.now_ms())
            .await?;
        for (row, failure) in failed {
            let wait = failure.retry_in(row.attempts);
            let (event_id, correlation_id) = (&row.event_id, &row.correlation_id);
            let retry_in_secs = wait.as_secs();
            let attempts = row.attempts;
            if let RowFailure::Defect(_) = failure {
                tracing::error!(
                    stripe_event_id = %event_id, %correlation_id, attempts, retry_in_secs,
                    error = %failure, "stripe event cannot be handled; will retry"
                );
            } else {
                tracing::warn!(
                    stripe_event_id = %event_id, %correlation_id, attempts, retry_in_secs,
                    error = %failure, "stripe event failed; will retry"
                );
            }
            let retry_at = self
                .now_ms()
                .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
            self.db
                .retry_inbox_event_later(&row.event_id, &failure.to_string(), retry_at)
                .await?;
            report.failed += 1;
            metrics::counter!("subledger_inbox_rows_total", "outcome" => "failed").increment(1);
        }
        Ok(())
    }

    /// [`Self::handle`], for at most the worker's bound per row: a hung call (to Stripe, to the
    /// store) must not hold the worker, and every customer behind it, for ever. A row cut off
    /// is retried with backoff; its commands are idempotent, so whatever part of it was done
    /// is not done twice.
    async fn handle_within_bound(&self, row: &ClaimedEvent) -> Result<Outcome, RowFailure> {
        let bound = self.config.worker_row_timeout;
        tokio::time::timeout(bound, self.handle(row))
            .await
            .unwrap_or(Err(RowFailure::TimedOut(bound)))
    }

    #[tracing::instrument(skip_all, fields(stripe_event_id = %row.event_id, correlation_id = %row.correlation_id, event_type = %row.event_type))]
    async fn handle(&self, row: &ClaimedEvent) -> Result<Outcome, RowFailure> {
        let event: serde_json::Value = serde_json::from_str(&row.payload)
            .map_err(|e| RowFailure::Defect(format!("stored payload is not JSON: {e}")))?;
        let translation = self
            .translate(&event)
            .map_err(|e| RowFailure::Defect(format!("cannot translate: {e}")))?;
        let metadata = metadata(row);
        match translation {
            Translation::Ignored { reason } => Ok(Outcome::Ignored(reason)),
            Translation::Customer {
                customer_id,
                command,
            } => {
                let result = self
                    .customers
                    .execute(customer_id.as_str(), command, &metadata)
                    .await;
                match result {
                    Ok(()) => Ok(Outcome::Applied(format!("Customer {customer_id}"))),
                    Err(AggregateError::UserError(CustomerError::OrderUndecided {
                        object,
                        second,
                    })) => {
                        self.settle_by_fetching(&customer_id, &object, second, &metadata)
                            .await
                    }
                    Err(error) => Err(RowFailure::of_command(error)),
                }
            }
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
                    .map_err(RowFailure::of_command)?;
                self.propagate_disputes(&payment_intent_id, &metadata)
                    .await?;
                Ok(Outcome::Applied(format!("Payment {payment_intent_id}")))
            }
        }
    }
}

impl Engine {
    /// Carries a payment's disputes to its customer, as the payment aggregate says
    /// ([`Payment::disputes_for_customer`](subledger_domain::payment::Payment::disputes_for_customer)), so every delivery order ends in the same state.
    async fn propagate_disputes(
        &self,
        payment_intent: &PaymentIntentId,
        metadata: &EventMetadata,
    ) -> Result<(), RowFailure> {
        let payment = self
            .payments
            .state(payment_intent.as_str())
            .await
            .map_err(RowFailure::of_command)?;
        let Some((customer, disputes)) = payment.disputes_for_customer() else {
            return Ok(());
        };
        for (dispute, occurred_at) in disputes {
            let command = CustomerCommand::RecordDispute {
                dispute,
                occurred_at,
            };
            self.customers
                .execute(customer.as_str(), command, metadata)
                .await
                .map_err(RowFailure::of_command)?;
        }
        Ok(())
    }

    /// Two snapshots of `object` from the same second that the events cannot order: ask
    /// Stripe for the object as it is now and record that as Stripe's answer for the second.
    /// Every later arrival from that second is then judged against it, so each delivery order
    /// ends in the same state.
    async fn settle_by_fetching(
        &self,
        customer_id: &CustomerId,
        object: &TiedObject,
        second: DateTime<Utc>,
        metadata: &EventMetadata,
    ) -> Result<Outcome, RowFailure> {
        let Some(objects) = &self.config.stripe_objects else {
            return Err(RowFailure::Stripe(format!(
                "cannot tell which of two snapshots of {object} from {second} is newer, and no \
                 Stripe API key is configured to fetch it (SUBLEDGER_STRIPE_READ_KEY)"
            )));
        };
        let (resource, id) = match object {
            TiedObject::Customer => (StripeResource::Customer, customer_id.stripe_id()),
            TiedObject::Subscription(id) => (StripeResource::Subscription, id.as_str()),
            TiedObject::Schedule(id) => (StripeResource::SubscriptionSchedule, id.as_str()),
            TiedObject::StripeEntitlements => {
                (StripeResource::ActiveEntitlements, customer_id.stripe_id())
            }
        };
        let fetched = objects
            .retrieve(resource, id, customer_id.account())
            .await
            .map_err(RowFailure::Stripe)?;
        let unreadable = |e| {
            RowFailure::Defect(format!(
                "what Stripe returned for {object} cannot be read: {e}"
            ))
        };
        let (owner, command) =
            match translate_fetched(&fetched, second, customer_id).map_err(unreadable)? {
                Translation::Customer {
                    customer_id,
                    command,
                } => (customer_id, command),
                _ => {
                    return Err(RowFailure::Stripe(format!(
                        "Stripe returned something other than {object}"
                    )))
                }
            };
        let same_object = match (object, &command) {
            (
                TiedObject::Subscription(id),
                CustomerCommand::RecordSubscription { subscription, .. },
            ) => subscription.id == *id,
            (TiedObject::Schedule(id), CustomerCommand::RecordSchedule { schedule, .. }) => {
                schedule.id == *id
            }
            (TiedObject::Customer, CustomerCommand::RecordDetails { .. })
            | (TiedObject::Customer, CustomerCommand::RecordDeletion { .. })
            | (TiedObject::StripeEntitlements, CustomerCommand::RecordStripeEntitlements { .. }) => {
                true
            }
            _ => false,
        };
        if !same_object || owner != *customer_id {
            return Err(RowFailure::Stripe(format!(
                "asked Stripe for {object} of `{customer_id}` and got another object"
            )));
        }
        tracing::info!(%object, %second, "same-second snapshots settled by fetching from Stripe");
        let mut metadata = metadata.clone();
        if let Origin::Webhook { fetched, .. } = &mut metadata.origin {
            *fetched = true;
        }
        self.customers
            .execute(customer_id.as_str(), command, &metadata)
            .await
            .map_err(RowFailure::of_command)?;
        Ok(Outcome::Applied(format!(
            "Customer {customer_id}: order of same-second snapshots of {object} settled by \
             fetching it from Stripe"
        )))
    }
}

/// The metadata of the domain events a delivery brings: which Stripe event, when it happened
/// at Stripe, when Subledger received it, and the delivery's correlation id.
fn metadata(row: &ClaimedEvent) -> EventMetadata {
    EventMetadata {
        // The receiver's own clock wrote it: always a time chrono can hold.
        received_at: DateTime::<Utc>::from_timestamp_millis(row.received_at_ms).unwrap_or_default(),
        correlation_id: row.correlation_id.clone(),
        origin: Origin::Webhook {
            event_id: row.event_id.clone(),
            event_type: Some(row.event_type.clone()),
            created: row.stripe_created,
            fetched: false,
        },
        order_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(id: &str, key: Option<&str>) -> ClaimedEvent {
        ClaimedEvent {
            event_id: id.to_owned(),
            event_type: "customer.updated".to_owned(),
            payload: "{}".to_owned(),
            stripe_created: 0,
            received_at_ms: 0,
            correlation_id: id.to_owned(),
            attempts: 1,
            ordering_key: key.map(str::to_owned),
        }
    }

    #[test]
    fn lanes_keep_each_customers_rows_together_and_in_order() {
        let batch = vec![
            claimed("a1", Some("cus_a")),
            claimed("b1", Some("cus_b")),
            claimed("a2", Some("cus_a")),
            claimed("x", None),
            claimed("c1", Some("cus_c")),
            claimed("a3", Some("cus_a")),
            claimed("y", None),
        ];
        let ids = |lane: &Vec<ClaimedEvent>| -> Vec<String> {
            lane.iter().map(|row| row.event_id.clone()).collect()
        };
        let lanes = lanes(batch.clone(), 3);
        assert!(lanes.len() <= 3);
        let with_a: Vec<_> = lanes
            .iter()
            .filter(|lane| {
                lane.iter()
                    .any(|row| row.ordering_key.as_deref() == Some("cus_a"))
            })
            .collect();
        assert_eq!(with_a.len(), 1, "one customer, one lane");
        let a_rows: Vec<String> = ids(with_a[0])
            .into_iter()
            .filter(|id| id.starts_with('a'))
            .collect();
        assert_eq!(a_rows, ["a1", "a2", "a3"]);
        assert_eq!(lanes.iter().map(Vec::len).sum::<usize>(), 7, "nothing lost");
        // One lane is the batch in claim order.
        assert_eq!(
            ids(&super::lanes(batch, 1)[0]),
            ["a1", "b1", "a2", "x", "c1", "a3", "y"]
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    /// A broken delivery is not retried every second like an outage: it waits a minute first,
    /// then doubles up to the same hour. A command that kept losing races (the command bus
    /// gave up retrying it) is a store failure: the row is retried soon.
    #[test]
    fn each_kind_of_failure_keeps_its_own_retry_policy() {
        let defect = RowFailure::Defect("cannot translate".to_owned());
        assert_eq!(defect.retry_in(1), DEFECT_FIRST_RETRY);
        assert_eq!(defect.retry_in(2), Duration::from_secs(120));
        assert_eq!(defect.retry_in(40), MAX_BACKOFF);
        for transient in [
            RowFailure::Store("down".to_owned()),
            RowFailure::Stripe("timeout".to_owned()),
            RowFailure::Refused("needs its invoice".to_owned()),
        ] {
            assert_eq!(transient.retry_in(1), Duration::from_secs(1), "{transient}");
            assert_eq!(transient.retry_in(40), MAX_BACKOFF, "{transient}");
        }
        let unreadable = serde_json::from_str::<u32>("x").unwrap_err();
        assert!(matches!(
            RowFailure::of_command::<Refused>(AggregateError::DeserializationError(Box::new(
                unreadable
            ))),
            RowFailure::Defect(_)
        ));
        assert_eq!(defect.to_string(), "defect: cannot translate");
        let lost_races = RowFailure::of_command::<Refused>(AggregateError::AggregateConflict);
        assert!(
            matches!(&lost_races, RowFailure::Store(why) if why.contains("optimistic concurrency")),
            "{lost_races}"
        );
        assert_eq!(
            RowFailure::of_command(AggregateError::UserError(Refused)).to_string(),
            "refused: refused"
        );
    }

    #[test]
    fn backoff_doubles_from_one_second_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), MAX_BACKOFF);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }
}
