//! The application façade every binary calls: accept a webhook, process the inbox, project
//! read models, answer entitlement queries. It owns the mapping from failures to outcomes.
//!
//! - [`Engine`]: the façade, wired from an [`EngineConfig`].
//! - [`ingest`]: verification and the group-committing inbox writer behind the webhook route.
//! - [`worker`]: claims inbox rows and runs the translated commands on the aggregates.
//! - [`projector`]: the catch-up projector that keeps billing views and the in-memory
//!   entitlement index current.
//! - [`explain`]: why a customer has or lacks a feature, with the events behind it.
//! - [`reconcile`]: compare with Stripe's live objects; heal by appending corrections.
//! - [`refetch`]: Stripe's API as the tie-breaker when events cannot order two snapshots.
//! - [`backfill`]: start on an existing account: Stripe's objects recorded as fetched facts.
//! - [`clock`]: the one place wall time is read, replaceable in tests.

pub mod backfill;
pub mod catalogs;
pub mod changes;
pub mod clock;
mod compact_answer;
mod config;
mod engine;
pub mod explain;
pub mod ingest;
pub mod notify;
pub mod projector;
mod read_time;
pub mod reconcile;
pub mod refetch;
pub mod worker;

pub use backfill::{
    BackfillError, BackfillOptions, BackfillPhase, BackfillProgress, BackfillSummary,
};
pub use compact_answer::CorruptAnswer;
pub use config::EngineConfig;
pub use engine::{
    Basis, DunningSpan, Engine, EngineError, NewHold, Readiness, ReadinessError, ReplaySummary,
    Shutdown, TimelineEntry, ViewDifference,
};
pub use ingest::{IngestError, Receipt};
pub use projector::{answer_digest, digest_hex, Census, CustomerEntitlements};
pub use reconcile::{Difference, Drift, ReconcileError, ReconcileOptions, ReconcileReport};
pub use refetch::StripeObjects;
pub use subledger_domain as domain;
pub use subledger_stripe::{WebhookSecret, WebhookVerifier};
pub use worker::WorkReport;
