//! Backups of a live vault, and the erasure journal that keeps erasures erased
//! across a restore.
//!
//! A backup is the store's checkpoint (a consistent copy as of one instant), the
//! header, and a manifest listing every file with its size and BLAKE3 hash,
//! authenticated under a key of the vault. Table files are shared between backups
//! under `tables/<hash>.sst`: on the data directory's filesystem they are hard links
//! to the live files, so a backup writes only what changed since the last one.
//!
//! ```text
//! backup dir/
//!   erasures.journal        every erasure and expiry, chained (journal.rs)
//!   tables/<hash>.sst       table files, shared by the backups that list them
//!   <id>/MANIFEST           files, sizes, hashes; the journal's length; a MAC
//!   <id>/VAULT              the header (the keyring, sealed under the root key)
//!   <id>/db/…               the store's other files (manifest, options, logs)
//! ```
//!
//! A backup is published by renaming its finished directory into place, so a crash
//! leaves either no backup or a whole one; a later backup removes the leftovers.
//! Taking and listing backups is `backups.rs`; restoring is `restore.rs`.

pub(crate) mod journal;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::crypto::{Key, domain};
use crate::error::{BackupProblem, Error};
use crate::header::{HEADER_FILE, sync_dir};
use crate::keys::Keyring;
use crate::options::BackupOptions;
use crate::owner::Owner;
use crate::store::{Cf, WriteSet};
use crate::subjects::Sid;

pub(crate) use journal::{Destroyed, Entry, ErasureJournal, JOURNAL_FILE, read as read_journal};

pub(crate) const MANIFEST_FILE: &str = "MANIFEST";
pub(crate) const MANIFEST_FORMAT: u8 = 1;
pub(crate) const TABLES: &str = "tables";
pub(crate) const PARTIAL: &str = ".partial-";
pub(crate) const DB: &str = "db";
/// `meta` key: the erasure journal's length after the last erasure written, so that
/// a journal rolled back or replaced is noticed when the vault opens.
pub(crate) const JOURNAL_SEQ: &[u8] = b"backup/journal-seq";

/// One backup. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupInfo {
    /// Its name in the backup directory.
    pub id: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_at: u64,
    /// Its directory (what a restore is given).
    pub path: PathBuf,
    /// Records stored when it was taken, stubs included (the engine's estimate).
    pub records: u64,
    /// The size of its files, shared table files included.
    pub bytes: u64,
}

/// The kept backups, and how long erased subjects live on in them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupList {
    /// Oldest first.
    pub backups: Vec<BackupInfo>,
    /// How many of them may hold data of a subject erased (or a record expired) since
    /// they were taken. A restore replays those erasures, so restored, they hold none.
    pub holding_erased: usize,
    /// How many more backups must be taken before none of them does.
    pub backups_until_clean: usize,
    /// When the last backup holding erased data will be deleted, in milliseconds
    /// since the Unix epoch, if backups are taken [`every`](BackupOptions::every)
    /// interval; `None` when none holds erased data or no interval is configured.
    pub erasures_in_backups_until: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) vault_id: [u8; 16],
    pub(crate) id: String,
    pub(crate) created_at: u64,
    /// Entries of the erasure journal when the copy was made: any later entry may
    /// be of a subject the backup holds.
    pub(crate) journal_seq: u64,
    /// Erasures not yet purged when the copy was made: their bytes are in it.
    pub(crate) unpurged: u64,
    pub(crate) records: u64,
    pub(crate) files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct FileEntry {
    /// The name in the vault directory.
    pub(crate) name: String,
    pub(crate) size: u64,
    pub(crate) hash: [u8; 32],
    /// Stored in `tables/` under its hash rather than in the backup's directory.
    pub(crate) shared: bool,
}

impl Manifest {
    fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub(crate) fn info(&self, dir: &Path) -> BackupInfo {
        BackupInfo {
            id: self.id.clone(),
            created_at: self.created_at,
            path: dir.join(&self.id),
            records: self.records,
            bytes: self.bytes(),
        }
    }

    /// Where a listed file is kept, inside the backup directory `dir`.
    pub(crate) fn stored_at(&self, dir: &Path, file: &FileEntry) -> PathBuf {
        if file.shared {
            dir.join(TABLES).join(table_name(&file.hash))
        } else if file.name == HEADER_FILE {
            dir.join(&self.id).join(HEADER_FILE)
        } else {
            dir.join(&self.id).join(DB).join(&file.name)
        }
    }

    pub(crate) fn seal(&self, key: &Key) -> Vec<u8> {
        let mut bytes = encode(MANIFEST_FORMAT, self);
        let mac = key.mac_parts(&[domain::BACKUP_MANIFEST, &self.vault_id, &bytes]);
        bytes.extend_from_slice(&mac);
        bytes
    }

    /// Reads and authenticates the manifest of the backup in `backup`.
    pub(crate) fn open(backup: &Path, vault_id: &[u8; 16], key: &Key) -> Result<Manifest, Error> {
        let path = backup.join(MANIFEST_FILE);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Backup(BackupProblem::NotABackup {
                    path: backup.to_path_buf(),
                }));
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let damaged = || {
            Error::Backup(BackupProblem::Damaged {
                path: backup.to_path_buf(),
                file: MANIFEST_FILE.to_owned(),
            })
        };
        let split = bytes.len().checked_sub(32).ok_or_else(damaged)?;
        let (body, mac) = bytes.split_at(split);
        let expected = key.mac_parts(&[domain::BACKUP_MANIFEST, vault_id, body]);
        if !bool::from(mac.ct_eq(&expected)) {
            return Err(damaged());
        }
        let manifest: Manifest = decode(MANIFEST_FORMAT, body).map_err(|_| damaged())?;
        if manifest.vault_id != *vault_id {
            return Err(damaged());
        }
        Ok(manifest)
    }
}

pub(crate) fn table_name(hash: &[u8; 32]) -> String {
    let mut name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    name.push_str(".sst");
    name
}

/// BLAKE3 of a file's bytes, and how many there were.
pub(crate) fn hash_file(path: &Path) -> Result<([u8; 32], u64), Error> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok((*hasher.finalize().as_bytes(), len));
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
}

pub(crate) fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

pub(crate) fn remove_dir(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The vault's backup state: the options, the erasure journal, and the locks that
/// order a backup against erasures and other backups.
pub(crate) struct Backups {
    pub(crate) opts: BackupOptions,
    vault_id: [u8; 16],
    pub(crate) key: Key,
    pub(crate) journal: ErasureJournal,
    /// Held shared from an erasure's journal entry until its write is in the
    /// store; a backup takes it exclusively to read where the journal stands.
    erasing: RwLock<()>,
    /// One backup at a time.
    running: Mutex<()>,
    /// The backup directory's lock: two vaults appending to one journal would
    /// overwrite each other's entries. (None for replicas on a shared store: they
    /// append to one journal under its file lock.)
    _lock: Option<Owner>,
}

impl std::fmt::Debug for Backups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backups")
            .field("dir", &self.opts.dir)
            .finish_non_exhaustive()
    }
}

impl Backups {
    /// Opens the backup directory and its journal. `recorded` is the journal length
    /// the store last recorded: a shorter journal lost acknowledged erasures.
    pub(crate) fn open(
        opts: BackupOptions,
        vault_id: [u8; 16],
        ring: &Keyring,
        recorded: u64,
        shared: bool,
    ) -> Result<Backups, Error> {
        std::fs::create_dir_all(&opts.dir).map_err(|e| Error::io(&opts.dir, e))?;
        let lock = if shared {
            None
        } else {
            Some(Owner::acquire(&opts.dir)?)
        };
        let journal = ErasureJournal::open(&opts.dir, &vault_id, ring.backup_key(), shared)?;
        let found = journal.seq()?;
        if found < recorded {
            return Err(Error::Backup(BackupProblem::JournalBehind {
                path: opts.dir.join(journal::JOURNAL_FILE),
                found,
                expected: recorded,
            }));
        }
        Ok(Backups {
            opts,
            vault_id,
            key: ring.backup_key(),
            journal,
            erasing: RwLock::new(()),
            running: Mutex::new(()),
            _lock: lock,
        })
    }

    /// Records destroyed subjects or records in the journal, synced, and adds the
    /// journal's new length to `batch`. The returned guard holds a backup off until
    /// it is dropped, after `batch` is written.
    pub(crate) fn record(
        &self,
        at: u64,
        items: &[(Sid, Destroyed)],
        batch: &mut impl WriteSet,
    ) -> Result<RwLockReadGuard<'_, ()>, Error> {
        let guard = self.erasing.read().unwrap_or_else(PoisonError::into_inner);
        let seq = self.journal.append(at, items)?;
        batch.put(Cf::Meta, JOURNAL_SEQ, &seq.to_be_bytes());
        Ok(guard)
    }

    /// One backup at a time: held for the whole of one.
    pub(crate) fn one_at_a_time(&self) -> MutexGuard<'_, ()> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held while reading where the journal stands: no erasure is then between
    /// its journal entry and its write.
    pub(crate) fn no_erasure_in_flight(&self) -> RwLockWriteGuard<'_, ()> {
        self.erasing.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// For the backup at `index` of `manifests` (oldest first): how many more
    /// backups delete it (`keep` newer ones must exist), and when, if backups are
    /// taken every configured interval. `(0, None)` for no backup.
    pub(crate) fn deleted_after(
        &self,
        manifests: &[Manifest],
        index: Option<usize>,
    ) -> (usize, Option<u64>) {
        let Some(i) = index else {
            return (0, None);
        };
        let newer = manifests.len().saturating_sub(i + 1);
        let more = self.opts.keep.saturating_sub(newer);
        let when = self.opts.every.zip(manifests.last()).map(|(every, last)| {
            let wait = (every.as_millis() as u64).saturating_mul(more as u64);
            last.created_at.saturating_add(wait)
        });
        (more, when)
    }

    pub(crate) fn manifests(&self) -> Result<Vec<Manifest>, Error> {
        let mut out = Vec::new();
        // A manifest that does not authenticate is an error.
        for backup in backup_dirs(&self.opts.dir)? {
            out.push(Manifest::open(&backup, &self.vault_id, &self.key)?);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Deletes the backups past `keep`, then the table files no kept backup lists.
    pub(crate) fn expire(&self) -> Result<(), Error> {
        let manifests = self.manifests()?;
        let excess = manifests.len().saturating_sub(self.opts.keep);
        for old in &manifests[..excess] {
            remove_dir(&self.opts.dir.join(&old.id))?;
        }
        let listed: HashSet<String> = manifests[excess..]
            .iter()
            .flat_map(|m| m.files.iter().filter(|f| f.shared))
            .map(|f| table_name(&f.hash))
            .collect();
        let tables = self.opts.dir.join(TABLES);
        for entry in fs::read_dir(&tables).map_err(|e| Error::io(&tables, e))? {
            let entry = entry.map_err(|e| Error::io(&tables, e))?;
            if !listed.contains(&*entry.file_name().to_string_lossy()) {
                fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            }
        }
        sync_dir(&self.opts.dir)
    }
}

/// The backups' directories in the backup directory `dir`: those with a manifest
/// (not `tables`, a partial backup or `lost+found`, say). Unread.
pub(crate) fn backup_dirs(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let path = entry.path();
        if !name.to_string_lossy().starts_with('.')
            && name != TABLES
            && path.join(MANIFEST_FILE).exists()
        {
            out.push(path);
        }
    }
    Ok(out)
}

pub(crate) fn parse_table_name(name: &str) -> Option<[u8; 32]> {
    let hex = name.strip_suffix(".sst")?;
    // Digits only: `from_str_radix` also takes a sign ("+f").
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_round_trip_and_only_hex_parses() {
        let hash = [0x5c; 32];
        assert_eq!(parse_table_name(&table_name(&hash)), Some(hash));
        assert_eq!(
            parse_table_name(&format!("{}.sst", "0".repeat(64))),
            Some([0; 32])
        );
        assert_eq!(parse_table_name(&format!("{}.sst", "0".repeat(63))), None);
        assert_eq!(parse_table_name(&format!("{}.sst", "g".repeat(64))), None);
        // Found by the `stored` fuzz target: a sign made a second name.
        assert_eq!(parse_table_name(&format!("+5{}.sst", "c".repeat(62))), None);
    }
}
