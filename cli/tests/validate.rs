//! `zdeploy validate` as a user runs it: real child processes, real files, exit codes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn zdeploy(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("zdeploy starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .expect("stdin written");
    drop(pipe);
    child.wait_with_output().expect("zdeploy finishes")
}

#[test]
fn the_example_is_valid() {
    let out = zdeploy(&["validate", "-f", "manifests/examples/echo.yaml"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ZmqService/echo: valid"));
}

#[test]
fn every_invalid_example_exits_1_naming_its_field() {
    let dir = root().join("tests/manifests/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("invalid examples exist") {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no '# expect:' line", path.display()));
        let out = zdeploy(&["validate", "-f", path.to_str().unwrap()], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", path.display());
        assert!(
            stderr.contains(&format!(" {expect}: ")),
            "{}: expected the path {expect} in: {stderr}",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} invalid examples found");
}

#[test]
fn stdin_multi_document_and_json_output() {
    let good = std::fs::read_to_string(root().join("manifests/examples/echo.yaml")).unwrap();
    let bad =
        std::fs::read_to_string(root().join("tests/manifests/invalid/port-out-of-range.yaml"))
            .unwrap();
    let out = zdeploy(
        &["validate", "-f", "-", "-o", "json"],
        Some(&format!("{good}\n---\n{bad}")),
    );
    assert_eq!(out.status.code(), Some(1));
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(reports[0]["valid"], true);
    assert_eq!(reports[1]["valid"], false);
    assert_eq!(reports[1]["document"], 1);
    assert_eq!(reports[1]["problems"][0]["path"], "spec.zmq.port");
    assert_eq!(reports[1]["problems"][0]["value"], "70000");
    assert!(reports[1]["problems"][0]["line"].as_u64().unwrap() > 40);
}

#[test]
fn a_directory_is_walked() {
    let out = zdeploy(&["validate", "-f", "manifests/examples"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = zdeploy(&["validate", "-f", "tests/manifests"], None);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_missing_file_is_an_error_not_a_pass() {
    let out = zdeploy(&["validate", "-f", "no/such/file.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no/such/file.yaml"));
}
