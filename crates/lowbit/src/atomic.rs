//! Writing outputs atomically: a temporary file in the target folder, renamed into place
//! only once it is complete, so an interrupted or failed write never leaves a half-written
//! file under the real name. Every output path is checked first ([`check_output`]): only a
//! regular file or a new name is ever replaced — never a device, pipe, symlink or folder.
//! Temporary files are named `.<name>.<pid>.tmp`; one whose process is gone (a killed run)
//! is removed by the next run that writes the same output ([`remove_stale_temps`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// What sits at an output path, without following a symlink.
enum Node {
    Missing,
    File,
    Folder,
    Symlink,
    /// A device, pipe or socket.
    Special,
}

fn node(path: &Path) -> Result<Node> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Ok(Node::Symlink),
        Ok(m) if m.is_dir() => Ok(Node::Folder),
        Ok(m) if m.is_file() => Ok(Node::File),
        Ok(_) => Ok(Node::Special),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Node::Missing),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Refuses an output path that lowbit must not replace, before any work is done: an
/// existing folder, device, pipe, socket or symlink (renaming over it would replace the
/// node itself: `-o /dev/null` would become a regular file), a name without a file part,
/// or a folder that does not exist or cannot be written.
pub fn check_output(path: &Path) -> Result<()> {
    let what = match node(path)? {
        Node::Symlink => Some("a symbolic link (name the file it points to instead)"),
        Node::Folder => Some("a folder (give a file name inside it)"),
        Node::Special => Some("a device, pipe or socket, not a regular file"),
        Node::File | Node::Missing => None,
    };
    if let Some(what) = what {
        return Err(Error::Usage(format!(
            "{}: is {what}; lowbit writes its outputs only to regular files or new paths",
            path.display()
        )));
    }
    if path.file_name().is_none() {
        return Err(Error::Usage(format!("{}: not a file path", path.display())));
    }
    let dir = parent_of(path);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::Usage(format!("{}: {} is not a folder", path.display(), dir.display()))),
        Err(_) => return Err(Error::Usage(format!("{}: the folder {} does not exist", path.display(), dir.display()))),
    }
    // Writability, tried for real (permissions, read-only mounts, ACLs).
    let probe = temp_path(path);
    std::fs::File::create(&probe)
        .map_err(|e| Error::Usage(format!("{}: cannot create files in {}: {e}", path.display(), dir.display())))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Refuses an output *folder* (sweep's `-o`) that is an existing file, device or pipe,
/// or a symlink (never followed into a place the user did not name), before any work.
pub fn check_output_folder(path: &Path) -> Result<()> {
    let what = match node(path)? {
        Node::Symlink => Some("a symbolic link (name the folder it points to instead)"),
        Node::File => Some("a file, not a folder"),
        Node::Special => Some("a device, pipe or socket, not a folder"),
        Node::Folder | Node::Missing => None,
    };
    match what {
        Some(what) => Err(Error::Usage(format!("{}: is {what}; give a new or existing folder", path.display()))),
        None => Ok(()),
    }
}

/// Whether `b` names the existing file `a` (through any path or link), also when `b`
/// does not exist yet but its folder does.
pub fn same_file(a: &Path, b: &Path) -> bool {
    let Ok(a) = a.canonicalize() else { return false };
    if let Ok(b) = b.canonicalize() {
        return a == b;
    }
    let parent = b.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match (parent.canonicalize(), b.file_name()) {
        (Ok(p), Some(name)) => p.join(name) == a,
        _ => false,
    }
}

/// Refuses an output that is one of the command's inputs (`(option, path)` pairs), so
/// no output ever replaces a model, text, importance matrix or reference it read.
pub fn refuse_overwriting_inputs(output: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    match inputs.iter().find(|(_, p)| same_file(p, output)) {
        Some((option, _)) => Err(Error::Usage(format!(
            "{}: is also the {option} input; the output would overwrite the input",
            output.display()
        ))),
        None => Ok(()),
    }
}

/// The folder an output lands in.
fn parent_of(path: &Path) -> PathBuf {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
}

/// This process's temporary file for the output `path`: `.<name>.<pid>.tmp` beside it.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    parent_of(path).join(format!(".{name}.{}.tmp", std::process::id()))
}

/// Removes the temporary files other runs left for the output `path` (`.<name>.<pid>.tmp`
/// whose process no longer exists: killed by SIGKILL or a crash). Returns what it removed.
/// A temp file of a live process (another run writing the same output) is left alone.
pub fn remove_stale_temps(path: &Path) -> Vec<PathBuf> {
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().to_string()) else { return Vec::new() };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(parent_of(path)) else { return Vec::new() };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().to_string();
        let Some(pid) = file.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        let regular = e.file_type().is_ok_and(|t| t.is_file());
        if regular && pid != std::process::id() && !process_alive(pid) && std::fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Whether process `pid` exists (Linux: /proc; elsewhere assume it does, keeping files).
fn process_alive(pid: u32) -> bool {
    if Path::new("/proc/self").exists() {
        Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// A temporary file next to `path` (its [`temp_path`]), to be persisted under that name
/// when complete; stale ones from killed runs are removed first. It is readable by
/// everyone like a normally created file (0644), not 0600 as temporary files default to,
/// since it becomes the user's output.
pub fn temp_beside(path: &Path) -> Result<tempfile::NamedTempFile> {
    check_output(path)?;
    remove_stale_temps(path);
    let tmp = temp_path(path);
    let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = file.set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    let tmp = tempfile::TempPath::try_from_path(tmp.clone()).map_err(|e| Error::io(&tmp, e))?;
    Ok(tempfile::NamedTempFile::from_parts(file, tmp))
}

/// Writes `bytes` to `path` atomically (temp file in the same folder + rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = temp_beside(path)?;
    tmp.write_all(bytes).and_then(|_| tmp.as_file().sync_all()).map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_be_regular_files_or_new_paths() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.json");
        check_output(&file).unwrap();
        write_atomic(&file, b"one").unwrap();
        check_output(&file).unwrap();
        write_atomic(&file, b"two").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        assert!(check_output(dir.path()).is_err(), "a folder");
        assert!(check_output(&dir.path().join("missing/out.json")).is_err(), "a missing folder");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.json");
            std::os::unix::fs::symlink(&file, &link).unwrap();
            let e = write_atomic(&link, b"three").unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
            assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
            assert_eq!(std::fs::read(&file).unwrap(), b"two");
            assert!(check_output(Path::new("/dev/null")).unwrap_err().to_string().contains("device"));
        }
        // Nothing but the file and the link is left.
        assert!(std::fs::read_dir(dir.path()).unwrap().count() <= 2);
    }

    #[test]
    fn stale_temps_of_dead_processes_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.gguf");
        // A pid that cannot exist (above Linux's pid_max of 2^22) and this process's own.
        let dead = dir.path().join(".m.gguf.4294967295.tmp");
        let mine = temp_path(&out);
        let other = dir.path().join(".other.gguf.4294967295.tmp");
        for p in [&dead, &mine, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let removed = remove_stale_temps(&out);
        if Path::new("/proc/self").exists() {
            assert_eq!(removed, vec![dead.clone()]);
            assert!(!dead.exists());
        }
        assert!(mine.exists() && other.exists());
    }
}
