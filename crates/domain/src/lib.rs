//! Subledger's billing model.
//!
//! Everything here is pure: no IO and no clock reads. Time and outside facts arrive inside
//! commands, so replaying the same commands always yields the same domain events.
//!
//! - [`ids`], [`money`]: identifier and amount newtypes.
//! - [`billing`]: the Stripe facts the aggregates record (subscription snapshots, invoices).
//! - [`customer`]: the `Customer` aggregate, the consistency boundary for a billing account.
//! - [`payment`]: the `Payment` aggregate, one Stripe PaymentIntent.
//! - [`catalog`]: the plan catalog (prices to plans, plans to features) and its YAML format.
//! - [`dunning`]: where a subscription stands when renewal payments fail.
//! - [`schema`]: the stored shape of events, its versions and the upcasters between them.
//! - [`entitlements`]: what a customer may use, derived from their subscriptions and the catalog.
//! - [`grants`]: features operators give one customer beyond the plans, and how they combine.
//! - [`small_map`]: the compact ordered map a customer's view is made of.

pub mod billing;
pub mod catalog;
pub mod customer;
pub mod dunning;
pub mod entitlements;
pub mod grants;
pub mod ids;
pub mod money;
pub mod payment;
pub mod schema;
pub mod small_map;
