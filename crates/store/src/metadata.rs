//! Where each domain event's fact came from and when Subledger learned it.
//!
//! Stored as the event's metadata: a JSON object of strings, the shape cqrs-es writes and the
//! one PostgreSQL's generated columns (`stripe_event_id`, `stripe_created`, `received_at`,
//! `correlation_id`) read by key. Every writer builds an [`EventMetadata`] and every reader
//! gets one back, so the keys are spelled in this file only.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};

/// What one domain event records about its origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMetadata {
    /// When Subledger learned the fact: the webhook's receipt, the read from Stripe's API, the
    /// operator's command. The "known" clock of `?as_known_at=`.
    pub received_at: DateTime<Utc>,
    /// The delivery's correlation id, or the id of the backfill or reconciliation run.
    pub correlation_id: String,
    pub origin: Origin,
    /// The product's order id of a payment's event (`metadata.order_id` of the PaymentIntent),
    /// indexed by both stores so an order finds its payments.
    pub order_id: Option<String>,
}

/// Who brought the fact in. (Not the stored `source` key, which says `stripe_api` for facts
/// read from Stripe's API.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A verified Stripe webhook delivery.
    Webhook {
        event_id: String,
        /// Absent from events the first versions of the worker wrote.
        event_type: Option<String>,
        /// The event's `created` (Unix seconds): when it happened at Stripe.
        created: i64,
        /// The fact was read from Stripe's API while handling the event, because the event's
        /// own snapshot could not be placed in order (two in the same second).
        fetched: bool,
    },
    /// An object read from Stripe's API by a backfill run.
    Backfill { object_id: String },
    /// A correction the reconciler made after reading the object from Stripe's API.
    Reconciliation {
        object_id: String,
        /// Why Subledger had it wrong (the drift class).
        drift: String,
        /// The object as Stripe's API answered.
        object_json: String,
    },
    /// An operator's command through the API (a hold placed or lifted).
    Operator,
}

impl Origin {
    /// Who recorded the fact when no Stripe event did: `backfill`, `reconciler`, `operator`.
    pub fn actor(&self) -> Option<&'static str> {
        match self {
            Self::Webhook { .. } => None,
            Self::Backfill { .. } => Some("backfill"),
            Self::Reconciliation { .. } => Some("reconciler"),
            Self::Operator => Some("operator"),
        }
    }
}

/// Why a stored event's metadata does not read as [`EventMetadata`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("it is not a JSON object of strings: {0}")]
    NotAMap(String),
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`{key}` is `{value}`, not {expected}")]
    Invalid {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl EventMetadata {
    /// The stored form, as cqrs-es writes it.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            (
                "received_at".to_owned(),
                self.received_at
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
            ),
            ("correlation_id".to_owned(), self.correlation_id.clone()),
        ]);
        let mut put = |key: &str, value: &str| {
            map.insert(key.to_owned(), value.to_owned());
        };
        if let Some(actor) = self.origin.actor() {
            put("actor", actor);
        }
        match &self.origin {
            Origin::Webhook {
                event_id,
                event_type,
                created,
                fetched,
            } => {
                put("stripe_event_id", event_id);
                if let Some(event_type) = event_type {
                    put("stripe_event_type", event_type);
                }
                put("stripe_created", &created.to_string());
                if *fetched {
                    put("source", "stripe_api");
                }
            }
            Origin::Backfill { object_id } => {
                put("source", "stripe_api");
                put("stripe_object", object_id);
            }
            Origin::Reconciliation {
                object_id,
                drift,
                object_json,
            } => {
                put("source", "stripe_api");
                put("stripe_object", object_id);
                put("drift", drift);
                put("stripe_object_json", object_json);
            }
            Origin::Operator => {}
        }
        if let Some(order_id) = &self.order_id {
            put("order_id", order_id);
        }
        map
    }

    /// Reads the stored form back. Keys it does not know are ignored, so a newer writer's
    /// additions do not make older readers fail.
    pub fn from_json(json: &str) -> Result<Self, MetadataError> {
        let map: HashMap<String, String> =
            serde_json::from_str(json).map_err(|e| MetadataError::NotAMap(e.to_string()))?;
        Self::from_map(&map)
    }

    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, MetadataError> {
        let get = |key: &'static str| map.get(key).cloned().ok_or(MetadataError::Missing(key));
        let received_at = get("received_at")?;
        let received_at = DateTime::parse_from_rfc3339(&received_at)
            .map_err(|_| MetadataError::Invalid {
                key: "received_at",
                value: received_at.clone(),
                expected: "an RFC 3339 time",
            })?
            .with_timezone(&Utc);
        let correlation_id = get("correlation_id")?;
        let origin = match map.get("actor").map(String::as_str) {
            None => {
                let created = get("stripe_created")?;
                Origin::Webhook {
                    event_id: get("stripe_event_id")?,
                    event_type: map.get("stripe_event_type").cloned(),
                    created: created.parse().map_err(|_| MetadataError::Invalid {
                        key: "stripe_created",
                        value: created.clone(),
                        expected: "Unix seconds",
                    })?,
                    fetched: map
                        .get("source")
                        .is_some_and(|source| source == "stripe_api"),
                }
            }
            Some("backfill") => Origin::Backfill {
                object_id: get("stripe_object")?,
            },
            Some("reconciler") => Origin::Reconciliation {
                object_id: get("stripe_object")?,
                drift: get("drift")?,
                object_json: get("stripe_object_json")?,
            },
            Some("operator") => Origin::Operator,
            Some(other) => {
                return Err(MetadataError::Invalid {
                    key: "actor",
                    value: other.to_owned(),
                    expected: "`backfill`, `reconciler` or `operator`",
                })
            }
        };
        Ok(Self {
            received_at,
            correlation_id,
            origin,
            order_id: map.get("order_id").cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-30T12:00:00.250Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn every_origin() -> Vec<Origin> {
        vec![
            Origin::Webhook {
                event_id: "evt_1".to_owned(),
                event_type: Some("invoice.paid".to_owned()),
                created: 1_700_000_000,
                fetched: false,
            },
            Origin::Webhook {
                event_id: "evt_2".to_owned(),
                event_type: None,
                created: 1_700_000_001,
                fetched: true,
            },
            Origin::Backfill {
                object_id: "sub_1".to_owned(),
            },
            Origin::Reconciliation {
                object_id: "sub_1".to_owned(),
                drift: "missed_event".to_owned(),
                object_json: "{\"id\":\"sub_1\"}".to_owned(),
            },
            Origin::Operator,
        ]
    }

    #[test]
    fn every_origin_reads_back_as_written() {
        for (origin, order_id) in every_origin()
            .into_iter()
            .zip([None, Some("order_7")].iter().cycle())
        {
            let metadata = EventMetadata {
                received_at: at(),
                correlation_id: "corr_1".to_owned(),
                origin,
                order_id: order_id.map(str::to_owned),
            };
            let json = serde_json::to_string(&metadata.to_map()).unwrap();
            assert_eq!(EventMetadata::from_json(&json), Ok(metadata));
        }
    }

    /// The keys and values events were stored with before this type existed (and that
    /// PostgreSQL's generated columns read) still read, and are still what is written.
    #[test]
    fn the_stored_shape_is_the_one_already_in_the_log() {
        let stored = r#"{"stripe_event_id":"evt_1","stripe_event_type":"invoice.paid",
            "stripe_created":"1700000000","received_at":"2026-11-30T12:00:00.250Z",
            "correlation_id":"corr_1"}"#;
        let metadata = EventMetadata::from_json(stored).unwrap();
        assert_eq!(metadata.origin, every_origin()[0]);
        let rewritten: HashMap<String, String> = serde_json::from_str(stored).unwrap();
        assert_eq!(metadata.to_map(), rewritten);

        let stored = r#"{"actor":"reconciler","source":"stripe_api","drift":"missed_event",
            "stripe_object":"sub_1","stripe_object_json":"{\"id\":\"sub_1\"}",
            "received_at":"2026-11-30T12:00:00.250Z","correlation_id":"corr_1"}"#;
        let metadata = EventMetadata::from_json(stored).unwrap();
        assert_eq!(metadata.origin, every_origin()[3]);
        let rewritten: HashMap<String, String> = serde_json::from_str(stored).unwrap();
        assert_eq!(metadata.to_map(), rewritten);
    }

    #[test]
    fn unreadable_metadata_names_what_is_wrong() {
        let cases = [
            ("[1]", "is not a JSON object of strings"),
            (
                r#"{"received_at":"2026-11-30T12:00:00Z"}"#,
                "`correlation_id`",
            ),
            (
                r#"{"received_at":"yesterday","correlation_id":"c","actor":"operator"}"#,
                "`received_at` is `yesterday`, not an RFC 3339 time",
            ),
            (
                r#"{"received_at":"2026-11-30T12:00:00Z","correlation_id":"c","actor":"robot"}"#,
                "`actor` is `robot`",
            ),
            (
                r#"{"received_at":"2026-11-30T12:00:00Z","correlation_id":"c",
                    "stripe_event_id":"evt_1","stripe_event_type":"t","stripe_created":"soon"}"#,
                "`stripe_created` is `soon`, not Unix seconds",
            ),
        ];
        for (json, expected) in cases {
            let error = EventMetadata::from_json(json).unwrap_err().to_string();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn keys_a_newer_writer_adds_are_ignored() {
        let stored = r#"{"actor":"operator","received_at":"2026-11-30T12:00:00.250Z",
            "correlation_id":"corr_1","reason":"chargeback review"}"#;
        assert_eq!(
            EventMetadata::from_json(stored).unwrap().origin,
            Origin::Operator
        );
    }
}
