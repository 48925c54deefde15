//! Where a backfill run got to: one cursor per Stripe list, so an interrupted run continues
//! where it stopped, and the customers Subledger knows, for the lists Stripe only gives per
//! customer.

use crate::database::Database;
use crate::error::StoreError;

/// How far one list of a backfill run got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillCursor {
    pub scope: String,
    pub run_id: String,
    /// The last object handled (Stripe's `starting_after` for the next page).
    pub starting_after: Option<String>,
    pub done: bool,
}

impl Database {
    /// The cursors of an unfinished run whose scopes start with `prefix`.
    pub async fn backfill_cursors(&self, prefix: &str) -> Result<Vec<BackfillCursor>, StoreError> {
        const SQL: &str = "SELECT scope, run_id, starting_after, done FROM backfill_cursors
                            WHERE substr(scope, 1, length($1)) = $1 ORDER BY scope";
        let rows: Vec<(String, String, Option<String>, bool)> = on_pool!(self, pool => {
            sqlx::query_as(SQL).bind(prefix).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(scope, run_id, starting_after, done)| BackfillCursor {
                scope,
                run_id,
                starting_after,
                done,
            })
            .collect())
    }

    /// Records how far a list got. Called after the page's facts are stored, so a crash
    /// between the two re-reads that page (harmless: facts are judged, never doubled).
    pub async fn save_backfill_cursor(
        &self,
        cursor: &BackfillCursor,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str =
            "INSERT INTO backfill_cursors (scope, run_id, starting_after, done, updated_at_ms)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (scope) DO UPDATE SET run_id = excluded.run_id,
                 starting_after = excluded.starting_after, done = excluded.done,
                 updated_at_ms = excluded.updated_at_ms";
        on_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(&cursor.scope)
                .bind(&cursor.run_id)
                .bind(&cursor.starting_after)
                .bind(cursor.done)
                .bind(now_ms)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Forgets a finished run's cursors: the next run starts from the beginning.
    pub async fn clear_backfill_cursors(&self, prefix: &str) -> Result<(), StoreError> {
        const SQL: &str = "DELETE FROM backfill_cursors WHERE substr(scope, 1, length($1)) = $1";
        on_pool!(self, pool => {
            sqlx::query(SQL).bind(prefix).execute(pool).await?;
        });
        Ok(())
    }

    /// Up to `limit` ids of customers with recorded events, in id order, after `after`.
    pub async fn customer_ids_after(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT DISTINCT aggregate_id FROM events
                            WHERE aggregate_type = 'Customer' AND aggregate_id > $1
                            ORDER BY aggregate_id LIMIT $2";
        let ids: Vec<String> = on_pool!(self, pool => {
            sqlx::query_scalar(SQL)
                .bind(after.unwrap_or(""))
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(ids)
    }

    /// How many customers have recorded events.
    pub async fn count_customers(&self) -> Result<i64, StoreError> {
        const SQL: &str =
            "SELECT COUNT(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Customer'";
        let count: i64 = on_pool!(self, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?);
        Ok(count)
    }

    /// How many domain events carry `correlation_id` (the facts one run recorded).
    pub async fn count_events_of_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM events WHERE correlation_id = $1";
        let count: i64 = on_pool!(self, pool => {
            sqlx::query_scalar(SQL).bind(correlation_id).fetch_one(pool).await?
        });
        Ok(count)
    }

    /// Whether the inbox holds events of the other mode than `livemode` (a key of the wrong
    /// mode for this store).
    pub async fn inbox_has_mode(&self, livemode: bool) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT EXISTS (SELECT 1 FROM inbox WHERE livemode = $1)";
        let exists: bool = on_pool!(self, pool => {
            sqlx::query_scalar(SQL).bind(livemode).fetch_one(pool).await?
        });
        Ok(exists)
    }
}
