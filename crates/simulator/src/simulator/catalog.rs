//! Prices and products: the account's catalog, and what a subscription's items cost.

use chrono::{DateTime, Months, Utc};

use super::{not_found, SimError, Simulator};
use crate::model::{Interval, InvoiceLine, Price, Subscription};
use crate::render;

impl Simulator {
    /// Creates a recurring price (and its product, named after it).
    pub fn create_price(
        &mut self,
        id: &str,
        unit_amount: i64,
        currency: &str,
        interval: Interval,
        lookup_key: Option<&str>,
    ) -> Result<(), SimError> {
        if self.prices.contains_key(id) {
            return Err(SimError::AlreadyExists(id.to_owned()));
        }
        if unit_amount < 0 {
            return Err(SimError::Invalid(format!(
                "price `{id}` has a negative amount"
            )));
        }
        let price = Price {
            id: id.to_owned(),
            product: format!("prod_{id}"),
            unit_amount,
            currency: currency.to_owned(),
            interval,
            lookup_key: lookup_key.map(str::to_owned),
            created: self.now,
            features: Vec::new(),
        };
        let rendered = render::price(&price);
        self.prices.insert(id.to_owned(), price);
        self.emit("price.created", rendered, None);
        Ok(())
    }

    /// Makes a price created elsewhere in the account usable here, without an event (prices
    /// belong to the account, not to a test clock).
    pub fn register_price(&mut self, price: &Price) {
        self.prices
            .entry(price.id.clone())
            .or_insert_with(|| price.clone());
    }

    pub fn prices_all(&self) -> impl Iterator<Item = &Price> {
        self.prices.values()
    }

    pub fn price_record(&self, id: &str) -> Option<&Price> {
        self.prices.get(id)
    }

    pub(super) fn price(&self, id: &str) -> Result<&Price, SimError> {
        self.prices.get(id).ok_or_else(|| not_found("price", id))
    }

    pub(super) fn period_end(
        &self,
        anchor: DateTime<Utc>,
        interval: Interval,
        periods: u32,
    ) -> DateTime<Utc> {
        anchor
            .checked_add_months(Months::new(interval.months() * periods))
            .unwrap_or(anchor)
    }

    /// What a period of the subscription bills: a line per item at its price and quantity,
    /// and the currency of its prices.
    pub(super) fn lines_of(&self, subscription: &Subscription) -> (Vec<InvoiceLine>, String) {
        let mut currency = "usd".to_owned();
        let lines = subscription
            .items
            .iter()
            .filter_map(|item| {
                let price = self.prices.get(&item.price)?;
                currency.clone_from(&price.currency);
                let quantity = i64::try_from(item.quantity).unwrap_or(i64::MAX);
                Some(InvoiceLine {
                    price: item.price.clone(),
                    quantity: item.quantity,
                    amount: price.unit_amount.saturating_mul(quantity),
                    proration: false,
                    subscription_item: Some(item.id.clone()),
                })
            })
            .collect();
        (lines, currency)
    }

    /// What a period of the subscription costs.
    pub(super) fn amount_of(&self, subscription: &Subscription) -> i64 {
        let (lines, _) = self.lines_of(subscription);
        lines
            .iter()
            .fold(0i64, |total, line| total.saturating_add(line.amount))
    }

    pub(super) fn interval_of(&self, subscription: &Subscription) -> Interval {
        subscription
            .items
            .first()
            .and_then(|item| self.prices.get(&item.price))
            .map_or(Interval::Month, |price| price.interval)
    }
}
