//! The shipped Prometheus rules pass `promtool check rules` and their unit tests.

mod support;

use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(zdeploy_testkit::fixtures::repo("manifests/prometheus"))
        .output()
        .expect("promtool runs (./tests/run installs the prometheus package)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn rules_are_valid() {
    assert!(promtool(&["check", "rules", "zgate-rules.yaml"]).contains("SUCCESS: 8 rules found"));
}

#[test]
fn rule_unit_tests_pass() {
    assert!(promtool(&["test", "rules", "zgate-rules.test.yaml"]).contains("SUCCESS"));
}
