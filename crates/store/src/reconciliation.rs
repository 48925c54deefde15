//! What each reconciliation found, kept for operators (the dashboard's inbox page shows the
//! last run's differences).

use crate::database::Database;
use crate::error::StoreError;

/// How many runs are kept; older ones are deleted as new ones are recorded.
pub const RUNS_KEPT: i64 = 20;

/// One finished reconciliation: its report as JSON (the shape `subledger reconcile --json`
/// writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconciliationRun {
    pub run_id: String,
    pub finished_at_ms: i64,
    pub report: String,
}

impl Database {
    /// Records a finished run and forgets all but the newest [`RUNS_KEPT`], in one transaction.
    pub async fn record_reconciliation(&self, run: &ReconciliationRun) -> Result<(), StoreError> {
        const INSERT: &str =
            "INSERT INTO reconciliation_runs (run_id, finished_at_ms, report) VALUES ($1, $2, $3)";
        const TRIM: &str = "DELETE FROM reconciliation_runs WHERE run_id NOT IN (
                                SELECT run_id FROM reconciliation_runs
                                 ORDER BY seq DESC LIMIT $1)";
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(INSERT)
                .bind(&run.run_id)
                .bind(run.finished_at_ms)
                .bind(&run.report)
                .execute(&mut *tx)
                .await?;
            sqlx::query(TRIM).bind(RUNS_KEPT).execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The run recorded last, if any ran.
    pub async fn last_reconciliation(&self) -> Result<Option<ReconciliationRun>, StoreError> {
        const SQL: &str = "SELECT run_id, finished_at_ms, report FROM reconciliation_runs
                            ORDER BY seq DESC LIMIT 1";
        let row: Option<(String, i64, String)> =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_optional(pool).await?);
        Ok(
            row.map(|(run_id, finished_at_ms, report)| ReconciliationRun {
                run_id,
                finished_at_ms,
                report,
            }),
        )
    }
}
