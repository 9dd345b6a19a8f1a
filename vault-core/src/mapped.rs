//! A file written through a shared memory map: a write is a copy into the page cache,
//! with no system call, and survives the process being killed the moment it is done
//! (the pages belong to the file, not to the process), as a `pwrite` would.
//!
//! The only unsafe code of the crate: mapping a file is unsafe because another
//! process could change or shorten it while it is mapped. See [`Mapped::open`].
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use memmap2::{MmapMut, MmapOptions};

/// The file grows by this much at a time, with zeros written (not a sparse `set_len`).
const GROW: u64 = 64 << 10;

/// A file whose first `span` bytes are mapped; writes past them fall back to `pwrite`.
pub(crate) struct Mapped {
    file: File,
    map: MmapMut,
    /// The file's length, as this process made it: the map is touched below it only.
    len: u64,
}

impl std::fmt::Debug for Mapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapped").field("len", &self.len).finish()
    }
}

impl Mapped {
    /// Maps the first `span` bytes of `file` (opened for reading and writing), which
    /// may be shorter: the map reaches past its end, and is not touched there until
    /// the file has grown.
    pub(crate) fn open(file: File, span: usize) -> io::Result<Mapped> {
        let len = file.metadata()?.len();
        // Safety: mapping is unsound only if the file changes under the map other than
        // through it. This file is the vault's own (created 0600 in the directory
        // RocksDB's lock keeps to one process), and this process changes it only
        // through this value: writes, and `truncate`, which forgets the map's pages
        // past the new end. Nothing ever reads through the map, so bytes changed by
        // another process could alter only what the file holds (entries are MAC'd and
        // checked when read back with `read`, not through the map). A file shortened
        // by another process makes the next copy into a page past its end raise
        // SIGBUS: the process stops there, as if killed, before its write returned.
        let map = unsafe { MmapOptions::new().len(span).map_mut(&file)? };
        Ok(Mapped { file, map, len })
    }

    /// Writes `bytes` at `offset`, in the page cache when this returns.
    pub(crate) fn write_at(&mut self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let end = offset + bytes.len() as u64;
        let span = self.map.len() as u64;
        if end > span {
            // Past the map: a system call.
            self.fill(offset)?;
            self.file.write_all_at(bytes, offset)?;
            self.len = self.len.max(end);
            return Ok(());
        }
        if end > self.len {
            self.fill(end.next_multiple_of(GROW).min(span))?;
        }
        // Within the map and the file (both checked above): cannot be out of range.
        self.map[offset as usize..end as usize].copy_from_slice(bytes);
        Ok(())
    }

    /// Grows the file to `to` with zeros written, not by a sparse `set_len`: the
    /// file has no holes, so its blocks are reserved before a copy touches them and
    /// a full disk is this error, never a fault in the copy.
    fn fill(&mut self, to: u64) -> io::Result<()> {
        let zeros = [0u8; 4096];
        while self.len < to {
            let n = (to - self.len).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], self.len)?;
            self.len += n as u64;
        }
        Ok(())
    }

    /// Empties the file (its pages, and any copy of what they held, leave the page
    /// cache); it grows again from its start.
    pub(crate) fn truncate(&mut self) -> io::Result<()> {
        // Forgotten first: if `set_len` fails, the next write grows the file again
        // (rewriting zeros over what it holds) rather than copying past its end.
        self.len = 0;
        self.file.set_len(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Read;

    fn read_all(path: &std::path::Path) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn open_rw(path: &std::path::Path) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    }

    #[test]
    fn writes_in_and_past_the_map_read_back_through_the_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let mut m = Mapped::open(open_rw(&path)?, 3 * GROW as usize)?;
        m.write_at(b"hello", 0)?;
        // The file grew by whole steps of zeros, not to the end of the write.
        assert_eq!(std::fs::metadata(&path)?.len(), GROW);
        // Across a growth step, and across the end of the map (part of it past).
        m.write_at(&[1; 100], GROW - 50)?;
        m.write_at(&[2; 100], 3 * GROW - 50)?;
        let bytes = read_all(&path)?;
        assert_eq!(bytes.len() as u64, 3 * GROW + 50);
        assert_eq!(&bytes[..5], b"hello");
        assert!(bytes[5..(GROW - 50) as usize].iter().all(|&b| b == 0));
        assert!(
            bytes[(GROW - 50) as usize..(GROW + 50) as usize]
                .iter()
                .all(|&b| b == 1)
        );
        assert!(bytes[(3 * GROW - 50) as usize..].iter().all(|&b| b == 2));
        Ok(())
    }

    #[test]
    fn a_truncated_file_grows_again_from_its_start() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        let mut m = Mapped::open(open_rw(&path)?, 2 * GROW as usize)?;
        m.write_at(&[9; 1000], GROW)?;
        m.truncate()?;
        assert_eq!(std::fs::metadata(&path)?.len(), 0);
        m.write_at(b"again", 0)?;
        let bytes = read_all(&path)?;
        assert_eq!(bytes.len() as u64, GROW);
        assert_eq!(&bytes[..5], b"again");
        // What was written before the truncation is gone, not back with the growth.
        assert!(bytes[5..].iter().all(|&b| b == 0));
        Ok(())
    }

    #[test]
    fn an_existing_file_keeps_its_bytes_and_is_written_over_in_place() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("f");
        std::fs::write(&path, [5u8; 10])?;
        let mut m = Mapped::open(open_rw(&path)?, GROW as usize)?;
        m.write_at(b"ab", 2)?;
        let bytes = read_all(&path)?;
        assert_eq!(&bytes[..10], &[5, 5, b'a', b'b', 5, 5, 5, 5, 5, 5]);
        Ok(())
    }
}
