//! Properties of the webhook verifier over any input: any body signed with a configured secret
//! at a time within the tolerance verifies; any single-byte change to the body, to the
//! signature or to the timestamp it signs does not; no header, however malformed, panics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use proptest::prelude::*;
use subledger_stripe::{SignatureError, WebhookSecret, WebhookVerifier};

const NOW: i64 = 1_767_225_600;
const SECRET: &str = "whsec_properties";

fn verifier() -> WebhookVerifier {
    WebhookVerifier::new(
        vec![
            WebhookSecret::new("whsec_previous"),
            WebhookSecret::new(SECRET),
        ],
        Duration::from_secs(300),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if std::env::var_os("CI").is_some() { 512 } else { 2_048 }))]

    #[test]
    fn any_body_signed_within_the_tolerance_verifies(
        body in proptest::collection::vec(any::<u8>(), 0..4_096),
        skew in -300i64..=300,
    ) {
        let header = WebhookSecret::new(SECRET).header(NOW + skew, &body);
        prop_assert_eq!(verifier().verify(Some(&header), &body, NOW), Ok(()));
    }

    #[test]
    fn any_single_byte_change_to_the_body_fails(
        body in proptest::collection::vec(any::<u8>(), 1..4_096),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let header = WebhookSecret::new(SECRET).header(NOW, &body);
        let mut changed = body.clone();
        let i = at.index(changed.len());
        changed[i] ^= flip;
        prop_assert_eq!(
            verifier().verify(Some(&header), &changed, NOW),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn any_single_change_to_the_signature_or_its_timestamp_fails(
        body in proptest::collection::vec(any::<u8>(), 0..1_024),
        at in any::<prop::sample::Index>(),
        digit in 0u8..16,
        later in 1i64..=300,
    ) {
        let secret = WebhookSecret::new(SECRET);
        let signature = secret.sign(NOW, &body);
        let mut changed: Vec<u8> = signature.clone().into_bytes();
        let i = at.index(changed.len());
        let replacement = b"0123456789abcdef"[usize::from(digit)];
        prop_assume!(changed[i] != replacement);
        changed[i] = replacement;
        let header = format!("t={NOW},v1={}", String::from_utf8(changed).unwrap());
        prop_assert_eq!(
            verifier().verify(Some(&header), &body, NOW),
            Err(SignatureError::NoMatchingSignature)
        );
        // The right signature presented for another second (still within the tolerance).
        let moved = format!("t={},v1={signature}", NOW + later);
        prop_assert_eq!(
            verifier().verify(Some(&moved), &body, NOW),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn no_header_panics_and_only_a_valid_one_passes(
        header in "\\PC{0,200}",
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        prop_assert!(verifier().verify(Some(&header), &body, NOW).is_err());
    }

    /// Headers shaped like Stripe's (`t=`, `v1=`, `v0=`, in any order and number, with
    /// timestamps of any size and signatures of any length) are refused without a panic.
    #[test]
    fn headers_shaped_like_stripes_never_panic(
        header in "(t=-?[0-9]{0,22}|v1=[0-9a-f]{0,70}|v0=[0-9a-f]{0,10}|[a-z0-9=]{0,6})(,(t=-?[0-9]{0,22}|v1=[0-9a-f]{0,70}|[ a-z0-9=]{0,8})){0,6}",
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        prop_assert!(verifier().verify(Some(&header), &body, NOW).is_err());
    }
}
