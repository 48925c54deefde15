//! Reconciliation: does Subledger agree with Stripe?
//!
//! Each customer's billing view (details, subscriptions, the invoices dunning counts) is
//! compared with Stripe's live objects, read through the read key, and every difference is
//! reported by object and field with the reason it exists:
//!
//! - `missed_by_subledger`: Stripe has it, Subledger never heard of it;
//! - `stale_at_subledger`: Stripe sent an event about it that never arrived;
//! - `changed_without_event`: it changed at Stripe and no event Subledger could have received
//!   says so (older than Stripe's 30 days of events, or a change that emits none);
//! - `deleted_at_stripe`: the customer is deleted at Stripe;
//! - `unknown_to_stripe`: Subledger knows a customer or subscription Stripe does not;
//! - `dunning`: an invoice Subledger counts as unpaid that Stripe has paid, voided or marked
//!   uncollectible, or one Stripe is collecting that Subledger does not count.
//!
//! `apply` heals by appending events, never by editing history: each correction records
//! Stripe's object as a fact with `fetched` provenance at the moment it was read (in Stripe's
//! time: see [`crate::read_time`]), attributed
//! to the reconciler (`actor: reconciler`) with the drift class and the object it read. The
//! aggregates judge corrections like any other fact, so running it while webhooks flow
//! converges: a webhook older than the read has no effect, a newer one applies.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use subledger_domain::billing::SubscriptionSnapshot;
use subledger_domain::customer::CustomerCommand;
use subledger_domain::entitlements::BillingView;
use subledger_domain::ids::{CustomerId, ACCOUNT_SEPARATOR};
use subledger_store::{EventMetadata, Origin, ReconciliationRun, StoreError};
use subledger_stripe::{translate_fetched, Translation};
use subledger_stripe_client::{ApiError, StripeReader};

use crate::engine::{Engine, EngineError};
use crate::read_time::ReadTime;

/// Why Subledger and Stripe disagree about an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Drift {
    MissedBySubledger,
    StaleAtSubledger,
    ChangedWithoutEvent,
    DeletedAtStripe,
    UnknownToStripe,
    Dunning,
}

impl Drift {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissedBySubledger => "missed_by_subledger",
            Self::StaleAtSubledger => "stale_at_subledger",
            Self::ChangedWithoutEvent => "changed_without_event",
            Self::DeletedAtStripe => "deleted_at_stripe",
            Self::UnknownToStripe => "unknown_to_stripe",
            Self::Dunning => "dunning",
        }
    }

    /// The name of the class in scenario files and reports.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::MissedBySubledger,
            Self::StaleAtSubledger,
            Self::ChangedWithoutEvent,
            Self::DeletedAtStripe,
            Self::UnknownToStripe,
            Self::Dunning,
        ]
        .into_iter()
        .find(|d| d.as_str() == name)
    }
}

/// One field on which Subledger and Stripe disagree.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Difference {
    pub customer: String,
    /// `customer`, `subscription` or `invoice`.
    pub object_type: &'static str,
    pub object: String,
    pub field: String,
    pub subledger: Value,
    pub stripe: Value,
    pub drift: Drift,
    /// Whether `apply` recorded a correction for it.
    pub applied: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ReconcileOptions {
    /// Only these customers (default: every customer Subledger or Stripe knows).
    pub customers: Vec<String>,
    pub apply: bool,
}

/// What a run found and did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconcileReport {
    pub run_id: String,
    pub customers_checked: u64,
    pub differences: Vec<Difference>,
    pub requests: u64,
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl ReconcileReport {
    /// Differences found and not healed (the exit status is 1 when there are any).
    pub fn unresolved(&self) -> usize {
        self.differences.iter().filter(|d| !d.applied).count()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("customer `{0}` is known neither to Stripe (for this key) nor to Subledger")]
    UnknownCustomer(String),
    #[error("reading {what} from Stripe failed: {source}")]
    Stripe {
        what: String,
        #[source]
        source: ApiError,
    },
    #[error("{what} cannot be read: {reason}")]
    Unreadable { what: String, reason: String },
    #[error("recording the correction of {what} failed: {reason}")]
    Record { what: String, reason: String },
    #[error("the report cannot be kept: {0}")]
    Report(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::projector::ProjectionError> for ReconcileError {
    fn from(error: crate::projector::ProjectionError) -> Self {
        Self::Engine(EngineError::Projection(error))
    }
}

fn stripe(what: impl Into<String>) -> impl FnOnce(ApiError) -> ReconcileError {
    let what = what.into();
    move |source| ReconcileError::Stripe { what, source }
}

/// What one customer's comparison decided to record.
struct Correction {
    translation: Translation,
    drift: Drift,
    /// The Stripe object read (`null` when Stripe has none).
    object: Value,
}

impl Correction {
    /// The object the correction is about: what Stripe returned, else the customer.
    fn object_id(&self, customer: &str) -> String {
        self.object
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or(customer)
            .to_owned()
    }
}

impl Engine {
    /// Compares every customer (or those in `options`) with Stripe; see the module docs.
    pub async fn reconcile(
        &self,
        reader: &StripeReader,
        options: &ReconcileOptions,
        on_progress: &mut (dyn FnMut(u64, Option<u64>) + Send + Sync),
    ) -> Result<ReconcileReport, ReconcileError> {
        let started = Instant::now();
        let first_request = reader.requests_made();
        let run_id = format!("reconcile_{}", uuid::Uuid::new_v4().simple());
        let customers = if options.customers.is_empty() {
            self.every_customer(reader).await?
        } else {
            options.customers.iter().cloned().collect()
        };
        // Each account's own undelivered events: a connected account's are listed in it.
        let mut missed = BTreeSet::new();
        for account in accounts_of(&customers) {
            let reader = reader.in_account(account).map_err(stripe(format!(
                "account `{}`",
                account.unwrap_or("(platform)")
            )))?;
            missed.extend(self.undelivered_objects(&reader).await?);
        }
        let total = u64::try_from(customers.len()).ok();
        let mut differences = Vec::new();
        let mut checked = 0;
        let mut read_time = ReadTime::default();
        for customer in &customers {
            let (mut found, corrections) = self
                .compare(
                    reader,
                    customer,
                    &missed,
                    &mut read_time,
                    !options.customers.is_empty(),
                )
                .await?;
            if options.apply {
                for correction in corrections {
                    let object = correction.object_id(customer);
                    self.correct(customer, correction, &run_id).await?;
                    for difference in found.iter_mut().filter(|d| d.object == object) {
                        difference.applied = true;
                    }
                }
            }
            differences.extend(found);
            checked += 1;
            on_progress(checked, total);
        }
        if options.apply {
            self.project().await?;
        }
        let report = ReconcileReport {
            run_id,
            customers_checked: checked,
            differences,
            requests: reader.requests_made().saturating_sub(first_request),
            elapsed: started.elapsed(),
        };
        // Kept for operators (the dashboard's inbox page shows the last run).
        let json =
            serde_json::to_string(&report).map_err(|e| ReconcileError::Report(e.to_string()))?;
        self.db
            .record_reconciliation(&ReconciliationRun {
                run_id: report.run_id.clone(),
                finished_at_ms: self.now_ms(),
                report: json,
            })
            .await?;
        Ok(report)
    }

    /// The newest reconciliation's report, as `subledger reconcile --json` writes it.
    pub async fn last_reconciliation(&self) -> Result<Option<ReconciliationRun>, StoreError> {
        self.db.last_reconciliation().await
    }

    /// Every customer Subledger knows, and every customer Stripe lists: the platform's own,
    /// and those of each connected account Subledger has heard from (a connected account lists
    /// its customers when read with `Stripe-Account`).
    async fn every_customer(
        &self,
        reader: &StripeReader,
    ) -> Result<BTreeSet<String>, ReconcileError> {
        let mut customers = BTreeSet::new();
        let mut after: Option<String> = None;
        loop {
            let ids = self.db.customer_ids_after(after.as_deref(), 500).await?;
            let Some(last) = ids.last().cloned() else {
                break;
            };
            customers.extend(ids);
            after = Some(last);
        }
        let accounts: Vec<Option<String>> = accounts_of(&customers)
            .into_iter()
            .map(|account| account.map(str::to_owned))
            .collect();
        for account in accounts {
            let account = account.as_deref();
            let reader = reader.in_account(account).map_err(stripe(format!(
                "account `{}`",
                account.unwrap_or("(platform)")
            )))?;
            for object in list_all(&reader, "customers", &[]).await? {
                if let Some(id) = object.get("id").and_then(Value::as_str) {
                    customers.insert(CustomerId::in_account(account, id).as_str().to_owned());
                }
            }
        }
        Ok(customers)
    }

    /// The objects that events Stripe failed to deliver (and Subledger does not hold) are
    /// about: a difference on one of them is staleness, not a silent change.
    async fn undelivered_objects(
        &self,
        reader: &StripeReader,
    ) -> Result<BTreeSet<String>, ReconcileError> {
        // Stripe lists the last 30 days: the window needs no filter of its own.
        let events = list_all(reader, "events", &[("delivery_success", "false")]).await?;
        let ids: Vec<String> = events
            .iter()
            .filter_map(|e| e.get("id").and_then(Value::as_str).map(str::to_owned))
            .collect();
        let held = self.db.inbox_holds(&ids).await?;
        Ok(events
            .iter()
            .filter(|e| {
                e.get("id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| !held.contains(id))
            })
            .filter_map(|e| e.pointer("/data/object/id").and_then(Value::as_str))
            .map(str::to_owned)
            .collect())
    }

    /// One customer: the differences, and the corrections that would heal them. A customer
    /// the operator `named` must be known to one side at least.
    async fn compare(
        &self,
        reader: &StripeReader,
        customer: &str,
        missed: &BTreeSet<String>,
        read_time: &mut ReadTime,
        named: bool,
    ) -> Result<(Vec<Difference>, Vec<Correction>), ReconcileError> {
        let view = self.current_view(customer).await?;
        // A connected account's customer (`acct_…/cus_…`) is read in its account.
        let key = CustomerId::new(customer);
        let stripe_id = key.stripe_id();
        let reader = &reader
            .in_account(key.account())
            .map_err(stripe(format!("customer `{customer}`")))?;
        let mut differences = Vec::new();
        let mut corrections = Vec::new();
        let changed = |id: &str| {
            if missed.contains(id) {
                Drift::StaleAtSubledger
            } else {
                Drift::ChangedWithoutEvent
            }
        };
        let differ = |object_type: &'static str,
                      object: &str,
                      field: &str,
                      ours: Value,
                      theirs: Value,
                      drift| {
            Difference {
                customer: customer.to_owned(),
                object_type,
                object: object.to_owned(),
                field: field.to_owned(),
                subledger: ours,
                stripe: theirs,
                drift,
                applied: false,
            }
        };
        let stripe_customer = match reader.retrieve("customers", stripe_id).await {
            Err(ApiError::NotFound(_)) => None,
            other => Some(other.map_err(stripe(format!("customer `{customer}`")))?),
        };
        if named && stripe_customer.is_none() && view.is_none() {
            return Err(ReconcileError::UnknownCustomer(customer.to_owned()));
        }
        // Its subscriptions, canceled ones too (none for a customer Stripe does not know).
        let listed = match &stripe_customer {
            Some(_) => {
                list_all(
                    reader,
                    "subscriptions",
                    &[("customer", stripe_id), ("status", "all")],
                )
                .await?
            }
            None => Vec::new(),
        };
        // Whatever carries the test clock dates everything read about the customer (a deleted
        // customer's stub has no `test_clock`; its subscriptions still do).
        let now = self.config.clock.now();
        let dated = stripe_customer
            .iter()
            .chain(listed.iter())
            .find(|o| o.get("test_clock").is_some_and(|c| !c.is_null()));
        let read_at = match dated {
            Some(object) => read_time
                .of(reader, object, None, now)
                .await
                .map_err(stripe(format!("the test clock of `{customer}`")))?,
            None => now,
        };
        let translate = |object: &Value| {
            translate_fetched(object, read_at, &key).map_err(|e| ReconcileError::Unreadable {
                what: format!("what Stripe returned for `{customer}`"),
                reason: e.to_string(),
            })
        };

        let Some(stripe_customer) = stripe_customer else {
            if view.as_ref().is_some_and(|v| !v.deleted) {
                differences.push(differ(
                    "customer",
                    customer,
                    "exists",
                    Value::Bool(true),
                    Value::Bool(false),
                    Drift::UnknownToStripe,
                ));
                corrections.push(Correction {
                    translation: Translation::Customer {
                        customer_id: key.clone(),
                        command: CustomerCommand::RecordDeletion {
                            occurred_at: read_at,
                        },
                    },
                    drift: Drift::UnknownToStripe,
                    object: Value::Null,
                });
            }
            return Ok((differences, corrections));
        };
        // What Stripe's customer says, as the translator reads it: details, or a deletion.
        let translation = translate(&stripe_customer)?;
        let theirs = match &translation {
            Translation::Customer {
                command: CustomerCommand::RecordDetails { metadata, .. },
                ..
            } => Some(metadata.clone()),
            _ => None,
        };
        let mut correct = |drift| {
            corrections.push(Correction {
                translation: translation.clone(),
                drift,
                object: stripe_customer.clone(),
            });
        };
        match (&view, theirs) {
            (Some(v), None) => {
                if !v.deleted {
                    differences.push(differ(
                        "customer",
                        customer,
                        "deleted",
                        Value::Bool(false),
                        Value::Bool(true),
                        Drift::DeletedAtStripe,
                    ));
                    correct(Drift::DeletedAtStripe);
                }
                // Its subscriptions ended with it: compared below like any others.
            }
            // A customer deleted before Subledger ever heard of it: nothing to learn.
            (None, None) => return Ok((differences, corrections)),
            (None, Some(_)) => {
                differences.push(differ(
                    "customer",
                    customer,
                    "exists",
                    Value::Bool(false),
                    Value::Bool(true),
                    Drift::MissedBySubledger,
                ));
                correct(Drift::MissedBySubledger);
            }
            (Some(v), Some(theirs)) => {
                if !v.metadata.iter().eq(theirs.iter()) {
                    let drift = changed(stripe_id);
                    differences.push(differ(
                        "customer",
                        customer,
                        "metadata",
                        json_of(&v.metadata),
                        json_of(&theirs),
                        drift,
                    ));
                    correct(drift);
                }
            }
        }

        // Subscriptions.
        let empty = BillingView::new(key.clone());
        let ours = view.as_ref().unwrap_or(&empty);
        let mut seen = BTreeSet::new();
        for object in listed {
            let translation = translate(&object)?;
            let Translation::Customer {
                command: CustomerCommand::RecordSubscription { subscription, .. },
                ..
            } = &translation
            else {
                continue;
            };
            seen.insert(subscription.id.clone());
            let id = subscription.id.as_str().to_owned();
            let drift = match ours.subscriptions.get(&subscription.id) {
                None => {
                    differences.push(differ(
                        "subscription",
                        &id,
                        "exists",
                        Value::Bool(false),
                        Value::Bool(true),
                        Drift::MissedBySubledger,
                    ));
                    Drift::MissedBySubledger
                }
                Some(known) => {
                    let fields = differing_fields(known, subscription);
                    if fields.is_empty() {
                        continue;
                    }
                    let drift = changed(&id);
                    for (field, a, b) in fields {
                        differences.push(differ("subscription", &id, &field, a, b, drift));
                    }
                    drift
                }
            };
            corrections.push(Correction {
                translation,
                drift,
                object,
            });
        }
        for id in ours.subscriptions.keys().filter(|id| !seen.contains(*id)) {
            // Nothing Stripe said can be recorded about it: reported, never invented.
            differences.push(differ(
                "subscription",
                id.as_str(),
                "exists",
                Value::Bool(true),
                Value::Bool(false),
                Drift::UnknownToStripe,
            ));
        }

        // Dunning: what Subledger counts as owed against what Stripe is collecting.
        for unpaid in ours.unpaid.values().flat_map(|invoices| invoices.values()) {
            let id = unpaid.invoice.as_str();
            let invoice = reader
                .retrieve("invoices", id)
                .await
                .map_err(stripe(format!("invoice `{id}`")))?;
            let status = invoice.get("status").and_then(Value::as_str).unwrap_or("?");
            if status != "open" {
                differences.push(differ(
                    "invoice",
                    id,
                    "status",
                    Value::from("open (unpaid)"),
                    Value::from(status),
                    Drift::Dunning,
                ));
                corrections.push(Correction {
                    translation: translate(&invoice)?,
                    drift: Drift::Dunning,
                    object: invoice,
                });
            }
        }
        let open = list_all(
            reader,
            "invoices",
            &[("customer", stripe_id), ("status", "open")],
        )
        .await?;
        for invoice in open {
            let translation = translate(&invoice)?;
            let Translation::Customer {
                command: CustomerCommand::RecordInvoicePaymentFailed { invoice: facts, .. },
                ..
            } = &translation
            else {
                continue;
            };
            let Some(subscription) = &facts.subscription_id else {
                continue;
            };
            // A pending update's invoice is no debt, known or not.
            if ours.pending_updates.contains(&facts.id) {
                continue;
            }
            let counted = ours
                .unpaid
                .get(subscription)
                .and_then(|failed| failed.get(&facts.id));
            let differs = counted.is_none_or(|known| known.attempt < facts.attempt_count);
            if differs {
                differences.push(differ(
                    "invoice",
                    facts.id.as_str(),
                    "attempt_count",
                    counted.map_or(Value::Null, |k| Value::from(k.attempt)),
                    Value::from(facts.attempt_count),
                    Drift::Dunning,
                ));
                corrections.push(Correction {
                    translation,
                    drift: Drift::Dunning,
                    object: invoice,
                });
            }
        }
        Ok((differences, corrections))
    }

    /// Appends one correction, attributed to the reconciler with its reason.
    async fn correct(
        &self,
        customer: &str,
        correction: Correction,
        run_id: &str,
    ) -> Result<(), ReconcileError> {
        let object_id = correction.object_id(customer);
        let metadata = EventMetadata {
            received_at: self.config.clock.now(),
            correlation_id: run_id.to_owned(),
            origin: Origin::Reconciliation {
                object_id: object_id.clone(),
                drift: correction.drift.as_str().to_owned(),
                object_json: correction.object.to_string(),
            },
            order_id: None,
        };
        self.record_fact(correction.translation, metadata)
            .await
            .map_err(|reason| ReconcileError::Record {
                what: format!("`{object_id}`"),
                reason,
            })
    }
}

/// The accounts `customers` (keys) belong to: always the platform's (`None`), and each
/// connected account named.
fn accounts_of(customers: &BTreeSet<String>) -> BTreeSet<Option<&str>> {
    std::iter::once(None)
        .chain(
            customers
                .iter()
                .map(|customer| customer.split_once(ACCOUNT_SEPARATOR).map(|(a, _)| a)),
        )
        .collect()
}

/// Every page of a list, its failure named after the list.
async fn list_all(
    reader: &StripeReader,
    path: &str,
    query: &[(&str, &str)],
) -> Result<Vec<Value>, ReconcileError> {
    reader
        .list_all(path, query)
        .await
        .map_err(stripe(format!("the {path} list")))
}

fn json_of<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// The fields of two snapshots of one subscription that differ, with both values.
fn differing_fields(
    ours: &SubscriptionSnapshot,
    theirs: &SubscriptionSnapshot,
) -> Vec<(String, Value, Value)> {
    let (a, b) = (json_of(ours), json_of(theirs));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return Vec::new();
    };
    a.iter()
        .filter(|(field, value)| b.get(*field) != Some(*value))
        .map(|(field, value)| {
            (
                field.clone(),
                value.clone(),
                b.get(field).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}
