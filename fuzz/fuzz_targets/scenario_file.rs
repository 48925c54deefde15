//! Any text through the scenario file parser: an error with file and line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = subledger_scenario::format::parse(std::path::Path::new("fuzz.yaml"), text);
    }
});
