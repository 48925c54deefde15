//! Customers and their payment methods (Stripe's test cards).

use std::collections::BTreeMap;

use super::{not_found, SimError, Simulator};
use crate::model::{Card, Customer, PaymentMethod, SubscriptionStatus};
use crate::render;

impl Simulator {
    pub fn create_customer(
        &mut self,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), SimError> {
        self.create_customer_in(None, id, metadata)
    }

    /// A customer of connected account `account` (`None`: the platform's own). Every event
    /// about it, its subscriptions, invoices and payments carries the account.
    pub fn create_customer_in(
        &mut self,
        account: Option<&str>,
        id: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), SimError> {
        if self.customers.contains_key(id) {
            return Err(SimError::AlreadyExists(id.to_owned()));
        }
        self.customers.insert(
            id.to_owned(),
            Customer {
                id: id.to_owned(),
                account: account.map(str::to_owned),
                metadata,
                default_payment_method: None,
                created: self.now,
                deleted: false,
                delinquent: false,
            },
        );
        let rendered = self.render_customer(id)?;
        self.emit("customer.created", rendered, None);
        Ok(())
    }

    /// Attaches a test card (`pm_card_visa`, …) and makes it the default payment method.
    pub fn attach_card(&mut self, customer: &str, test_card: &str) -> Result<String, SimError> {
        let id = self.attach_payment_method(customer, test_card)?;
        self.set_default_payment_method(customer, &id)?;
        Ok(id)
    }

    /// Attaches a test card without making it the default (`POST /v1/payment_methods/…/attach`).
    /// Stripe checks the card as it attaches it: the declining test cards (0002, 9995, 0069)
    /// are refused with a 402 card error and nothing is attached (`../shared/STRIPE.md`, test
    /// cards), so with them a payment can only fail at the client's confirmation.
    pub fn attach_payment_method(
        &mut self,
        customer: &str,
        test_card: &str,
    ) -> Result<String, SimError> {
        let card = Card::from_test_id(test_card)
            .ok_or_else(|| SimError::UnknownCard(test_card.to_owned()))?;
        self.customer(customer)?;
        if let Some(decline) = card.refused_when_attached() {
            return Err(SimError::CardDeclined(decline));
        }
        let id = self.new_payment_method(customer, card);
        self.attach_existing(&id)?;
        Ok(id)
    }

    /// A PaymentMethod made from a test card for this customer, not attached yet (what
    /// Stripe.js creates for a confirmation).
    pub(super) fn new_payment_method(&mut self, customer: &str, card: Card) -> String {
        let id = self.next_id("pm");
        let method = PaymentMethod {
            id: id.clone(),
            customer: customer.to_owned(),
            card,
            created: self.now,
            attached: false,
        };
        self.payment_methods.insert(id.clone(), method);
        id
    }

    /// Attaches a PaymentMethod to its customer (`payment_method.attached`).
    pub(super) fn attach_existing(&mut self, id: &str) -> Result<(), SimError> {
        let method = self
            .payment_methods
            .get_mut(id)
            .ok_or_else(|| not_found("payment_method", id))?;
        method.attached = true;
        let rendered = render::payment_method(method);
        self.emit("payment_method.attached", rendered, None);
        Ok(())
    }

    /// Makes an attached payment method the customer's default.
    pub fn set_default_payment_method(
        &mut self,
        customer: &str,
        payment_method: &str,
    ) -> Result<(), SimError> {
        let owner = self
            .payment_methods
            .get(payment_method)
            .filter(|m| m.attached)
            .map(|m| m.customer.clone());
        if owner.as_deref() != Some(customer) {
            return Err(SimError::Invalid(format!(
                "payment method `{payment_method}` is not attached to customer `{customer}`"
            )));
        }
        let before = self.render_customer(customer)?;
        if let Some(record) = self.customers.get_mut(customer) {
            record.default_payment_method = Some(payment_method.to_owned());
        }
        let after = self.render_customer(customer)?;
        if let Some(previous) = render::previous_attributes(&before, &after) {
            self.emit("customer.updated", after, Some(previous));
        }
        Ok(())
    }

    /// Flips the customer's `delinquent` flag, announced by `customer.updated` as Stripe does
    /// when an invoice's automatic payment fails or an invoice is paid or written off.
    pub(super) fn set_delinquent(
        &mut self,
        customer: &str,
        delinquent: bool,
    ) -> Result<(), SimError> {
        if self.customer(customer)?.delinquent == delinquent {
            return Ok(());
        }
        let before = self.render_customer(customer)?;
        if let Some(record) = self.customers.get_mut(customer) {
            record.delinquent = delinquent;
        }
        let after = self.render_customer(customer)?;
        if let Some(previous) = render::previous_attributes(&before, &after) {
            self.emit("customer.updated", after, Some(previous));
        }
        Ok(())
    }

    pub fn update_customer_metadata(
        &mut self,
        customer: &str,
        metadata: BTreeMap<String, String>,
    ) -> Result<(), SimError> {
        let before = self.render_customer(customer)?;
        if let Some(record) = self.customers.get_mut(customer) {
            record.metadata.extend(metadata);
        }
        let after = self.render_customer(customer)?;
        if let Some(previous) = render::previous_attributes(&before, &after) {
            self.emit("customer.updated", after, Some(previous));
        }
        Ok(())
    }

    pub(super) fn card_of(&self, customer: &str) -> Option<Card> {
        self.method_to_charge(customer, None).map(|(_, card)| card)
    }

    /// The payment method a charge uses, and its card: `explicit` (one the client confirms
    /// with) or else the customer's default.
    pub(super) fn method_to_charge(
        &self,
        customer: &str,
        explicit: Option<String>,
    ) -> Option<(String, Card)> {
        let method =
            explicit.or_else(|| self.customers.get(customer)?.default_payment_method.clone())?;
        let card = self.payment_methods.get(&method)?.card;
        Some((method, card))
    }

    /// `DELETE /v1/customers/{id}`: Stripe cancels the customer's live subscriptions at once
    /// (a `customer.subscription.deleted` each), then sends `customer.deleted` carrying the
    /// customer's last state. A deleted customer stays deleted.
    pub fn delete_customer(&mut self, id: &str) -> Result<(), SimError> {
        if self.customer(id)?.deleted {
            return Err(not_found("customer", id));
        }
        let live: Vec<String> = self
            .subscriptions
            .values()
            .filter(|s| s.customer == id && !s.status.is_ended())
            .map(|s| s.id.clone())
            .collect();
        for subscription in live {
            self.end_subscription(&subscription, SubscriptionStatus::Canceled, None)?;
        }
        let last_state = self.render_customer(id)?;
        if let Some(customer) = self.customers.get_mut(id) {
            customer.deleted = true;
        }
        self.emit("customer.deleted", last_state, None);
        Ok(())
    }
}
