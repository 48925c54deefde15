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
    /// Whose events must be handled one at a time, in Stripe's order: the customer the object
    /// belongs to (or is), else the object itself.
    pub ordering_key: Option<String>,
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
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: RawObject,
}

/// Only what names the object's owner; any other shape of these fields is tolerated.
#[derive(Deserialize)]
struct RawObject {
    #[serde(default)]
    id: Loose,
    #[serde(default)]
    object: Loose,
    #[serde(default)]
    customer: Loose,
}

/// A field read if it is a string (or an expanded object's `id`), ignored otherwise.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Loose {
    Text(String),
    Expanded {
        id: String,
    },
    #[default]
    Other,
    #[allow(dead_code)]
    Unreadable(IgnoredAny),
}

impl Loose {
    fn text(self) -> Option<String> {
        match self {
            Self::Text(text) | Self::Expanded { id: text } => Some(text),
            Self::Other | Self::Unreadable(_) => None,
        }
    }
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
        let object = raw.data.object;
        let is_customer = matches!(&object.object, Loose::Text(kind) if kind == "customer");
        let ordering_key = if is_customer {
            object.id.text()
        } else {
            object.customer.text().or_else(|| object.id.text())
        };
        // Two accounts' `cus_1` are two customers: their events need not wait for each other.
        let ordering_key =
            ordering_key.map(|key| subledger_domain::ids::scoped(raw.account.as_deref(), &key));
        Ok(Self {
            ordering_key,
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
        // Without `object` or `customer`, the object itself is the key.
        assert_eq!(envelope.ordering_key.as_deref(), Some("cus_1"));
    }

    #[test]
    fn the_ordering_key_is_the_customer_the_object_belongs_to_or_is() {
        let key = |object: &str| {
            let body = format!(
                r#"{{"id":"evt_1","object":"event","type":"x","created":1,"data":{{"object":{object}}}}}"#
            );
            EventEnvelope::parse(body.as_bytes()).unwrap().ordering_key
        };
        let customer = Some("cus_1".to_owned());
        assert_eq!(key(r#"{"id":"cus_1","object":"customer"}"#), customer);
        assert_eq!(
            key(r#"{"id":"sub_1","object":"subscription","customer":"cus_1"}"#),
            customer
        );
        assert_eq!(
            key(r#"{"id":"in_1","customer":{"id":"cus_1","email":"a@b"}}"#),
            customer
        );
        assert_eq!(
            key(r#"{"id":"pi_1","customer":null}"#),
            Some("pi_1".to_owned())
        );
        let connected = r#"{"id":"evt_1","object":"event","type":"x","created":1,"account":"acct_1","data":{"object":{"id":"cus_1","object":"customer"}}}"#;
        assert_eq!(
            EventEnvelope::parse(connected.as_bytes())
                .unwrap()
                .ordering_key,
            Some("acct_1/cus_1".to_owned())
        );
        // Odd shapes are tolerated, never refused.
        assert_eq!(key(r#"{"id":7,"customer":[1]}"#), None);
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
