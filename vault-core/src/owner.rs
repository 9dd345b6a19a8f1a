//! One owner per vault directory: an exclusive `flock` on the directory itself, taken
//! before anything in it is read and held by the open vault for its whole life.
//!
//! The storage engine's own lock does not give this. It is a POSIX record lock on its `LOCK`
//! file, which belongs to the process: closing *any* descriptor of that file drops
//! it, and the engine refuses a second open in one process only for the identical path
//! string. A second open through another spelling (`dir/.`, a symlink, a relative
//! path) was let in, and dropping it released the first handle's lock, so another
//! process could open the vault under it and acknowledged writes were lost. A
//! `flock` belongs to the open file description instead: a second open of the same
//! directory conflicts however it is spelled, in this process or another, and a
//! refused open releases nothing. The kernel drops it when the process dies, so a
//! killed owner never leaves the directory locked.
//!
//! The lock is on the directory, not on a file in it, so that an open refused for
//! another reason (a foreign directory, a wrong key) leaves nothing behind.
//!
//! A `flock` is shared with a forked child, which holds a copy of every descriptor
//! until it execs (the descriptor is close-on-exec). A vault closed while another
//! thread spawns a process stays locked for that moment, so a refused lock is tried
//! again for [`HANDOVER`] before the open is refused. A child forked without an
//! exec keeps the lock for its life. On NFS, Linux emulates `flock` with record
//! locks, which belong to the process again: keep a vault on a local disk.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, flock};
use rustix::io::Errno;

use crate::error::Error;

/// How long a held lock is waited for: longer than a forked child takes to exec.
const HANDOVER: Duration = Duration::from_millis(200);
const RETRY: Duration = Duration::from_millis(5);

/// The exclusive hold on a vault directory; released when dropped.
#[derive(Debug)]
pub(crate) struct Owner {
    /// The open directory the lock belongs to: closing it releases the lock.
    _dir: File,
}

impl Owner {
    /// Takes the directory's lock, or refuses with [`Error::AlreadyOpen`] if it is
    /// still held after [`HANDOVER`]: only vaults take it.
    pub(crate) fn acquire(dir: &Path) -> Result<Owner, Error> {
        let handle = File::open(dir).map_err(|e| Error::io(dir, e))?;
        let started = Instant::now();
        loop {
            match flock(&handle, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Owner { _dir: handle }),
                Err(Errno::WOULDBLOCK) if started.elapsed() < HANDOVER => {
                    std::thread::sleep(RETRY);
                }
                Err(Errno::WOULDBLOCK) => {
                    return Err(Error::AlreadyOpen {
                        path: canonical(dir),
                    });
                }
                Err(e) => return Err(Error::io(dir, e.into())),
            }
        }
    }
}

/// The directory's canonical path, for an error that names it the same way
/// whichever spelling was opened; the path as given if it cannot be resolved.
fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_hold_on_the_same_directory_is_refused_until_the_first_is_dropped()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = Owner::acquire(dir.path())?;
        let second = Owner::acquire(&dir.path().join("."));
        assert!(
            matches!(&second, Err(Error::AlreadyOpen { path }) if *path == dir.path().canonicalize()?),
            "{second:?}"
        );
        drop(second);
        assert!(
            Owner::acquire(dir.path()).is_err(),
            "the refusal released nothing"
        );
        drop(first);
        Owner::acquire(dir.path())?;
        Ok(())
    }

    #[test]
    fn a_hold_released_within_the_handover_is_taken() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let first = Owner::acquire(dir.path())?;
        // As a forked child's copy of the descriptor goes at its exec.
        let release = std::thread::spawn(move || {
            std::thread::sleep(HANDOVER / 4);
            drop(first);
        });
        Owner::acquire(dir.path())?;
        release
            .join()
            .map_err(|_| "the releasing thread panicked")?;
        Ok(())
    }

    #[test]
    fn a_missing_directory_is_an_io_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        assert!(matches!(Owner::acquire(&missing), Err(Error::Io { .. })));
    }
}
