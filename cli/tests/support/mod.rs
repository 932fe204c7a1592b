//! Test support: real child processes (zdeploy, pyzmq peers) that stop when dropped,
//! their "ready" lines, and small HTTP and metrics helpers. Servers bind 127.0.0.1 only.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use zdeploy_testkit::children::die_with_test;
use zdeploy_testkit::dirs::TempDir;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A fresh directory for one test, removed with everything in it when dropped.
pub fn tempdir(tag: &str) -> TempDir {
    TempDir::new(tag)
}

/// The Python with pyzmq that `tests/run` installs; the tests fail, not skip, without it.
pub fn python() -> PathBuf {
    let p = std::env::var_os("ZDEPLOY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"));
    assert!(
        p.exists(),
        "{} not found: run ./tests/run, which creates the venv with pyzmq",
        p.display()
    );
    p
}

/// A child process that is killed when dropped, and dies with the test's thread.
pub struct Proc {
    pub child: Child,
    /// The first stdout line that started with the ready word.
    pub ready: String,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` and waits (at most 20 s) for a stdout line starting with `ready_word`.
    pub fn start(mut cmd: Command, ready_word: &str) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null());
        let mut child = die_with_test(&mut cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let out = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Proc {
            child,
            ready: String::new(),
            lines,
        };
        p.ready = p.wait_line(ready_word, Duration::from_secs(20));
        p
    }

    /// Starts `cmd` without waiting for any line (its output is discarded).
    pub fn start_silent(mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        Proc::unread(cmd)
    }

    /// Spawns `cmd` whose stdout this side does not read.
    fn unread(mut cmd: Command) -> Proc {
        let child = die_with_test(&mut cmd)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let (_, lines) = mpsc::channel();
        Proc {
            child,
            ready: String::new(),
            lines,
        }
    }

    /// Starts `cmd` with stdout and stderr appended to `log`, without waiting.
    pub fn start_logged(mut cmd: Command, log: &std::path::Path) -> Proc {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        cmd.stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null());
        Proc::unread(cmd)
    }

    /// The next stdout line starting with `word`, waiting at most `limit`.
    pub fn wait_line(&mut self, word: &str, limit: Duration) -> String {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(word) => return l,
                Ok(_) => continue,
                Err(e) => panic!("no {word:?} line from the child within {limit:?}: {e}"),
            }
        }
    }

    /// The word after `word` in the ready line (`frontend tcp://...`).
    pub fn ready_field(&self, word: &str) -> String {
        let mut it = self.ready.split_whitespace();
        it.find(|x| *x == word)
            .and(it.next())
            .unwrap_or_else(|| panic!("no {word:?} in the ready line {:?}", self.ready))
            .to_string()
    }

    /// The next stdout line that contains `part`, waiting at most `limit`.
    pub fn wait_line_containing(&mut self, part: &str, limit: Duration) -> String {
        self.lines_until(part, limit).pop().expect("the line found")
    }

    /// The stdout lines up to and including the next one that contains `part`, waiting at
    /// most `limit`.
    pub fn lines_until(&mut self, part: &str, limit: Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + limit;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let found = l.contains(part);
                    seen.push(l);
                    if found {
                        return seen;
                    }
                }
                Err(e) => panic!(
                    "no line with {part:?} from the child within {limit:?}: {e}; before: {seen:?}"
                ),
            }
        }
    }

    /// The stdout lines printed since the last read, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        self.lines.try_iter().collect()
    }

    /// Sends a signal (e.g. "TERM", "STOP", "KILL").
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for exit, at most `limit`; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "child did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Open descriptors, from /proc.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.child.id()).expect("VmRSS in /proc status")
    }
}

/// Resident memory of process `pid` in KiB, from /proc; `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pyzmq peer from tests/peers/zmq_peer.py; `.endpoint()` is where it listens.
pub fn peer(args: &[&str]) -> Proc {
    let mut cmd = Command::new(python());
    cmd.arg(root().join("tests/peers/zmq_peer.py")).args(args);
    Proc::start(cmd, "ready ")
}

impl Proc {
    /// The endpoint from a "ready <endpoint>" line.
    pub fn endpoint(&self) -> String {
        self.ready
            .split_whitespace()
            .nth(1)
            .expect("ready line has an endpoint")
            .to_string()
    }
}

/// Runs a pyzmq client to completion and returns its JSON summary.
pub fn client(args: &[&str]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(root().join("tests/peers/zmq_peer.py"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("client runs");
    assert!(out.status.success(), "client {args:?} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("client output {text:?}: {e}"))
}

/// zdeploy.exe, made by `tests/windows/build` (which `./tests/run` runs).
pub fn windows_exe() -> PathBuf {
    let exe = root().join(".cache/windows/zdeploy.exe");
    assert!(
        exe.exists(),
        "{} not found: tests/windows/build makes it (./tests/run runs it)",
        exe.display()
    );
    exe
}

/// Debian's 64-bit wine loader itself: the `wine` wrapper prints a hint about 32-bit
/// wine on every run, and the exe is 64-bit.
const WINE64: &str = "/usr/lib/wine/wine64";

/// `zdeploy.exe ARGS` under wine in the repository root, in the wine prefix
/// `.cache/windows/PREFIX`. Each prefix has a wineserver of its own, which creates the
/// sockets: a prefix first used in a network namespace keeps its sockets there.
pub fn wine(prefix: &str, args: &[&str]) -> Command {
    let exe = windows_exe();
    let prefix = root().join(".cache/windows").join(prefix);
    let mut cmd = wine_in(&prefix);
    prepare_prefix(&prefix);
    cmd.arg(exe)
        .args(args)
        .current_dir(root())
        .env_remove("KUBECONFIG");
    cmd
}

/// The wine loader with its environment for `prefix`.
fn wine_in(prefix: &std::path::Path) -> Command {
    assert!(
        std::path::Path::new(WINE64).exists(),
        "{WINE64} not found: apt-get install wine64 (./tests/run does)"
    );
    let mut cmd = Command::new(WINE64);
    cmd.env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        // No Mono or Gecko installer dialogs: nothing here needs them.
        .env("WINEDLLOVERRIDES", "mscoree,mshtml=");
    cmd
}

/// Creates the wine prefix once (per test process) and gives it the bcryptprimitives.dll
/// stand-in that wine 8 lacks (tests/windows/bcryptprimitives.c).
fn prepare_prefix(prefix: &std::path::Path) {
    static READY: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if ready.iter().any(|p| p == prefix) {
        return;
    }
    let system32 = prefix.join("drive_c/windows/system32");
    if !system32.exists() {
        let status = wine_in(prefix)
            .args(["wineboot", "--init"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("wineboot runs");
        assert!(status.success(), "wineboot --init: {status}");
    }
    let shim = root().join(".cache/windows/bcryptprimitives.dll");
    assert!(
        shim.exists(),
        "{} not found: tests/windows/build makes it",
        shim.display()
    );
    std::fs::copy(&shim, system32.join("bcryptprimitives.dll")).expect("the stand-in is copied");
    ready.push(prefix.to_path_buf());
}

/// A path as Windows programs under wine see it: drive Z: is `/`.
pub fn windows_path(p: &std::path::Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// An HTTP client for tests (ring as the TLS provider, as in the binary).
pub fn http() -> reqwest::blocking::Client {
    zdeploy_controller::tls::install_ring_provider();
    reqwest::blocking::Client::new()
}

/// Runs `zdeploy ARGS` from the repository root, without KUBECONFIG; returns the exit
/// code, stdout and stderr.
pub fn zdeploy(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
        .args(args)
        .current_dir(root())
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A running `zdeploy up` and the ZeroMQ endpoint its clients use.
pub struct Up {
    /// The process.
    pub proc: Proc,
    /// zgate's frontend.
    pub frontend: String,
}

/// Starts `zdeploy up -f FILE` with its state under `state`, on a free frontend port.
pub fn up(file: &std::path::Path, state: &std::path::Path) -> Up {
    up_with(file, state, &[])
}

/// `up` with extra arguments.
pub fn up_with(file: &std::path::Path, state: &std::path::Path, extra: &[&str]) -> Up {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdeploy"));
    cmd.args([
        "up",
        "-f",
        file.to_str().unwrap(),
        "--frontend",
        "tcp://127.0.0.1:*",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    cmd.args(extra);
    let proc = Proc::start(cmd, "zdeploy up:");
    let frontend = proc.ready_field("frontend");
    Up { proc, frontend }
}

/// A running `zdeploy gateway` and its addresses.
pub struct Gw {
    pub proc: Proc,
    pub frontend: String,
    pub metrics: String,
    pub admin: String,
}

/// Starts `zdeploy gateway` on free loopback ports with the extra `args`.
pub fn gateway(args: &[&str]) -> Gw {
    gateway_on("tcp://127.0.0.1:*", args)
}

/// A gateway in front of `stable` and `canary` at `weights` (more flags in `extra`), once
/// the canary's pool is live.
pub fn two_pools(stable: &Proc, canary: &Proc, weights: &str, extra: &[&str]) -> Gw {
    let pools = [
        format!("stable={}", stable.endpoint()),
        format!("canary={}", canary.endpoint()),
    ];
    let mut args = vec![
        "--pool",
        &pools[0],
        "--pool",
        &pools[1],
        "--weights",
        weights,
    ];
    args.extend_from_slice(extra);
    let gw = gateway(&args);
    // zgate holds requests while a weighted pool has no live backend yet (its warm-up);
    // a test that times replies starts once both pools are connected.
    gw.wait_live("stable", 1.0);
    gw.wait_live("canary", 1.0);
    gw
}

/// Starts `zdeploy gateway` with its frontend on `frontend` (metrics and admin on free ports).
pub fn gateway_on(frontend: &str, args: &[&str]) -> Gw {
    gateway_with(frontend, args, |_| {})
}

/// As `gateway_on`, with `configure` applied to the command first (e.g. its environment).
pub fn gateway_with(frontend: &str, args: &[&str], configure: impl FnOnce(&mut Command)) -> Gw {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdeploy"));
    configure(&mut cmd);
    cmd.args([
        "gateway",
        "--frontend",
        frontend,
        "--metrics",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ]);
    cmd.args(args);
    Gw::started(cmd)
}

impl Gw {
    /// Starts `cmd` (a `zdeploy gateway`, however wrapped) and reads its addresses from
    /// its ready line.
    pub fn started(cmd: Command) -> Gw {
        let proc = Proc::start(cmd, "zgate ready:");
        Gw {
            frontend: proc.ready_field("frontend"),
            metrics: proc.ready_field("metrics"),
            admin: proc.ready_field("admin"),
            proc,
        }
    }

    /// The HTTP status of GET `path` on the metrics listener (`/healthz`, `/readyz`).
    pub fn status_of(&self, path: &str) -> u16 {
        let url = self.metrics.replace("/metrics", path);
        http().get(url).send().unwrap().status().as_u16()
    }

    /// The current `/metrics` text.
    pub fn scrape(&self) -> String {
        http().get(&self.metrics).send().unwrap().text().unwrap()
    }

    /// The value of one series, e.g. `zgate_requests_total{service="zgate",pool="canary",outcome="ok"}`.
    pub fn metric(&self, series: &str) -> f64 {
        let text = self.scrape();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    }

    /// Requests counted for a pool and outcome.
    pub fn requests(&self, pool: &str, outcome: &str) -> f64 {
        self.metric(&format!(
            "zgate_requests_total{{service=\"zgate\",pool=\"{pool}\",outcome=\"{outcome}\"}}"
        ))
    }

    /// Waits until a pool has `n` live backends (at most 10 s).
    pub fn wait_live(&self, pool: &str, n: f64) {
        let series = format!("zgate_backends_live{{service=\"zgate\",pool=\"{pool}\"}}");
        for _ in 0..200 {
            if self.metric(&series) == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("pool {pool} never reached {n} live backends");
    }

    /// GET a JSON document from the admin API.
    pub fn get(&self, path: &str) -> serde_json::Value {
        http()
            .get(format!("{}{path}", self.admin))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// PUT a JSON body to the admin API; returns status and body.
    pub fn put(&self, path: &str, body: &str) -> (u16, String) {
        let r = http()
            .put(format!("{}{path}", self.admin))
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    }
}

/// A libzmq client socket in this process (the zmq crate), connected to `endpoint`.
pub fn zmq_client(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str) -> zmq::Socket {
    let s = ctx.socket(kind).unwrap();
    s.set_linger(0).unwrap();
    s.set_rcvtimeo(10_000).unwrap();
    s.connect(endpoint).unwrap();
    s
}
