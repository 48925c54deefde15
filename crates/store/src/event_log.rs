//! The global event log, read in an order that is safe to follow with a checkpoint.

use sqlx::FromRow;

use crate::database::Database;
use crate::error::StoreError;
use crate::metadata::EventMetadata;

/// A position in the event log a projector has read up to.
///
/// On SQLite `position` alone is commit order and `tx` is always 0. On PostgreSQL events are
/// read in `(tx, position)` order, and only from transactions older than every running one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Checkpoint {
    pub tx: i64,
    pub position: i64,
}

/// One domain event as stored, with its place in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub checkpoint: Checkpoint,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    /// The version of the payload's stored shape (see `subledger_domain::schema`).
    pub event_version: String,
    /// The payload as stored (JSON text). Readers decode it into today's shape themselves,
    /// straight into their type when it is current: a rebuild reads every event once, and
    /// parsing into a `serde_json::Value` first, cloning it and converting it again (with the
    /// metadata parsed on every read) held a whole replay to 22,000 events/s where it now
    /// does 38,000 (`make bench`, SQLite).
    pub payload: String,
    /// The metadata as stored (a JSON object of strings); read it with
    /// [`StoredEvent::metadata`]. A rebuild never needs it, so it is not parsed on every read.
    pub metadata_json: String,
}

impl StoredEvent {
    /// Where the event's fact came from and when Subledger learned it, or why that cannot be
    /// read.
    pub fn metadata(&self) -> Result<EventMetadata, StoreError> {
        EventMetadata::from_json(&self.metadata_json).map_err(|e| {
            StoreError::Corrupt(format!(
                "metadata of event {} #{} at position {}: {e}",
                self.aggregate_id, self.sequence, self.checkpoint.position
            ))
        })
    }
}

/// A log row as [`Database::event_columns`] selects it, read by position: by name, every
/// column of every row was a lookup in a hashed map of the statement's column names, and a
/// replay reads every row of the log.
struct EventRow {
    tx: i64,
    position: i64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: i64,
    event_type: String,
    event_version: String,
    payload: String,
    metadata: String,
}

impl<'r, R: sqlx::Row> FromRow<'r, R> for EventRow
where
    usize: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(Self {
            tx: row.try_get(0)?,
            position: row.try_get(1)?,
            aggregate_type: row.try_get(2)?,
            aggregate_id: row.try_get(3)?,
            sequence: row.try_get(4)?,
            event_type: row.try_get(5)?,
            event_version: row.try_get(6)?,
            payload: row.try_get(7)?,
            metadata: row.try_get(8)?,
        })
    }
}

impl EventRow {
    fn into_event(self) -> Result<StoredEvent, StoreError> {
        Ok(StoredEvent {
            checkpoint: Checkpoint {
                tx: self.tx,
                position: self.position,
            },
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            payload: self.payload,
            metadata_json: self.metadata,
        })
    }
}

/// The PostgreSQL query behind [`Database::read_events_after`]: `$1`, `$2` the checkpoint,
/// `$3` the limit.
///
/// The ORDER BY names the table: a bare `tx` means the output column (the bigint cast in
/// the column list), which no index serves, so every batch sorted the whole log. EXPLAIN
/// ANALYZE on 30,000 events: 37 ms a batch that way, growing with the log; 0.9 ms off the
/// `(tx, position)` index.
fn postgres_read_after(columns: &str) -> String {
    format!(
        "SELECT {columns} FROM events
          WHERE (tx, position) > ($1::bigint::text::xid8, $2)
            AND tx < pg_snapshot_xmin(pg_current_snapshot())
          ORDER BY events.tx, events.position
          LIMIT $3"
    )
}

impl Database {
    /// An [`EventRow`]'s columns as each backend spells them (PostgreSQL keeps JSON as `json` and
    /// the transaction id as `xid8`; SQLite has no transaction id to order by), in the order
    /// [`EventRow`] reads them.
    fn event_columns(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => {
                "0 AS tx, position, aggregate_type, aggregate_id, sequence, event_type, event_version, \
                 payload, metadata"
            }
            Self::Postgres(_) => {
                "tx::text::bigint AS tx, position, aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload::text AS payload, metadata::text AS metadata"
            }
        }
    }

    /// Whether committed events exist after `after`, including (on PostgreSQL) those not yet
    /// readable because an older transaction in the cluster is still running.
    pub async fn has_events_after(&self, after: Checkpoint) -> Result<bool, StoreError> {
        let exists = match self {
            Self::Sqlite(pool) => {
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE position > ?1)")
                    .bind(after.position)
                    .fetch_one(pool)
                    .await?
            }
            Self::Postgres(pool) => {
                sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE (tx, position) > ($1::bigint::text::xid8, $2))",
                )
                .bind(after.tx)
                .bind(after.position)
                .fetch_one(pool)
                .await?
            }
        };
        Ok(exists)
    }

    /// The position of the newest event in the log (0 for an empty log): one step of the
    /// `events_position` index.
    pub async fn log_head(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COALESCE(MAX(position), 0) FROM events";
        let head: i64 = on_pool!(self, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?);
        Ok(head)
    }

    /// The newest event committed so far, in the order projectors read (`(tx, position)` on
    /// PostgreSQL): once a projector has applied this checkpoint it has applied every event
    /// committed before this call. The default checkpoint for an empty log.
    pub async fn log_end(&self) -> Result<Checkpoint, StoreError> {
        let end: Option<(i64, i64)> = match self {
            Self::Sqlite(pool) => {
                sqlx::query_as("SELECT 0, position FROM events ORDER BY position DESC LIMIT 1")
                    .fetch_optional(pool)
                    .await?
            }
            // One step of the `events_commit_order` index.
            Self::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT tx::text::bigint, position FROM events ORDER BY tx DESC, position DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await?
            }
        };
        Ok(
            end.map_or_else(Checkpoint::default, |(tx, position)| Checkpoint {
                tx,
                position,
            }),
        )
    }

    /// One aggregate's events, in its own order (for timelines and answers about the past).
    pub async fn events_of(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
            self.event_columns()
        );
        let rows: Vec<EventRow> = on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(EventRow::into_event).collect()
    }

    /// The events of several aggregates of one type, each after its own sequence, in one
    /// query: ordered by aggregate, then sequence.
    pub async fn events_after_sequences(
        &self,
        aggregate_type: &str,
        after: &[(&str, i64)],
    ) -> Result<Vec<StoredEvent>, StoreError> {
        // Two bound values per aggregate, well under SQLite's limit.
        const AGGREGATES_PER_QUERY: usize = 1_000;
        let mut events = Vec::new();
        for chunk in after.chunks(AGGREGATES_PER_QUERY) {
            // The list drives the join, each aggregate read off the primary key from its
            // sequence on (SQLite keeps a CROSS JOIN's order; PostgreSQL runs a LATERAL
            // subquery per row): a planner left to itself scanned the whole log instead.
            let (join, on) = match self {
                Self::Sqlite(_) => (
                    "CROSS JOIN events",
                    " ON events.aggregate_id = known.column1 AND events.sequence > known.column2 \
                     AND events.aggregate_type = ",
                ),
                Self::Postgres(_) => (
                    "CROSS JOIN LATERAL (SELECT * FROM events",
                    " WHERE events.aggregate_id = known.column1 \
                     AND events.sequence > known.column2 AND events.aggregate_type = ",
                ),
            };
            let rows: Vec<EventRow> = on_pool!(self, pool => {
                let mut query = sqlx::QueryBuilder::new(format!(
                    "SELECT {} FROM (",
                    self.event_columns()
                ));
                query.push_values(chunk, |mut known, (id, sequence)| {
                    known.push_bind(*id).push_bind(*sequence);
                });
                query.push(format!(") AS known {join}{on}"));
                query.push_bind(aggregate_type);
                if matches!(self, Self::Postgres(_)) {
                    query.push(") AS events");
                }
                query.push(" ORDER BY events.aggregate_id, events.sequence");
                query.build_query_as().fetch_all(pool).await?
            });
            for row in rows {
                events.push(row.into_event()?);
            }
        }
        Ok(events)
    }

    /// The PaymentIntents whose events carry `order_id`.
    pub async fn payments_of_order(&self, order_id: &str) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT DISTINCT aggregate_id FROM events
                            WHERE aggregate_type = 'Payment' AND order_id = $1
                            ORDER BY aggregate_id";
        let ids: Vec<String> = on_pool!(self, pool => {
            sqlx::query_scalar(SQL).bind(order_id).fetch_all(pool).await?
        });
        Ok(ids)
    }

    /// Up to `limit` events after `after`, in log order.
    pub async fn read_events_after(
        &self,
        after: Checkpoint,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let columns = self.event_columns();
        let rows: Vec<EventRow> = match self {
            // One writer at a time: position is commit order.
            Self::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {columns} FROM events WHERE position > $1 ORDER BY position LIMIT $2"
                );
                sqlx::query_as(&sql)
                    .bind(after.position)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
            // Only transactions older than every running one: nothing can appear behind later.
            Self::Postgres(pool) => {
                let sql = postgres_read_after(columns);
                sqlx::query_as(&sql)
                    .bind(after.tx)
                    .bind(after.position)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?
            }
        };
        rows.into_iter().map(EventRow::into_event).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scratch::ScratchDatabase;

    /// The projector reads the log a batch at a time; each batch must come off the
    /// `(tx, position)` index, not from sorting the whole log (which grows with every event).
    /// With sorting disabled, a plan that still needs a Sort node cannot use the index.
    #[tokio::test]
    async fn the_log_is_read_in_index_order_on_postgres() {
        let Some(test) = ScratchDatabase::postgres().await.unwrap() else {
            return;
        };
        let Database::Postgres(pool) = &test.database else {
            unreachable!("a PostgreSQL scratch database");
        };
        let mut connection = pool.acquire().await.unwrap();
        sqlx::query("SET enable_sort = off")
            .execute(&mut *connection)
            .await
            .unwrap();
        let explain = format!(
            "EXPLAIN {}",
            postgres_read_after(test.database.event_columns())
        );
        let plan: Vec<String> = sqlx::query_scalar(&explain)
            .bind(0_i64)
            .bind(0_i64)
            .bind(500_i64)
            .fetch_all(&mut *connection)
            .await
            .unwrap();
        assert!(
            !plan.iter().any(|line| line.contains("Sort")),
            "the log is sorted instead of read in index order:\n{}",
            plan.join("\n")
        );
        drop(connection);
        test.cleanup().await.unwrap();
    }
}
