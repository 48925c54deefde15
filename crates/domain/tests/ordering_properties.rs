//! The ordering rules as properties: whatever order Stripe delivers a customer's facts in, and
//! however often, the customer's billing view ends the same as when every fact arrived once,
//! in order. Stories are generated: a subscription's snapshots (status, price, cancellation)
//! at rising seconds, pairs of changes sharing one second (told apart only by
//! `previous_attributes`, as Stripe's events are: its `created` has one-second resolution, and
//! one payment's events share seconds; `../shared/STRIPE.md`, delivery and renewal), the
//! customer's details, and a renewal invoice that fails some times and is then paid. What the
//! events cannot order (a change taken back within its second) the aggregate refuses as
//! undecided, and here, as the worker does (`crates/engine/src/worker.rs`,
//! `settle_by_fetching`), Stripe's current subscription is recorded instead, as fetched at
//! that second: the story's last state, since every delivery here comes after the story.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use subledger_domain::billing::{
    DetailsProvenance, InvoiceFacts, PreviousFields, Provenance, SubscriptionItem,
    SubscriptionSnapshot, SubscriptionStatus,
};
use subledger_domain::customer::{Customer, CustomerCommand, CustomerError, TiedObject};
use subledger_domain::entitlements::BillingView;
use subledger_domain::ids::{CustomerId, InvoiceId, PriceId, SubscriptionId};
use subledger_domain::money::Money;

fn at(second: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + second, 0).unwrap()
}

/// One state of the subscription a story can be in.
#[derive(Debug, Clone, Copy, PartialEq)]
struct State {
    status: SubscriptionStatus,
    price: &'static str,
    cancel_at_period_end: bool,
}

fn snapshot(state: State) -> SubscriptionSnapshot {
    SubscriptionSnapshot {
        id: SubscriptionId::new("sub_1"),
        customer_id: CustomerId::new("cus_1"),
        status: state.status,
        items: vec![SubscriptionItem {
            price_id: PriceId::new(state.price),
            lookup_key: None,
            quantity: 1,
        }],
        cancel_at_period_end: state.cancel_at_period_end,
        cancel_at: None,
        current_period_end: Some(at(30 * 86_400)),
        trial_end: None,
        pending_update_invoice: None,
        started_at: None,
    }
}

/// What `previous_attributes` says when the subscription moved from `from` to `to`: the
/// fields that changed, with their earlier values.
fn moved_from(from: State, to: State) -> Provenance {
    Provenance {
        creation: false,
        previous_status: (from.status != to.status).then_some(from.status),
        previous: PreviousFields {
            cancel_at_period_end: (from.cancel_at_period_end != to.cancel_at_period_end)
                .then_some(from.cancel_at_period_end),
            price_ids: (from.price != to.price).then(|| vec![PriceId::new(from.price)]),
            ..PreviousFields::default()
        },
        fetched: false,
    }
}

fn invoice(attempt_count: u32, paid: bool) -> InvoiceFacts {
    InvoiceFacts {
        id: InvoiceId::new("in_renewal"),
        subscription_id: Some(SubscriptionId::new("sub_1")),
        amount_due: Money::new(2900, "usd"),
        amount_paid: Money::new(if paid { 2900 } else { 0 }, "usd"),
        attempt_count,
        next_payment_attempt: None,
    }
}

fn state() -> impl Strategy<Value = State> {
    (
        prop::sample::select(vec![
            SubscriptionStatus::Trialing,
            SubscriptionStatus::Active,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Unpaid,
            SubscriptionStatus::Paused,
        ]),
        prop::sample::select(vec!["price_basic", "price_pro"]),
        any::<bool>(),
    )
        .prop_map(|(status, price, cancel_at_period_end)| State {
            status,
            price,
            cancel_at_period_end,
        })
}

/// A story: the facts in Stripe's order.
fn story() -> impl Strategy<Value = Vec<CustomerCommand>> {
    (
        state(),
        prop::collection::vec((state(), any::<bool>()), 0..6),
        0..4u32,
        any::<bool>(),
        prop::collection::vec("[a-z]{1,3}", 1..3),
    )
        .prop_map(|(first, changes, failures, paid, user_ids)| {
            let mut facts = vec![CustomerCommand::RecordSubscription {
                subscription: snapshot(first),
                occurred_at: at(0),
                provenance: Provenance {
                    creation: true,
                    ..Provenance::default()
                },
            }];
            let (mut second, mut previous, mut shared_last) = (0, first, false);
            for (next, same_second) in changes {
                if next == previous {
                    continue;
                }
                // At most two snapshots in one second: the second names the first in its
                // `previous_attributes`. In a longer run two of them may name nothing of each
                // other, and then the legal status transitions decide, which these random
                // statuses do not follow.
                let share = same_second && !shared_last;
                if !share {
                    second += 60;
                }
                shared_last = share;
                facts.push(CustomerCommand::RecordSubscription {
                    subscription: snapshot(next),
                    occurred_at: at(second),
                    provenance: moved_from(previous, next),
                });
                previous = next;
            }
            for (n, user_id) in user_ids.iter().enumerate() {
                let mut metadata = BTreeMap::new();
                metadata.insert("user_id".to_owned(), user_id.clone());
                facts.push(CustomerCommand::RecordDetails {
                    metadata,
                    email: Some(format!("{user_id}@example.com")),
                    occurred_at: at(i64::try_from(n).unwrap() * 3_600 + 30),
                    provenance: DetailsProvenance {
                        creation: n == 0,
                        ..DetailsProvenance::default()
                    },
                });
            }
            for attempt in 1..=failures {
                facts.push(CustomerCommand::RecordInvoicePaymentFailed {
                    invoice: invoice(attempt, false),
                    occurred_at: at(86_400 * i64::from(attempt)),
                });
            }
            if paid {
                facts.push(CustomerCommand::RecordInvoicePaid {
                    invoice: invoice(failures + 1, true),
                    occurred_at: at(86_400 * i64::from(failures + 1)),
                });
            }
            facts
        })
}

/// The facts recorded in `order` (indexes into `facts`, repeats being redeliveries): the
/// customer's billing view as the projector would build it.
async fn view_after(facts: &[CustomerCommand], order: &[usize]) -> serde_json::Value {
    let stripe_now = facts
        .iter()
        .rev()
        .find_map(|fact| match fact {
            CustomerCommand::RecordSubscription { subscription, .. } => Some(subscription.clone()),
            _ => None,
        })
        .unwrap();
    let mut customer = Customer::default();
    let mut view = BillingView::new(CustomerId::new("cus_1"));
    for &index in order {
        let sink = EventSink::default();
        let fact = match customer.handle(facts[index].clone(), &(), &sink).await {
            Ok(()) => sink,
            Err(CustomerError::OrderUndecided {
                object: TiedObject::Subscription(_),
                second,
            }) => {
                let fetched = EventSink::default();
                customer
                    .handle(
                        CustomerCommand::RecordSubscription {
                            subscription: stripe_now.clone(),
                            occurred_at: second,
                            provenance: Provenance::fetched(),
                        },
                        &(),
                        &fetched,
                    )
                    .await
                    .unwrap_or_else(|refused| panic!("the fetched state was refused: {refused}"));
                fetched
            }
            Err(refused) => panic!("fact {index} refused: {refused}"),
        };
        for event in fact.collect().await {
            view.apply(&event);
        }
    }
    serde_json::to_value(&view).unwrap()
}

#[test]
fn any_delivery_order_with_redeliveries_ends_in_the_in_order_view() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let cases = std::env::var("SUBLEDGER_PERMUTATIONS")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .map_or(256, |n| n.max(64));
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    let deliveries = story().prop_flat_map(|facts| {
        let n = facts.len();
        let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
        let redelivered = prop::collection::vec((0..n, 0..=n), 0..4);
        (Just(facts), order, redelivered)
    });
    runner
        .run(&deliveries, |(facts, order, redelivered)| {
            let mut delivered = order.clone();
            for (fact, position) in redelivered {
                delivered.insert(position.min(delivered.len()), fact);
            }
            let in_order: Vec<usize> = (0..facts.len()).collect();
            let expected = runtime.block_on(view_after(&facts, &in_order));
            let got = runtime.block_on(view_after(&facts, &delivered));
            prop_assert_eq!(got, expected, "delivered {:?}", delivered);
            Ok(())
        })
        .unwrap();
}
