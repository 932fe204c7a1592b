//! Each local revision's run, recorded in the state directory under `revisions/DIGEST/`:
//! its command, its env and a copy of every tracked file. A pool is always started from
//! its revision's record, so stable keeps its own command, env and files through a canary,
//! a restart of `zdeploy up` with a changed manifest and a process that died, until a
//! canary with new ones is promoted; a rollback leaves it exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zdeploy_api::local_release::LocalRelease;
use zdeploy_api::revision::Revision;
use zdeploy_api::service::LocalRun;

use super::private;
use super::state::{StateDir, write_atomic};

/// What a pool's processes are started with.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The revision's name (`IMAGE+DIGEST`).
    pub revision: String,
    /// Its image, for `{{image}}` and `{{revision}}`.
    pub image: String,
    /// The program and its arguments, before substitution.
    pub command: Vec<String>,
    /// Extra environment variables, before substitution.
    pub env: BTreeMap<String, String>,
    /// Where each tracked file is read from, by the path the manifest names it with.
    pub files: BTreeMap<String, PathBuf>,
}

/// Why a revision's run could not be read or recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// A file named in `spec.local.track` could not be read.
    #[error("spec.local.track: reading {}: {source}", .path.display())]
    Track {
        /// The file, as found from the manifest's folder.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The record could not be written or read back.
    #[error("the record of revision {revision} in the state directory: {source}")]
    Record {
        /// The revision.
        revision: String,
        /// What the file system said.
        source: std::io::Error,
    },
}

/// `revisions/DIGEST/run.json`: the release, and the copy of each tracked file by path.
#[derive(Serialize, Deserialize)]
struct Record {
    release: LocalRelease,
    copies: BTreeMap<String, String>,
}

/// The manifest's release: `run`, with its tracked files read from `base`, the manifest's
/// folder.
pub fn read(run: &LocalRun, base: &Path) -> Result<LocalRelease, ReleaseError> {
    let mut files = BTreeMap::new();
    for path in &run.track {
        let full = base.join(path);
        let bytes = std::fs::read(&full).map_err(|source| ReleaseError::Track {
            path: full.clone(),
            source,
        })?;
        files.insert(path.clone(), bytes);
    }
    Ok(LocalRelease::new(run, files))
}

/// Records `release` (its run and a copy of each tracked file) unless it is recorded.
pub fn record(state: &StateDir, release: &LocalRelease) -> Result<(), ReleaseError> {
    let digest = release.digest();
    let dir = state.revisions_dir().join(&digest);
    if dir.join("run.json").exists() {
        return Ok(());
    }
    let failed = |source| ReleaseError::Record {
        revision: digest.clone(),
        source,
    };
    private::create_dir(&dir).map_err(failed)?;
    // Copies are numbered: a tracked path may hold folders and characters a name cannot.
    let mut copies = BTreeMap::new();
    for (i, (path, bytes)) in release.files.iter().enumerate() {
        let name = format!("file-{i}");
        write_atomic(&dir.join(&name), bytes).map_err(failed)?;
        copies.insert(path.clone(), name);
    }
    let record = Record {
        release: release.clone(),
        copies,
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| failed(std::io::Error::other(e)))?;
    // Written last: a record with run.json is whole.
    write_atomic(&dir.join("run.json"), &json).map_err(failed)
}

/// What starting `revision` takes: its record. A revision named without a digest (an
/// image given to an older zdeploy) runs `manifest`, its files read where the manifest is.
pub fn launch(
    state: &StateDir,
    revision: &str,
    manifest: &LocalRelease,
    base: &Path,
) -> Result<Launch, ReleaseError> {
    let name = Revision::parse(revision);
    let Some(digest) = name.digest else {
        return Ok(Launch {
            revision: revision.to_string(),
            image: name.image,
            command: manifest.command.clone(),
            env: manifest.env.clone(),
            files: manifest
                .files
                .keys()
                .map(|p| (p.clone(), base.join(p)))
                .collect(),
        });
    };
    let dir = state.revisions_dir().join(&digest);
    let (release, copies) = load(&dir).map_err(|source| ReleaseError::Record {
        revision: revision.to_string(),
        source,
    })?;
    Ok(Launch {
        revision: revision.to_string(),
        image: name.image,
        command: release.command,
        env: release.env,
        files: copies
            .into_iter()
            .map(|(path, copy)| (path, dir.join(copy)))
            .collect(),
    })
}

fn load(dir: &Path) -> std::io::Result<(LocalRelease, BTreeMap<String, String>)> {
    let record: Record = serde_json::from_slice(&std::fs::read(dir.join("run.json"))?)
        .map_err(std::io::Error::other)?;
    Ok((record.release, record.copies))
}

/// The recorded release of `revision`, its files read back; `None` when it has no record.
pub fn recorded(state: &StateDir, revision: &str) -> Option<LocalRelease> {
    let digest = Revision::parse(revision).digest?;
    let dir = state.revisions_dir().join(digest);
    let (mut release, copies) = load(&dir).ok()?;
    for (path, copy) in copies {
        release
            .files
            .insert(path, std::fs::read(dir.join(copy)).ok()?);
    }
    Some(release)
}

/// What `new` changes from `old`, in words ("image A -> B", "env LEVEL", "file app.toml").
pub fn changes(state: &StateDir, old: &str, new: &str) -> Vec<String> {
    let (o, n) = (Revision::parse(old), Revision::parse(new));
    let mut out = Vec::new();
    if o.image != n.image {
        out.push(format!("image {} -> {}", o.image, n.image));
    }
    if let (Some(o), Some(n)) = (recorded(state, old), recorded(state, new)) {
        out.extend(n.changes_from(&o));
    }
    out
}

/// Deletes the record of every revision not named in `keep`.
pub fn collect(state: &StateDir, keep: &[&str]) {
    let kept: Vec<String> = keep
        .iter()
        .filter_map(|r| Revision::parse(r).digest)
        .collect();
    let Ok(entries) = std::fs::read_dir(state.revisions_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !kept.contains(&name) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of its own under the temporary folder, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("zdeploy-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run(env: &str, track: &[&str]) -> LocalRun {
        serde_json::from_value(serde_json::json!({
            "command": ["svc", "--config", "{{file:conf/app.toml}}"],
            "env": {"LEVEL": env},
            "track": track,
        }))
        .unwrap()
    }

    #[test]
    fn each_revision_reads_its_own_copy_after_the_file_changes() {
        let root = Scratch::new("release-copies");
        let base = root.path().join("manifests");
        std::fs::create_dir_all(base.join("conf")).unwrap();
        std::fs::write(base.join("conf/app.toml"), "x = 1").unwrap();
        let state = StateDir::open(&root.path().join("state"), "echo").unwrap();

        let first = read(&run("info", &["conf/app.toml"]), &base).unwrap();
        record(&state, &first).unwrap();
        let one = first.revision("echo:1").to_string();
        std::fs::write(base.join("conf/app.toml"), "x = 2").unwrap();
        let second = read(&run("debug", &["conf/app.toml"]), &base).unwrap();
        record(&state, &second).unwrap();
        let two = second.revision("echo:1").to_string();
        assert_ne!(one, two);

        let old = launch(&state, &one, &second, &base).unwrap();
        assert_eq!(old.env["LEVEL"], "info");
        assert_eq!(
            std::fs::read_to_string(&old.files["conf/app.toml"]).unwrap(),
            "x = 1"
        );
        let new = launch(&state, &two, &second, &base).unwrap();
        assert_eq!(
            std::fs::read_to_string(&new.files["conf/app.toml"]).unwrap(),
            "x = 2"
        );
        assert_eq!(
            changes(&state, &one, &two),
            ["env LEVEL", "file conf/app.toml"]
        );

        // A bare image (recorded by an older zdeploy) runs the manifest's release.
        let bare = launch(&state, "echo:0", &second, &base).unwrap();
        assert_eq!(bare.env["LEVEL"], "debug");
        assert_eq!(bare.files["conf/app.toml"], base.join("conf/app.toml"));

        collect(&state, &[&two]);
        assert!(recorded(&state, &one).is_none());
        assert!(launch(&state, &one, &second, &base).is_err());
        assert_eq!(recorded(&state, &two), Some(second));
    }

    #[test]
    fn a_missing_tracked_file_is_named() {
        let root = Scratch::new("release-missing");
        let err = read(&run("info", &["conf/app.toml"]), root.path()).unwrap_err();
        assert!(
            err.to_string().starts_with("spec.local.track: reading "),
            "{err}"
        );
        assert!(err.to_string().contains("app.toml"), "{err}");
    }
}
