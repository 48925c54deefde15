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
/// What separates a connected account from the id of one of its objects in a key
/// (`acct_1/cus_1`). Stripe's ids never contain it, and every route that takes an id refuses
/// it, so a connected account's key can never be asked for in the platform's name.
pub const ACCOUNT_SEPARATOR: char = '/';

impl CustomerId {
    /// The key of customer `stripe_id`: the id itself for the platform's own customers, and
    /// `acct_…/cus_…` for a connected account's (Stripe's Connect docs: an event from a
    /// connected account carries its `account`; two accounts' customers are different people,
    /// whatever their ids).
    pub fn in_account(account: Option<&str>, stripe_id: &str) -> Self {
        Self(scoped(account, stripe_id))
    }

    /// The connected account this customer belongs to; `None` for the platform's own.
    pub fn account(&self) -> Option<&str> {
        self.0
            .split_once(ACCOUNT_SEPARATOR)
            .map(|(account, _)| account)
    }

    /// The id Stripe knows this customer by, within its account.
    pub fn stripe_id(&self) -> &str {
        self.0
            .split_once(ACCOUNT_SEPARATOR)
            .map_or(self.0.as_str(), |(_, id)| id)
    }
}

/// `id` within `account`: the key of a connected account's object (a customer, an order).
pub fn scoped(account: Option<&str>, id: &str) -> String {
    match account {
        Some(account) => format!("{account}{ACCOUNT_SEPARATOR}{id}"),
        None => id.to_owned(),
    }
}

/// Whether `id` looks like a Stripe account id (`acct_` and letters and digits), as every
/// `account` of an event and every account in a route must.
pub fn is_account_id(id: &str) -> bool {
    id.strip_prefix("acct_")
        .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connected_accounts_customer_is_keyed_by_account_and_id() {
        let platform = CustomerId::in_account(None, "cus_1");
        let connected = CustomerId::in_account(Some("acct_9"), "cus_1");
        assert_eq!(platform.as_str(), "cus_1");
        assert_eq!(connected.as_str(), "acct_9/cus_1");
        assert_ne!(platform, connected);
        assert_eq!((platform.account(), platform.stripe_id()), (None, "cus_1"));
        assert_eq!(
            (connected.account(), connected.stripe_id()),
            (Some("acct_9"), "cus_1")
        );
    }

    #[test]
    fn account_ids_are_checked() {
        assert!(is_account_id("acct_1Nv0FGQ9RKHgCVdK"));
        for bad in ["", "acct_", "cus_1", "acct_1/cus_2", "acct_1 ", "acct_é"] {
            assert!(!is_account_id(bad), "{bad:?}");
        }
    }
}
