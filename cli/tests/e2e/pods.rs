//! What runs in the suite's pods: kwok runs no containers, so for every pod of one
//! namespace that kwok marks Running this starts what the pod's container would run,
//! bound to the pod's address, and stops it when the pod object is gone (kwok keeps a
//! deleted pod 1 s: the service finishes what it holds, as after SIGTERM). A service pod
//! gets the pyzmq echo service, answering `OK <pod name>` (or, by image, one that fails
//! every request, or nothing listening: a port the node's firewall blocks); a zgate pod
//! gets `zdeploy gateway` with the pod's own arguments, as the pod's ServiceAccount, plus
//! an admin API on loopback for the test to read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::{self, Proc};

/// How the service in a pod of a given image behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers every request `OK <pod>`.
    Serve,
    /// Answers every request `ERR <pod>`: a bad build.
    FailEveryRequest,
    /// Listens nowhere: the node's firewall blocks the port.
    Unreachable,
}

/// One pod the runner played.
#[derive(Clone, Debug)]
pub struct PodRecord {
    pub name: String,
    pub ip: String,
    pub pool: Option<String>,
    /// When the runner saw it Running and started its process.
    pub started: SystemTime,
    /// When the runner saw it terminating (deletion requested).
    pub terminating: Option<SystemTime>,
    /// When the pod object was gone and its process stopped.
    pub gone: Option<SystemTime>,
    /// The service's request log (`TIME BODY` lines), for service pods.
    pub log: Option<PathBuf>,
    /// `http://127.0.0.1:PORT` of a zgate pod's admin API.
    pub admin: Option<String>,
    /// zgate's own log, for zgate pods.
    pub output: Option<PathBuf>,
}

impl PodRecord {
    /// When the service received each request, in order.
    pub fn requests(&self) -> Vec<SystemTime> {
        let Some(log) = &self.log else {
            return Vec::new();
        };
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once(' ')?.0.parse::<f64>().ok())
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(t))
            .collect()
    }
}

/// Makes the kubeconfig of ServiceAccount (namespace, name).
pub type Identity = Box<dyn Fn(&str, &str) -> PathBuf + Send>;

/// Where the runner finds kubectl, the cluster and the identities pods run as.
pub struct Setup {
    pub kubectl: PathBuf,
    pub admin: PathBuf,
    pub namespace: String,
    /// Logs and files go here.
    pub dir: zdeploy_testkit::dirs::TempDir,
    /// Makes the kubeconfig of a ServiceAccount, for zgate pods.
    pub identity: Identity,
    /// Behaviour by image; images not listed serve.
    pub behaviours: BTreeMap<String, Behaviour>,
}

#[derive(Default)]
struct Pods {
    running: BTreeMap<String, (PodRecord, Option<Proc>)>,
    done: Vec<PodRecord>,
}

/// Plays the pods of one namespace until dropped.
pub struct PodRunner {
    pods: Arc<Mutex<Pods>>,
    watch: Arc<Mutex<Option<Child>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodRunner {
    /// Starts following the pods of `setup.namespace`.
    pub fn start(setup: Setup) -> Self {
        let pods: Arc<Mutex<Pods>> = Arc::default();
        let watch: Arc<Mutex<Option<Child>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (pods, watch, stop) = (pods.clone(), watch.clone(), stop.clone());
            std::thread::spawn(move || follow(&setup, &pods, &watch, &stop))
        };
        Self {
            pods,
            watch,
            stop,
            thread: Some(thread),
        }
    }

    /// Every pod played so far: running ones, then those gone, each once.
    pub fn pods(&self) -> Vec<PodRecord> {
        let p = self.pods.lock().unwrap();
        p.running
            .values()
            .map(|(r, _)| r.clone())
            .chain(p.done.iter().cloned())
            .collect()
    }

    /// The running pods of `pool` (`service` pods) or of zgate (`None`).
    pub fn running(&self, pool: Option<&str>) -> Vec<PodRecord> {
        let p = self.pods.lock().unwrap();
        p.running
            .values()
            .filter(|(r, _)| {
                r.gone.is_none() && r.terminating.is_none() && r.pool.as_deref() == pool
            })
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The record of pod `name`, running or gone.
    pub fn pod(&self, name: &str) -> Option<PodRecord> {
        self.pods().into_iter().find(|r| r.name == name)
    }
}

impl Drop for PodRunner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(child) = self.watch.lock().unwrap().as_mut() {
            let _ = child.kill();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Dropping the processes stops them.
        self.pods.lock().unwrap().running.clear();
    }
}

/// Watches the namespace's pods with kubectl (again after the watch ends, as when the API
/// server restarts) and plays each.
fn follow(
    setup: &Setup,
    pods: &Mutex<Pods>,
    watch: &Mutex<Option<Child>>,
    stop: &std::sync::atomic::AtomicBool,
) {
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let mut child = Command::new(&setup.kubectl)
            .arg("--kubeconfig")
            .arg(&setup.admin)
            .args([
                "get",
                "pods",
                "-n",
                &setup.namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(watch_log(setup))
            .spawn()
            .expect("running kubectl get pods --watch");
        let stdout = child.stdout.take().unwrap();
        *watch.lock().unwrap() = Some(child);
        let events = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout))
            .into_iter::<Value>();
        for event in events {
            let Ok(event) = event else { break };
            on_event(setup, pods, &event);
        }
        if let Some(mut c) = watch.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// kubectl's complaints, appended to the runner's log.
fn watch_log(setup: &Setup) -> std::fs::File {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(setup.dir.join("kubectl-watch.log"))
        .unwrap()
}

fn on_event(setup: &Setup, pods: &Mutex<Pods>, event: &Value) {
    let pod = &event["object"];
    let Some(uid) = pod["metadata"]["uid"].as_str() else {
        return;
    };
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let gone = event["type"] == "DELETED";
    let terminating = pod["metadata"]["deletionTimestamp"].is_string();
    let ip = pod["status"]["podIP"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let running = pod["status"]["phase"] == "Running" && !ip.is_empty();
    let mut p = pods.lock().unwrap();
    if gone {
        if let Some((mut record, proc)) = p.running.remove(uid) {
            drop(proc);
            record.gone = Some(SystemTime::now());
            p.done.push(record);
        }
        return;
    }
    if let Some((record, _)) = p.running.get_mut(uid) {
        if terminating && record.terminating.is_none() {
            record.terminating = Some(SystemTime::now());
        }
        return;
    }
    if !running || terminating {
        return;
    }
    let started = SystemTime::now();
    let labels = &pod["metadata"]["labels"];
    let component = labels["app.kubernetes.io/component"].as_str();
    let (record, proc) = match component {
        Some("service") => {
            let pool = labels["zdeploy.io/pool"].as_str().map(String::from);
            let log = setup.dir.join(format!("pod-{name}.log"));
            let proc = service(pod, &name, &ip, &log, setup);
            let record = PodRecord {
                name: name.clone(),
                ip,
                pool,
                started,
                terminating: None,
                gone: None,
                log: Some(log),
                admin: None,
                output: None,
            };
            (record, proc)
        }
        Some("gateway") => {
            let output = setup.dir.join(format!("pod-{name}.log"));
            let (proc, admin) = gateway(pod, &name, &ip, &output, setup);
            let record = PodRecord {
                name: name.clone(),
                ip,
                pool: None,
                started,
                terminating: None,
                gone: None,
                log: None,
                admin: Some(admin),
                output: Some(output),
            };
            (record, Some(proc))
        }
        _ => return,
    };
    p.running.insert(uid.to_string(), (record, proc));
}

fn container_port(pod: &Value) -> u64 {
    pod["spec"]["containers"][0]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "zmq")
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or(5555)
}

/// The echo service of a service pod, bound to its address; `None` when it listens nowhere.
fn service(
    pod: &Value,
    name: &str,
    ip: &str,
    log: &std::path::Path,
    setup: &Setup,
) -> Option<Proc> {
    let image = pod["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap_or_default();
    let behaviour = setup
        .behaviours
        .get(image)
        .copied()
        .unwrap_or(Behaviour::Serve);
    let bind = format!("tcp://{ip}:{}", container_port(pod));
    let mut cmd = Command::new(support::python());
    cmd.arg(support::root().join("tests/peers/zmq_peer.py"))
        .args([
            "rep",
            "--heartbeat",
            "--log-times",
            "--name",
            name,
            "--bind",
            &bind,
        ])
        .arg("--log")
        .arg(log);
    match behaviour {
        Behaviour::Serve => {}
        Behaviour::FailEveryRequest => {
            cmd.args(["--error-ratio", "1"]);
        }
        Behaviour::Unreachable => return None,
    }
    // The service's own setting, from its config: a bad config makes a bad pod.
    if let Some(ratio) = env_value(pod, "ECHO_ERROR_RATIO", setup) {
        cmd.args(["--error-ratio", ratio.trim()]);
    }
    Some(Proc::start(cmd, "ready "))
}

/// The value of the first container's env entry `name` as the kubelet resolves it when
/// the pod starts: its value, or the key of the ConfigMap it reads.
fn env_value(pod: &Value, name: &str, setup: &Setup) -> Option<String> {
    let env = pod["spec"]["containers"][0]["env"].as_array()?;
    let entry = env.iter().find(|e| e["name"] == name)?;
    if let Some(v) = entry["value"].as_str() {
        return Some(v.to_string());
    }
    let r = &entry["valueFrom"]["configMapKeyRef"];
    let template = format!("go-template={{{{index .data \"{}\"}}}}", r["key"].as_str()?);
    let out = Command::new(&setup.kubectl)
        .arg("--kubeconfig")
        .arg(&setup.admin)
        .args([
            "get",
            "configmap",
            r["name"].as_str()?,
            "-n",
            &setup.namespace,
        ])
        .args(["-o", &template])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// zgate as the pod runs it: its arguments with "every interface" meaning the pod's
/// address, as the pod's ServiceAccount.
fn gateway(pod: &Value, name: &str, ip: &str, log: &Path, setup: &Setup) -> (Proc, String) {
    let container = &pod["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .map(|a| {
            a.replace("tcp://*:", &format!("tcp://{ip}:"))
                .replace("0.0.0.0:", &format!("{ip}:"))
                // What kubelet does with the POD_IP variable the container declares.
                .replace("$(POD_IP)", ip)
        })
        .collect();
    let account = pod["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or("default");
    let kubeconfig = (setup.identity)(&setup.namespace, account);
    let admin = format!("127.0.0.1:{}", zdeploy_testkit::ports::free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zdeploy"));
    cmd.args(&args)
        .args(["--admin", &admin])
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info");
    let proc = Proc::start_logged(cmd, log);
    // Ready once its admin API answers.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let url = format!("http://{admin}");
    while support::http()
        .get(format!("{url}/healthz"))
        .send()
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "zgate of pod {name} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, url)
}
