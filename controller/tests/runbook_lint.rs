//! `zdeploy runbook lint` on the repository, and on copies of it broken one way at a time.

mod support;

use std::path::Path;
use std::process::Command;

use zdeploy_controller::runbooks::lint::lint;
use zdeploy_testkit::dirs::TempDir;
use zdeploy_testkit::fixtures::repo;

fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=zdeploy-test",
            "-c",
            "user.email=test@zdeploy.invalid",
        ])
        .args(args)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok, "git {args:?} failed");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

/// A committed copy of the runbooks and the Prometheus rules.
fn copy() -> TempDir {
    let d = TempDir::new("lint");
    copy_dir(&repo("runbooks"), &d.join("runbooks"));
    copy_dir(
        &repo("manifests/prometheus"),
        &d.join("manifests/prometheus"),
    );
    git(&d, &["init", "-q"]);
    git(&d, &["add", "."]);
    git(&d, &["commit", "-q", "-m", "runbooks"]);
    d
}

fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

fn messages(dir: &Path) -> Vec<String> {
    lint(dir)
        .into_iter()
        .map(|p| format!("{}: {}", p.file, p.message))
        .collect()
}

#[test]
fn the_repository_is_clean() {
    assert_eq!(messages(&repo("")), Vec::<String>::new());
}

#[test]
fn a_clean_copy_is_clean() {
    let d = copy();
    assert_eq!(messages(&d), Vec::<String>::new());
}

#[test]
fn a_broken_runbook_link_is_reported() {
    let d = copy();
    edit(
        &d,
        "manifests/prometheus/zgate-rules.yaml",
        "runbooks/gateway-down.md",
        "runbooks/gateway-gone.md",
    );
    let m = messages(&d);
    assert!(
        m.iter().any(|x| x.contains("alert ZgateDown: runbook_url")
            && x.contains("gateway-gone.md, which does not exist")),
        "{m:?}"
    );
}

#[test]
fn a_missing_section_is_reported() {
    let d = copy();
    edit(
        &d,
        "runbooks/gateway-down.md",
        "## Rollback",
        "## Afterwards",
    );
    edit(
        &d,
        "runbooks/gateway-down.md",
        "version: 1.0.0",
        "version: 1.0.1",
    );
    let m = messages(&d);
    assert_eq!(
        m,
        [
            "runbooks/gateway-down.md: missing section \"## Rollback\" (required: Meaning, Impact, Diagnosis, Mitigation, Rollback)"
        ]
    );
}

#[test]
fn an_alert_without_runbook_is_reported() {
    let d = copy();
    let rule = "      - alert: QueueTooDeep\n        expr: zgate_requests_in_flight > 1000\n        annotations:\n          summary: deep\n";
    edit(
        &d,
        "manifests/prometheus/zgate-rules.yaml",
        "      - alert: ZgateDown\n",
        &format!("{rule}      - alert: ZgateDown\n"),
    );
    let m = messages(&d);
    assert_eq!(
        m,
        [
            "manifests/prometheus/zgate-rules.yaml: alert QueueTooDeep: has no runbook_url annotation"
        ]
    );
}

#[test]
fn a_runbook_listing_an_unknown_alert_is_reported() {
    let d = copy();
    edit(
        &d,
        "runbooks/rollout-stuck.md",
        "alerts: []",
        "alerts: [RolloutStuck]",
    );
    edit(
        &d,
        "runbooks/rollout-stuck.md",
        "version: 1.1.0",
        "version: 1.2.0",
    );
    let m = messages(&d);
    assert_eq!(
        m,
        [
            "runbooks/rollout-stuck.md: lists alert RolloutStuck, which no rule in manifests/prometheus/ defines"
        ]
    );
}

#[test]
fn a_changed_body_needs_a_version_bump() {
    let d = copy();
    edit(
        &d,
        "runbooks/no-live-backend.md",
        "The other pools carry the pool's share.",
        "The other pools carry its share.",
    );
    let m = messages(&d);
    assert_eq!(
        m,
        [
            "runbooks/no-live-backend.md: the body changed since the last commit but version is still 1.1.0: bump it"
        ]
    );
    edit(
        &d,
        "runbooks/no-live-backend.md",
        "version: 1.1.0",
        "version: 1.1.1",
    );
    assert_eq!(messages(&d), Vec::<String>::new());
}

#[test]
fn bad_front_matter_is_reported() {
    let d = copy();
    edit(
        &d,
        "runbooks/gateway-down.md",
        "version: 1.0.0",
        "version: one",
    );
    edit(
        &d,
        "runbooks/gateway-down.md",
        "owners: [platform]",
        "owners: []",
    );
    let m = messages(&d);
    assert!(
        m.iter()
            .any(|x| x.contains("version \"one\" must be semver")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|x| x.contains("owners must name at least one")),
        "{m:?}"
    );
}
