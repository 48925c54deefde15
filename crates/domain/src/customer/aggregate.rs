use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};

use super::{CustomerCommand, CustomerEvent};
use crate::billing::{
    CustomerDetails, DetailsProvenance, InvoiceFacts, Provenance, ScheduleFacts,
    ScheduleProvenance, ScheduleStage, SubscriptionSnapshot, SummaryProvenance,
};
use crate::ids::{InvoiceId, SubscriptionId};

/// A customer's billing account as the recorded facts describe it.
///
/// Stripe is the source of truth, so this aggregate never rejects a fact (a refusal only ever
/// means "not yet": see [`CustomerError`]). Its job is to judge
/// whether a fact is *new*: a duplicate, a fact Stripe has since superseded, or a snapshot equal
/// to what is already known yields no events. That also makes every command idempotent, which
/// is what lets the worker re-run an inbox row after a crash without double-applying it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    /// The customer's metadata, once a `customer.*` event told it.
    details: Option<Tracked<CustomerDetails, DetailsProvenance>>,
    deleted: bool,
    subscriptions: BTreeMap<SubscriptionId, Tracked<SubscriptionSnapshot>>,
    invoices: BTreeMap<InvoiceId, TrackedInvoice>,
    stripe_entitlements: Option<Tracked<BTreeSet<String>, SummaryProvenance>>,
    /// Subscription schedules, by id.
    #[serde(default)]
    schedules: BTreeMap<String, Tracked<ScheduleFacts, ScheduleProvenance>>,
    /// Disputes, by id.
    #[serde(default)]
    disputes: BTreeMap<String, Tracked<crate::billing::DisputeFacts, ()>>,
    /// Operator holds in force, by id.
    holds: BTreeSet<String>,
    /// Every hold id ever placed, so a repeated request is recognised after the lift too.
    #[serde(default)]
    placed_holds: BTreeSet<String>,
    /// Every grant ever given, by id, and whether it was revoked: a repeated request is
    /// recognised by its terms, after a revocation too.
    #[serde(default)]
    grants: BTreeMap<String, (crate::grants::GrantTerms, bool)>,
}

/// A recorded snapshot, the Stripe time it describes, and where it sat in the object's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Tracked<T, P = Provenance> {
    value: T,
    as_of: DateTime<Utc>,
    provenance: P,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TrackedInvoice {
    paid: bool,
    /// Voided or marked uncollectible.
    #[serde(default)]
    written_off: bool,
    /// The Stripe time of the earliest failed attempt recorded, whatever order they came in.
    #[serde(default)]
    first_failed_at: Option<DateTime<Utc>>,
    attempt_count: u32,
    #[serde(default)]
    subscription: Option<SubscriptionId>,
}

/// What the `Customer` aggregate refuses. Operators' requests can be wrong; a Stripe fact is
/// only ever refused for now, until what it needs is known (`UnknownInvoice`: retried) or
/// Stripe has been asked (`OrderUndecided`: the worker fetches the object).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustomerError {
    #[error("no hold `{0}` is in force")]
    NoSuchHold(String),
    #[error("no grant `{0}` was given")]
    NoSuchGrant(String),
    /// The grant id is taken by other terms, or by a grant since revoked.
    #[error("grant `{id}` was given with other terms{}", if *.revoked { " and has been revoked" } else { "" })]
    GrantConflict { id: String, revoked: bool },
    #[error("the customer has no subscription `{0}`")]
    NoSuchSubscription(String),
    /// A fact about an invoice Subledger has not heard of yet: retried later, in order.
    #[error("invoice `{0}` is not known yet")]
    UnknownInvoice(String),
    /// Two snapshots of one object from the same second, and nothing in either event tells
    /// which came later: the worker settles it with Stripe's current object.
    #[error("cannot tell which of two snapshots of {object} from {second} is newer")]
    OrderUndecided {
        object: TiedObject,
        second: DateTime<Utc>,
    },
}

/// The object whose same-second snapshots could not be ordered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TiedObject {
    /// The customer's own details.
    Customer,
    Subscription(SubscriptionId),
    /// The customer's active features by Stripe's Entitlements API.
    StripeEntitlements,
    Schedule(String),
}

impl std::fmt::Display for TiedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Customer => f.write_str("the customer's details"),
            Self::Subscription(id) => write!(f, "subscription `{id}`"),
            Self::StripeEntitlements => f.write_str("the customer's Stripe entitlements"),
            Self::Schedule(id) => write!(f, "subscription schedule `{id}`"),
        }
    }
}

impl Customer {
    fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerEvent>, CustomerError> {
        if let CustomerCommand::PlaceHold {
            subscription: Some(subscription),
            ..
        } = &command
        {
            if !self.subscriptions.contains_key(subscription) {
                return Err(CustomerError::NoSuchSubscription(subscription.to_string()));
            }
        }
        match command {
            CustomerCommand::PlaceHold {
                hold_id,
                subscription,
                reason,
                covers_grants,
                placed_at,
            } => {
                // The same request twice places one hold.
                if self.placed_holds.contains(&hold_id) {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::HoldPlaced {
                    hold_id,
                    // Only a customer-wide hold reaches the customer's grants.
                    covers_grants: covers_grants && subscription.is_none(),
                    subscription,
                    reason,
                    occurred_at: placed_at,
                }])
            }
            CustomerCommand::GiveGrant { grant } => self.decide_grant(grant),
            CustomerCommand::RevokeGrant {
                grant_id,
                revoked_by,
                revoked_at,
            } => match self.grants.get(&grant_id) {
                None => Err(CustomerError::NoSuchGrant(grant_id)),
                // Revoking twice revokes once.
                Some((_, true)) => Ok(vec![]),
                Some((_, false)) => Ok(vec![CustomerEvent::GrantRevoked {
                    grant_id,
                    revoked_by,
                    occurred_at: revoked_at,
                }]),
            },
            CustomerCommand::RecordDispute {
                dispute,
                occurred_at,
            } => {
                // The disputed invoice scopes the dispute to its subscription; until that
                // invoice is known the dispute is parked (retried), never misattributed.
                let subscription = match &dispute.invoice {
                    Some(invoice) => match self.invoices.get(invoice) {
                        Some(known) => known.subscription.clone(),
                        None => return Err(CustomerError::UnknownInvoice(invoice.to_string())),
                    },
                    None => None,
                };
                let known = self.disputes.get(&dispute.id);
                // News: a later state, or the invoice that scopes it (which may arrive after the
                // dispute closed, when Stripe delivered the link late).
                let gains_invoice =
                    known.is_some_and(|k| k.value.invoice.is_none() && dispute.invoice.is_some());
                let stale = known.is_some_and(|k| {
                    let older = occurred_at < k.as_of
                        || occurred_at == k.as_of && dispute.precedes(&k.value);
                    k.value == dispute || (k.value.is_closed() || older) && !gains_invoice
                });
                if stale {
                    return Ok(vec![]);
                }
                Ok(vec![CustomerEvent::DisputeRecorded {
                    dispute,
                    subscription,
                    occurred_at,
                }])
            }
            CustomerCommand::LiftHold { hold_id, lifted_at } => {
                if !self.holds.contains(&hold_id) {
                    return Err(CustomerError::NoSuchHold(hold_id));
                }
                Ok(vec![CustomerEvent::HoldLifted {
                    hold_id,
                    occurred_at: lifted_at,
                }])
            }
            CustomerCommand::RecordSubscription {
                subscription,
                occurred_at,
                provenance,
            } => self.decide_subscription(subscription, occurred_at, provenance),
            CustomerCommand::RecordDetails {
                metadata,
                email,
                occurred_at,
                provenance,
            } => self.decide_details(CustomerDetails { metadata, email }, occurred_at, provenance),
            CustomerCommand::RecordStripeEntitlements {
                features,
                occurred_at,
                provenance,
            } => self.decide_summary(features, occurred_at, provenance),
            CustomerCommand::RecordSchedule {
                schedule,
                occurred_at,
                provenance,
            } => self.decide_schedule(schedule, occurred_at, provenance),
            command => Ok(self.decide_fact(command)),
        }
    }

    /// A grant is given once: the same id with the same terms again is a retry, with other
    /// terms (or after it was revoked) a conflict. One scoped to a subscription needs a
    /// subscription of the customer's that has not ended.
    fn decide_grant(
        &self,
        grant: crate::grants::CustomerGrant,
    ) -> Result<Vec<CustomerEvent>, CustomerError> {
        if let Some((terms, revoked)) = self.grants.get(&grant.id) {
            if *terms == grant.terms && !revoked {
                return Ok(vec![]);
            }
            return Err(CustomerError::GrantConflict {
                id: grant.id,
                revoked: *revoked,
            });
        }
        if let Some(subscription) = &grant.terms.subscription {
            let live = self
                .subscriptions
                .get(subscription)
                .is_some_and(|known| !known.value.status.is_terminal());
            if !live {
                return Err(CustomerError::NoSuchSubscription(subscription.to_string()));
            }
        }
        let occurred_at = grant.granted_at;
        Ok(vec![CustomerEvent::GrantGiven { grant, occurred_at }])
    }

    fn decide_fact(&self, command: CustomerCommand) -> Vec<CustomerEvent> {
        match command {
            CustomerCommand::RecordDeletion { occurred_at } => {
                if self.deleted {
                    return vec![];
                }
                vec![CustomerEvent::CustomerDeleted { occurred_at }]
            }
            CustomerCommand::RecordInvoicePaid {
                invoice,
                occurred_at,
            } => {
                // `invoice.paid` and `invoice.payment_succeeded` describe one payment: count it once.
                if self
                    .invoices
                    .get(&invoice.id)
                    .is_some_and(|known| known.paid)
                {
                    return vec![];
                }
                vec![CustomerEvent::InvoicePaid {
                    invoice,
                    occurred_at,
                }]
            }
            CustomerCommand::PlaceHold { .. }
            | CustomerCommand::LiftHold { .. }
            | CustomerCommand::GiveGrant { .. }
            | CustomerCommand::RevokeGrant { .. }
            | CustomerCommand::RecordDetails { .. }
            | CustomerCommand::RecordStripeEntitlements { .. }
            | CustomerCommand::RecordSchedule { .. }
            | CustomerCommand::RecordSubscription { .. }
            | CustomerCommand::RecordDispute { .. } => vec![],
            CustomerCommand::RecordInvoicePaymentFailed {
                invoice,
                occurred_at,
            } => {
                // A failure reported after the payment succeeded, or an attempt already
                // recorded, is old news; an earlier attempt delivered late is not: it says
                // since when payment has been owed.
                let known = self.invoices.get(&invoice.id);
                if known.is_some_and(|known| {
                    known.paid
                        || known.written_off
                        || known.attempt_count >= invoice.attempt_count
                            && known
                                .first_failed_at
                                .is_some_and(|first| first <= occurred_at)
                }) {
                    return vec![];
                }
                vec![CustomerEvent::InvoicePaymentFailed {
                    invoice,
                    occurred_at,
                }]
            }
            CustomerCommand::RecordInvoiceWrittenOff {
                invoice,
                outcome,
                occurred_at,
            } => {
                // Once paid or written off, an invoice is settled either way: the same news
                // twice, or a write-off reported after the payment, changes nothing.
                if self
                    .invoices
                    .get(&invoice.id)
                    .is_some_and(|known| known.paid || known.written_off)
                {
                    return vec![];
                }
                vec![CustomerEvent::InvoiceWrittenOff {
                    invoice,
                    outcome,
                    occurred_at,
                }]
            }
        }
    }

    /// The customer's details: see [`judge`].
    fn decide_details(
        &self,
        details: CustomerDetails,
        occurred_at: DateTime<Utc>,
        provenance: DetailsProvenance,
    ) -> Result<Vec<CustomerEvent>, CustomerError> {
        if self.deleted {
            return Ok(vec![]);
        }
        let known = self.details.as_ref();
        let news = is_news(known, &details, occurred_at, &provenance, |_| None).ok_or(
            CustomerError::OrderUndecided {
                object: TiedObject::Customer,
                second: occurred_at,
            },
        )?;
        Ok(news
            .then_some(CustomerEvent::DetailsRecorded {
                metadata: details.metadata,
                email: details.email,
                occurred_at,
                provenance,
            })
            .into_iter()
            .collect())
    }

    /// Stripe Entitlements summaries, each the customer's whole list: see [`judge`].
    fn decide_summary(
        &self,
        features: BTreeSet<String>,
        occurred_at: DateTime<Utc>,
        provenance: SummaryProvenance,
    ) -> Result<Vec<CustomerEvent>, CustomerError> {
        let known = self.stripe_entitlements.as_ref();
        let news = is_news(known, &features, occurred_at, &provenance, |_| None).ok_or(
            CustomerError::OrderUndecided {
                object: TiedObject::StripeEntitlements,
                second: occurred_at,
            },
        )?;
        Ok(news
            .then_some(CustomerEvent::StripeEntitlementsRecorded {
                features,
                occurred_at,
                provenance,
            })
            .into_iter()
            .collect())
    }

    /// A schedule's snapshots: see [`judge`]; an ended schedule changes nothing any more, and
    /// within one second its stage (not started, active, ended) is evidence too.
    fn decide_schedule(
        &self,
        schedule: ScheduleFacts,
        occurred_at: DateTime<Utc>,
        provenance: ScheduleProvenance,
    ) -> Result<Vec<CustomerEvent>, CustomerError> {
        let known = self.schedules.get(&schedule.id);
        if known.is_some_and(|k| k.value.stage == ScheduleStage::Ended) {
            return Ok(vec![]);
        }
        let by_stage = |known: &ScheduleFacts| {
            (schedule.stage != known.stage).then_some(schedule.stage > known.stage)
        };
        let news =
            is_news(known, &schedule, occurred_at, &provenance, by_stage).ok_or_else(|| {
                CustomerError::OrderUndecided {
                    object: TiedObject::Schedule(schedule.id.clone()),
                    second: occurred_at,
                }
            })?;
        Ok(news
            .then_some(CustomerEvent::ScheduleRecorded {
                schedule,
                occurred_at,
                provenance,
            })
            .into_iter()
            .collect())
    }

    /// A subscription's snapshots: see [`judge`]; an ended subscription never comes back, and
    /// within one second Stripe's legal status transitions are evidence too.
    fn decide_subscription(
        &self,
        subscription: SubscriptionSnapshot,
        occurred_at: DateTime<Utc>,
        provenance: Provenance,
    ) -> Result<Vec<CustomerEvent>, CustomerError> {
        let known = self.subscriptions.get(&subscription.id);
        if known.is_some_and(|k| k.value.status.is_terminal()) {
            return Ok(vec![]);
        }
        let by_status = |known: &SubscriptionSnapshot| {
            let (from, to) = (known.status, subscription.status);
            match (from.can_become(to), to.can_become(from)) {
                (true, false) => Some(true),
                (false, true) => Some(false),
                _ => None,
            }
        };
        let news = is_news(known, &subscription, occurred_at, &provenance, by_status).ok_or_else(
            || CustomerError::OrderUndecided {
                object: TiedObject::Subscription(subscription.id.clone()),
                second: occurred_at,
            },
        )?;
        if !news {
            return Ok(vec![]);
        }
        let event = if subscription.status.is_terminal() {
            CustomerEvent::SubscriptionEnded {
                subscription,
                occurred_at,
                provenance,
            }
        } else if known.is_some() {
            CustomerEvent::SubscriptionChanged {
                subscription,
                occurred_at,
                provenance,
            }
        } else {
            CustomerEvent::SubscriptionStarted {
                subscription,
                occurred_at,
                provenance,
            }
        };
        Ok(vec![event])
    }

    fn track_invoice(&mut self, invoice: &InvoiceFacts, paid: bool) {
        let entry = self
            .invoices
            .entry(invoice.id.clone())
            .or_insert(TrackedInvoice {
                paid: false,
                written_off: false,
                first_failed_at: None,
                attempt_count: 0,
                subscription: None,
            });
        if entry.subscription.is_none() {
            entry.subscription.clone_from(&invoice.subscription_id);
        }
        entry.paid |= paid;
        entry.attempt_count = entry.attempt_count.max(invoice.attempt_count);
    }
}

/// What an event says about where its snapshot sits in the object's history.
trait History<T> {
    /// The object's creation: its first state.
    fn creation(&self) -> bool;
    /// Fetched from Stripe's API to settle a same-second tie: Stripe's answer for the second.
    fn fetched(&self) -> bool;
    /// Whether the change moved the object away from `state`, by `previous_attributes`;
    /// `None` when the event does not say.
    fn moved_away_from(&self, state: &T) -> Option<bool>;
}

impl History<SubscriptionSnapshot> for Provenance {
    fn creation(&self) -> bool {
        self.creation
    }
    fn fetched(&self) -> bool {
        self.fetched
    }
    fn moved_away_from(&self, state: &SubscriptionSnapshot) -> Option<bool> {
        Provenance::moved_away_from(self, state)
    }
}

impl History<CustomerDetails> for DetailsProvenance {
    fn creation(&self) -> bool {
        self.creation
    }
    fn fetched(&self) -> bool {
        self.fetched
    }
    fn moved_away_from(&self, state: &CustomerDetails) -> Option<bool> {
        DetailsProvenance::moved_away_from(self, state)
    }
}

impl History<ScheduleFacts> for ScheduleProvenance {
    fn creation(&self) -> bool {
        self.creation
    }
    fn fetched(&self) -> bool {
        self.fetched
    }
    /// A schedule event's `previous_attributes` (phases, mostly) are not read.
    fn moved_away_from(&self, _: &ScheduleFacts) -> Option<bool> {
        None
    }
}

impl History<BTreeSet<String>> for SummaryProvenance {
    fn creation(&self) -> bool {
        false
    }
    fn fetched(&self) -> bool {
        self.fetched
    }
    fn moved_away_from(&self, state: &BTreeSet<String>) -> Option<bool> {
        SummaryProvenance::moved_away_from(self, state)
    }
}

/// Whether `incoming` (a whole snapshot of an object, from an event of Stripe second
/// `occurred_at`) is news next to the known one, by Stripe's facts alone:
/// - an older second is no news, a later one is;
/// - a creation is the first state, so nothing known is older than it;
/// - the same snapshot again is no news, except a fetched one, which settles its second so
///   that later arrivals from it need no fetch, and one whose change started from a state
///   other than the known one: the second half of a set-and-undo delivered first, kept for
///   what its `previous_attributes` will say about the first half, and a return to the known
///   state at a later second (A, B, A again), which a redelivery of the first change to A is
///   not (same second, same `previous_attributes`): recorded so that the known state is
///   dated by it, and B from that later second cannot pass for newer;
/// - within one second: a fetched snapshot follows every event from it; a change follows the
///   state its `previous_attributes` name; else `no_clue` (the object's own rules, such as
///   legal status transitions).
///
/// `None` when nothing decides, including two changes that each claim to have moved away from
/// the other: arrival order is no evidence, so the caller asks Stripe. A tie between two equal
/// snapshots is no tie: whichever came last, the object is the same, so nothing is asked
/// (`customer.subscription.resumed` and `.updated` carry one object, for instance).
fn judge<T: PartialEq, P: History<T> + PartialEq>(
    known: &Tracked<T, P>,
    incoming: &T,
    occurred_at: DateTime<Utc>,
    provenance: &P,
    no_clue: impl FnOnce(&T) -> Option<bool>,
) -> Option<bool> {
    let settles = provenance.fetched() && !known.provenance.fetched();
    let skipped_a_state = provenance.moved_away_from(&known.value) == Some(false)
        && (known.provenance != *provenance || occurred_at != known.as_of);
    if provenance.creation() || known.value == *incoming && !settles && !skipped_a_state {
        return Some(false);
    }
    if occurred_at != known.as_of {
        return Some(occurred_at > known.as_of);
    }
    if known.provenance.fetched() {
        return Some(provenance.fetched());
    }
    if provenance.fetched() || known.provenance.creation() {
        return Some(true);
    }
    let incoming_follows = provenance.moved_away_from(&known.value) == Some(true);
    let known_follows = known.provenance.moved_away_from(incoming) == Some(true);
    let decided = match (incoming_follows, known_follows) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        (true, true) => None,
        (false, false) => no_clue(&known.value),
    };
    decided.or_else(|| (known.value == *incoming).then_some(false))
}

/// [`judge`] for a snapshot of an object that may not be known yet (then it is news).
fn is_news<T: PartialEq, P: History<T> + PartialEq>(
    known: Option<&Tracked<T, P>>,
    incoming: &T,
    occurred_at: DateTime<Utc>,
    provenance: &P,
    no_clue: impl FnOnce(&T) -> Option<bool>,
) -> Option<bool> {
    known.map_or(Some(true), |known| {
        judge(known, incoming, occurred_at, provenance, no_clue)
    })
}

impl Aggregate for Customer {
    const TYPE: &'static str = "Customer";
    type Command = CustomerCommand;
    type Event = CustomerEvent;
    type Error = CustomerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CustomerEvent::DetailsRecorded {
                metadata,
                email,
                occurred_at,
                provenance,
            } => {
                self.details = Some(Tracked {
                    value: CustomerDetails { metadata, email },
                    as_of: occurred_at,
                    provenance,
                });
            }
            CustomerEvent::CustomerDeleted { .. } => self.deleted = true,
            CustomerEvent::SubscriptionStarted {
                subscription,
                occurred_at,
                provenance,
            }
            | CustomerEvent::SubscriptionChanged {
                subscription,
                occurred_at,
                provenance,
            }
            | CustomerEvent::SubscriptionEnded {
                subscription,
                occurred_at,
                provenance,
            } => {
                self.subscriptions.insert(
                    subscription.id.clone(),
                    Tracked {
                        value: subscription,
                        as_of: occurred_at,
                        provenance,
                    },
                );
            }
            CustomerEvent::StripeEntitlementsRecorded {
                features,
                occurred_at,
                provenance,
            } => {
                self.stripe_entitlements = Some(Tracked {
                    value: features,
                    as_of: occurred_at,
                    provenance,
                });
            }
            CustomerEvent::HoldPlaced { hold_id, .. } => {
                self.holds.insert(hold_id.clone());
                self.placed_holds.insert(hold_id);
            }
            CustomerEvent::HoldLifted { hold_id, .. } => {
                self.holds.remove(&hold_id);
            }
            CustomerEvent::GrantGiven { grant, .. } => {
                self.grants.insert(grant.id, (grant.terms, false));
            }
            CustomerEvent::GrantRevoked { grant_id, .. } => {
                if let Some((_, revoked)) = self.grants.get_mut(&grant_id) {
                    *revoked = true;
                }
            }
            CustomerEvent::ScheduleRecorded {
                schedule,
                occurred_at,
                provenance,
            } => {
                self.schedules.insert(
                    schedule.id.clone(),
                    Tracked {
                        value: schedule,
                        as_of: occurred_at,
                        provenance,
                    },
                );
            }
            CustomerEvent::DisputeRecorded {
                dispute,
                occurred_at,
                ..
            } => {
                self.disputes.insert(
                    dispute.id.clone(),
                    Tracked {
                        value: dispute,
                        as_of: occurred_at,
                        provenance: (),
                    },
                );
            }
            CustomerEvent::InvoicePaid { invoice, .. } => self.track_invoice(&invoice, true),
            CustomerEvent::InvoicePaymentFailed {
                invoice,
                occurred_at,
            } => {
                self.track_invoice(&invoice, false);
                if let Some(known) = self.invoices.get_mut(&invoice.id) {
                    known.first_failed_at = Some(
                        known
                            .first_failed_at
                            .map_or(occurred_at, |first| first.min(occurred_at)),
                    );
                }
            }
            CustomerEvent::InvoiceWrittenOff { invoice, .. } => {
                self.track_invoice(&invoice, false);
                if let Some(known) = self.invoices.get_mut(&invoice.id) {
                    known.written_off = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::billing::Provenance;
    use crate::billing::{SubscriptionItem, SubscriptionStatus, Was};
    use crate::ids::{CustomerId, PriceId};
    use crate::money::Money;

    type CustomerTest = TestFramework<Customer>;

    fn at(second: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + second, 0).unwrap()
    }

    fn subscription(status: SubscriptionStatus, price: &str) -> SubscriptionSnapshot {
        SubscriptionSnapshot {
            id: SubscriptionId::new("sub_1"),
            customer_id: CustomerId::new("cus_1"),
            status,
            items: vec![SubscriptionItem {
                price_id: PriceId::new(price),
                lookup_key: None,
                quantity: 1,
            }],
            cancel_at_period_end: false,
            cancel_at: None,
            current_period_end: None,
            trial_end: None,
            pending_update_invoice: None,
            started_at: None,
        }
    }

    fn invoice(attempt_count: u32) -> InvoiceFacts {
        InvoiceFacts {
            id: InvoiceId::new("in_1"),
            subscription_id: Some(SubscriptionId::new("sub_1")),
            amount_due: Money::new(2000, "usd"),
            amount_paid: Money::new(0, "usd"),
            attempt_count,
            next_payment_attempt: None,
        }
    }

    fn started(status: SubscriptionStatus, price: &str, second: i64) -> CustomerEvent {
        CustomerEvent::SubscriptionStarted {
            subscription: subscription(status, price),
            occurred_at: at(second),
            provenance: Provenance::default(),
        }
    }

    #[test]
    fn it_starts_a_subscription_it_has_not_seen() {
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(0),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![started(SubscriptionStatus::Active, "price_pro", 0)]);
    }

    #[test]
    fn it_records_a_plan_change() {
        CustomerTest::with(())
            .given(vec![started(SubscriptionStatus::Active, "price_basic", 0)])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(10),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![CustomerEvent::SubscriptionChanged {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(10),
                provenance: Provenance::default(),
            }]);
    }

    #[test]
    fn it_ignores_a_snapshot_older_than_the_one_it_has() {
        CustomerTest::with(())
            .given(vec![started(SubscriptionStatus::Active, "price_pro", 10)])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Incomplete, "price_pro"),
                occurred_at: at(5),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_applies_a_different_snapshot_from_the_same_second() {
        CustomerTest::with(())
            .given(vec![started(
                SubscriptionStatus::Incomplete,
                "price_pro",
                10,
            )])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(10),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![CustomerEvent::SubscriptionChanged {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(10),
                provenance: Provenance::default(),
            }]);
    }

    #[test]
    fn it_ignores_a_duplicate_snapshot() {
        CustomerTest::with(())
            .given(vec![started(SubscriptionStatus::Active, "price_pro", 10)])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(12),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_ends_a_subscription_when_stripe_cancels_it() {
        CustomerTest::with(())
            .given(vec![started(SubscriptionStatus::Active, "price_pro", 0)])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Canceled, "price_pro"),
                occurred_at: at(20),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![CustomerEvent::SubscriptionEnded {
                subscription: subscription(SubscriptionStatus::Canceled, "price_pro"),
                occurred_at: at(20),
                provenance: Provenance::default(),
            }]);
    }

    #[test]
    fn it_never_resurrects_an_ended_subscription() {
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionEnded {
                subscription: subscription(SubscriptionStatus::Canceled, "price_pro"),
                occurred_at: at(20),
                provenance: Provenance::default(),
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(30),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_counts_a_paid_invoice_once() {
        let paid = CustomerEvent::InvoicePaid {
            invoice: invoice(1),
            occurred_at: at(0),
        };
        CustomerTest::with(())
            .given(vec![paid])
            .when(CustomerCommand::RecordInvoicePaid {
                invoice: invoice(1),
                occurred_at: at(0),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_records_each_new_failed_attempt_but_not_a_repeat() {
        let failed = |attempt| CustomerEvent::InvoicePaymentFailed {
            invoice: invoice(attempt),
            occurred_at: at(0),
        };
        CustomerTest::with(())
            .given(vec![failed(1)])
            .when(CustomerCommand::RecordInvoicePaymentFailed {
                invoice: invoice(2),
                occurred_at: at(0),
            })
            .then_expect_events(vec![failed(2)]);
        CustomerTest::with(())
            .given(vec![failed(2)])
            .when(CustomerCommand::RecordInvoicePaymentFailed {
                invoice: invoice(1),
                occurred_at: at(0),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_earlier_attempt_delivered_late_is_recorded_for_when_the_debt_began() {
        let failed = |attempt, second| CustomerEvent::InvoicePaymentFailed {
            invoice: invoice(attempt),
            occurred_at: at(second),
        };
        CustomerTest::with(())
            .given(vec![failed(2, 9)])
            .when(CustomerCommand::RecordInvoicePaymentFailed {
                invoice: invoice(1),
                occurred_at: at(3),
            })
            .then_expect_events(vec![failed(1, 3)]);
        CustomerTest::with(())
            .given(vec![failed(2, 9), failed(1, 3)])
            .when(CustomerCommand::RecordInvoicePaymentFailed {
                invoice: invoice(1),
                occurred_at: at(3),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_ignores_a_failure_reported_after_the_invoice_was_paid() {
        CustomerTest::with(())
            .given(vec![CustomerEvent::InvoicePaid {
                invoice: invoice(1),
                occurred_at: at(5),
            }])
            .when(CustomerCommand::RecordInvoicePaymentFailed {
                invoice: invoice(2),
                occurred_at: at(9),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_written_off_invoice_is_settled_whichever_news_arrives_next() {
        let written_off = CustomerEvent::InvoiceWrittenOff {
            invoice: invoice(1),
            outcome: crate::billing::WriteOff::Void,
            occurred_at: at(5),
        };
        // A failure delivered after the void is old news, and so is the void again.
        CustomerTest::with(())
            .given(vec![written_off.clone()])
            .when(CustomerCommand::RecordInvoicePaymentFailed {
                invoice: invoice(2),
                occurred_at: at(3),
            })
            .then_expect_events(vec![]);
        CustomerTest::with(())
            .given(vec![written_off.clone()])
            .when(CustomerCommand::RecordInvoiceWrittenOff {
                invoice: invoice(1),
                outcome: crate::billing::WriteOff::Uncollectible,
                occurred_at: at(6),
            })
            .then_expect_events(vec![]);
        // After failures it is news, once.
        CustomerTest::with(())
            .given(vec![CustomerEvent::InvoicePaymentFailed {
                invoice: invoice(2),
                occurred_at: at(3),
            }])
            .when(CustomerCommand::RecordInvoiceWrittenOff {
                invoice: invoice(1),
                outcome: crate::billing::WriteOff::Void,
                occurred_at: at(5),
            })
            .then_expect_events(vec![written_off]);
    }

    #[test]
    fn it_ignores_details_after_the_customer_was_deleted() {
        CustomerTest::with(())
            .given(vec![CustomerEvent::CustomerDeleted { occurred_at: at(5) }])
            .when(CustomerCommand::RecordDetails {
                metadata: BTreeMap::from([("user_id".to_owned(), "u1".to_owned())]),
                email: None,
                occurred_at: at(9),
                provenance: DetailsProvenance::default(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn it_records_details_the_first_time_even_when_empty() {
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::RecordDetails {
                metadata: BTreeMap::new(),
                email: None,
                occurred_at: at(1),
                provenance: created(),
            })
            .then_expect_events(vec![CustomerEvent::DetailsRecorded {
                metadata: BTreeMap::new(),
                email: None,
                occurred_at: at(1),
                provenance: created(),
            }]);
    }

    fn created() -> DetailsProvenance {
        DetailsProvenance {
            creation: true,
            ..DetailsProvenance::default()
        }
    }

    fn user(id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("user_id".to_owned(), id.to_owned())])
    }

    fn changed_from(user_id: &str) -> DetailsProvenance {
        DetailsProvenance {
            previous_metadata: Some(BTreeMap::from([(
                "user_id".to_owned(),
                Some(user_id.to_owned()),
            )])),
            ..DetailsProvenance::default()
        }
    }

    #[test]
    fn same_second_details_follow_the_state_their_change_started_from() {
        // u1 -> u2 -> u3 in one second, the last change delivered first.
        let latest = CustomerEvent::DetailsRecorded {
            metadata: user("u3"),
            email: None,
            occurred_at: at(4),
            provenance: changed_from("u2"),
        };
        CustomerTest::with(())
            .given(vec![latest.clone()])
            .when(CustomerCommand::RecordDetails {
                metadata: user("u2"),
                email: None,
                occurred_at: at(4),
                provenance: changed_from("u1"),
            })
            .then_expect_events(vec![]);
        // A creation from that second is older than anything known.
        CustomerTest::with(())
            .given(vec![latest])
            .when(CustomerCommand::RecordDetails {
                metadata: user("u0"),
                email: None,
                occurred_at: at(4),
                provenance: created(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn same_second_email_changes_follow_the_email_they_started_from() {
        // a@ -> b@ -> c@ in one second, metadata untouched, the last change delivered first:
        // `previous_attributes.email` orders them as metadata does.
        let email_from = |was: Option<&str>| DetailsProvenance {
            previous_email: Some(Was {
                was: was.map(str::to_owned),
            }),
            ..DetailsProvenance::default()
        };
        let latest = CustomerEvent::DetailsRecorded {
            metadata: user("u1"),
            email: Some("c@example.com".to_owned()),
            occurred_at: at(4),
            provenance: email_from(Some("b@example.com")),
        };
        CustomerTest::with(())
            .given(vec![latest.clone()])
            .when(CustomerCommand::RecordDetails {
                metadata: user("u1"),
                email: Some("b@example.com".to_owned()),
                occurred_at: at(4),
                provenance: email_from(Some("a@example.com")),
            })
            .then_expect_events(vec![]);
        // Delivered in order, the second change is news; an email first set is too.
        let first = CustomerEvent::DetailsRecorded {
            metadata: user("u1"),
            email: None,
            occurred_at: at(4),
            provenance: created(),
        };
        let set = CustomerCommand::RecordDetails {
            metadata: user("u1"),
            email: Some("a@example.com".to_owned()),
            occurred_at: at(4),
            provenance: email_from(None),
        };
        CustomerTest::with(())
            .given(vec![first])
            .when(set)
            .then_expect_events(vec![CustomerEvent::DetailsRecorded {
                metadata: user("u1"),
                email: Some("a@example.com".to_owned()),
                occurred_at: at(4),
                provenance: email_from(None),
            }]);
    }

    #[test]
    fn same_second_details_nothing_orders_are_refused_for_the_worker_to_fetch() {
        // u1 -> u2 and u2 -> u1 in one second.
        CustomerTest::with(())
            .given(vec![CustomerEvent::DetailsRecorded {
                metadata: user("u2"),
                email: None,
                occurred_at: at(4),
                provenance: changed_from("u1"),
            }])
            .when(CustomerCommand::RecordDetails {
                metadata: user("u1"),
                email: None,
                occurred_at: at(4),
                provenance: changed_from("u2"),
            })
            .then_expect_error(CustomerError::OrderUndecided {
                object: TiedObject::Customer,
                second: at(4),
            });
    }

    #[test]
    fn same_second_equal_details_with_different_histories_are_no_tie() {
        // Two `customer.updated` of one second that end in the same metadata (one also
        // flipped `delinquent`, which Subledger does not keep): whichever came last, the
        // details are the same, so there is nothing to ask Stripe.
        CustomerTest::with(())
            .given(vec![CustomerEvent::DetailsRecorded {
                metadata: user("u2"),
                email: None,
                occurred_at: at(4),
                provenance: changed_from("u1"),
            }])
            .when(CustomerCommand::RecordDetails {
                metadata: user("u2"),
                email: None,
                occurred_at: at(4),
                provenance: changed_from("u3"),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn same_second_equal_subscriptions_with_different_histories_are_no_tie() {
        use SubscriptionStatus::{Active, PastDue, Paused};
        // A failed resume: `resumed` (paused -> past_due) and an `updated` of the same second
        // that names another earlier status, with one object. Either order, no fetch.
        for (known, incoming) in [(Paused, Active), (Active, Paused)] {
            CustomerTest::with(())
                .given(vec![CustomerEvent::SubscriptionChanged {
                    subscription: subscription(PastDue, "price_pro"),
                    occurred_at: at(9),
                    provenance: from_status(known),
                }])
                .when(CustomerCommand::RecordSubscription {
                    subscription: subscription(PastDue, "price_pro"),
                    occurred_at: at(9),
                    provenance: from_status(incoming),
                })
                .then_expect_events(vec![]);
        }
    }

    fn from_status(previous: SubscriptionStatus) -> Provenance {
        Provenance {
            creation: false,
            previous_status: Some(previous),
            previous: Default::default(),
            fetched: false,
        }
    }

    const CREATION: Provenance = Provenance {
        creation: true,
        previous_status: None,
        previous: crate::billing::PreviousFields {
            cancel_at_period_end: None,
            cancel_at: None,
            price_ids: None,
            quantities: None,
        },
        fetched: false,
    };

    #[test]
    fn a_creation_delivered_after_an_update_from_the_same_second_is_stale() {
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionStarted {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(0),
                provenance: from_status(SubscriptionStatus::Incomplete),
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Incomplete, "price_pro"),
                occurred_at: at(0),
                provenance: CREATION,
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_update_from_the_known_status_in_the_same_second_applies() {
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionStarted {
                subscription: subscription(SubscriptionStatus::Incomplete, "price_pro"),
                occurred_at: at(0),
                provenance: CREATION,
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(0),
                provenance: from_status(SubscriptionStatus::Incomplete),
            })
            .then_expect_events(vec![CustomerEvent::SubscriptionChanged {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(0),
                provenance: from_status(SubscriptionStatus::Incomplete),
            }]);
    }

    #[test]
    fn a_same_second_snapshot_the_known_change_moved_away_from_is_stale() {
        // Renewal: the period moves (status stays active), then the payment fails
        // (active -> past_due), both in one second, delivered in reverse.
        let mut renewed = subscription(SubscriptionStatus::Active, "price_pro");
        renewed.cancel_at_period_end = false;
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionChanged {
                subscription: subscription(SubscriptionStatus::PastDue, "price_pro"),
                occurred_at: at(50),
                provenance: from_status(SubscriptionStatus::Active),
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: renewed,
                occurred_at: at(50),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn legal_transitions_order_same_second_snapshots_without_other_clues() {
        // past_due can become active, but incomplete_expired can never be left.
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionChanged {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(7),
                provenance: Provenance::default(),
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Incomplete, "price_pro"),
                occurred_at: at(7),
                provenance: Provenance::default(),
            })
            .then_expect_events(vec![]);
    }

    fn with_quantity(quantity: u64) -> SubscriptionSnapshot {
        let mut snapshot = subscription(SubscriptionStatus::Active, "price_pro");
        snapshot.items[0].quantity = quantity;
        snapshot
    }

    fn from_quantity(quantity: u64) -> Provenance {
        Provenance {
            previous: crate::billing::PreviousFields {
                quantities: Some(vec![quantity]),
                ..Default::default()
            },
            ..Provenance::default()
        }
    }

    #[test]
    fn same_second_quantity_changes_are_ordered_by_the_quantity_each_moved_from() {
        // 1 -> 2 -> 3 in one second, the second change delivered first.
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionChanged {
                subscription: with_quantity(3),
                occurred_at: at(9),
                provenance: from_quantity(2),
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: with_quantity(2),
                occurred_at: at(9),
                provenance: from_quantity(1),
            })
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_same_second_tie_nothing_orders_is_refused_for_the_worker_to_fetch() {
        // 1 -> 2 and 2 -> 1 in one second: each moved away from the other's state.
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionChanged {
                subscription: with_quantity(2),
                occurred_at: at(9),
                provenance: from_quantity(1),
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: with_quantity(1),
                occurred_at: at(9),
                provenance: from_quantity(2),
            })
            .then_expect_error(CustomerError::OrderUndecided {
                object: TiedObject::Subscription(SubscriptionId::new("sub_1")),
                second: at(9),
            });
    }

    #[test]
    fn transitions_stripe_makes_both_ways_leave_a_bare_same_second_pair_to_stripe() {
        use SubscriptionStatus::{Active, PastDue, Paused, Trialing};
        // active -> trialing (a trial added to a running subscription) and paused -> past_due
        // (a resume whose payment fails) are Stripe's as much as the reverse: without
        // previous_attributes, status alone no longer decides, and Stripe is asked.
        for (known, incoming) in [(Active, Trialing), (Paused, PastDue)] {
            CustomerTest::with(())
                .given(vec![CustomerEvent::SubscriptionChanged {
                    subscription: subscription(known, "price_pro"),
                    occurred_at: at(9),
                    provenance: Provenance::default(),
                }])
                .when(CustomerCommand::RecordSubscription {
                    subscription: subscription(incoming, "price_pro"),
                    occurred_at: at(9),
                    provenance: Provenance::default(),
                })
                .then_expect_error(CustomerError::OrderUndecided {
                    object: TiedObject::Subscription(SubscriptionId::new("sub_1")),
                    second: at(9),
                });
        }
        // With previous_attributes.status the change is placed without asking.
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionChanged {
                subscription: subscription(Active, "price_pro"),
                occurred_at: at(9),
                provenance: Provenance::default(),
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(Trialing, "price_pro"),
                occurred_at: at(9),
                provenance: Provenance {
                    previous_status: Some(Active),
                    ..Provenance::default()
                },
            })
            .then_expect_events(vec![CustomerEvent::SubscriptionChanged {
                subscription: subscription(Trialing, "price_pro"),
                occurred_at: at(9),
                provenance: Provenance {
                    previous_status: Some(Active),
                    ..Provenance::default()
                },
            }]);
    }

    #[test]
    fn a_fetched_snapshot_settles_its_second_and_later_arrivals_from_it_are_stale() {
        let undecided = CustomerEvent::SubscriptionChanged {
            subscription: with_quantity(2),
            occurred_at: at(9),
            provenance: from_quantity(1),
        };
        // Stripe's answer is recorded even when it equals what is known: it settles the second.
        CustomerTest::with(())
            .given(vec![undecided.clone()])
            .when(CustomerCommand::RecordSubscription {
                subscription: with_quantity(2),
                occurred_at: at(9),
                provenance: Provenance::fetched(),
            })
            .then_expect_events(vec![CustomerEvent::SubscriptionChanged {
                subscription: with_quantity(2),
                occurred_at: at(9),
                provenance: Provenance::fetched(),
            }]);
        let settled = CustomerEvent::SubscriptionChanged {
            subscription: with_quantity(1),
            occurred_at: at(9),
            provenance: Provenance::fetched(),
        };
        CustomerTest::with(())
            .given(vec![undecided.clone(), settled.clone()])
            .when(CustomerCommand::RecordSubscription {
                subscription: with_quantity(2),
                occurred_at: at(9),
                provenance: from_quantity(1),
            })
            .then_expect_events(vec![]);
        // A later second still moves on from it.
        CustomerTest::with(())
            .given(vec![undecided, settled])
            .when(CustomerCommand::RecordSubscription {
                subscription: with_quantity(5),
                occurred_at: at(10),
                provenance: from_quantity(1),
            })
            .then_expect_events(vec![CustomerEvent::SubscriptionChanged {
                subscription: with_quantity(5),
                occurred_at: at(10),
                provenance: from_quantity(1),
            }]);
    }

    #[test]
    fn it_records_a_new_entitlement_summary_but_not_an_older_or_equal_one() {
        let summary = |features: &[&str], second: i64| CustomerEvent::StripeEntitlementsRecorded {
            features: set(features),
            occurred_at: at(second),
            provenance: SummaryProvenance::default(),
        };
        let command = |features: &[&str], second: i64| CustomerCommand::RecordStripeEntitlements {
            features: set(features),
            occurred_at: at(second),
            provenance: SummaryProvenance::default(),
        };
        CustomerTest::with(())
            .given(vec![summary(&["sso"], 10)])
            .when(command(&["sso", "audit"], 11))
            .then_expect_events(vec![summary(&["sso", "audit"], 11)]);
        CustomerTest::with(())
            .given(vec![summary(&["sso", "audit"], 10)])
            .when(command(&["sso"], 9))
            .then_expect_events(vec![]);
        CustomerTest::with(())
            .given(vec![summary(&["sso"], 10)])
            .when(command(&["sso"], 12))
            .then_expect_events(vec![]);
    }

    fn set(features: &[&str]) -> BTreeSet<String> {
        features.iter().map(|f| (*f).to_owned()).collect()
    }

    fn replaced(features: &[&str]) -> SummaryProvenance {
        SummaryProvenance {
            previous_features: Some(set(features)),
            fetched: false,
        }
    }

    #[test]
    fn same_second_summaries_follow_the_list_they_replaced_else_stripe_decides() {
        // [] -> [sso] -> [sso, audit] in one second, the last delivered first.
        let latest = CustomerEvent::StripeEntitlementsRecorded {
            features: set(&["sso", "audit"]),
            occurred_at: at(3),
            provenance: replaced(&["sso"]),
        };
        CustomerTest::with(())
            .given(vec![latest])
            .when(CustomerCommand::RecordStripeEntitlements {
                features: set(&["sso"]),
                occurred_at: at(3),
                provenance: replaced(&[]),
            })
            .then_expect_events(vec![]);
        // [sso] -> [] and [] -> [sso] in one second: only Stripe can tell.
        CustomerTest::with(())
            .given(vec![CustomerEvent::StripeEntitlementsRecorded {
                features: set(&[]),
                occurred_at: at(3),
                provenance: replaced(&["sso"]),
            }])
            .when(CustomerCommand::RecordStripeEntitlements {
                features: set(&["sso"]),
                occurred_at: at(3),
                provenance: replaced(&[]),
            })
            .then_expect_error(CustomerError::OrderUndecided {
                object: TiedObject::StripeEntitlements,
                second: at(3),
            });
    }

    fn schedule(stage: ScheduleStage, next_price: Option<&str>) -> ScheduleFacts {
        ScheduleFacts {
            id: "sub_sched_1".to_owned(),
            subscription_id: SubscriptionId::new("sub_1"),
            next_phase: next_price.map(|price| crate::billing::NextPhase {
                starts_at: at(1_000),
                items: vec![SubscriptionItem {
                    price_id: PriceId::new(price),
                    lookup_key: None,
                    quantity: 1,
                }],
            }),
            stage,
        }
    }

    fn scheduled(facts: ScheduleFacts, creation: bool) -> CustomerEvent {
        CustomerEvent::ScheduleRecorded {
            schedule: facts,
            occurred_at: at(20),
            provenance: ScheduleProvenance {
                creation,
                fetched: false,
            },
        }
    }

    fn record_schedule(facts: ScheduleFacts, creation: bool) -> CustomerCommand {
        CustomerCommand::RecordSchedule {
            schedule: facts,
            occurred_at: at(20),
            provenance: ScheduleProvenance {
                creation,
                fetched: false,
            },
        }
    }

    #[test]
    fn same_second_schedule_snapshots_follow_creation_and_stage_else_stripe_decides() {
        let active = |price| schedule(ScheduleStage::Active, Some(price));
        // Released in the second it was updated: the release is last, whatever arrives after.
        CustomerTest::with(())
            .given(vec![scheduled(schedule(ScheduleStage::Ended, None), false)])
            .when(record_schedule(active("price_basic"), false))
            .then_expect_events(vec![]);
        // The creation is first.
        CustomerTest::with(())
            .given(vec![scheduled(active("price_basic"), false)])
            .when(record_schedule(active("price_team"), true))
            .then_expect_events(vec![]);
        // Not started, then active.
        CustomerTest::with(())
            .given(vec![scheduled(active("price_basic"), false)])
            .when(record_schedule(
                schedule(ScheduleStage::NotStarted, Some("price_team")),
                false,
            ))
            .then_expect_events(vec![]);
        // Two updates of an active schedule: only Stripe can tell.
        CustomerTest::with(())
            .given(vec![scheduled(active("price_basic"), false)])
            .when(record_schedule(active("price_team"), false))
            .then_expect_error(CustomerError::OrderUndecided {
                object: TiedObject::Schedule("sub_sched_1".to_owned()),
                second: at(20),
            });
    }

    #[test]
    fn an_operator_places_and_lifts_a_hold_once() {
        let placed = CustomerEvent::HoldPlaced {
            hold_id: "hold_1".to_owned(),
            subscription: None,
            reason: "chargeback review".to_owned(),
            covers_grants: false,
            occurred_at: at(1),
        };
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::PlaceHold {
                hold_id: "hold_1".to_owned(),
                subscription: None,
                reason: "chargeback review".to_owned(),
                covers_grants: false,
                placed_at: at(1),
            })
            .then_expect_events(vec![placed.clone()]);
        CustomerTest::with(())
            .given(vec![placed.clone()])
            .when(CustomerCommand::LiftHold {
                hold_id: "hold_1".to_owned(),
                lifted_at: at(2),
            })
            .then_expect_events(vec![CustomerEvent::HoldLifted {
                hold_id: "hold_1".to_owned(),
                occurred_at: at(2),
            }]);
        CustomerTest::with(())
            .given(vec![placed])
            .when(CustomerCommand::LiftHold {
                hold_id: "hold_2".to_owned(),
                lifted_at: at(2),
            })
            .then_expect_error(CustomerError::NoSuchHold("hold_2".to_owned()));
    }

    #[test]
    fn a_hold_on_an_unknown_subscription_is_refused() {
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::PlaceHold {
                hold_id: "hold_1".to_owned(),
                subscription: Some(SubscriptionId::new("sub_nope")),
                reason: "r".to_owned(),
                covers_grants: false,
                placed_at: at(1),
            })
            .then_expect_error(CustomerError::NoSuchSubscription("sub_nope".to_owned()));
    }

    fn seats_grant(
        id: &str,
        limit: u64,
        subscription: Option<&str>,
    ) -> crate::grants::CustomerGrant {
        crate::grants::CustomerGrant {
            id: id.to_owned(),
            terms: crate::grants::GrantTerms {
                feature: "seats".to_owned(),
                value: crate::grants::GrantValue::Limit(limit),
                mode: crate::grants::GrantMode::Add,
                subscription: subscription.map(SubscriptionId::new),
                starts_at: None,
                expires_at: None,
                reason: "outage".to_owned(),
            },
            granted_by: "ops".to_owned(),
            granted_at: at(5),
        }
    }

    #[test]
    fn a_grant_is_given_once_conflicts_by_terms_and_is_revoked_once() {
        let given = CustomerEvent::GrantGiven {
            grant: seats_grant("grant_1", 5, None),
            occurred_at: at(5),
        };
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::GiveGrant {
                grant: seats_grant("grant_1", 5, None),
            })
            .then_expect_events(vec![given.clone()]);
        // A retry, given later by someone else, is the same grant.
        let mut retried = seats_grant("grant_1", 5, None);
        retried.granted_at = at(9);
        retried.granted_by = "someone else".to_owned();
        CustomerTest::with(())
            .given(vec![given.clone()])
            .when(CustomerCommand::GiveGrant { grant: retried })
            .then_expect_events(vec![]);
        CustomerTest::with(())
            .given(vec![given.clone()])
            .when(CustomerCommand::GiveGrant {
                grant: seats_grant("grant_1", 6, None),
            })
            .then_expect_error(CustomerError::GrantConflict {
                id: "grant_1".to_owned(),
                revoked: false,
            });
        let revoked = CustomerEvent::GrantRevoked {
            grant_id: "grant_1".to_owned(),
            revoked_by: "ops".to_owned(),
            occurred_at: at(7),
        };
        CustomerTest::with(())
            .given(vec![given.clone()])
            .when(CustomerCommand::RevokeGrant {
                grant_id: "grant_1".to_owned(),
                revoked_by: "ops".to_owned(),
                revoked_at: at(7),
            })
            .then_expect_events(vec![revoked.clone()]);
        CustomerTest::with(())
            .given(vec![given.clone(), revoked.clone()])
            .when(CustomerCommand::RevokeGrant {
                grant_id: "grant_1".to_owned(),
                revoked_by: "ops".to_owned(),
                revoked_at: at(8),
            })
            .then_expect_events(vec![]);
        CustomerTest::with(())
            .given(vec![given, revoked])
            .when(CustomerCommand::GiveGrant {
                grant: seats_grant("grant_1", 5, None),
            })
            .then_expect_error(CustomerError::GrantConflict {
                id: "grant_1".to_owned(),
                revoked: true,
            });
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::RevokeGrant {
                grant_id: "grant_9".to_owned(),
                revoked_by: "ops".to_owned(),
                revoked_at: at(8),
            })
            .then_expect_error(CustomerError::NoSuchGrant("grant_9".to_owned()));
    }

    #[test]
    fn a_grant_scoped_to_a_subscription_needs_one_that_has_not_ended() {
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::GiveGrant {
                grant: seats_grant("grant_1", 5, Some("sub_nope")),
            })
            .then_expect_error(CustomerError::NoSuchSubscription("sub_nope".to_owned()));
    }

    fn dispute(status: &str, invoice: Option<&str>) -> crate::billing::DisputeFacts {
        crate::billing::DisputeFacts {
            id: "dp_1".to_owned(),
            payment_intent: crate::ids::PaymentIntentId::new("pi_1"),
            invoice: invoice.map(InvoiceId::new),
            status: status.to_owned(),
            reason: Some("fraudulent".to_owned()),
        }
    }

    #[test]
    fn a_dispute_is_scoped_to_the_subscription_of_the_disputed_invoice() {
        CustomerTest::with(())
            .given(vec![CustomerEvent::InvoicePaid {
                invoice: invoice(1),
                occurred_at: at(0),
            }])
            .when(CustomerCommand::RecordDispute {
                dispute: dispute("needs_response", Some("in_1")),
                occurred_at: at(50),
            })
            .then_expect_events(vec![CustomerEvent::DisputeRecorded {
                dispute: dispute("needs_response", Some("in_1")),
                subscription: Some(SubscriptionId::new("sub_1")),
                occurred_at: at(50),
            }]);
    }

    #[test]
    fn a_dispute_of_an_invoice_not_known_yet_is_parked() {
        CustomerTest::with(())
            .given_no_previous_events()
            .when(CustomerCommand::RecordDispute {
                dispute: dispute("needs_response", Some("in_9")),
                occurred_at: at(50),
            })
            .then_expect_error(CustomerError::UnknownInvoice("in_9".to_owned()));
    }

    #[test]
    fn same_second_dispute_updates_follow_the_dispute_lifecycle() {
        let recorded = |status: &str| CustomerEvent::DisputeRecorded {
            dispute: dispute(status, None),
            subscription: None,
            occurred_at: at(50),
        };
        let update = |status: &str| CustomerCommand::RecordDispute {
            dispute: dispute(status, None),
            occurred_at: at(50),
        };
        // Evidence submitted in the second the dispute opened, delivered first.
        CustomerTest::with(())
            .given(vec![recorded("under_review")])
            .when(update("needs_response"))
            .then_expect_events(vec![]);
        CustomerTest::with(())
            .given(vec![recorded("needs_response")])
            .when(update("under_review"))
            .then_expect_events(vec![recorded("under_review")]);
        // An inquiry that became a chargeback.
        CustomerTest::with(())
            .given(vec![recorded("needs_response")])
            .when(update("warning_under_review"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn a_closed_dispute_changes_no_more_but_still_learns_its_invoice() {
        let recorded = |status: &str, invoice: Option<&str>, subscription: Option<&str>, second| {
            CustomerEvent::DisputeRecorded {
                dispute: dispute(status, invoice),
                subscription: subscription.map(SubscriptionId::new),
                occurred_at: at(second),
            }
        };
        let paid = CustomerEvent::InvoicePaid {
            invoice: invoice(1),
            occurred_at: at(0),
        };
        CustomerTest::with(())
            .given(vec![
                paid.clone(),
                recorded("lost", Some("in_1"), Some("sub_1"), 60),
            ])
            .when(CustomerCommand::RecordDispute {
                dispute: dispute("needs_response", Some("in_1")),
                occurred_at: at(50),
            })
            .then_expect_events(vec![]);
        CustomerTest::with(())
            .given(vec![paid, recorded("lost", None, None, 60)])
            .when(CustomerCommand::RecordDispute {
                dispute: dispute("lost", Some("in_1")),
                occurred_at: at(60),
            })
            .then_expect_events(vec![recorded("lost", Some("in_1"), Some("sub_1"), 60)]);
    }

    #[test]
    fn a_change_that_set_a_field_from_null_still_orders_after_a_round_trip_through_json() {
        // Activation and a cancel_at set in the same second, the cancellation recorded first:
        // the activation is what the cancellation moved away from (cancel_at was null).
        let mut cancel = subscription(SubscriptionStatus::Active, "price_pro");
        cancel.cancel_at = Some(at(1_000));
        let provenance = Provenance {
            creation: false,
            previous_status: None,
            previous: crate::billing::PreviousFields {
                cancel_at: Some(crate::billing::Was { was: None }),
                ..Default::default()
            },
            fetched: false,
        };
        let stored: Provenance =
            serde_json::from_value(serde_json::to_value(&provenance).unwrap()).unwrap();
        assert_eq!(stored, provenance);
        CustomerTest::with(())
            .given(vec![CustomerEvent::SubscriptionChanged {
                subscription: cancel,
                occurred_at: at(0),
                provenance: stored,
            }])
            .when(CustomerCommand::RecordSubscription {
                subscription: subscription(SubscriptionStatus::Active, "price_pro"),
                occurred_at: at(0),
                provenance: from_status(SubscriptionStatus::Incomplete),
            })
            .then_expect_events(vec![]);
    }
}
