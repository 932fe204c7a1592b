//! The processes of one pool (stable or canary): started from their revision's recorded
//! run (see `release`) with the revision, port and file copies substituted, checked for readiness, asked to stop (SIGTERM,
//! CTRL_BREAK on Windows) and killed after a grace period.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use zdeploy_api::Pool;
use zdeploy_api::image::tag_of;

use tokio::process::{Child, Command};

use super::release::Launch;

/// How long a process has to accept connections on its port.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a process has to exit after it is asked to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// One pool's processes on fixed ports.
pub struct ProcessPool {
    /// Which pool.
    pub pool: Pool,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    /// What runs, if anything.
    pub running: Option<Launch>,
    logs: Vec<PathBuf>,
}

impl ProcessPool {
    /// A stopped pool on `ports`, logging to `logs`.
    pub fn new(pool: Pool, ports: Vec<u16>, logs: Vec<PathBuf>) -> Self {
        let children = ports.iter().map(|_| None).collect();
        Self {
            pool,
            ports,
            children,
            running: None,
            logs,
        }
    }

    /// The ZeroMQ endpoints of the pool's processes.
    pub fn endpoints(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("tcp://127.0.0.1:{p}"))
            .collect()
    }

    /// The revision running, if any.
    pub fn revision(&self) -> Option<&str> {
        self.running.as_ref().map(|l| l.revision.as_str())
    }

    fn command(&self, launch: &Launch, port: u16) -> Result<Command, String> {
        let image = launch.image.as_str();
        let fill = |arg: &str| {
            let mut arg = arg
                .replace("{{revision}}", tag_of(image))
                .replace("{{image}}", image)
                .replace("{{port}}", &port.to_string())
                .replace("{{endpoint}}", &format!("tcp://127.0.0.1:{port}"));
            for (path, copy) in &launch.files {
                arg = arg.replace(&format!("{{{{file:{path}}}}}"), &copy.display().to_string());
            }
            arg
        };
        let program = launch
            .command
            .first()
            .ok_or("spec.local.command is empty")?;
        // `zdeploy` means this very binary, wherever it is installed.
        let program = if program == "zdeploy" {
            std::env::current_exe().map_err(|e| format!("locating zdeploy: {e}"))?
        } else {
            PathBuf::from(fill(program))
        };
        let mut cmd = Command::new(program);
        cmd.args(launch.command[1..].iter().map(|a| fill(a)));
        cmd.envs(launch.env.iter().map(|(k, v)| (k, fill(v))));
        cmd.env("ZDEPLOY_POOL", self.pool.name())
            .env("ZDEPLOY_REVISION", tag_of(image));
        Ok(cmd)
    }

    /// Starts every process as `launch` says and waits until each accepts connections.
    pub async fn start(&mut self, launch: Launch) -> Result<(), String> {
        self.stop().await;
        // Processes of a previous `zdeploy up` may still be exiting on these ports: a new
        // process could not bind, and the old one would pass the readiness check.
        let free_by = Instant::now() + READY_TIMEOUT;
        for &port in &self.ports {
            while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
                if Instant::now() > free_by {
                    return Err(format!(
                        "port {port} of the {} pool is still in use by another process",
                        self.pool
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let image = launch.revision.clone();
        for i in 0..self.ports.len() {
            self.spawn(&launch, i)?;
        }
        self.running = Some(launch);
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..self.ports.len() {
            loop {
                if let Some(Some(c)) = self.children.get_mut(i)
                    && let Ok(Some(status)) = c.try_wait()
                {
                    let log = self.logs[i].display();
                    return Err(format!(
                        "{} process {i} ({image}) exited with {status} before it was ready; see {log}",
                        self.pool
                    ));
                }
                if tokio::net::TcpStream::connect(("127.0.0.1", self.ports[i]))
                    .await
                    .is_ok()
                {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{} process {i} ({image}) did not listen on port {} within {READY_TIMEOUT:?}",
                        self.pool, self.ports[i]
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    fn spawn(&mut self, launch: &Launch, i: usize) -> Result<(), String> {
        let mut cmd = self.command(launch, self.ports[i])?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.logs[i])
            .map_err(|e| format!("opening {}: {e}", self.logs[i].display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .kill_on_drop(true);
        // If zdeploy itself dies (even killed), its children stop too.
        super::child::tie_to_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", launch.command))?;
        super::child::adopt(&child)
            .map_err(|e| format!("tying {:?} to zdeploy: {e}", launch.command))?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Restarts processes that exited on their own; returns a line per restart.
    pub fn restart_exited(&mut self) -> Vec<String> {
        let Some(launch) = self.running.clone() else {
            return Vec::new();
        };
        let image = &launch.revision;
        let mut notes = Vec::new();
        for i in 0..self.children.len() {
            let exited = match self.children[i].as_mut() {
                Some(c) => c.try_wait().ok().flatten(),
                None => None,
            };
            if let Some(status) = exited {
                let outcome = match self.spawn(&launch, i) {
                    Ok(()) => "restarted".to_string(),
                    Err(e) => format!("could not restart: {e}"),
                };
                notes.push(format!(
                    "{} process {i} ({image}) exited with {status}; {outcome}",
                    self.pool
                ));
            }
        }
        notes
    }

    /// Kills up to `n` running processes at once (no chance to finish), as a chaos fault; they are
    /// restarted like any process that died. Returns what was hit.
    pub fn kill_some(&mut self, n: usize) -> Vec<String> {
        let mut hit = Vec::new();
        for (i, c) in self.children.iter_mut().enumerate() {
            if hit.len() >= n {
                break;
            }
            if let Some(c) = c
                && let Some(pid) = c.id()
                && c.start_kill().is_ok()
            {
                hit.push(format!("{} process {i} (pid {pid})", self.pool));
            }
        }
        hit
    }

    /// Number of processes the pool runs.
    pub fn size(&self) -> usize {
        self.ports.len()
    }

    /// Stops every process: asked to stop, then killed after a grace period.
    pub async fn stop(&mut self) {
        for c in self.children.iter().flatten() {
            super::child::ask_to_stop(c);
        }
        for slot in &mut self.children {
            if let Some(mut c) = slot.take()
                && tokio::time::timeout(STOP_GRACE, c.wait()).await.is_err()
            {
                let _ = c.kill().await;
            }
        }
        self.running = None;
    }
}
