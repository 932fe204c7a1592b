//! `zdeploy analyze --scrape`: the embedded source, with no Prometheus, through the CLI.

mod support;

use std::time::{Duration, Instant};

use support::{peer, two_pools, zmq_client};

const MANIFEST: &str = "apiVersion: zdeploy.io/v1alpha1
kind: ZmqService
metadata: {name: zgate}
spec:
  windows: {build: \"2022\"}
  template: {spec: {containers: [{name: svc, image: \"example.com/svc:1\"}]}}
  zmq: {port: 7000}
  strategy:
    canary:
      analysis:
        minSamples: 20
";

fn analyze(file: &std::path::Path, url: &str, pool: &str) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args([
            "analyze",
            "-f",
            file.to_str().unwrap(),
            "--scrape",
            url,
            "--over",
            "1s",
            "--pool",
            pool,
            "-o",
            "json",
        ])
        .output()
        .unwrap();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), json)
}

#[test]
fn the_embedded_scrape_fails_a_bad_canary_and_passes_stable() {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary", "--error-ratio", "0.3"]);
    let gw = two_pools(&stable, &canary, "stable=50,canary=50", &[]);
    let frontend = gw.frontend.clone();
    let load = std::thread::spawn(move || {
        let ctx = zmq::Context::new();
        let c = zmq_client(&ctx, zmq::REQ, &frontend);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(4) {
            c.send("x", 0).unwrap();
            c.recv_multipart(0).unwrap();
        }
    });
    let file = std::env::temp_dir().join(format!("zdeploy-analyze-{}.yaml", std::process::id()));
    std::fs::write(&file, MANIFEST).unwrap();
    let (code, bad) = analyze(&file, &gw.metrics, "canary");
    assert_eq!(code, 1, "{bad}");
    assert_eq!(bad["verdict"], "fail");
    let ratio = bad["measurements"][0]["value"].as_f64().unwrap();
    assert!((0.15..0.45).contains(&ratio), "{bad}");
    assert!(
        bad["measurements"][0]["query"]
            .as_str()
            .unwrap()
            .contains("embedded scrape"),
        "{bad}"
    );
    let (code, good) = analyze(&file, &gw.metrics, "stable");
    assert_eq!(code, 0, "{good}");
    assert_eq!(good["verdict"], "pass");
    load.join().unwrap();
    // A manifest of another service names the one this zgate serves.
    let other = file.with_extension("quotes.yaml");
    std::fs::write(&other, MANIFEST.replace("name: zgate", "name: quotes")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args([
            "analyze",
            "-f",
            other.to_str().unwrap(),
            "--scrape",
            &gw.metrics,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(r#"serves "zgate", not "quotes""#),
        "names the service it found: {err}"
    );
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(other);
}
