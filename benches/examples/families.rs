//! Raw RocksDB batches of a tokenization's shape, written into one column family (the
//! benchmarks' raw baseline: [`WriteShape`] into [`raw_db`]) or into six laid out like
//! the vault's (`records`, `index`, `subjects`, `audit`, `audit_index`, `meta`, with
//! their memtable sizes and the raw baseline's other options): whether the
//! one-family baseline is cheaper or dearer than the vault's layout allows. Empty
//! databases, unsynced writes, the baseline's constant values, one thread; prints the
//! time per call over the second half.
//!
//! ```sh
//! cargo build --release -p vault-benches --example families
//! target/release/examples/families one 1000000
//! target/release/examples/families six 1000000
//! ```

use std::time::Instant;

use vault_benches::{Pick, WriteShape, raw_db, raw_options};
use vault_core::DEFAULT_BLOCK_CACHE;
use vault_core::internal::{SCATTERED_WRITE_BUFFER, SMALL_ENTRY_WRITE_BUFFER};

/// The raw baseline's options with a memtable of `bytes`, and a memtable bloom
/// filter of `prefix`-byte prefixes where the vault scans by prefix.
fn family(bytes: usize, prefix: Option<usize>) -> rocksdb::Options {
    let mut o = raw_options(DEFAULT_BLOCK_CACHE);
    o.set_write_buffer_size(bytes);
    if let Some(p) = prefix {
        o.set_prefix_extractor(rocksdb::SliceTransform::create_fixed_prefix(p));
        o.set_memtable_prefix_bloom_ratio(0.33);
        o.set_memtable_whole_key_filtering(true);
    }
    o
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let calls: u64 = std::env::args()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let six = mode == "six";
    let dir = tempfile::tempdir().expect("tmp");
    let db = if six {
        let mut opts = raw_options(DEFAULT_BLOCK_CACHE);
        opts.create_missing_column_families(true);
        let small = SMALL_ENTRY_WRITE_BUFFER;
        let cfs = [
            ("records", family(SCATTERED_WRITE_BUFFER, None)),
            ("index", family(small, Some(16))),
            ("subjects", family(small, None)),
            ("audit", family(64 << 20, None)),
            ("audit_index", family(small, Some(16))),
            ("meta", family(64 << 20, None)),
        ]
        .map(|(name, o)| rocksdb::ColumnFamilyDescriptor::new(name, o));
        rocksdb::DB::open_cf_descriptors(&opts, dir.path(), cfs).expect("open")
    } else {
        raw_db(dir.path())
    };
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(false);
    // A tokenization writes 6 keys and ~513 bytes (the vault's counters); the six
    // families' keys and values below add up to the same.
    let shape = WriteShape {
        keys: 6,
        bytes: 513,
    };
    let value = [0x5a_u8; 175];
    let mut pick = Pick::new(88172645463325252);
    let subjects: Vec<[u8; 32]> = (0..100_000)
        .map(|_| {
            let mut k = [0u8; 32];
            pick.fill(&mut k);
            k
        })
        .collect();
    let mut t = Instant::now();
    for call in 0..2 * calls {
        if call == calls {
            t = Instant::now();
        }
        let batch = if six {
            // The vault's keys: a random token id, the subject's sid and hash, the
            // audit sequence (in order) and the checkpoint (one key, overwritten).
            let cf = |n| db.cf_handle(n).expect("cf");
            let s = &subjects[pick.below(subjects.len())];
            let mut id = [0u8; 16];
            pick.fill(&mut id);
            let mut b = rocksdb::WriteBatch::default();
            b.put_cf(&cf("records"), id, value);
            let mut index = [0u8; 32];
            index[..16].copy_from_slice(&s[..16]);
            index[16..].copy_from_slice(&id);
            b.put_cf(&cf("index"), index, b"");
            b.put_cf(&cf("subjects"), s, &value[..60]);
            b.put_cf(&cf("audit"), call.to_be_bytes(), &value[..90]);
            let mut audit_index = [0u8; 24];
            audit_index[..16].copy_from_slice(&s[16..]);
            audit_index[16..].copy_from_slice(&call.to_be_bytes());
            b.put_cf(&cf("audit_index"), audit_index, b"");
            b.put_cf(&cf("meta"), b"audit/checkpoint", &value[..60]);
            b
        } else {
            shape.batch(call)
        };
        db.write_opt(batch, &wo).expect("write");
    }
    println!(
        "{mode}: {:.2} us a call",
        t.elapsed().as_secs_f64() * 1e6 / calls as f64
    );
}
