//! A file appended to through a shared memory map where that cannot fail: a write
//! is then a copy into the page cache, with no system call, and survives the process
//! being killed the moment it is done (the pages belong to the file, not to the
//! process), as a `pwrite` would.
//!
//! A store into a mapped page cannot return an error: where the filesystem has to
//! allocate for it (a full disk, a quota), the process gets SIGBUS, and a signal's
//! core dump would put the vault's keys on disk. So files are mapped only on
//! filesystems that write a page in place into blocks already reserved: ext2/3/4
//! and tmpfs, with the file grown by written zeros (never sparse), so every block
//! is reserved before a copy touches it. Files on any other filesystem are written
//! with `pwrite` (the copy-on-write ones, btrfs, XFS with reflinks and ZFS, allocate
//! on every write), as is anything past the mapped span.
//!
//! The only unsafe code of the crate: mapping the file, and copying into the map.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use memmap2::{MmapMut, MmapOptions};

/// The file grows by this much at a time, with zeros written.
const GROW: usize = 64 << 10;
static ZEROS: [u8; GROW] = [0; GROW];

/// `statfs` magic numbers of the filesystems whose mapped pages are written in place
/// (`linux/magic.h`): ext2/3/4 share one; tmpfs.
const IN_PLACE: [u64; 2] = [0xEF53, 0x0102_1994];

/// A file written at offsets, its first `span` bytes through a map where that is
/// safe (see the module).
pub(crate) struct Mapped {
    file: File,
    /// `None` on a filesystem that may allocate when a mapped page is written.
    map: Option<MmapMut>,
    /// The file's length, as this process made it: the map is written below it only.
    len: u64,
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped")
            .field("mapped", &self.map.is_some())
            .field("len", &self.len)
            .finish()
    }
}

/// Whether `file` is on a filesystem that writes mapped pages in place.
fn writes_in_place(file: &File) -> io::Result<bool> {
    let fs = rustix::fs::fstatfs(file)?;
    // The field's width and sign vary by architecture; the magic numbers are small.
    #[allow(clippy::unnecessary_cast)]
    let kind = fs.f_type as u64;
    Ok(IN_PLACE.contains(&kind))
}

impl Mapped {
    /// `file` (opened for reading and writing, created by the vault), its first `span`
    /// bytes mapped if its filesystem allows. The file may be shorter: the map then
    /// reaches past its end and is not written there until the file has grown.
    pub(crate) fn open(file: File, span: usize) -> io::Result<Mapped> {
        let map = writes_in_place(&file)?;
        Mapped::new(file, span, map)
    }

    fn new(file: File, span: usize, map: bool) -> io::Result<Mapped> {
        let len = file.metadata()?.len();
        let map = if map {
            // Safety: a map is unsound if the file changes under it other than through
            // it. This process changes the file only through this value: copies below
            // `len` (the file's length, so into pages that exist), zeros written with
            // `pwrite` to grow it, and `truncate`, which sets `len` to 0 first (the
            // kernel then drops the pages past the new end from the map). The file is
            // the vault's own, created 0600 in its data directory, which one vault
            // opens at a time (its `flock` on the directory, `owner.rs`, released only
            // after this file is closed); it is closed after the store, with no
            // write in between. Nothing ever reads through the map (the entries are
            // read back with `read` when the vault opens, and MAC'd), so bytes changed
            // by another process alter only what the file holds; a file shortened by
            // another process makes the next copy past its end raise SIGBUS.
            Some(unsafe { MmapOptions::new().len(span).map_mut(&file)? })
        } else {
            None
        };
        Ok(Mapped { file, map, len })
    }

    /// Writes `bytes` at `offset`: in the page cache when this returns.
    pub(crate) fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        let span = self.map.as_ref().map_or(0, |m| m.len() as u64);
        if end > span {
            // Not mapped, or past the map: a system call. Zeros fill any gap before
            // `offset`, so that the mapped part never has a hole.
            self.fill(offset)?;
            self.file.write_all_at(bytes, offset)?;
            self.len = self.len.max(end);
            return Ok(());
        }
        if end > self.len {
            self.fill(end.next_multiple_of(GROW as u64).min(span))?;
        }
        let map = self.map.as_mut().expect("a span above zero is a map");
        // Safety: `offset..end` is within the map (`end <= span`) and below the file's
        // end (grown above), so its pages exist and are the file's. The copy goes
        // through a pointer: no reference is made to the map's pages past the end.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                map.as_mut_ptr().add(offset as usize),
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Grows the file to `to` with zeros written, not by a sparse `set_len`: its blocks
    /// are reserved before a copy touches them, so a full disk is this error and never
    /// a fault in the copy.
    fn fill(&mut self, to: u64) -> io::Result<()> {
        while self.len < to {
            let n = (to - self.len).min(GROW as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], self.len)?;
            self.len += n as u64;
        }
        Ok(())
    }

    /// Empties the file (its pages leave the page cache, and with them any copy of
    /// what they held); it grows again from its start.
    pub(crate) fn truncate(&mut self) -> io::Result<()> {
        // First: if `set_len` fails, the next write grows the file again (rewriting
        // zeros over what it holds) rather than copying past an end it may have.
        self.len = 0;
        self.file.set_len(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;

    const STEP: u64 = GROW as u64;

    fn open_rw(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    /// The file's bytes, checking that it has no holes: a copy into a hole would
    /// have to allocate.
    fn read_back(path: &Path) -> io::Result<Vec<u8>> {
        let meta = std::fs::metadata(path)?;
        assert!(meta.blocks() * 512 >= meta.len(), "a sparse file");
        std::fs::read(path)
    }

    #[test]
    fn writes_in_and_past_the_map_read_back_through_the_file() -> io::Result<()> {
        for map in [true, false] {
            let dir = tempfile::tempdir()?;
            let path = dir.path().join("f");
            let mut m = Mapped::new(open_rw(&path)?, 3 * GROW, map)?;
            assert_eq!(m.map.is_some(), map);
            m.write_at(b"hello", 0)?;
            // Mapped, the file grew by a whole step of zeros, not to the write's end.
            assert_eq!(std::fs::metadata(&path)?.len(), if map { STEP } else { 5 });
            // Across a growth step, and across the end of the map (part of it past).
            m.write_at(&[1; 100], STEP - 50)?;
            m.write_at(&[2; 100], 3 * STEP - 50)?;
            let bytes = read_back(&path)?;
            assert_eq!(bytes.len() as u64, 3 * STEP + 50);
            let at = |from: u64, to: u64| &bytes[from as usize..to as usize];
            assert_eq!(at(0, 5), b"hello");
            assert!(at(5, STEP - 50).iter().all(|&b| b == 0));
            assert!(at(STEP - 50, STEP + 50).iter().all(|&b| b == 1));
            assert!(at(STEP + 50, 3 * STEP - 50).iter().all(|&b| b == 0));
            assert!(at(3 * STEP - 50, 3 * STEP + 50).iter().all(|&b| b == 2));
        }
        Ok(())
    }

    #[test]
    fn a_truncated_file_grows_again_from_its_start() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let mut m = Mapped::new(open_rw(&path)?, 2 * GROW, true)?;
        m.write_at(&[9; 1000], STEP)?;
        m.truncate()?;
        assert_eq!(std::fs::metadata(&path)?.len(), 0);
        m.write_at(b"again", 0)?;
        let bytes = read_back(&path)?;
        assert_eq!(bytes.len() as u64, STEP);
        assert_eq!(&bytes[..5], b"again");
        // What was written before the truncation is gone, not back with the growth.
        assert!(bytes[5..].iter().all(|&b| b == 0));
        Ok(())
    }

    #[test]
    fn an_existing_file_is_written_over_in_place() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        // Shorter than the map, and longer.
        for len in [10, 3 * GROW] {
            let path = dir.path().join(format!("f{len}"));
            std::fs::write(&path, vec![5u8; len])?;
            let mut m = Mapped::new(open_rw(&path)?, 2 * GROW, true)?;
            m.write_at(b"ab", 2)?;
            let bytes = read_back(&path)?;
            assert_eq!(bytes.len(), len);
            assert_eq!(&bytes[..6], &[5, 5, b'a', b'b', 5, 5]);
            assert!(bytes[4..].iter().all(|&b| b == 5));
        }
        Ok(())
    }

    /// The filesystem's name as coreutils' `stat` gives it, from its own table of
    /// magic numbers (ext2/3/4 are all "ext2/ext3").
    fn fs_name(path: &Path) -> io::Result<String> {
        let out = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(path)
            .output()?;
        assert!(out.status.success(), "stat -f {}", path.display());
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    #[test]
    fn only_filesystems_that_write_pages_in_place_are_mapped() -> io::Result<()> {
        // procfs is not one of them.
        assert!(!writes_in_place(&File::open("/proc/self/stat")?)?);
        // Where the tests' files are, and shared memory (tmpfs) where there is any:
        // mapped exactly when `stat` names one of the two.
        let tmp = tempfile::tempdir()?;
        let shm = tempfile::tempdir_in("/dev/shm").ok();
        for dir in std::iter::once(&tmp).chain(&shm) {
            let name = fs_name(dir.path())?;
            let mapped = Mapped::open(open_rw(&dir.path().join("f"))?, GROW)?
                .map
                .is_some();
            let expected = matches!(name.as_str(), "ext2/ext3" | "tmpfs");
            assert_eq!(mapped, expected, "{}: {name}", dir.path().display());
        }
        Ok(())
    }
}
