//! `zdeploy demo`, as the README's first command runs it, non-interactively.

use std::process::Command;

#[test]
fn the_demo_rolls_back_the_bad_build_and_promotes_the_good_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(["demo", "-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "demo failed:\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("JSON summary on stdout");
    assert_eq!(summary["requests_unanswered"], 0, "{summary}");
    assert_eq!(summary["bad_version_rolled_back"], true, "{summary}");
    assert_eq!(summary["good_version_promoted"], true, "{summary}");
    assert!(
        summary["requests_sent"].as_u64().unwrap() > 1000,
        "{summary}"
    );
    assert!(
        summary["canary_errors"].as_u64().unwrap() > 0,
        "the bad build served no error: {summary}"
    );
    assert!(summary["rollback_seconds"].as_f64().is_some(), "{summary}");
    assert!(
        stderr.contains("analysis: error-ratio"),
        "the live view shows verdicts:\n{stderr}"
    );
}
