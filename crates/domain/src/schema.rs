//! The stored shape of domain events, kept apart from the Rust types.
//!
//! Every stored event carries its schema version (cqrs-es's `event_version` column). When a
//! shape changes, the version is raised and an upcaster here turns events of the older shape
//! into the newer one as they are read, by cqrs-es when it loads an aggregate and by the
//! projectors when they read the log ([`upcast`]). History is never rewritten: the stored
//! bytes stay as they were written. A golden log written by an earlier build is a test
//! fixture (`crates/scenario/tests/golden/`) that every later build must load and answer from
//! exactly as recorded.
//!
//! Versions so far:
//! - Customer events 1: the provenance of snapshots (`provenance`) could be absent, in events
//!   written before Subledger ordered same-second snapshots; it meant "nothing known".
//! - Customer events 2 (today): `provenance` is always present.
//! - Payment events 1 (today).

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::Value;

use crate::billing::{DetailsProvenance, Provenance, ScheduleProvenance, SummaryProvenance};

/// The version of the customer events this build writes.
pub const CUSTOMER_EVENTS: &str = "2";
/// The version of the payment events this build writes.
pub const PAYMENT_EVENTS: &str = "1";

/// The default (the "nothing known") of a provenance type, as stored.
type DefaultProvenance = fn() -> Value;

/// Every customer event type, with the provenance type it carries (if any).
const CUSTOMER_EVENT_TYPES: [(&str, Option<DefaultProvenance>); 15] = [
    ("DetailsRecorded", Some(default_of::<DetailsProvenance>)),
    ("CustomerDeleted", None),
    ("SubscriptionStarted", Some(default_of::<Provenance>)),
    ("SubscriptionChanged", Some(default_of::<Provenance>)),
    ("SubscriptionEnded", Some(default_of::<Provenance>)),
    (
        "StripeEntitlementsRecorded",
        Some(default_of::<SummaryProvenance>),
    ),
    ("HoldPlaced", None),
    ("HoldLifted", None),
    ("ScheduleRecorded", Some(default_of::<ScheduleProvenance>)),
    ("DisputeRecorded", None),
    ("InvoicePaid", None),
    ("InvoicePaymentFailed", None),
    // New in version 2: a version 1 log has none.
    ("InvoiceWrittenOff", None),
    // Added within version 2 (operators' grants): a build from before them finds no type of
    // that name at its version and refuses the event by name rather than misreading it.
    ("GrantGiven", None),
    ("GrantRevoked", None),
];

fn default_of<T: Default + serde::Serialize>() -> Value {
    serde_json::to_value(T::default()).unwrap_or(Value::Null)
}

/// Customer events 1 → 2: an absent `provenance` becomes the explicit "nothing known".
#[derive(Debug)]
struct ProvenanceAlwaysPresent;

impl EventUpcaster for ProvenanceAlwaysPresent {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_version == "1" && CUSTOMER_EVENT_TYPES.iter().any(|(t, _)| *t == event_type)
    }

    fn upcast(&self, mut event: SerializedEvent) -> SerializedEvent {
        let default = CUSTOMER_EVENT_TYPES
            .iter()
            .find(|(t, _)| *t == event.event_type)
            .and_then(|(_, default)| *default);
        if let (Some(default), Some(fields)) = (
            default,
            event
                .payload
                .get_mut(&event.event_type)
                .and_then(Value::as_object_mut),
        ) {
            fields.entry("provenance").or_insert_with(default);
        }
        event.event_version = "2".to_owned();
        event
    }
}

/// The upcasters, oldest first, for cqrs-es's event store.
pub fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
    vec![Box::new(ProvenanceAlwaysPresent)]
}

/// A stored event of a version this build does not know (written by a newer one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_type} version {version} was written by a newer Subledger; this build reads up to {known}")]
pub struct UnknownVersion {
    pub event_type: String,
    pub version: String,
    pub known: &'static str,
}

/// The version this build writes for `event_type`.
fn current_version(event_type: &str) -> &'static str {
    if CUSTOMER_EVENT_TYPES.iter().any(|(t, _)| *t == event_type) {
        CUSTOMER_EVENTS
    } else {
        PAYMENT_EVENTS
    }
}

/// Whether an event stored as `event_version` is already in today's shape: then its payload
/// can be read straight into the Rust type, without going through [`upcast`].
pub fn is_current(event_type: &str, event_version: &str) -> bool {
    event_version == current_version(event_type)
}

/// A stored event's payload in today's shape.
pub fn upcast(
    event_type: &str,
    event_version: &str,
    payload: Value,
) -> Result<Value, UnknownVersion> {
    let mut event = SerializedEvent {
        aggregate_id: String::new(),
        sequence: 0,
        aggregate_type: String::new(),
        event_type: event_type.to_owned(),
        event_version: event_version.to_owned(),
        payload,
        metadata: Value::Null,
    };
    for upcaster in upcasters() {
        if upcaster.can_upcast(&event.event_type, &event.event_version) {
            event = upcaster.upcast(event);
        }
    }
    let known = current_version(event_type);
    if event.event_version != known {
        return Err(UnknownVersion {
            event_type: event_type.to_owned(),
            version: event.event_version,
            known,
        });
    }
    Ok(event.payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::customer::CustomerEvent;
    use cqrs_es::DomainEvent;

    #[test]
    fn a_version_1_snapshot_without_provenance_reads_as_nothing_known() {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let today = CustomerEvent::DetailsRecorded {
            metadata: [("user_id".to_owned(), "u_1".to_owned())].into(),
            email: None,
            occurred_at: at,
            provenance: DetailsProvenance {
                creation: true,
                ..DetailsProvenance::default()
            },
        };
        // Version 1 wrote the same event without `provenance`.
        let mut v1 = serde_json::to_value(&today).unwrap_or(Value::Null);
        if let Some(fields) = v1["DetailsRecorded"].as_object_mut() {
            fields.remove("provenance");
        }
        // Today's type requires it: without the upcaster the old event does not read.
        assert!(serde_json::from_value::<CustomerEvent>(v1.clone()).is_err());
        let event: CustomerEvent =
            serde_json::from_value(upcast("DetailsRecorded", "1", v1).unwrap_or(Value::Null))
                .unwrap_or(CustomerEvent::CustomerDeleted { occurred_at: at });
        assert_eq!(
            event,
            CustomerEvent::DetailsRecorded {
                metadata: [("user_id".to_owned(), "u_1".to_owned())].into(),
                email: None,
                occurred_at: at,
                provenance: DetailsProvenance::default(),
            }
        );
    }

    #[test]
    fn todays_events_pass_unchanged_and_newer_ones_are_refused_by_name() {
        let event = CustomerEvent::HoldLifted {
            hold_id: "h".to_owned(),
            occurred_at: chrono::DateTime::from_timestamp(0, 0).unwrap_or_default(),
        };
        assert_eq!(event.event_version(), CUSTOMER_EVENTS);
        let payload = serde_json::to_value(&event).unwrap_or(Value::Null);
        assert_eq!(
            upcast("HoldLifted", "2", payload.clone()),
            Ok(payload.clone())
        );
        let newer = upcast("HoldLifted", "3", payload).unwrap_err();
        assert!(newer.to_string().contains("newer Subledger"), "{newer}");
    }
}
