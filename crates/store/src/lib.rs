//! Subledger's storage, on SQLite (embedded default) or PostgreSQL (production), same behaviour.
//!
//! - [`command_bus`]: cqrs-es frameworks on either backend behind one type.
//! - [`database`]: connecting, migrating, and the cqrs-es event repositories.
//! - [`inbox`]: the durable inbox of verified Stripe events and how workers claim them.
//! - [`event_log`]: the global, commit-ordered event log catch-up projectors read.
//! - [`projection`]: projector checkpoints and the read models saved with them.
//! - [`error`]: the one place driver errors are classified.

pub mod command_bus;
pub mod database;
pub mod error;
pub mod event_log;
pub mod inbox;
pub mod projection;
pub mod scratch;

pub use command_bus::CommandBus;
pub use database::{Backend, Database};
pub use error::StoreError;
pub use event_log::{Checkpoint, StoredEvent};
pub use inbox::{ClaimedEvent, InboxStats, InboxStatus, NewInboxEvent};
