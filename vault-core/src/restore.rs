//! Restoring a backup, with the erasures made since replayed before the vault is
//! ever served.
//!
//! Everything is checked before anything is written: the backup's header opens with
//! the root key, its manifest authenticates, and the erasure journal beside it
//! authenticates. The files are copied (and hashed again on the way) into a new
//! directory beside the target, `NAME.restoring`. There the vault is opened, every
//! journal entry is replayed and the result purged. Then the restore is marked done
//! (`NAME.restored`, holding the report), the old directory is moved aside
//! (`NAME.replaced`), the new one moved in, and the old one deleted. A restore killed
//! before the mark leaves the old directory as it was (a rerun starts over); one
//! killed after it is finished by a rerun.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backup::{
    Destroyed, Entry, JOURNAL_FILE, JOURNAL_SEQ, Manifest, backup_dirs, read_journal, remove_dir,
};
use crate::codec::{decode, encode};
use crate::error::{BackupProblem, Error};
use crate::header::{Header, sync_dir};
use crate::keys::{RootKey, RootSecret};
use crate::options::VaultOptions;
use crate::owner::Owner;
use crate::store::{Cf, Storage, WriteSet};
use crate::vault::{Inner, Vault, restore_marker};

pub(crate) const REPORT_FORMAT: u8 = 1;

/// How a [`restore`] treats the target and the erasure journal.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    replace: bool,
    skip_erasure_journal: bool,
}

impl RestoreOptions {
    /// Refuses a target directory that holds anything, and a missing or damaged
    /// erasure journal.
    pub fn new() -> RestoreOptions {
        RestoreOptions::default()
    }

    /// Replace what the target directory holds (it must not be open).
    pub fn replace(mut self, yes: bool) -> RestoreOptions {
        self.replace = yes;
        self
    }

    /// Restore even when the erasure journal is missing or fails authentication,
    /// replaying only the entries that authenticate. Subjects erased since the
    /// backup may come back: the report says how many entries were skipped.
    pub fn danger_skip_erasure_journal(mut self, yes: bool) -> RestoreOptions {
        self.skip_erasure_journal = yes;
        self
    }
}

/// What a [`restore`] did. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RestoreReport {
    /// The backup's id.
    pub backup: String,
    /// When the backup was taken, in milliseconds since the Unix epoch.
    pub backup_created_at: u64,
    /// Journal entries that destroyed something the backup still held.
    pub erasures_replayed: u64,
    /// Journal entries read and authenticated (replayed or already reflected).
    pub journal_entries: u64,
    /// Journal entries that could not be replayed: missing or failing
    /// authentication (only with [`RestoreOptions::danger_skip_erasure_journal`]).
    pub journal_entries_skipped: u64,
    /// Whether the journal was missing or damaged (only with the danger option).
    pub journal_unverified: bool,
    /// The restored vault's directory.
    pub data_dir: PathBuf,
}

/// Where a restore into `to` keeps its work.
struct Places {
    to: PathBuf,
    staging: PathBuf,
    done: PathBuf,
    old: PathBuf,
}

impl Places {
    fn new(to: &Path) -> Result<Places, Error> {
        let name = to
            .file_name()
            .ok_or(Error::InvalidOption(
                "the restore's target must name a directory",
            ))?
            .to_string_lossy()
            .into_owned();
        let beside = |suffix: &str| to.with_file_name(format!("{name}.{suffix}"));
        Ok(Places {
            to: to.to_path_buf(),
            staging: beside("restoring"),
            done: restore_marker(to).unwrap_or_else(|| beside("restored")),
            old: beside("replaced"),
        })
    }

    /// The locks of the target and of the restored copy, where they exist.
    fn lock(&self) -> Result<Vec<Owner>, Error> {
        [&self.to, &self.staging]
            .into_iter()
            .filter(|dir| dir.exists())
            .map(|dir| Owner::acquire(dir))
            .collect()
    }

    fn parent(&self) -> PathBuf {
        match self.to.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct Done {
    report: RestoreReport,
    /// The backup directory, relative to the target, when it lives inside it:
    /// moved into the restored directory rather than deleted with the old one.
    backups_inside: Option<PathBuf>,
}

/// Restores the backup in `from` (a backup's directory, beside the erasure journal)
/// into `to`, replays the erasure journal, and returns what it did. The vault in
/// `to` must not be open. `options` are the options the vault will be opened with
/// (its purposes, retention and durability); `root` is the backup's root key.
pub fn restore(
    from: &Path,
    to: &Path,
    root: &RootKey,
    options: VaultOptions,
    restore: RestoreOptions,
) -> Result<RestoreReport, Error> {
    let places = Places::new(to)?;
    if places.done.exists() {
        // Neither directory is open while the swap is finished.
        let _locks = places.lock()?;
        return finish(&places);
    }
    remove_dir(&places.staging)?;
    let occupied = match fs::read_dir(to) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(to, e)),
    };
    if occupied && !restore.replace {
        return Err(Error::Backup(BackupProblem::TargetNotEmpty {
            path: to.into(),
        }));
    }
    // The target is not open, and no vault opens it until this returns.
    let _owner = if to.exists() {
        Some(Owner::acquire(to)?)
    } else {
        None
    };

    let not_a_backup = || {
        Error::Backup(BackupProblem::NotABackup {
            path: from.to_path_buf(),
        })
    };
    let backup_dir = from
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(not_a_backup)?
        .to_path_buf();
    let header = Header::read(from).map_err(|e| match e {
        Error::NotAVault { .. } => not_a_backup(),
        e => e,
    })?;
    let foreign = || {
        Error::Backup(BackupProblem::NotOfThisVault {
            path: from.to_path_buf(),
        })
    };
    let secret = RootSecret::derive(root, &header.kdf)?;
    secret
        .check(&header.vault_id, &header.commitment)
        .map_err(|_| foreign())?;
    let ring = secret
        .open_keyring(&header.vault_id, &header.keyring)
        .map_err(|_| foreign())?;
    let key = ring.backup_key();
    let manifest = Manifest::open(from, &header.vault_id, &key)?;
    // Over a vault, only a backup of that vault.
    if occupied && Header::read(to).is_ok_and(|target| target.vault_id != header.vault_id) {
        return Err(foreign());
    }

    let journal_path = backup_dir.join(JOURNAL_FILE);
    let mut skipped = 0;
    let mut unverified = false;
    let entries = match read_journal(&journal_path, &header.vault_id, &key) {
        Ok(Some(read)) => match read.damaged {
            None => read.entries,
            Some((entry, _)) if !restore.skip_erasure_journal => {
                return Err(Error::Backup(BackupProblem::JournalDamaged {
                    path: journal_path,
                    entry,
                }));
            }
            Some((_, after)) => {
                skipped = after;
                unverified = true;
                read.entries
            }
        },
        Ok(None) if !restore.skip_erasure_journal => {
            return Err(Error::Backup(BackupProblem::JournalMissing {
                path: journal_path,
            }));
        }
        Err(e) if !restore.skip_erasure_journal => return Err(e),
        Ok(None) | Err(_) => {
            unverified = true;
            Vec::new()
        }
    };

    // The journal must reach as far as every kept backup saw it: a shorter one was
    // cut or rolled back, and lost erasures a restore must replay.
    let required = backup_manifests(&backup_dir, &header.vault_id, &key)
        .into_iter()
        .map(|m| m.journal_seq)
        .chain([manifest.journal_seq])
        .max()
        .unwrap_or(0);
    let found = entries.len() as u64;
    if found < required && !unverified {
        if !restore.skip_erasure_journal {
            return Err(Error::Backup(BackupProblem::JournalBehind {
                path: journal_path,
                found,
                expected: required,
            }));
        }
        skipped = required - found;
        unverified = true;
    }

    // Copy, checking every byte against the manifest on the way.
    fs::create_dir(&places.staging).map_err(|e| Error::io(&places.staging, e))?;
    for file in &manifest.files {
        let source = manifest.stored_at(&backup_dir, file);
        let target = places.staging.join(&file.name);
        let damaged = || {
            Error::Backup(BackupProblem::Damaged {
                path: from.to_path_buf(),
                file: file.name.clone(),
            })
        };
        let (hash, size) = copy_hashed(&source, &target).map_err(|e| match e {
            Error::Io { path, .. } if path == source => damaged(),
            e => e,
        })?;
        if hash != file.hash || size != file.size {
            return Err(damaged());
        }
    }
    sync_dir(&places.staging)?;

    // Replay, in the restored copy, before anything can serve it.
    let mut replayed = 0;
    {
        let vault = Vault::open(&places.staging, root, options.restoring())?;
        let inner = &vault.inner;
        for entry in &entries {
            if inner.replay_entry(entry)? {
                replayed += 1;
            }
        }
        if !inner.purge_pending()?.verified || !inner.purge_expired()?.verified {
            return Err(Error::PurgeUnverified);
        }
        // How far the journal is replayed: a later open replays what follows.
        let mut batch = inner.store.batch();
        batch.put(Cf::Meta, JOURNAL_SEQ, &found.to_be_bytes());
        inner.store.write_synced(batch)?;
        vault.close()?;
    }
    // No vault opens the restored copy before it is swapped in.
    let _restored = Owner::acquire(&places.staging)?;

    let report = RestoreReport {
        backup: manifest.id.clone(),
        backup_created_at: manifest.created_at,
        erasures_replayed: replayed,
        journal_entries: entries.len() as u64,
        journal_entries_skipped: skipped,
        journal_unverified: unverified,
        data_dir: to.to_path_buf(),
    };
    let backups_inside = inside(&backup_dir, to);
    let done = Done {
        report,
        backups_inside,
    };
    let tmp = places.done.with_extension("tmp");
    let mut file = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(&encode(REPORT_FORMAT, &done))
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &places.done).map_err(|e| Error::io(&places.done, e))?;
    sync_dir(&places.parent())?;
    finish(&places)
}

/// The manifests of the backups in `dir` that authenticate (others are ignored
/// here: the backup being restored was checked on its own).
fn backup_manifests(dir: &Path, vault_id: &[u8; 16], key: &crate::crypto::Key) -> Vec<Manifest> {
    backup_dirs(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|backup| Manifest::open(backup, vault_id, key).ok())
        .collect()
}

impl Inner {
    /// Destroys again what one journal entry destroyed, if the store still holds
    /// it; whether it did. (An issued alias is kept from being issued again, which
    /// destroys nothing.)
    pub(crate) fn replay_entry(&self, entry: &Entry) -> Result<bool, Error> {
        match entry.what {
            Destroyed::Subject => self.replay_erasure(&entry.sid),
            Destroyed::Record(id) => self.replay_expiry(&entry.sid, &id),
            Destroyed::Alias(hash) => self.replay_alias(&hash).map(|_| false),
        }
    }

    /// At open, with backups attached: replays the journal's entries after
    /// `recorded` (how far this store says it is replayed), then records the
    /// journal's length. An old copy of the directory, or a store that lost
    /// erasures in a crash after their journal entry, catches up before anything
    /// is served. Returns how many entries destroyed something.
    pub(crate) fn catch_up_erasures(&self, recorded: Option<u64>) -> Result<u64, Error> {
        let Some(backups) = &self.backups else {
            return Ok(0);
        };
        let seq = backups.journal.seq()?;
        if recorded == Some(seq) {
            return Ok(0);
        }
        let after = recorded.unwrap_or(0);
        let mut replayed = 0;
        for entry in backups.journal.entries()?.iter().filter(|e| e.seq > after) {
            // On a shared store another replica may be replaying it too.
            if self.retrying(|| self.replay_entry(entry))? {
                replayed += 1;
            }
        }
        let mut batch = self.store.batch();
        batch.put(Cf::Meta, JOURNAL_SEQ, &seq.to_be_bytes());
        self.store.write_synced(batch)?;
        Ok(replayed)
    }
}

/// Moves the restored directory into place; every step can be rerun after a crash.
fn finish(places: &Places) -> Result<RestoreReport, Error> {
    let bytes = fs::read(&places.done).map_err(|e| Error::io(&places.done, e))?;
    let done: Done = decode(REPORT_FORMAT, &bytes)?;
    if places.staging.exists() {
        if places.to.exists() {
            if let Some(inside) = &done.backups_inside {
                let (from, to) = (places.to.join(inside), places.staging.join(inside));
                if from.exists() {
                    if let Some(parent) = to.parent() {
                        fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
                    }
                    fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
                    for dir in [from.parent(), to.parent()].into_iter().flatten() {
                        sync_dir(dir)?;
                    }
                }
            }
            remove_dir(&places.old)?;
            fs::rename(&places.to, &places.old).map_err(|e| Error::io(&places.old, e))?;
        }
        fs::rename(&places.staging, &places.to).map_err(|e| Error::io(&places.to, e))?;
        sync_dir(&places.parent())?;
    }
    remove_dir(&places.old)?;
    match fs::remove_file(&places.done) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(&places.done, e));
        }
        _ => {}
    }
    sync_dir(&places.parent())?;
    Ok(done.report)
}

/// `inner` relative to `outer`, if it is inside it.
fn inside(inner: &Path, outer: &Path) -> Option<PathBuf> {
    let inner = inner.canonicalize().ok()?;
    let outer = outer.canonicalize().ok()?;
    inner
        .strip_prefix(&outer)
        .ok()
        .filter(|rel| !rel.as_os_str().is_empty())
        .map(Path::to_path_buf)
}

/// Copies `source` to a new file `target`, synced; returns the BLAKE3 hash and
/// length of what was copied.
fn copy_hashed(source: &Path, target: &Path) -> Result<([u8; 32], u64), Error> {
    let mut input = fs::File::open(source).map_err(|e| Error::io(source, e))?;
    let mut output = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(|e| Error::io(target, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(|e| Error::io(source, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output
            .write_all(&buf[..n])
            .map_err(|e| Error::io(target, e))?;
        len += n as u64;
    }
    output.sync_all().map_err(|e| Error::io(target, e))?;
    Ok((*hasher.finalize().as_bytes(), len))
}
