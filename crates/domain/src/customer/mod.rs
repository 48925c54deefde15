//! The `Customer` aggregate: one Stripe customer's billing account.
//!
//! A customer's subscriptions and invoices live in one aggregate because entitlements are a
//! per-customer answer: one consistency boundary, one ordered stream per customer.

mod aggregate;
mod commands;
mod events;

pub use aggregate::{Customer, CustomerError, TiedObject};
pub use commands::CustomerCommand;
pub use events::CustomerEvent;
