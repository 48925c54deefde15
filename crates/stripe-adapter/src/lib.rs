//! The anti-corruption layer between Stripe and Subledger: the only crate that reads Stripe's JSON.
//!
//! - [`signature`]: verifies `Stripe-Signature` over the raw body (secret rotation, tolerance).
//! - [`envelope`]: the few event fields the inbox needs, read without trusting the rest.
//! - `fixtures` (feature `fixtures`): Stripe events built from Stripe's own object fixtures.
//! - [`translate`]: turns a stored Stripe event into a domain command, reading only the
//!   fields it needs and tolerating every API version's shape.

pub mod envelope;
#[cfg(feature = "fixtures")]
pub mod fixtures;
pub mod signature;
pub mod translate;

pub use envelope::{EnvelopeError, EventEnvelope};
pub use signature::{SignatureError, WebhookSecret, WebhookVerifier};
pub use translate::{translate, translate_fetched, Translation, TranslationError};
