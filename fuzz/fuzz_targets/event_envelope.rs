//! Any body through the envelope parser the receiver runs before storing a delivery.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = subledger_stripe::EventEnvelope::parse(data);
});
