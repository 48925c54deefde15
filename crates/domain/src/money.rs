//! Amounts in minor units. Never floating point.

use serde::{Deserialize, Serialize};

/// An amount in the currency's minor unit (cents for USD, yen for JPY), as Stripe reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MinorUnits(pub i64);

/// An amount with its ISO currency code, lower case as Stripe sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Money {
    pub amount: MinorUnits,
    pub currency: String,
}

impl Money {
    pub fn new(amount: i64, currency: impl Into<String>) -> Self {
        Self {
            amount: MinorUnits(amount),
            currency: currency.into(),
        }
    }
}
