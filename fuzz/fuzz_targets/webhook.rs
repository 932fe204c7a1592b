//! Alertmanager webhook bodies: never a panic, and the inbox stays within its bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zdeploy_controller::analysis::webhook::{AlertInbox, MAX_KEPT};

fuzz_target!(|data: &[u8]| {
    for inbox in [AlertInbox::default(), AlertInbox::only_for("echo")] {
        if let Ok(r) = inbox.receive(data) {
            let (waiting, firing) = inbox.sizes();
            assert!(waiting <= MAX_KEPT && firing <= MAX_KEPT);
            assert!(waiting <= r.firing);
        }
    }
});
