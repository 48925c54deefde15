//! How far each outbound notification endpoint got in the change feed, per lane, and every
//! attempt. See `migrations/*/0008_notifications.sql`.

use crate::database::Database;
use crate::error::StoreError;

/// A lane's place, as its holder works it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    pub endpoint: String,
    pub lane: i64,
    pub delivered_through: i64,
    pub leased_until_ms: i64,
    pub retry: Option<Retry>,
}

/// The change a lane is retrying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub seq: i64,
    pub attempts: i64,
    pub first_attempt_ms: i64,
    pub next_attempt_ms: i64,
}

/// One attempt to deliver one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub endpoint: String,
    pub change_seq: i64,
    pub customer_id: String,
    pub attempt: i64,
    pub at_ms: i64,
    /// `delivered`, `failed` (to be retried) or `gave_up`.
    pub outcome: String,
    pub status: Option<i64>,
    pub error: Option<String>,
    pub duration_ms: i64,
}

type LaneRow = (String, i64, i64, i64, Option<i64>, i64, Option<i64>, i64);

fn lane_of(row: LaneRow) -> Lane {
    let (endpoint, lane, delivered_through, leased_until_ms, seq, attempts, first, next) = row;
    Lane {
        endpoint,
        lane,
        delivered_through,
        leased_until_ms,
        retry: seq.map(|seq| Retry {
            seq,
            attempts,
            first_attempt_ms: first.unwrap_or(0),
            next_attempt_ms: next,
        }),
    }
}

const LANE_COLUMNS: &str = "endpoint, lane, delivered_through, leased_until_ms, retry_seq, \
                            retry_attempts, first_attempt_ms, next_attempt_ms";

impl Database {
    /// Creates `endpoint`'s lanes that do not exist yet, starting after change `start_after`
    /// (an endpoint hears of changes from when it was first configured).
    pub async fn ensure_notification_lanes(
        &self,
        endpoint: &str,
        lanes: i64,
        start_after: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO notification_lanes (endpoint, lane, delivered_through)
                           VALUES ($1, $2, $3) ON CONFLICT (endpoint, lane) DO NOTHING";
        for lane in 0..lanes {
            on_pool!(self, pool => {
                sqlx::query(SQL)
                    .bind(endpoint)
                    .bind(lane)
                    .bind(start_after)
                    .execute(pool)
                    .await?;
            });
        }
        Ok(())
    }

    /// Takes `lane` of `endpoint` until `lease_until_ms` if no live server holds it.
    pub async fn claim_notification_lane(
        &self,
        endpoint: &str,
        lane: i64,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> Result<Option<Lane>, StoreError> {
        let sql = format!(
            "UPDATE notification_lanes SET leased_until_ms = $1
              WHERE endpoint = $2 AND lane = $3 AND leased_until_ms <= $4
          RETURNING {LANE_COLUMNS}"
        );
        let row: Option<LaneRow> = on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(lease_until_ms)
                .bind(endpoint)
                .bind(lane)
                .bind(now_ms)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(lane_of))
    }

    /// Saves what the lane's holder did (its new place, the attempt it made, if any) in one
    /// transaction. `false` when the lease was lost meanwhile: nothing is saved.
    pub async fn save_notification_lane(
        &self,
        lane: &Lane,
        held_until_ms: i64,
        attempt: Option<&Attempt>,
    ) -> Result<bool, StoreError> {
        const UPDATE: &str = "UPDATE notification_lanes
                                 SET delivered_through = $1, leased_until_ms = $2, retry_seq = $3,
                                     retry_attempts = $4, first_attempt_ms = $5, next_attempt_ms = $6
                               WHERE endpoint = $7 AND lane = $8 AND leased_until_ms = $9";
        const INSERT: &str = "INSERT INTO notification_attempts
                                (endpoint, change_seq, customer_id, attempt, at_ms, outcome, status, error, duration_ms)
                              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
        let retry = lane.retry.as_ref();
        let saved = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let saved = sqlx::query(UPDATE)
                .bind(lane.delivered_through)
                .bind(lane.leased_until_ms)
                .bind(retry.map(|r| r.seq))
                .bind(retry.map_or(0, |r| r.attempts))
                .bind(retry.map(|r| r.first_attempt_ms))
                .bind(retry.map_or(0, |r| r.next_attempt_ms))
                .bind(&lane.endpoint)
                .bind(lane.lane)
                .bind(held_until_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if saved {
                if let Some(attempt) = attempt {
                    sqlx::query(INSERT)
                        .bind(&attempt.endpoint)
                        .bind(attempt.change_seq)
                        .bind(&attempt.customer_id)
                        .bind(attempt.attempt)
                        .bind(attempt.at_ms)
                        .bind(&attempt.outcome)
                        .bind(attempt.status)
                        .bind(&attempt.error)
                        .bind(attempt.duration_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            saved
        });
        Ok(saved)
    }

    /// Every lane of every endpoint.
    pub async fn notification_lanes(&self) -> Result<Vec<Lane>, StoreError> {
        let sql = format!("SELECT {LANE_COLUMNS} FROM notification_lanes ORDER BY endpoint, lane");
        let rows: Vec<LaneRow> =
            on_pool!(self, pool => sqlx::query_as(&sql).fetch_all(pool).await?);
        Ok(rows.into_iter().map(lane_of).collect())
    }

    /// The newest `limit` attempts, newest first.
    pub async fn notification_attempts(&self, limit: i64) -> Result<Vec<Attempt>, StoreError> {
        const SQL: &str =
            "SELECT endpoint, change_seq, customer_id, attempt, at_ms, outcome, status,
                                  error, duration_ms
                             FROM notification_attempts ORDER BY id DESC LIMIT $1";
        type Row = (
            String,
            i64,
            String,
            i64,
            i64,
            String,
            Option<i64>,
            Option<String>,
            i64,
        );
        let rows: Vec<Row> =
            on_pool!(self, pool => sqlx::query_as(SQL).bind(limit).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(
                |(
                    endpoint,
                    change_seq,
                    customer_id,
                    attempt,
                    at_ms,
                    outcome,
                    status,
                    error,
                    duration_ms,
                )| {
                    Attempt {
                        endpoint,
                        change_seq,
                        customer_id,
                        attempt,
                        at_ms,
                        outcome,
                        status,
                        error,
                        duration_ms,
                    }
                },
            )
            .collect())
    }
}
