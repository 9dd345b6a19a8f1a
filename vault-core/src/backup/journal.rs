//! The erasure journal: one file beside the backups that lists every erasure and
//! every expired record by storage id and time, so that a restore can destroy again
//! what a backup still holds. No personal data: a storage id says nothing once its
//! key is gone.
//!
//! The file is a header (magic, vault id, MAC) then fixed-size entries, each with a
//! MAC chained over the one before, like the audit trail: an entry cannot be altered,
//! removed from the middle or moved to another vault's journal unnoticed. An entry is
//! synced before the erasure it records is written to the store, so every erasure a
//! caller saw succeed is in the journal. A crash while appending leaves a partial
//! entry at the end, for an erasure that was never acknowledged: opening cuts it.
//!
//! Replicas of a vault on PostgreSQL share one journal (a directory they all
//! reach): there each append holds an exclusive `flock` on the file and first reads
//! and authenticates what the other replicas appended since, so the chain stays one.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use subtle::ConstantTimeEq;

use crate::crypto::{Key, domain};
use crate::error::{BackupProblem, Error};
use crate::header::sync_dir;
use crate::subjects::Sid;
use crate::token::TokenId;

/// The journal's file name inside the backup directory.
pub(crate) const JOURNAL_FILE: &str = "erasures.journal";
const MAGIC: &[u8; 8] = b"PIIVEJ01";
const HEADER_LEN: usize = 8 + 16 + 32;
/// seq, time, kind, storage id, token id, MAC.
const ENTRY_LEN: usize = 8 + 8 + 1 + 16 + 16 + 32;
const BODY_LEN: usize = ENTRY_LEN - 32;

/// What one entry destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destroyed {
    /// A subject instance: its key, and with it every record.
    Subject,
    /// One record, past its retention period.
    Record(TokenId),
    /// Not a destruction: a token of digits issued (the keyed hash of its text).
    /// A restore to before it keeps it from being issued again, so that a token a
    /// service still holds never names another value.
    Alias([u8; 16]),
}

/// One entry. (No `Debug`: a storage id with a time.)
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    pub seq: u64,
    pub at: u64,
    pub sid: Sid,
    pub what: Destroyed,
}

impl Entry {
    fn body(&self) -> [u8; BODY_LEN] {
        let mut body = [0u8; BODY_LEN];
        body[..8].copy_from_slice(&self.seq.to_be_bytes());
        body[8..16].copy_from_slice(&self.at.to_be_bytes());
        body[33..49].copy_from_slice(&self.sid);
        match self.what {
            Destroyed::Subject => body[16] = 1,
            Destroyed::Record(id) => {
                body[16] = 2;
                body[17..33].copy_from_slice(&id);
            }
            Destroyed::Alias(hash) => {
                body[16] = 3;
                body[17..33].copy_from_slice(&hash);
            }
        }
        body
    }

    pub(crate) fn parse(body: &[u8]) -> Option<Entry> {
        let seq = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
        let at = u64::from_be_bytes(body.get(8..16)?.try_into().ok()?);
        let sid: Sid = body.get(33..49)?.try_into().ok()?;
        let what = match body.get(16)? {
            1 => Destroyed::Subject,
            2 => Destroyed::Record(body.get(17..33)?.try_into().ok()?),
            3 => Destroyed::Alias(body.get(17..33)?.try_into().ok()?),
            _ => return None,
        };
        Some(Entry { seq, at, sid, what })
    }
}

fn header_mac(key: &Key, vault_id: &[u8; 16]) -> [u8; 32] {
    key.mac_parts(&[domain::ERASURE_JOURNAL, MAGIC, vault_id])
}

fn entry_mac(key: &Key, prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    key.mac_parts(&[domain::ERASURE_JOURNAL, prev, body])
}

/// A journal as read: the entries that authenticate, in order, and what stopped the
/// reading early, if anything did.
pub(crate) struct Journal {
    pub entries: Vec<Entry>,
    /// The MAC of the last authentic entry (of the header if none).
    pub head: [u8; 32],
    /// Bytes after the last authentic entry that do not make a whole entry.
    pub torn: bool,
    /// The first entry that failed authentication, counted from 1, and how many
    /// whole entries follow it (itself included): they cannot be trusted.
    pub damaged: Option<(u64, u64)>,
    /// The file length up to the last authentic entry.
    pub len: u64,
}

/// Reads and authenticates the journal at `path`. `Ok(None)` when it does not exist.
pub(crate) fn read(path: &Path, vault_id: &[u8; 16], key: &Key) -> Result<Option<Journal>, Error> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(path, e)),
    };
    let foreign = || {
        Error::Backup(BackupProblem::JournalNotOfThisVault {
            path: path.to_path_buf(),
        })
    };
    let header = bytes.get(..HEADER_LEN).ok_or_else(foreign)?;
    let expected = header_mac(key, vault_id);
    if &header[..8] != MAGIC
        || header[8..24] != vault_id[..]
        || !bool::from(header[24..].ct_eq(&expected))
    {
        return Err(foreign());
    }
    let mut head = expected;
    let mut entries = Vec::new();
    let rest = &bytes[HEADER_LEN..];
    let whole = rest.len() / ENTRY_LEN;
    let mut damaged = None;
    let mut zeroed = false;
    for (i, chunk) in rest.chunks_exact(ENTRY_LEN).enumerate() {
        let (body, mac) = chunk.split_at(BODY_LEN);
        let entry = Entry::parse(body).filter(|e| e.seq == i as u64 + 1);
        match entry {
            Some(entry) if bool::from(mac.ct_eq(&entry_mac(key, &head, body))) => {
                head.copy_from_slice(mac);
                entries.push(entry);
            }
            // A last entry of zeros is one whose length reached the disk before its
            // bytes did (a power cut during an append): never acknowledged. No
            // entry is zeros otherwise: it has a MAC.
            _ if i + 1 == whole && chunk.iter().all(|&b| b == 0) => zeroed = true,
            _ => {
                damaged = Some((i as u64 + 1, (whole - i) as u64));
                break;
            }
        }
    }
    Ok(Some(Journal {
        len: (HEADER_LEN + entries.len() * ENTRY_LEN) as u64,
        torn: damaged.is_none() && (zeroed || rest.len() % ENTRY_LEN != 0),
        entries,
        head,
        damaged,
    }))
}

/// The live journal, appended to by erasures and the retention purge.
pub(crate) struct ErasureJournal {
    path: PathBuf,
    vault_id: [u8; 16],
    key: Key,
    tail: Mutex<Tail>,
    /// Appended to by other processes too (replicas): appends lock the file and
    /// catch up first.
    shared: bool,
}

struct Tail {
    file: File,
    len: u64,
    seq: u64,
    head: [u8; 32],
    /// A failed append that could not be undone: nothing more is appended.
    broken: bool,
}

impl std::fmt::Debug for ErasureJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErasureJournal")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ErasureJournal {
    /// Opens the journal in `dir` (creating both if missing), checks it is this
    /// vault's and whole, and cuts a torn last entry. A damaged journal is refused:
    /// a restore could not trust it, so erasures must not go on being recorded in it.
    pub(crate) fn open(
        dir: &Path,
        vault_id: &[u8; 16],
        key: Key,
        shared: bool,
    ) -> Result<ErasureJournal, Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(JOURNAL_FILE);
        // Shared: no other replica creates, appends or cuts meanwhile.
        let _locked = if shared {
            Some(FileLock::exclusive(&lock_file(dir)?, &path)?)
        } else {
            None
        };
        let read = match read(&path, vault_id, &key)? {
            Some(read) => read,
            None => {
                create(&path, vault_id, &key)?;
                sync_dir(dir)?;
                read(&path, vault_id, &key)?
                    .ok_or_else(|| Error::io(&path, std::io::ErrorKind::NotFound.into()))?
            }
        };
        if let Some((entry, _)) = read.damaged {
            return Err(Error::Backup(BackupProblem::JournalDamaged { path, entry }));
        }
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if read.torn {
            file.set_len(read.len)
                .and_then(|()| file.sync_data())
                .map_err(|e| Error::io(&path, e))?;
        }
        Ok(ErasureJournal {
            tail: Mutex::new(Tail {
                file,
                len: read.len,
                seq: read.entries.len() as u64,
                head: read.head,
                broken: false,
            }),
            path,
            vault_id: *vault_id,
            key,
            shared,
        })
    }

    /// Reads and authenticates what other replicas appended after `tail`, and moves
    /// `tail` to the file's end. Called holding the file's lock.
    fn catch_up(&self, tail: &mut Tail) -> Result<(), Error> {
        use std::io::{Seek, SeekFrom};
        let mut bytes = Vec::new();
        let mut file = File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        file.seek(SeekFrom::Start(tail.len))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|e| Error::io(&self.path, e))?;
        let whole = bytes.len() / ENTRY_LEN;
        for (i, chunk) in bytes.chunks_exact(ENTRY_LEN).enumerate() {
            let (body, mac) = chunk.split_at(BODY_LEN);
            let entry = Entry::parse(body).filter(|e| e.seq == tail.seq + 1);
            match entry {
                Some(_) if bool::from(mac.ct_eq(&entry_mac(&self.key, &tail.head, body))) => {
                    tail.head.copy_from_slice(mac);
                    tail.seq += 1;
                    tail.len += ENTRY_LEN as u64;
                }
                // A replica killed while appending left it: never acknowledged.
                _ if i + 1 == whole && chunk.iter().all(|&b| b == 0) => break,
                _ => {
                    return Err(Error::Backup(BackupProblem::JournalDamaged {
                        path: self.path.clone(),
                        entry: tail.seq + 1,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Every entry, read again from the file and authenticated.
    pub(crate) fn entries(&self) -> Result<Vec<Entry>, Error> {
        // Under the tail's lock: no append is half-written meanwhile.
        let _tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        let journal = read(&self.path, &self.vault_id, &self.key)?
            .ok_or_else(|| Error::io(&self.path, std::io::ErrorKind::NotFound.into()))?;
        match journal.damaged {
            None => Ok(journal.entries),
            Some((entry, _)) => Err(Error::Backup(BackupProblem::JournalDamaged {
                path: self.path.clone(),
                entry,
            })),
        }
    }

    /// The number of entries so far (shared: as the file says now).
    pub(crate) fn seq(&self) -> Result<u64, Error> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if self.shared {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let _locked = FileLock::exclusive(&lock_file(dir)?, &self.path)?;
            self.catch_up(&mut tail)?;
        }
        Ok(tail.seq)
    }

    /// Appends one entry per item and syncs them; returns the last sequence number.
    /// On an error nothing was appended (or the journal refuses every later append).
    pub(crate) fn append(&self, at: u64, items: &[(Sid, Destroyed)]) -> Result<u64, Error> {
        let mut tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.broken {
            return Err(Error::Backup(BackupProblem::JournalDamaged {
                path: self.path.clone(),
                entry: tail.seq + 1,
            }));
        }
        // Shared: held until the entries are synced, after what the others wrote.
        let _locked = if self.shared {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let locked = FileLock::exclusive(&lock_file(dir)?, &self.path)?;
            self.catch_up(&mut tail)?;
            Some(locked)
        } else {
            None
        };
        let mut bytes = Vec::with_capacity(items.len() * ENTRY_LEN);
        let (mut seq, mut head) = (tail.seq, tail.head);
        for &(sid, what) in items {
            seq += 1;
            let body = Entry { seq, at, sid, what }.body();
            head = entry_mac(&self.key, &head, &body);
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(&head);
        }
        use std::io::{Seek, SeekFrom};
        let len = tail.len;
        let written = tail
            .file
            .seek(SeekFrom::Start(len))
            .and_then(|_| tail.file.write_all(&bytes))
            .and_then(|()| tail.file.sync_data());
        if let Err(e) = written {
            // Undo what may have reached the file; if that fails too, the file's end
            // is unknown and nothing more may be appended.
            if tail
                .file
                .set_len(len)
                .and_then(|()| tail.file.sync_data())
                .is_err()
            {
                tail.broken = true;
            }
            return Err(Error::io(&self.path, e));
        }
        tail.len = len + bytes.len() as u64;
        tail.seq = seq;
        tail.head = head;
        Ok(seq)
    }
}

/// The file the replicas lock around appends to a shared journal (beside it: the
/// journal itself is replaced when it is created).
fn lock_file(dir: &Path) -> Result<File, Error> {
    let path = dir.join(format!("{JOURNAL_FILE}.lock"));
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))
}

/// An exclusive `flock`, released when dropped (with the file).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn exclusive(file: &File, journal: &Path) -> Result<FileLock, Error> {
        let file = file.try_clone().map_err(|e| Error::io(journal, e))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| Error::io(journal, e.into()))?;
        Ok(FileLock { _file: file })
    }
}

fn create(path: &Path, vault_id: &[u8; 16], key: &Key) -> Result<(), Error> {
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(vault_id);
    header.extend_from_slice(&header_mac(key, vault_id));
    let tmp = path.with_extension("new");
    let mut file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(&header)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key::fill_with(|k| k.copy_from_slice(&[9; 32]))
    }

    #[test]
    fn entries_chain_and_a_torn_tail_is_cut() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let journal = ErasureJournal::open(dir.path(), &[1; 16], key(), false)?;
        assert_eq!(journal.append(10, &[([2; 16], Destroyed::Subject)])?, 1);
        assert_eq!(
            journal.append(11, &[([3; 16], Destroyed::Record([4; 16]))])?,
            2
        );
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        // A partial entry, as a crash during an append leaves.
        let mut file = OpenOptions::new().append(true).open(&path)?;
        file.write_all(&[0xab; 20])?;
        drop(file);
        let journal = ErasureJournal::open(dir.path(), &[1; 16], key(), false)?;
        assert_eq!(journal.seq()?, 2);
        assert_eq!(journal.append(12, &[([5; 16], Destroyed::Subject)])?, 3);
        let found = super::read(&path, &[1; 16], &key())?.ok_or("no journal")?;
        let seen: Vec<_> = found
            .entries
            .iter()
            .map(|e| (e.seq, e.at, e.sid, e.what))
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, 10, [2; 16], Destroyed::Subject),
                (2, 11, [3; 16], Destroyed::Record([4; 16])),
                (3, 12, [5; 16], Destroyed::Subject),
            ]
        );
        assert!(found.damaged.is_none() && !found.torn);
        Ok(())
    }

    #[test]
    fn replicas_appending_to_one_shared_journal_keep_one_chain()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let a = ErasureJournal::open(dir.path(), &[1; 16], key(), true)?;
        let b = ErasureJournal::open(dir.path(), &[1; 16], key(), true)?;
        assert_eq!(a.append(10, &[([1; 16], Destroyed::Subject)])?, 1);
        // B catches up on A's entry before appending after it.
        assert_eq!(b.append(11, &[([2; 16], Destroyed::Record([3; 16]))])?, 2);
        assert_eq!(a.append(12, &[([4; 16], Destroyed::Subject)])?, 3);
        assert_eq!(b.seq()?, 3);
        let read = read(&dir.path().join(JOURNAL_FILE), &[1; 16], &key())?.ok_or("journal")?;
        assert!(read.damaged.is_none() && !read.torn);
        let sids: Vec<Sid> = read.entries.iter().map(|e| e.sid).collect();
        assert_eq!(sids, vec![[1; 16], [2; 16], [4; 16]]);
        // An entry that does not chain (a writer that ignored the lock): the next
        // append finds it and refuses, rather than chain after it.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))?;
        file.write_all(&[0x55; ENTRY_LEN])?;
        for journal in [&a, &b] {
            assert!(matches!(
                journal.append(13, &[([5; 16], Destroyed::Subject)]),
                Err(Error::Backup(BackupProblem::JournalDamaged {
                    entry: 4,
                    ..
                }))
            ));
        }
        Ok(())
    }

    #[test]
    fn a_last_entry_of_zeros_is_cut_as_never_written() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let journal = ErasureJournal::open(dir.path(), &[1; 16], key(), false)?;
        journal.append(1, &[([2; 16], Destroyed::Subject)])?;
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        let mut file = OpenOptions::new().append(true).open(&path)?;
        file.write_all(&[0; ENTRY_LEN])?;
        drop(file);
        let journal = ErasureJournal::open(dir.path(), &[1; 16], key(), false)?;
        assert_eq!(journal.seq()?, 1);
        assert_eq!(journal.append(2, &[([3; 16], Destroyed::Subject)])?, 2);
        assert_eq!(journal.entries()?.len(), 2);
        // Zeros anywhere but at the end are damage.
        let mut bytes = std::fs::read(&path)?;
        bytes[HEADER_LEN..HEADER_LEN + ENTRY_LEN].fill(0);
        std::fs::write(&path, &bytes)?;
        assert!(ErasureJournal::open(dir.path(), &[1; 16], key(), false).is_err());
        Ok(())
    }

    #[test]
    fn altered_removed_or_foreign_entries_are_found() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let journal = ErasureJournal::open(dir.path(), &[1; 16], key(), false)?;
        for i in 0..4u8 {
            journal.append(u64::from(i), &[([i; 16], Destroyed::Subject)])?;
        }
        drop(journal);
        let path = dir.path().join(JOURNAL_FILE);
        let good = std::fs::read(&path)?;

        // One bit of entry 2's storage id.
        let mut altered = good.clone();
        altered[HEADER_LEN + ENTRY_LEN + 40] ^= 1;
        std::fs::write(&path, &altered)?;
        let found = super::read(&path, &[1; 16], &key())?.ok_or("no journal")?;
        assert_eq!(found.entries.len(), 1);
        assert_eq!(found.damaged, Some((2, 3)));
        assert!(matches!(
            ErasureJournal::open(dir.path(), &[1; 16], key(), false),
            Err(Error::Backup(BackupProblem::JournalDamaged {
                entry: 2,
                ..
            }))
        ));

        // Entry 2 cut out of the middle.
        let mut removed = good[..HEADER_LEN + ENTRY_LEN].to_vec();
        removed.extend_from_slice(&good[HEADER_LEN + 2 * ENTRY_LEN..]);
        std::fs::write(&path, &removed)?;
        let found = super::read(&path, &[1; 16], &key())?.ok_or("no journal")?;
        assert_eq!(found.damaged, Some((2, 2)));

        // Another vault's id, or another key.
        std::fs::write(&path, &good)?;
        assert!(matches!(
            super::read(&path, &[7; 16], &key()),
            Err(Error::Backup(BackupProblem::JournalNotOfThisVault { .. }))
        ));
        let other = Key::fill_with(|k| k.copy_from_slice(&[8; 32]));
        assert!(super::read(&path, &[1; 16], &other).is_err());
        Ok(())
    }
}
