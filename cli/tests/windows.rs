//! zdeploy.exe under wine: the Windows build (`tests/windows/build`, which `./tests/run`
//! runs first) against the Linux one and against Linux pyzmq peers over 127.0.0.1. Never
//! skipped: without the exe or wine these tests fail and say how to get them.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::{Proc, client, peer, root, tempdir, windows_exe as exe, windows_path};

/// `zdeploy.exe ARGS` under wine, in the suite's own prefix.
fn wine(args: &[&str]) -> Command {
    support::wine("prefix", args)
}

/// Runs `wine zdeploy.exe ARGS` to completion.
fn run_exe(args: &[&str]) -> Output {
    wine(args).output().expect("wine runs")
}

/// Runs the Linux build with the same arguments.
fn run_linux(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(args)
        .current_dir(root())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace("\r\n", "\n")
}

#[test]
fn it_imports_only_windows_own_dlls() {
    exe();
    let list = std::fs::read_to_string(root().join(".cache/windows/zdeploy.exe.dlls"))
        .expect("the build lists the imported DLLs");
    let dlls: Vec<String> = list
        .lines()
        .map(|l| l.trim().to_lowercase())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let system = [
        "kernel32.dll",
        "ntdll.dll",
        "ws2_32.dll",
        "bcrypt.dll",
        "bcryptprimitives.dll",
        "advapi32.dll",
        "crypt32.dll",
        "secur32.dll",
        "ncrypt.dll",
        "iphlpapi.dll",
        "userenv.dll",
        "shell32.dll",
        "ole32.dll",
        "oleaut32.dll",
        "user32.dll",
        "msvcrt.dll",
    ];
    let foreign: Vec<&String> = dlls
        .iter()
        .filter(|d| !system.contains(&d.as_str()) && !d.starts_with("api-ms-win-"))
        .collect();
    assert!(!dlls.is_empty(), "no import found: {list}");
    assert!(
        foreign.is_empty(),
        "DLLs a Windows machine does not have: {foreign:?} (all: {dlls:?})"
    );
    println!(
        "zdeploy.exe: {} bytes, imports {}",
        std::fs::metadata(exe()).unwrap().len(),
        dlls.join(", ")
    );
}

#[test]
fn validate_and_render_say_what_the_linux_build_says() {
    let mut cases: Vec<Vec<String>> = Vec::new();
    for dir in ["manifests/examples", "tests/manifests/invalid"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for f in files.iter().take(4) {
            let rel = format!("{dir}/{}", f.file_name().unwrap().to_string_lossy());
            cases.push(vec!["validate".into(), "-f".into(), rel.clone()]);
            if dir == "manifests/examples" && !rel.contains("chaos") {
                cases.push(vec!["render".into(), "-f".into(), rel]);
            }
        }
    }
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (windows, linux) = (run_exe(&args), run_linux(&args));
        assert_eq!(
            (
                windows.status.code(),
                text(&windows.stdout),
                text(&windows.stderr)
            ),
            (
                linux.status.code(),
                text(&linux.stdout),
                text(&linux.stderr)
            ),
            "zdeploy {args:?}"
        );
    }
    println!(
        "{} validate and render runs: the same exit code, output and errors as the Linux build",
        cases.len()
    );
}

#[test]
fn the_gateway_answers_1000_requests_from_linux_peers() {
    let stable = peer(&["rep", "--name", "stable"]);
    let canary = peer(&["rep", "--name", "canary"]);
    let pools = [
        format!("stable={}", stable.endpoint()),
        format!("canary={}", canary.endpoint()),
    ];
    let mut cmd = wine(&[
        "gateway",
        "--frontend",
        "tcp://127.0.0.1:*",
        "--metrics",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--pool",
        &pools[0],
        "--pool",
        &pools[1],
        "--weights",
        "stable=90,canary=10",
    ]);
    cmd.env("RUST_LOG", "warn");
    let gw = Proc::start(cmd, "zgate ready:");
    let frontend = gw.ready_field("frontend");
    let r = client(&[
        "dealer",
        "--connect",
        &frontend,
        "--count",
        "1000",
        "--pipeline",
        "20",
    ]);
    assert_eq!(
        (r["received"].as_u64(), r["lost"].as_u64()),
        (Some(1000), Some(0)),
        "{r}"
    );
    let by = &r["by_first_word"];
    assert!(
        by["OK stable"].as_u64() > Some(800) && by["OK canary"].as_u64() > Some(50),
        "{r}"
    );
    println!("zgate under wine: 1000 of 1000 answered ({by})");
}

/// Runs a verb of a second zdeploy.exe against the `zdeploy up` whose state is `state`.
fn verb(state: &str, args: &[&str]) -> (Option<i32>, String) {
    let mut all = args.to_vec();
    all.extend(["--state-dir", state]);
    let out = run_exe(&all);
    (
        out.status.code(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

/// Kills, when dropped, any example service still bound to one of these ports: children
/// that outlived a failed check must not outlive the test too.
struct Orphans(Vec<u16>);

impl Drop for Orphans {
    fn drop(&mut self) {
        for port in &self.0 {
            let _ = Command::new("pkill")
                .args(["-f", "--", &format!("--bind tcp://127.0.0.1:{port} ")])
                .status();
        }
    }
}

#[test]
fn up_from_a_chinese_folder_then_verbs_from_a_second_exe_and_the_children_die_with_it() {
    let dir = tempdir("wine-up");
    let folder = dir.join("部署 测试");
    std::fs::create_dir_all(&folder).unwrap();
    // The manifest, the state and the program of local.command all in that folder.
    let program = folder.join("zdeploy.exe");
    std::fs::copy(exe(), &program).unwrap();
    let example = std::fs::read_to_string(root().join("manifests/examples/echo-local.yaml"))
        .unwrap()
        .replace(
            "command: [zdeploy, example",
            &format!("command: ['{}', example", windows_path(&program)),
        );
    assert!(example.contains("部署 测试\\zdeploy.exe'"), "{example}");
    let manifest = folder.join("echo.yaml");
    std::fs::write(&manifest, example).unwrap();
    let state = windows_path(&folder.join("状态"));
    let mut cmd = wine(&[
        "up",
        "-f",
        &windows_path(&manifest),
        "--frontend",
        "tcp://127.0.0.1:*",
        "--state-dir",
        &state,
    ]);
    cmd.env("RUST_LOG", "warn");
    let up = Proc::start(cmd, "zdeploy up:");
    let frontend = up.ready_field("frontend");
    let sent = |n: &str| {
        client(&[
            "dealer",
            "--connect",
            &frontend,
            "--count",
            n,
            "--pipeline",
            "10",
        ])
    };
    let r = sent("200");
    assert_eq!(r["received"], 200, "{r}");

    let (code, out) = verb(
        &state,
        &[
            "rollout",
            "echo",
            "--canary",
            "50",
            "--image",
            "zdeploy.example/echo:1.1",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = verb(&state, &["status", "echo", "-o", "json"]);
    assert_eq!(code, Some(0), "{out}");
    let s: serde_json::Value = serde_json::from_str(&out).expect("status as JSON");
    assert_eq!(s["status"]["canaryWeight"], 50, "{s}");
    let r = sent("400");
    assert_eq!(r["received"], 400, "{r}");
    assert!(r["by_head"]["OK echo 1.1"].as_u64() > Some(100), "{r}");
    let (code, out) = verb(&state, &["rollback", "echo", "--reason", "wine"]);
    assert_eq!(code, Some(0), "{out}");
    let (_, out) = verb(&state, &["status", "echo", "-o", "json"]);
    let s: serde_json::Value = serde_json::from_str(&out).expect("status as JSON");
    assert_eq!(s["status"]["phase"], "RolledBack", "{s}");

    // Killed outright: its Job object closes and takes the children with it.
    let ports: serde_json::Value = serde_json::from_slice(
        &std::fs::read(folder.join("状态/echo/ports.json")).expect("ports recorded"),
    )
    .unwrap();
    let stable: Vec<u16> = serde_json::from_value(ports["stable"].clone()).unwrap();
    let _orphans = Orphans(stable.clone());
    let listening = |p: u16| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok();
    assert!(
        stable.iter().all(|p| listening(*p)),
        "stable runs: {stable:?}"
    );
    up.signal("KILL");
    let killed = Instant::now();
    while stable.iter().any(|p| listening(*p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "children still listen on {stable:?} after zdeploy up was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "zdeploy up killed: its children gone within {:.1} s",
        killed.elapsed().as_secs_f64()
    );
}
