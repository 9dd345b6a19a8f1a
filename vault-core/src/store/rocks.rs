//! The storage seam on RocksDB, embedded (the default), one column family per
//! [`Cf`]. Write options follow the vault's [`Durability`]: synced by default, which
//! RocksDB turns into group commit when writers are concurrent. The purge flushes,
//! compacts and then checks the directory itself (see `purge_files`).
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rocksdb::checkpoint::Checkpoint;
use rocksdb::compaction_filter::{CompactionFilter, Decision};
use rocksdb::compaction_filter_factory::{CompactionFilterContext, CompactionFilterFactory};
use rocksdb::statistics::StatsLevel;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamily,
    ColumnFamilyDescriptor, CompactOptions, DB, DBCompressionType, Direction, FlushOptions,
    IteratorMode, LogLevel, MergeOperands, Options, ReadOptions, SliceTransform,
    WaitForCompactOptions, WriteBatch, WriteOptions,
};

use super::{
    Cf, KeyValue, PurgeScope, RetireRule, Retired, Span, Storage, StorageCounters, StoreOptions,
    WriteSet, prefix_upper_bound,
};
use crate::error::{Error, StorageError};
use crate::failpoints;
use crate::options::{Durability, SCATTERED_WRITE_BUFFER, SMALL_ENTRY_WRITE_BUFFER};

impl Cf {
    /// Whether point reads or scans of this family look for keys that are mostly not
    /// in the memtable (they live in the table files): such reads check a bloom
    /// filter of the memtable's keys (and prefixes) before searching its skip list.
    /// Small or sequentially read families go without (each filter is 2 % of the
    /// write buffer).
    fn memtable_bloom(self) -> bool {
        matches!(
            self,
            Cf::Subjects | Cf::Keys | Cf::Records | Cf::Index | Cf::Consents | Cf::AuditIndex
        )
    }

    /// The memtable size of a family every tokenization writes at a scattered key
    /// ([`SCATTERED_WRITE_BUFFER`], or [`SMALL_ENTRY_WRITE_BUFFER`] where its
    /// entries are tens of bytes); `None` for RocksDB's 64 MiB.
    fn write_buffer(self) -> Option<usize> {
        match self {
            Cf::Records => Some(SCATTERED_WRITE_BUFFER),
            Cf::Index | Cf::Subjects | Cf::AuditIndex => Some(SMALL_ENTRY_WRITE_BUFFER),
            _ => None,
        }
    }

    /// The size of this family's table files: a purge rewrites the files that hold
    /// an erased subject's ranges, so subject data lives in small ones (RocksDB's
    /// 64 MiB made a purge of ten records rewrite 130 MB at two million records).
    /// `None` for RocksDB's default.
    fn table_file_size(self) -> Option<u64> {
        match self {
            Cf::Records | Cf::Consents => Some(8 << 20),
            // Small entries: a file of them is many keys for the filter to judge.
            Cf::Index | Cf::Keys | Cf::Subjects => Some(2 << 20),
            _ => None,
        }
    }

    /// The length of the prefix this family's keys are scanned by (a storage id or
    /// an audit reference), for families read only by such scans and point gets.
    /// RocksDB keeps bloom filters of these prefixes, so that a scan skips the
    /// memtables and files that hold none of a subject's keys.
    fn scan_prefix_len(self) -> Option<usize> {
        match self {
            Cf::Index | Cf::Consents | Cf::AuditIndex => Some(16),
            _ => None,
        }
    }
}

const PURGE_MARKER: &[u8] = b"purge/marker";
/// Above this many key ranges in one family, a purge compacts the whole family:
/// each range costs a compaction of the files that hold it, and a whole-family
/// compaction rewrites each file once.
const MAX_PURGE_RANGES: usize = 64;
/// A new MANIFEST at every version edit (flush, compaction): an older MANIFEST keeps
/// the smallest and largest key of each table file it lists, which can be subject
/// hashes. Rewriting it costs a few KiB per edit at the vault's file counts.
/// (`max_manifest_space_amp_pct` is not reachable through a typed setter.)
const MANIFEST_OPTIONS: &str = "max_manifest_file_size=0;max_manifest_space_amp_pct=0";

/// Size of a write batch's header in its representation (RocksDB's WAL record
/// format): an 8-byte sequence number and a 4-byte little-endian record count.
const BATCH_HEADER: usize = 12;

/// Size of a memtable's bloom filter, as a share of the write buffer: 1.3 MiB of a
/// 64 MiB one, 0.3 MiB of a 16 MiB one ([`SCATTERED_WRITE_BUFFER`]), 80 KiB of a
/// 4 MiB one ([`SMALL_ENTRY_WRITE_BUFFER`]): about 10 bits per `index` entry (of
/// ~60 bytes in the memtable), shared by its prefix and its whole key; tens per
/// key in the families of bigger entries.
const MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// A batch detached from the store (no borrow of it), so the audit journal can hold
/// callers' batches in its queue, add to them with [`Store::put_raw`], join them
/// with [`concat_batches`] and write them with [`Store::write_raw`]. Opaque: the
/// engine's type stays in this module.
#[derive(Default)]
pub(crate) struct RawBatch(WriteBatch);

/// Joins engine batches into one, in order, as RocksDB's own `WriteBatch` append
/// does: one header whose count is the sum, then every batch's records.
fn concat_batches(mut batches: Vec<RawBatch>) -> RawBatch {
    if batches.len() == 1 {
        return batches.pop().unwrap_or_default();
    }
    let records: usize = batches
        .iter()
        .map(|b| b.0.data().len().saturating_sub(BATCH_HEADER))
        .sum();
    let count: usize = batches.iter().map(|b| b.0.len()).sum();
    let mut rep = Vec::with_capacity(BATCH_HEADER + records);
    rep.extend_from_slice(&[0u8; 8]);
    rep.extend_from_slice(&(count as u32).to_le_bytes());
    for b in &batches {
        rep.extend_from_slice(b.0.data().get(BATCH_HEADER..).unwrap_or_default());
    }
    RawBatch(WriteBatch::from_data(&rep))
}

/// RocksDB's error as the vault's: its message names files and states, never
/// stored values. (No `From`: RocksDB's types stay out of the public API.)
fn engine(e: rocksdb::Error) -> Error {
    Error::Storage(StorageError(e.into_string()))
}

pub(crate) struct Store {
    db: DB,
    opts: Options,
    write: WriteOptions,
    /// Whether `write` syncs.
    sync_by_default: bool,
    /// Synced writes under way: a write that starts meanwhile may join their group
    /// and wait for their sync.
    syncing: AtomicUsize,
    dir: PathBuf,
    /// Why a write, a log sync or a purge's flush failed, once one has: no write
    /// is made after it (see [`Storage::refuse_writes`]).
    failed: std::sync::OnceLock<String>,
    /// Held by a test to stand for a slow disk: a WAL sync waits until it is free.
    #[cfg(test)]
    slow_disk: std::sync::Mutex<()>,
}

/// Counts a synced write as under way until dropped.
struct Syncing<'a>(&'a AtomicUsize);

impl<'a> Syncing<'a> {
    fn start(count: &'a AtomicUsize) -> Syncing<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Syncing(count)
    }
}

impl Drop for Syncing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn add_i64(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut total = existing.map(decode_i64).unwrap_or(0);
    for op in operands {
        total = total.wrapping_add(decode_i64(op));
    }
    Some(total.to_le_bytes().to_vec())
}

fn decode_i64(bytes: &[u8]) -> i64 {
    bytes.try_into().map(i64::from_le_bytes).unwrap_or(0)
}

impl Store {
    /// Opens the database in `dir`; creates it (and its column families) if `create`.
    /// `retire` is applied to the subject-data families' versions in every
    /// compaction ([`Storage::purge_files`]).
    pub(crate) fn open(
        dir: &Path,
        create: bool,
        so: StoreOptions,
        retire: RetireRule,
    ) -> Result<Store, Error> {
        let mut opts = Options::default()
            .get_options_from_string(MANIFEST_OPTIONS)
            .map_err(engine)?;
        // At info level RocksDB's LOG prints the bounds of every manual compaction,
        // and the purge's bounds are subject hashes and storage ids.
        opts.set_log_level(LogLevel::Warn);
        opts.create_if_missing(create);
        // Families added by newer versions are created in existing vaults too.
        opts.create_missing_column_families(true);
        // Erasure depends on these: no recycled or archived WALs (ERASURE.md).
        opts.set_recycle_log_file_num(0);
        opts.set_wal_ttl_seconds(0);
        opts.set_wal_size_limit_mb(0);
        opts.set_keep_log_file_num(4);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        if so.statistics {
            opts.enable_statistics();
            // Counters only: the histograms time every get and write (two clock
            // reads each), and nothing reads them.
            opts.set_statistics_level(StatsLevel::ExceptHistogramOrTimers);
        }
        let cache = Cache::new_lru_cache(so.block_cache_bytes);
        let compression = if so.compression {
            DBCompressionType::Lz4
        } else {
            DBCompressionType::None
        };
        let cfs = Cf::ALL.iter().map(|&cf| {
            let mut o = Options::default();
            o.set_compression_type(compression);
            o.set_bottommost_compression_type(compression);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            // Index and filter blocks are charged to the block cache, so memory stays
            // within it however large the vault grows (held by the table readers
            // instead, they grew by about 50 MB a million records). Partitioned in
            // 4 KiB pieces under a pinned top level: an evicted piece costs one small
            // read, where an evicted whole index made a random get reload a
            // megabyte (180 µs instead of 9, measured).
            table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
            table.set_partition_filters(true);
            table.set_metadata_block_size(4096);
            table.set_cache_index_and_filter_blocks(true);
            table.set_cache_index_and_filter_blocks_with_high_priority(true);
            table.set_pin_top_level_index_and_filter(true);
            table.set_pin_l0_filter_and_index_blocks_in_cache(true);
            o.set_block_based_table_factory(&table);
            if let Some(bytes) = cf.write_buffer() {
                o.set_write_buffer_size(bytes);
            }
            if let Some(bytes) = cf.table_file_size() {
                o.set_target_file_size_base(bytes);
            }
            if cf == Cf::Records {
                o.set_optimize_filters_for_hits(true);
            }
            if cf.memtable_bloom() {
                o.set_memtable_prefix_bloom_ratio(MEMTABLE_BLOOM_RATIO);
                o.set_memtable_whole_key_filtering(true);
            }
            if cf == Cf::Counters {
                o.set_merge_operator_associative("add_i64", add_i64);
            }
            if let Some(len) = cf.scan_prefix_len() {
                o.set_prefix_extractor(SliceTransform::create_fixed_prefix(len));
            }
            if Cf::SUBJECT_DATA.contains(&cf) {
                o.set_compaction_filter_factory(RetireFilters {
                    cf,
                    rule: retire.clone(),
                    name: CString::new(format!("vault-retire-{}", cf.name()))
                        .expect("family names have no NUL"),
                });
            }
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(engine)?;
        let mut write = WriteOptions::default();
        write.set_sync(so.durability == Durability::Synced);
        Ok(Store {
            db,
            opts,
            write,
            sync_by_default: so.durability == Durability::Synced,
            syncing: AtomicUsize::new(0),
            dir: dir.to_path_buf(),
            failed: std::sync::OnceLock::new(),
            #[cfg(test)]
            slow_disk: std::sync::Mutex::default(),
        })
    }

    fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every column family in `Cf::ALL` is opened (or the open fails), so the handle exists.
        self.db
            .cf_handle(cf.name())
            .expect("column family opened with the database")
    }

    /// Counts a synced write as under way until the value is dropped, for tests of
    /// callers that must not wait for one.
    #[cfg(test)]
    pub(crate) fn pretend_syncing(&self) -> impl Drop + '_ {
        Syncing::start(&self.syncing)
    }

    /// An integer property of a column family (0 if RocksDB has none to give).
    fn property(&self, cf: Cf, name: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Background errors (failed flushes and compactions) since the store opened.
    fn background_errors(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.background-errors")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Flushes and compactions running, and column families waiting for one.
    fn background_work(&self) -> u64 {
        let db_wide = |p: &str| self.db.property_int_value(p).ok().flatten().unwrap_or(0);
        let pending: u64 = Cf::ALL
            .iter()
            .map(|&cf| {
                [
                    "rocksdb.compaction-pending",
                    "rocksdb.mem-table-flush-pending",
                ]
                .iter()
                .map(|p| self.property(cf, p))
                .sum::<u64>()
            })
            .sum();
        db_wide("rocksdb.num-running-compactions")
            + db_wide("rocksdb.num-running-flushes")
            + pending
    }

    /// Makes every WAL sync wait until the value is dropped, for tests that need
    /// writes to pile up behind a sync.
    #[cfg(test)]
    pub(crate) fn hold_wal_syncs(&self) -> impl Drop + '_ {
        self.slow_disk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The live table files.
    fn tables(&self) -> Result<Vec<TableFile>, Error> {
        let mut out = Vec::new();
        for file in self.db.live_files().map_err(engine)? {
            let Some(cf) = Cf::ALL
                .into_iter()
                .find(|cf| cf.name() == file.column_family_name)
            else {
                continue;
            };
            out.push(TableFile {
                number: file_number(&file.name).unwrap_or(0),
                cf,
                level: file.level,
                size: file.size as u64,
                first: file.start_key.unwrap_or_default(),
                last: file.end_key.unwrap_or_default(),
                deletions: file.num_deletions,
            });
        }
        Ok(out)
    }

    /// True when every span's compaction left none of the table files `old` that
    /// could hold its keys (see [`span_purged`]), no WAL and no MANIFEST is
    /// numbered `before` or lower, and no obsolete table file is left on disk.
    fn purged(&self, spans: &[Span], old: &[TableFile], before: u64) -> Result<bool, Error> {
        let live: HashSet<u64> = self
            .db
            .live_files()
            .map_err(engine)?
            .iter()
            .filter_map(|f| file_number(&f.name))
            .collect();
        if !spans.iter().all(|span| span_purged(span, old, &live)) {
            return Ok(false);
        }
        // What the compaction reported, as RocksDB lists the files now (the C API
        // drops a manual compaction's status): a bottom file of the keys family
        // that holds a purged key's range holds no delete marker, so neither the
        // key nor its deletion is anywhere below. (Newer files above are writes
        // made since.)
        if keys_still_marked(&self.tables()?, spans) {
            return Ok(false);
        }
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(number) = file_number(&name) {
                let obsolete_table = name.ends_with(".sst") && !live.contains(&number);
                let old_wal = name.ends_with(".log") && number <= before;
                if obsolete_table || old_wal {
                    return Ok(false);
                }
            } else if let Some(number) = name.strip_prefix("MANIFEST-")
                && number.parse::<u64>().is_ok_and(|n| n <= before)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn max_file_number(&self) -> Result<u64, Error> {
        let mut max = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let manifest = name.strip_prefix("MANIFEST-").and_then(|n| n.parse().ok());
            if let Some(n) = file_number(&name).or(manifest) {
                max = max.max(n);
            }
        }
        Ok(max)
    }

    /// Writes `batch`, unless an earlier write or sync failed; a failure here makes
    /// this store refuse every later write.
    fn apply(&self, batch: WriteBatch, opts: &WriteOptions, sync: bool) -> Result<(), Error> {
        self.writable()?;
        let result = self.apply_now(batch, opts, sync);
        if let Err(e) = &result {
            self.refuse_writes(e);
        }
        result
    }

    fn apply_now(&self, batch: WriteBatch, opts: &WriteOptions, sync: bool) -> Result<(), Error> {
        failpoints::hit(&self.dir, "write")?;
        if sync && let Err(e) = failpoints::hit(&self.dir, "sync") {
            // The batch reaches the log and its sync fails, as with an fsync error.
            self.db
                .write_opt(batch, &WriteOptions::default())
                .map_err(engine)?;
            return Err(e);
        }
        self.db.write_opt(batch, opts).map_err(engine)
    }

    /// An error once a write or sync has failed.
    fn writable(&self) -> Result<(), Error> {
        match self.failed.get() {
            None => Ok(()),
            Some(why) => Err(Error::Storage(StorageError(format!(
                "an earlier write failed ({why}): no write is made until the vault is reopened"
            )))),
        }
    }
}

impl Storage for Store {
    type Batch<'a> = Batch<'a>;
    type Detached = RawBatch;

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.with_value(cf, key, |v| v.map(<[u8]>::to_vec))
    }

    fn with_value<T>(
        &self,
        cf: Cf,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T, Error> {
        let value = self.db.get_pinned_cf(self.cf(cf), key).map_err(engine)?;
        Ok(f(value.as_deref()))
    }

    fn multi_get<K: AsRef<[u8]>>(&self, cf: Cf, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        // RocksDB's multi-get sets up batches and sorts: for one key a get is cheaper.
        if let [key] = keys {
            return Ok(vec![self.get(cf, key.as_ref())?]);
        }
        let handle = self.cf(cf);
        self.db
            .batched_multi_get_cf(handle, keys.iter().map(AsRef::as_ref), false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|v| v.to_vec())).map_err(engine))
            .collect()
    }

    fn batch(&self) -> Batch<'_> {
        Batch {
            store: self,
            inner: WriteBatch::default(),
        }
    }

    fn write(&self, batch: Batch<'_>) -> Result<(), Error> {
        let _syncing = self.sync_by_default.then(|| Syncing::start(&self.syncing));
        self.apply(batch.inner, &self.write, self.sync_by_default)
    }

    fn syncing(&self) -> bool {
        self.syncing.load(Ordering::Acquire) > 0
    }

    fn put_detached(&self, batch: &mut RawBatch, cf: Cf, key: &[u8], value: &[u8]) {
        batch.0.put_cf(self.cf(cf), key, value);
    }

    fn write_detached(&self, batch: RawBatch, sync: bool) -> Result<(), Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        let _syncing = sync.then(|| Syncing::start(&self.syncing));
        self.apply(batch.0, &opts, sync)
    }

    fn write_synced(&self, batch: Batch<'_>) -> Result<(), Error> {
        let mut synced = WriteOptions::default();
        synced.set_sync(true);
        let _syncing = Syncing::start(&self.syncing);
        self.apply(batch.inner, &synced, true)
    }

    fn refuse_writes(&self, cause: &Error) {
        let _ = self.failed.set(cause.to_string());
    }

    fn scan_prefix_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        debug_assert!(from.starts_with(prefix));
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(cf), iterate_options(cf, prefix));
        it.seek(from);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(prefix) || !f(k, v)? {
                break;
            }
            it.next();
        }
        it.status().map_err(engine)
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>, Error> {
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.cf(cf), iterate_options(cf, &[]));
        it.seek_to_last();
        let key = it.key().map(<[u8]>::to_vec);
        it.status().map_err(engine)?;
        Ok(key)
    }

    fn scan_after(
        &self,
        cf: Cf,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        let mode = match after {
            Some(k) => IteratorMode::From(k, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf_opt(self.cf(cf), iterate_options(cf, &[]), mode)
        {
            let (k, v) = item.map_err(engine)?;
            if after.is_some_and(|a| a == &*k) {
                continue;
            }
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn counters(&self) -> StorageCounters {
        use rocksdb::statistics::Ticker;
        let t = |ticker| self.opts.get_ticker_count(ticker);
        StorageCounters {
            keys_read: t(Ticker::NumberKeysRead) + t(Ticker::NumberMultigetKeysRead),
            keys_written: t(Ticker::NumberKeysWritten),
            seeks: t(Ticker::NumberDbSeek),
            iterator_steps: t(Ticker::NumberDbNext) + t(Ticker::NumberDbPrev),
            wal_syncs: t(Ticker::WalFileSynced),
            bytes_written: t(Ticker::BytesWritten),
            compaction_bytes_read: t(Ticker::CompactReadBytes),
            background_work: self.background_work(),
            conflicts: 0,
            block_cache_capacity: self.property(Cf::Records, "rocksdb.block-cache-capacity"),
            block_cache_usage: self.property(Cf::Records, "rocksdb.block-cache-usage"),
        }
    }

    fn sync_wal(&self) -> Result<(), Error> {
        #[cfg(test)]
        let _disk = self.hold_wal_syncs();
        self.writable()?;
        let result = failpoints::hit(&self.dir, "sync")
            .and_then(|()| self.db.flush_wal(true).map_err(engine));
        if let Err(e) = &result {
            self.refuse_writes(e);
        }
        result
    }

    fn purge_files(&self, scope: &PurgeScope, timeout: Duration) -> Result<bool, Error> {
        // A write, so that the flush below always switches to a new WAL: with every
        // memtable empty there would be no switch, and the current WAL (numbered
        // `before` or lower) would stay live and fail the check forever.
        let mut marker = self.batch();
        marker.put(Cf::Meta, PURGE_MARKER, &[]);
        self.write(marker)?;
        let before = self.max_file_number()?;
        failpoints::hit(&self.dir, "purge.flush")?;
        let handles: Vec<&ColumnFamily> = Cf::ALL.iter().map(|&cf| self.cf(cf)).collect();
        let mut fo = FlushOptions::default();
        fo.set_wait(true);
        // A flush that fails is a failed write like any other (a full disk, say).
        self.db
            .flush_cfs_opt(&handles, &fo)
            .map_err(engine)
            .inspect_err(|e| self.refuse_writes(e))?;
        self.sync_wal()?;

        // The tables as they are now, the flushed ones included: the purge must
        // leave none of those that could hold a key of its scope.
        let old = self.tables()?;
        let spans = plan(scope, &old);
        // RocksDB's C API drops a manual compaction's status; a compaction that
        // failed is counted here.
        let errors_before = self.background_errors();
        let mut co = CompactOptions::default();
        co.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        co.set_exclusive_manual_compaction(true);
        for span in &spans {
            let handle = self.cf(span.cf);
            match &span.range {
                None => self
                    .db
                    .compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &co),
                // RocksDB starts at the first level that holds a key of the range
                // and rewrites, level by level down to the last, the files that
                // overlap it: a few files, whatever the size of the store.
                Some((first, last)) => {
                    self.db
                        .compact_range_cf_opt(handle, Some(first), Some(last), &co)
                }
            }
        }
        let mut wo = WaitForCompactOptions::default();
        wo.set_flush(true);
        wo.set_timeout(timeout.as_micros() as u64);
        // A timeout here is not fatal: the check below then fails, and the purge is
        // retried later.
        let _ = self.db.wait_for_compact(&wo);
        if self.background_errors() != errors_before {
            return Ok(false);
        }

        let deadline = Instant::now() + timeout;
        loop {
            if self.purged(&spans, &old, before)? {
                failpoints::hit(&self.dir, "purge.verified")?;
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn estimate_keys(&self, cf: Cf) -> u64 {
        self.property(cf, "rocksdb.estimate-num-keys")
    }

    fn checkpoint(&self, dir: &Path) -> Result<(), Error> {
        // Flushes the memtables first (no log size is small enough to skip it), so
        // the copy's data is in table files and its logs are short.
        Checkpoint::new(&self.db)
            .and_then(|checkpoint| checkpoint.create_checkpoint(dir))
            .map_err(engine)
    }

    fn counter(&self, key: &[u8]) -> Result<i64, Error> {
        Ok(self.get(Cf::Counters, key)?.map_or(0, |v| decode_i64(&v)))
    }

    fn detach(batch: Batch<'_>) -> RawBatch {
        RawBatch(batch.inner)
    }

    fn join(batches: Vec<RawBatch>) -> RawBatch {
        concat_batches(batches)
    }
}

/// The number in a RocksDB table or WAL file name (`/000123.sst`, `000124.log`).
fn file_number(name: &str) -> Option<u64> {
    let name = name.rsplit('/').next()?;
    let stem = name
        .strip_suffix(".sst")
        .or_else(|| name.strip_suffix(".log"))?;
    stem.parse().ok()
}

/// A live table file, as a purge sees it.
struct TableFile {
    number: u64,
    cf: Cf,
    level: i32,
    size: u64,
    first: Vec<u8>,
    last: Vec<u8>,
    /// Delete markers in the file.
    deletions: u64,
}

impl TableFile {
    fn overlaps(&self, span: &Span) -> bool {
        self.cf == span.cf
            && span
                .range
                .as_ref()
                .is_none_or(|(first, last)| self.overlaps_range(first, last))
    }

    fn overlaps_range(&self, first: &[u8], last: &[u8]) -> bool {
        self.first.as_slice() <= last && first <= self.last.as_slice()
    }
}

/// The scope as compactions: one per range, each rewriting the files below L0 that
/// overlap it (L0's span every key; RocksDB starts below them unless they hold a key
/// of the range). Ranges are not merged: a merged range would take in other
/// subjects' keys between them, and with those the newest files. A family whose
/// ranges would rewrite half of its bytes or more (a file counted once for each
/// range that rewrites it), or that has more than [`MAX_PURGE_RANGES`] of them, is
/// compacted whole, once.
fn plan(scope: &PurgeScope, old: &[TableFile]) -> Vec<Span> {
    let mut spans = Vec::new();
    for cf in Cf::ALL {
        let asked: Vec<&Span> = scope.spans.iter().filter(|s| s.cf == cf).collect();
        if asked.is_empty() {
            continue;
        }
        let ranges: Vec<&(Vec<u8>, Vec<u8>)> =
            asked.iter().filter_map(|s| s.range.as_ref()).collect();
        if ranges.len() < asked.len() || ranges.len() > MAX_PURGE_RANGES {
            spans.push(Span { cf, range: None });
            continue;
        }
        let tables: Vec<&TableFile> = old.iter().filter(|t| t.cf == cf).collect();
        let total: u64 = tables.iter().map(|t| t.size).sum();
        let rewritten: u64 = ranges
            .iter()
            .flat_map(|(first, last)| {
                tables
                    .iter()
                    .filter(move |t| t.level > 0 && t.overlaps_range(first, last))
            })
            .map(|t| t.size)
            .sum();
        if rewritten * 2 >= total {
            spans.push(Span { cf, range: None });
        } else {
            spans.extend(asked.into_iter().cloned());
        }
    }
    spans
}

/// Whether a span's compaction is done with the tables `old` (those live before
/// it) that could hold its keys. A whole family: every old table is gone. A range:
/// RocksDB compacted from the first level that held a key of it down to the last,
/// so from the shallowest level where an old overlapping table is gone, every old
/// overlapping table is gone; the old tables that overlap it above that level
/// held no key of it (that is how RocksDB chose where to start). A range no old
/// table overlaps, or whose old tables are all still there, held no key (a
/// compaction that did not run is caught by the vault's own check of what is
/// left to read).
/// Whether a bottom-level file of the keys family that holds one of `spans`'
/// ranges still holds a delete marker: its compaction did not reach the bottom.
fn keys_still_marked(tables: &[TableFile], spans: &[Span]) -> bool {
    let bottom = tables
        .iter()
        .filter(|t| t.cf == Cf::Keys)
        .map(|t| t.level)
        .max();
    tables.iter().any(|t| {
        Some(t.level) == bottom
            && t.deletions > 0
            && spans
                .iter()
                .any(|span| span.cf == Cf::Keys && t.overlaps(span))
    })
}

fn span_purged(span: &Span, old: &[TableFile], live: &HashSet<u64>) -> bool {
    let overlapping: Vec<&TableFile> = old.iter().filter(|t| t.overlaps(span)).collect();
    if overlapping.is_empty() {
        return true;
    }
    if span.range.is_none() {
        return overlapping.iter().all(|t| !live.contains(&t.number));
    }
    let Some(from) = overlapping
        .iter()
        .filter(|t| !live.contains(&t.number))
        .map(|t| t.level)
        .min()
    else {
        // Nothing was rewritten: RocksDB found no key of the range in any table
        // (another range's compaction may have taken it).
        return true;
    };
    overlapping
        .iter()
        .filter(|t| t.level >= from)
        .all(|t| !live.contains(&t.number))
}

/// The compaction filter of a subject-data family: the vault's [`RetireRule`].
struct RetireFilters {
    cf: Cf,
    rule: RetireRule,
    name: CString,
}

impl CompactionFilterFactory for RetireFilters {
    type Filter = RetireFilter;

    fn create(&mut self, _: CompactionFilterContext) -> RetireFilter {
        RetireFilter {
            cf: self.cf,
            rule: self.rule.clone(),
            name: self.name.clone(),
            replacement: Vec::new(),
        }
    }

    fn name(&self) -> &CStr {
        &self.name
    }
}

/// One compaction's filter (a compaction runs on one thread).
struct RetireFilter {
    cf: Cf,
    rule: RetireRule,
    name: CString,
    /// The last replacement value, handed to RocksDB by reference.
    replacement: Vec<u8>,
}

impl CompactionFilter for RetireFilter {
    fn filter(&mut self, _level: u32, key: &[u8], value: &[u8]) -> Decision {
        match (self.rule)(self.cf, key, value) {
            Retired::Keep => Decision::Keep,
            Retired::Remove => Decision::Remove,
            Retired::Replace(new) => {
                self.replacement = new;
                Decision::Change(replacement_ref(&self.replacement))
            }
        }
    }

    fn name(&self) -> &CStr {
        &self.name
    }
}

/// The binding's `Decision::Change` asks for a `'static` value; RocksDB's C shim
/// copies it as soon as the filter returns (`new_value->assign`, db/c.cc), before
/// the filter, which owns the buffer, runs again or is dropped.
#[allow(unsafe_code)]
fn replacement_ref(value: &[u8]) -> &'static [u8] {
    // SAFETY: see above: the reference is read only before the buffer changes.
    unsafe { std::slice::from_raw_parts(value.as_ptr(), value.len()) }
}

/// Read options for an iterator over the keys that start with `prefix` (all keys
/// for an empty one). A scan of one subject's prefix in a family with prefix
/// filters uses them; any other iteration of such a family reads in key order.
fn iterate_options(cf: Cf, prefix: &[u8]) -> ReadOptions {
    let mut ro = ReadOptions::default();
    match cf.scan_prefix_len() {
        Some(len) if len == prefix.len() => ro.set_prefix_same_as_start(true),
        Some(_) => ro.set_total_order_seek(true),
        None => {}
    }
    if let Some(upper) = prefix_upper_bound(prefix) {
        ro.set_iterate_upper_bound(upper);
    }
    ro
}

/// An atomic group of writes.
pub(crate) struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
}

impl WriteSet for Batch<'_> {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.inner.put_cf(self.store.cf(cf), key, value);
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.inner.delete_cf(self.store.cf(cf), key);
    }

    /// Adds `delta` to the counter `key` of [`Cf::Counters`].
    fn add(&mut self, key: &[u8], delta: i64) {
        self.inner
            .merge_cf(self.store.cf(Cf::Counters), key, delta.to_le_bytes());
    }

    /// The vault is the store's one writer, and its locks keep what it read.
    fn expect(&mut self, _cf: Cf, _key: &[u8], _value: Option<&[u8]>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> Result<Store, Error> {
        Store::open(
            dir,
            true,
            StoreOptions {
                durability: Durability::Synced,
                compression: false,
                statistics: true,
                block_cache_bytes: crate::options::DEFAULT_BLOCK_CACHE,
            },
            super::super::retire_nothing(),
        )
    }

    #[test]
    fn a_delete_marker_left_at_the_bottom_of_a_purged_key_range_fails_the_check() {
        let file = |level, first: u8, last: u8, deletions| TableFile {
            number: 1,
            cf: Cf::Keys,
            level,
            size: 1,
            first: vec![first; 16],
            last: vec![last; 16],
            deletions,
        };
        let mut scope = PurgeScope::default();
        scope.key(Cf::Keys, &[5; 16]);
        let spans = &scope.spans;
        assert!(keys_still_marked(&[file(6, 1, 9, 1)], spans));
        assert!(!keys_still_marked(&[file(6, 1, 9, 0)], spans));
        // Above the bottom: a write made since. Elsewhere: another key's.
        assert!(!keys_still_marked(
            &[file(0, 1, 9, 3), file(6, 1, 9, 0)],
            spans
        ));
        assert!(!keys_still_marked(&[file(6, 6, 9, 2)], spans));
    }

    #[test]
    fn a_checkpoint_is_a_store_as_of_its_instant_sharing_table_files()
    -> Result<(), Box<dyn std::error::Error>> {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir()?;
        let store = open(&tmp.path().join("live"))?;
        let mut batch = store.batch();
        batch.put(Cf::Records, b"before", b"1");
        store.write(batch)?;
        let copy = tmp.path().join("copy");
        store.checkpoint(&copy)?;
        let mut batch = store.batch();
        batch.put(Cf::Records, b"after", b"2");
        batch.delete(Cf::Records, b"before");
        store.write(batch)?;

        let mut shared = 0;
        for entry in std::fs::read_dir(&copy)? {
            let entry = entry?;
            if entry.file_name().to_string_lossy().ends_with(".sst") {
                let live = tmp.path().join("live").join(entry.file_name());
                if std::fs::metadata(&live)?.ino() == entry.metadata()?.ino() {
                    shared += 1;
                }
            }
        }
        assert!(shared > 0, "no table file is shared with the store");
        // The copy refuses to be made twice into the same place.
        assert!(store.checkpoint(&copy).is_err());
        drop(store);

        let copy = Store::open(
            &copy,
            false,
            StoreOptions {
                durability: Durability::Synced,
                compression: false,
                statistics: false,
                block_cache_bytes: crate::options::DEFAULT_BLOCK_CACHE,
            },
            super::super::retire_nothing(),
        )?;
        assert_eq!(copy.get(Cf::Records, b"before")?, Some(b"1".to_vec()));
        assert_eq!(copy.get(Cf::Records, b"after")?, None);
        Ok(())
    }

    #[test]
    fn a_vault_uses_the_block_cache_its_options_ask_for() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
        let opts = crate::VaultOptions::default()
            .background_worker(false)
            .kdf_params(crate::KdfParams::MINIMUM)
            .block_cache_bytes(5 << 20);
        let vault = crate::Vault::open(dir.path(), &crate::RootKey::from_bytes(&[7; 32])?, opts)?;
        assert_eq!(vault.storage_counters().block_cache_capacity, 5 << 20);
        Ok(())
    }

    #[test]
    fn every_family_uses_the_block_cache_asked_for() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(
            dir.path(),
            true,
            StoreOptions {
                durability: Durability::Synced,
                compression: false,
                statistics: false,
                block_cache_bytes: 3 << 20,
            },
            super::super::retire_nothing(),
        )?;
        for cf in Cf::ALL {
            let capacity = store
                .db
                .property_int_value_cf(store.cf(cf), "rocksdb.block-cache-capacity")?;
            assert_eq!(capacity, Some(3 << 20), "{}", cf.name());
        }
        Ok(())
    }

    #[test]
    fn families_written_at_scattered_keys_have_smaller_memtables()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let _store = open(dir.path())?;
        // RocksDB writes the options each family was opened with to an OPTIONS file.
        let mut newest = None;
        for entry in std::fs::read_dir(dir.path())? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.starts_with("OPTIONS-") && newest.as_ref().is_none_or(|n| name > *n) {
                newest = Some(name);
            }
        }
        let text = std::fs::read_to_string(dir.path().join(newest.ok_or("no OPTIONS file")?))?;
        let buffer_of = |cf: Cf| -> Option<usize> {
            let section = format!("[CFOptions \"{}\"]", cf.name());
            let rest = &text[text.find(&section)? + section.len()..];
            let rest = &rest[..rest.find("\n[").unwrap_or(rest.len())];
            let line = rest
                .lines()
                .find(|l| l.trim_start().starts_with("write_buffer_size="))?;
            line.trim().strip_prefix("write_buffer_size=")?.parse().ok()
        };
        for cf in Cf::ALL {
            let expected = match cf {
                Cf::Records => SCATTERED_WRITE_BUFFER,
                Cf::Index | Cf::Subjects | Cf::AuditIndex => SMALL_ENTRY_WRITE_BUFFER,
                _ => 64 << 20,
            };
            assert_eq!(buffer_of(cf), Some(expected), "{}", cf.name());
        }
        Ok(())
    }

    #[test]
    fn prefix_scan_reads_only_the_prefix() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path())?;
        let mut b = store.batch();
        for p in 0u8..4 {
            for i in 0u8..10 {
                b.put(Cf::Index, &[p, i], b"");
            }
        }
        b.put(Cf::Index, &[0xff, 0xff], b"");
        store.write(b)?;
        let before = store.counters();
        let mut seen = Vec::new();
        store.scan_prefix(Cf::Index, &[2], |k, _| {
            seen.push(k.to_vec());
            Ok(true)
        })?;
        assert_eq!(seen.len(), 10);
        assert!(seen.iter().all(|k| k[0] == 2));
        let after = store.counters();
        assert!(after.iterator_steps - before.iterator_steps <= 10);
        let mut top = 0;
        store.scan_prefix(Cf::Index, &[0xff], |_, _| {
            top += 1;
            Ok(true)
        })?;
        assert_eq!(top, 1);
        Ok(())
    }

    #[test]
    fn a_subjects_scan_finds_its_keys_in_files_and_memtables()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path())?;
        // Three subjects whose ids differ only in the last byte (1, 3, 5), their
        // keys split between a table file and the memtable, one deleted after the
        // flush.
        let key = |subject: u8, i: u8| {
            let mut k = [7u8; 32];
            k[15] = subject;
            k[31] = i;
            k
        };
        for cf in [Cf::Index, Cf::Consents, Cf::AuditIndex] {
            let mut b = store.batch();
            for subject in [1, 3, 5] {
                for i in 0..5 {
                    b.put(cf, &key(subject, i), b"");
                }
            }
            store.write(b)?;
            store.db.flush_cf(store.cf(cf))?;
            let mut b = store.batch();
            for i in 5..8 {
                b.put(cf, &key(3, i), b"");
            }
            b.delete(cf, &key(3, 0));
            store.write(b)?;
            let mut seen = Vec::new();
            store.scan_prefix(cf, &key(3, 0)[..16], |k, _| {
                seen.push(k[31]);
                Ok(true)
            })?;
            assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7], "{cf:?}");
            // Subjects with no keys: between the others' in order, and after them.
            for absent in [2, 4, 6] {
                let mut none = 0;
                store.scan_prefix(cf, &key(absent, 0)[..16], |_, _| {
                    none += 1;
                    Ok(true)
                })?;
                assert_eq!(none, 0, "{cf:?} {absent}");
            }
            // Iteration in key order still sees every subject's keys.
            let all = store.scan_after(cf, None, 100)?;
            assert_eq!(all.len(), 3 * 5 + 3 - 1);
            assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
            assert_eq!(store.last_key(cf)?, Some(key(5, 4).to_vec()));
        }
        Ok(())
    }

    #[test]
    fn concatenated_batches_apply_every_write_in_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path())?;
        let mut first = RawBatch::default();
        store.put_detached(&mut first, Cf::Records, b"a", b"1");
        store.put_detached(&mut first, Cf::Index, b"b", b"2");
        let mut second = RawBatch::default();
        store.put_detached(&mut second, Cf::Records, b"a", b"3");
        second.0.delete_cf(store.cf(Cf::Index), b"b");
        store.put_detached(&mut second, Cf::Meta, b"c", b"4");
        let joined = concat_batches(vec![first, RawBatch::default(), second]);
        assert_eq!(joined.0.len(), 5);
        store.write_detached(joined, false)?;
        assert_eq!(store.get(Cf::Records, b"a")?.as_deref(), Some(&b"3"[..]));
        assert_eq!(store.get(Cf::Index, b"b")?, None);
        assert_eq!(store.get(Cf::Meta, b"c")?.as_deref(), Some(&b"4"[..]));
        Ok(())
    }

    #[test]
    fn counters_merge_by_addition() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path())?;
        let mut b = store.batch();
        b.add(b"c", 5);
        b.add(b"c", -2);
        store.write(b)?;
        let mut b = store.batch();
        b.add(b"c", 10);
        store.write(b)?;
        assert_eq!(
            store.get(Cf::Counters, b"c")?.map(|v| decode_i64(&v)),
            Some(13)
        );
        Ok(())
    }

    #[test]
    fn scan_after_pages() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = open(dir.path())?;
        let mut b = store.batch();
        for i in 0u8..5 {
            b.put(Cf::Keys, &[i], &[i]);
        }
        store.write(b)?;
        let page = store.scan_after(Cf::Keys, None, 2)?;
        assert_eq!(
            page.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let page = store.scan_after(Cf::Keys, Some(&[1]), 10)?;
        assert_eq!(
            page.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        Ok(())
    }

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_upper_bound(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_upper_bound(&[0xff]), None);
        assert_eq!(file_number("/000123.sst"), Some(123));
        assert_eq!(file_number("000124.log"), Some(124));
        assert_eq!(file_number("MANIFEST-000005"), None);
    }
}
