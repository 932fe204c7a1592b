//! A manifest's bytes through decoding and all three validation passes: never a panic,
//! and a document with problems never yields a resource.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zdeploy_api::validate::{text::decode, validate_str};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = decode(data) else { return };
    if let Ok(docs) = validate_str(&text) {
        for d in docs {
            assert!(d.problems.is_empty() || d.resource.is_none());
        }
    }
});
