//! Charges, one-off orders (PaymentIntents with `metadata.order_id`) and disputes.

use super::{not_found, SimError, Simulator};
use crate::model::{
    Card, Charge, ChargeResult, Decline, Dispute, DisputeKind, DisputeStatus, PaymentIntent,
    PaymentIntentStatus, Session,
};
use crate::render;

impl Simulator {
    /// Opens a dispute on the customer's latest successful charge.
    pub fn open_dispute(&mut self, customer: &str) -> Result<String, SimError> {
        let charge = self
            .charges
            .values()
            .filter(|c| c.customer == customer && c.succeeded && !c.disputed)
            .max_by_key(|c| (c.created, c.id.clone()))
            .map(|c| c.id.clone())
            .ok_or_else(|| {
                SimError::Invalid(format!(
                    "customer `{customer}` has no undisputed successful charge"
                ))
            })?;
        self.dispute_charge(&charge, DisputeKind::Fraudulent)
    }

    /// The dispute a test card opens right after its charge succeeded (4000 0000 0000 0259:
    /// fraudulent, with `charge.dispute.funds_withdrawn`; the inquiry card: an inquiry, which
    /// moves no funds). Stripe's "Testing" docs, disputes.
    pub(super) fn dispute_latest_charge(
        &mut self,
        intent_id: &str,
        kind: DisputeKind,
    ) -> Result<(), SimError> {
        let charge = self
            .payment_intents
            .get(intent_id)
            .and_then(|pi| pi.latest_charge.clone())
            .ok_or_else(|| not_found("charge of payment_intent", intent_id))?;
        self.dispute_charge(&charge, kind).map(|_| ())
    }

    fn dispute_charge(&mut self, charge_id: &str, kind: DisputeKind) -> Result<String, SimError> {
        let charge = self
            .charges
            .get_mut(charge_id)
            .ok_or_else(|| not_found("charge", charge_id))?;
        charge.disputed = true;
        let charge = charge.clone();
        let id = self.next_id("dp");
        let dispute = Dispute {
            id: id.clone(),
            charge: charge.id.clone(),
            payment_intent: charge.payment_intent.clone(),
            amount: charge.amount,
            currency: charge.currency.clone(),
            status: match kind {
                DisputeKind::Fraudulent => DisputeStatus::NeedsResponse,
                DisputeKind::Inquiry => DisputeStatus::WarningNeedsResponse,
            },
            created: self.now,
        };
        let rendered = render::dispute(&dispute);
        self.disputes.insert(id.clone(), dispute);
        self.emit("charge.dispute.created", rendered.clone(), None);
        if kind == DisputeKind::Fraudulent {
            self.emit("charge.dispute.funds_withdrawn", rendered, None);
        }
        Ok(id)
    }

    /// Closes the customer's open dispute as `won` or `lost`; an inquiry closes as
    /// `warning_closed` whatever the outcome, since no funds moved.
    pub fn close_dispute(&mut self, customer: &str, outcome: &str) -> Result<(), SimError> {
        let status = match outcome {
            "won" => DisputeStatus::Won,
            "lost" => DisputeStatus::Lost,
            other => {
                return Err(SimError::Invalid(format!(
                    "dispute outcome `{other}` is not won or lost"
                )))
            }
        };
        let charges: Vec<String> = self
            .charges
            .values()
            .filter(|c| c.customer == customer)
            .map(|c| c.id.clone())
            .collect();
        let dispute = self
            .disputes
            .values_mut()
            .find(|d| d.status.is_open() && charges.contains(&d.charge))
            .ok_or_else(|| {
                SimError::Invalid(format!("customer `{customer}` has no open dispute"))
            })?;
        let inquiry = dispute.status == DisputeStatus::WarningNeedsResponse;
        dispute.status = if inquiry {
            DisputeStatus::WarningClosed
        } else {
            status
        };
        let rendered = render::dispute(dispute);
        self.emit("charge.dispute.closed", rendered.clone(), None);
        if !inquiry && status == DisputeStatus::Won {
            self.emit("charge.dispute.funds_reinstated", rendered, None);
        }
        Ok(())
    }

    /// A one-off payment for an order: a PaymentIntent with `metadata.order_id`, confirmed at
    /// once on-session with `test_card` (as Stripe.js confirms with a card the customer typed)
    /// or else the customer's default card. Without either it waits, unconfirmed.
    pub fn create_order(
        &mut self,
        order_id: &str,
        customer: &str,
        amount: i64,
        currency: &str,
        test_card: Option<&str>,
    ) -> Result<(), SimError> {
        self.customer(customer)?;
        if self
            .payment_intents
            .values()
            .any(|pi| pi.order_id.as_deref() == Some(order_id))
        {
            return Err(SimError::AlreadyExists(order_id.to_owned()));
        }
        if amount <= 0 {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` must have a positive amount"
            )));
        }
        let id = self.next_id("pi");
        let intent = PaymentIntent {
            id: id.clone(),
            customer: customer.to_owned(),
            amount,
            currency: currency.to_owned(),
            status: PaymentIntentStatus::RequiresPaymentMethod,
            invoice: None,
            payment_method: None,
            last_error: None,
            latest_charge: None,
            created: self.now,
            order_id: Some(order_id.to_owned()),
        };
        let rendered = render::payment_intent(&intent);
        self.payment_intents.insert(id, intent);
        self.emit("payment_intent.created", rendered, None);
        if test_card.is_none() && self.card_of(customer).is_none() {
            return Ok(());
        }
        self.pay_order(order_id, test_card)
    }

    pub(super) fn order_intent(&self, order_id: &str) -> Result<PaymentIntent, SimError> {
        self.payment_intents
            .values()
            .find(|pi| pi.order_id.as_deref() == Some(order_id))
            .cloned()
            .ok_or_else(|| not_found("order", order_id))
    }

    /// Tries the order's payment again with the customer's current default card.
    pub fn pay_order(&mut self, order_id: &str, test_card: Option<&str>) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        if intent.status.is_final() {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is already {}",
                intent.status.as_str()
            )));
        }
        let typed = match test_card {
            Some(test_card) => {
                let card = Card::from_test_id(test_card)
                    .ok_or_else(|| SimError::UnknownCard(test_card.to_owned()))?;
                Some(self.new_payment_method(&intent.customer, card))
            }
            None => None,
        };
        let Some((method, card)) = self.method_to_charge(&intent.customer, typed) else {
            return Err(SimError::NoPaymentMethod(intent.customer));
        };
        if let Some(pi) = self.payment_intents.get_mut(&intent.id) {
            pi.payment_method = Some(method);
        }
        match card.charge(Session::On) {
            ChargeResult::Succeeded => {
                self.succeed_intent(&intent.id)?;
                match card.dispute_after_charge() {
                    Some(kind) => self.dispute_latest_charge(&intent.id, kind),
                    None => Ok(()),
                }
            }
            ChargeResult::Declined(decline) => {
                let charge = self.new_charge(&intent.id, Some(decline))?;
                if let Some(pi) = self.payment_intents.get_mut(&intent.id) {
                    pi.status = PaymentIntentStatus::RequiresPaymentMethod;
                    pi.latest_charge = Some(charge);
                    pi.last_error = Some(decline);
                }
                self.emit_intent(&intent.id, "payment_intent.payment_failed");
                Ok(())
            }
            ChargeResult::RequiresAction => {
                if let Some(pi) = self.payment_intents.get_mut(&intent.id) {
                    pi.status = PaymentIntentStatus::RequiresAction;
                }
                self.emit_intent(&intent.id, "payment_intent.requires_action");
                Ok(())
            }
        }
    }

    /// The customer completes the 3-D Secure challenge of the order's payment.
    pub fn complete_order_3ds(&mut self, order_id: &str) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        if intent.status != PaymentIntentStatus::RequiresAction {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is not waiting for 3-D Secure"
            )));
        }
        self.succeed_intent(&intent.id)
    }

    pub fn cancel_order(&mut self, order_id: &str) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        if intent.status.is_final() {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is {} and cannot be canceled",
                intent.status.as_str()
            )));
        }
        if let Some(pi) = self.payment_intents.get_mut(&intent.id) {
            pi.status = PaymentIntentStatus::Canceled;
        }
        self.emit_intent(&intent.id, "payment_intent.canceled");
        Ok(())
    }

    /// Refunds the order's payment in full (`charge.refunded`).
    pub fn refund_order(&mut self, order_id: &str) -> Result<(), SimError> {
        let intent = self.order_intent(order_id)?;
        let charge_id = intent
            .latest_charge
            .filter(|_| intent.status == PaymentIntentStatus::Succeeded)
            .ok_or_else(|| {
                SimError::Invalid(format!(
                    "order `{order_id}` has no successful payment to refund"
                ))
            })?;
        let charge = self
            .charges
            .get_mut(&charge_id)
            .ok_or_else(|| not_found("charge", &charge_id))?;
        if charge.refunded {
            return Err(SimError::Invalid(format!(
                "order `{order_id}` is already refunded"
            )));
        }
        charge.refunded = true;
        let rendered = render::charge(charge);
        self.emit("charge.refunded", rendered, None);
        Ok(())
    }

    pub(super) fn succeed_intent(&mut self, intent_id: &str) -> Result<(), SimError> {
        let charge = self.new_charge(intent_id, None)?;
        if let Some(pi) = self.payment_intents.get_mut(intent_id) {
            pi.status = PaymentIntentStatus::Succeeded;
            pi.latest_charge = Some(charge);
            pi.last_error = None;
        }
        self.emit_intent(intent_id, "payment_intent.succeeded");
        Ok(())
    }

    pub(super) fn emit_intent(&mut self, intent_id: &str, event_type: &str) {
        let rendered = self
            .payment_intents
            .get(intent_id)
            .map(render::payment_intent);
        if let Some(rendered) = rendered {
            self.emit(event_type, rendered, None);
        }
    }

    /// An order's PaymentIntent status, as Stripe reports it.
    pub fn order_status(&self, order_id: &str) -> Result<&'static str, SimError> {
        self.order_intent(order_id).map(|pi| pi.status.as_str())
    }

    /// A charge for the PaymentIntent: succeeded, or failed with `decline`.
    pub(super) fn new_charge(
        &mut self,
        intent_id: &str,
        decline: Option<Decline>,
    ) -> Result<String, SimError> {
        let succeeded = decline.is_none();
        let intent = self
            .payment_intents
            .get(intent_id)
            .cloned()
            .ok_or_else(|| not_found("payment_intent", intent_id))?;
        let id = self.next_id("ch");
        let charge = Charge {
            id: id.clone(),
            customer: intent.customer.clone(),
            payment_intent: intent_id.to_owned(),
            amount: intent.amount,
            currency: intent.currency.clone(),
            succeeded,
            decline,
            disputed: false,
            refunded: false,
            created: self.now,
        };
        let rendered = render::charge(&charge);
        self.charges.insert(id.clone(), charge);
        self.emit(
            if succeeded {
                "charge.succeeded"
            } else {
                "charge.failed"
            },
            rendered,
            None,
        );
        Ok(id)
    }
}
