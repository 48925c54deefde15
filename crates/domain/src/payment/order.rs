//! The order view: what a product shows for a one-off purchase paid by a PaymentIntent that
//! carries `metadata.order_id`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::PaymentEvent;
use crate::ids::{CustomerId, PaymentIntentId};
use crate::money::Money;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrderState {
    /// Created, not paid yet: never paid on a client's word, only on Stripe's.
    Pending,
    /// The customer's bank asks for authentication (3-D Secure).
    RequiresAction,
    Paid,
    /// The last attempt was declined; another attempt may still succeed.
    Failed,
    Canceled,
    Refunded,
}

/// An order as the payment's facts describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderView {
    pub order_id: String,
    pub state: OrderState,
    pub payment_intent: PaymentIntentId,
    pub customer: Option<CustomerId>,
    pub amount: Money,
    pub amount_refunded: Option<Money>,
    /// Stripe's `decline_code` for a declined card.
    pub decline_code: Option<String>,
    /// What to tell the customer about a failure, never Stripe's raw text.
    pub message: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// The message for a decline, written for the customer (Stripe's own text is for developers).
/// Chosen by the `decline_code`, else by the error `code`: Stripe sends some declines with a
/// code and no decline code, the expired test card among them (`code: expired_card`; Stripe's
/// testing docs and error codes reference).
pub fn decline_message(decline_code: Option<&str>, error_code: Option<&str>) -> &'static str {
    match decline_code.or(error_code) {
        Some("insufficient_funds") => {
            "Your card has insufficient funds. Please use another card or contact your bank."
        }
        Some("expired_card") => {
            "Your card has expired. Please update your card details or use another card."
        }
        Some("authentication_required") => {
            "Your bank needs you to confirm this payment. Please try again and approve it."
        }
        Some("incorrect_cvc" | "invalid_cvc") => {
            "Your card's security code is incorrect. Please check it and try again."
        }
        Some("incorrect_number" | "invalid_number") => {
            "Your card number is incorrect. Please check it and try again."
        }
        Some("processing_error") => {
            "We could not process your card just now. Please try again in a moment."
        }
        Some("lost_card" | "stolen_card" | "pickup_card") => {
            "This card cannot be used. Please use another card."
        }
        _ => "Your card was declined. Please use another card or contact your bank.",
    }
}

impl OrderView {
    /// Folds one of the payment's events into the view (starting it on the first one).
    pub fn fold(view: Option<Self>, order_id: &str, event: &PaymentEvent) -> Option<Self> {
        let occurred_at = event.occurred_at();
        match (view, event) {
            (
                None,
                PaymentEvent::PaymentRefunded { .. }
                | PaymentEvent::PaymentLinkedToInvoice { .. }
                | PaymentEvent::PaymentDisputed { .. },
            ) => None,
            (
                None,
                PaymentEvent::PaymentCreated { payment, .. }
                | PaymentEvent::PaymentRequiresAction { payment, .. }
                | PaymentEvent::PaymentSucceeded { payment, .. }
                | PaymentEvent::PaymentFailed { payment, .. }
                | PaymentEvent::PaymentCanceled { payment, .. },
            ) => {
                let start = Self {
                    order_id: order_id.to_owned(),
                    state: OrderState::Pending,
                    payment_intent: payment.id.clone(),
                    customer: payment.customer_id.clone(),
                    amount: payment.amount.clone(),
                    amount_refunded: None,
                    decline_code: None,
                    message: None,
                    updated_at: occurred_at,
                };
                Self::fold(Some(start), order_id, event)
            }
            (Some(mut view), event) => {
                view.updated_at = view.updated_at.max(occurred_at);
                match event {
                    PaymentEvent::PaymentCreated { .. }
                    | PaymentEvent::PaymentLinkedToInvoice { .. }
                    | PaymentEvent::PaymentDisputed { .. } => {}
                    PaymentEvent::PaymentRequiresAction { .. } => {
                        view.state = OrderState::RequiresAction
                    }
                    PaymentEvent::PaymentSucceeded { .. } => {
                        view.state = OrderState::Paid;
                        view.decline_code = None;
                        view.message = None;
                    }
                    PaymentEvent::PaymentFailed { payment, .. } => {
                        view.state = OrderState::Failed;
                        view.decline_code = payment.decline_code.clone();
                        view.message = Some(
                            decline_message(
                                payment.decline_code.as_deref(),
                                payment.failure_code.as_deref(),
                            )
                            .to_owned(),
                        );
                    }
                    PaymentEvent::PaymentCanceled { .. } => view.state = OrderState::Canceled,
                    PaymentEvent::PaymentRefunded {
                        amount_refunded,
                        full,
                        ..
                    } => {
                        view.amount_refunded = Some(amount_refunded.clone());
                        view.state = if *full {
                            OrderState::Refunded
                        } else {
                            OrderState::Paid
                        };
                    }
                }
                Some(view)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::payment::PaymentFacts;

    fn facts(decline_code: Option<&str>) -> PaymentFacts {
        PaymentFacts {
            id: PaymentIntentId::new("pi_1"),
            customer_id: Some(CustomerId::new("cus_1")),
            amount: Money::new(4200, "usd"),
            order_id: Some("order_1".to_owned()),
            failure_code: decline_code.map(|_| "card_declined".to_owned()),
            decline_code: decline_code.map(str::to_owned),
        }
    }

    #[test]
    fn an_order_goes_from_pending_through_a_decline_to_paid_and_refunded() {
        let at = |s: i64| Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap();
        let events = [
            PaymentEvent::PaymentCreated {
                payment: facts(None),
                occurred_at: at(0),
            },
            PaymentEvent::PaymentFailed {
                payment: facts(Some("insufficient_funds")),
                occurred_at: at(1),
            },
        ];
        let mut view = None;
        for event in &events {
            view = OrderView::fold(view, "order_1", event);
        }
        let failed = view.clone().unwrap();
        assert_eq!(failed.state, OrderState::Failed);
        assert_eq!(failed.decline_code.as_deref(), Some("insufficient_funds"));
        assert!(failed
            .message
            .as_deref()
            .unwrap()
            .starts_with("Your card has insufficient funds"));
        view = OrderView::fold(
            view,
            "order_1",
            &PaymentEvent::PaymentSucceeded {
                payment: facts(None),
                occurred_at: at(5),
            },
        );
        assert_eq!(view.as_ref().unwrap().state, OrderState::Paid);
        assert_eq!(view.as_ref().unwrap().message, None);
        view = OrderView::fold(
            view,
            "order_1",
            &PaymentEvent::PaymentRefunded {
                payment_intent: PaymentIntentId::new("pi_1"),
                amount_refunded: Money::new(4200, "usd"),
                full: true,
                occurred_at: at(9),
            },
        );
        assert_eq!(view.unwrap().state, OrderState::Refunded);
    }

    #[test]
    fn every_decline_in_stripes_test_cards_has_a_friendly_message() {
        for code in [
            Some("generic_decline"),
            Some("insufficient_funds"),
            Some("expired_card"),
            None,
        ] {
            let message = decline_message(code, Some("card_declined"));
            assert!(message.starts_with("Your "), "{code:?}: {message}");
            assert!(!message.contains("decline_code"), "{message}");
        }
        assert_ne!(
            decline_message(Some("expired_card"), None),
            decline_message(Some("generic_decline"), None)
        );
        // No decline code: the error code chooses (the expired test card, a wrong CVC, a
        // processing error), never the generic text when the code says more.
        for code in ["expired_card", "incorrect_cvc", "processing_error"] {
            assert_ne!(
                decline_message(None, Some(code)),
                decline_message(None, Some("card_declined")),
                "{code}"
            );
        }
        assert_eq!(
            decline_message(None, Some("expired_card")),
            decline_message(Some("expired_card"), None)
        );
    }
}
