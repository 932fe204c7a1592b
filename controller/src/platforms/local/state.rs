//! The local state directory of one service: its recorded status (so a restarted
//! `zdeploy up` resumes), its ports, the admin API address and the token that guards it.
//! One `zdeploy up` holds it at a time, by an OS file lock (released when the process ends,
//! however it ends): a second one would serve from the first one's processes and, when the
//! first stops, save the status it read at its own start over the rollout made since.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zdeploy_api::Pool;
use zdeploy_api::ZmqServiceStatus;

/// Ports given to one service's processes; kept so a restart reuses them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ports {
    /// One port per stable process.
    pub stable: Vec<u16>,
    /// One port per canary process.
    pub canary: Vec<u16>,
}

/// Who holds a state directory: written by the `zdeploy up` that locked it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Its process id.
    pub pid: u32,
    /// zgate's frontend endpoint.
    pub frontend: String,
}

/// Why a state directory could not be held.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another `zdeploy up` holds it.
    #[error("another zdeploy up runs with this state directory ({}): stop it first (Ctrl-C in its terminal), or give this one another --state-dir", match .0 {
        Some(o) => format!("pid {}, frontend {}", o.pid, o.frontend),
        None => "it has not said which yet".into(),
    })]
    Held(Option<Owner>),
    /// The lock file could not be opened or locked.
    #[error("locking the state directory: {0}")]
    Io(#[from] std::io::Error),
}

/// The lock on a state directory; released when dropped or when the process ends.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

/// `<root>/<service>/`: status.json, ports.json, token, endpoint, lock, owner.json, logs/,
/// revisions/.
#[derive(Clone, Debug)]
pub struct StateDir {
    dir: PathBuf,
}

/// Writes a private file (see `private`) in one step.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // Named after the file, so two files being written never share a temporary.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = super::private::create_file(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    // Rename is atomic: a crash leaves the old file or the new one, never half of one.
    std::fs::rename(tmp, path)
}

impl StateDir {
    /// The state directory of `service` under `root`, created private to this user.
    pub fn open(root: &Path, service: &str) -> std::io::Result<Self> {
        let dir = root.join(service);
        super::private::create_dir(&dir)?;
        std::fs::create_dir_all(dir.join("logs"))?;
        Ok(Self { dir })
    }

    /// Takes the directory for this process, which serves on `frontend`; refused while
    /// another process holds it.
    pub fn lock(&self, frontend: &str) -> Result<StateLock, LockError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join("lock"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(LockError::Held(self.owner())),
            Err(std::fs::TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        self.save_owner(frontend)?;
        Ok(StateLock { _file: file })
    }

    /// Records the frontend of the process holding the lock (once its port is known).
    pub fn save_owner(&self, frontend: &str) -> std::io::Result<()> {
        let owner = Owner {
            pid: std::process::id(),
            frontend: frontend.to_string(),
        };
        let bytes = serde_json::to_vec(&owner).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("owner.json"), &bytes)
    }

    /// Who holds (or last held) the directory, as it said.
    pub fn owner(&self) -> Option<Owner> {
        serde_json::from_slice(&std::fs::read(self.dir.join("owner.json")).ok()?).ok()
    }

    /// The state directory of `service`, only if `zdeploy up` created it.
    pub fn existing(root: &Path, service: &str) -> Option<Self> {
        let dir = root.join(service);
        dir.join("status.json").exists().then_some(Self { dir })
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The recorded status, if any.
    pub fn load_status(&self) -> std::io::Result<Option<ZmqServiceStatus>> {
        let path = self.status_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                std::io::Error::other(format!(
                    "{}: {e}; fix it, or remove it to start again from the manifest",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where each revision's run is recorded (see `release`).
    pub fn revisions_dir(&self) -> PathBuf {
        self.dir.join("revisions")
    }

    /// Where the status is recorded.
    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Records the status (atomically).
    pub fn save_status(&self, status: &ZmqServiceStatus) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("status.json"), &bytes)
    }

    /// The recorded ports, if any.
    pub fn load_ports(&self) -> Option<Ports> {
        serde_json::from_slice(&std::fs::read(self.dir.join("ports.json")).ok()?).ok()
    }

    /// Records the ports.
    pub fn save_ports(&self, ports: &Ports) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(ports).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("ports.json"), &bytes)
    }

    /// The admin token, created (32 bytes from the OS's CSPRNG, hex, private) on first use.
    pub fn token(&self) -> std::io::Result<String> {
        let path = self.dir.join("token");
        if let Ok(t) = std::fs::read_to_string(&path) {
            return Ok(t.trim().to_string());
        }
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| std::io::Error::other(e.to_string()))?;
        let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        write_atomic(&path, token.as_bytes())?;
        Ok(token)
    }

    /// Records where the admin API listens.
    pub fn save_endpoint(&self, url: &str) -> std::io::Result<()> {
        write_atomic(&self.dir.join("endpoint"), url.as_bytes())
    }

    /// Where the admin API listens, if `zdeploy up` recorded it.
    pub fn endpoint(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("endpoint"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The chaos schedules and their history, if any were recorded.
    pub fn load_chaos(&self) -> Vec<super::chaos::Scheduled> {
        std::fs::read(self.dir.join("chaos.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records the chaos schedules and their history (atomically).
    pub fn save_chaos(&self, chaos: &[super::chaos::Scheduled]) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(chaos).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join("chaos.json"), &bytes)
    }

    /// The log file of one process.
    pub fn log_path(&self, pool: Pool, index: usize) -> PathBuf {
        self.dir.join("logs").join(format!("{pool}-{index}.log"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_the_next_one_is_told_who() {
        let root = std::env::temp_dir().join(format!("zdeploy-lock-{}", std::process::id()));
        let dir = StateDir::open(&root, "echo").unwrap();
        let held = dir.lock("tcp://127.0.0.1:5555").unwrap();
        let again = StateDir::open(&root, "echo").unwrap();
        match again.lock("tcp://127.0.0.1:6666") {
            Err(LockError::Held(Some(owner))) => {
                assert_eq!(owner.pid, std::process::id());
                assert_eq!(owner.frontend, "tcp://127.0.0.1:5555");
            }
            other => panic!("a second holder was not refused: {other:?}"),
        }
        drop(held);
        assert!(again.lock("tcp://127.0.0.1:6666").is_ok());
        std::fs::remove_dir_all(root).unwrap();
    }
}
