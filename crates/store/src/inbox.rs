//! The durable inbox: every verified Stripe event exactly as it arrived, unique on its id.
//!
//! Rows are inserted by the webhook receiver in batches (concurrent deliveries share one
//! commit), claimed by workers with a lease, and finished as `processed` or `ignored`. A row
//! whose processing failed stays `pending` with its error and a later `available_at`.

use cqrs_es::persist::SerializedEvent;
use sqlx::{QueryBuilder, Row};

use crate::database::Database;
use crate::error::StoreError;

/// A verified Stripe event to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewInboxEvent {
    pub event_id: String,
    pub event_type: String,
    pub api_version: Option<String>,
    pub livemode: bool,
    pub account: Option<String>,
    /// Whose events are handled one at a time (the customer): see `claim_inbox_events`.
    pub ordering_key: Option<String>,
    pub stripe_created: i64,
    /// The request body, byte for byte (it is valid UTF-8: it parsed as JSON).
    pub payload: String,
    pub received_at_ms: i64,
    pub correlation_id: String,
}

/// Rows one statement finishes: three bound values each, well under SQLite's limit.
const ROWS_PER_FINISH: usize = 1_000;

/// Marks rows finished, each with its own status and outcome, lease and error cleared: one
/// statement for many rows (`UPDATE … FROM (VALUES …)`, which both stores read alike, SQLite
/// since 3.33). A statement per row was a round trip per row on PostgreSQL, a fifth of the
/// worker's time in its log of statement durations.
fn finish_rows<DB: sqlx::Database>(rows: &[FinishedRow], now_ms: i64) -> QueryBuilder<'_, DB>
where
    for<'a> &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: for<'a> sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = QueryBuilder::new("UPDATE inbox SET processed_at_ms = ");
    query.push_bind(now_ms);
    query.push(
        ", status = finished.column2, outcome = finished.column3, locked_until_ms = NULL, \
         last_error = NULL FROM (",
    );
    query.push_values(rows, |mut values, row| {
        values
            .push_bind(row.event_id.as_str())
            .push_bind(row.status.as_str())
            .push_bind(row.outcome.as_str());
    });
    query.push(") AS finished WHERE inbox.event_id = finished.column1");
    query
}

/// What [`Database::commit_work`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkCommit {
    Committed,
    /// Another writer appended to one of the aggregates first; nothing was written.
    Conflict,
}

/// How a claimed row ended, for [`Database::finish_inbox_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedRow {
    pub event_id: String,
    pub status: InboxStatus,
    pub outcome: String,
}

/// An inbox row a worker has claimed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedEvent {
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub stripe_created: i64,
    pub received_at_ms: i64,
    pub correlation_id: String,
    /// Including this one.
    pub attempts: i32,
    /// Whose events these are (the customer): one key's rows run in order, one at a time;
    /// rows of different keys may run at once.
    pub ordering_key: Option<String>,
}

/// How an inbox row ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxStatus {
    Processed,
    Ignored,
}

impl InboxStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Ignored => "ignored",
        }
    }
}

/// Counts of inbox rows by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    pub pending: i64,
    pub processed: i64,
    pub ignored: i64,
    /// Pending rows whose last attempt failed.
    pub failing: i64,
}

/// The pending part of the inbox, for readiness checks: cheap however large the inbox grows,
/// since only pending rows are read (the `inbox_pending` partial index holds exactly those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingInbox {
    pub pending: i64,
    /// Pending rows whose last attempt failed.
    pub failing: i64,
    /// When the oldest pending row was received (milliseconds), if any is pending.
    pub oldest_received_at_ms: Option<i64>,
}

const INSERT_COLUMNS: &str =
    "INSERT INTO inbox (event_id, event_type, api_version, livemode, account, \
     stripe_created, payload, received_at_ms, correlation_id, available_at_ms, ordering_key) ";

const CLAIM_ORDER: &str = "ORDER BY stripe_created, received_at_ms, event_id";

/// The advisory lock that serializes inbox claims on PostgreSQL ("subledgr" in ASCII).
const CLAIM_LOCK: i64 = 0x7375_626c_6564_6772;

impl Database {
    /// Stores a batch in one transaction. Returns, for each input, whether it was new (`false`:
    /// an event with that id was already stored, or appears earlier in the same batch).
    pub async fn insert_inbox_events(
        &self,
        events: &[NewInboxEvent],
    ) -> Result<Vec<bool>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        // Duplicates inside one batch: only the first occurrence is attempted.
        let mut first_index = std::collections::HashMap::new();
        let unique: Vec<&NewInboxEvent> = events
            .iter()
            .enumerate()
            .filter(|(i, e)| *first_index.entry(e.event_id.as_str()).or_insert(*i) == *i)
            .map(|(_, e)| e)
            .collect();
        // One statement, one commit, before anyone is answered.
        let inserted: Vec<String> = on_pool!(self, pool => {
            let mut query = QueryBuilder::new(INSERT_COLUMNS);
            query.push_values(&unique, |mut row, e| {
                row.push_bind(&e.event_id)
                    .push_bind(&e.event_type)
                    .push_bind(&e.api_version)
                    .push_bind(e.livemode)
                    .push_bind(&e.account)
                    .push_bind(e.stripe_created)
                    .push_bind(&e.payload)
                    .push_bind(e.received_at_ms)
                    .push_bind(&e.correlation_id)
                    .push_bind(e.received_at_ms)
                    .push_bind(&e.ordering_key);
            });
            query.push(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
            query
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?
        });
        let inserted: std::collections::HashSet<&str> =
            inserted.iter().map(String::as_str).collect();
        Ok(events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                first_index.get(e.event_id.as_str()) == Some(&i)
                    && inserted.contains(e.event_id.as_str())
            })
            .collect())
    }

    /// Claims up to `limit` pending rows that are due and not leased by another worker, leasing
    /// them until `now_ms + lease_ms`. Oldest Stripe time first.
    ///
    /// Per-customer order: a row is claimed only while no other worker holds a lease on a row
    /// with the same ordering key, so one customer's events are handled by one worker at a
    /// time, in Stripe's order. A row waiting out its backoff holds no lease: a parked event
    /// never holds up the customer's others (one of which may be what it waits for).
    pub async fn claim_inbox_events(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let lease_until = now_ms.saturating_add(lease_ms);
        let sql = format!(
            "UPDATE inbox SET locked_until_ms = $1, attempts = attempts + 1
              WHERE event_id IN (
                SELECT event_id FROM inbox candidate
                 WHERE status = 'pending' AND available_at_ms <= $2
                   AND (locked_until_ms IS NULL OR locked_until_ms <= $2)
                   AND (ordering_key IS NULL OR NOT EXISTS (
                        SELECT 1 FROM inbox leased
                         WHERE leased.ordering_key = candidate.ordering_key
                           AND leased.status = 'pending' AND leased.locked_until_ms > $2))
                 {CLAIM_ORDER} LIMIT $3)
          RETURNING event_id, event_type, payload, stripe_created, received_at_ms,
                    correlation_id, attempts, ordering_key"
        );
        let mut rows: Vec<ClaimedEvent> = match self {
            // One writer at a time: the UPDATE sees every lease committed before it.
            Self::Sqlite(pool) => {
                sqlx::query_as(&sql)
                    .bind(lease_until)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            // Claims are serialized by a transaction-scoped advisory lock, taken before the
            // UPDATE so that its snapshot holds every lease committed by earlier claims. (Row
            // locks alone would let two claims that overlap take one customer's rows apart.)
            // A claim is a few milliseconds; the work it hands out runs in parallel.
            Self::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CLAIM_LOCK)
                    .execute(&mut *tx)
                    .await?;
                let rows = sqlx::query_as(&sql)
                    .bind(lease_until)
                    .bind(now_ms)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows
            }
        };
        // RETURNING does not promise an order.
        rows.sort_by(|a, b| {
            (a.stripe_created, a.received_at_ms, &a.event_id).cmp(&(
                b.stripe_created,
                b.received_at_ms,
                &b.event_id,
            ))
        });
        Ok(rows)
    }

    /// Marks a claimed row finished.
    pub async fn finish_inbox_event(
        &self,
        event_id: &str,
        status: InboxStatus,
        outcome: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.finish_inbox_events(
            &[FinishedRow {
                event_id: event_id.to_owned(),
                status,
                outcome: outcome.to_owned(),
            }],
            now_ms,
        )
        .await
    }

    /// Appends the events of a unit of work and finishes the inbox rows they came from, in one
    /// transaction. `Conflict` (nothing written) when another writer appended to one of the
    /// aggregates first: the caller reloads and runs the commands again.
    pub async fn commit_work(
        &self,
        events: &[SerializedEvent],
        rows: &[FinishedRow],
        now_ms: i64,
    ) -> Result<WorkCommit, StoreError> {
        // Bound parameters per statement stay well under SQLite's limit (32,766).
        const EVENTS_PER_INSERT: usize = 1_000;
        let mut sequences = Vec::with_capacity(events.len());
        for event in events {
            sequences.push(i64::try_from(event.sequence).map_err(|_| {
                StoreError::Corrupt(format!("event sequence {} is out of range", event.sequence))
            })?);
        }
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for (chunk, sequences) in events
                .chunks(EVENTS_PER_INSERT)
                .zip(sequences.chunks(EVENTS_PER_INSERT))
            {
                let mut insert = QueryBuilder::new(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                     event_version, payload, metadata) ",
                );
                insert.push_values(chunk.iter().zip(sequences), |mut row, (event, sequence)| {
                    row.push_bind(&event.aggregate_type)
                        .push_bind(&event.aggregate_id)
                        .push_bind(*sequence)
                        .push_bind(&event.event_type)
                        .push_bind(&event.event_version)
                        .push_bind(&event.payload)
                        .push_bind(&event.metadata);
                });
                match insert.build().execute(&mut *tx).await {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                        tx.rollback().await?;
                        return Ok(WorkCommit::Conflict);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            for chunk in rows.chunks(ROWS_PER_FINISH) {
                finish_rows(chunk, now_ms).build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(WorkCommit::Committed)
    }

    /// Marks several claimed rows finished in one transaction: one commit for a whole batch.
    pub async fn finish_inbox_events(
        &self,
        rows: &[FinishedRow],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        // With no events nothing can conflict.
        self.commit_work(&[], rows, now_ms).await.map(|_| ())
    }

    /// Records a failed attempt and when to try again. The row stays pending: never dropped.
    pub async fn retry_inbox_event_later(
        &self,
        event_id: &str,
        error: &str,
        available_at_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str =
            "UPDATE inbox SET last_error = $1, available_at_ms = $2, locked_until_ms = NULL
                            WHERE event_id = $3 AND status = 'pending'";
        on_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(error)
                .bind(available_at_ms)
                .bind(event_id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// How many rows are pending and since when; see [`PendingInbox`].
    pub async fn pending_inbox(&self) -> Result<PendingInbox, StoreError> {
        const SQL: &str = "SELECT COUNT(*), COUNT(last_error), MIN(received_at_ms) \
             FROM inbox WHERE status = 'pending'";
        let (pending, failing, oldest_received_at_ms): (i64, i64, Option<i64>) =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_one(pool).await?);
        Ok(PendingInbox {
            pending,
            failing,
            oldest_received_at_ms,
        })
    }

    pub async fn inbox_stats(&self) -> Result<InboxStats, StoreError> {
        const SQL: &str = "SELECT
                COUNT(CASE WHEN status = 'pending' THEN 1 END),
                COUNT(CASE WHEN status = 'processed' THEN 1 END),
                COUNT(CASE WHEN status = 'ignored' THEN 1 END),
                COUNT(CASE WHEN status = 'pending' AND last_error IS NOT NULL THEN 1 END)
              FROM inbox";
        let (pending, processed, ignored, failing): (i64, i64, i64, i64) =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_one(pool).await?);
        Ok(InboxStats {
            pending,
            processed,
            ignored,
            failing,
        })
    }
}

/// Which inbox rows an operator asks about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxFilter {
    pub state: Option<InboxState>,
    pub event_type: Option<String>,
    /// Received at or after this moment (milliseconds).
    pub since_ms: Option<i64>,
    pub limit: i64,
}

/// An inbox row's state as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxState {
    /// Pending, waiting for its first attempt or between retries.
    Pending,
    /// Pending, and its last attempt failed.
    Failing,
    Processed,
    Ignored,
}

impl InboxState {
    fn condition(self) -> &'static str {
        match self {
            Self::Pending => "status = 'pending'",
            Self::Failing => "status = 'pending' AND last_error IS NOT NULL",
            Self::Processed => "status = 'processed'",
            Self::Ignored => "status = 'ignored'",
        }
    }
}

/// One inbox row, for operators.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InboxRow {
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub stripe_created: i64,
    pub received_at_ms: i64,
    pub last_error: Option<String>,
    pub outcome: Option<String>,
}

impl Database {
    /// Inbox rows matching `filter`, oldest received first.
    pub async fn list_inbox(&self, filter: &InboxFilter) -> Result<Vec<InboxRow>, StoreError> {
        let state = filter.state.map_or("1 = 1", InboxState::condition);
        let sql = format!(
            "SELECT event_id, event_type, status, attempts, stripe_created, received_at_ms,
                    last_error, outcome
               FROM inbox
              WHERE {state} AND ($1 IS NULL OR event_type = $1) AND received_at_ms >= $2
              ORDER BY received_at_ms, event_id
              LIMIT $3"
        );
        let rows: Vec<InboxRow> = on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(&filter.event_type)
                .bind(filter.since_ms.unwrap_or(i64::MIN))
                .bind(filter.limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Makes a pending row due now (an operator's "retry"). Returns the row's status, or
    /// `None` for an id the inbox does not hold; only a pending row is changed.
    pub async fn retry_inbox_event_now(
        &self,
        event_id: &str,
        now_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        const RETRY: &str = "UPDATE inbox SET available_at_ms = $1
                              WHERE event_id = $2 AND status = 'pending'";
        const STATUS: &str = "SELECT status FROM inbox WHERE event_id = $1";
        let status: Option<String> = on_pool!(self, pool => {
            sqlx::query(RETRY).bind(now_ms).bind(event_id).execute(pool).await?;
            sqlx::query_scalar(STATUS).bind(event_id).fetch_optional(pool).await?
        });
        Ok(status)
    }

    /// Puts processed and ignored rows (of `event_type`, received since `since_ms`) back in
    /// line, due now, for today's translator to run again. Returns how many.
    pub async fn reprocess_inbox(
        &self,
        event_type: Option<&str>,
        since_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE inbox
                              SET status = 'pending', available_at_ms = $1, attempts = 0,
                                  locked_until_ms = NULL, last_error = NULL
                            WHERE status IN ('processed', 'ignored')
                              AND ($2 IS NULL OR event_type = $2) AND received_at_ms >= $3";
        let changed = on_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(now_ms)
                .bind(event_type)
                .bind(since_ms.unwrap_or(i64::MIN))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(changed)
    }
}

impl Database {
    /// Which of `event_ids` the inbox holds.
    pub async fn inbox_holds(
        &self,
        event_ids: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let mut held = std::collections::HashSet::new();
        for chunk in event_ids.chunks(500) {
            let found: Vec<String> = on_pool!(self, pool => {
                let mut query = QueryBuilder::new("SELECT event_id FROM inbox WHERE event_id IN (");
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind(id);
                }
                query.push(")");
                query
                    .build()
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?
            });
            held.extend(found);
        }
        Ok(held)
    }
}
