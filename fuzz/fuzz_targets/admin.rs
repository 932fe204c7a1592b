//! Admin API bodies: never a panic; accepted weights are a whole split, accepted faults
//! are within their ranges.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zdeploy_gateway::admin::{fault_from_body, weights_from_body};

fuzz_target!(|data: &[u8]| {
    let pools = ["stable".to_string(), "canary".to_string()];
    if let Ok(w) = weights_from_body(&pools, data) {
        assert_eq!(w.len(), pools.len());
        assert_eq!(w.iter().map(|w| u32::from(w.percent())).sum::<u32>(), 100);
    }
    if let Ok(f) = fault_from_body(data) {
        assert!((0.0..=1.0).contains(&f.error_ratio) && (0.0..=1.0).contains(&f.drop_ratio));
    }
});
