//! The few fields of a Stripe event the inbox needs, checked without trusting the rest.
//!
//! Typed parsing of the whole event is not the gate: Stripe sends each endpoint's pinned API
//! version for years, and a well-signed event must never be refused because some field moved.

use serde::de::IgnoredAny;
use serde::Deserialize;

/// What the inbox records about a Stripe event besides its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventEnvelope {
    pub id: String,
    pub event_type: String,
    /// Stripe's `created`, unix seconds.
    pub created: i64,
    pub api_version: Option<String>,
    pub livemode: bool,
    /// The connected account, for Connect events.
    pub account: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a Stripe event: {0}")]
    NotAnEvent(String),
}

#[derive(Deserialize)]
struct RawEnvelope {
    id: String,
    object: String,
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    livemode: bool,
    #[serde(default)]
    account: Option<String>,
    // Never read: deserializing it is the check that `data.object` is present.
    #[allow(dead_code)]
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    #[allow(dead_code)]
    object: IgnoredAny,
}

impl EventEnvelope {
    pub fn parse(body: &[u8]) -> Result<Self, EnvelopeError> {
        // One pass over the bytes; the rest of the object is skipped, not built.
        let raw: RawEnvelope = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                EnvelopeError::NotAnEvent(e.to_string())
            } else {
                EnvelopeError::NotJson(e.to_string())
            }
        })?;
        if raw.object != "event" {
            return Err(EnvelopeError::NotAnEvent(format!(
                "`object` is `{}`, expected `event`",
                raw.object
            )));
        }
        if !raw.id.starts_with("evt_") || raw.id.len() > 255 {
            return Err(EnvelopeError::NotAnEvent(format!(
                "`id` `{}` is not a Stripe event id",
                raw.id.chars().take(64).collect::<String>()
            )));
        }
        if raw.event_type.is_empty() {
            return Err(EnvelopeError::NotAnEvent("`type` is empty".to_owned()));
        }
        Ok(Self {
            id: raw.id,
            event_type: raw.event_type,
            created: raw.created,
            api_version: raw.api_version,
            livemode: raw.livemode,
            account: raw.account,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_reads_the_envelope_of_an_event() {
        let body =
            br#"{"id":"evt_1","object":"event","type":"customer.created","created":1700000000,
            "api_version":"2025-03-31.basil","livemode":false,"data":{"object":{"id":"cus_1"}}}"#;
        let envelope = EventEnvelope::parse(body).unwrap();
        assert_eq!(envelope.id, "evt_1");
        assert_eq!(envelope.event_type, "customer.created");
        assert_eq!(envelope.created, 1_700_000_000);
        assert_eq!(envelope.api_version.as_deref(), Some("2025-03-31.basil"));
        assert_eq!(envelope.account, None);
    }

    #[test]
    fn it_refuses_what_is_not_a_stripe_event() {
        let cases: [&[u8]; 6] = [
            b"not json",
            b"[1,2]",
            br#"{"id":"evt_1","object":"customer","type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"cus_1","object":"event","type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","object":"event","type":"x","created":"yesterday","data":{"object":{}}}"#,
            br#"{"id":"evt_1","object":"event","type":"x","created":1,"data":{}}"#,
        ];
        for body in cases {
            assert!(
                EventEnvelope::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
