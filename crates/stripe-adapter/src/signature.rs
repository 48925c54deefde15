//! `Stripe-Signature` verification, as Stripe's SDKs do it and a little stricter.
//!
//! The header is `t=<unix seconds>,v1=<hex>[,v1=<hex>…][,v0=<hex>]`. `v1` is the lowercase hex
//! HMAC-SHA256 of `"<t>." + raw body`, keyed with the whole secret including `whsec_`. Any `v1`
//! matching any configured secret passes (secrets are rolled with two live at once); `v0` is a
//! test-mode dummy and is ignored. Timestamps further than the tolerance from now, in either
//! direction, are rejected, which bounds how long a captured request can be replayed.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::time::Duration;

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A webhook signing secret. Its `Debug` never prints it, and its memory is zeroed when it is
/// dropped (`secrecy`).
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(SecretString::from(secret.into()))
    }

    /// Whether this is `text` (for refusing a well-known secret in production).
    pub fn is(&self, text: &str) -> bool {
        self.0.expose_secret() == text
    }

    /// Computes the `v1` signature Stripe would send for `body` at `timestamp`.
    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        hex::encode(self.mac(timestamp, body).finalize().into_bytes())
    }

    /// A complete `Stripe-Signature` header for `body` at `timestamp`, as Stripe sends it.
    pub fn header(&self, timestamp: i64, body: &[u8]) -> String {
        format!("t={timestamp},v1={}", self.sign(timestamp, body))
    }

    fn mac(&self, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail; the fallback keeps it panic-free.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.expose_secret().as_bytes())
            .unwrap_or_else(|_| <Hmac<Sha256> as KeyInit>::new(&Default::default()));
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// Why a delivery was refused. The messages are safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing Stripe-Signature header")]
    MissingHeader,
    #[error("malformed Stripe-Signature header: {0}")]
    MalformedHeader(&'static str),
    #[error("Stripe-Signature header has no v1 signature")]
    NoV1Signature,
    #[error(
        "signature timestamp {timestamp} is more than {tolerance_secs} s from the current time"
    )]
    OutsideTolerance { timestamp: i64, tolerance_secs: u64 },
    #[error("no v1 signature matches any configured webhook secret")]
    NoMatchingSignature,
}

impl SignatureError {
    /// A short, stable code for JSON error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader => "missing_signature",
            Self::MalformedHeader(_) => "malformed_signature_header",
            Self::NoV1Signature => "no_v1_signature",
            Self::OutsideTolerance { .. } => "timestamp_outside_tolerance",
            Self::NoMatchingSignature => "signature_mismatch",
        }
    }
}

/// Verifies deliveries against every configured secret.
#[derive(Debug, Clone)]
pub struct WebhookVerifier {
    secrets: Vec<WebhookSecret>,
    tolerance: Duration,
}

impl WebhookVerifier {
    pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

    pub fn new(secrets: Vec<WebhookSecret>, tolerance: Duration) -> Self {
        Self { secrets, tolerance }
    }

    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Checks `header` against `body` as of `now` (unix seconds).
    pub fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let header = header.ok_or(SignatureError::MissingHeader)?;
        let parsed = ParsedHeader::parse(header)?;
        let tolerance_secs = self.tolerance.as_secs();
        let distance = now.abs_diff(parsed.timestamp);
        if distance > tolerance_secs {
            return Err(SignatureError::OutsideTolerance {
                timestamp: parsed.timestamp,
                tolerance_secs,
            });
        }
        let matches = self.secrets.iter().any(|secret| {
            let mac = secret.mac(parsed.timestamp, body);
            // `verify_slice` compares in constant time.
            parsed
                .v1
                .iter()
                .any(|candidate| mac.clone().verify_slice(candidate).is_ok())
        });
        if matches {
            Ok(())
        } else {
            Err(SignatureError::NoMatchingSignature)
        }
    }
}

struct ParsedHeader {
    timestamp: i64,
    v1: Vec<Vec<u8>>,
}

impl ParsedHeader {
    fn parse(header: &str) -> Result<Self, SignatureError> {
        let mut timestamp = None;
        let mut v1 = Vec::new();
        let mut saw_v1 = false;
        for part in header.split(',') {
            let (key, value) =
                part.trim()
                    .split_once('=')
                    .ok_or(SignatureError::MalformedHeader(
                        "every element must be key=value",
                    ))?;
            match key {
                "t" => {
                    if timestamp.is_some() {
                        return Err(SignatureError::MalformedHeader("more than one timestamp"));
                    }
                    let t = value.parse::<i64>().map_err(|_| {
                        SignatureError::MalformedHeader("timestamp is not an integer")
                    })?;
                    timestamp = Some(t);
                }
                "v1" => {
                    saw_v1 = true;
                    // A v1 that is not 32 bytes of lower-case hex can never match; skip it like
                    // Stripe's SDKs (they compare the hex text, so upper case fails there too:
                    // tests/stripe_python_vectors.rs).
                    let lower_hex = value
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                    if let Ok(bytes) = hex::decode(value) {
                        if lower_hex && bytes.len() == 32 {
                            v1.push(bytes);
                        }
                    }
                }
                // v0 is Stripe's test-mode dummy; future schemes are ignored as Stripe advises.
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(SignatureError::MalformedHeader("missing timestamp t="))?;
        if !saw_v1 {
            return Err(SignatureError::NoV1Signature);
        }
        if v1.is_empty() {
            return Err(SignatureError::NoMatchingSignature);
        }
        Ok(Self { timestamp, v1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;
    const NOW: i64 = 1_700_000_000;

    fn verifier(secrets: &[&str]) -> WebhookVerifier {
        WebhookVerifier::new(
            secrets.iter().map(|s| WebhookSecret::new(*s)).collect(),
            WebhookVerifier::DEFAULT_TOLERANCE,
        )
    }

    #[test]
    fn it_accepts_what_stripes_own_sdk_signs() {
        let body = std::str::from_utf8(BODY).unwrap();
        let header = stripe_webhook::Webhook::generate_test_header(body, "whsec_test", Some(NOW));
        assert_eq!(header, WebhookSecret::new("whsec_test").header(NOW, BODY));
        assert_eq!(
            verifier(&["whsec_test"]).verify(Some(&header), BODY, NOW),
            Ok(())
        );
    }

    #[test]
    fn it_accepts_any_v1_against_any_secret_during_rotation() {
        let old = WebhookSecret::new("whsec_old");
        let new = WebhookSecret::new("whsec_new");
        let header = format!("t={NOW},v1={},v1={}", "ab".repeat(32), new.sign(NOW, BODY));
        assert_eq!(
            verifier(&["whsec_old", "whsec_new"]).verify(Some(&header), BODY, NOW),
            Ok(())
        );
        let header = old.header(NOW, BODY);
        assert_eq!(
            verifier(&["whsec_new", "whsec_old"]).verify(Some(&header), BODY, NOW),
            Ok(())
        );
        assert_eq!(
            verifier(&["whsec_new"]).verify(Some(&header), BODY, NOW),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn it_rejects_a_body_changed_by_one_byte() {
        let header = WebhookSecret::new("whsec_test").header(NOW, BODY);
        let tampered = br#"{"id":"evt_2","object":"event"}"#;
        assert_eq!(
            verifier(&["whsec_test"]).verify(Some(&header), tampered, NOW),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn it_bounds_the_timestamp_on_both_sides() {
        let secret = WebhookSecret::new("whsec_test");
        let v = verifier(&["whsec_test"]);
        assert_eq!(
            v.verify(Some(&secret.header(NOW - 300, BODY)), BODY, NOW),
            Ok(())
        );
        assert_eq!(
            v.verify(Some(&secret.header(NOW + 300, BODY)), BODY, NOW),
            Ok(())
        );
        for t in [NOW - 301, NOW + 301] {
            assert_eq!(
                v.verify(Some(&secret.header(t, BODY)), BODY, NOW),
                Err(SignatureError::OutsideTolerance {
                    timestamp: t,
                    tolerance_secs: 300
                })
            );
        }
    }

    #[test]
    fn it_ignores_v0_and_refuses_a_header_with_only_v0() {
        let secret = WebhookSecret::new("whsec_test");
        let v = verifier(&["whsec_test"]);
        let only_v0 = format!("t={NOW},v0={}", secret.sign(NOW, BODY));
        assert_eq!(
            v.verify(Some(&only_v0), BODY, NOW),
            Err(SignatureError::NoV1Signature)
        );
        let with_v0 = format!("t={NOW},v1={},v0=deadbeef", secret.sign(NOW, BODY));
        assert_eq!(v.verify(Some(&with_v0), BODY, NOW), Ok(()));
    }

    #[test]
    fn it_rejects_malformed_headers_without_panicking() {
        let v = verifier(&["whsec_test"]);
        assert_eq!(
            v.verify(None, BODY, NOW),
            Err(SignatureError::MissingHeader)
        );
        for header in [
            "",
            "junk",
            "v1=abc",
            "t=,v1=ab",
            "t=12x,v1=ab",
            "t=1,t=2,v1=ab",
            "t=1;v1=ab",
        ] {
            let result = v.verify(Some(header), BODY, NOW);
            assert!(
                matches!(result, Err(SignatureError::MalformedHeader(_))),
                "{header:?}: {result:?}"
            );
        }
        for header in [format!("t={NOW},v1="), format!("t={NOW},v1=zz")] {
            assert_eq!(
                v.verify(Some(&header), BODY, NOW),
                Err(SignatureError::NoMatchingSignature),
                "{header}"
            );
        }
    }

    #[test]
    fn it_never_prints_a_secret() {
        let secret = WebhookSecret::new("whsec_supersecret");
        let printed = format!("{secret:?} {:?}", verifier(&["whsec_supersecret"]));
        assert!(!printed.contains("supersecret"), "{printed}");
    }
}
