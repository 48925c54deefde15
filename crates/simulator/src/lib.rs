//! A deterministic Stripe Billing simulator driven by a test clock.
//!
//! [`Simulator`] models customers, prices, payment methods that behave like Stripe's test
//! cards, subscriptions, invoices, payment intents, charges and disputes. Every operation and
//! every clock advance emits the events Stripe emits, in Stripe's types and order, with
//! `data.object` built from Stripe's own object fixtures and `previous_attributes` on updates.
//! Nothing here reads the wall clock or a random source: the same calls give the same events.
//!
//! - [`api`]: the REST API subset Subledger calls, for async-stripe and `simulator serve`.
//! - [`delivery`]: signed webhook delivery, in order or disordered on purpose.
//! - [`model`]: the simulated objects.
//! - [`simulator`]: the account, with one module of operations per Stripe area (catalog,
//!   customers, subscriptions, schedules, invoicing and retries, payments and disputes,
//!   entitlements, the test clock).
//! - [`render`]: objects as Stripe's JSON.
//! - [`rng`]: the seeded generator delivery modes use.

pub mod api;
pub mod delivery;
pub mod model;
pub mod render;
pub mod rng;
pub mod simulator;

pub use model::{Card, InvoiceStatus, RetryPolicy, SubscriptionStatus, WhenRetriesRunOut};
pub use simulator::{SimError, Simulator, SubscribeOptions};
