//! Operators' grants: a feature given to one customer beyond what their plans give (sales
//! turning on SSO before a contract is signed, support raising a limit for a week after an
//! outage).
//!
//! How a grant combines with the plans, holds and dunning (the README's "Grants" section says
//! the same):
//!
//! 1. The plans in effect give each feature its value, as without grants (holds, dunning and
//!    disputes take a subscription's plan away; the default plan stands in).
//! 2. A `set` grant replaces that value: `enabled` for a boolean feature, `limit` for a metered
//!    one (`enabled: false` or `limit: 0` takes the feature away). It is an explicit decision,
//!    so it stands through holds, dunning and disputes; only a customer-wide hold placed with
//!    `covers_grants` takes it away too. Of two `set` grants of one feature, the one given
//!    last wins (the later `granted_at`, then the larger id).
//! 3. An `add` grant raises a metered feature's limit on top of step 2's value.
//! 4. A grant scoped to a subscription ends with it (canceled, expired, or gone); while that
//!    subscription grants nothing (a hold, dunning, a dispute), its `add` grants pause, since
//!    they add to what it gives, and its `set` grants stand as in step 2.
//! 5. A grant counts from `starts_at` (default: when it was given) until `expires_at`, each
//!    of which changes the answer when it comes, with no event. A deleted customer has none.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::SubscriptionId;

/// What a grant gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GrantValue {
    /// A boolean feature on or off.
    Enabled(bool),
    /// A metered feature's limit (`set`), or how much it rises (`add`).
    Limit(u64),
}

/// How a grant meets the plans' value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum GrantMode {
    /// Replaces the value the plans give.
    Set,
    /// Raises a limit on top of it.
    Add,
}

/// What an operator asked for. The same terms under the same grant id are the same grant (a
/// retried request); other terms under it are a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GrantTerms {
    pub feature: String,
    pub value: GrantValue,
    pub mode: GrantMode,
    /// Only while this subscription lasts; the whole customer's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription: Option<SubscriptionId>,
    /// From when (default: when it was given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<DateTime<Utc>>,
    /// Until when (default: until revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    pub reason: String,
}

/// A grant as recorded on the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CustomerGrant {
    pub id: String,
    #[serde(flatten)]
    pub terms: GrantTerms,
    /// Who gave it: the name the operator gave, else the admin token's fingerprint.
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
}

impl CustomerGrant {
    /// When it starts counting.
    pub fn starts(&self) -> DateTime<Utc> {
        self.terms.starts_at.unwrap_or(self.granted_at)
    }

    /// Whether `at` is within its window.
    pub fn in_window(&self, at: DateTime<Utc>) -> bool {
        self.starts() <= at && self.terms.expires_at.is_none_or(|end| at < end)
    }

    /// The next moment after `at` at which it starts or ends.
    pub fn next_edge(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        [Some(self.starts()), self.terms.expires_at]
            .into_iter()
            .flatten()
            .filter(|edge| *edge > at)
            .min()
    }
}

/// Why a grant cannot be given as asked: the feature, the value and the window must fit the
/// catalog and each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantInvalid {
    #[error("the catalog has no feature `{0}`")]
    UnknownFeature(String),
    #[error("`{0}` is a metered feature: give it a `limit`, not `enabled`")]
    NeedsLimit(String),
    #[error("`{0}` is a boolean feature: give it `enabled`, not a `limit`")]
    NeedsEnabled(String),
    #[error("only a metered feature's limit can be added to; `{0}` is a boolean feature")]
    AddToBoolean(String),
    #[error("`expires_at` must come after `starts_at`")]
    EndsBeforeStart,
}

impl GrantTerms {
    /// Checks the terms against what the catalog says of the feature: `metered` when some plan
    /// gives it a limit, `known` when the catalog names it at all.
    pub fn check(&self, known: bool, metered: bool) -> Result<(), GrantInvalid> {
        let feature = || self.feature.clone();
        if !known {
            return Err(GrantInvalid::UnknownFeature(feature()));
        }
        match (self.value, metered) {
            (GrantValue::Enabled(_), true) => return Err(GrantInvalid::NeedsLimit(feature())),
            (GrantValue::Limit(_), false) if self.mode == GrantMode::Add => {
                return Err(GrantInvalid::AddToBoolean(feature()))
            }
            (GrantValue::Limit(_), false) => return Err(GrantInvalid::NeedsEnabled(feature())),
            _ => {}
        }
        if let (Some(start), Some(end)) = (self.starts_at, self.expires_at) {
            if end <= start {
                return Err(GrantInvalid::EndsBeforeStart);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn grant(starts_at: Option<i64>, expires_at: Option<i64>) -> CustomerGrant {
        let t = |s: i64| Utc.timestamp_opt(s, 0).single().unwrap();
        CustomerGrant {
            id: "grant_1".to_owned(),
            terms: GrantTerms {
                feature: "seats".to_owned(),
                value: GrantValue::Limit(5),
                mode: GrantMode::Add,
                subscription: None,
                starts_at: starts_at.map(t),
                expires_at: expires_at.map(t),
                reason: "outage".to_owned(),
            },
            granted_by: "ops".to_owned(),
            granted_at: t(100),
        }
    }

    #[test]
    fn a_grant_counts_from_its_start_or_when_given_until_it_expires() {
        let t = |s: i64| Utc.timestamp_opt(s, 0).single().unwrap();
        let given = grant(None, Some(200));
        assert!(!given.in_window(t(99)));
        assert!(given.in_window(t(100)));
        assert!(!given.in_window(t(200)));
        assert_eq!(given.next_edge(t(50)), Some(t(100)));
        assert_eq!(given.next_edge(t(100)), Some(t(200)));
        assert_eq!(given.next_edge(t(200)), None);
        let later = grant(Some(150), None);
        assert!(!later.in_window(t(120)) && later.in_window(t(150)));
    }

    #[test]
    fn terms_must_fit_the_feature_and_each_other() {
        let mut terms = grant(Some(10), Some(20)).terms;
        assert_eq!(terms.check(true, true), Ok(()));
        assert_eq!(
            terms.check(false, true),
            Err(GrantInvalid::UnknownFeature("seats".to_owned()))
        );
        assert_eq!(
            terms.check(true, false),
            Err(GrantInvalid::AddToBoolean("seats".to_owned()))
        );
        terms.mode = GrantMode::Set;
        assert_eq!(
            terms.check(true, false),
            Err(GrantInvalid::NeedsEnabled("seats".to_owned()))
        );
        terms.value = GrantValue::Enabled(true);
        assert_eq!(
            terms.check(true, true),
            Err(GrantInvalid::NeedsLimit("seats".to_owned()))
        );
        assert_eq!(terms.check(true, false), Ok(()));
        terms.expires_at = terms.starts_at;
        assert_eq!(terms.check(true, false), Err(GrantInvalid::EndsBeforeStart));
    }
}
