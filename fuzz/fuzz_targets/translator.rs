//! Any JSON through the translator the worker runs on each stored event (signed input, so
//! it must never panic whatever Stripe, or whoever holds the secret, sends).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = subledger_stripe::translate(&event);
    }
});
