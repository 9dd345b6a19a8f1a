//! In-process vault operations next to raw RocksDB doing the same storage work, in
//! one criterion group each so that the report shows the ratio.
//!
//! Run with `cargo bench -p vault-benches`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vault_core::{Durability, PurgePolicy, RootKey, TokenizeRequest, Vault, VaultOptions};

const VALUE: &[u8; 100] = &[b'v'; 100];
const PRELOAD: usize = 100_000;

fn vault(dir: &std::path::Path) -> Vault {
    let opts = VaultOptions::default()
        .durability(Durability::Relaxed)
        .background_worker(false)
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)));
    Vault::open(dir, &RootKey::from_bytes(&[1; 32]).expect("key"), opts).expect("open")
}

fn raw(dir: &std::path::Path) -> rocksdb::DB {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    rocksdb::DB::open(&opts, dir).expect("open raw")
}

fn tokenize(c: &mut Criterion) {
    let mut group = c.benchmark_group("tokenize_relaxed");
    group.throughput(Throughput::Elements(1));
    let vdir = tempfile::tempdir().expect("tempdir");
    let v = vault(vdir.path());
    let mut i = 0u64;
    group.bench_function("vault", |b| {
        b.iter(|| {
            i += 1;
            black_box(
                v.tokenize(&format!("subject-{}", i % 10_000), "email", VALUE)
                    .expect("tokenize"),
            )
        })
    });
    let rdir = tempfile::tempdir().expect("tempdir");
    let db = raw(rdir.path());
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(false);
    let mut j = 0u64;
    group.bench_function("raw_writebatch", |b| {
        b.iter(|| {
            j += 1;
            let mut batch = rocksdb::WriteBatch::default();
            batch.put(j.to_be_bytes(), VALUE);
            batch.put([j.to_le_bytes(), j.to_be_bytes()].concat(), b"");
            db.write_opt(batch, &wo).expect("write");
        })
    });
    group.finish();
}

fn detokenize(c: &mut Criterion) {
    let mut group = c.benchmark_group("detokenize_warm");
    group.throughput(Throughput::Elements(1));
    let vdir = tempfile::tempdir().expect("tempdir");
    let v = vault(vdir.path());
    let names: Vec<String> = (0..PRELOAD)
        .map(|i| format!("subject-{}", i % 10_000))
        .collect();
    let mut tokens = Vec::with_capacity(PRELOAD);
    for chunk in names.chunks(1000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", VALUE))
            .collect();
        tokens.extend(
            v.tokenize_batch(&items)
                .expect("batch")
                .into_iter()
                .map(|t| t.to_string()),
        );
    }
    let mut k = 0usize;
    group.bench_function("vault", |b| {
        b.iter(|| {
            k = (k + 7919) % tokens.len();
            black_box(v.detokenize(&tokens[k]).expect("detokenize"))
        })
    });
    let rdir = tempfile::tempdir().expect("tempdir");
    let db = raw(rdir.path());
    for n in 0..PRELOAD as u64 {
        db.put(n.to_be_bytes(), VALUE).expect("put");
    }
    let mut n = 0u64;
    group.bench_function("raw_get", |b| {
        b.iter_batched(
            || {
                n = (n + 7919) % PRELOAD as u64;
                n
            },
            |n| black_box(db.get(n.to_be_bytes()).expect("get")),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = tokenize, detokenize
}
criterion_main!(benches);
