//! Injected faults, for the fault-injection tests (feature `failpoints`, off by
//! default; vault-core's own tests turn it on). A test arms a named point for one
//! vault directory; the storage seam and the header writer call [`hit`] there.
//! Without the feature, [`hit`] is an empty inline function: the hooks cost nothing.
//!
//! The points: `write` (a store write fails before anything is written), `sync` (a
//! synced write reaches the log and then its sync fails, or a log sync fails), `purge.flush` (before
//! a purge flushes), `purge.verified` (a purge verified, before it returns),
//! `header.written` (the new header's
//! temporary file is written and synced, not yet renamed) and `header.renamed` (renamed,
//! the directory not yet synced).

use std::path::Path;

use crate::error::Error;
#[cfg(feature = "failpoints")]
use crate::error::StorageError;

/// What an armed point does when it is reached.
#[cfg(feature = "failpoints")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fails with an I/O error, as `EIO` from a write or an fsync.
    Eio,
    /// Prints `PAUSED <point>` on stdout and waits for stdin to close, then exits
    /// the process: a test's child process waits there to be killed.
    Pause,
}

#[cfg(feature = "failpoints")]
struct Armed {
    dir: std::path::PathBuf,
    point: String,
    /// Hits to let pass before the fault.
    skip: u32,
    fault: Fault,
}

#[cfg(feature = "failpoints")]
static ARMED: std::sync::Mutex<Vec<Armed>> = std::sync::Mutex::new(Vec::new());

/// Whether a point was ever armed in this process: until then a hit takes no lock
/// (feature unification turns the feature on for every crate of a workspace test run).
#[cfg(feature = "failpoints")]
static EVER_ARMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(feature = "failpoints")]
fn armed() -> std::sync::MutexGuard<'static, Vec<Armed>> {
    ARMED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Arms `point` of the vault in `dir` (spelled as the vault was opened): its hit
/// after `skip` others faults once, then the point is disarmed.
#[cfg(feature = "failpoints")]
pub fn arm(dir: &Path, point: &str, skip: u32, fault: Fault) {
    EVER_ARMED.store(true, std::sync::atomic::Ordering::Release);
    armed().push(Armed {
        dir: dir.to_path_buf(),
        point: point.to_owned(),
        skip,
        fault,
    });
}

/// Disarms every point of the vault in `dir`; `true` if one was still armed.
#[cfg(feature = "failpoints")]
pub fn disarm(dir: &Path) -> bool {
    let mut armed = armed();
    let before = armed.len();
    armed.retain(|a| a.dir != dir);
    armed.len() != before
}

/// The point `point` of the vault in `dir` is reached: the fault armed there, if any.
#[cfg(feature = "failpoints")]
pub(crate) fn hit(dir: &Path, point: &str) -> Result<(), Error> {
    if !EVER_ARMED.load(std::sync::atomic::Ordering::Acquire) {
        return Ok(());
    }
    let fault = {
        let mut armed = armed();
        let Some(at) = armed.iter().position(|a| a.dir == dir && a.point == point) else {
            return Ok(());
        };
        if armed[at].skip > 0 {
            armed[at].skip -= 1;
            return Ok(());
        }
        armed.remove(at).fault
    };
    match fault {
        Fault::Eio => Err(Error::Storage(StorageError(format!(
            "IO error: injected at {point}: Input/output error"
        )))),
        Fault::Pause => {
            use std::io::{Read, Write};
            let mut out = std::io::stdout();
            let _ = writeln!(out, "PAUSED {point}");
            let _ = out.flush();
            let _ = std::io::stdin().read_to_end(&mut Vec::new());
            std::process::exit(1);
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_dir: &Path, _point: &str) -> Result<(), Error> {
    Ok(())
}
