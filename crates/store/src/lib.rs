//! Subledger's storage, on SQLite (embedded default) or PostgreSQL (production), same behaviour.
//!
//! - [`backfill`]: backfill cursors, so an interrupted run continues where it stopped.
//! - [`command_bus`]: cqrs-es frameworks on either backend behind one type.
//! - [`database`]: connecting, migrating, and the cqrs-es event repositories.
//! - [`inbox`]: the durable inbox of verified Stripe events and how workers claim them.
//! - [`event_log`]: the global, commit-ordered event log catch-up projectors read.
//! - [`projection`]: projector checkpoints and the read models saved with them.
//! - [`error`]: the one place driver errors are classified.

/// Runs the same sqlx code on whichever pool a [`Database`] holds. The body is compiled once
/// per backend, so one query text serves both wherever their SQL agrees (both accept `$n`
/// placeholders); code whose SQL differs matches on the backend itself.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::database::Database::Sqlite($pool) => $body,
            $crate::database::Database::Postgres($pool) => $body,
        }
    };
}

pub mod backfill;
pub mod catalogs;
pub mod changes;
pub mod command_bus;
pub mod database;
pub mod error;
pub mod event_log;
pub mod inbox;
pub mod metadata;
pub mod notifications;
pub mod projection;
pub mod reconciliation;
pub mod scratch;

pub use backfill::BackfillCursor;
pub use changes::{ChangeRow, FedAnswer, FeedCheckpoint, NewChange};
pub use command_bus::CommandBus;
pub use command_bus::UnitOfWork;
pub use database::{Backend, Database};
pub use error::StoreError;
pub use event_log::{Checkpoint, StoredEvent};
pub use inbox::{
    ClaimedEvent, FinishedRow, InboxFilter, InboxRow, InboxState, InboxStats, InboxStatus,
    NewInboxEvent, PendingInbox, WorkCommit,
};
pub use metadata::{EventMetadata, Origin};
pub use projection::{QuarantinedEvent, SavedViews, ViewRow};
pub use reconciliation::ReconciliationRun;
