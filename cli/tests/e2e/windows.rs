//! The on-call engineer on a Windows laptop: zdeploy.exe (under wine, its sockets in the
//! suite's network namespace) rolls a canary back through the real API server, with the
//! admin kubeconfig given as a Windows path.

use std::time::Duration;

use libtest_mimic::Failed;

use crate::controlplane::ControlPlane;
use crate::scenario::{Stage, eventually};
use crate::support;
use crate::traffic::V2;

pub fn the_windows_exe_rolls_a_canary_back(cp: &ControlPlane) -> Result<(), Failed> {
    let Stage {
        ns,
        ctl: _ctl,
        pods: _pods,
    } = cp.stage("windows-cli");
    let file = cp.echo_manifest(&ns.name, |t| t);
    cp.zdeploy(&["apply", "-f", &file.display().to_string()]);
    cp.zdeploy(&[
        "rollout", "echo", "-n", &ns.name, "--canary", "10", "--image", V2,
    ]);
    eventually("the rollout is recorded", Duration::from_secs(60), || {
        cp.status(&ns.name, "echo")["rollout"]
            .is_object()
            .then_some(())
    });
    // KUBECONFIG lists files with `;` on Windows: a file with no context, then the admin's.
    let partial = cp.file("no-context.kubeconfig", "apiVersion: v1\nkind: Config\n");
    let list = format!(
        "{};{}",
        support::windows_path(&partial),
        support::windows_path(&cp.admin)
    );
    let out = support::wine(
        "prefix-e2e",
        &["status", "echo", "-n", &ns.name, "-o", "json"],
    )
    .env("KUBECONFIG", &list)
    .output()
    .expect("wine runs");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "zdeploy.exe status with KUBECONFIG={list}: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(status["rollout"].is_object(), "{status}");
    let kubeconfig = support::windows_path(&cp.admin);
    let out = support::wine(
        "prefix-e2e",
        &[
            "rollback",
            "echo",
            "-n",
            &ns.name,
            "--kubeconfig",
            &kubeconfig,
            "--reason",
            "paged, from a Windows laptop",
        ],
    )
    .output()
    .expect("wine runs");
    assert!(
        out.status.success(),
        "zdeploy.exe rollback: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("the canary is rolled back", Duration::from_secs(60), || {
        (cp.status(&ns.name, "echo")["phase"] == "RolledBack").then_some(())
    });
    let s = cp.status(&ns.name, "echo");
    assert!(
        s["history"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("paged, from a Windows laptop")),
        "{s}"
    );
    assert_eq!(cp.weights(&ns.name, "echo")["canary"], 0);
    println!("zdeploy.exe rollback --kubeconfig {kubeconfig}: rolled back through the API server");
    Ok(())
}
