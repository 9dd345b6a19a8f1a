//! The storage seam: what the vault needs from an ordered key-value engine, as one
//! trait ([`Storage`]) and its write batches ([`WriteSet`]), and the column
//! families the vault keeps (each one a kind of thing). RocksDB, embedded, is the
//! default implementation (`rocks`); PostgreSQL (`pg`, feature `postgres`) is the
//! other, for replicas of one vault on one database. [`Store`] is an enum of the
//! two, so calls stay statically dispatched; nothing outside this folder names an
//! engine's type.
//!
//! Every multi-key change is one batch, applied atomically. `write` follows the
//! vault's durability (synced by default); `write_synced` syncs whatever it says
//! (rotation batches, the purge's bookkeeping). Audited writes (erasures and
//! consent, synced; tokenizations as the durability says) go through the journal,
//! which detaches callers' batches from the store, adds its events to them and
//! writes them as one. After a failed write or log sync the RocksDB store refuses
//! every later write until it is reopened: what reached the disk is then what the
//! reopened store finds, and nothing written after the failure is acknowledged on
//! top of data that may be lost.
//!
//! A *shared* store ([`Storage::shared`]: PostgreSQL) has other writers, other
//! replicas of the vault, that no lock of this process orders. There a batch
//! carries *expectations* ([`WriteSet::expect`]): the values its writer read and
//! built it on. The batch is written only if each still holds at commit, checked
//! under row locks in the same transaction; otherwise the write fails with
//! [`Error::Conflict`] and the operation is run again on fresh reads. On RocksDB
//! the vault is the only writer and its own locks keep what it read, so
//! expectations cost nothing there.

mod rocks;

#[cfg(feature = "postgres")]
mod pg;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::options::Durability;

pub(crate) use rocks::Store as RocksStore;

#[cfg(feature = "postgres")]
pub(crate) use pg::PgStore;
#[cfg(feature = "postgres")]
pub use pg::PostgresConfig;

/// The vault's store: one of the engines. (One per open vault, in an `Arc`: the
/// variants' sizes do not matter.)
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub(crate) enum Store {
    Rocks(RocksStore),
    #[cfg(feature = "postgres")]
    Postgres(PgStore),
}

/// A write batch of the vault's store.
pub(crate) enum Batch<'a> {
    Rocks(rocks::Batch<'a>),
    #[cfg(feature = "postgres")]
    Postgres(pg::Ops),
}

/// A batch detached from the vault's store (the journal's queue holds these).
#[derive(Default)]
pub(crate) enum RawBatch {
    /// Nothing yet; takes the kind of the first write added.
    #[default]
    Empty,
    Rocks(rocks::RawBatch),
    #[cfg(feature = "postgres")]
    Postgres(pg::Ops),
}

/// The column families. Keys and values of each are described beside the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Cf {
    /// Vault-wide state: the rotation cursor.
    Meta,
    /// subject hash (32) → subject entry (storage id, counts).
    Subjects,
    /// storage id (16) → wrapped DEK.
    Keys,
    /// token id (16) → record (live, or a stub once its subject is purged).
    Records,
    /// storage id (16) || token id (16) → the record's expiry time (8, big-endian)
    /// if it has one, else empty: a subject's records, by prefix.
    Index,
    /// storage id (16) → erasure entry (time, records, purge time). No personal data.
    Erasures,
    /// storage id (16) → purge deadline: erasures whose bytes are still on disk.
    PurgeQueue,
    /// counter name → i64, merged by addition (DEKs per KEK version).
    Counters,
    /// storage id (16) || purpose id (16) → current consent; with || sequence (8) →
    /// one event of the history. Sealed under the subject's key.
    Consents,
    /// expiry time (8, big-endian) || token id (16) → storage id: records with a
    /// retention period, in the order they expire.
    Expiry,
    /// sequence number (8, big-endian) → audit event and its chained MAC.
    Audit,
    /// subject reference (16) || sequence number (8) → empty: a subject's audit
    /// events, by prefix. The reference is in the events too; it says nothing once
    /// the subject's key is gone.
    AuditIndex,
    /// `f` || alias key (16: the keyed hash of a token's text) → the token id and
    /// text of a token the vault looks up (digits; a staging vault's production
    /// tokens); `r` || token id (16) → the text of the token issued for the record,
    /// where it is not the plain opaque form. Tokens only: no value, no subject.
    Aliases,
}

impl Cf {
    /// The family's name: RocksDB's column family, PostgreSQL's table.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Cf::Meta => "meta",
            Cf::Subjects => "subjects",
            Cf::Keys => "keys",
            Cf::Records => "records",
            Cf::Index => "index",
            Cf::Erasures => "erasures",
            Cf::PurgeQueue => "purge_queue",
            Cf::Counters => "counters",
            Cf::Consents => "consents",
            Cf::Expiry => "expiry",
            Cf::Audit => "audit",
            Cf::AuditIndex => "audit_index",
            Cf::Aliases => "aliases",
        }
    }

    pub(crate) const ALL: [Cf; 13] = [
        Cf::Meta,
        Cf::Subjects,
        Cf::Keys,
        Cf::Records,
        Cf::Index,
        Cf::Erasures,
        Cf::PurgeQueue,
        Cf::Counters,
        Cf::Consents,
        Cf::Expiry,
        Cf::Audit,
        Cf::AuditIndex,
        Cf::Aliases,
    ];

    /// The column families that hold a subject's key or data, and so are compacted by a purge.
    pub(crate) const SUBJECT_DATA: [Cf; 6] = [
        Cf::Subjects,
        Cf::Keys,
        Cf::Records,
        Cf::Index,
        Cf::Consents,
        Cf::Expiry,
    ];
}

/// The smallest key greater than every key with this prefix, if one exists (the
/// exclusive end of a prefix scan, on either engine).
pub(crate) fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

/// A stored key and its value.
pub(crate) type KeyValue = (Vec<u8>, Vec<u8>);

/// Storage-engine counters, for tests and monitoring: how much work an operation did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageCounters {
    /// Keys read by point lookups (get and multi-get).
    pub keys_read: u64,
    /// Keys written (puts, deletes and merges).
    pub keys_written: u64,
    /// Iterator seeks.
    pub seeks: u64,
    /// Iterator steps.
    pub iterator_steps: u64,
    /// Write-ahead-log syncs (fsync or fdatasync).
    pub wal_syncs: u64,
    /// Bytes written (keys and values, before compression).
    pub bytes_written: u64,
    /// Bytes compactions read from table files (a purge's work is most of it).
    pub compaction_bytes_read: u64,
    /// Flushes and compactions running or pending now (not a counter).
    pub background_work: u64,
    /// Writes refused because another replica changed what they were built on (a
    /// shared store: PostgreSQL); each was run again on fresh reads.
    pub conflicts: u64,
    /// The block cache's capacity in bytes (read with or without statistics).
    pub block_cache_capacity: u64,
    /// Bytes in the block cache now (read with or without statistics).
    pub block_cache_usage: u64,
}

/// Storage options taken from the vault's options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoreOptions {
    pub durability: Durability,
    pub compression: bool,
    pub statistics: bool,
    pub block_cache_bytes: usize,
}

/// What the vault needs from its storage engine: point and multi gets, reads in
/// place, prefix and range scans, atomic batches with a sync choice, counters,
/// engine statistics, consistent copies for backups, and the physical purge that
/// proves erased bytes gone.
pub(crate) trait Storage: Send + Sync {
    /// An atomic batch of writes, built against the store.
    type Batch<'a>: WriteSet
    where
        Self: 'a;
    /// A batch that no longer borrows the store, so that it can wait in a queue.
    type Detached: Default + Send;

    /// The value under `key`.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// `f` of the value under `key` (`None` if there is none), read in place: the
    /// value is not copied out of the engine's cache.
    fn with_value<T>(
        &self,
        cf: Cf,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T, Error>;

    /// The values under `keys`, in order.
    fn multi_get<K: AsRef<[u8]>>(&self, cf: Cf, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error>;

    /// Calls `f` on every key/value whose key starts with `prefix`, in key order,
    /// stopping when `f` returns `false`. Reads only that prefix's keys.
    fn scan_prefix(
        &self,
        cf: Cf,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.scan_prefix_from(cf, prefix, prefix, f)
    }

    /// [`scan_prefix`](Self::scan_prefix) from the first key at or after `from`
    /// (which starts with `prefix`): where a paged read left off.
    fn scan_prefix_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error>;

    /// Up to `limit` key/values with keys strictly after `after` (from the start
    /// if `None`), in key order.
    fn scan_after(
        &self,
        cf: Cf,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error>;

    /// The last key of a column family, if it has any.
    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>, Error>;

    /// The value of a counter of [`Cf::Counters`] (0 if never added to).
    fn counter(&self, key: &[u8]) -> Result<i64, Error>;

    /// A new, empty batch.
    fn batch(&self) -> Self::Batch<'_>;

    /// Whether other processes (replicas of the vault) write to this store too:
    /// then nothing read is known to stay as read without a batch's
    /// [expectations](WriteSet::expect), and no cache of stored state is kept.
    fn shared(&self) -> bool {
        false
    }

    /// Writes `batch` atomically, synced as the vault's [`Durability`] says.
    fn write(&self, batch: Self::Batch<'_>) -> Result<(), Error>;

    /// Writes `batch` atomically with a synced log, whatever the durability.
    fn write_synced(&self, batch: Self::Batch<'_>) -> Result<(), Error>;

    /// Refuses every later write and log sync with a [`StorageError`](crate::error::StorageError)
    /// naming `cause`, until the store is reopened. Called by the store itself when a
    /// write, a sync or a purge's flush fails (after a failed fsync, a later one would not prove
    /// that the earlier data reached the disk), and by the vault when its header
    /// could not be written.
    fn refuse_writes(&self, cause: &Error);

    /// Whether a synced write is under way (a write now could wait for its sync).
    fn syncing(&self) -> bool;

    /// Makes every write that returned before this call durable, whether it was
    /// synced or not: the barrier that unsynced writes (awaited tokenizations,
    /// staged read events, [`Durability::Relaxed`]) are acknowledged after.
    fn sync_wal(&self) -> Result<(), Error>;

    /// `batch`, no longer tied to the store.
    fn detach(batch: Self::Batch<'_>) -> Self::Detached;

    /// Adds a put to a detached batch.
    fn put_detached(&self, batch: &mut Self::Detached, cf: Cf, key: &[u8], value: &[u8]);

    /// Detached batches joined into one, in order.
    fn join(batches: Vec<Self::Detached>) -> Self::Detached;

    /// Writes a detached batch atomically, with a synced log or not as `sync` says.
    fn write_detached(&self, batch: Self::Detached, sync: bool) -> Result<(), Error>;

    /// The engine's estimate of the keys in a column family (cheap: no scan).
    fn estimate_keys(&self, cf: Cf) -> u64;

    /// What the engine has done, for tests and metrics.
    fn counters(&self) -> StorageCounters;

    /// Writes a consistent copy of the store, as of one instant, into `dir` (which
    /// must not exist). Where `dir` is on the store's filesystem, table files are
    /// hard links: a copy costs little and shares unchanged files with the store and
    /// with earlier copies. The copy opens as a store of its own. (Backups are made of
    /// these; the copy holds erased subjects' bytes that were not purged yet.)
    fn checkpoint(&self, dir: &Path) -> Result<(), Error>;

    /// Makes physical, within `scope`, the deletes and overwrites already written
    /// and the versions the store's [`RetireRule`] retires: once this returns
    /// `true`, no file of the store holds a replaced or retired version of a key in
    /// `scope`, and no log older than the call remains. Its work follows the scope,
    /// not the size of the store. `false` when that could not be verified within
    /// `timeout` (something pinned an old file); the caller retries later.
    fn purge_files(&self, scope: &PurgeScope, timeout: Duration) -> Result<bool, Error>;
}

/// What the vault's retirement rule says of one stored version.
pub(crate) enum Retired {
    Keep,
    Remove,
    /// Keep the key with this value instead.
    Replace(Vec<u8>),
}

/// The vault's rule for versions that a purge retires, given to the store at open
/// and applied to every stored version the engine rewrites (on RocksDB: in every
/// compaction, as a compaction filter). It must keep whatever is not being purged.
pub(crate) type RetireRule = Arc<dyn Fn(Cf, &[u8], &[u8]) -> Retired + Send + Sync>;

/// A retirement rule that retires nothing.
#[cfg(test)]
pub(crate) fn retire_nothing() -> RetireRule {
    Arc::new(|_, _, _| Retired::Keep)
}

/// Where a purge makes versions physical: whole column families, or inclusive key
/// ranges of them. (No `Debug`: its keys are subject hashes and storage ids.)
#[derive(Default, Clone)]
pub(crate) struct PurgeScope {
    pub(crate) spans: Vec<Span>,
    /// No subject is being retired: the rows were written as they must end (an
    /// expiry's stubs), and only their old versions are to go. (RocksDB rewrites
    /// the scope either way; PostgreSQL then skips reading it through the rule.)
    pub(crate) nothing_doomed: bool,
}

/// One column family of a [`PurgeScope`], all of it or one key range.
#[derive(Clone)]
pub(crate) struct Span {
    pub(crate) cf: Cf,
    /// The first and last key (inclusive); `None` for the whole family.
    pub(crate) range: Option<(Vec<u8>, Vec<u8>)>,
}

impl PurgeScope {
    /// Every subject-data family, whole.
    pub(crate) fn everything() -> PurgeScope {
        let mut scope = PurgeScope::default();
        for cf in Cf::SUBJECT_DATA {
            scope.whole(cf);
        }
        scope
    }

    pub(crate) fn whole(&mut self, cf: Cf) {
        self.spans.push(Span { cf, range: None });
    }

    /// Whether every subject-data family is in the scope whole.
    pub(crate) fn is_whole(&self) -> bool {
        Cf::SUBJECT_DATA.iter().all(|&cf| {
            self.spans
                .iter()
                .any(|span| span.cf == cf && span.range.is_none())
        })
    }

    /// One key.
    pub(crate) fn key(&mut self, cf: Cf, key: &[u8]) {
        self.range(cf, key, key);
    }

    /// Every key from `first` to `last`.
    pub(crate) fn range(&mut self, cf: Cf, first: &[u8], last: &[u8]) {
        self.spans.push(Span {
            cf,
            range: Some((first.to_vec(), last.to_vec())),
        });
    }

    /// Every key that starts with `prefix` (and is at most 64 bytes longer).
    pub(crate) fn prefix(&mut self, cf: Cf, prefix: &[u8]) {
        let mut last = prefix.to_vec();
        last.extend_from_slice(&[u8::MAX; 64]);
        self.range(cf, prefix, &last);
    }
}

/// The writes of one batch.
pub(crate) trait WriteSet {
    /// Sets `key` to `value`.
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]);
    /// Removes `key`.
    fn delete(&mut self, cf: Cf, key: &[u8]);
    /// Adds `delta` to the counter `key` of [`Cf::Counters`].
    fn add(&mut self, key: &[u8], delta: i64);
    /// Writes the batch only if `key` still holds `value` (`None`: is absent) when
    /// it commits; see the module's documentation. Ignored by a store that is not
    /// [shared](Storage::shared). A key expected absent should be written by the
    /// same batch: only then is the check exact (no row to lock, but an insert that
    /// fails if another writer got there first).
    fn expect(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>);
}

/// Calls the same method of whichever engine the store is.
macro_rules! each {
    ($store:expr, $s:ident => $e:expr) => {
        match $store {
            Store::Rocks($s) => $e,
            #[cfg(feature = "postgres")]
            Store::Postgres($s) => $e,
        }
    };
}

impl Store {
    /// Writes, as one atomic transaction, the batch `build` makes of the current
    /// value of `key` and of `batches` (each with whether its expectations hold),
    /// with no other writer changing `key` from that read to the commit: the audit
    /// journal numbers its events after the head it reads here. On RocksDB the vault
    /// is the one writer and the journal's leader the one caller; on PostgreSQL the
    /// row is locked.
    pub(crate) fn write_locked(
        &self,
        cf: Cf,
        key: &[u8],
        batches: Vec<RawBatch>,
        sync: bool,
        build: impl FnOnce(Option<Vec<u8>>, Vec<(RawBatch, bool)>) -> Result<RawBatch, Error>,
    ) -> Result<(), Error> {
        match self {
            Store::Rocks(s) => {
                let current = s.get(cf, key)?;
                let batch = build(current, batches.into_iter().map(|b| (b, true)).collect())?;
                self.write_detached(batch, sync)
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => s.write_locked(
                cf,
                key,
                batches.into_iter().map(pg::Ops::from_raw).collect(),
                sync,
                |current, batches| {
                    let batches = batches
                        .into_iter()
                        .map(|(ops, holds)| (RawBatch::Postgres(ops), holds))
                        .collect();
                    build(current, batches).map(pg::Ops::from_raw)
                },
            ),
        }
    }

    /// [`WriteSet::expect`] on a detached batch (nothing on RocksDB).
    pub(crate) fn expect_detached(batch: &mut RawBatch, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        #[cfg(feature = "postgres")]
        if let RawBatch::Postgres(ops) = batch {
            ops.expect(cf, key, value);
        }
        #[cfg(not(feature = "postgres"))]
        let _ = (batch, cf, key, value);
    }

    /// The RocksDB store, for tests of its behaviour.
    #[cfg(test)]
    pub(crate) fn rocks(&self) -> &RocksStore {
        match self {
            Store::Rocks(s) => s,
            #[cfg(feature = "postgres")]
            Store::Postgres(_) => panic!("a RocksDB test on another store"),
        }
    }
}

impl Storage for Store {
    type Batch<'a> = Batch<'a>;
    type Detached = RawBatch;

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        each!(self, s => s.get(cf, key))
    }

    fn with_value<T>(
        &self,
        cf: Cf,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T, Error> {
        each!(self, s => s.with_value(cf, key, f))
    }

    fn multi_get<K: AsRef<[u8]>>(&self, cf: Cf, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        each!(self, s => s.multi_get(cf, keys))
    }

    fn scan_prefix_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        each!(self, s => s.scan_prefix_from(cf, prefix, from, f))
    }

    fn scan_after(
        &self,
        cf: Cf,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        each!(self, s => s.scan_after(cf, after, limit))
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>, Error> {
        each!(self, s => s.last_key(cf))
    }

    fn counter(&self, key: &[u8]) -> Result<i64, Error> {
        each!(self, s => s.counter(key))
    }

    fn batch(&self) -> Batch<'_> {
        match self {
            Store::Rocks(s) => Batch::Rocks(s.batch()),
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => Batch::Postgres(s.batch()),
        }
    }

    fn shared(&self) -> bool {
        each!(self, s => s.shared())
    }

    fn write(&self, batch: Batch<'_>) -> Result<(), Error> {
        match (self, batch) {
            (Store::Rocks(s), Batch::Rocks(b)) => s.write(b),
            #[cfg(feature = "postgres")]
            (Store::Postgres(s), Batch::Postgres(b)) => s.write(b),
            #[cfg(feature = "postgres")]
            _ => Err(Error::Integrity),
        }
    }

    fn write_synced(&self, batch: Batch<'_>) -> Result<(), Error> {
        match (self, batch) {
            (Store::Rocks(s), Batch::Rocks(b)) => s.write_synced(b),
            #[cfg(feature = "postgres")]
            (Store::Postgres(s), Batch::Postgres(b)) => s.write_synced(b),
            #[cfg(feature = "postgres")]
            _ => Err(Error::Integrity),
        }
    }

    fn refuse_writes(&self, cause: &Error) {
        each!(self, s => s.refuse_writes(cause))
    }

    fn syncing(&self) -> bool {
        each!(self, s => s.syncing())
    }

    fn sync_wal(&self) -> Result<(), Error> {
        each!(self, s => s.sync_wal())
    }

    fn detach(batch: Batch<'_>) -> RawBatch {
        match batch {
            Batch::Rocks(b) => RawBatch::Rocks(RocksStore::detach(b)),
            #[cfg(feature = "postgres")]
            Batch::Postgres(b) => RawBatch::Postgres(b),
        }
    }

    fn put_detached(&self, batch: &mut RawBatch, cf: Cf, key: &[u8], value: &[u8]) {
        match self {
            Store::Rocks(s) => {
                if !matches!(batch, RawBatch::Rocks(_)) {
                    *batch = RawBatch::Rocks(rocks::RawBatch::default());
                }
                if let RawBatch::Rocks(b) = batch {
                    s.put_detached(b, cf, key, value);
                }
            }
            #[cfg(feature = "postgres")]
            Store::Postgres(s) => {
                if !matches!(batch, RawBatch::Postgres(_)) {
                    *batch = RawBatch::Postgres(pg::Ops::default());
                }
                if let RawBatch::Postgres(b) = batch {
                    s.put_detached(b, cf, key, value);
                }
            }
        }
    }

    fn join(batches: Vec<RawBatch>) -> RawBatch {
        let mut rocks = Vec::new();
        #[cfg(feature = "postgres")]
        let mut pg = Vec::new();
        for batch in batches {
            match batch {
                RawBatch::Empty => {}
                RawBatch::Rocks(b) => rocks.push(b),
                #[cfg(feature = "postgres")]
                RawBatch::Postgres(b) => pg.push(b),
            }
        }
        #[cfg(feature = "postgres")]
        if !pg.is_empty() {
            return RawBatch::Postgres(PgStore::join(pg));
        }
        if rocks.is_empty() {
            RawBatch::Empty
        } else {
            RawBatch::Rocks(RocksStore::join(rocks))
        }
    }

    fn write_detached(&self, batch: RawBatch, sync: bool) -> Result<(), Error> {
        match (self, batch) {
            (Store::Rocks(s), RawBatch::Rocks(b)) => s.write_detached(b, sync),
            (Store::Rocks(s), RawBatch::Empty) => {
                s.write_detached(rocks::RawBatch::default(), sync)
            }
            #[cfg(feature = "postgres")]
            (Store::Postgres(s), RawBatch::Postgres(b)) => s.write_detached(b, sync),
            #[cfg(feature = "postgres")]
            (Store::Postgres(s), RawBatch::Empty) => s.write_detached(pg::Ops::default(), sync),
            #[cfg(feature = "postgres")]
            _ => Err(Error::Integrity),
        }
    }

    fn estimate_keys(&self, cf: Cf) -> u64 {
        each!(self, s => s.estimate_keys(cf))
    }

    fn counters(&self) -> StorageCounters {
        each!(self, s => s.counters())
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), Error> {
        each!(self, s => s.checkpoint(dir))
    }

    fn purge_files(&self, scope: &PurgeScope, timeout: Duration) -> Result<bool, Error> {
        each!(self, s => s.purge_files(scope, timeout))
    }
}

impl WriteSet for Batch<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        match self {
            Batch::Rocks(b) => b.put(cf, key, value),
            #[cfg(feature = "postgres")]
            Batch::Postgres(b) => b.put(cf, key, value),
        }
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        match self {
            Batch::Rocks(b) => b.delete(cf, key),
            #[cfg(feature = "postgres")]
            Batch::Postgres(b) => b.delete(cf, key),
        }
    }

    fn add(&mut self, key: &[u8], delta: i64) {
        match self {
            Batch::Rocks(b) => b.add(key, delta),
            #[cfg(feature = "postgres")]
            Batch::Postgres(b) => b.add(key, delta),
        }
    }

    #[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
    fn expect(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        match self {
            Batch::Rocks(_) => {}
            #[cfg(feature = "postgres")]
            Batch::Postgres(b) => b.expect(cf, key, value),
        }
    }
}
