//! The entitlement change feed's rows (`entitlement_changes`), the answer each customer's last
//! change carried (`entitlement_feed_state`) and how far into the log the feed has looked
//! (`entitlement_feed`). See `migrations/*/0007_entitlement_changes.sql`.

use std::collections::HashMap;

use sqlx::QueryBuilder;

use crate::database::Database;
use crate::error::StoreError;
use crate::event_log::Checkpoint;

/// How far into the log the feed has looked, and the version a writer must find unchanged to
/// record the next changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedCheckpoint {
    pub checkpoint: Checkpoint,
    pub version: i64,
}

/// A recorded change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    pub seq: i64,
    pub customer_id: String,
    pub cause: String,
    pub changed_at_ms: i64,
    /// The customer's complete new entitlements answer (JSON).
    pub answer: String,
}

/// A change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewChange {
    pub customer_id: String,
    pub cause: String,
    pub changed_at_ms: i64,
    pub answer: String,
}

/// What the feed compares a customer's next answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FedAnswer {
    pub customer_id: String,
    pub digest: String,
    pub valid_until_ms: Option<i64>,
}

/// Rows per statement when many are written or looked up at once.
const CHUNK: usize = 500;

impl Database {
    pub async fn feed_checkpoint(&self) -> Result<FeedCheckpoint, StoreError> {
        const SQL: &str =
            "SELECT tx, position, version FROM entitlement_feed WHERE name = 'changes'";
        let (tx, position, version): (i64, i64, i64) =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_one(pool).await?);
        Ok(FeedCheckpoint {
            checkpoint: Checkpoint { tx, position },
            version,
        })
    }

    /// The customers with events after `after` up to `upto` (in the projector's order), each
    /// with the position of its newest one there.
    pub async fn customers_touched(
        &self,
        after: Checkpoint,
        upto: Checkpoint,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = match self {
            Self::Sqlite(pool) => {
                sqlx::query_as(
                    "SELECT aggregate_id, MAX(position) FROM events
                      WHERE aggregate_type = 'Customer' AND position > $1 AND position <= $2
                      GROUP BY aggregate_id ORDER BY aggregate_id",
                )
                .bind(after.position)
                .bind(upto.position)
                .fetch_all(pool)
                .await?
            }
            Self::Postgres(pool) => {
                sqlx::query_as(
                    "SELECT aggregate_id, MAX(position) FROM events
                      WHERE aggregate_type = 'Customer'
                        AND (tx, position) > ($1::bigint::text::xid8, $2)
                        AND (tx, position) <= ($3::bigint::text::xid8, $4)
                      GROUP BY aggregate_id ORDER BY aggregate_id",
                )
                .bind(after.tx)
                .bind(after.position)
                .bind(upto.tx)
                .bind(upto.position)
                .fetch_all(pool)
                .await?
            }
        };
        Ok(rows)
    }

    /// The customers whose last fed answer stopped holding at or before `now_ms`.
    pub async fn feed_due(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT customer_id FROM entitlement_feed_state
                            WHERE valid_until_ms <= $1 ORDER BY customer_id";
        let rows: Vec<String> =
            on_pool!(self, pool => sqlx::query_scalar(SQL).bind(now_ms).fetch_all(pool).await?);
        Ok(rows)
    }

    /// When the first fed answer that holds only until some time stops holding.
    pub async fn feed_next_due(&self) -> Result<Option<i64>, StoreError> {
        const SQL: &str = "SELECT MIN(valid_until_ms) FROM entitlement_feed_state";
        let next: Option<i64> =
            on_pool!(self, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?);
        Ok(next)
    }

    /// The answers last fed for `customers` (those never fed are absent).
    pub async fn fed_answers(
        &self,
        customers: &[String],
    ) -> Result<HashMap<String, FedAnswer>, StoreError> {
        let mut found = HashMap::with_capacity(customers.len());
        for chunk in customers.chunks(CHUNK) {
            let rows: Vec<(String, String, Option<i64>)> = on_pool!(self, pool => {
                let mut query = QueryBuilder::new(
                    "SELECT customer_id, answer_digest, valid_until_ms FROM entitlement_feed_state
                      WHERE customer_id IN (",
                );
                let mut ids = query.separated(", ");
                for customer in chunk {
                    ids.push_bind(customer);
                }
                query.push(")");
                query.build_query_as().fetch_all(pool).await?
            });
            for (customer_id, digest, valid_until_ms) in rows {
                found.insert(
                    customer_id.clone(),
                    FedAnswer {
                        customer_id,
                        digest,
                        valid_until_ms,
                    },
                );
            }
        }
        Ok(found)
    }

    /// Every answer last fed: what a server that starts compares all its answers with. One
    /// scan, rather than the customers' ids in lists of [`CHUNK`]: a query per 500 customers
    /// made a start (and `subledger replay`) wait on the store for every answer it holds.
    pub async fn all_fed_answers(&self) -> Result<HashMap<String, FedAnswer>, StoreError> {
        const SQL: &str =
            "SELECT customer_id, answer_digest, valid_until_ms FROM entitlement_feed_state";
        let rows: Vec<(String, String, Option<i64>)> =
            on_pool!(self, pool => sqlx::query_as(SQL).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(customer_id, digest, valid_until_ms)| {
                let answer = FedAnswer {
                    customer_id: customer_id.clone(),
                    digest,
                    valid_until_ms,
                };
                (customer_id, answer)
            })
            .collect())
    }

    /// Records `changes` and the answers now fed (`fed`), and moves the feed to `to`, if the
    /// feed is still as `seen`: the rows as recorded, numbered, oldest first (else another
    /// server recorded them first: `None`, nothing written). One transaction; the numbers of
    /// the rows follow the order of commits, as writers queue on the feed's row, and each
    /// `changes` names a customer once.
    pub async fn record_changes(
        &self,
        seen: FeedCheckpoint,
        to: Checkpoint,
        changes: Vec<NewChange>,
        fed: &[FedAnswer],
    ) -> Result<Option<Vec<ChangeRow>>, StoreError> {
        const MOVE: &str =
            "UPDATE entitlement_feed SET tx = $1, position = $2, version = version + 1
                             WHERE name = 'changes' AND version = $3";
        let mut numbers: HashMap<String, i64> = HashMap::with_capacity(changes.len());
        let moved = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let moved = sqlx::query(MOVE)
                .bind(to.tx)
                .bind(to.position)
                .bind(seen.version)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if moved {
                for chunk in changes.chunks(CHUNK) {
                    let mut insert = QueryBuilder::new(
                        "INSERT INTO entitlement_changes (customer_id, cause, changed_at_ms, answer) ",
                    );
                    insert.push_values(chunk, |mut row, change| {
                        row.push_bind(&change.customer_id)
                            .push_bind(&change.cause)
                            .push_bind(change.changed_at_ms)
                            .push_bind(&change.answer);
                    });
                    insert.push(" RETURNING customer_id, seq");
                    let numbered: Vec<(String, i64)> =
                        insert.build_query_as().fetch_all(&mut *tx).await?;
                    numbers.extend(numbered);
                }
                for chunk in fed.chunks(CHUNK) {
                    let mut upsert = QueryBuilder::new(
                        "INSERT INTO entitlement_feed_state (customer_id, answer_digest, valid_until_ms) ",
                    );
                    upsert.push_values(chunk, |mut row, answer| {
                        row.push_bind(&answer.customer_id)
                            .push_bind(&answer.digest)
                            .push_bind(answer.valid_until_ms);
                    });
                    upsert.push(
                        " ON CONFLICT (customer_id) DO UPDATE
                             SET answer_digest = excluded.answer_digest,
                                 valid_until_ms = excluded.valid_until_ms",
                    );
                    upsert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            moved
        });
        if !moved {
            return Ok(None);
        }
        // Every inserted row returns its number; were one missing, the row is left out here
        // and a reader finds the gap and reads the store.
        let mut recorded: Vec<ChangeRow> = changes
            .into_iter()
            .filter_map(|change| {
                Some(ChangeRow {
                    seq: *numbers.get(&change.customer_id)?,
                    customer_id: change.customer_id,
                    cause: change.cause,
                    changed_at_ms: change.changed_at_ms,
                    answer: change.answer,
                })
            })
            .collect();
        recorded.sort_by_key(|row| row.seq);
        Ok(Some(recorded))
    }

    /// Up to `limit` changes after number `after`, oldest first.
    pub async fn changes_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        const SQL: &str = "SELECT seq, customer_id, cause, changed_at_ms, answer
                             FROM entitlement_changes WHERE seq > $1 ORDER BY seq LIMIT $2";
        type Row = (i64, String, String, i64, String);
        let rows: Vec<Row> = on_pool!(self, pool => {
            sqlx::query_as(SQL).bind(after).bind(limit).fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(seq, customer_id, cause, changed_at_ms, answer)| ChangeRow {
                    seq,
                    customer_id,
                    cause,
                    changed_at_ms,
                    answer,
                },
            )
            .collect())
    }

    /// The number of the newest change (0 when none was recorded).
    pub async fn last_change(&self) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COALESCE(MAX(seq), 0) FROM entitlement_changes";
        let last: i64 = on_pool!(self, pool => sqlx::query_scalar(SQL).fetch_one(pool).await?);
        Ok(last)
    }
}
