//! A real Kubernetes control plane on 127.0.0.1 for the cluster suite: etcd,
//! kube-apiserver (TLS, client certificates, RBAC), kube-controller-manager,
//! kube-scheduler and kwok, which keeps the suite's Nodes alive and runs their pods.
//! Built by `tests/controlplane/build`; started once per suite run; stopped, and its
//! folder removed, when dropped (also after a failed test: the harness drops it).

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support;

/// The Windows Server 2022 build label value.
pub const WS2022: &str = "10.0.20348";
/// The Windows Server 2019 build label value.
pub const WS2019: &str = "10.0.17763";

/// A client identity: the API server trusts certificates from the suite's CA; the
/// Kubernetes groups come from the certificate's organisation.
enum Credential {
    Certificate { cert: PathBuf, key: PathBuf },
    Token(String),
}

/// One running control-plane process, stopped (TERM, then KILL) when dropped.
struct Daemon {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &'static str, dir: &Path, program: &Path, args: &[String]) -> Daemon {
        let log = dir.join(format!("{name}.log"));
        let child = Self::spawn(program, args, &log);
        Daemon {
            name,
            program: program.to_path_buf(),
            args: args.to_vec(),
            child,
            log,
        }
    }

    fn spawn(program: &Path, args: &[String], log: &Path) -> Child {
        let out = File::options().create(true).append(true).open(log).unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // The control plane dies with the suite even when the suite is killed.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        cmd.spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()))
    }

    /// Starts it again with the same arguments, its log appended to.
    fn restart(&mut self) {
        self.stop();
        self.child = Self::spawn(&self.program, &self.args, &self.log);
    }

    /// The last lines of its log, for a failure message.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        if !self.running() {
            return;
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The control plane, its certificates and its kubeconfigs.
pub struct ControlPlane {
    dir: PathBuf,
    /// Holds `dir`: removed with the control plane.
    _tmp: zdeploy_testkit::dirs::TempDir,
    bin: PathBuf,
    /// The Kubernetes version the binaries report, e.g. `v1.37.2`.
    pub version: String,
    /// `https://127.0.0.1:PORT`.
    pub server: String,
    /// The suite's admin (group system:masters).
    pub admin: PathBuf,
    /// How long the start took, up to Ready nodes.
    pub started_in: Duration,
    etcd_port: u16,
    // Stopped in reverse start order: the nodes' keeper first, etcd last. A mutex: an
    // outage test stops and starts the API server through a shared control plane.
    daemons: Mutex<Vec<Daemon>>,
    /// When the API server was started again by `with_apiserver_down`.
    restarts: Mutex<Vec<jiff::Timestamp>>,
}

/// The folder `tests/controlplane/build` puts the binaries in: for the Kubernetes version
/// its go.mod pins, or the one in ZDEPLOY_KUBERNETES_VERSION (built with `build VERSION`).
fn bin_dir() -> (PathBuf, String) {
    let gomod = std::fs::read_to_string(support::root().join("tests/controlplane/go.mod"))
        .expect("tests/controlplane/go.mod");
    let pinned = gomod
        .lines()
        .find_map(|l| l.strip_prefix("require k8s.io/kubernetes "))
        .expect("go.mod requires k8s.io/kubernetes")
        .trim()
        .to_string();
    let version = std::env::var("ZDEPLOY_KUBERNETES_VERSION").unwrap_or(pinned);
    let bin = support::root()
        .join(".cache/controlplane")
        .join(&version)
        .join("bin");
    for b in [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
        "kwok",
    ] {
        assert!(
            bin.join(b).exists(),
            "{} is missing: run ./tests/run (or tests/controlplane/build {version}), which builds the control plane once",
            bin.join(b).display()
        );
    }
    (bin, version)
}

/// Runs openssl with fixed arguments (no shell); panics with its stderr on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed (tests/run installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a certificate is for.
enum Usage<'a> {
    /// A TLS server at these subject alternative names (`IP:...,DNS:...`).
    Server(&'a str),
    /// A client identity.
    Client,
}

/// A key and a v3 certificate signed by the suite's CA (rustls refuses v1 certificates).
fn issue(dir: &Path, name: &str, subject: &str, usage: Usage) -> (PathBuf, PathBuf) {
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    let extended = match usage {
        Usage::Server(san) => format!("subjectAltName={san}"),
        Usage::Client => "extendedKeyUsage=clientAuth".to_string(),
    };
    let server_usage = "extendedKeyUsage=serverAuth";
    let mut req = vec![
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        &csr,
        "-subj",
        subject,
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-addext",
        "keyUsage=critical,digitalSignature",
        "-addext",
        &extended,
    ];
    if matches!(usage, Usage::Server(_)) {
        req.extend(["-addext", server_usage]);
    }
    openssl(dir, &req);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-copy_extensions",
            "copy",
            "-out",
            &crt,
        ],
    );
    (dir.join(crt), dir.join(key))
}

fn kubeconfig_text(server: &str, ca: &Path, user: &Credential) -> String {
    let user = match user {
        Credential::Certificate { cert, key } => format!(
            "    client-certificate: {}\n    client-key: {}\n",
            cert.display(),
            key.display()
        ),
        Credential::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: e2e\n  user:\n{user}contexts:\n- name: e2e\n  context: {{cluster: e2e, user: e2e}}\ncurrent-context: e2e\n",
        ca.display()
    )
}

impl ControlPlane {
    /// Starts everything and waits until the API server is ready, the controller manager
    /// runs (the default ServiceAccount exists) and every Node is Ready.
    pub fn start() -> ControlPlane {
        let began = Instant::now();
        let (bin, version) = bin_dir();
        let tmp = support::tempdir("controlplane");
        let dir = tmp.to_path_buf();
        let d = dir.as_path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=zdeploy-e2e-ca",
            ],
        );
        let (serving_crt, serving_key) = issue(
            d,
            "apiserver",
            "/CN=kube-apiserver",
            Usage::Server("IP:127.0.0.1,DNS:localhost"),
        );
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "sa.key",
            ],
        );
        openssl(d, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
        let ca = dir.join("ca.crt");

        // Every request by a zdeploy ServiceAccount is recorded, so the suite can hold
        // the RBAC rules against the verbs actually used.
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(
            &audit_policy,
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  userGroups: [\"system:serviceaccounts:zdeploy-system\", \"system:serviceaccounts:e2e-zgate\", \"system:serviceaccounts:e2e-traffic\"]\n- level: None\n",
        )
        .unwrap();
        let etcd_port = zdeploy_testkit::ports::free_port();
        let peer_port = zdeploy_testkit::ports::free_port();
        let api_port = zdeploy_testkit::ports::free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let identity = |name: &str, subject: &str| {
            let (cert, key) = issue(d, name, subject, Usage::Client);
            let path = dir.join(format!("{name}.kubeconfig"));
            std::fs::write(
                &path,
                kubeconfig_text(&server, &ca, &Credential::Certificate { cert, key }),
            )
            .unwrap();
            path
        };
        let admin = identity("admin", "/O=system:masters/CN=zdeploy-e2e-admin");
        let kcm = identity("kcm", "/CN=system:kube-controller-manager");
        let scheduler = identity("scheduler", "/CN=system:kube-scheduler");

        let mut cp = ControlPlane {
            dir: dir.clone(),
            _tmp: tmp,
            bin: bin.clone(),
            version,
            server: server.clone(),
            admin: admin.clone(),
            started_in: Duration::ZERO,
            etcd_port,
            daemons: Mutex::new(Vec::new()),
            restarts: Mutex::new(Vec::new()),
        };
        let s = |p: &Path| p.display().to_string();
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        cp.start_daemon(
            "etcd",
            d,
            &bin.join("etcd"),
            &[
                "--name=e2e".into(),
                format!("--data-dir={}", s(&dir.join("etcd"))),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=e2e={peer_url}"),
                // A test cluster's data need not survive a power cut; fsync would
                // dominate every write on a shared CI disk.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        );
        cp.wait("etcd answers /health", Duration::from_secs(30), |cp| {
            cp.etcd_healthy()
        });

        cp.start_daemon(
            "kube-apiserver",
            d,
            &bin.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", s(&serving_crt)),
                format!("--tls-private-key-file={}", s(&serving_key)),
                format!("--client-ca-file={}", s(&ca)),
                format!("--cert-dir={}", s(&dir.join("apiserver"))),
                "--authorization-mode=Node,RBAC".into(),
                // As kubeadm and the clouds run it: a privileged container is refused by
                // the Windows rules, not by cluster policy.
                "--allow-privileged=true".into(),
                // Hardened clusters run it: owned objects need the owner's finalizers.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", s(&dir.join("sa.pub"))),
                format!(
                    "--service-account-signing-key-file={}",
                    s(&dir.join("sa.key"))
                ),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // The `kubernetes` Service would point at 127.0.0.1, which endpoint
                // validation refuses; nothing in the suite dials it.
                "--endpoint-reconciler-type=none".into(),
                format!("--audit-policy-file={}", s(&audit_policy)),
                format!("--audit-log-path={}", s(&dir.join("audit.log"))),
                "--v=0".into(),
            ],
        );
        cp.wait(
            "kube-apiserver answers /readyz",
            Duration::from_secs(90),
            |cp| cp.kubectl_status(&["get", "--raw=/readyz"]),
        );

        cp.start_daemon(
            "kube-controller-manager",
            d,
            &bin.join("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", s(&kcm)),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--root-ca-file={}", s(&ca)),
                format!(
                    "--service-account-private-key-file={}",
                    s(&dir.join("sa.key"))
                ),
                "--cluster-name=zdeploy-e2e".into(),
                // The fleet benchmark's thousands of ReplicaSets and pods (20 a second
                // by default).
                "--kube-api-qps=200".into(),
                "--kube-api-burst=400".into(),
                "--v=0".into(),
            ],
        );
        cp.start_daemon(
            "kube-scheduler",
            d,
            &bin.join("kube-scheduler"),
            &[
                format!("--kubeconfig={}", s(&scheduler)),
                "--secure-port=0".into(),
                "--kube-api-qps=200".into(),
                "--kube-api-burst=400".into(),
                "--leader-elect=false".into(),
                "--v=0".into(),
            ],
        );
        cp.start_daemon(
            "kwok",
            d,
            &bin.join("kwok"),
            &[
                format!("--kubeconfig={}", s(&admin)),
                format!(
                    "--config={}",
                    s(&support::root().join("tests/controlplane/kwok/stages.yaml"))
                ),
                "--manage-all-nodes=true".into(),
                "--node-lease-duration-seconds=40".into(),
                format!("--cidr={}", crate::netns::POD_CIDR),
                format!("--node-ip={}", crate::netns::NODE_IP),
            ],
        );
        cp.wait(
            "the controller manager creates the default ServiceAccount",
            Duration::from_secs(60),
            |cp| cp.kubectl_status(&["get", "serviceaccount", "default", "-n", "default"]),
        );
        cp.apply_nodes();
        cp.wait("every Node is Ready", Duration::from_secs(60), |cp| {
            cp.kubectl_status(&[
                "wait",
                "--for=condition=Ready",
                "node",
                "--all",
                "--timeout=2s",
            ])
        });
        cp.started_in = began.elapsed();
        cp
    }

    /// Starts one process of the control plane, its log in the control plane's folder.
    fn start_daemon(&mut self, name: &'static str, dir: &Path, program: &Path, args: &[String]) {
        let d = Daemon::start(name, dir, program, args);
        self.daemons.get_mut().unwrap().push(d);
    }

    fn etcd_healthy(&self) -> bool {
        support::http()
            .get(format!("http://127.0.0.1:{}/health", self.etcd_port))
            .send()
            .ok()
            .and_then(|r| r.text().ok())
            .is_some_and(|t| t.contains("\"health\":\"true\""))
    }

    /// Polls `ready` every 250 ms; on timeout or a daemon's exit panics with the logs.
    fn wait(&self, what: &str, limit: Duration, ready: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            if ready(self) {
                return;
            }
            let mut daemons = self.daemons.lock().unwrap();
            let exited: Vec<&'static str> = daemons
                .iter_mut()
                .filter_map(|d| (!d.running()).then_some(d.name))
                .collect();
            if !exited.is_empty() || Instant::now() > deadline {
                let logs: Vec<String> = daemons
                    .iter()
                    .map(|d| format!("--- {} log:\n{}", d.name, d.tail()))
                    .collect();
                panic!(
                    "control plane: {what}: not within {limit:?} (exited: {exited:?})\n{}",
                    logs.join("\n")
                );
            }
            drop(daemons);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The suite's nodes: two Windows Server 2022 nodes, one 2019 node, two Linux nodes,
    /// labelled and tainted as cloud Windows pools are.
    fn apply_nodes(&self) {
        let mut yaml = String::new();
        let windows = [
            ("win2022-a", WS2022, "Windows Server 2022 Datacenter"),
            ("win2022-b", WS2022, "Windows Server 2022 Datacenter"),
            ("win2019-a", WS2019, "Windows Server 2019 Datacenter"),
        ];
        for (name, build, image) in windows {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    kubernetes.io/os: windows\n    kubernetes.io/arch: amd64\n    node.kubernetes.io/windows-build: \"{build}\"\n    zdeploy.io/e2e-pool: windows-{build}\nspec:\n  taints:\n  - {{key: os, value: windows, effect: NoSchedule}}\nstatus:\n  nodeInfo:\n    operatingSystem: windows\n    architecture: amd64\n    osImage: {image}\n    kernelVersion: \"{build}.1\"\n"
            ));
        }
        for name in ["linux-a", "linux-b"] {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n    kubernetes.io/arch: amd64\n    zdeploy.io/e2e-pool: linux\nstatus:\n  nodeInfo:\n    operatingSystem: linux\n    architecture: amd64\n"
            ));
        }
        let file = self.dir.join("nodes.yaml");
        std::fs::write(&file, yaml).unwrap();
        self.kubectl(&["create", "-f", &file.display().to_string()]);
    }

    /// kubectl as the admin; panics with its stderr when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_as(&self.admin, args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with the given kubeconfig, whatever its outcome.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
        Command::new(self.bin.join("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running kubectl")
    }

    fn kubectl_status(&self, args: &[&str]) -> bool {
        self.kubectl_as(&self.admin, args).status.success()
    }

    /// The kubectl binary built with the control plane.
    pub fn kubectl_path(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// A kubeconfig for ServiceAccount `ns/name` with a token from the TokenRequest API.
    pub fn service_account_kubeconfig(&self, ns: &str, name: &str) -> PathBuf {
        (self.identities())(ns, name)
    }

    /// Makes `service_account_kubeconfig`s, apart from the control plane (for threads).
    pub fn identities(&self) -> impl Fn(&str, &str) -> PathBuf + Send + 'static {
        let (kubectl, admin) = (self.kubectl_path(), self.admin.clone());
        let (server, dir) = (self.server.clone(), self.dir.clone());
        move |ns, name| {
            let out = Command::new(&kubectl)
                .arg("--kubeconfig")
                .arg(&admin)
                .args(["create", "token", name, "-n", ns, "--duration=2h"])
                .stdin(Stdio::null())
                .output()
                .expect("running kubectl");
            assert!(
                out.status.success(),
                "kubectl create token {name} -n {ns}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let path = dir.join(format!("sa-{ns}-{name}.kubeconfig"));
            let text = kubeconfig_text(&server, &dir.join("ca.crt"), &Credential::Token(token));
            std::fs::write(&path, text).unwrap();
            path
        }
    }

    /// When the API server was restarted (outage tests).
    pub fn restarts(&self) -> Vec<jiff::Timestamp> {
        self.restarts.lock().unwrap().clone()
    }

    /// The audit records (JSON) of requests made by users `user` holds for, in order.
    pub fn audit(&self, user: impl Fn(&str) -> bool) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["user"]["username"].as_str().is_some_and(&user))
            .collect()
    }

    /// A fresh file in the control plane's folder (removed with it).
    pub fn file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `during` with the API server stopped (etcd and the rest keep running), then
    /// starts it again and waits until it is ready, and until the control plane works
    /// again: client-go's informers back off after an outage, with jitter, up to a minute
    /// before they list again, and the scenarios after this one measure zdeploy, not that
    /// backoff. The controller manager and the scheduler are started again (no state of
    /// their own); kwok is not (it hands out pod addresses from memory, and would give a
    /// live pod's address to a new one), so a probe pod must run before this returns.
    pub fn with_apiserver_down(&self, during: impl FnOnce()) {
        let on = |names: &[&str], act: fn(&mut Daemon)| {
            let mut daemons = self.daemons.lock().unwrap();
            for d in daemons.iter_mut().filter(|d| names.contains(&d.name)) {
                act(d);
            }
        };
        on(&["kube-apiserver"], Daemon::stop);
        during();
        on(&["kube-apiserver"], Daemon::restart);
        self.restarts.lock().unwrap().push(jiff::Timestamp::now());
        self.wait(
            "kube-apiserver answers /readyz after a restart",
            Duration::from_secs(90),
            |cp| cp.kubectl_status(&["get", "--raw=/readyz"]),
        );
        on(
            &["kube-controller-manager", "kube-scheduler"],
            Daemon::restart,
        );
        let name = format!("outage-probe-{}", self.restarts.lock().unwrap().len());
        let probe = self.file(
            &format!("{name}.yaml"),
            &format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  nodeSelector: {{kubernetes.io/os: linux}}\n  containers: [{{name: probe, image: probe.example/none:1}}]\n"),
        );
        self.kubectl(&["apply", "-f", &probe.display().to_string()]);
        self.wait(
            "a pod is scheduled and runs after the restart",
            Duration::from_secs(120),
            |cp| {
                cp.kubectl_status(&[
                    "wait",
                    "--for=jsonpath={.status.phase}=Running",
                    &format!("pod/{name}"),
                    "-n",
                    "default",
                    "--timeout=2s",
                ])
            },
        );
        self.kubectl(&["delete", "pod", &name, "-n", "default", "--wait=false"]);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let daemons = self.daemons.get_mut().unwrap_or_else(|e| e.into_inner());
        while let Some(mut d) = daemons.pop() {
            d.stop();
        }
        // `_tmp` then removes the directory, once nothing runs in it.
    }
}
