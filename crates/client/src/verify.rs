//! Checking Subledger's outbound notifications: `Subledger-Signature: t=<unix time>,v1=<hex
//! HMAC-SHA256 of "t.body">[,v1=…]`, one `v1` per secret Subledger signs with (Stripe's
//! scheme). A notification is genuine when one `v1` matches one of your secrets and `t` is
//! recent.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("no Subledger-Signature header")]
    Missing,
    #[error("the Subledger-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature was made {0} s from now, beyond the tolerance")]
    OutsideTolerance(i64),
    #[error("no signature matches any of the secrets")]
    Mismatch,
    #[error("the body is not a notification: {0}")]
    NotANotification(String),
}

fn sign(secret: &str, timestamp: i64, body: &[u8]) -> Option<Vec<u8>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac.finalize().into_bytes().to_vec())
}

/// The notification in `body` when `header` (the `Subledger-Signature` value) proves it came
/// from Subledger within `tolerance_secs` of `now` (Unix seconds).
pub fn verify_notification(
    secrets: &[&str],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<Value, VerifyError> {
    let header = header.ok_or(VerifyError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| VerifyError::Malformed("t is not a Unix time"))?,
                );
            }
            Some(("v1", value)) => {
                signatures
                    .push(hex::decode(value).map_err(|_| VerifyError::Malformed("v1 is not hex"))?);
            }
            Some(_) => {}
            None => return Err(VerifyError::Malformed("a part without `=`")),
        }
    }
    let timestamp = timestamp.ok_or(VerifyError::Malformed("no t="))?;
    if signatures.is_empty() {
        return Err(VerifyError::Malformed("no v1="));
    }
    let drift = timestamp.saturating_sub(now);
    if drift.abs() > tolerance_secs {
        return Err(VerifyError::OutsideTolerance(drift));
    }
    let genuine = secrets
        .iter()
        .filter_map(|secret| sign(secret, timestamp, body))
        .any(|expected| {
            signatures
                .iter()
                .any(|given| bool::from(given.as_slice().ct_eq(expected.as_slice())))
        });
    if !genuine {
        return Err(VerifyError::Mismatch);
    }
    let event: Value =
        serde_json::from_slice(body).map_err(|e| VerifyError::NotANotification(e.to_string()))?;
    if event.get("type").and_then(Value::as_str) != Some("entitlements.updated") {
        return Err(VerifyError::NotANotification(
            "not an entitlements.updated event".to_owned(),
        ));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"id":"chg_1","type":"entitlements.updated","created":1,"data":{}}"#;

    fn header(secrets: &[&str], t: i64) -> String {
        let mut header = format!("t={t}");
        for secret in secrets {
            header.push_str(&format!(
                ",v1={}",
                hex::encode(sign(secret, t, BODY).unwrap())
            ));
        }
        header
    }

    #[test]
    fn any_current_secret_verifies_and_anything_else_is_named() {
        let signed = header(&["old_secret", "new_secret"], 1_000);
        for mine in ["old_secret", "new_secret"] {
            assert!(verify_notification(&[mine], Some(&signed), BODY, 1_010, 300).is_ok());
        }
        assert_eq!(
            verify_notification(&["other"], Some(&signed), BODY, 1_010, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify_notification(&["old_secret"], Some(&signed), b"{}", 1_010, 300),
            Err(VerifyError::Mismatch),
            "another body"
        );
        assert_eq!(
            verify_notification(&["old_secret"], Some(&signed), BODY, 2_000, 300),
            Err(VerifyError::OutsideTolerance(-1_000))
        );
        assert_eq!(
            verify_notification(&["old_secret"], None, BODY, 1_010, 300),
            Err(VerifyError::Missing)
        );
        for bad in ["t=x,v1=00", "v1=00", "t=1000", "t=1000,v1=zz", "nonsense"] {
            assert!(
                matches!(
                    verify_notification(&["old_secret"], Some(bad), BODY, 1_000, 300),
                    Err(VerifyError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }
}
