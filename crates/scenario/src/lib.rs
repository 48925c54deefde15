//! Billing stories as files, played against Subledger.
//!
//! - [`format`]: the scenario file format, parsed with the line of every problem.
//! - [`runner`]: plays a scenario through the Stripe simulator into a fresh engine, checks
//!   each expectation, and reports step by step.
//! - [`live`]: plays the same files against Stripe's API (test mode, real test clocks) and a
//!   running Subledger that receives Stripe's webhooks.

pub mod format;
pub mod live;
pub mod runner;

pub use format::{parse_file, Scenario, ScenarioError};
pub use runner::{run, AtTheEnd, RunOptions, ScenarioReport};
