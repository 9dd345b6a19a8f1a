//! The vault: opening (the directory's lock, the header, the store), creating and
//! closing, and the state every operation shares (`Inner`). Each operation is an
//! `impl Vault` block in a module of its own: `tokenize`, `read`, `update`,
//! `access`, `consent`, `export`, `erase`, `retention`, `rotate`, `audit`.
//!
//! The components below the operations know nothing of `Inner`: the write path is
//! the `Journal` it holds (sharing the store), and the background worker runs
//! `Inner` through the worker's `Chores`, implemented here. So no module that
//! `vault` imports imports it back.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};

use crate::alias;
use crate::backup::{Backups, JOURNAL_SEQ};
use crate::codec::{decode, encode};
use crate::crypto::{Key, random_bytes};
use crate::durable::Syncer;
use crate::error::{BackupProblem, Error};
use crate::events::ReadEvent;
#[cfg(feature = "postgres")]
use crate::header::HEADER_KEY;
use crate::header::{FORMAT_VERSION, Header, sync_dir};
use crate::inventory::Tally;
use crate::journal::Journal;
use crate::key_state::{HeaderState, KeyState, Sealed};
use crate::keys::{DekSlot, IndexKeys, KdfRecord, Keyring, RootKey, RootSecret};
use crate::options::VaultOptions;
use crate::owner::Owner;
use crate::purposes::Purpose;
use crate::records::{LiveRecord, RECORD_FORMAT, StoredRecord, expired_outcome, stub_outcome};
use crate::retire::Retirement;
use crate::store::{Batch, Cf, RocksStore, Storage, Store, StoreOptions, WriteSet};
use crate::subjects::{
    Dek, KEY_FORMAT, KeyEntry, SUBJECT_FORMAT, Sid, Stripes, SubjectCache, SubjectEntry,
    SubjectHash, dek_counter,
};
use crate::token::{Token, TokenId};
use crate::worker::{Chores, Worker};

/// Shared state of an open vault; the background worker holds it too (as its
/// [`Chores`]).
pub(crate) struct Inner {
    /// The write path: audited writes, staged read events, awaited syncs.
    pub journal: Journal,
    pub dir: PathBuf,
    pub vault_id: [u8; 16],
    /// Shared with the journal.
    pub store: Arc<Store>,
    pub opts: VaultOptions,
    pub index: IndexKeys,
    /// The keyring, the header that seals it, and the cache of subjects' keys.
    pub keys: KeyState,
    /// Recently written subjects' entries and keys; see [`SubjectCache`].
    pub subjects: SubjectCache,
    pub stripes: Stripes,
    /// One purge at a time, and the subjects it retires.
    pub retirement: Retirement,
    /// The backup directory and its erasure journal, if backups are configured.
    pub backups: Option<Backups>,
    /// What the background worker's last run failed with, if it did.
    background_error: Mutex<Option<String>>,
    /// Whether some record's token was issued in a form its id does not give (a
    /// format, or production's in a staging vault): exports then look it up.
    pub issued_aliases: AtomicBool,
    /// Whether aliases name another vault's opaque tokens (a staging vault's).
    pub foreign_aliases: AtomicBool,
    /// The directory's lock (none on a shared store). Last, so that it is released
    /// only after the store and the staging files (the journal's) are closed.
    _owner: Option<Owner>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// How many times a write that conflicted with another replica's is run.
const CONFLICT_TRIES: u32 = 12;

/// The mark a restore into `dir` leaves beside it between its copy being ready and
/// being swapped in (see `restore.rs`).
pub(crate) fn restore_marker(dir: &Path) -> Option<PathBuf> {
    let name = dir.file_name()?.to_string_lossy().into_owned();
    Some(dir.with_file_name(format!("{name}.restored")))
}

/// An open vault. `Send + Sync`: share it through an `Arc`. Closing (drop or
/// [`Vault::close`]) stops the background worker, closes the storage and lets the
/// directory be opened again.
///
/// A vault directory has one owner at a time ([`Vault::open`]). Every call that
/// touches personal data is recorded in the audit trail, under
/// [`VaultOptions::actor`] or the name given to [`Vault::as_actor`].
///
/// ```
/// use vault_core::{Error, RootKey, Vault, VaultOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path().join("vault");
/// let vault = Vault::open(&dir, &RootKey::generate()?, VaultOptions::default())?;
/// let token = vault.tokenize("customer-42", "email", "alice@example.com")?;
/// // Services keep `token.to_string()`, a fixed-length text that names nobody.
/// let record = vault.detokenize(&token.to_string())?;
/// assert_eq!(record.value.as_str(), Some("alice@example.com"));
///
/// let receipt = vault.erase("customer-42")?;
/// assert_eq!(receipt.records, 1);
/// assert!(matches!(vault.detokenize(&token.to_string()), Err(Error::Erased)));
/// # vault.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Vault {
    pub(crate) inner: Arc<Inner>,
    worker: Option<Worker>,
    /// Syncs the WAL for awaited writes ([`Unsynced`]); none with relaxed durability.
    syncer: Option<Syncer>,
}

impl Vault {
    /// Opens the vault in `dir`, creating it when the directory is missing or empty
    /// (unless [`VaultOptions::create_if_missing`] is off).
    ///
    /// **One owner per vault directory.** The open vault holds an exclusive lock on
    /// the directory until it is closed or dropped: a second open of the same
    /// directory, in this process or another and however its path is spelled (a
    /// symlink, `dir/.`, a relative path), is refused with [`Error::AlreadyOpen`].
    /// Share one `Vault` through an [`Arc`] instead; a process that
    /// dies releases the lock with it. (A held lock is waited for 200 ms before the
    /// open is refused: a process spawned by this one holds a copy of it until it
    /// execs. A child forked without an exec holds it for its life. On NFS, Linux
    /// emulates the lock per process: keep a vault on a local disk.)
    ///
    /// The options are not stored: declared [purposes](VaultOptions::purpose),
    /// masks and retention periods must be given at every open (a vault reopened
    /// without its purposes answers [`Error::UnknownPurpose`] to every
    /// [`detokenize_for`](Self::detokenize_for)).
    ///
    /// A directory that holds something else, a vault of a newer format, or a wrong
    /// root key is refused before the storage engine opens: nothing is decrypted and
    /// nothing on disk changes. A new vault refuses a passphrase shorter than
    /// [`RootKey::MIN_PASSPHRASE_CHARS`].
    ///
    /// ```
    /// use vault_core::{Error, RootKey, Vault, VaultOptions};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let tmp = tempfile::tempdir()?;
    /// # let dir = tmp.path();
    /// let root = RootKey::generate()?; // in production: from ops, the same at every open
    /// let vault = Vault::open(dir, &root, VaultOptions::default())?;
    ///
    /// // The same directory through another spelling is still the same vault.
    /// let again = Vault::open(dir.join("."), &root, VaultOptions::default());
    /// assert!(matches!(again, Err(Error::AlreadyOpen { .. })));
    ///
    /// vault.close()?; // or drop it: then it can be opened again
    /// let vault = Vault::open(dir, &root, VaultOptions::default())?;
    /// # drop(vault);
    /// # Ok(()) }
    /// ```
    pub fn open(dir: impl AsRef<Path>, root: &RootKey, opts: VaultOptions) -> Result<Vault, Error> {
        opts.validate()?;
        let dir = dir.as_ref();
        // The lock is on the directory, so a missing one is created first, once the
        // options allow it and the root key is fit for a new vault.
        if !dir.exists() {
            if !opts.create_if_missing {
                return Err(Error::NoVault { path: dir.into() });
            }
            KdfRecord::check_new(root, &opts.kdf)?;
            create_private_dir(dir)?;
        }
        // Before anything in the directory is read: a second open would see a
        // creation or a header replacement half-done.
        let owner = Owner::acquire(dir)?;
        if let Some(marker) = restore_marker(dir).filter(|m| m.exists()) {
            return Err(Error::Backup(BackupProblem::RestoreUnfinished {
                path: marker,
            }));
        }
        let (header, secret, ring) = if is_empty(dir)? {
            if !opts.create_if_missing {
                return Err(Error::NoVault { path: dir.into() });
            }
            create_header(dir, root, &opts)?
        } else {
            open_header(&Header::read(dir)?, root)?
        };
        // A header without a database is a creation that stopped half-way: finish it.
        let create = !dir.join("CURRENT").exists();
        let (retirement, retire_rule) = Retirement::new(ring.index_keys(header.layout()));
        let store = Store::Rocks(RocksStore::open(
            dir,
            create,
            StoreOptions {
                durability: opts.durability,
                compression: opts.compression,
                statistics: opts.statistics,
                block_cache_bytes: opts.block_cache_bytes,
            },
            retire_rule,
        )?);
        let opened = Opened {
            header,
            secret,
            ring,
            retirement,
        };
        Vault::assemble(store, Some(dir), opened, Some(owner), opts)
    }

    /// Opens the vault in PostgreSQL that `config` names (feature `postgres`),
    /// creating its schema and the vault when there is none (unless
    /// [`VaultOptions::create_if_missing`] is off). Any number of processes may have
    /// the same vault open, on one machine or many: replicas of one vault.
    ///
    /// The vault is the same as in a directory: the same keys, sealed bytes and
    /// audit trail, in one table per kind of thing. What differs:
    /// - Every write is a transaction; a synced one commits with
    ///   `synchronous_commit = on`. A replica's write that raced another's change of
    ///   the same subject (or of the keyring, or the audit trail's end) is run again
    ///   on fresh reads, a few times, before [`Error::Conflict`].
    /// - Nothing read from the database is cached between calls: an erasure through
    ///   one replica is seen by every other at its next read.
    /// - Read events are committed to the trail with the read (group-committed,
    ///   without a synchronous flush unless
    ///   [`VaultOptions::sync_read_events`](crate::VaultOptions::sync_read_events)).
    /// - The purge applies the erasure to the rows and runs `VACUUM`; copies of the
    ///   database (WAL, archives, standbys, base backups) are the cluster's, and an
    ///   erased subject's sealed bytes in them are unreadable once its key is gone
    ///   (see the README). [`Vault::backup`] is not supported here; with
    ///   [`VaultOptions::backups`] the directory keeps the erasure journal alone,
    ///   shared by the replicas (on a filesystem they all reach), and a vault opened
    ///   on a database restored to an earlier time replays the erasures made since
    ///   before it serves anything.
    /// - A root-key change is made with every replica stopped.
    #[cfg(feature = "postgres")]
    pub fn open_postgres(
        config: &crate::store::PostgresConfig,
        root: &RootKey,
        opts: VaultOptions,
    ) -> Result<Vault, Error> {
        Vault::open_postgres_as(config, root, opts, false)
    }

    /// [`open_postgres`](Self::open_postgres); `migrating`: also a schema a
    /// migration is still filling (the migration's own check), which is otherwise
    /// refused.
    #[cfg(feature = "postgres")]
    pub(crate) fn open_postgres_as(
        config: &crate::store::PostgresConfig,
        root: &RootKey,
        opts: VaultOptions,
        migrating: bool,
    ) -> Result<Vault, Error> {
        use crate::store::PgStore;
        opts.validate()?;
        let named = || PathBuf::from(format!("postgres:{}", config.schema_name()));
        if !opts.create_if_missing {
            // Checked before the schema could be created.
            let (probe, existed) = PgStore::open(config, opts.durability, false)?;
            if !existed || probe.get(Cf::Meta, HEADER_KEY)?.is_none() {
                return Err(Error::NoVault { path: named() });
            }
        }
        let (store, _) = PgStore::open(config, opts.durability, opts.create_if_missing)?;
        if !migrating && store.get(Cf::Meta, crate::migrate::MIGRATING)?.is_some() {
            return Err(Error::MigrationUnfinished);
        }
        let (header, secret, ring) = match store.get(Cf::Meta, HEADER_KEY)? {
            Some(bytes) => open_header(&Header::parse(&bytes, &named())?, root)?,
            None => {
                KdfRecord::check_new(root, &opts.kdf)?;
                let (header, secret, ring) = new_header(root, &opts)?;
                let mut batch = store.batch();
                batch.expect(Cf::Meta, HEADER_KEY, None);
                batch.put(Cf::Meta, HEADER_KEY, &header.to_bytes()?);
                match store.write_synced(batch) {
                    Ok(()) => (header, secret, ring),
                    // Another replica created the vault first: open that one.
                    Err(Error::Conflict) => {
                        let bytes = store.get(Cf::Meta, HEADER_KEY)?.ok_or(Error::Conflict)?;
                        open_header(&Header::parse(&bytes, &named())?, root)?
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let (retirement, retire_rule) = Retirement::new(ring.index_keys(header.layout()));
        store.set_retire_rule(retire_rule);
        let opened = Opened {
            header,
            secret,
            ring,
            retirement,
        };
        Vault::assemble(Store::Postgres(store), None, opened, None, opts)
    }

    /// The rest of opening, once the store is open: the erasure journal beside the
    /// backups, the audit journal, the shared state, and the syncer and worker.
    fn assemble(
        store: Store,
        dir: Option<&Path>,
        opened: Opened,
        owner: Option<Owner>,
        opts: VaultOptions,
    ) -> Result<Vault, Error> {
        let Opened {
            header,
            secret,
            ring,
            retirement,
        } = opened;
        let store = Arc::new(store);
        let shared = store.shared();
        let recorded = store
            .get(Cf::Meta, JOURNAL_SEQ)?
            .map(|b| b.try_into().map(u64::from_be_bytes))
            .transpose()
            .map_err(|_| Error::Integrity)?;
        let backups = match (&opts.backups, opts.restoring, recorded) {
            (_, true, _) => None,
            (Some(backups), false, recorded) => Some(Backups::open(
                backups.clone(),
                header.vault_id,
                &ring,
                recorded.unwrap_or(0),
                shared,
            )?),
            (None, false, Some(_)) => {
                return Err(Error::Backup(BackupProblem::JournalNotAttached));
            }
            (None, false, None) => None,
        };
        let index = ring.index_keys(header.layout());
        let store_for_aliases = store.clone();
        let journal = Journal::open(store.clone(), dir, ring.audit_key(), &opts)?;
        // On a shared store another replica may change anything at any time:
        // nothing read is kept between calls.
        let cache_capacity = if shared { 0 } else { opts.dek_cache_capacity };
        let dir = dir.map(Path::to_path_buf).unwrap_or_default();
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            vault_id: header.vault_id,
            store: store.clone(),
            index,
            keys: KeyState::new(
                dir,
                store,
                HeaderState {
                    header,
                    root: secret,
                },
                ring,
                cache_capacity,
            ),
            journal,
            subjects: SubjectCache::new(cache_capacity),
            stripes: Stripes::new(),
            retirement,
            backups,
            background_error: Mutex::new(None),
            issued_aliases: AtomicBool::new(alias::issued_at_open(&*store_for_aliases)?),
            foreign_aliases: AtomicBool::new(alias::foreign_at_open(&*store_for_aliases)?),
            opts,
            _owner: owner,
        });
        // A vault of an earlier build gets the inventory's counts before any write.
        inner.retrying(|| inner.count_inventory())?;
        // Read events a killed process staged are committed before anything else
        // (a damaged trail takes none: they stay staged, and reads are refused).
        if inner.journal.damaged.is_none() {
            inner.journal.flush_staged()?;
            inner.journal.sync_read_events()?;
            // Erasures in the journal this store has not seen (an old copy of the
            // directory, say) are made before anything is served.
            inner.catch_up_erasures(recorded)?;
        }
        // The syncer first: it stops when dropped, should the worker fail to start.
        let syncer = inner
            .journal
            .synced()
            .then(|| {
                // Keeps the store open for as long as the syncer runs.
                let state = inner.clone();
                Syncer::start(
                    inner.journal.wal_sync.clone(),
                    inner.opts.sync_gather,
                    move || state.store.sync_wal(),
                )
            })
            .transpose()?;
        let worker = inner
            .opts
            .background_worker
            .then(|| Worker::start(inner.clone()))
            .transpose()?;
        Ok(Vault {
            inner,
            worker,
            syncer,
        })
    }

    /// Stops the background worker, syncs the write-ahead log and closes the vault.
    pub fn close(mut self) -> Result<(), Error> {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        if let Some(syncer) = self.syncer.take() {
            syncer.stop();
        }
        // A damaged trail takes no staged events: they stay for the next open.
        if self.inner.journal.damaged.is_none() {
            self.inner.journal.flush_staged()?;
        }
        self.inner.store.sync_wal()
    }

    /// The declared purposes, by name.
    pub fn purposes(&self) -> Vec<Purpose> {
        self.inner.opts.policy.purposes().cloned().collect()
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
        if let Some(syncer) = self.syncer.take() {
            syncer.stop();
        }
        // Best effort: what stays staged is committed at the next open.
        let _ = self.inner.journal.flush_staged();
    }
}

impl Inner {
    pub(crate) fn now(&self) -> u64 {
        self.opts.clock.now_millis()
    }

    /// Runs a write until it commits. On a shared store another replica may change
    /// what the write read before it commits ([`Error::Conflict`]): it is then run
    /// again on fresh reads (and a freshly read keyring), after a short random
    /// wait, up to [`CONFLICT_TRIES`] times. On RocksDB it runs once.
    pub(crate) fn retrying<T>(
        &self,
        mut write: impl FnMut() -> Result<T, Error>,
    ) -> Result<T, Error> {
        let mut tries = 1;
        loop {
            match write() {
                Err(Error::Conflict) if tries < CONFLICT_TRIES => {
                    tries += 1;
                    self.keys.refresh()?;
                    let jitter: [u8; 1] = random_bytes()?;
                    let wait = u64::from(jitter[0] % 8 + 1) * u64::from(tries);
                    std::thread::sleep(std::time::Duration::from_millis(wait));
                }
                other => return other,
            }
        }
    }

    /// On a shared store, makes `batch` depend on subject instance `sid`'s key
    /// being stored as it is now: not erased (or rewrapped) by another replica
    /// before it commits.
    pub(crate) fn expect_key(&self, sid: &Sid, batch: &mut Batch<'_>) -> Result<(), Error> {
        if self.store.shared() {
            let key = self.store.get(Cf::Keys, sid)?.ok_or(Error::Erased)?;
            batch.expect(Cf::Keys, sid, Some(&key));
        }
        Ok(())
    }

    pub(crate) fn set_background_error(&self, error: Option<Error>) {
        *self
            .background_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = error.map(|e| e.to_string());
    }

    pub(crate) fn background_error(&self) -> Option<String> {
        self.background_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Records a read's audit events ([`Journal::commit_read_events`]). A full
    /// staging file that could not be committed does not fail the read (its events
    /// are staged): it is reported like the worker's errors, and the worker retries.
    pub(crate) fn commit_read_events(&self, events: &[ReadEvent<'_>]) -> Result<(), Error> {
        // On a shared store a group that another replica's conflicted is tried again.
        if let Some(e) = self.retrying(|| self.journal.commit_read_events(events))? {
            self.set_background_error(Some(e));
        }
        Ok(())
    }

    /// The subject entry and key of `h` for a write, from its stored entry (`found`),
    /// or a new subject (storage id, key wrapped under the active KEK) whose key and
    /// counter are added to `batch`; `true` when new. The caller holds the subject's
    /// stripe lock and `key_writes` for reading, and writes the subject entry itself.
    pub(crate) fn subject_for_write(
        &self,
        h: &SubjectHash,
        found: Option<&[u8]>,
        sealed: &Sealed,
        batch: &mut Batch<'_>,
        now: u64,
    ) -> Result<(SubjectEntry, Arc<Dek>, bool), Error> {
        let ring = &*sealed.ring;
        // On a shared store the write stands only on the entry as read.
        batch.expect(Cf::Subjects, h, found);
        if let Some(bytes) = found {
            let entry = SubjectEntry::decode(bytes)?;
            // A subject entry without its key is damage, not an erasure (erasure
            // removes both in one batch).
            let dek = self
                .keys
                .dek_with(ring, &entry.sid)?
                .ok_or(Error::Integrity)?;
            // The key is bound to its subject hash: a subject entry pointed at another
            // subject's key is refused, not written under that key.
            if dek.subject_hash != *h {
                return Err(Error::Integrity);
            }
            return Ok((entry, dek, false));
        }
        let sid: Sid = random_bytes()?;
        let key = Key::random()?;
        let slot = DekSlot {
            vault_id: &self.vault_id,
            sid: &sid,
            subject_hash: h,
        };
        let (version, wrapped) = ring.wrap_dek(&slot, &key)?;
        // ...and on the keyring as this replica holds it: no other may have retired
        // the version the key is wrapped under.
        sealed.expect_header(batch);
        let key_entry = KeyEntry {
            subject_hash: *h,
            kek_version: version,
            wrapped,
        };
        batch.put(Cf::Keys, &sid, &encode(KEY_FORMAT, &key_entry));
        batch.add(&dek_counter(version), 1);
        let entry = SubjectEntry {
            sid,
            created_at: now,
            records: 0,
            fields: Vec::new(),
        };
        Ok((entry, Arc::new(Dek::new(&key, *h)), true))
    }

    /// Adds to `batch` the subject entry with one live record fewer (of `field`,
    /// created at `created_at`) and the inventory's counts, if the subject
    /// `subject_hash` names is still the instance `sid` (not a new subject of the
    /// same id after an erasure). The caller holds the subject's stripe lock.
    pub(crate) fn count_removed_record(
        &self,
        subject_hash: &SubjectHash,
        sid: &Sid,
        field: &str,
        created_at: u64,
        batch: &mut Batch<'_>,
    ) -> Result<(), Error> {
        // The cached entry would be stale once the batch is written.
        self.subjects.remove(subject_hash);
        if let Some(bytes) = self.store.get(Cf::Subjects, subject_hash)? {
            batch.expect(Cf::Subjects, subject_hash, Some(&bytes));
            let mut entry = SubjectEntry::decode(&bytes)?;
            if entry.sid != *sid {
                return Ok(());
            }
            let mut tally = Tally::default();
            tally.record_removed(&mut entry, field, created_at);
            tally.write(&self.index, batch)?;
            batch.put(Cf::Subjects, subject_hash, &encode(SUBJECT_FORMAT, &entry));
        }
        Ok(())
    }

    /// The record a token names: decoded, or looked up (digits, and in a staging
    /// vault production's tokens).
    ///
    /// Text without a token's shape is [`Error::InvalidToken`]. A token of the
    /// right shape that this vault did not issue (another vault's, whose tag does
    /// not verify, or digits no alias names) is [`Error::NotFound`], as is one
    /// whose record was deleted: the shape is what a client can check; whether this
    /// vault issued a token is a lookup, answered like any missing record. Callers
    /// treat it as a read of a missing record (audited where such a read is).
    pub(crate) fn token_id(&self, text: &str) -> Result<TokenId, Error> {
        let token: Token = text.parse()?;
        if self
            .foreign_aliases
            .load(std::sync::atomic::Ordering::Relaxed)
            && let Some(id) = alias::lookup(&*self.store, &self.index, &token.lookup_text())?
        {
            return Ok(id);
        }
        match self.index.tokens.key(&token) {
            Some(id) => Ok(id),
            None => alias::lookup(&*self.store, &self.index, &token.lookup_text())?
                .ok_or(Error::NotFound),
        }
    }

    /// A stored record as a live record and its subject's key: stubs answer
    /// *erased* or *expired* (if genuine), a missing key *erased* or `Integrity`.
    pub(crate) fn live_record(
        &self,
        id: &TokenId,
        bytes: &[u8],
    ) -> Result<(LiveRecord, Arc<Dek>), Error> {
        let record = match decode(RECORD_FORMAT, bytes)? {
            StoredRecord::Shredded { tag } => return Err(stub_outcome(&self.index, id, &tag)),
            StoredRecord::Expired { tag } => return Err(expired_outcome(&self.index, id, &tag)),
            StoredRecord::Live(record) => record,
        };
        let dek = self
            .keys
            .dek(&record.sid)?
            .ok_or_else(|| self.missing_key(&record.sid, id, &record.link))?;
        Ok((record, dek))
    }

    /// [`Error::Expired`] when the record is past its field's retention period at `now`.
    pub(crate) fn check_retention(&self, record: &LiveRecord, now: u64) -> Result<(), Error> {
        if self
            .opts
            .policy
            .expired(&record.field, record.created_at, now)
        {
            return Err(Error::Expired);
        }
        Ok(())
    }
}

/// The worker's chores are the operations' own methods (`erase`, `retention`,
/// `audit`, `rotate`): implemented here, so that the worker knows nothing of them.
impl Chores for Inner {
    fn flush_read_events(&self) -> Result<(), Error> {
        self.journal.flush_staged()?;
        self.journal.sync_read_events()
    }

    fn purge_erasures_due(&self) -> Result<bool, Error> {
        Ok(self.purge_due()?.verified)
    }

    fn purge_expired_due(&self) -> Result<bool, Error> {
        if self.expiry_due()? {
            Ok(self.purge_expired()?.verified)
        } else {
            Ok(true)
        }
    }

    fn prune_audit_trail(&self) -> Result<(), Error> {
        self.journal.trim_staging();
        self.prune_audit().map(drop)
    }

    fn resume_rotation(&self) -> Result<bool, Error> {
        self.rotation_step()
    }

    fn report(&self, error: Option<Error>) {
        self.set_background_error(error);
    }
}

/// Whether the (locked) directory is empty. Missing is an error: the lock was taken
/// on a directory that has since been removed or renamed, and a vault created in a
/// new one at that path would have no lock.
fn is_empty(dir: &Path) -> Result<bool, Error> {
    let mut entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries.next().is_none())
}

/// Writes the header of a new vault; the database is created after it.
fn create_header(
    dir: &Path,
    root: &RootKey,
    opts: &VaultOptions,
) -> Result<(Header, RootSecret, Keyring), Error> {
    let (header, secret, ring) = new_header(root, opts)?;
    header.write(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok((header, secret, ring))
}

/// A header, root secret and keyring opened from `header` with `root`.
fn open_header(header: &Header, root: &RootKey) -> Result<(Header, RootSecret, Keyring), Error> {
    let secret = RootSecret::derive(root, &header.kdf)?;
    secret.check(&header.vault_id, &header.commitment)?;
    let ring = secret.open_keyring(&header.vault_id, &header.keyring)?;
    Ok((header.clone(), secret, ring))
}

/// What a header opened with its root key gives, and the purges' state it sets up.
struct Opened {
    header: Header,
    secret: RootSecret,
    ring: Keyring,
    retirement: Retirement,
}

/// A new vault's header, root secret and keyring.
fn new_header(root: &RootKey, opts: &VaultOptions) -> Result<(Header, RootSecret, Keyring), Error> {
    let kdf = KdfRecord::for_key(root, &opts.kdf)?;
    let secret = RootSecret::derive(root, &kdf)?;
    let ring = Keyring::generate()?;
    let vault_id: [u8; 16] = random_bytes()?;
    let header = Header {
        vault_id,
        created_at: opts.clock.now_millis(),
        kdf,
        commitment: secret.commitment(&vault_id),
        keyring: secret.seal_keyring(&vault_id, &ring)?,
        format: FORMAT_VERSION,
    };
    Ok((header, secret, ring))
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| Error::io(dir, e))
}
