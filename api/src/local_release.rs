//! What a revision is for `zdeploy up`, by the same rule as in a cluster: the image plus
//! everything else a revision is started with (`local.command`, `local.env` and the
//! content of the files named in `local.track`). A change of any of it is a new revision,
//! named `IMAGE+DIGEST` like a cluster's; `local.replicas` is a size, not a release.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::revision::{Revision, finish};
use crate::service::LocalRun;

/// One local release: what each of its processes is started with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRelease {
    /// The program and its arguments, before substitution.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// Each tracked file's content, by its path as the manifest names it.
    #[serde(skip)]
    pub files: BTreeMap<String, Vec<u8>>,
}

impl LocalRelease {
    /// The release `run` describes, with the tracked files' content already read.
    pub fn new(run: &LocalRun, files: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            command: run.command.clone(),
            env: run.env.clone(),
            files,
        }
    }

    /// The digest of the command, the env (in name order) and every tracked file's bytes.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(serde_json::to_vec(&(&self.command, &self.env)).expect("strings serialize"));
        for (path, bytes) in &self.files {
            h.update((path.len() as u64).to_le_bytes());
            h.update(path.as_bytes());
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        finish(h)
    }

    /// The revision of `image` started this way.
    pub fn revision(&self, image: &str) -> Revision {
        Revision {
            image: image.to_string(),
            digest: Some(self.digest()),
        }
    }

    /// What differs from `old`, in words: "local.command", "env NAME", "file PATH".
    pub fn changes_from(&self, old: &LocalRelease) -> Vec<String> {
        let mut out = Vec::new();
        if self.command != old.command {
            out.push("local.command".to_string());
        }
        let names: BTreeSet<&String> = self.env.keys().chain(old.env.keys()).collect();
        for name in names {
            if self.env.get(name) != old.env.get(name) {
                out.push(format!("env {name}"));
            }
        }
        let paths: BTreeSet<&String> = self.files.keys().chain(old.files.keys()).collect();
        for path in paths {
            if self.files.get(path) != old.files.get(path) {
                out.push(format!("file {path}"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(env: &[(&str, &str)], files: &[(&str, &[u8])]) -> LocalRelease {
        LocalRelease {
            command: vec!["svc".into(), "--bind".into(), "{{endpoint}}".into()],
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            files: files
                .iter()
                .map(|(p, b)| (p.to_string(), b.to_vec()))
                .collect(),
        }
    }

    #[test]
    fn env_order_does_not_count_every_value_and_byte_does() {
        let base = release(&[("A", "1"), ("B", "2")], &[("app.toml", b"x = 1")]);
        let reordered = release(&[("B", "2"), ("A", "1")], &[("app.toml", b"x = 1")]);
        assert_eq!(base.digest(), reordered.digest());
        for other in [
            release(&[("A", "1"), ("B", "3")], &[("app.toml", b"x = 1")]),
            release(&[("A", "1")], &[("app.toml", b"x = 1")]),
            release(&[("A", "1"), ("B", "2")], &[("app.toml", b"x = 2")]),
            release(&[("A", "1"), ("B", "2")], &[("other.toml", b"x = 1")]),
            release(&[("A", "1"), ("B", "2")], &[]),
        ] {
            assert_ne!(base.digest(), other.digest(), "{other:?}");
        }
        let mut command = base.clone();
        command.command.push("--verbose".into());
        assert_ne!(base.digest(), command.digest());
    }

    #[test]
    fn a_file_boundary_cannot_be_moved_between_path_and_content() {
        let a = release(&[], &[("ab", b"c")]);
        let b = release(&[], &[("a", b"bc")]);
        assert_ne!(a.digest(), b.digest());
    }

    #[test]
    fn changes_name_what_differs_and_never_a_value() {
        let old = release(&[("LEVEL", "info"), ("GONE", "1")], &[("app.toml", b"x")]);
        let mut new = release(
            &[("LEVEL", "secret-debug"), ("NEW", "1")],
            &[("app.toml", b"y")],
        );
        new.command.push("--fast".into());
        let said = new.changes_from(&old);
        assert_eq!(
            said,
            [
                "local.command",
                "env GONE",
                "env LEVEL",
                "env NEW",
                "file app.toml"
            ]
        );
        assert!(!said.concat().contains("secret-debug"));
        assert!(old.changes_from(&old).is_empty());
    }

    #[test]
    fn the_revision_is_the_image_and_the_digest() {
        let r = release(&[], &[]).revision("echo:2");
        assert_eq!(r.image, "echo:2");
        assert_eq!(
            r.to_string(),
            format!("echo:2+{}", release(&[], &[]).digest())
        );
    }
}
