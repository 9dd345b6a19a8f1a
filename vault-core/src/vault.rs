//! The vault: opening and creating, tokenize, detokenize, rectify and delete.
//! Erasure, export and key management are in their own modules as further
//! `impl Vault` blocks.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError, RwLock, TryLockError};

use crate::audit::{AuditAction, AuditEvent, AuditOutcome, ReadEvent};
use crate::codec::{decode, encode};
use crate::crypto::{Key, random_bytes};
use crate::durable::{SyncState, Syncer, Unsynced};
use crate::error::Error;
use crate::header::{Header, sync_dir};
use crate::journal::Journal;
use crate::keys::{DekSlot, IndexKeys, KdfRecord, Keyring, RootKey, RootSecret};
use crate::options::VaultOptions;
use crate::owner::Owner;
use crate::purposes::Purpose;
use crate::records::{
    Detokenized, LiveRecord, RECORD_FORMAT, RecordPlace, StoredRecord, expired_outcome, index_key,
    stub_outcome,
};
use crate::retention::expiry_key;
use crate::staged::Staging;
use crate::store::{Batch, Cf, Store, StoreOptions};
use crate::subjects::{
    Dek, DekCache, KEY_FORMAT, KeyEntry, KnownSubject, SUBJECT_FORMAT, Sid, Stripes, SubjectCache,
    SubjectEntry, SubjectHash, dek_counter,
};
use crate::token::{Token, TokenId};
use crate::worker::Worker;

/// How a tokenization commits.
#[derive(Debug, Clone, Copy)]
enum Commit {
    /// Waits for the locks and the journal; synced as `sync` says.
    Wait { sync: bool },
    /// Unsynced, and only if nobody holds a lock it needs or is writing.
    IfFree,
}

/// A subject a tokenization writes to: its entry as it will be stored and its key,
/// whether this write creates it, and how many records it stores for it.
struct SubjectWrite {
    hash: SubjectHash,
    known: KnownSubject,
    created: bool,
    stored: u64,
}

/// One value to tokenize, for [`Vault::tokenize_batch`].
#[derive(Clone, Copy)]
pub struct TokenizeRequest<'a> {
    /// The data subject the value belongs to (e.g. a customer id).
    pub subject: &'a str,
    /// The field name, e.g. `email` (ASCII letters, digits, `_`, `-`, `.`).
    pub field: &'a str,
    /// The value.
    pub value: &'a [u8],
    /// Issue the deterministic token of (subject, field, value) instead of a random one.
    pub deterministic: bool,
}

impl<'a> TokenizeRequest<'a> {
    /// A request for a random token.
    pub fn new(subject: &'a str, field: &'a str, value: &'a [u8]) -> Self {
        TokenizeRequest {
            subject,
            field,
            value,
            deterministic: false,
        }
    }

    /// Asks for the deterministic token instead.
    pub fn deterministic(mut self) -> Self {
        self.deterministic = true;
        self
    }
}

impl std::fmt::Debug for TokenizeRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenizeRequest")
            .field("field", &self.field)
            .field("deterministic", &self.deterministic)
            .finish_non_exhaustive()
    }
}

/// The header and the root secret that seals the keyring in it.
pub(crate) struct HeaderState {
    pub header: Header,
    pub root: RootSecret,
}

/// Shared state of an open vault; the background worker holds it too.
pub(crate) struct Inner {
    pub journal: Journal,
    pub dir: PathBuf,
    pub vault_id: [u8; 16],
    pub store: Store,
    pub opts: VaultOptions,
    pub index: IndexKeys,
    /// The current keyring. Readers clone the `Arc` and let go at once.
    ring: RwLock<Arc<Keyring>>,
    /// Taken (shared) by every write of the `keys` column family and exclusively by
    /// key rotation, so a rotation batch never races an erasure or a new subject.
    pub key_writes: RwLock<()>,
    pub header: Mutex<HeaderState>,
    pub cache: DekCache,
    /// Recently written subjects' entries and keys; see [`SubjectCache`].
    pub subjects: SubjectCache,
    pub stripes: Stripes,
    pub purge_lock: Mutex<()>,
    /// What the background worker's last run failed with, if it did.
    background_error: Mutex<Option<String>>,
    /// Read events on their way into the audit trail.
    pub staging: Staging,
    /// Set when staged read events were committed without syncing the WAL.
    pub unsynced_events: AtomicBool,
    /// Unsynced writes awaiting the syncer (see [`crate::durable`]).
    pub wal_sync: Arc<SyncState>,
    /// The directory's lock. Last, so that it is released only after the store
    /// and the staging files are closed.
    _owner: Owner,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
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
        let (header, secret, ring) = if is_empty(dir)? {
            if !opts.create_if_missing {
                return Err(Error::NoVault { path: dir.into() });
            }
            create_header(dir, root, &opts)?
        } else {
            let header = Header::read(dir)?;
            let secret = RootSecret::derive(root, &header.kdf)?;
            secret.check(&header.vault_id, &header.commitment)?;
            let ring = secret.open_keyring(&header.vault_id, &header.keyring)?;
            (header, secret, ring)
        };
        // A header without a database is a creation that stopped half-way: finish it.
        let create = !dir.join("CURRENT").exists();
        let store = Store::open(
            dir,
            create,
            StoreOptions {
                durability: opts.durability,
                compression: opts.compression,
                statistics: opts.statistics,
                block_cache_bytes: opts.block_cache_bytes,
            },
        )?;
        let index = ring.index_keys();
        let journal = Journal::open(&store, &index.audit_key)?;
        let staging = Staging::open(dir, journal.staged_done(), &index.audit_key)?;
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            vault_id: header.vault_id,
            store,
            index,
            ring: RwLock::new(Arc::new(ring)),
            key_writes: RwLock::new(()),
            header: Mutex::new(HeaderState {
                header,
                root: secret,
            }),
            journal,
            cache: DekCache::new(opts.dek_cache_capacity),
            subjects: SubjectCache::new(opts.dek_cache_capacity),
            stripes: Stripes::new(),
            purge_lock: Mutex::new(()),
            background_error: Mutex::new(None),
            staging,
            unsynced_events: AtomicBool::new(false),
            wal_sync: Arc::default(),
            opts,
            _owner: owner,
        });
        // Read events a killed process staged are committed before anything else
        // (a damaged trail takes none: they stay staged, and reads are refused).
        if inner.journal.damaged.is_none() {
            inner.flush_staged()?;
            inner.sync_read_events()?;
        }
        // The syncer first: it stops when dropped, should the worker fail to start.
        let syncer = inner
            .synced()
            .then(|| Syncer::start(inner.clone()))
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
            self.inner.flush_staged()?;
        }
        self.inner.store.sync_wal()
    }

    /// Tokenizes one value with a random token.
    pub fn tokenize(
        &self,
        subject: &str,
        field: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Token, Error> {
        self.default_actor().tokenize(subject, field, value)
    }

    /// Tokenizes one value with its deterministic token: the same (subject, field,
    /// value) always gives the same token, derived from the subject's key, so it
    /// cannot be recomputed once the subject is erased.
    pub fn tokenize_deterministic(
        &self,
        subject: &str,
        field: &str,
        value: impl AsRef<[u8]>,
    ) -> Result<Token, Error> {
        self.default_actor()
            .tokenize_deterministic(subject, field, value)
    }

    /// Tokenizes many values in one atomic write: either every value is stored and a
    /// token returned for each (in order), or nothing is stored. An invalid item fails
    /// the whole call with an [`InputError`](crate::InputError) naming its index.
    pub fn tokenize_batch(&self, items: &[TokenizeRequest<'_>]) -> Result<Vec<Token>, Error> {
        self.default_actor().tokenize_batch(items)
    }

    /// [`tokenize_batch`](Self::tokenize_batch) for callers that must not block
    /// while the write is synced (an async server): returns once the records are
    /// written, before they are durable. Await the [`Unsynced`] (or
    /// [`wait`](Unsynced::wait) for it) before handing the tokens out: a thread of
    /// the vault syncs the WAL for every write awaited (see the README's server
    /// section). This call itself may still wait, as a synced one does, for
    /// other writes of the same subjects and for the journal.
    ///
    /// In async code: try [`try_tokenize_batch_unsynced`](Self::try_tokenize_batch_unsynced)
    /// on the executor's thread, fall back to this on the blocking pool, and await
    /// the sync without holding a thread:
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vault_core::{Token, TokenizeRequest, Vault};
    ///
    /// async fn store_email(vault: Arc<Vault>, customer: String, email: String)
    ///     -> Result<Token, Box<dyn std::error::Error + Send + Sync>> {
    ///     let request = [TokenizeRequest::new(&customer, "email", email.as_bytes())];
    ///     let unsynced = match vault.try_tokenize_batch_unsynced(&request)? {
    ///         Some(unsynced) => unsynced,
    ///         None => tokio::task::spawn_blocking(move || {
    ///             let request = [TokenizeRequest::new(&customer, "email", email.as_bytes())];
    ///             vault.tokenize_batch_unsynced(&request)
    ///         })
    ///         .await??,
    ///     };
    ///     let mut tokens = unsynced.await?; // durable now: hand the token out
    ///     Ok(tokens.remove(0))
    /// }
    /// # fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # let tmp = tempfile::tempdir()?;
    /// # let dir = tmp.path().join("vault");
    /// # let vault = Arc::new(Vault::open(&dir, &vault_core::RootKey::generate()?, Default::default())?);
    /// # let runtime = tokio::runtime::Runtime::new()?;
    /// # let token = runtime.block_on(store_email(vault.clone(), "c-1".into(), "a@b.example".into()))?;
    /// # assert_eq!(vault.detokenize(&token.to_string())?.value.as_str(), Some("a@b.example"));
    /// # drop(vault);
    /// # Ok(()) }
    /// ```
    pub fn tokenize_batch_unsynced(
        &self,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Unsynced<Vec<Token>>, Error> {
        self.default_actor().tokenize_batch_unsynced(items)
    }

    /// [`tokenize_batch_unsynced`](Self::tokenize_batch_unsynced) if it does not
    /// have to wait for anyone: no other write holds a lock it needs, is being
    /// written or is being synced (a purge's synced write included; RocksDB can
    /// still delay a write itself when compactions fall behind). `Ok(None)`, with
    /// nothing written, when it would have to; call
    /// `tokenize_batch_unsynced` where blocking is allowed then. Meant for an async
    /// executor's thread, where waiting for another caller's sync would stall
    /// every task.
    pub fn try_tokenize_batch_unsynced(
        &self,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Option<Unsynced<Vec<Token>>>, Error> {
        self.default_actor().try_tokenize_batch_unsynced(items)
    }

    /// [`tokenize_batch`](Self::tokenize_batch), recorded under `actor`.
    pub(crate) fn tokenize_by(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Vec<Token>, Error> {
        let sync = self.inner.synced();
        self.tokenize_with(actor, items, Commit::Wait { sync })?
            .ok_or(Error::Integrity) // `Commit::Wait` always writes
    }

    /// [`tokenize_batch_unsynced`](Self::tokenize_batch_unsynced), recorded under
    /// `actor`.
    pub(crate) fn tokenize_unsynced_by(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Unsynced<Vec<Token>>, Error> {
        let tokens = self
            .tokenize_with(actor, items, Commit::Wait { sync: false })?
            .ok_or(Error::Integrity)?; // `Commit::Wait` always writes
        Ok(self.unsynced(tokens))
    }

    /// [`try_tokenize_batch_unsynced`](Self::try_tokenize_batch_unsynced), recorded
    /// under `actor`.
    pub(crate) fn try_tokenize_unsynced_by(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
    ) -> Result<Option<Unsynced<Vec<Token>>>, Error> {
        Ok(self
            .tokenize_with(actor, items, Commit::IfFree)?
            .map(|tokens| self.unsynced(tokens)))
    }

    /// A value written without a sync, to await the sync that covers it. Counted
    /// after the write returned: the sync that covers the ticket starts after it.
    fn unsynced<T>(&self, value: T) -> Unsynced<T> {
        let ticket = self.inner.synced().then(|| self.inner.wal_sync.written());
        Unsynced::new(value, ticket)
    }

    /// Tokenizes `items` under `actor`: one audit event per subject, committed with
    /// the records as `commit` says; `None` (nothing written) when `Commit::IfFree`
    /// would have had to wait.
    fn tokenize_with(
        &self,
        actor: &str,
        items: &[TokenizeRequest<'_>],
        commit: Commit,
    ) -> Result<Option<Vec<Token>>, Error> {
        let inner = &*self.inner;
        let limits = &inner.opts.limits;
        limits.check_batch(items.len())?;
        for (i, item) in items.iter().enumerate() {
            limits.check_subject(item.subject).map_err(|e| e.at(i))?;
            limits.check_field(item.field).map_err(|e| e.at(i))?;
            limits.check_value(item.value).map_err(|e| e.at(i))?;
        }
        let hashes: Vec<SubjectHash> = items
            .iter()
            .map(|it| inner.index.subject_hash(it.subject))
            .collect();
        let (_stripes, _keys) = match commit {
            Commit::Wait { .. } => (
                inner.stripes.lock_all(hashes.iter()),
                inner
                    .key_writes
                    .read()
                    .unwrap_or_else(PoisonError::into_inner),
            ),
            Commit::IfFree => {
                let Some(stripes) = inner.stripes.try_lock_all(hashes.iter()) else {
                    return Ok(None);
                };
                let keys = match inner.key_writes.try_read() {
                    Ok(keys) => keys,
                    Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                    Err(TryLockError::WouldBlock) => return Ok(None),
                };
                if inner.writes_in_the_way() {
                    return Ok(None);
                }
                (stripes, keys)
            }
        };
        let ring = inner.ring();
        let now = inner.now();

        // The distinct subjects, in the order first named, and each item's among them.
        let mut distinct: Vec<SubjectHash> = Vec::new();
        let mut position: HashMap<&SubjectHash, usize> = HashMap::with_capacity(hashes.len());
        let slots: Vec<usize> = hashes
            .iter()
            .map(|h| {
                *position.entry(h).or_insert_with(|| {
                    distinct.push(*h);
                    distinct.len() - 1
                })
            })
            .collect();
        // Known subjects come from the cache (taken out: they go back only once this
        // write is committed); the others are read.
        let cached: Vec<Option<KnownSubject>> =
            distinct.iter().map(|h| inner.subjects.remove(h)).collect();
        let unknown: Vec<SubjectHash> = distinct
            .iter()
            .zip(&cached)
            .filter(|(_, known)| known.is_none())
            .map(|(h, _)| *h)
            .collect();
        let mut found = if unknown.is_empty() {
            Vec::new()
        } else {
            inner.store.multi_get(Cf::Subjects, &unknown)?
        }
        .into_iter();
        let mut batch = inner.store.batch();
        let mut subjects = Vec::with_capacity(distinct.len());
        for (h, known) in distinct.iter().zip(cached) {
            let (known, created) = match known {
                Some(known) => (known, false),
                None => {
                    let found = found.next().flatten();
                    let (entry, dek, created) =
                        inner.subject_for_write(h, found.as_deref(), &ring, &mut batch, now)?;
                    (KnownSubject { entry, dek }, created)
                }
            };
            subjects.push(SubjectWrite {
                hash: *h,
                known,
                created,
                stored: 0,
            });
        }

        let mut tokens = Vec::with_capacity(items.len());
        // Deterministic ids issued by this batch (random ones cannot repeat).
        let mut issued: HashSet<TokenId> = HashSet::new();
        for (item, &slot) in items.iter().zip(&slots) {
            let SubjectWrite {
                known: KnownSubject { entry, dek },
                stored,
                ..
            } = &mut subjects[slot];
            let id: TokenId = if item.deterministic {
                let id = dek.deterministic_id(item.field, item.value);
                if issued.contains(&id) || inner.store.get(Cf::Records, &id)?.is_some() {
                    tokens.push(Token::new(id, &inner.index.token_tag_key));
                    continue;
                }
                issued.insert(id);
                id
            } else {
                random_bytes()?
            };
            let place = RecordPlace {
                vault_id: &inner.vault_id,
                sid: &entry.sid,
                id: &id,
            };
            let record = StoredRecord::Live(LiveRecord::seal(
                &inner.index,
                &place,
                item.field,
                now,
                item.deterministic,
                &dek.aead,
                item.value,
            )?);
            batch.put(Cf::Records, &id, &encode(RECORD_FORMAT, &record));
            batch.put(Cf::Index, &index_key(&entry.sid, &id), b"");
            if let Some(at) = inner.opts.policy.expires_at(item.field, now) {
                batch.put(Cf::Expiry, &expiry_key(at, &id), &entry.sid);
            }
            entry.records += 1;
            *stored += 1;
            tokens.push(Token::new(id, &inner.index.token_tag_key));
        }
        for subject in subjects.iter().filter(|s| s.stored > 0) {
            batch.put(
                Cf::Subjects,
                &subject.hash,
                &encode(SUBJECT_FORMAT, &subject.known.entry),
            );
        }
        let events = subjects
            .iter()
            .map(|s| {
                AuditEvent::new(actor, AuditAction::Tokenize, AuditOutcome::Ok)
                    .about(Some(s.known.dek.audit_ref), s.stored)
            })
            .collect();
        match commit {
            Commit::Wait { sync } => {
                inner.commit_audited(batch, events, sync)?;
            }
            Commit::IfFree => {
                if inner.commit_audited_if_free(batch, events)?.is_none() {
                    return Ok(None);
                }
            }
        }
        for subject in subjects {
            if subject.created {
                let known = &subject.known;
                inner.cache.insert(known.entry.sid, known.dek.clone());
            }
            // Cached as stored: a new subject's entry is written only with a record.
            if !subject.created || subject.stored > 0 {
                inner.subjects.insert(subject.hash, subject.known);
            }
        }
        Ok(Some(tokens))
    }

    /// The declared purposes, by name.
    pub fn purposes(&self) -> Vec<Purpose> {
        self.inner.opts.policy.purposes().cloned().collect()
    }

    /// Turns a token back into its field and value.
    ///
    /// Errors: [`Error::InvalidToken`] (malformed or another vault's),
    /// [`Error::NotFound`], [`Error::Erased`], [`Error::Integrity`].
    /// The read is recorded in the audit trail (no purpose) before it returns; text
    /// that is not a token is not.
    pub fn detokenize(&self, token: &str) -> Result<Detokenized, Error> {
        self.default_actor().detokenize(token)
    }

    /// [`detokenize_by`](Self::detokenize_by) of one token, without its vectors: a
    /// point read of a pinned value, one event.
    pub(crate) fn detokenize_one_by(&self, actor: &str, token: &str) -> Result<Detokenized, Error> {
        let inner = &*self.inner;
        // Text that is not a token is refused, and not recorded, as in a batch.
        let id = inner.token_id(token)?;
        let (result, event) = inner.store.with_value(Cf::Records, &id, |bytes| {
            inner.read_record(actor, &id, bytes)
        })?;
        inner.commit_read_events(&[event])?;
        result
    }

    /// Detokenizes many tokens, with one result per token, in order: one bad token
    /// does not fail the others. Each token's outcome is recorded in the audit trail
    /// (no purpose; text that is not a token is not) before the values are returned.
    pub fn detokenize_batch<S: AsRef<str>>(
        &self,
        tokens: &[S],
    ) -> Result<Vec<Result<Detokenized, Error>>, Error> {
        self.default_actor().detokenize_batch(tokens)
    }

    pub(crate) fn detokenize_by<S: AsRef<str>>(
        &self,
        actor: &str,
        tokens: &[S],
    ) -> Result<Vec<Result<Detokenized, Error>>, Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_batch(tokens.len())?;
        let ids: Vec<Result<TokenId, Error>> =
            tokens.iter().map(|t| inner.token_id(t.as_ref())).collect();
        let valid: Vec<TokenId> = ids
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        let mut found = inner.store.multi_get(Cf::Records, &valid)?.into_iter();
        let mut events = Vec::with_capacity(valid.len());
        let results = ids
            .into_iter()
            .map(|id| {
                let (result, event) =
                    inner.read_record(actor, &id?, found.next().flatten().as_deref());
                events.push(event);
                result
            })
            .collect();
        if !events.is_empty() {
            inner.commit_read_events(&events)?;
        }
        Ok(results)
    }

    /// Replaces the value behind `token`; the token stays valid and keeps its field.
    pub fn rectify(&self, token: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.default_actor().rectify(token, value)
    }

    pub(crate) fn rectify_by(&self, actor: &str, token: &str, value: &[u8]) -> Result<(), Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_value(value)?;
        let id = inner.token_id(token)?;
        inner.with_live_record(&id, |_, dek, record| {
            if inner
                .opts
                .policy
                .expired(&record.field, record.created_at, inner.now())
            {
                return Err(Error::Expired);
            }
            if record.deterministic {
                // Checked on authenticated data: open before trusting the flag.
                record.open(&inner.vault_id, &id, &dek.aead)?;
                return Err(Error::DeterministicToken);
            }
            let updated =
                StoredRecord::Live(record.reseal(&inner.vault_id, &id, &dek.aead, value)?);
            let mut batch = inner.store.batch();
            batch.put(Cf::Records, &id, &encode(RECORD_FORMAT, &updated));
            let event = AuditEvent::new(actor, AuditAction::Rectify, AuditOutcome::Ok)
                .about(Some(dek.audit_ref), 1);
            inner.commit_audited(batch, vec![event], inner.synced())?;
            Ok(())
        })
    }

    /// Deletes the record behind `token`; the token then answers [`Error::NotFound`].
    ///
    /// The ciphertext stays in older storage files until compaction reaches them; it is
    /// still under the subject's key. Erasure is what removes bytes provably.
    pub fn delete(&self, token: &str) -> Result<(), Error> {
        self.default_actor().delete(token)
    }

    pub(crate) fn delete_by(&self, actor: &str, token: &str) -> Result<(), Error> {
        let inner = &*self.inner;
        let id = inner.token_id(token)?;
        inner.with_live_record(&id, |sid, dek, _| {
            let mut batch = inner.store.batch();
            batch.delete(Cf::Records, &id);
            batch.delete(Cf::Index, &index_key(sid, &id));
            inner.count_removed_record(&dek.subject_hash, sid, &mut batch)?;
            let event = AuditEvent::new(actor, AuditAction::Delete, AuditOutcome::Ok)
                .about(Some(dek.audit_ref), 1);
            inner.commit_audited(batch, vec![event], inner.synced())?;
            Ok(())
        })
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
        let _ = self.inner.flush_staged();
    }
}

impl Inner {
    pub(crate) fn now(&self) -> u64 {
        self.opts.clock.now_millis()
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

    pub(crate) fn ring(&self) -> Arc<Keyring> {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Seals `ring` into the header, writes it durably, then makes it current.
    /// Callers hold `key_writes` exclusively.
    pub(crate) fn persist_ring(&self, ring: Keyring) -> Result<(), Error> {
        let mut state = self.header.lock().unwrap_or_else(PoisonError::into_inner);
        let mut header = state.header.clone();
        header.keyring = state.root.seal_keyring(&self.vault_id, &ring)?;
        header.write(&self.dir)?;
        state.header = header;
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
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
        ring: &Keyring,
        batch: &mut Batch<'_>,
        now: u64,
    ) -> Result<(SubjectEntry, Arc<Dek>, bool), Error> {
        if let Some(bytes) = found {
            let entry: SubjectEntry = decode(SUBJECT_FORMAT, bytes)?;
            // A subject entry without its key is damage, not an erasure (erasure
            // removes both in one batch).
            let dek = self.dek_with(ring, &entry.sid)?.ok_or(Error::Integrity)?;
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
        };
        Ok((entry, Arc::new(Dek::new(&key, *h)), true))
    }

    /// Adds to `batch` the subject entry with one live record fewer, if the subject
    /// `subject_hash` names is still the instance `sid` (not a new subject of the same
    /// id after an erasure). The caller holds the subject's stripe lock.
    pub(crate) fn count_removed_record(
        &self,
        subject_hash: &SubjectHash,
        sid: &Sid,
        batch: &mut Batch<'_>,
    ) -> Result<(), Error> {
        // The cached entry would be stale once the batch is written.
        self.subjects.remove(subject_hash);
        if let Some(bytes) = self.store.get(Cf::Subjects, subject_hash)? {
            let mut entry: SubjectEntry = decode(SUBJECT_FORMAT, &bytes)?;
            if entry.sid != *sid {
                return Ok(());
            }
            entry.records = entry.records.saturating_sub(1);
            batch.put(Cf::Subjects, subject_hash, &encode(SUBJECT_FORMAT, &entry));
        }
        Ok(())
    }

    pub(crate) fn token_id(&self, token: &str) -> Result<TokenId, Error> {
        token.parse::<Token>()?.verify(&self.index.token_tag_key)
    }

    /// The subject's DEK: from the cache, else unwrapped from the `keys` family.
    /// `None` when the key does not exist (erased, or never existed).
    pub(crate) fn dek(&self, sid: &Sid) -> Result<Option<Arc<Dek>>, Error> {
        self.cache
            .get_or_load(sid, || self.load_dek(&self.ring(), sid))
    }

    /// Like [`dek`](Self::dek), with a keyring the caller already holds.
    pub(crate) fn dek_with(&self, ring: &Keyring, sid: &Sid) -> Result<Option<Arc<Dek>>, Error> {
        self.cache.get_or_load(sid, || self.load_dek(ring, sid))
    }

    fn load_dek(&self, ring: &Keyring, sid: &Sid) -> Result<Option<Arc<Dek>>, Error> {
        let Some(bytes) = self.store.get(Cf::Keys, sid)? else {
            return Ok(None);
        };
        let entry: KeyEntry = decode(KEY_FORMAT, &bytes)?;
        let slot = DekSlot {
            vault_id: &self.vault_id,
            sid,
            subject_hash: &entry.subject_hash,
        };
        let key = ring.unwrap_dek(entry.kek_version, &slot, &entry.wrapped)?;
        Ok(Some(Arc::new(Dek::new(&key, entry.subject_hash))))
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

    /// A detokenization of the record stored as `bytes` (`None`: not found), and
    /// its event for the trail.
    fn read_record<'a>(
        &self,
        actor: &'a str,
        id: &TokenId,
        bytes: Option<&[u8]>,
    ) -> (Result<Detokenized, Error>, ReadEvent<'a>) {
        let mut subject = None;
        let result = match bytes {
            Some(bytes) => self.open_record(id, bytes, &mut subject),
            None => Err(Error::NotFound),
        };
        let event = ReadEvent::new(actor, AuditAction::Detokenize, AuditOutcome::of(&result))
            .about(subject, u64::from(result.is_ok()));
        (result, event)
    }

    /// A stored record's field and value, checked for retention; `subject` is set to
    /// its subject's audit reference when the key is found.
    pub(crate) fn open_record(
        &self,
        id: &TokenId,
        bytes: &[u8],
        subject: &mut Option<[u8; 16]>,
    ) -> Result<Detokenized, Error> {
        let (record, dek) = self.live_record(id, bytes)?;
        *subject = Some(dek.audit_ref);
        self.check_retention(&record, self.now())?;
        let value = record.open(&self.vault_id, id, &dek.aead)?;
        Ok(Detokenized::of(record, value, false))
    }

    /// Runs `f` on a live record under its subject's stripe lock, after checking again
    /// under the lock that the record is live and its subject not erased.
    fn with_live_record<T>(
        &self,
        id: &TokenId,
        f: impl FnOnce(&Sid, &Dek, LiveRecord) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let read = |id: &TokenId| -> Result<LiveRecord, Error> {
            let bytes = self.store.get(Cf::Records, id)?.ok_or(Error::NotFound)?;
            match decode(RECORD_FORMAT, &bytes)? {
                StoredRecord::Shredded { tag } => Err(stub_outcome(&self.index, id, &tag)),
                StoredRecord::Expired { tag } => Err(expired_outcome(&self.index, id, &tag)),
                StoredRecord::Live(record) => Ok(record),
            }
        };
        let first = read(id)?;
        let sid = first.sid;
        let dek = self
            .dek(&sid)?
            .ok_or_else(|| self.missing_key(&sid, id, &first.link))?;
        let _stripe = self.stripes.lock(&dek.subject_hash);
        // Under the lock: an erasure has either finished (key gone, cache entry
        // dropped) or not begun.
        let record = read(id)?;
        if record.sid != sid {
            return Err(Error::Integrity);
        }
        let dek = self
            .dek(&sid)?
            .ok_or_else(|| self.missing_key(&sid, id, &record.link))?;
        f(&sid, &dek, record)
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
    };
    header.write(dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
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
