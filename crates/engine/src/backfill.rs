//! Backfill: start on a Stripe account that already has customers.
//!
//! Every customer, subscription, schedule, unpaid invoice, order payment and Stripe
//! entitlement list the read key can see is recorded as a fact with `fetched` provenance at
//! the moment it was read (in Stripe's time: see [`crate::read_time`]), the same kind of fact
//! as a tie-settling fetch. A webhook that
//! arrives later is judged against it by the aggregates' one judge: an older snapshot has no
//! effect, a newer one is applied. Then the events Stripe could not deliver in the last 30
//! days (`GET /v1/events?delivery_success=false`) go through the normal inbox, deduplicated
//! by event id.
//!
//! Each list keeps a cursor in the store after every page, so an interrupted run continues
//! where it stopped; a finished run forgets its cursors, and a re-run records nothing twice
//! (the aggregates judge an identical snapshot no news). Every fact carries the run's id as
//! its correlation id and `actor: backfill`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use subledger_domain::ids::CustomerId;
use subledger_store::{BackfillCursor, EventMetadata, Origin, StoreError};
use subledger_stripe::{translate_fetched, Translation};
use subledger_stripe_client::{ApiError, StripeReader};

use crate::engine::Engine;
use crate::read_time::ReadTime;

/// What to backfill.
#[derive(Debug, Clone, Default)]
pub struct BackfillOptions {
    /// Only these customers (default: every customer the key can list).
    pub customers: Vec<String>,
    /// Only objects created at or after this moment.
    pub since: Option<DateTime<Utc>>,
    /// The Stripe Connect connected account to read (`Stripe-Account`), whose customers are
    /// kept as `acct_…/cus_…`; `None`: the key's own account.
    pub account: Option<String>,
}

/// The lists a backfill reads, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackfillPhase {
    Customers,
    Subscriptions,
    Schedules,
    OpenInvoices,
    UncollectibleInvoices,
    Payments,
    StripeEntitlements,
    UndeliveredEvents,
}

impl BackfillPhase {
    pub const ALL: [Self; 8] = [
        Self::Customers,
        Self::Subscriptions,
        Self::Schedules,
        Self::OpenInvoices,
        Self::UncollectibleInvoices,
        Self::Payments,
        Self::StripeEntitlements,
        Self::UndeliveredEvents,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Customers => "customers",
            Self::Subscriptions => "subscriptions",
            Self::Schedules => "subscription schedules",
            Self::OpenInvoices => "open invoices",
            Self::UncollectibleInvoices => "uncollectible invoices",
            Self::Payments => "order payments",
            Self::StripeEntitlements => "Stripe entitlements",
            Self::UndeliveredEvents => "undelivered events",
        }
    }

    /// The list's path and filters; `None` for the per-customer entitlement lists.
    fn list(self) -> Option<(&'static str, &'static [(&'static str, &'static str)])> {
        match self {
            Self::Customers => Some(("customers", &[])),
            // Canceled ones too, and each one's latest invoice in the same answer.
            Self::Subscriptions => Some((
                "subscriptions",
                &[("status", "all"), ("expand[]", "data.latest_invoice")],
            )),
            Self::Schedules => Some(("subscription_schedules", &[])),
            Self::OpenInvoices => Some(("invoices", &[("status", "open")])),
            // Written off: a failure among the undelivered events read last must not make
            // one of these count as owed again.
            Self::UncollectibleInvoices => Some(("invoices", &[("status", "uncollectible")])),
            Self::Payments => Some(("payment_intents", &[])),
            Self::StripeEntitlements => None,
            Self::UndeliveredEvents => Some(("events", &[("delivery_success", "false")])),
        }
    }
}

/// Where a run stands, after each page.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillProgress {
    pub phase: BackfillPhase,
    /// Objects read in this run, every phase.
    pub objects_read: u64,
    /// Requests sent to Stripe in this run, retries included.
    pub requests: u64,
    /// Of the current phase: how far, and of how many when that is known.
    pub phase_done: u64,
    pub phase_total: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillSummary {
    pub run_id: String,
    /// Whether it continued an interrupted run.
    pub resumed: bool,
    pub objects_read: u64,
    /// Domain events the run appended (a fact already known appends none).
    pub facts_recorded: i64,
    /// Undelivered events newly stored in the inbox (and applied).
    pub events_enqueued: u64,
    pub requests: u64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("reading {what} from Stripe failed: {source}")]
    Stripe {
        what: String,
        #[source]
        source: ApiError,
    },
    #[error("customer `{0}` is not known to Stripe (or not visible to this key)")]
    UnknownCustomer(String),
    #[error(
        "the key is a {key} key but this store holds {store} events: use a key of the same mode"
    )]
    WrongMode {
        key: &'static str,
        store: &'static str,
    },
    #[error("{what} cannot be read: {reason}")]
    Unreadable { what: String, reason: String },
    #[error("recording {what} failed: {reason}")]
    Record { what: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("applying the undelivered events failed: {0}")]
    Apply(String),
}

/// One run's bookkeeping.
struct Run<'a> {
    engine: &'a Engine,
    reader: &'a StripeReader,
    /// The connected account read; `None`: the key's own.
    account: Option<&'a str>,
    run_id: String,
    started_requests: u64,
    objects_read: u64,
    events_enqueued: u64,
    read_time: ReadTime,
    on_progress: &'a mut (dyn FnMut(&BackfillProgress) + Send + Sync),
}

impl Engine {
    /// Reads the account through `reader` and records what it finds; see the module docs.
    /// `on_progress` is called after every page.
    pub async fn backfill(
        &self,
        reader: &StripeReader,
        options: &BackfillOptions,
        on_progress: &mut (dyn FnMut(&BackfillProgress) + Send + Sync),
    ) -> Result<BackfillSummary, BackfillError> {
        let started = Instant::now();
        self.refuse_other_mode(reader).await?;
        let account = options.account.as_deref();
        let reader = &reader
            .in_account(account)
            .map_err(|source| BackfillError::Stripe {
                what: format!("account `{}`", account.unwrap_or_default()),
                source,
            })?;
        let prefix = scope_prefix(options);
        let existing = self.db.backfill_cursors(&prefix).await?;
        let resumed = !existing.is_empty();
        let run_id = existing.first().map_or_else(
            || format!("backfill_{}", uuid::Uuid::new_v4().simple()),
            |c| c.run_id.clone(),
        );
        let mut run = Run {
            engine: self,
            reader,
            account,
            run_id,
            started_requests: reader.requests_made(),
            objects_read: 0,
            events_enqueued: 0,
            read_time: ReadTime::default(),
            on_progress,
        };
        let customers: Vec<Option<&str>> = if options.customers.is_empty() {
            vec![None]
        } else {
            options.customers.iter().map(|c| Some(c.as_str())).collect()
        };
        for phase in BackfillPhase::ALL {
            for customer in &customers {
                let scope = format!("{prefix}{}:{}", phase.name(), customer.unwrap_or("*"));
                run.phase(phase, &scope, *customer, options).await?;
            }
        }
        // The undelivered events are in the inbox: apply them (and anything else due) now,
        // so the account answers when the command returns.
        self.drain()
            .await
            .map_err(|e| BackfillError::Apply(e.to_string()))?;
        self.db.clear_backfill_cursors(&prefix).await?;
        let facts_recorded = self.db.count_events_of_correlation(&run.run_id).await?;
        Ok(BackfillSummary {
            run_id: run.run_id.clone(),
            resumed,
            objects_read: run.objects_read,
            facts_recorded,
            events_enqueued: run.events_enqueued,
            requests: run.requests(),
            elapsed: started.elapsed(),
        })
    }

    /// A test-mode key must not fill a store that has received live events, nor the reverse.
    async fn refuse_other_mode(&self, reader: &StripeReader) -> Result<(), BackfillError> {
        let key_is_live = !reader.is_test_mode();
        if self.db.inbox_has_mode(!key_is_live).await? {
            let mode = |live: bool| if live { "live-mode" } else { "test-mode" };
            return Err(BackfillError::WrongMode {
                key: mode(key_is_live),
                store: mode(!key_is_live),
            });
        }
        Ok(())
    }
}

/// Cursors of runs over different accounts or customer sets never mix.
fn scope_prefix(options: &BackfillOptions) -> String {
    let account = options
        .account
        .as_deref()
        .map_or_else(String::new, |account| format!("{account}:"));
    if options.customers.is_empty() {
        format!("{account}account/")
    } else {
        let mut ids = options.customers.clone();
        ids.sort();
        ids.dedup();
        format!("{account}customers:{}/", ids.join(","))
    }
}

impl Run<'_> {
    fn requests(&self) -> u64 {
        self.reader
            .requests_made()
            .saturating_sub(self.started_requests)
    }

    fn report(&mut self, phase: BackfillPhase, phase_done: u64, phase_total: Option<u64>) {
        let progress = BackfillProgress {
            phase,
            objects_read: self.objects_read,
            requests: self.requests(),
            phase_done,
            phase_total,
        };
        (self.on_progress)(&progress);
    }

    fn stripe_error(what: impl Into<String>) -> impl FnOnce(ApiError) -> BackfillError {
        let what = what.into();
        move |source| BackfillError::Stripe { what, source }
    }

    /// One list (or, for one customer, its part of it), page by page from its cursor.
    async fn phase(
        &mut self,
        phase: BackfillPhase,
        scope: &str,
        customer: Option<&str>,
        options: &BackfillOptions,
    ) -> Result<(), BackfillError> {
        let mut cursor = self
            .engine
            .db
            .backfill_cursors(scope)
            .await?
            .into_iter()
            .find(|c| c.scope == scope)
            .unwrap_or_else(|| BackfillCursor {
                scope: scope.to_owned(),
                run_id: self.run_id.clone(),
                starting_after: None,
                done: false,
            });
        if cursor.done {
            return Ok(());
        }
        match (phase, customer) {
            (BackfillPhase::Customers, Some(id)) => self.one_customer(id).await?,
            (BackfillPhase::StripeEntitlements, _) => {
                return self.entitlements(customer, cursor).await
            }
            _ => {
                let Some((path, filters)) = phase.list() else {
                    return Ok(());
                };
                // Stripe keeps 30 days of events: its list is the window, no filter needed
                // (and test-clock events carry frozen time, which a wall-clock window would
                // cut off).
                let since = options.since;
                let since = since.map(|t| t.timestamp().to_string());
                let mut query: Vec<(&str, &str)> = filters.to_vec();
                if let Some(since) = &since {
                    query.push(("created[gte]", since));
                }
                if let Some(customer) = customer {
                    if phase != BackfillPhase::UndeliveredEvents {
                        query.push(("customer", customer));
                    }
                }
                let mut done_here = 0;
                loop {
                    let page = self
                        .reader
                        .list_page(path, &query, cursor.starting_after.as_deref())
                        .await
                        .map_err(Self::stripe_error(format!("the {} list", phase.name())))?;
                    for object in &page.data {
                        self.objects_read += 1;
                        done_here += 1;
                        if phase == BackfillPhase::UndeliveredEvents {
                            if customer.is_none_or(|c| event_concerns(object, c)) {
                                self.enqueue_event(object).await?;
                            }
                        } else {
                            self.record_object(object).await?;
                        }
                    }
                    cursor.starting_after = page.last_id().map(str::to_owned);
                    cursor.done = !page.has_more || page.data.is_empty();
                    self.save(&cursor).await?;
                    self.report(phase, done_here, None);
                    if cursor.done {
                        return Ok(());
                    }
                }
            }
        }
        cursor.done = true;
        self.save(&cursor).await
    }

    async fn save(&self, cursor: &BackfillCursor) -> Result<(), BackfillError> {
        self.engine
            .db
            .save_backfill_cursor(cursor, self.engine.now_ms())
            .await?;
        Ok(())
    }

    async fn one_customer(&mut self, id: &str) -> Result<(), BackfillError> {
        let object = match self.reader.retrieve("customers", id).await {
            Err(ApiError::NotFound(_)) => {
                return Err(BackfillError::UnknownCustomer(id.to_owned()))
            }
            other => other.map_err(Self::stripe_error(format!("customer `{id}`")))?,
        };
        self.objects_read += 1;
        self.record_object(&object).await?;
        self.report(BackfillPhase::Customers, 1, Some(1));
        Ok(())
    }

    /// Stripe lists active entitlements per customer only: one list for each customer
    /// Subledger knows (after the lists above, that is every customer the key could see).
    async fn entitlements(
        &mut self,
        customer: Option<&str>,
        mut cursor: BackfillCursor,
    ) -> Result<(), BackfillError> {
        const CHUNK: i64 = 100;
        let phase = BackfillPhase::StripeEntitlements;
        let mut done_here = 0;
        // One request per customer: the longest phase, and the one whose size is known.
        let total = match customer {
            Some(_) => Some(1),
            None => u64::try_from(self.engine.db.count_customers().await?).ok(),
        };
        loop {
            let ids = match customer {
                Some(id) if cursor.starting_after.is_none() => {
                    vec![CustomerId::in_account(self.account, id).as_str().to_owned()]
                }
                Some(_) => Vec::new(),
                None => {
                    self.engine
                        .db
                        .customer_ids_after(cursor.starting_after.as_deref(), CHUNK)
                        .await?
                }
            };
            if ids.is_empty() {
                cursor.done = true;
                return self.save(&cursor).await;
            }
            for key in &ids {
                // Each account's customers are read in their account, by their own run.
                let key = CustomerId::new(key.as_str());
                if key.account() != self.account {
                    continue;
                }
                let id = key.stripe_id();
                let list = match self.reader_active_entitlements(id).await {
                    // A customer deleted at Stripe has none.
                    Err(BackfillError::Stripe {
                        source: ApiError::NotFound(_),
                        ..
                    }) => None,
                    other => Some(other?),
                };
                self.objects_read += 1;
                done_here += 1;
                // An empty list says nothing a webhook-fed store would not also lack.
                let has_any = list
                    .as_ref()
                    .and_then(|l| l.get("data"))
                    .and_then(Value::as_array)
                    .is_some_and(|d| !d.is_empty());
                if let (Some(list), true) = (list, has_any) {
                    let now = self.engine.config.clock.now();
                    let read_at = self
                        .read_time
                        .of(self.reader, &list, Some(id), now)
                        .await
                        .map_err(Self::stripe_error(format!("the test clock of `{id}`")))?;
                    let translation = translate_fetched(&list, read_at, &key).map_err(|e| {
                        BackfillError::Unreadable {
                            what: format!("the active entitlements of `{id}`"),
                            reason: e.to_string(),
                        }
                    })?;
                    self.record(translation, id).await?;
                }
                self.report(phase, done_here, total);
            }
            cursor.starting_after = ids.last().cloned();
            self.save(&cursor).await?;
            if customer.is_some() {
                cursor.done = true;
                return self.save(&cursor).await;
            }
        }
    }

    /// Every page of one customer's active entitlements, as one list object.
    async fn reader_active_entitlements(&self, customer: &str) -> Result<Value, BackfillError> {
        let entries = self
            .reader
            .list_all(
                "entitlements/active_entitlements",
                &[("customer", customer)],
            )
            .await
            .map_err(Self::stripe_error(format!(
                "the active entitlements of `{customer}`"
            )))?;
        Ok(serde_json::json!({ "object": "list", "data": entries, "has_more": false }))
    }

    /// A listed object, and for a subscription its expanded latest invoice, as facts.
    async fn record_object(&mut self, object: &Value) -> Result<(), BackfillError> {
        let id = object
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let now = self.engine.config.clock.now();
        let read_at = self
            .read_time
            .of(self.reader, object, None, now)
            .await
            .map_err(Self::stripe_error(format!("the test clock of `{id}`")))?;
        // PaymentIntents matter only when they pay for an order.
        if object.get("object").and_then(Value::as_str) == Some("payment_intent")
            && object
                .get("metadata")
                .and_then(|m| m.get("order_id"))
                .and_then(Value::as_str)
                .is_none()
        {
            return Ok(());
        }
        let unreadable = |e: subledger_stripe::TranslationError| BackfillError::Unreadable {
            what: format!("`{id}`"),
            reason: e.to_string(),
        };
        // The customer is only needed for entitlement lists, which are not listed here; its
        // account keys every customer the object names.
        let nobody = CustomerId::in_account(self.account, "");
        let translation = translate_fetched(object, read_at, &nobody).map_err(unreadable)?;
        self.record(translation, &id).await?;
        if let Some(invoice) = object.get("latest_invoice").filter(|i| i.is_object()) {
            let invoice_id = invoice.get("id").and_then(Value::as_str).unwrap_or("?");
            let translation = translate_fetched(invoice, read_at, &nobody).map_err(|e| {
                BackfillError::Unreadable {
                    what: format!("`{invoice_id}`"),
                    reason: e.to_string(),
                }
            })?;
            self.record(translation, invoice_id).await?;
        }
        Ok(())
    }

    /// Runs the fact's command, attributed to this run and the object it was read from.
    async fn record(&self, translation: Translation, object_id: &str) -> Result<(), BackfillError> {
        let now = self.engine.config.clock.now();
        let metadata = EventMetadata {
            received_at: now,
            correlation_id: self.run_id.clone(),
            origin: Origin::Backfill {
                object_id: object_id.to_owned(),
            },
            order_id: None,
        };
        self.engine
            .record_fact(translation, metadata)
            .await
            .map_err(|reason| BackfillError::Record {
                what: format!("`{object_id}`"),
                reason,
            })
    }

    /// An event Stripe could not deliver, stored in the inbox as if it had arrived now: read
    /// from Stripe's API with our key, it needs no signature. A known id is a duplicate.
    async fn enqueue_event(&mut self, event: &Value) -> Result<(), BackfillError> {
        // A connected account's event says so in `account` (Stripe's docs, "Connect
        // webhooks"); whether Stripe also sets it on events listed *in* the account is not
        // documented, so one without it is given the account it was listed in.
        let mut event = event.clone();
        if let (Some(account), None | Some(Value::Null)) = (self.account, event.get("account")) {
            event["account"] = Value::from(account);
        }
        let body = serde_json::to_vec(&event).map_err(|e| BackfillError::Unreadable {
            what: "an event".to_owned(),
            reason: e.to_string(),
        })?;
        let row =
            crate::ingest::inbox_row(&body, self.engine.now_ms(), &self.run_id).map_err(|e| {
                BackfillError::Unreadable {
                    what: "an event from /v1/events".to_owned(),
                    reason: e.to_string(),
                }
            })?;
        let stored = self.engine.db.insert_inbox_events(&[row]).await?;
        if stored.first() == Some(&true) {
            self.events_enqueued += 1;
        }
        Ok(())
    }
}

/// Whether an event is about `customer` (the object is the customer, or names it).
fn event_concerns(event: &Value, customer: &str) -> bool {
    let object = event.get("data").and_then(|d| d.get("object"));
    let named = |field: &str| {
        object
            .and_then(|o| o.get(field))
            .and_then(|v| v.as_str().or_else(|| v.get("id").and_then(Value::as_str)))
            == Some(customer)
    };
    named("customer")
        || (object.and_then(|o| o.get("object")).and_then(Value::as_str) == Some("customer")
            && named("id"))
}
