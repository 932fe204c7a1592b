//! Reading manifest files: bytes decoded by `zdeploy_api::validate::text` (UTF-8, UTF-16
//! with a byte-order mark), every error naming the file.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use zdeploy_api::validate::text::{MAX_MANIFEST, decode, too_large};

/// The text of the manifest at `path`.
pub fn read(path: &Path) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > MAX_MANIFEST as u64 {
        anyhow::bail!("{} {}", path.display(), too_large(Some(size)));
    }
    read_from(file, &path.display().to_string())
}

/// The text of a manifest from `input`, named `name` in errors.
pub fn read_from(input: impl Read, name: &str) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    // One byte past the limit is enough to refuse it, whatever its size.
    input
        .take(MAX_MANIFEST as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {name}"))?;
    decode(&bytes).map_err(|e| anyhow::anyhow!("{name} {e}"))
}
