//! The purge's cost against the size of the vault, in one run: erase + purge of one
//! subject of 10 records in a vault of `VAULT_PURGE_SMALL` records (default
//! 100 000) and in one of `VAULT_PURGE_LARGE` (default 2 000 000), 10 records per
//! subject, 100-byte values; then the purge throughput of a batch of 1 000 erased
//! subjects (10 000 records) in the larger one.
//!
//! The erased subjects were loaded with the vault and settled into its files, as
//! the people a company is asked to forget usually are; `fresh_subject` erases one
//! whose records are still in the memtable and the newest files.
//!
//! Run with `cargo bench -p vault-benches --bench purge`.

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group};
use vault_core::{Durability, PurgePolicy, RootKey, TokenizeRequest, Vault, VaultOptions};

const VALUE: &[u8; 100] = &[b'v'; 100];
const PER_SUBJECT: usize = 10;
const BATCH_SUBJECTS: usize = 1_000;

fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn options(durability: Durability) -> VaultOptions {
    VaultOptions::default()
        .durability(durability)
        .background_worker(false)
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)))
        .statistics(true)
}

fn open(dir: &Path, durability: Durability) -> Vault {
    let root = RootKey::from_bytes(&[1; 32]).expect("a 32-byte key");
    Vault::open(dir, &root, options(durability)).expect("open the vault")
}

fn subject(i: usize) -> String {
    format!("subject-{i:08}")
}

/// A vault of `records` records, loaded and settled (flushed, compacted whole).
fn load(dir: &Path, records: usize) {
    let started = Instant::now();
    let vault = open(dir, Durability::Relaxed);
    let names: Vec<String> = (0..records).map(|i| subject(i / PER_SUBJECT)).collect();
    for chunk in names.chunks(1000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", VALUE))
            .collect();
        vault.tokenize_batch(&items).expect("load");
    }
    assert!(vault_core::internal::compact(&vault).expect("compact"));
    vault.close().expect("close");
    eprintln!(
        "loaded {records} records into the vault in {:.1} s ({:.0} MB on disk)",
        started.elapsed().as_secs_f64(),
        dir_bytes(dir) as f64 / 1e6
    );
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read the vault directory")
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// A group of ten calls, each timed by the caller: a purge changes the vault, so
/// criterion's warm-up and repeated sampling have nothing to add.
fn ten_calls<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_millis(1));
    group
}

/// Erase + purge of one loaded subject per iteration (a different one each time,
/// spread over the key space by the subject hash).
fn one_subject(c: &mut Criterion, name: &str, dir: &Path, subjects: usize) {
    let vault = open(dir, Durability::Synced);
    let next = AtomicUsize::new(0);
    let mut group = ten_calls(c, "purge_one_subject");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Even subjects, spread: the batch below erases odd ones.
                let i = (next.fetch_add(1, Ordering::Relaxed) * 7919 % (subjects / 2)) * 2;
                let started = Instant::now();
                let receipt = vault.erase(&subject(i)).expect("erase");
                let report = vault.purge_now().expect("purge");
                total += started.elapsed();
                assert_eq!(receipt.records, PER_SUBJECT as u64);
                assert!(report.verified, "the purge verified");
            }
            total
        })
    });
    group.bench_function(format!("{name}_fresh_subject"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let s = format!("fresh-{}", next.fetch_add(1, Ordering::Relaxed));
                let items: Vec<TokenizeRequest> = (0..PER_SUBJECT)
                    .map(|_| TokenizeRequest::new(&s, "email", VALUE))
                    .collect();
                vault.tokenize_batch(&items).expect("store");
                let started = Instant::now();
                black_box(vault.erase(&s).expect("erase"));
                let report = vault.purge_now().expect("purge");
                total += started.elapsed();
                assert!(report.verified, "the purge verified");
            }
            total
        })
    });
    group.finish();
    vault.close().expect("close");
}

/// One purge of 1 000 erased subjects: records purged per second.
fn batch(c: &mut Criterion, name: &str, dir: &Path, subjects: usize) {
    let vault = open(dir, Durability::Synced);
    let round = AtomicUsize::new(0);
    let mut group = ten_calls(c, "purge_batch");
    group.throughput(Throughput::Elements((BATCH_SUBJECTS * PER_SUBJECT) as u64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // Odd subjects, spread, none erased twice.
                let r = round.fetch_add(1, Ordering::Relaxed);
                for k in 0..BATCH_SUBJECTS {
                    let i = ((r * BATCH_SUBJECTS + k) * 7919 % (subjects / 2)) * 2 + 1;
                    vault.erase(&subject(i)).expect("erase");
                }
                let started = Instant::now();
                let report = vault.purge_now().expect("purge");
                total += started.elapsed();
                assert!(report.verified, "the purge verified");
            }
            total
        })
    });
    group.finish();
    vault.close().expect("close");
}

fn purge(c: &mut Criterion) {
    let small = size("VAULT_PURGE_SMALL", 100_000);
    let large = size("VAULT_PURGE_LARGE", 2_000_000);
    let small_dir = tempfile::tempdir().expect("tempdir");
    let large_dir = tempfile::tempdir().expect("tempdir");
    load(small_dir.path(), small);
    load(large_dir.path(), large);
    one_subject(
        c,
        &format!("records_{small}"),
        small_dir.path(),
        small / PER_SUBJECT,
    );
    one_subject(
        c,
        &format!("records_{large}"),
        large_dir.path(),
        large / PER_SUBJECT,
    );
    batch(
        c,
        &format!("subjects_1000_of_records_{large}"),
        large_dir.path(),
        large / PER_SUBJECT,
    );
}

criterion_group!(benches, purge);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
