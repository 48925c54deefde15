//! Prepared answers kept small: the entitlements JSON a server holds for every customer is
//! stored LZ4-compressed against a dictionary of typical answers made from the catalog.
//!
//! A server keeps one prepared answer per customer, and most of an answer is the same from
//! customer to customer: the field names, the plan's features, `"dunning":{"state":"ok",…}`.
//! Only the ids and the dates are the customer's own. Compressed against answers that already
//! hold the rest, a 640-byte answer keeps little more than those (about a sixth of its size),
//! and a request expands it again in a fraction of a microsecond (LZ4 is made for that:
//! decoding is copying). The dictionary is made once per engine from its catalog, so it never
//! changes under an answer compressed with it.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use subledger_domain::billing::{SubscriptionItem, SubscriptionSnapshot, SubscriptionStatus};
use subledger_domain::catalog::Catalog;
use subledger_domain::dunning::{Dunning, DunningState};
use subledger_domain::entitlements::{BillingView, Entitlements};
use subledger_domain::ids::{CustomerId, PriceId, SubscriptionId};

/// A prepared answer that cannot be expanded: a defect of this process, never of input.
#[derive(Debug, thiserror::Error)]
#[error("a prepared entitlements answer cannot be expanded: {0}")]
pub struct CorruptAnswer(#[from] lz4_flex::block::DecompressError);

/// Typical answers of one catalog, for [`CompactJson`] to refer to.
#[derive(Debug)]
pub(crate) struct AnswerDictionary {
    bytes: Box<[u8]>,
}

/// One answer, compressed against an [`AnswerDictionary`] (its size prepended).
#[derive(Debug)]
pub(crate) struct CompactJson {
    bytes: Box<[u8]>,
    dictionary: Arc<AnswerDictionary>,
}

impl AnswerDictionary {
    /// The answers a customer of each plan would get: active, cancelling at the period end,
    /// and in dunning; and the default plan's answer with no subscription. Built through
    /// [`Entitlements::resolve`] itself, so the dictionary has the answers' real shape.
    pub(crate) fn for_catalog(catalog: &Catalog) -> Arc<Self> {
        let at = Utc
            .timestamp_opt(1_767_225_600, 0)
            .single()
            .unwrap_or_default();
        let mut bytes = Vec::new();
        let mut add = |entitlements: &Entitlements| {
            // Serializing plain data into memory does not fail; an answer missing from the
            // dictionary would only compress less.
            if let Ok(json) = serde_json::to_vec(entitlements) {
                bytes.extend_from_slice(&json);
            }
        };
        for plan in catalog.plans() {
            let Some(price) = plan.prices.first() else {
                continue;
            };
            for cancelling in [false, true] {
                let view = sample_view(price, cancelling, at);
                let mut answer = Entitlements::resolve(&view, catalog, at);
                add(&answer);
                if !cancelling {
                    let dunning = Dunning {
                        state: DunningState::PastDue,
                        attempt: 1,
                        next_attempt_at: Some(at),
                        grace_ends_at: Some(at),
                        since: Some(at),
                    };
                    for subscription in &mut answer.subscriptions {
                        subscription.dunning = dunning.clone();
                    }
                    answer.dunning = dunning;
                    add(&answer);
                }
            }
        }
        let no_subscription = BillingView::new(CustomerId::new("cus_"));
        add(&Entitlements::resolve(&no_subscription, catalog, at));
        Arc::new(Self {
            bytes: bytes.into_boxed_slice(),
        })
    }

    pub(crate) fn compress(self: &Arc<Self>, json: &[u8]) -> CompactJson {
        CompactJson {
            bytes: lz4_flex::block::compress_prepend_size_with_dict(json, &self.bytes)
                .into_boxed_slice(),
            dictionary: Arc::clone(self),
        }
    }
}

impl CompactJson {
    /// The answer as it was prepared.
    pub(crate) fn expand(&self) -> Result<Bytes, CorruptAnswer> {
        let json = lz4_flex::block::decompress_size_prepended_with_dict(
            &self.bytes,
            &self.dictionary.bytes,
        )?;
        Ok(Bytes::from(json))
    }

    /// Bytes held for this answer.
    #[cfg(test)]
    pub(crate) fn stored_len(&self) -> usize {
        self.bytes.len()
    }
}

/// A customer with one subscription to `price`.
fn sample_view(price: &str, cancelling: bool, at: DateTime<Utc>) -> BillingView {
    let customer = CustomerId::new("cus_");
    let subscription = SubscriptionId::new("sub_");
    let mut view = BillingView::new(customer.clone());
    view.subscriptions.insert(
        subscription.clone(),
        SubscriptionSnapshot {
            id: subscription,
            customer_id: customer,
            status: SubscriptionStatus::Active,
            items: vec![SubscriptionItem {
                price_id: PriceId::new(price),
                lookup_key: None,
                quantity: 1,
            }],
            cancel_at_period_end: cancelling,
            cancel_at: None,
            current_period_end: Some(at),
            trial_end: None,
            pending_update_invoice: None,
            started_at: None,
        },
    );
    view
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const CATALOG: &str = "default_plan: free\nplans:\n  free:\n    features: { seats: 1 }\n  pro:\n    prices: [price_pro, pro_monthly]\n    features: { seats: 10, sso: true }\n";

    #[test]
    fn an_answer_comes_back_byte_for_byte_and_smaller() {
        let catalog = Catalog::from_yaml("test", CATALOG).unwrap();
        let dictionary = AnswerDictionary::for_catalog(&catalog);
        let customer = CustomerId::new("cus_Qx81kLmN2");
        let mut view = sample_view("pro_monthly", true, Utc::now());
        view.customer_id = customer.clone();
        let answer =
            serde_json::to_vec(&Entitlements::resolve(&view, &catalog, Utc::now())).unwrap();
        let compact = dictionary.compress(&answer);
        assert_eq!(compact.expand().unwrap(), answer);
        assert!(
            compact.stored_len() * 3 < answer.len(),
            "{} of {} bytes",
            compact.stored_len(),
            answer.len()
        );
    }

    #[test]
    fn answers_unlike_the_dictionary_and_empty_ones_come_back_too() {
        let dictionary =
            AnswerDictionary::for_catalog(&Catalog::from_yaml("test", CATALOG).unwrap());
        let unlike: Vec<u8> = (0..5_000u32)
            .map(|n| u8::try_from(n * 7919 % 251).unwrap())
            .collect();
        for json in [&b""[..], b"{}", &unlike] {
            assert_eq!(dictionary.compress(json).expand().unwrap(), json);
        }
    }
}
