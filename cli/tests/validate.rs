//! `zdeploy validate` as a user runs it: real child processes, real files, exit codes.

mod support;

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

#[test]
fn manifests_in_utf16_or_with_a_bom_are_read_and_other_encodings_named() {
    let dir = support::tempdir("encodings");
    let text = std::fs::read_to_string(root().join("manifests/examples/echo.yaml")).unwrap();
    // What PowerShell's Out-File (UTF-16 LE with BOM) and Notepad's "UTF-8 with BOM" write.
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend(text.as_bytes());
    for (name, bytes) in [("utf16.yaml", utf16), ("bom.yaml", bom)] {
        let f = dir.join(name);
        std::fs::write(&f, bytes).unwrap();
        let (code, out, err) = support::zdeploy(&["validate", "-f", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{name}: {out}{err}");
        assert!(out.contains("ZmqService/echo: valid"), "{out}");
    }
    let gbk = dir.join("gbk.yaml");
    std::fs::write(&gbk, b"metadata: {name: \xC3\xFB\xD7\xD6}\n").unwrap();
    let (code, _, err) = support::zdeploy(&["validate", "-f", gbk.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("gbk.yaml is not UTF-8") && err.contains("Set-Content -Encoding utf8"),
        "{err}"
    );
    let dup = dir.join("dup.yaml");
    std::fs::write(
        &dup,
        text.replacen("  replicas: 3\n", "  replicas: 3\n  replicas: 4\n", 1),
    )
    .unwrap();
    let (code, out, err) = support::zdeploy(&["validate", "-f", dup.to_str().unwrap()]);
    let all = format!("{out}{err}");
    assert_ne!(code, 0);
    assert!(
        all.contains("duplicate mapping key: replicas (a key may appear once"),
        "{all}"
    );
    assert!(!all.contains("DuplicateKeyPolicy"), "{all}");
}
