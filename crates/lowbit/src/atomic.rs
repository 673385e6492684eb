//! Writing small outputs (reports, JSON, saved statistics) atomically: a temporary file in
//! the target folder, renamed into place only once it is complete, so an interrupted or
//! failed write never leaves a half-written file under the real name.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// A temporary file next to `path`, to be persisted under that name when complete. It is
/// readable by everyone like a normally created file (0644), not 0600 as temporary
/// files default to, since it becomes the user's output.
pub fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".lowbit-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to `path` atomically (temp file in the same folder + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}
