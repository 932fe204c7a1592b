//! Leader election through a real Lease: a standby controller takes over when the
//! leader is killed with no chance to give the Lease up.

use std::time::{Duration, Instant};

use libtest_mimic::Failed;
use zdeploy_controller::platforms::kubernetes::leader::LEASE_SECONDS;

use crate::controlplane::ControlPlane;
use crate::scenario::eventually;

/// kill -9 the leader; the standby leads within the Lease duration (plus its retry).
pub fn a_standby_takes_over_from_a_killed_leader(cp: &ControlPlane) -> Result<(), Failed> {
    cp.install();
    let a = cp.controller("e2e-leader-a");
    a.wait_leading(Duration::from_secs(30));
    let b = cp.controller("e2e-leader-b");
    eventually("the standby answers", Duration::from_secs(30), || {
        b.leader()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.leader(), Some(0.0), "two leaders at once");
    let lease = cp.json(&["get", "lease", "zdeploy-controller", "-n", "zdeploy-system"]);
    assert_eq!(lease["spec"]["holderIdentity"], "e2e-leader-a");

    let mut a = a;
    a.proc.signal("KILL");
    let killed = Instant::now();
    a.proc.wait_exit(Duration::from_secs(5));
    let limit = Duration::from_secs(LEASE_SECONDS + 5);
    eventually("the standby leads", limit, || {
        (b.leader()? == 1.0).then_some(())
    });
    let took = killed.elapsed();
    println!(
        "take-over after kill -9: {:.1} s (Lease duration {LEASE_SECONDS} s)",
        took.as_secs_f64()
    );
    let lease = cp.json(&["get", "lease", "zdeploy-controller", "-n", "zdeploy-system"]);
    assert_eq!(lease["spec"]["holderIdentity"], "e2e-leader-b");
    assert!(
        took <= limit,
        "took {took:?}, more than the Lease duration and a retry"
    );

    // Asked to stop the moment it leads (a rolling update of the controller), it stops
    // within the grace and gives the Lease up.
    let mut b = b;
    b.proc.signal("TERM");
    let asked = Instant::now();
    assert_eq!(b.proc.wait_exit(Duration::from_secs(15)), Some(0));
    println!(
        "stopped {:.1} s after SIGTERM right after taking the Lease",
        asked.elapsed().as_secs_f64()
    );
    let lease = cp.json(&["get", "lease", "zdeploy-controller", "-n", "zdeploy-system"]);
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
    Ok(())
}
