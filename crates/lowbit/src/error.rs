//! The library's error type. Every variant names the file (and where it applies, the
//! tensor) at fault, so a user can act on the message without a debugger.

use std::path::{Path, PathBuf};

/// Everything that can go wrong when lowbit reads, writes or fetches a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system I/O failure on a named file.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error (shown in the message, so not chained as a source).
        cause: std::io::Error,
    },
    /// The file's bytes do not follow its format (truncated, corrupt, lying header…).
    #[error("{}: {what}", path.display())]
    Format {
        /// The malformed file.
        path: PathBuf,
        /// What was expected and what was found.
        what: String,
    },
    /// One tensor inside an otherwise readable file cannot be used.
    #[error("{}: tensor '{tensor}': {what}", path.display())]
    Tensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        what: String,
    },
    /// The model exists but lowbit does not support it (architecture, tensor type…).
    #[error("{}: unsupported: {what}", path.display())]
    Unsupported {
        /// The model file or folder.
        path: PathBuf,
        /// What is not supported.
        what: String,
    },
    /// Fetching a model from a package registry failed.
    #[error("fetch {name}: {what}")]
    Fetch {
        /// The zoo name being fetched.
        name: String,
        /// Why it failed and what to do about it.
        what: String,
    },
    /// A request that makes no sense regardless of any file (bad argument values).
    #[error("{0}")]
    Usage(String),
    /// The user interrupted the work (Ctrl-C); partial outputs were removed.
    #[error("interrupted; nothing was written")]
    Interrupted,
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), cause: source }
    }

    /// A format violation in `path`.
    pub fn format(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Format { path: path.as_ref().to_path_buf(), what: what.into() }
    }

    /// A problem with tensor `tensor` of `path`.
    pub fn tensor(path: impl AsRef<Path>, tensor: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Tensor { path: path.as_ref().to_path_buf(), tensor: tensor.into(), what: what.into() }
    }

    /// Something in `path` that lowbit does not support.
    pub fn unsupported(path: impl AsRef<Path>, what: impl Into<String>) -> Self {
        Error::Unsupported { path: path.as_ref().to_path_buf(), what: what.into() }
    }
}
