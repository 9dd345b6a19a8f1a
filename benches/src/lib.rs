//! Benchmarks of the vault against the baselines they are judged by: raw RocksDB with
//! the vault's own options (in process, `benches/core.rs`), and a bare axum server over
//! the same TLS stack and PostgreSQL + pgcrypto (`benches/http.rs`). `bench-report`
//! turns the results into `BENCHMARKS.md`.

use std::path::Path;

/// Raw RocksDB with the options the vault gives its own column families (bloom
/// filter, block cache, compression), so that a raw operation is the same storage
/// work the vault does, minus the vault.
pub fn raw_db(dir: &Path) -> rocksdb::DB {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    opts.set_max_background_jobs(2);
    opts.set_bytes_per_sync(1 << 20);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_bottommost_compression_type(rocksdb::DBCompressionType::Lz4);
    let cache = rocksdb::Cache::new_lru_cache(64 << 20);
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&cache);
    table.set_bloom_filter(10.0, false);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    opts.set_block_based_table_factory(&table);
    rocksdb::DB::open(&opts, dir).expect("open the raw baseline database")
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
    /// A raw batch of `self.keys` entries and `self.bytes` bytes, its keys made
    /// unique by `n` (16-byte keys, like token ids).
    pub fn batch(&self, n: u64) -> rocksdb::WriteBatch {
        let mut batch = rocksdb::WriteBatch::default();
        let keys = self.keys.max(1);
        let value_len = (self.bytes / keys).saturating_sub(16) as usize;
        let value = vec![0x5a_u8; value_len];
        for k in 0..keys {
            let mut key = [0u8; 16];
            key[..8].copy_from_slice(&n.to_be_bytes());
            key[8..].copy_from_slice(&k.to_be_bytes());
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

    /// The next index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}
