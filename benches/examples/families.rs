//! Raw RocksDB batches of a tokenization's shape, written into one column family (as
//! the benchmarks' raw baselines and the HTTPS `RocksDB alone` server write them) or
//! into six laid out like the vault's (`records`, `index`, `subjects`, `audit`,
//! `audit_index`, `meta`, with their memtable sizes): whether the one-family
//! baseline is cheaper or dearer than the vault's layout allows. Empty databases,
//! unsynced writes, one thread; prints the time per call over the second half.
//!
//! ```sh
//! cargo build --release -p vault-benches --example families
//! target/release/examples/families one 1000000
//! target/release/examples/families six 1000000
//! ```
use std::time::Instant;

/// xorshift: keys and values without a random-number dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, b: &mut [u8]) {
        for c in b.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

fn opts(wb: usize, prefix: Option<usize>) -> rocksdb::Options {
    let mut o = rocksdb::Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.set_max_background_jobs(2);
    o.set_compression_type(rocksdb::DBCompressionType::Lz4);
    o.set_write_buffer_size(wb);
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
    let dir = tempfile::tempdir().expect("tmp");
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(false);
    let mut r = Rng(88172645463325252);
    let mut val = [0u8; 512];
    let six = mode == "six";
    let db = if six {
        let cfs = vec![
            rocksdb::ColumnFamilyDescriptor::new("records", opts(16 << 20, None)),
            rocksdb::ColumnFamilyDescriptor::new("index", opts(4 << 20, Some(16))),
            rocksdb::ColumnFamilyDescriptor::new("subjects", opts(4 << 20, None)),
            rocksdb::ColumnFamilyDescriptor::new("audit", opts(64 << 20, None)),
            rocksdb::ColumnFamilyDescriptor::new("audit_index", opts(4 << 20, Some(16))),
            rocksdb::ColumnFamilyDescriptor::new("meta", opts(64 << 20, None)),
        ];
        rocksdb::DB::open_cf_descriptors(&opts(16 << 20, None), dir.path(), cfs).expect("open")
    } else {
        rocksdb::DB::open(&opts(16 << 20, None), dir.path()).expect("open")
    };
    let subjects: Vec<[u8; 32]> = (0..100_000)
        .map(|_| {
            let mut k = [0u8; 32];
            r.fill(&mut k);
            k
        })
        .collect();
    let mut t = Instant::now();
    for call in 0..2 * calls {
        if call == calls {
            t = Instant::now();
        }
        r.fill(&mut val);
        let mut b = rocksdb::WriteBatch::default();
        let s = &subjects[(r.next() % subjects.len() as u64) as usize];
        let mut id = [0u8; 16];
        r.fill(&mut id);
        if six {
            // The vault's keys: a random token id, the subject's sid and hash, the
            // audit sequence (in order) and the checkpoint (one key, overwritten).
            let cf = |n| db.cf_handle(n).expect("cf");
            b.put_cf(&cf("records"), id, &val[..175]);
            let mut ik = [0u8; 32];
            ik[..16].copy_from_slice(&s[..16]);
            ik[16..].copy_from_slice(&id);
            b.put_cf(&cf("index"), ik, b"");
            b.put_cf(&cf("subjects"), s, &val[..60]);
            b.put_cf(&cf("audit"), call.to_be_bytes(), &val[..90]);
            let mut ak = [0u8; 24];
            ak[..16].copy_from_slice(&s[16..]);
            ak[16..].copy_from_slice(&call.to_be_bytes());
            b.put_cf(&cf("audit_index"), ak, b"");
            b.put_cf(&cf("meta"), b"audit/checkpoint", &val[..60]);
        } else {
            // 6 keys, ~513 bytes: the benchmarks' `WriteShape` of a tokenization.
            for k in 0..6u64 {
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&r.next().to_be_bytes());
                key[8..].copy_from_slice(&k.to_be_bytes());
                b.put(key, &val[..69]);
            }
        }
        db.write_opt(b, &wo).expect("write");
    }
    println!(
        "{mode}: {:.2} us a call",
        t.elapsed().as_secs_f64() * 1e6 / calls as f64
    );
}
