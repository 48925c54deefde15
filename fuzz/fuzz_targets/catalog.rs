//! Any text through the plan catalog's parser: an error with a line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = subledger_domain::catalog::Catalog::from_yaml("fuzz.yaml", text);
    }
});
