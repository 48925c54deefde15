//! Identifier newtypes, so a subscription id can never be passed where a customer id belongs.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }
    };
}

id_newtype!(
    /// A Stripe customer id (`cus_…`).
    CustomerId
);
id_newtype!(
    /// A Stripe subscription id (`sub_…`).
    SubscriptionId
);
id_newtype!(
    /// A Stripe invoice id (`in_…`).
    InvoiceId
);
id_newtype!(
    /// A Stripe PaymentIntent id (`pi_…`).
    PaymentIntentId
);
id_newtype!(
    /// A Stripe price id (`price_…`).
    PriceId
);
id_newtype!(
    /// A Stripe event id (`evt_…`).
    StripeEventId
);
