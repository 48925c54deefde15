//! Projector checkpoints and the read-model rows saved atomically with them.

use sqlx::QueryBuilder;

use crate::database::Database;
use crate::error::StoreError;
use crate::event_log::Checkpoint;

/// A saved read-model row: the key and its serialized state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewRow {
    pub key: String,
    pub json: String,
}

/// A log event the projector could not decode, kept aside with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub error: String,
    pub quarantined_at_ms: i64,
}

/// The saved billing views, the checkpoint they reflect, the version of their shape, and
/// their generation (moved by every rebuild).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedViews {
    pub checkpoint: Checkpoint,
    pub version: i32,
    pub generation: i64,
    pub rows: Vec<ViewRow>,
}

/// `tx, position, view_version, generation` of the billing views' checkpoint row.
type CheckpointRow = (i64, i64, i32, i64);

const CHECKPOINT: &str = "SELECT tx, position, view_version, generation FROM projector_checkpoints
                           WHERE name = 'billing_views'";

impl Database {
    /// The billing views and the checkpoint they reflect, read consistently.
    pub async fn load_billing_views(&self) -> Result<SavedViews, StoreError> {
        const VIEWS: &str = "SELECT customer_id, view FROM billing_views ORDER BY customer_id";
        // One snapshot for both reads (SQLite's transactions are snapshots already).
        let isolation = match self {
            Self::Sqlite(_) => None,
            Self::Postgres(_) => Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
        };
        let (state, rows): (CheckpointRow, Vec<(String, String)>) = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(isolation) = isolation {
                sqlx::query(isolation).execute(&mut *tx).await?;
            }
            let state = sqlx::query_as(CHECKPOINT).fetch_one(&mut *tx).await?;
            let rows = sqlx::query_as(VIEWS).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            (state, rows)
        });
        Ok(SavedViews {
            checkpoint: Checkpoint {
                tx: state.0,
                position: state.1,
            },
            version: state.2,
            generation: state.3,
            rows: rows
                .into_iter()
                .map(|(key, json)| ViewRow { key, json })
                .collect(),
        })
    }

    /// Where the saved billing views are up to, and their generation.
    pub async fn billing_views_state(&self) -> Result<(Checkpoint, i64), StoreError> {
        let (tx, position, _, generation): CheckpointRow =
            on_pool!(self, pool => sqlx::query_as(CHECKPOINT).fetch_one(pool).await?);
        Ok((Checkpoint { tx, position }, generation))
    }

    /// Moves the billing-view checkpoint from `from` to `to` and saves `rows`, atomically.
    /// Returns `false`, saving nothing, if the checkpoint is no longer at `from` (another
    /// process saved the same deterministic result first) or the views are no longer of
    /// `generation` (a rebuild replaced them: views computed before it must not overwrite it).
    pub async fn save_billing_views(
        &self,
        from: Checkpoint,
        to: Checkpoint,
        generation: i64,
        rows: &[ViewRow],
    ) -> Result<bool, StoreError> {
        const MOVE: &str = "UPDATE projector_checkpoints SET tx = $1, position = $2
                             WHERE name = 'billing_views' AND tx = $3 AND position = $4
                               AND generation = $5";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // The UPDATE comes first: on SQLite it takes the write lock before anything is read;
            // on PostgreSQL its row lock serializes concurrent savers, and the loser sees the
            // moved checkpoint and saves nothing.
            let moved = sqlx::query(MOVE)
                .bind(to.tx)
                .bind(to.position)
                .bind(from.tx)
                .bind(from.position)
                .bind(generation)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved != 1 {
                return Ok(false);
            }
            for chunk in rows.chunks(500) {
                upsert_views(chunk, to).build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Replaces every saved view with `rows` (a rebuild from the log up to `to`, in the shape
    /// of `version`) and moves the generation, atomically: readers see the old views or the
    /// new ones, and running servers notice the new generation and reload. Returns it.
    pub async fn replace_billing_views(
        &self,
        to: Checkpoint,
        rows: &[ViewRow],
        version: i32,
    ) -> Result<i64, StoreError> {
        const MOVE: &str = "UPDATE projector_checkpoints
                               SET tx = $1, position = $2, view_version = $3,
                                   generation = generation + 1
                             WHERE name = 'billing_views'
                         RETURNING generation";
        const CLEAR: &str = "DELETE FROM billing_views";
        let generation: i64 = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let generation = sqlx::query_scalar(MOVE)
                .bind(to.tx)
                .bind(to.position)
                .bind(version)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(CLEAR).execute(&mut *tx).await?;
            for chunk in rows.chunks(500) {
                upsert_views(chunk, to).build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            generation
        });
        Ok(generation)
    }
}

impl Database {
    /// Records events the projector skipped (each once, by position).
    pub async fn quarantine_projection_events(
        &self,
        events: &[QuarantinedEvent],
    ) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        on_pool!(self, pool => {
            quarantine_rows(events)
                .push(" ON CONFLICT (position) DO NOTHING")
                .build()
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Puts `events` in place of every quarantined event: what a rebuild found.
    pub async fn replace_projection_quarantine(
        &self,
        events: &[QuarantinedEvent],
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("DELETE FROM projection_quarantine")
                .execute(&mut *tx)
                .await?;
            for chunk in events.chunks(500) {
                quarantine_rows(chunk).build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// How many events are quarantined.
    pub async fn projection_quarantine_count(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM projection_quarantine";
        let count: i64 = on_pool!(self, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?);
        Ok(count)
    }

    /// Every quarantined event, in log order.
    pub async fn projection_quarantine(&self) -> Result<Vec<QuarantinedEvent>, StoreError> {
        const SQL: &str = "SELECT position, aggregate_type, aggregate_id, sequence, event_type,
                                  error, quarantined_at_ms
                             FROM projection_quarantine ORDER BY position";
        type Row = (i64, String, String, i64, String, String, i64);
        let rows: Vec<Row> = on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(
                |(position, aggregate_type, aggregate_id, sequence, event_type, error, at)| {
                    QuarantinedEvent {
                        position,
                        aggregate_type,
                        aggregate_id,
                        sequence,
                        event_type,
                        error,
                        quarantined_at_ms: at,
                    }
                },
            )
            .collect())
    }
}

fn quarantine_rows<'a, DB: sqlx::Database>(events: &'a [QuarantinedEvent]) -> QueryBuilder<'a, DB>
where
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = QueryBuilder::new(
        "INSERT INTO projection_quarantine (position, aggregate_type, aggregate_id, sequence, \
         event_type, error, quarantined_at_ms) ",
    );
    query.push_values(events, |mut row, event| {
        row.push_bind(event.position)
            .push_bind(event.aggregate_type.as_str())
            .push_bind(event.aggregate_id.as_str())
            .push_bind(event.sequence)
            .push_bind(event.event_type.as_str())
            .push_bind(event.error.as_str())
            .push_bind(event.quarantined_at_ms);
    });
    query
}

/// `INSERT … ON CONFLICT DO UPDATE` of saved views, for either backend.
fn upsert_views<'a, DB: sqlx::Database>(rows: &'a [ViewRow], to: Checkpoint) -> QueryBuilder<'a, DB>
where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut query = QueryBuilder::new("INSERT INTO billing_views (customer_id, view, position) ");
    query.push_values(rows, |mut row, view| {
        row.push_bind(view.key.clone())
            .push_bind(view.json.clone())
            .push_bind(to.position);
    });
    query.push(
        " ON CONFLICT (customer_id) DO UPDATE SET view = excluded.view, position = excluded.position",
    );
    query
}
