//! `zdeploy runbook` as the on-call engineer uses it.

mod support;

use support::zdeploy;

#[test]
fn show_by_alert_name_prints_the_page() {
    let (code, out, _) = zdeploy(&["runbook", "show", "CanaryErrorRateHigh"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("Canary error ratio high\n"), "{out}");
    for section in ["Meaning", "Impact", "Diagnosis", "Mitigation", "Rollback"] {
        assert!(
            out.contains(&format!("\n{section}\n")),
            "no {section} in {out}"
        );
    }
}

#[test]
fn lint_passes_on_the_repository() {
    let (code, out, err) = zdeploy(&["runbook", "lint"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("consistent"));
}

#[test]
fn steps_are_shown_run_dry_and_refuse_shell_syntax() {
    let (code, out, _) = zdeploy(&["runbook", "show", "canary-error-ratio-high", "--steps"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("step 1:\n  zdeploy rollback {{service}} --reason CanaryErrorRateHigh"),
        "{out}"
    );
    let (code, out, _) = zdeploy(&[
        "runbook",
        "run",
        "canary-error-ratio-high",
        "1",
        "--set",
        "service=echo",
        "--dry-run",
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "$ zdeploy rollback echo --reason CanaryErrorRateHigh\n")
    );
    let (code, _, err) = zdeploy(&[
        "runbook",
        "run",
        "canary-error-ratio-high",
        "1",
        "--set",
        "service=echo; rm -rf /",
        "--dry-run",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("values may hold only"), "{err}");
    // Without --yes and without a "y" on stdin, nothing runs.
    let (code, _, err) = zdeploy(&[
        "runbook",
        "run",
        "canary-error-ratio-high",
        "1",
        "--set",
        "service=echo",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("not confirmed"), "{err}");
}
