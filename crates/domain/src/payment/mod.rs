//! The `Payment` aggregate: one Stripe PaymentIntent, with or without a customer; and the
//! order view of a PaymentIntent that carries `metadata.order_id`.
//!
//! A payment is paid only when Stripe says so (`payment_intent.succeeded`), never because a
//! client says it confirmed. Stripe's facts arrive in any order, so the aggregate judges what is
//! new: success and refunds are final, a failure or a request for authentication reported after
//! the success is old news, and a cancellation cannot undo a payment.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, PaymentIntentId};
use crate::money::Money;

mod order;

pub use order::{decline_message, OrderState, OrderView};

/// What a PaymentIntent event tells about the payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFacts {
    pub id: PaymentIntentId,
    pub customer_id: Option<CustomerId>,
    pub amount: Money,
    /// `metadata.order_id`: a one-off order this payment pays for.
    pub order_id: Option<String>,
    /// Stripe's `last_payment_error.code` on a failure.
    pub failure_code: Option<String>,
    /// Stripe's `last_payment_error.decline_code` on a card decline.
    pub decline_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PaymentCommand {
    RecordCreated {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    RecordRequiresAction {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    RecordSucceeded {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    RecordFailed {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    RecordCanceled {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    /// The payment's charge is disputed (`charge.dispute.*`).
    RecordDispute {
        dispute: crate::billing::DisputeFacts,
        occurred_at: DateTime<Utc>,
    },
    /// The payment paid this invoice (`invoice_payment.paid`).
    RecordInvoiceLink {
        invoice: crate::ids::InvoiceId,
        occurred_at: DateTime<Utc>,
    },
    /// A refund of the payment's charge (`charge.refunded`); `full` when nothing is left.
    RecordRefunded {
        payment_intent: PaymentIntentId,
        amount_refunded: Money,
        full: bool,
        occurred_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentEvent {
    PaymentCreated {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    PaymentRequiresAction {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    PaymentSucceeded {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    PaymentFailed {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    PaymentCanceled {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    PaymentRefunded {
        payment_intent: PaymentIntentId,
        amount_refunded: Money,
        full: bool,
        occurred_at: DateTime<Utc>,
    },
    PaymentLinkedToInvoice {
        invoice: crate::ids::InvoiceId,
        occurred_at: DateTime<Utc>,
    },
    PaymentDisputed {
        dispute: crate::billing::DisputeFacts,
        occurred_at: DateTime<Utc>,
    },
}

impl PaymentEvent {
    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::PaymentCreated { occurred_at, .. }
            | Self::PaymentRequiresAction { occurred_at, .. }
            | Self::PaymentSucceeded { occurred_at, .. }
            | Self::PaymentFailed { occurred_at, .. }
            | Self::PaymentCanceled { occurred_at, .. }
            | Self::PaymentRefunded { occurred_at, .. }
            | Self::PaymentLinkedToInvoice { occurred_at, .. }
            | Self::PaymentDisputed { occurred_at, .. } => *occurred_at,
        }
    }
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PaymentCreated { .. } => "PaymentCreated",
            Self::PaymentRequiresAction { .. } => "PaymentRequiresAction",
            Self::PaymentSucceeded { .. } => "PaymentSucceeded",
            Self::PaymentFailed { .. } => "PaymentFailed",
            Self::PaymentCanceled { .. } => "PaymentCanceled",
            Self::PaymentRefunded { .. } => "PaymentRefunded",
            Self::PaymentLinkedToInvoice { .. } => "PaymentLinkedToInvoice",
            Self::PaymentDisputed { .. } => "PaymentDisputed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        crate::schema::PAYMENT_EVENTS.to_owned()
    }
}

/// Where a payment stands, as the recorded facts say.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    known: bool,
    succeeded: bool,
    canceled: bool,
    refunded: bool,
    amount_refunded: i64,
    /// The Stripe time of the latest pending-side fact (created, action, failure).
    pending_as_of: Option<DateTime<Utc>>,
    last_failure: Option<PaymentFacts>,
    requires_action: bool,
    #[serde(default)]
    invoice: Option<crate::ids::InvoiceId>,
    /// The latest known state of each dispute, with its Stripe time.
    #[serde(default)]
    disputes: std::collections::BTreeMap<String, DisputeAt>,
    /// The customer the first event that named one gave.
    #[serde(default)]
    customer: Option<CustomerId>,
}

/// A dispute's state and its Stripe time.
pub type DisputeAt = (crate::billing::DisputeFacts, DateTime<Utc>);

/// Like the `Customer` aggregate, `Payment` records Stripe's facts and never refuses one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {}

impl Payment {
    /// What the payment's customer must learn of its disputes: each one's latest state, scoped
    /// to the invoice the payment paid (so dunning holds the subscription that invoice
    /// billed). `None` while no event has named the customer: a dispute, the payment's
    /// customer and its invoice link arrive in any order, and whichever event completes the
    /// picture hands the disputes over (the customer ignores what it already has).
    pub fn disputes_for_customer(&self) -> Option<(&CustomerId, Vec<DisputeAt>)> {
        let customer = self.customer.as_ref()?;
        let disputes = self
            .disputes
            .values()
            .map(|(dispute, occurred_at)| {
                let mut dispute = dispute.clone();
                dispute.invoice.clone_from(&self.invoice);
                (dispute, *occurred_at)
            })
            .collect();
        Some((customer, disputes))
    }

    fn settled(&self) -> bool {
        self.succeeded || self.canceled || self.refunded
    }

    /// A pending-side fact is news if nothing settled the payment and it is not older than the
    /// last one (same-second facts apply in arrival order).
    fn pending_news(&self, occurred_at: DateTime<Utc>) -> bool {
        !self.settled() && self.pending_as_of.is_none_or(|at| occurred_at >= at)
    }

    fn decide(&self, command: PaymentCommand) -> Vec<PaymentEvent> {
        match command {
            PaymentCommand::RecordCreated {
                payment,
                occurred_at,
            } => {
                if self.known {
                    return vec![];
                }
                vec![PaymentEvent::PaymentCreated {
                    payment,
                    occurred_at,
                }]
            }
            PaymentCommand::RecordRequiresAction {
                payment,
                occurred_at,
            } => {
                if !self.pending_news(occurred_at) || self.requires_action {
                    return vec![];
                }
                vec![PaymentEvent::PaymentRequiresAction {
                    payment,
                    occurred_at,
                }]
            }
            PaymentCommand::RecordSucceeded {
                payment,
                occurred_at,
            } => {
                // A refund already says it was paid; success is recorded once.
                if self.succeeded || self.refunded {
                    return vec![];
                }
                vec![PaymentEvent::PaymentSucceeded {
                    payment,
                    occurred_at,
                }]
            }
            PaymentCommand::RecordFailed {
                payment,
                occurred_at,
            } => {
                let repeat = self.last_failure.as_ref() == Some(&payment);
                if !self.pending_news(occurred_at) || repeat {
                    return vec![];
                }
                vec![PaymentEvent::PaymentFailed {
                    payment,
                    occurred_at,
                }]
            }
            PaymentCommand::RecordCanceled {
                payment,
                occurred_at,
            } => {
                if self.settled() {
                    return vec![];
                }
                vec![PaymentEvent::PaymentCanceled {
                    payment,
                    occurred_at,
                }]
            }
            PaymentCommand::RecordDispute {
                dispute,
                occurred_at,
            } => {
                let stale = self.disputes.get(&dispute.id).is_some_and(|(known, at)| {
                    let older = occurred_at < *at || occurred_at == *at && dispute.precedes(known);
                    *known == dispute || known.is_closed() || older
                });
                if stale {
                    return vec![];
                }
                vec![PaymentEvent::PaymentDisputed {
                    dispute,
                    occurred_at,
                }]
            }
            PaymentCommand::RecordInvoiceLink {
                invoice,
                occurred_at,
            } => {
                if self.invoice.as_ref() == Some(&invoice) {
                    return vec![];
                }
                vec![PaymentEvent::PaymentLinkedToInvoice {
                    invoice,
                    occurred_at,
                }]
            }
            PaymentCommand::RecordRefunded {
                payment_intent,
                amount_refunded,
                full,
                occurred_at,
            } => {
                if amount_refunded.amount.0 <= self.amount_refunded || self.refunded && full {
                    return vec![];
                }
                vec![PaymentEvent::PaymentRefunded {
                    payment_intent,
                    amount_refunded,
                    full,
                    occurred_at,
                }]
            }
        }
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = "Payment";
    type Command = PaymentCommand;
    type Event = PaymentEvent;
    type Error = PaymentError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command) {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.known = true;
        if self.customer.is_none() {
            if let PaymentEvent::PaymentCreated { payment, .. }
            | PaymentEvent::PaymentRequiresAction { payment, .. }
            | PaymentEvent::PaymentSucceeded { payment, .. }
            | PaymentEvent::PaymentFailed { payment, .. }
            | PaymentEvent::PaymentCanceled { payment, .. } = &event
            {
                self.customer.clone_from(&payment.customer_id);
            }
        }
        match event {
            PaymentEvent::PaymentCreated { occurred_at, .. } => {
                self.pending_as_of = Some(occurred_at);
            }
            PaymentEvent::PaymentRequiresAction { occurred_at, .. } => {
                self.requires_action = true;
                self.pending_as_of = Some(occurred_at);
            }
            PaymentEvent::PaymentSucceeded { .. } => self.succeeded = true,
            PaymentEvent::PaymentFailed {
                payment,
                occurred_at,
            } => {
                self.requires_action = false;
                self.pending_as_of = Some(occurred_at);
                self.last_failure = Some(payment);
            }
            PaymentEvent::PaymentCanceled { .. } => self.canceled = true,
            PaymentEvent::PaymentLinkedToInvoice { invoice, .. } => self.invoice = Some(invoice),
            PaymentEvent::PaymentDisputed {
                dispute,
                occurred_at,
            } => {
                self.disputes
                    .insert(dispute.id.clone(), (dispute, occurred_at));
            }
            PaymentEvent::PaymentRefunded {
                amount_refunded,
                full,
                ..
            } => {
                self.succeeded = true;
                self.amount_refunded = self.amount_refunded.max(amount_refunded.amount.0);
                self.refunded |= full;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    type PaymentTest = TestFramework<Payment>;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap()
    }

    fn payment(decline_code: Option<&str>) -> PaymentFacts {
        PaymentFacts {
            id: PaymentIntentId::new("pi_1"),
            customer_id: None,
            amount: Money::new(4200, "eur"),
            order_id: Some("order_7".to_owned()),
            failure_code: decline_code.map(|_| "card_declined".to_owned()),
            decline_code: decline_code.map(str::to_owned),
        }
    }

    fn succeeded(second: i64) -> PaymentEvent {
        PaymentEvent::PaymentSucceeded {
            payment: payment(None),
            occurred_at: at(second),
        }
    }

    #[test]
    fn a_same_second_dispute_update_from_an_earlier_stage_is_stale() {
        let dispute = |status: &str| crate::billing::DisputeFacts {
            id: "dp_1".to_owned(),
            payment_intent: PaymentIntentId::new("pi_1"),
            invoice: None,
            status: status.to_owned(),
            reason: None,
        };
        PaymentTest::with(())
            .given(vec![PaymentEvent::PaymentDisputed {
                dispute: dispute("under_review"),
                occurred_at: at(5),
            }])
            .when(PaymentCommand::RecordDispute {
                dispute: dispute("needs_response"),
                occurred_at: at(5),
            })
            .then_expect_events(vec![]);
    }

    /// A dispute, the payment's customer and its invoice link, in every order: the disputes
    /// are handed over only once the customer is known, each in its latest state and scoped to
    /// the invoice once the link is known.
    #[test]
    fn disputes_are_handed_to_the_customer_once_it_is_known_with_the_invoice() {
        let dispute = |status: &str, second: i64| PaymentEvent::PaymentDisputed {
            dispute: crate::billing::DisputeFacts {
                id: "dp_1".to_owned(),
                payment_intent: PaymentIntentId::new("pi_1"),
                invoice: None,
                status: status.to_owned(),
                reason: None,
            },
            occurred_at: at(second),
        };
        let with_customer = PaymentEvent::PaymentSucceeded {
            payment: PaymentFacts {
                customer_id: Some(CustomerId::new("cus_1")),
                ..payment(None)
            },
            occurred_at: at(1),
        };
        let linked = PaymentEvent::PaymentLinkedToInvoice {
            invoice: crate::ids::InvoiceId::new("in_1"),
            occurred_at: at(2),
        };
        let fold = |events: &[PaymentEvent]| {
            let mut payment = Payment::default();
            for event in events {
                payment.apply(event.clone());
            }
            payment
        };
        let unknown_customer = fold(&[dispute("needs_response", 3), linked.clone()]);
        assert_eq!(unknown_customer.disputes_for_customer(), None);

        let orders = [
            vec![
                dispute("needs_response", 3),
                linked.clone(),
                with_customer.clone(),
            ],
            vec![
                with_customer.clone(),
                dispute("needs_response", 3),
                linked.clone(),
            ],
            vec![
                linked.clone(),
                with_customer.clone(),
                dispute("needs_response", 3),
            ],
        ];
        for events in orders {
            let payment = fold(&events);
            let (customer, disputes) = payment.disputes_for_customer().unwrap();
            assert_eq!(customer.as_str(), "cus_1");
            assert_eq!(disputes.len(), 1);
            assert_eq!(
                disputes[0].0.invoice,
                Some(crate::ids::InvoiceId::new("in_1"))
            );
            assert_eq!(
                (disputes[0].0.status.as_str(), disputes[0].1),
                ("needs_response", at(3))
            );
        }

        // Before the link, the dispute goes over unscoped; a later state replaces the earlier.
        let payment = fold(&[
            with_customer,
            dispute("needs_response", 3),
            dispute("won", 9),
        ]);
        let (_, disputes) = payment.disputes_for_customer().unwrap();
        assert_eq!(disputes[0].0.invoice, None);
        assert_eq!(
            (disputes[0].0.status.as_str(), disputes[0].1),
            ("won", at(9))
        );
    }

    #[test]
    fn it_records_a_success_once() {
        PaymentTest::with(())
            .given(vec![succeeded(1)])
            .when(PaymentCommand::RecordSucceeded {
                payment: payment(None),
                occurred_at: at(1),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_keeps_a_success_when_an_earlier_failure_or_action_request_arrives_late() {
        for command in [
            PaymentCommand::RecordFailed {
                payment: payment(Some("insufficient_funds")),
                occurred_at: at(3),
            },
            PaymentCommand::RecordRequiresAction {
                payment: payment(None),
                occurred_at: at(3),
            },
            PaymentCommand::RecordCanceled {
                payment: payment(None),
                occurred_at: at(9),
            },
        ] {
            PaymentTest::with(())
                .given(vec![succeeded(5)])
                .when(command)
                .then_expect_events(vec![]);
        }
    }

    #[test]
    fn it_records_a_new_failure() {
        PaymentTest::with(())
            .given(vec![PaymentEvent::PaymentFailed {
                payment: payment(Some("generic_decline")),
                occurred_at: at(1),
            }])
            .when(PaymentCommand::RecordFailed {
                payment: payment(Some("insufficient_funds")),
                occurred_at: at(4),
            })
            .then_expect_events(vec![PaymentEvent::PaymentFailed {
                payment: payment(Some("insufficient_funds")),
                occurred_at: at(4),
            }]);
    }

    #[test]
    fn it_ignores_a_failure_older_than_the_last_pending_fact() {
        PaymentTest::with(())
            .given(vec![PaymentEvent::PaymentRequiresAction {
                payment: payment(None),
                occurred_at: at(10),
            }])
            .when(PaymentCommand::RecordFailed {
                payment: payment(Some("generic_decline")),
                occurred_at: at(2),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_refund_counts_once_and_implies_the_payment() {
        let refunded = PaymentEvent::PaymentRefunded {
            payment_intent: PaymentIntentId::new("pi_1"),
            amount_refunded: Money::new(4200, "eur"),
            full: true,
            occurred_at: at(20),
        };
        PaymentTest::with(())
            .given(vec![refunded.clone()])
            .when(PaymentCommand::RecordRefunded {
                payment_intent: PaymentIntentId::new("pi_1"),
                amount_refunded: Money::new(4200, "eur"),
                full: true,
                occurred_at: at(20),
            })
            .then_expect_events(vec![]);
        // The success delivered after the refund changes nothing.
        PaymentTest::with(())
            .given(vec![refunded])
            .when(PaymentCommand::RecordSucceeded {
                payment: payment(None),
                occurred_at: at(5),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_cancellation_ends_a_pending_payment() {
        PaymentTest::with(())
            .given(vec![PaymentEvent::PaymentCreated {
                payment: payment(None),
                occurred_at: at(0),
            }])
            .when(PaymentCommand::RecordCanceled {
                payment: payment(None),
                occurred_at: at(60),
            })
            .then_expect_events(vec![PaymentEvent::PaymentCanceled {
                payment: payment(None),
                occurred_at: at(60),
            }]);
    }
}
