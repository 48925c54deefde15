//! cqrs-es frameworks for both backends behind one type, so nothing above the store is
//! generic over the database.
//!
//! Aggregates are kept in memory between commands ([`CachedEventStore`]): a command loads only
//! the events appended to its stream since the cached version, so its cost does not grow with
//! the customer's history. The stream stays the truth: every load asks it for newer events
//! (another worker may have appended), and a commit still fails on a sequence another writer
//! took first (optimistic concurrency). The cache only ever holds committed states, so after a
//! lost race the next load simply reads what the winner appended.
//! cqrs-es 0.5's own snapshot store is not used: it applies new events twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::database::Database;
use crate::error::StoreError;
use crate::metadata::EventMetadata;
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{
    EventStoreAggregateContext, EventUpcaster, PersistedEventRepository, PersistedEventStore,
    SerializedEvent,
};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, EventEnvelope, EventStore};
use postgres_es::PostgresEventRepository;
use sqlite_es::SqliteEventRepository;

/// How often a command is re-run when another writer appended to the same aggregate in
/// between (optimistic concurrency) before [`CommandBus::execute`] gives up with
/// [`AggregateError::AggregateConflict`]. A busy worker commits a batch every few
/// milliseconds, so an operator's command may lose several times.
pub const CONFLICT_RETRIES: usize = 20;

/// The longest pause before re-running a command that lost a race: a short, varied wait lets
/// a writer that keeps winning (a busy worker) finish its commit.
const CONFLICT_PAUSE_MS: u64 = 8;

/// How many aggregates each bus keeps in memory. Past it, entries are dropped (and reloaded
/// from their streams when needed again).
const CACHED_AGGREGATES: usize = 16_384;

/// Runs commands on aggregates of type `A`, persisting their events on either backend.
pub enum CommandBus<A: Aggregate + Clone> {
    Sqlite(
        CqrsFramework<A, Shared<SqliteEventRepository, A>>,
        Arc<CachedEventStore<SqliteEventRepository, A>>,
    ),
    Postgres(
        CqrsFramework<A, Shared<PostgresEventRepository, A>>,
        Arc<CachedEventStore<PostgresEventRepository, A>>,
    ),
}

/// A [`CachedEventStore`] shared by the command bus's framework and its units of work.
pub struct Shared<R: PersistedEventRepository, A: Aggregate>(Arc<CachedEventStore<R, A>>);

impl<R: PersistedEventRepository, A: Aggregate> std::fmt::Debug for Shared<R, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<R, A> EventStore<A> for Shared<R, A>
where
    R: PersistedEventRepository,
    A: Aggregate + Clone + Send + Sync,
{
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.0.load_events(aggregate_id).await
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        self.0.load_aggregate(aggregate_id).await
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.0.commit(events, context, metadata).await
    }
}

/// Commands decided in memory, to be committed together ([`Database::commit_work`]) with the
/// inbox rows they came from: one transaction for many commands of many aggregates.
#[derive(Debug)]
pub struct UnitOfWork<A: Aggregate> {
    /// Each touched aggregate as the staged commands leave it, at its sequence.
    states: HashMap<String, (usize, A)>,
    events: Vec<SerializedEvent>,
}

impl<A: Aggregate> Default for UnitOfWork<A> {
    fn default() -> Self {
        Self {
            states: HashMap::new(),
            events: Vec::new(),
        }
    }
}

impl<A: Aggregate> UnitOfWork<A> {
    /// The events staged so far, in the order they will be appended.
    pub fn events(&self) -> &[SerializedEvent] {
        &self.events
    }

    /// Whether the unit holds the aggregate's state (staged on, or preloaded): staging on it
    /// reads nothing from the store.
    pub fn holds(&self, aggregate_id: &str) -> bool {
        self.states.contains_key(aggregate_id)
    }

    /// Adds another unit's staged commands (of other aggregates) to this one.
    pub fn absorb(&mut self, other: Self) {
        self.states.extend(other.states);
        self.events.extend(other.events);
    }
}

impl<A: Aggregate<Services = ()> + Clone> CommandBus<A> {
    /// Events of older stored shapes are upcast as they load, by `upcasters` (the domain's
    /// schema).
    pub fn new(db: &Database, upcasters: fn() -> Vec<Box<dyn EventUpcaster>>) -> Self {
        match db {
            Database::Sqlite(pool) => {
                let store = Arc::new(CachedEventStore::new(
                    Database::sqlite_repository(pool),
                    Database::sqlite_repository(pool),
                    upcasters,
                ));
                let framework = CqrsFramework::new(Shared(Arc::clone(&store)), vec![], ());
                Self::Sqlite(framework, store)
            }
            Database::Postgres(pool) => {
                let store = Arc::new(CachedEventStore::new(
                    Database::postgres_repository(pool),
                    Database::postgres_repository(pool),
                    upcasters,
                ));
                let framework = CqrsFramework::new(Shared(Arc::clone(&store)), vec![], ());
                Self::Postgres(framework, store)
            }
        }
    }

    /// Runs `command` on the aggregate and appends its events. When another writer (a worker,
    /// an operator's request) appended to the aggregate in between, the command is run again
    /// on the fresh aggregate, so it is judged against what the other one wrote: up to
    /// [`CONFLICT_RETRIES`] times, after a pause of a few milliseconds that varies between
    /// racers.
    pub async fn execute(
        &self,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<(), AggregateError<A::Error>>
    where
        A::Command: Clone,
    {
        let metadata = metadata.to_map();
        retry_on_conflict(|| async {
            match self {
                Self::Sqlite(cqrs, _) => {
                    cqrs.execute_with_metadata(aggregate_id, command.clone(), metadata.clone())
                        .await
                }
                Self::Postgres(cqrs, _) => {
                    cqrs.execute_with_metadata(aggregate_id, command.clone(), metadata.clone())
                        .await
                }
            }
        })
        .await
    }

    /// The aggregate as its committed events leave it: the cached state, brought up to date
    /// from its stream.
    pub async fn state(&self, aggregate_id: &str) -> Result<A, AggregateError<A::Error>> {
        Ok(self.load(aggregate_id).await?.aggregate)
    }

    async fn load(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        match self {
            Self::Sqlite(_, store) => store.load_aggregate(aggregate_id).await,
            Self::Postgres(_, store) => store.load_aggregate(aggregate_id).await,
        }
    }

    /// Loads the aggregates `aggregate_ids` into `work` with one query (per thousand): each
    /// from its cached state, brought up to date with the events appended after it. Staging
    /// a command on one of them then reads nothing; without this, each staged aggregate
    /// costs a query of its own (a round trip per customer on PostgreSQL). Aggregates `work`
    /// already holds are left as they are.
    pub async fn preload(
        &self,
        db: &Database,
        work: &mut UnitOfWork<A>,
        aggregate_ids: &[&str],
    ) -> Result<(), StoreError> {
        let upcasters = match self {
            Self::Sqlite(_, store) => &store.upcasters,
            Self::Postgres(_, store) => &store.upcasters,
        };
        let mut states: HashMap<String, (usize, A)> = HashMap::new();
        for id in aggregate_ids {
            if work.states.contains_key(*id) || states.contains_key(*id) {
                continue;
            }
            let cached = match self {
                Self::Sqlite(_, store) => store.cached(id),
                Self::Postgres(_, store) => store.cached(id),
            };
            states.insert(
                (*id).to_owned(),
                cached.unwrap_or_else(|| (0, A::default())),
            );
        }
        let mut after = Vec::with_capacity(states.len());
        for (id, (sequence, _)) in &states {
            let sequence = i64::try_from(*sequence).map_err(|_| {
                StoreError::Corrupt(format!("sequence {sequence} of `{id}` is out of range"))
            })?;
            after.push((id.as_str(), sequence));
        }
        let newer = db.events_after_sequences(A::TYPE, &after).await?;
        for stored in newer {
            let unreadable = |why: String| {
                StoreError::Corrupt(format!(
                    "event {} #{} of `{}` cannot be read: {why}",
                    stored.event_type, stored.sequence, stored.aggregate_id
                ))
            };
            let serialized = SerializedEvent {
                aggregate_id: stored.aggregate_id.clone(),
                sequence: usize::try_from(stored.sequence)
                    .map_err(|e| unreadable(e.to_string()))?,
                aggregate_type: stored.aggregate_type.clone(),
                event_type: stored.event_type.clone(),
                event_version: stored.event_version.clone(),
                payload: serde_json::from_str(&stored.payload)
                    .map_err(|e| unreadable(e.to_string()))?,
                metadata: serde_json::from_str(&stored.metadata_json)
                    .map_err(|e| unreadable(e.to_string()))?,
            };
            let envelope = EventEnvelope::<A>::try_from(upcast(upcasters, serialized))
                .map_err(|e| unreadable(e.to_string()))?;
            if let Some((sequence, aggregate)) = states.get_mut(&envelope.aggregate_id) {
                *sequence = envelope.sequence;
                aggregate.apply(envelope.payload);
            }
        }
        work.states.extend(states);
        Ok(())
    }

    /// Decides `command` on the aggregate as `work` left it (loaded as `execute` loads it the
    /// first time) and stages the resulting events in `work`; nothing is written. Returns how
    /// many events the command produced.
    pub async fn stage(
        &self,
        work: &mut UnitOfWork<A>,
        aggregate_id: &str,
        command: A::Command,
        metadata: &EventMetadata,
    ) -> Result<usize, AggregateError<A::Error>> {
        let metadata = metadata.to_map();
        let (sequence, mut aggregate) = match work.states.remove(aggregate_id) {
            Some(state) => state,
            None => {
                let context = self.load(aggregate_id).await?;
                (context.current_sequence, context.aggregate)
            }
        };
        // A refused command may have written some events before refusing: keep the state
        // from before it.
        let before = aggregate.clone();
        let sink = EventSink::default();
        let decided = aggregate.handle(command, &(), &sink).await;
        let events = sink.collect().await;
        if let Err(error) = decided {
            work.states
                .insert(aggregate_id.to_owned(), (sequence, before));
            return Err(AggregateError::UserError(error));
        }
        let produced = events.len();
        for (payload, next) in events.into_iter().zip(sequence + 1..) {
            let envelope = EventEnvelope::<A> {
                aggregate_id: aggregate_id.to_owned(),
                sequence: next,
                payload,
                metadata: metadata.clone(),
            };
            work.events.push(SerializedEvent::try_from(&envelope)?);
        }
        work.states
            .insert(aggregate_id.to_owned(), (sequence + produced, aggregate));
        Ok(produced)
    }

    /// After `work` was committed: its aggregates are cached as it left them.
    pub fn committed(&self, work: UnitOfWork<A>) {
        for (id, (sequence, aggregate)) in work.states {
            match self {
                Self::Sqlite(_, store) => store.remember(&id, sequence, aggregate),
                Self::Postgres(_, store) => store.remember(&id, sequence, aggregate),
            }
        }
    }
}

impl<A: Aggregate + Clone> std::fmt::Debug for CommandBus<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(..) => f.write_str("CommandBus::Sqlite"),
            Self::Postgres(..) => f.write_str("CommandBus::Postgres"),
        }
    }
}

/// An event store that keeps each aggregate as of its last known sequence and reads only the
/// events after it. Commits go through cqrs-es's plain event store unchanged.
pub struct CachedEventStore<R: PersistedEventRepository, A: Aggregate> {
    store: PersistedEventStore<R, A>,
    reader: R,
    upcasters: Vec<Box<dyn EventUpcaster>>,
    cache: Mutex<HashMap<String, (usize, A)>>,
}

impl<R: PersistedEventRepository, A: Aggregate + Clone> CachedEventStore<R, A> {
    /// `store` and `reader` are two repositories on the same tables: one commits, one reads
    /// what was appended since a cached version.
    pub fn new(store: R, reader: R, upcasters: fn() -> Vec<Box<dyn EventUpcaster>>) -> Self {
        Self {
            store: PersistedEventStore::new_event_store(store).with_upcasters(upcasters()),
            reader,
            upcasters: upcasters(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, aggregate_id: &str) -> Option<(usize, A)> {
        self.cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(aggregate_id).cloned())
    }

    fn remember(&self, aggregate_id: &str, sequence: usize, aggregate: A) {
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHED_AGGREGATES && !cache.contains_key(aggregate_id) {
                // Dropping an arbitrary entry is enough: a dropped aggregate is reloaded from
                // its stream, which is correct, only slower once.
                if let Some(victim) = cache.keys().next().cloned() {
                    cache.remove(&victim);
                }
            }
            cache.insert(aggregate_id.to_owned(), (sequence, aggregate));
        }
    }
}

impl<R: PersistedEventRepository, A: Aggregate> std::fmt::Debug for CachedEventStore<R, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cached = self.cache.lock().map_or(0, |cache| cache.len());
        f.debug_struct("CachedEventStore")
            .field("cached_aggregates", &cached)
            .finish_non_exhaustive()
    }
}

impl<R, A> EventStore<A> for CachedEventStore<R, A>
where
    R: PersistedEventRepository,
    A: Aggregate + Clone + Send + Sync,
{
    type AC = EventStoreAggregateContext<A>;

    async fn load_events(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        self.store.load_events(aggregate_id).await
    }

    async fn load_aggregate(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        let (mut sequence, mut aggregate) = self
            .cached(aggregate_id)
            .unwrap_or_else(|| (0, A::default()));
        let newer = self
            .reader
            .get_last_events::<A>(aggregate_id, sequence)
            .await?;
        for serialized in newer {
            let envelope = EventEnvelope::<A>::try_from(upcast(&self.upcasters, serialized))?;
            sequence = envelope.sequence;
            aggregate.apply(envelope.payload);
        }
        self.remember(aggregate_id, sequence, aggregate.clone());
        Ok(EventStoreAggregateContext {
            aggregate_id: aggregate_id.to_owned(),
            aggregate,
            current_sequence: sequence,
            current_snapshot: None,
        })
    }

    async fn commit(
        &self,
        events: Vec<A::Event>,
        context: EventStoreAggregateContext<A>,
        metadata: HashMap<String, String>,
    ) -> Result<Vec<EventEnvelope<A>>, AggregateError<A::Error>> {
        let aggregate_id = context.aggregate_id.clone();
        // cqrs-es 0.5's `EventSink::write` already applied these events to the context's
        // aggregate while the command ran: it is the state after them. (Applying them again
        // is the double application that rules out cqrs-es's own snapshot store.)
        let after = context.aggregate.clone();
        let sequence = context.current_sequence + events.len();
        match self.store.commit(events, context, metadata).await {
            Ok(committed) => {
                self.remember(&aggregate_id, sequence, after);
                Ok(committed)
            }
            // Another writer got there first (or the store failed). The cached entry is still
            // a committed state, only older: the next load reads what came after it.
            Err(error) => Err(error),
        }
    }
}

/// `event` in today's shape: each upcaster that knows its type and version applied in turn.
fn upcast(upcasters: &[Box<dyn EventUpcaster>], event: SerializedEvent) -> SerializedEvent {
    upcasters.iter().fold(event, |event, upcaster| {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            upcaster.upcast(event)
        } else {
            event
        }
    })
}

/// Runs `run` again while it fails on optimistic concurrency, up to [`CONFLICT_RETRIES`]
/// times in all.
async fn retry_on_conflict<E, F, Fut>(mut run: F) -> Result<(), AggregateError<E>>
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), AggregateError<E>>>,
{
    let mut result = run().await;
    for _ in 1..CONFLICT_RETRIES {
        match result {
            Err(AggregateError::AggregateConflict) => {
                // Varied by the clock's nanoseconds: two racers rarely pause alike.
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_nanos()));
                tokio::time::sleep(std::time::Duration::from_millis(
                    1 + nanos % CONFLICT_PAUSE_MS,
                ))
                .await;
                result = run().await;
            }
            other => return other,
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("refused")]
    struct Refused;

    /// Runs `retry_on_conflict` over `outcomes` in turn; returns the result and how many
    /// times the command ran.
    async fn retried(
        outcomes: Vec<Result<(), AggregateError<Refused>>>,
    ) -> (Result<(), AggregateError<Refused>>, usize) {
        let outcomes = Mutex::new(outcomes.into_iter());
        let runs = std::sync::atomic::AtomicUsize::new(0);
        let result = retry_on_conflict(|| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let next = outcomes.lock().ok().and_then(|mut o| o.next());
            async move { next.unwrap_or(Ok(())) }
        })
        .await;
        (result, runs.into_inner())
    }

    #[tokio::test]
    async fn optimistic_concurrency_conflicts_are_retried_and_nothing_else_is() {
        let conflict = || Err(AggregateError::AggregateConflict);
        // Two conflicts, then the command goes through on the fresh aggregate.
        let (result, runs) = retried(vec![conflict(), conflict(), Ok(())]).await;
        assert!(result.is_ok());
        assert_eq!(runs, 3);
        // Endless conflicts give up after CONFLICT_RETRIES runs; the caller decides what next.
        let (result, runs) = retried((0..CONFLICT_RETRIES).map(|_| conflict()).collect()).await;
        assert!(matches!(result, Err(AggregateError::AggregateConflict)));
        assert_eq!(runs, CONFLICT_RETRIES);
        // A refusal is final at once.
        let (result, runs) = retried(vec![Err(AggregateError::UserError(Refused))]).await;
        assert!(matches!(result, Err(AggregateError::UserError(Refused))));
        assert_eq!(runs, 1);
    }
}
