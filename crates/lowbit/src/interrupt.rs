//! Cooperative interruption (Ctrl-C). The command-line tool's signal handler calls
//! [`request`]; long loops call [`check`] between units of work and stop with
//! [`Error::Interrupted`], so their temporary files are removed by the normal error path
//! and nothing half-written is left under a real name.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks running work to stop at its next check.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Whether an interruption was requested.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// `Err(Error::Interrupted)` once an interruption was requested.
pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted)
    } else {
        Ok(())
    }
}
