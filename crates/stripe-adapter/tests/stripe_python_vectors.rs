//! The verifier against signature vectors made and judged by Stripe's official Python library
//! (`tools/stripe_signature_vectors.py` regenerates them): for every body, header, secret and
//! moment, Subledger accepts exactly what stripe-python's `WebhookSignature.verify_header`
//! accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use serde::Deserialize;
use subledger_stripe::{WebhookSecret, WebhookVerifier};

#[derive(Deserialize)]
struct Vectors {
    generator: String,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    payload: String,
    header: String,
    secret: String,
    now: i64,
    tolerance_secs: u64,
    stripe_python_accepts: bool,
}

#[test]
fn the_verifier_accepts_exactly_what_stripes_python_library_accepts() {
    let data: Vectors =
        serde_json::from_str(include_str!("data/stripe_python_signature_vectors.json")).unwrap();
    assert!(data.generator.contains("stripe-python"));
    assert!(data.vectors.len() >= 50);
    let mut disagreements = Vec::new();
    for vector in &data.vectors {
        let verifier = WebhookVerifier::new(
            vec![WebhookSecret::new(&vector.secret)],
            Duration::from_secs(vector.tolerance_secs),
        );
        let header = (!vector.header.is_empty()).then_some(vector.header.as_str());
        let accepts = verifier
            .verify(header, vector.payload.as_bytes(), vector.now)
            .is_ok();
        if accepts != vector.stripe_python_accepts {
            disagreements.push(format!(
                "{}: stripe-python {}, Subledger {}",
                vector.name, vector.stripe_python_accepts, accepts
            ));
        }
    }
    let accepted = data
        .vectors
        .iter()
        .filter(|v| v.stripe_python_accepts)
        .count();
    assert!(accepted > 10 && accepted < data.vectors.len() - 10);
    assert!(disagreements.is_empty(), "{disagreements:#?}");
}
