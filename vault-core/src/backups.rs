//! Taking and listing backups of a live vault (the backup directory, manifests and
//! the erasure journal are `backup/`).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backup::{
    BackupInfo, BackupList, Backups, DB, FileEntry, MANIFEST_FILE, Manifest, PARTIAL, TABLES,
    hash_file, parse_table_name, remove_dir, table_name, write_synced,
};
use crate::error::{BackupProblem, Error};
use crate::header::{HEADER_FILE, sync_dir};
use crate::store::{Cf, Storage};
use crate::vault::{Inner, Vault};

impl Vault {
    /// Takes a backup now, while the vault keeps serving, then deletes the backups
    /// past [`BackupOptions::keep`](crate::BackupOptions::keep). Fails with [`BackupProblem::NotConfigured`]
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
        if self.store.shared() {
            return Err(Error::Unsupported(
                "backups of a vault on PostgreSQL are the cluster's own (pg_basebackup, WAL archiving)",
            ));
        }
        let backups = self.backups()?;
        let _one = backups.one_at_a_time();
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
        let taken = self.fill_backup(backups, &partial, id, created_at);
        if taken.is_err() {
            // A full disk, say: give the space back now, not at the next backup, and
            // drop the table files no manifest lists. The first error is the answer.
            let _ = remove_dir(&partial);
            let _ = backups.expire();
        }
        taken
    }

    /// Fills the backup directory `partial` and publishes it as `id`.
    fn fill_backup(
        &self,
        backups: &Backups,
        partial: &Path,
        id: String,
        created_at: u64,
    ) -> Result<BackupInfo, Error> {
        let dir = &backups.opts.dir;
        let tables = dir.join(TABLES);
        // The read events staged in files outside the store go into the trail first.
        self.journal.flush_staged()?;
        let (journal_seq, unpurged) = {
            let _no_erasure_in_flight = backups.no_erasure_in_flight();
            (backups.journal.seq()?, self.pending()?.len() as u64)
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
        let mut listed = Vec::new();
        for entry in fs::read_dir(&db).map_err(|e| Error::io(&db, e))? {
            let entry = entry.map_err(|e| Error::io(&db, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = entry.metadata().map_err(|e| Error::io(&path, e))?;
            let shared = name.ends_with(".sst");
            let known = known.get(&(meta.dev(), meta.ino())).filter(|_| shared);
            listed.push((path, name, shared, known.map(|hash| (*hash, meta.len()))));
        }
        // Reading and hashing the new files is most of a first backup's work: on
        // every core, largest first.
        listed
            .sort_by_key(|(path, ..)| std::cmp::Reverse(fs::metadata(path).map_or(0, |m| m.len())));
        let hashes = hash_files(
            listed
                .iter()
                .map(|(path, _, _, known)| (path.as_path(), *known)),
        )?;
        for ((path, name, shared, _), (hash, size)) in listed.into_iter().zip(hashes) {
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
        sync_dir(partial)?;
        let done = dir.join(&id);
        fs::rename(partial, &done).map_err(|e| Error::io(&done, e))?;
        sync_dir(dir)?;
        // The backup is taken: a failure to delete older ones is reported where the
        // worker's errors are, and retried by the next backup.
        if let Err(e) = backups.expire() {
            self.set_background_error(Some(e));
        }
        Ok(manifest.info(dir))
    }

    pub(crate) fn backup_list(&self) -> Result<BackupList, Error> {
        let backups = self.backups()?;
        let manifests = backups.manifests()?;
        let seq = backups.journal.seq()?;
        let holding: Vec<usize> = manifests
            .iter()
            .enumerate()
            .filter(|(_, m)| m.journal_seq < seq || m.unpurged > 0)
            .map(|(i, _)| i)
            .collect();
        let (until_clean, until) = backups.deleted_after(&manifests, holding.last().copied());
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

    /// The kept backups that may hold a subject erased at `erased_at` whose purge
    /// finished at `purged_at` (every backup taken before the purge: its copy holds
    /// the bytes), and when the last of them is deleted by `keep` (with a schedule).
    /// Nothing when no backups are configured.
    pub(crate) fn backups_holding(
        &self,
        purged_at: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), Error> {
        let Some(backups) = &self.backups else {
            return Ok((Vec::new(), None));
        };
        let manifests = backups.manifests()?;
        let holding: Vec<usize> = manifests
            .iter()
            .enumerate()
            .filter(|(_, m)| purged_at.is_none_or(|at| m.created_at <= at))
            .map(|(i, _)| i)
            .collect();
        let (_, until) = backups.deleted_after(&manifests, holding.last().copied());
        Ok((
            holding.iter().map(|&i| manifests[i].id.clone()).collect(),
            until,
        ))
    }
}

/// The niceness of the threads that hash a backup's files.
const BACKGROUND_NICE: i32 = 10;

/// A file's BLAKE3 hash and length.
type Hashed = ([u8; 32], u64);

/// The hash and length of each file, in order: `known` ones as given, the others
/// read and hashed by as many threads as there are cores.
fn hash_files<'a>(
    files: impl Iterator<Item = (&'a Path, Option<Hashed>)>,
) -> Result<Vec<Hashed>, Error> {
    let files: Vec<_> = files.collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(files.len().max(1));
    let next = AtomicUsize::new(0);
    let mut out: Vec<Option<Hashed>> = vec![None; files.len()];
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    // Behind the vault's callers for the CPU: a backup may take longer,
                    // writes should not. (Best effort: a failure changes nothing else.)
                    let _ = rustix::process::setpriority_process(
                        Some(rustix::thread::gettid()),
                        BACKGROUND_NICE,
                    );
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(path, known)) = files.get(i) else {
                            return Ok(done);
                        };
                        done.push((i, known.map_or_else(|| hash_file(path), Ok)?));
                    }
                })
            })
            .collect();
        for worker in workers {
            let done: Vec<(usize, Hashed)> = worker
                .join()
                .unwrap_or(Err(Error::InvalidOption("a hashing thread panicked")))?;
            for (i, hashed) in done {
                out[i] = Some(hashed);
            }
        }
        Ok::<(), Error>(())
    })?;
    out.into_iter()
        .map(|h| h.ok_or(Error::InvalidOption("a file was not hashed")))
        .collect()
}
