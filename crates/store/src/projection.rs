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

impl Database {
    /// The billing views and the checkpoint they reflect, read consistently.
    pub async fn load_billing_views(&self) -> Result<(Checkpoint, Vec<ViewRow>), StoreError> {
        const CHECKPOINT: &str =
            "SELECT tx, position FROM projector_checkpoints WHERE name = 'billing_views'";
        const VIEWS: &str = "SELECT customer_id, view FROM billing_views ORDER BY customer_id";
        // One snapshot for both reads (SQLite's transactions are snapshots already).
        let isolation = match self {
            Self::Sqlite(_) => None,
            Self::Postgres(_) => Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"),
        };
        let (checkpoint, rows): ((i64, i64), Vec<(String, String)>) = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if let Some(isolation) = isolation {
                sqlx::query(isolation).execute(&mut *tx).await?;
            }
            let checkpoint = sqlx::query_as(CHECKPOINT).fetch_one(&mut *tx).await?;
            let rows = sqlx::query_as(VIEWS).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            (checkpoint, rows)
        });
        Ok((
            Checkpoint {
                tx: checkpoint.0,
                position: checkpoint.1,
            },
            rows.into_iter()
                .map(|(key, json)| ViewRow { key, json })
                .collect(),
        ))
    }

    /// Where the saved billing views are up to.
    pub async fn billing_views_checkpoint(&self) -> Result<Checkpoint, StoreError> {
        const CHECKPOINT: &str =
            "SELECT tx, position FROM projector_checkpoints WHERE name = 'billing_views'";
        let (tx, position): (i64, i64) =
            on_pool!(self, pool => sqlx::query_as(CHECKPOINT).fetch_one(pool).await?);
        Ok(Checkpoint { tx, position })
    }

    /// Moves the billing-view checkpoint from `from` to `to` and saves `rows`, atomically.
    /// Returns `false`, saving nothing, if the checkpoint is no longer at `from` (another
    /// process saved the same deterministic result first).
    pub async fn save_billing_views(
        &self,
        from: Checkpoint,
        to: Checkpoint,
        rows: &[ViewRow],
    ) -> Result<bool, StoreError> {
        const MOVE: &str = "UPDATE projector_checkpoints SET tx = $1, position = $2
                             WHERE name = 'billing_views' AND tx = $3 AND position = $4";
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
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved != 1 {
                return Ok(false);
            }
            for chunk in rows.chunks(500) {
                let mut query =
                    QueryBuilder::new("INSERT INTO billing_views (customer_id, view, position) ");
                query.push_values(chunk, |mut row, view| {
                    row.push_bind(&view.key)
                        .push_bind(&view.json)
                        .push_bind(to.position);
                });
                query.push(
                    " ON CONFLICT (customer_id) DO UPDATE SET view = excluded.view, position = excluded.position",
                );
                query.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Empties the billing views and rewinds their checkpoint, for a rebuild from position 0.
    pub async fn reset_billing_views(&self) -> Result<(), StoreError> {
        const CLEAR: &str = "DELETE FROM billing_views";
        const REWIND: &str =
            "UPDATE projector_checkpoints SET tx = 0, position = 0 WHERE name = 'billing_views'";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(REWIND).execute(&mut *tx).await?;
            sqlx::query(CLEAR).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }
}
