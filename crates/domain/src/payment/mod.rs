//! The `Payment` aggregate: one Stripe PaymentIntent, with or without a customer.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::ids::{CustomerId, PaymentIntentId};
use crate::money::Money;

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
    RecordSucceeded {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    RecordFailed {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PaymentEvent {
    PaymentSucceeded {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
    PaymentFailed {
        payment: PaymentFacts,
        occurred_at: DateTime<Utc>,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::PaymentSucceeded { .. } => "PaymentSucceeded",
            Self::PaymentFailed { .. } => "PaymentFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// A payment's recorded outcome. Success is final: a failure reported after it (a late or
/// redelivered event about an earlier attempt) changes nothing.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    succeeded: bool,
    last_failure: Option<(PaymentFacts, DateTime<Utc>)>,
}

/// Like the `Customer` aggregate, `Payment` records Stripe's facts and never refuses one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {}

impl Payment {
    fn decide(&self, command: PaymentCommand) -> Vec<PaymentEvent> {
        match command {
            PaymentCommand::RecordSucceeded {
                payment,
                occurred_at,
            } => {
                if self.succeeded {
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
                let already_known = self.last_failure.as_ref().is_some_and(|(known, at)| {
                    occurred_at < *at || (occurred_at == *at && *known == payment)
                });
                if self.succeeded || already_known {
                    return vec![];
                }
                vec![PaymentEvent::PaymentFailed {
                    payment,
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
        match event {
            PaymentEvent::PaymentSucceeded { .. } => self.succeeded = true,
            PaymentEvent::PaymentFailed {
                payment,
                occurred_at,
            } => self.last_failure = Some((payment, occurred_at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

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

    #[test]
    fn it_records_a_success_once() {
        let succeeded = PaymentEvent::PaymentSucceeded {
            payment: payment(None),
            occurred_at: at(1),
        };
        TestFramework::<Payment>::with(())
            .given(vec![succeeded])
            .when(PaymentCommand::RecordSucceeded {
                payment: payment(None),
                occurred_at: at(1),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_keeps_a_success_when_an_earlier_failure_arrives_late() {
        TestFramework::<Payment>::with(())
            .given(vec![PaymentEvent::PaymentSucceeded {
                payment: payment(None),
                occurred_at: at(5),
            }])
            .when(PaymentCommand::RecordFailed {
                payment: payment(Some("insufficient_funds")),
                occurred_at: at(3),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_records_a_new_failure() {
        TestFramework::<Payment>::with(())
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
}
