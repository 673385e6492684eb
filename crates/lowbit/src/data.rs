//! The texts bundled with lowbit (`data/` in the repository, provenance and licences in
//! `data/README.md`), found by name as zoo models are: `--text wikitext-2-valid`,
//! `--calib austen`. A name resolves to files under the repository's `data/` folder, which
//! a binary built from the repository knows (its path is fixed at build time); an argument
//! that is an existing path is used as it is.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One named text (or set of texts, read in order).
#[derive(Debug, Clone, Copy)]
pub struct Dataset {
    /// The name commands take.
    pub name: &'static str,
    /// One-line description.
    pub description: &'static str,
    /// Files under `data/`, in reading order.
    pub files: &'static [&'static str],
}

/// Every bundled text (see `data/README.md`).
pub const DATASETS: &[Dataset] = &[
    Dataset {
        name: "wikitext-2-valid",
        description: "WikiText-2 validation split (evaluation text; CC BY-SA 3.0)",
        files: &["wikitext-2/wiki.valid.raw"],
    },
    Dataset {
        name: "austen",
        description: "Emma, Persuasion, Sense and Sensibility (calibration text; public domain)",
        files: &["austen/emma.txt", "austen/persuasion.txt", "austen/sense-and-sensibility.txt"],
    },
    Dataset { name: "emma", description: "Emma alone (short calibrations)", files: &["austen/emma.txt"] },
    Dataset {
        name: "hellaswag",
        description: "HellaSwag validation, 10,042 tasks in llama.cpp's text format (MIT)",
        files: &["hellaswag/hellaswag_val_full.txt"],
    },
    Dataset {
        name: "prompts",
        description: "300 prompts (first sentences of WikiText-2 and Mansfield Park paragraphs) for eval --generate",
        files: &["prompts/prompts.txt"],
    },
];

/// The repository's `data/` folder (`$LOWBIT_DATA` overrides it).
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LOWBIT_DATA").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    crate_dir.parent().and_then(Path::parent).unwrap_or(crate_dir).join("data")
}

/// The files a text argument stands for: an existing path as it is, else a bundled text
/// by name.
pub fn resolve_text(arg: &Path) -> Result<Vec<PathBuf>> {
    if arg.exists() {
        return Ok(vec![arg.to_path_buf()]);
    }
    let name = arg.to_string_lossy();
    let Some(set) = DATASETS.iter().find(|d| d.name == name) else {
        let names: Vec<&str> = DATASETS.iter().map(|d| d.name).collect();
        return Err(Error::io(
            arg,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no such file, and not a bundled text ({})", names.join(", ")),
            ),
        ));
    };
    let dir = data_dir();
    set.files
        .iter()
        .map(|f| {
            let p = dir.join(f);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::io(
                    &p,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("bundled text '{name}' is missing (set LOWBIT_DATA to the repository's data/ folder)"),
                    ),
                ))
            }
        })
        .collect()
}

/// [`resolve_text`] for an argument that must be one file.
pub fn resolve_one(arg: &Path) -> Result<PathBuf> {
    let mut files = resolve_text(arg)?;
    if files.len() != 1 {
        return Err(Error::Usage(format!(
            "'{}' is {} files; this option takes one (e.g. emma, wikitext-2-valid, or a path)",
            arg.display(),
            files.len()
        )));
    }
    Ok(files.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bundled_text_is_there_and_names_resolve() {
        for d in DATASETS {
            let files = resolve_text(Path::new(d.name)).unwrap();
            assert_eq!(files.len(), d.files.len(), "{}", d.name);
            assert!(files.iter().all(|f| f.is_file()));
        }
        assert_eq!(resolve_one(Path::new("emma")).unwrap().file_name().unwrap(), "emma.txt");
        assert!(resolve_one(Path::new("austen")).unwrap_err().to_string().contains("3 files"));
        let e = resolve_text(Path::new("no-such-text")).unwrap_err().to_string();
        assert!(e.contains("not a bundled text") && e.contains("wikitext-2-valid"), "{e}");
    }
}
