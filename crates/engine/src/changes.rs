//! The entitlement change feed: every change of a customer's answer, recorded once in the
//! store with a number that orders it, for `GET /v1/changes`, its stream and notifications.
//!
//! Each server's projector, after it applied a batch of the log, compares the answers of the
//! customers whose events it applied (and of those whose answer's deadline, a grace period's
//! end or a grant's start or expiry, has passed) with the answers last recorded for them (a digest per customer), and
//! records those that differ, moving the feed's checkpoint in the same transaction. Servers
//! share the feed: the checkpoint is compare-and-set, so when two look at the same part of
//! the log one records it and the other finds it recorded. A server whose answers are behind
//! the feed records nothing until it has caught up, so no older answer is recorded after a
//! newer one.
//!
//! A look that finds the feed at the projector's checkpoint with nothing due is remembered:
//! until the log moves, the next fed answer stops holding, or five seconds pass, an idle
//! projector does not ask the store again (two queries at every poll, in the writer that
//! webhook acknowledgements use on SQLite).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use subledger_domain::ids::CustomerId;
use subledger_store::{ChangeRow, Checkpoint, FedAnswer, NewChange, StoreError};

use crate::engine::Engine;

/// What a cursor looks like: this prefix and the change's number.
pub const CURSOR_PREFIX: &str = "chg_";

/// The cursor of change number `seq`.
pub fn cursor_of(seq: i64) -> String {
    format!("{CURSOR_PREFIX}{seq}")
}

/// One change as the API and the outbound notifications give it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Change {
    /// Continue after this change with `after=` (or `Last-Event-ID`).
    pub cursor: String,
    /// When the change was recorded.
    pub changed_at: DateTime<Utc>,
    /// The customer's Stripe id.
    pub customer: String,
    /// The connected account the customer belongs to; absent for the platform's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// What made it: `log:<position>` (the customer's newest event it reflects),
    /// `deadline:<time>` (a grace period ended, a grant started or expired) or `start` (a
    /// server started with a catalog
    /// or build that answers differently).
    pub cause: String,
    /// The customer's complete new entitlements answer.
    #[schema(value_type = subledger_domain::entitlements::Entitlements)]
    pub entitlements: Value,
}

/// A recorded change that cannot be read back: its stored answer or time is damaged (this
/// build wrote neither). It is never passed on as a change with no answer: a consumer would
/// take that for a customer who has nothing.
#[derive(Debug, thiserror::Error)]
#[error("change {cursor} cannot be read: {reason}")]
pub struct UnreadableChange {
    pub cursor: String,
    pub reason: String,
}

impl Change {
    pub fn of(row: &ChangeRow) -> Result<Self, UnreadableChange> {
        let cursor = cursor_of(row.seq);
        let unreadable = |reason: String| UnreadableChange {
            cursor: cursor.clone(),
            reason,
        };
        let changed_at = DateTime::from_timestamp_millis(row.changed_at_ms).ok_or_else(|| {
            unreadable(format!(
                "its time ({} ms) is out of range",
                row.changed_at_ms
            ))
        })?;
        let entitlements = serde_json::from_str::<Value>(&row.answer)
            .ok()
            .filter(Value::is_object)
            .ok_or_else(|| unreadable("its answer is not a JSON object".to_owned()))?;
        let customer = CustomerId::new(row.customer_id.as_str());
        Ok(Self {
            customer: customer.stripe_id().to_owned(),
            account: customer.account().map(str::to_owned),
            cause: row.cause.clone(),
            changed_at,
            entitlements,
            cursor,
        })
    }
}

/// Why the feed recorded a change.
fn log_cause(position: i64) -> String {
    format!("log:{position}")
}

fn deadline_cause(at: DateTime<Utc>) -> String {
    format!("deadline:{}", at.to_rfc3339_opts(SecondsFormat::Secs, true))
}

/// Changes one transaction recorded, oldest first.
pub type RecordedChanges = std::sync::Arc<[ChangeRow]>;

/// Batches of recorded changes a reader of [`Engine::recorded_changes`] may fall behind
/// before it must read the store instead.
pub(crate) const RECORDED_CAPACITY: usize = 256;

/// A change found when a server starts: its catalog or its build answers differently.
const START_CAUSE: &str = "start";

/// The feed as a look found it: at the projector's checkpoint, nothing due before `until`.
/// Until then a look at the same checkpoint finds the same, so an idle projector does not
/// ask the store at every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuietFeed {
    applied: Checkpoint,
    until: DateTime<Utc>,
}

/// The longest an idle projector trusts a quiet feed without looking: another server may
/// have recorded an answer that stops holding sooner (it records that change itself when it
/// comes; this bounds the wait if that server is gone).
const QUIET_RECHECK: chrono::Duration = chrono::Duration::seconds(5);

impl Engine {
    /// Records the changes of the answers this process's projector reached at `applied`
    /// (see the module's docs); how many it recorded.
    pub(crate) async fn record_changes(&self, applied: Checkpoint) -> Result<usize, StoreError> {
        let now = self.config.clock.now();
        let quiet = *self.feed_quiet.lock().unwrap_or_else(|p| p.into_inner());
        if quiet.is_some_and(|q| q.applied == applied && now < q.until) {
            return Ok(0);
        }
        let seen = self.db.feed_checkpoint().await?;
        if seen.checkpoint > applied {
            return Ok(0);
        }
        let mut causes: BTreeMap<String, String> = BTreeMap::new();
        if seen.checkpoint != applied {
            for (customer, position) in self.db.customers_touched(seen.checkpoint, applied).await? {
                causes.insert(customer, log_cause(position));
            }
        }
        let due = self.db.feed_due(now.timestamp_millis()).await?;
        let first_look = !self.feed_compared_all.load(Ordering::Relaxed);
        if first_look {
            // A server that starts compares every answer once: another catalog or build may
            // answer differently from what was recorded.
            for customer in self.entitlements.customer_ids() {
                causes
                    .entry(customer)
                    .or_insert_with(|| START_CAUSE.to_owned());
            }
        }
        // A customer may be both touched and due: compared once.
        let customers: Vec<String> = causes
            .keys()
            .chain(due.iter())
            .cloned()
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect();
        if customers.is_empty() && seen.checkpoint == applied {
            self.feed_is_quiet(applied, now).await?;
            return Ok(0);
        }
        let fed = if first_look {
            self.db.all_fed_answers().await?
        } else {
            self.db.fed_answers(&customers).await?
        };
        let mut changes = Vec::new();
        let mut now_fed = Vec::new();
        for customer in &customers {
            let Some(answer) = self.entitlements(customer) else {
                continue;
            };
            let digest = answer.digest();
            let valid_until_ms = answer.valid_until().map(|t| t.timestamp_millis());
            let before = fed.get(customer);
            if before.is_some_and(|f| f.digest == digest && f.valid_until_ms == valid_until_ms) {
                continue;
            }
            if before.is_none_or(|f| f.digest != digest) {
                let Ok(json) = answer.json() else {
                    tracing::error!(
                        customer,
                        "a prepared answer cannot be expanded for the feed"
                    );
                    continue;
                };
                let cause = causes.get(customer).cloned().unwrap_or_else(|| {
                    before
                        .and_then(|f| f.valid_until_ms)
                        .and_then(DateTime::from_timestamp_millis)
                        .map_or_else(|| START_CAUSE.to_owned(), deadline_cause)
                });
                changes.push(NewChange {
                    customer_id: customer.clone(),
                    cause,
                    changed_at_ms: now.timestamp_millis(),
                    answer: String::from_utf8_lossy(&json).into_owned(),
                });
            }
            now_fed.push(FedAnswer {
                customer_id: customer.clone(),
                digest,
                valid_until_ms,
            });
        }
        if changes.is_empty() && now_fed.is_empty() && seen.checkpoint == applied {
            self.feed_compared_all.store(true, Ordering::Relaxed);
            self.feed_is_quiet(applied, now).await?;
            return Ok(0);
        }
        let count = changes.len();
        let Some(recorded) = self
            .db
            .record_changes(seen, applied, changes, &now_fed)
            .await?
        else {
            // Another server moved the feed first; what it recorded is compared next time.
            return Ok(0);
        };
        if first_look {
            self.feed_compared_all.store(true, Ordering::Relaxed);
        }
        if count > 0 {
            self.changes_recorded.notify_waiters();
        }
        if !recorded.is_empty() {
            // No receiver is no error: no stream is open.
            let _ = self.recorded.send(recorded.into());
        }
        Ok(count)
    }

    /// Notes that the feed is at `applied` with nothing due now: looks at that checkpoint
    /// wait for the next fed answer to stop holding, or [`QUIET_RECHECK`].
    async fn feed_is_quiet(
        &self,
        applied: Checkpoint,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let next_due = self
            .db
            .feed_next_due()
            .await?
            .and_then(DateTime::from_timestamp_millis);
        let until = next_due.map_or(now + QUIET_RECHECK, |due| due.min(now + QUIET_RECHECK));
        *self.feed_quiet.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(QuietFeed { applied, until });
        Ok(())
    }

    /// Forgets that the feed was quiet: the answers changed without the log moving (the saved
    /// views were rebuilt).
    pub(crate) fn feed_may_have_changed(&self) {
        *self.feed_quiet.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Up to `limit` recorded changes after number `after` (0: from the first), oldest first.
    pub async fn changes_after(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ChangeRow>, StoreError> {
        self.db.changes_after(after, limit).await
    }

    /// The number of the newest recorded change (0: none yet).
    pub async fn last_change(&self) -> Result<i64, StoreError> {
        self.db.last_change().await
    }

    /// The changes this process records from now on, each batch as one transaction recorded
    /// it, numbered and oldest first (others' are found by asking the store). Numbers follow
    /// the order of commits, so a batch whose first number follows the last one a reader has
    /// seen leaves nothing out; one that does not (another server recorded in between, or a
    /// transaction that rolled back took numbers) sends the reader to the store.
    pub fn recorded_changes(&self) -> tokio::sync::broadcast::Receiver<RecordedChanges> {
        self.recorded.subscribe()
    }
}
