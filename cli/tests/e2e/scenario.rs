//! What every cluster scenario needs: a namespace of its own, kubectl and zdeploy as the
//! admin, the installed controller running out of cluster with its ServiceAccount's
//! token, the processes of the namespace's pods, and polling with a limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::controlplane::ControlPlane;
use crate::pods::{Behaviour, PodRunner, Setup};
use crate::support::{self, Proc};

/// The image of a revision's name (`IMAGE+DIGEST`) in a status.
pub fn image_of(revision: &Value) -> &str {
    let name = revision.as_str().unwrap_or_default();
    name.rsplit_once('+').map_or(name, |(image, _)| image)
}

/// Polls `probe` every 250 ms for at most `limit`; panics with `what` when it never holds.
pub fn eventually<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A scenario's namespace, its pods' processes and its controller; dropped in this order
/// (the pods' processes stop before the namespace goes).
pub struct Stage<'a> {
    pub pods: PodRunner,
    pub ctl: Controller,
    pub ns: Namespace<'a>,
}

/// A namespace for one scenario, deleted (with what is in it) on drop.
pub struct Namespace<'a> {
    pub name: String,
    cp: &'a ControlPlane,
}

impl<'a> Namespace<'a> {
    pub fn new(cp: &'a ControlPlane, tag: &str) -> Self {
        let name = format!("e2e-{tag}");
        cp.kubectl(&["create", "namespace", &name]);
        Namespace { name, cp }
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        let _ = self.cp.kubectl_as(
            &self.cp.admin,
            &["delete", "namespace", &self.name, "--wait=false"],
        );
    }
}

impl ControlPlane {
    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&all)).unwrap()
    }

    /// `zdeploy ARGS` with the given kubeconfig: exit code, stdout, stderr.
    pub fn zdeploy_as(&self, kubeconfig: &Path, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_zdeploy"))
            .args(args)
            .current_dir(support::root())
            .env("KUBECONFIG", kubeconfig)
            .env("PATH", path_with_kubectl(self))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `zdeploy ARGS` as the admin; panics unless it exits 0; returns stdout.
    pub fn zdeploy(&self, args: &[&str]) -> String {
        let (code, out, err) = self.zdeploy_as(&self.admin, args);
        assert_eq!(code, 0, "zdeploy {args:?}: {err}{out}");
        out
    }

    /// `zdeploy install`, then the CRDs Established; idempotent (server-side apply).
    pub fn install(&self) {
        self.zdeploy(&["install"]);
        for crd in ["zmqservices.zdeploy.io", "chaosschedules.zdeploy.io"] {
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                &format!("crd/{crd}"),
                "--timeout=60s",
            ]);
        }
    }

    /// A service's world: zdeploy installed, the Windows RuntimeClass, a namespace of its
    /// own (`e2e-TAG`), the processes of its pods (images in `behaviours` misbehave) and a
    /// controller `e2e-TAG` that leads.
    pub fn stage_with(&self, tag: &str, behaviours: &[(&str, Behaviour)]) -> Stage<'_> {
        self.stage_of(tag, behaviours, &[])
    }

    /// `stage` whose controller runs with `flags` added.
    pub fn stage_with_controller(&self, tag: &str, flags: &[&str]) -> Stage<'_> {
        self.stage_of(tag, &[], flags)
    }

    fn stage_of(&self, tag: &str, behaviours: &[(&str, Behaviour)], flags: &[&str]) -> Stage<'_> {
        self.install();
        self.windows_runtime_class();
        let ns = Namespace::new(self, tag);
        let pods = PodRunner::start(Setup {
            kubectl: self.kubectl_path(),
            admin: self.admin.clone(),
            namespace: ns.name.clone(),
            dir: support::tempdir(&format!("pods-{tag}")),
            identity: Box::new(self.identities()),
            behaviours: behaviours
                .iter()
                .map(|(image, b)| (image.to_string(), *b))
                .collect(),
        });
        let ctl = self.controller_with(&format!("e2e-{tag}"), flags);
        ctl.wait_leading(Duration::from_secs(30));
        Stage { pods, ctl, ns }
    }

    /// `stage_with` where every pod serves.
    pub fn stage(&self, tag: &str) -> Stage<'_> {
        self.stage_with(tag, &[])
    }

    /// The controller's own identity: a token for the installed ServiceAccount.
    pub fn controller_kubeconfig(&self) -> PathBuf {
        self.service_account_kubeconfig("zdeploy-system", "zdeploy-controller")
    }

    /// `zdeploy controller` on this machine as the installed ServiceAccount, electing its
    /// leader in zdeploy-system as the in-cluster Deployment does.
    pub fn controller(&self, identity: &str) -> Controller {
        self.controller_with(identity, &[])
    }

    /// `controller` with `flags` added.
    pub fn controller_with(&self, identity: &str, flags: &[&str]) -> Controller {
        let port = zdeploy_testkit::ports::free_port();
        let probes = format!("127.0.0.1:{port}");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdeploy"));
        cmd.args(["controller", "--probes", &probes, "--identity", identity])
            .args(flags)
            .env("KUBECONFIG", self.controller_kubeconfig())
            .env(
                "RUST_LOG",
                std::env::var("ZDEPLOY_CONTROLLER_LOG").unwrap_or_else(|_| "info".into()),
            );
        // A heap profile of the controller on demand (the fleet benchmark's "where does
        // the memory go"): heaptrack's preload library, raw data into that folder.
        if let Some(dir) = std::env::var_os("ZDEPLOY_CONTROLLER_HEAPTRACK") {
            let raw = PathBuf::from(dir).join(format!("heaptrack.{identity}.raw"));
            cmd.env("LD_PRELOAD", "/usr/lib/heaptrack/libheaptrack_preload.so")
                .env("DUMP_HEAPTRACK_OUTPUT", raw);
        }
        let log = self.file(&format!("controller-{identity}.log"), "");
        let proc = Proc::start_logged(cmd, &log);
        Controller {
            proc,
            probes: format!("http://{probes}"),
            log,
        }
    }

    /// The RuntimeClass the example manifest names: its scheduling puts pods on the
    /// Windows Server 2022 pool and tolerates the pool's taint.
    pub fn windows_runtime_class(&self) {
        let file = self.file(
            "runtimeclass.yaml",
            "apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: windows-2022\nhandler: runhcs-wcow-process\nscheduling:\n  nodeSelector:\n    kubernetes.io/os: windows\n    node.kubernetes.io/windows-build: \"10.0.20348\"\n  tolerations:\n  - {key: os, operator: Equal, value: windows, effect: NoSchedule}\n",
        );
        self.kubectl(&["apply", "--server-side", "-f", &file.display().to_string()]);
    }

    /// The echo example, in namespace `ns`, as a file.
    pub fn echo_manifest(&self, ns: &str, edit: impl Fn(String) -> String) -> PathBuf {
        let text = std::fs::read_to_string(support::root().join("manifests/examples/echo.yaml"))
            .unwrap()
            .replace("namespace: trading", &format!("namespace: {ns}"));
        let text = edit(text);
        // Named by content: two variants in one namespace are two files.
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&text, &mut h);
        let name = format!("manifest-{:016x}.yaml", std::hash::Hasher::finish(&h));
        self.file(&name, &text)
    }

    /// The rollout weights zgate reads, from the ConfigMap.
    pub fn weights(&self, ns: &str, service: &str) -> Value {
        let cm = self.json(&["get", "configmap", &format!("{service}-weights"), "-n", ns]);
        serde_json::from_str(cm["data"]["weights.json"].as_str().unwrap()).unwrap()
    }

    /// `zdeploy status -o json`.
    pub fn status(&self, ns: &str, service: &str) -> Value {
        serde_json::from_str(&self.zdeploy(&["status", service, "-n", ns, "-o", "json"])).unwrap()
    }
}

/// PATH with the control plane's kubectl first, for tools that call kubectl.
fn path_with_kubectl(cp: &ControlPlane) -> std::ffi::OsString {
    let dir = cp.kubectl_path().parent().unwrap().to_path_buf();
    let mut paths = vec![dir];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap()
}

/// A controller process and its probes address.
pub struct Controller {
    pub proc: Proc,
    /// `http://127.0.0.1:PORT`.
    pub probes: String,
    pub log: PathBuf,
}

impl Controller {
    /// The `zdeploy_controller_leader` gauge, when the probes answer.
    pub fn leader(&self) -> Option<f64> {
        let text = support::http()
            .get(format!("{}/metrics", self.probes))
            .send()
            .ok()?
            .text()
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("zdeploy_controller_leader "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Waits until it leads.
    pub fn wait_leading(&self, limit: Duration) {
        eventually("the controller takes the Lease", limit, || {
            (self.leader()? == 1.0).then_some(())
        });
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Controller {
    // A controller stopped by TERM gives up its Lease, so the next scenario's
    // controller leads at once instead of after the Lease expires.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- controller log (last 30 lines):\n{}",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        if matches!(self.proc.child.try_wait(), Ok(None)) {
            self.proc.signal("TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.proc.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
