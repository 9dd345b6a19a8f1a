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

mod journal;
mod restore;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::crypto::{Key, domain};
use crate::error::{BackupProblem, Error};
use crate::header::{HEADER_FILE, sync_dir};
use crate::keys::Keyring;
use crate::store::{Cf, Storage, WriteSet};
use crate::subjects::Sid;
use crate::vault::{Inner, Vault};

pub(crate) use journal::{Destroyed, ErasureJournal};
pub use restore::{RestoreOptions, RestoreReport, restore};

const MANIFEST_FILE: &str = "MANIFEST";
const MANIFEST_FORMAT: u8 = 1;
const TABLES: &str = "tables";
const PARTIAL: &str = ".partial-";
const DB: &str = "db";
/// `meta` key: the erasure journal's length after the last erasure written, so that
/// a journal rolled back or replaced is noticed when the vault opens.
pub(crate) const JOURNAL_SEQ: &[u8] = b"backup/journal-seq";
/// Backups kept when the options do not say.
pub const DEFAULT_BACKUPS_KEPT: usize = 7;

/// Where a vault's backups go and how many are kept
/// ([`VaultOptions::backups`](crate::VaultOptions::backups)).
///
/// With backups configured, every erasure and every expired record is first
/// recorded in the erasure journal in this directory (synced), which a
/// [`restore`] replays.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub(crate) dir: PathBuf,
    pub(crate) keep: usize,
    pub(crate) every: Option<Duration>,
}

impl BackupOptions {
    /// Backups in `dir` (created if missing), keeping [`DEFAULT_BACKUPS_KEPT`].
    pub fn new(dir: impl Into<PathBuf>) -> BackupOptions {
        BackupOptions {
            dir: dir.into(),
            keep: DEFAULT_BACKUPS_KEPT,
            every: None,
        }
    }

    /// Keep the `n` newest backups (at least 1); a new backup deletes the older ones.
    pub fn keep(mut self, n: usize) -> BackupOptions {
        self.keep = n.max(1);
        self
    }

    /// How often backups are taken (by whatever schedules them), so that the time a
    /// backup is deleted can be told ([`BackupList::erasures_in_backups_until`]).
    pub fn every(mut self, interval: Duration) -> BackupOptions {
        self.every = Some(interval);
        self
    }
}

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
struct Manifest {
    vault_id: [u8; 16],
    id: String,
    created_at: u64,
    /// Entries of the erasure journal when the copy was made: any later entry may
    /// be of a subject the backup holds.
    journal_seq: u64,
    /// Erasures not yet purged when the copy was made: their bytes are in it.
    unpurged: u64,
    records: u64,
    files: Vec<FileEntry>,
}

#[derive(Serialize, Deserialize)]
struct FileEntry {
    /// The name in the vault directory.
    name: String,
    size: u64,
    hash: [u8; 32],
    /// Stored in `tables/` under its hash rather than in the backup's directory.
    shared: bool,
}

impl Manifest {
    fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    fn info(&self, dir: &Path) -> BackupInfo {
        BackupInfo {
            id: self.id.clone(),
            created_at: self.created_at,
            path: dir.join(&self.id),
            records: self.records,
            bytes: self.bytes(),
        }
    }

    /// Where a listed file is kept, inside the backup directory `dir`.
    fn stored_at(&self, dir: &Path, file: &FileEntry) -> PathBuf {
        if file.shared {
            dir.join(TABLES).join(table_name(&file.hash))
        } else if file.name == HEADER_FILE {
            dir.join(&self.id).join(HEADER_FILE)
        } else {
            dir.join(&self.id).join(DB).join(&file.name)
        }
    }

    fn seal(&self, key: &Key) -> Vec<u8> {
        let mut bytes = encode(MANIFEST_FORMAT, self);
        let mac = key.mac_parts(&[domain::BACKUP_MANIFEST, &self.vault_id, &bytes]);
        bytes.extend_from_slice(&mac);
        bytes
    }

    /// Reads and authenticates the manifest of the backup in `backup`.
    fn open(backup: &Path, vault_id: &[u8; 16], key: &Key) -> Result<Manifest, Error> {
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

fn table_name(hash: &[u8; 32]) -> String {
    let mut name: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    name.push_str(".sst");
    name
}

/// BLAKE3 of a file's bytes, and how many there were.
fn hash_file(path: &Path) -> Result<([u8; 32], u64), Error> {
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

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(path, e))
}

fn remove_dir(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The vault's backup state: the options, the erasure journal, and the locks that
/// order a backup against erasures and other backups.
pub(crate) struct Backups {
    opts: BackupOptions,
    vault_id: [u8; 16],
    key: Key,
    pub(crate) journal: ErasureJournal,
    /// Held shared from an erasure's journal entry until its write is in the
    /// store; a backup takes it exclusively to read where the journal stands.
    erasing: RwLock<()>,
    /// One backup at a time.
    running: Mutex<()>,
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
    ) -> Result<Backups, Error> {
        let journal = ErasureJournal::open(&opts.dir, &vault_id, ring.backup_key())?;
        if journal.seq() < recorded {
            return Err(Error::Backup(BackupProblem::JournalBehind {
                path: opts.dir.join(journal::JOURNAL_FILE),
                found: journal.seq(),
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

    fn manifests(&self) -> Result<Vec<Manifest>, Error> {
        let dir = &self.opts.dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == TABLES || !entry.path().is_dir() {
                continue;
            }
            out.push(Manifest::open(&entry.path(), &self.vault_id, &self.key)?);
        }
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Deletes the backups past `keep`, then the table files no kept backup lists.
    fn expire(&self) -> Result<(), Error> {
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

impl Vault {
    /// Takes a backup now, while the vault keeps serving, then deletes the backups
    /// past [`BackupOptions::keep`]. Fails with [`BackupProblem::NotConfigured`]
    /// when the vault was opened without [`VaultOptions::backups`](crate::VaultOptions::backups).
    pub fn backup(&self) -> Result<BackupInfo, Error> {
        self.inner.backup()
    }

    /// The kept backups, oldest first, and how long erased subjects live on in them.
    pub fn backups(&self) -> Result<BackupList, Error> {
        self.inner.backup_list()
    }
}

impl Inner {
    fn backups(&self) -> Result<&Backups, Error> {
        self.backups
            .as_ref()
            .ok_or(Error::Backup(BackupProblem::NotConfigured))
    }

    pub(crate) fn backup(&self) -> Result<BackupInfo, Error> {
        let backups = self.backups()?;
        let _one = backups
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let dir = &backups.opts.dir;
        let tables = dir.join(TABLES);
        fs::create_dir_all(&tables).map_err(|e| Error::io(&tables, e))?;
        // What a backup that stopped half-way left.
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            if entry.file_name().to_string_lossy().starts_with(PARTIAL) {
                remove_dir(&entry.path())?;
            }
        }
        let created_at = self.now();
        let mut suffix = [0u8; 4];
        getrandom::fill(&mut suffix).map_err(|_| Error::Random)?;
        let id = format!("{created_at:013}-{:08x}", u32::from_be_bytes(suffix));
        let partial = dir.join(format!("{PARTIAL}{id}"));
        fs::create_dir(&partial).map_err(|e| Error::io(&partial, e))?;

        // The read events staged in files outside the store go into the trail first.
        self.journal.flush_staged()?;
        let (journal_seq, unpurged) = {
            let _no_erasure_in_flight = backups
                .erasing
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            (backups.journal.seq(), self.pending()?.len() as u64)
        };
        let records = self.store.estimate_keys(Cf::Records);
        let header = {
            // No rotation step and no header change between the header and the copy.
            let _keys = self
                .keys
                .writes()
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            let header = self.dir.join(HEADER_FILE);
            let bytes = fs::read(&header).map_err(|e| Error::io(&header, e))?;
            self.store.checkpoint(&partial.join(DB))?;
            bytes
        };
        write_synced(&partial.join(HEADER_FILE), &header)?;

        let mut files = vec![FileEntry {
            name: HEADER_FILE.to_owned(),
            size: header.len() as u64,
            hash: *blake3::hash(&header).as_bytes(),
            shared: false,
        }];
        // Table files already kept, by inode: a hard link to one of them has its
        // hash without being read again.
        let mut known: HashMap<(u64, u64), [u8; 32]> = HashMap::new();
        for entry in fs::read_dir(&tables).map_err(|e| Error::io(&tables, e))? {
            let entry = entry.map_err(|e| Error::io(&tables, e))?;
            let meta = entry.metadata().map_err(|e| Error::io(entry.path(), e))?;
            if let Some(hash) = parse_table_name(&entry.file_name().to_string_lossy()) {
                known.insert((meta.dev(), meta.ino()), hash);
            }
        }
        let db = partial.join(DB);
        for entry in fs::read_dir(&db).map_err(|e| Error::io(&db, e))? {
            let entry = entry.map_err(|e| Error::io(&db, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().map_err(|e| Error::io(&path, e))?;
            let shared = name.ends_with(".sst");
            let (hash, size) = match known.get(&(meta.dev(), meta.ino())) {
                Some(hash) if shared => (*hash, meta.len()),
                _ => hash_file(&path)?,
            };
            if shared {
                let kept = tables.join(table_name(&hash));
                if kept.exists() {
                    fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                } else {
                    fs::rename(&path, &kept).map_err(|e| Error::io(&kept, e))?;
                }
            }
            files.push(FileEntry {
                name,
                size,
                hash,
                shared,
            });
        }
        let manifest = Manifest {
            vault_id: self.vault_id,
            id: id.clone(),
            created_at,
            journal_seq,
            unpurged,
            records,
            files,
        };
        write_synced(&partial.join(MANIFEST_FILE), &manifest.seal(&backups.key))?;
        sync_dir(&tables)?;
        sync_dir(&db)?;
        sync_dir(&partial)?;
        let done = dir.join(&id);
        fs::rename(&partial, &done).map_err(|e| Error::io(&done, e))?;
        sync_dir(dir)?;
        backups.expire()?;
        Ok(manifest.info(dir))
    }

    pub(crate) fn backup_list(&self) -> Result<BackupList, Error> {
        let backups = self.backups()?;
        let manifests = backups.manifests()?;
        let seq = backups.journal.seq();
        let holding: Vec<usize> = manifests
            .iter()
            .enumerate()
            .filter(|(_, m)| m.journal_seq < seq || m.unpurged > 0)
            .map(|(i, _)| i)
            .collect();
        // The newest backup holding erased data goes when `keep` newer ones exist.
        let (until_clean, until) = match holding.last() {
            None => (0, None),
            Some(&i) => {
                let newer = manifests.len() - 1 - i;
                let more = backups.opts.keep.saturating_sub(newer);
                let until = backups
                    .opts
                    .every
                    .zip(manifests.last())
                    .map(|(every, last)| {
                        last.created_at
                            .saturating_add((every.as_millis() as u64).saturating_mul(more as u64))
                    });
                (more, until)
            }
        };
        Ok(BackupList {
            backups: manifests
                .iter()
                .map(|m| m.info(&backups.opts.dir))
                .collect(),
            holding_erased: holding.len(),
            backups_until_clean: until_clean,
            erasures_in_backups_until: until,
        })
    }
}

fn parse_table_name(name: &str) -> Option<[u8; 32]> {
    let hex = name.strip_suffix(".sst")?;
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}
