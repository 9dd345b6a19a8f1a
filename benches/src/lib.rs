//! Benchmarks of the vault against the baselines they are judged by: raw RocksDB with
//! the vault's own options (in process, `benches/core.rs`), a bare axum server over
//! the same TLS stack and PostgreSQL + pgcrypto (`benches/http.rs`), and raw
//! PostgreSQL doing the rows' work of replicas on PostgreSQL (`benches/replicas.rs`).
//! `bench-report` turns the results into `BENCHMARKS.md`.
//!
//! The HTTPS benchmarks share their harness: child processes ([`child`]), the
//! closed-loop load generator ([`load`]) and the client, servers and workload
//! ([`https`]).

use std::path::Path;

pub mod child;
pub mod https;
pub mod load;

/// The benchmarks' result type: any error, reported and the run ended.
pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Raw RocksDB with the options the vault gives its own column families (bloom
/// filter, block cache, compression, and the memtable size of `records`, the family
/// each tokenization writes its largest entry to, at a scattered key), so that a raw
/// operation is the same storage work the vault does, minus the vault: the
/// library's block cache. The raw database's one family takes every key a call
/// writes; of 4, 16 and 64 MiB memtables, 16 MiB made its writes fastest in the
/// runs recorded in benches/NOTES.md.
pub fn raw_db(dir: &Path) -> rocksdb::DB {
    raw_db_with_cache(dir, vault_core::DEFAULT_BLOCK_CACHE)
}

/// [`raw_db`] with a block cache of `cache_bytes` (the server's is bigger).
pub fn raw_db_with_cache(dir: &Path, cache_bytes: usize) -> rocksdb::DB {
    rocksdb::DB::open(&raw_options(cache_bytes), dir).expect("open the raw baseline database")
}

/// The options of [`raw_db_with_cache`].
pub fn raw_options(cache_bytes: usize) -> rocksdb::Options {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(vault_core::internal::SCATTERED_WRITE_BUFFER);
    let cache = rocksdb::Cache::new_lru_cache(cache_bytes);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(false);
    opts.set_block_based_table_factory(&table);
    opts
}

/// The size of a record as the vault stores it, for the raw baselines' records.
pub const STORED_RECORD_BYTES: usize = 200;

/// The least any vault under DESIGN.md writes per tokenization: the record (a
/// 16-byte token id and a stored record; tokens are 128 random bits, so a record
/// cannot sit under its subject's prefix) and its subject's index entry (a 32-byte
/// key, no value: purge and export find a subject's records by it, never by a full
/// scan). No audit event, record count or checkpoint, and nothing computed: a
/// floor under every design, not a vault.
pub const RECORD_AND_INDEX: WriteShape = WriteShape {
    keys: 2,
    bytes: (16 + STORED_RECORD_BYTES + 32) as u64,
};

/// Writes `n` records of the vault's stored record size (200 bytes) into a raw
/// database under random 16-byte keys, scattered like token ids and below the
/// exported subject's prefix (0xee…), in unsynced batches of 1 000; their keys, in
/// order. The values are pseudo-random bytes: the vault's records are mostly
/// ciphertext, which its LZ4 compression cannot shrink either.
pub fn load_raw_records(db: &rocksdb::DB, n: usize) -> Vec<[u8; 16]> {
    let mut pick = Pick::new(7);
    // Values from a stream of their own: the keys are those of the constant values
    // before.
    let mut values = Pick::new(11);
    let mut record = [0u8; STORED_RECORD_BYTES];
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(false);
    let mut keys = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(1000) {
        let mut batch = rocksdb::WriteBatch::default();
        for _ in 0..1000.min(n - chunk * 1000) {
            values.fill(&mut record);
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&(pick.below(usize::MAX) as u64).to_be_bytes());
            key[8..].copy_from_slice(&(keys.len() as u64).to_be_bytes());
            key[0] &= 0x7f;
            batch.put(key, record);
            keys.push(key);
        }
        db.write_opt(batch, &wo).expect("raw load");
    }
    keys
}

/// Flushes and compactions running or pending in a raw database.
pub fn raw_background_work(db: &rocksdb::DB) -> u64 {
    [
        "rocksdb.num-running-compactions",
        "rocksdb.num-running-flushes",
        "rocksdb.compaction-pending",
        "rocksdb.mem-table-flush-pending",
    ]
    .iter()
    .map(|p| db.property_int_value(*p).ok().flatten().unwrap_or(0))
    .sum()
}

/// Waits (up to two minutes) until neither the vault nor the raw database has
/// flushes or compactions running or pending, so a measurement does not share the
/// two cores with the previous group's compaction debt.
pub fn settle(vault: &vault_core::Vault, db: &rocksdb::DB) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while (vault.storage_counters().background_work > 0 || raw_background_work(db) > 0)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The shape of a vault write: how many keys and bytes it puts, measured from the
/// vault's own storage counters, so a raw baseline can write the same.
#[derive(Debug, Clone, Copy)]
pub struct WriteShape {
    /// Keys written per call.
    pub keys: u64,
    /// Bytes (keys and values) written per call.
    pub bytes: u64,
}

impl WriteShape {
    /// A raw batch of `self.keys` entries and `self.bytes` bytes under keys derived
    /// from `n`: 16 bytes, scattered over the key space like token ids (where a key
    /// lands in the memtable's skip list is most of a write's cost).
    pub fn batch(&self, n: u64) -> rocksdb::WriteBatch {
        let mut batch = rocksdb::WriteBatch::default();
        let keys = self.keys.max(1);
        let value_len = (self.bytes / keys).saturating_sub(16) as usize;
        let value = vec![0x5a_u8; value_len];
        let mut pick = Pick::new(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for k in 0..keys {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&(pick.below(usize::MAX) as u64).to_be_bytes());
            key[8..].copy_from_slice(&k.to_be_bytes());
            // Below the exported subject's prefix (0xee…) of the raw database.
            key[0] &= 0x7f;
            batch.put(key, &value);
        }
        batch
    }
}

/// A deterministic stream of pseudo-random numbers (xorshift), so runs pick the same
/// tokens without a random-number dependency.
#[derive(Debug, Clone)]
pub struct Pick(u64);

impl Pick {
    /// A stream from `seed` (not zero).
    pub fn new(seed: u64) -> Pick {
        Pick(seed.max(1))
    }

    /// Fills `bytes` from the stream: as incompressible as ciphertext.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    /// The next index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
