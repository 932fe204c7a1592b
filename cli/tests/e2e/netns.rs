//! The suite runs in a network namespace of its own: its loopback, and the pod network
//! 198.18.0.0/16 (the range RFC 2544 sets aside for test networks) routed to it as local
//! addresses, so every pod address kwok hands out can be bound by the process that plays
//! the pod, and is reached by zgate and the clients exactly as a pod IP is. The namespace
//! has no other interface: nothing the suite sends can leave this machine. The API server
//! accepts these addresses in EndpointSlices (it refuses 127.0.0.0/8 there).

use std::process::Command;

/// The pods' addresses (kwok's `--cidr`).
pub const POD_CIDR: &str = "198.18.0.1/16";
/// The nodes' addresses: not routed anywhere, so nothing can reach a node by mistake.
pub const NODE_IP: &str = "198.19.0.1";

/// Set in the re-executed suite, inside its namespace.
const INSIDE: &str = "ZDEPLOY_E2E_NETNS";

/// Runs the suite inside a new network namespace: re-executes this binary there (as
/// root: `unshare --net`; otherwise in a user namespace too) and returns its exit code.
/// Inside, sets the namespace up and returns `None`.
pub fn isolate() -> Option<i32> {
    if std::env::var_os(INSIDE).is_some() {
        set_up();
        return None;
    }
    let me = std::env::current_exe().expect("the test binary's path");
    let root = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = Command::new("unshare");
    if !root {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.arg("--net")
        .arg("--")
        .arg(me)
        .args(std::env::args_os().skip(1))
        .env(INSIDE, "1");
    let status = cmd
        .status()
        .expect("running the suite under unshare (util-linux)");
    Some(status.code().unwrap_or(1))
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn set_up() {
    ip(&["link", "set", "lo", "up"]);
    // `local` makes every address of the range this namespace's own, without an interface.
    ip(&["route", "add", "local", "198.18.0.0/16", "dev", "lo"]);
}
