//! In-process vault operations next to raw RocksDB doing the same storage work, one
//! criterion group per comparison so that the report shows the ratio.
//!
//! The vault is loaded first with `VAULT_BENCH_RECORDS` records (default 1 000 000:
//! 100-byte values, 10 per subject), and a raw RocksDB with the vault's options is
//! loaded with as many records of the same size. Raw writes put as many keys and
//! bytes as the vault's write of the same call does (measured from the vault's own
//! storage counters), so the ratio is the cost of the vault itself: crypto, lookups,
//! the audit event's MAC, bookkeeping.
//!
//! Run with `cargo bench -p vault-benches --bench core`; `./scripts/bench` runs every
//! benchmark and writes BENCHMARKS.md.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group};
use vault_benches::{Pick, WriteShape, load_raw_records, raw_db, settle};
use vault_core::{
    Access, Durability, LawfulBasis, PurgePolicy, Purpose, RootKey, TokenizeRequest, Vault,
    VaultOptions,
};

const VALUE: &[u8; 100] = &[b'v'; 100];
const PER_SUBJECT: usize = 10;
const EXPORTED: usize = 1_000;
const SETTLE: Duration = Duration::from_millis(300);

fn records() -> usize {
    std::env::var("VAULT_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn root() -> RootKey {
    RootKey::from_bytes(&[1; 32]).expect("a 32-byte key")
}

fn options(durability: Durability) -> VaultOptions {
    VaultOptions::default()
        .durability(durability)
        .background_worker(false)
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)))
        .purpose(Purpose::new("support", LawfulBasis::LegitimateInterests))
        .statistics(true)
}

fn open(dir: &Path, opts: VaultOptions) -> Vault {
    Vault::open(dir, &root(), opts).expect("open the vault")
}

fn subject(i: usize) -> String {
    format!("subject-{i:07}")
}

/// The loaded vault and raw database, shared by every group (loading takes a while).
struct Loaded {
    vault: PathBuf,
    raw: PathBuf,
    tokens: Vec<String>,
    raw_keys: Vec<[u8; 16]>,
    subjects: usize,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

/// The loaded databases, for every group; removed by `main` at the end (a static is
/// never dropped, nor the temporary directories in it).
static LOADED: OnceLock<Loaded> = OnceLock::new();

fn loaded() -> &'static Loaded {
    LOADED.get_or_init(|| {
        let n = records();
        let subjects = n.div_ceil(PER_SUBJECT);
        let vdir = tempfile::tempdir().expect("tempdir");
        let rdir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let vault = open(vdir.path(), options(Durability::Relaxed));
        let mut tokens = Vec::with_capacity(n);
        let names: Vec<String> = (0..n).map(|i| subject(i / PER_SUBJECT)).collect();
        for chunk in names.chunks(1000) {
            let items: Vec<TokenizeRequest> = chunk
                .iter()
                .map(|s| TokenizeRequest::new(s, "email", VALUE))
                .collect();
            let batch = vault.tokenize_batch(&items).expect("load");
            tokens.extend(batch.into_iter().map(|t| t.to_string()));
        }
        // One subject with many records, for the export group.
        let many: Vec<TokenizeRequest> = (0..EXPORTED)
            .map(|_| TokenizeRequest::new("exported-subject", "note", VALUE))
            .collect();
        vault
            .tokenize_batch(&many)
            .expect("load the exported subject");
        // Every group starts from the same settled state as the raw database.
        compact(&vault);
        vault.close().expect("close");
        eprintln!(
            "loaded {n} records of {subjects} subjects into the vault in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        // The raw database: as many records of the vault's stored record size, under
        // random 16-byte keys, and the exported subject's 1 000 under one prefix.
        let db = raw_db(rdir.path());
        let raw_keys = load_raw_records(&db, n);
        let mut record = [0u8; 200];
        // Not the raw records' seed: these values are not theirs again.
        let mut pick = Pick::new(12);
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(false);
        let mut batch = rocksdb::WriteBatch::default();
        for i in 0..EXPORTED as u64 {
            let mut key = [0xee_u8; 24];
            key[16..].copy_from_slice(&i.to_be_bytes());
            pick.fill(&mut record);
            batch.put(key, record);
        }
        db.write_opt(batch, &wo).expect("raw load");
        db.flush().expect("flush");
        db.compact_range::<&[u8], &[u8]>(None, None);
        drop(db);
        Loaded {
            vault: vdir.path().to_path_buf(),
            raw: rdir.path().to_path_buf(),
            tokens,
            raw_keys,
            subjects,
            _dirs: (vdir, rdir),
        }
    })
}

/// Keys and bytes the vault writes per call of `f`, averaged over 100 calls.
fn shape_of(vault: &Vault, mut f: impl FnMut(u64)) -> WriteShape {
    let before = vault.storage_counters();
    for i in 0..100 {
        f(i);
    }
    let after = vault.storage_counters();
    WriteShape {
        keys: (after.keys_written - before.keys_written) / 100,
        bytes: (after.bytes_written - before.bytes_written) / 100,
    }
}

/// Flushes and compacts what the vault holds, so a measurement's writes start with
/// empty memtables and its reads with settled files, as the raw database's do.
fn compact(vault: &Vault) {
    assert!(vault_core::internal::compact(vault).expect("compact"));
}

/// Tokenizes one value for every loaded subject, in batches of 1 000, so that each is
/// among the vault's recently written subjects (its cache holds 100 000 by default):
/// a measurement then sees the steady state of a vault whose subjects are all active,
/// not a cache filling up while criterion samples. Compacted after.
fn write_every_subject(vault: &Vault, subjects: usize) {
    let names: Vec<String> = (0..subjects).map(subject).collect();
    for chunk in names.chunks(1000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", VALUE))
            .collect();
        vault.tokenize_batch(&items).expect("warm up");
    }
    compact(vault);
}

/// A single tokenize of a random subject next to a raw batch of the same keys and
/// bytes (keys numbered from `n` on); returns that shape.
fn tokenize_single(
    c: &mut Criterion,
    group: &str,
    vault: &Vault,
    db: &rocksdb::DB,
    wo: &rocksdb::WriteOptions,
    n: &mut u64,
    subjects: usize,
) -> WriteShape {
    let mut pick = Pick::new(11);
    let mut tokenize_one = |_| {
        let s = subject(pick.below(subjects));
        black_box(vault.tokenize(&s, "email", VALUE).expect("tokenize"));
    };
    let single = shape_of(vault, &mut tokenize_one);
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Elements(1));
    group.bench_function("vault", |b| b.iter(|| tokenize_one(0)));
    group.bench_function("raw_same_bytes", |b| {
        b.iter(|| {
            *n += 1;
            db.write_opt(single.batch(*n), wo).expect("raw write");
        })
    });
    group.finish();
    single
}

/// Tokenize (single and batch of 100) next to a raw batch of the same keys and
/// bytes, with the WAL synced or not, every subject written before; then a single
/// tokenize with the caches cold (1 000 subjects and keys cached, over all subjects:
/// nearly every call reads the subject's entry and unwraps its key).
fn tokenize_groups(c: &mut Criterion, durability: Durability, name: &str) {
    let data = loaded();
    let db = raw_db(&data.raw);
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(durability == Durability::Synced);
    let mut n = 1u64 << 40;

    let vault = open(&data.vault, options(durability));
    write_every_subject(&vault, data.subjects);
    settle(&vault, &db);
    let group = format!("tokenize_{name}");
    let single = tokenize_single(c, &group, &vault, &db, &wo, &mut n, data.subjects);
    let names: Vec<String> = (0..100).map(|i| subject(i * 997 % data.subjects)).collect();
    let items: Vec<TokenizeRequest> = names
        .iter()
        .map(|s| TokenizeRequest::new(s, "email", VALUE))
        .collect();
    let batch = shape_of(&vault, |_| {
        black_box(vault.tokenize_batch(&items).expect("batch"));
    });
    eprintln!("{name}: a tokenize writes {single:?}; a batch of 100 writes {batch:?}");
    let mut group = c.benchmark_group(format!("tokenize_batch100_{name}"));
    group.throughput(Throughput::Elements(100));
    group.bench_function("vault", |b| {
        b.iter(|| black_box(vault.tokenize_batch(&items).expect("batch")))
    });
    group.bench_function("raw_same_bytes", |b| {
        b.iter(|| {
            n += 1;
            db.write_opt(batch.batch(n), &wo).expect("raw write");
        })
    });
    group.finish();
    vault.close().expect("close");

    let vault = open(&data.vault, options(durability).dek_cache_capacity(1_000));
    settle(&vault, &db);
    let group = format!("tokenize_{name}_cold");
    tokenize_single(c, &group, &vault, &db, &wo, &mut n, data.subjects);
    vault.close().expect("close");
}

fn tokenize_relaxed(c: &mut Criterion) {
    tokenize_groups(c, Durability::Relaxed, "relaxed");
}

fn tokenize_durable(c: &mut Criterion) {
    tokenize_groups(c, Durability::Synced, "durable");
}

/// Durable tokenize from 1, 2, 8 and 64 threads next to raw synced writes of the
/// same bytes from as many threads: group commit against group commit.
fn tokenize_callers(c: &mut Criterion) {
    let data = loaded();
    let vault = open(&data.vault, options(Durability::Synced));
    let db = raw_db(&data.raw);
    write_every_subject(&vault, data.subjects);
    let single = shape_of(&vault, |i| {
        let s = subject(i as usize % data.subjects);
        black_box(vault.tokenize(&s, "email", VALUE).expect("tokenize"));
    });
    let counter = AtomicU64::new(1 << 48);
    for threads in [1usize, 2, 8, 64] {
        settle(&vault, &db);
        let mut group = c.benchmark_group(format!("tokenize_durable_callers_{threads}"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(10);
        group.sampling_mode(SamplingMode::Flat);
        group.bench_function("vault", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |t, i| {
                    let s = subject((t * 7919 + i as usize) % data.subjects);
                    black_box(vault.tokenize(&s, "email", VALUE).expect("tokenize"));
                })
            })
        });
        group.bench_function("raw_same_bytes", |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, |_, _| {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let mut wo = rocksdb::WriteOptions::default();
                    wo.set_sync(true);
                    db.write_opt(single.batch(n), &wo).expect("raw write");
                })
            })
        });
        group.finish();
    }
    vault.close().expect("close");
}

/// Runs `iters` calls of `f(thread, i)` spread over `threads` threads; the wall time.
fn on_threads(threads: usize, iters: u64, f: impl Fn(usize, u64) + Sync) -> Duration {
    let per = iters.div_ceil(threads as u64);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let f = &f;
            scope.spawn(move || {
                for i in 0..per {
                    f(t, i);
                }
            });
        }
    });
    // Per call, as criterion expects for `iters` calls.
    started
        .elapsed()
        .mul_f64(iters as f64 / (per * threads as u64) as f64)
}

/// Detokenize of random tokens, with every subject key cached (warm) or almost none
/// (cold: a 1 000-key cache over all subjects), next to a raw point get; and what an
/// audited read cost when its event went straight into RocksDB (before staging): a
/// point get plus an unsynced write of the audit event's keys and bytes.
fn detokenize(c: &mut Criterion) {
    let data = loaded();
    let db = raw_db(&data.raw);
    let random_token = |pick: &mut Pick| &data.tokens[pick.below(data.tokens.len())];
    let random_key = |pick: &mut Pick| &data.raw_keys[pick.below(data.raw_keys.len())];
    let read_random = |vault: &Vault, pick: &mut Pick| {
        black_box(vault.detokenize(random_token(pick)).expect("detokenize"));
    };
    for (name, capacity) in [("warm", data.subjects.max(1)), ("cold", 1_000)] {
        let mut group = c.benchmark_group(format!("detokenize_{name}"));
        group.throughput(Throughput::Elements(1));
        let mut pick = Pick::new(13);
        let warm_up = |vault: &Vault| {
            if name == "warm" {
                for t in data.tokens.iter().step_by(PER_SUBJECT) {
                    vault.detokenize(t).expect("warm up");
                }
            }
        };

        // The default: the background worker moves the staged read events into the
        // trail every 100 ms, on its own thread.
        let vault = open(
            &data.vault,
            options(Durability::Synced)
                .dek_cache_capacity(capacity)
                .background_worker(true),
        );
        settle(&vault, &db);
        warm_up(&vault);
        group.bench_function("vault", |b| b.iter(|| read_random(&vault, &mut pick)));
        let access = Access::new("support", "bench");
        group.bench_function("vault_for_purpose", |b| {
            b.iter(|| {
                let t = random_token(&mut pick);
                black_box(vault.detokenize_for(&[t], &access).expect("detokenize"))
            })
        });
        group.bench_function("raw_get", |b| {
            b.iter(|| black_box(db.get(random_key(&mut pick)).expect("get")))
        });
        if name == "warm" {
            // Both cores busy: the worker's commits now take time from the readers.
            for threads in [2, 8] {
                let picks: Vec<_> = (0..threads)
                    .map(|t| Mutex::new(Pick::new(17 + t as u64)))
                    .collect();
                group.bench_function(format!("vault_{threads}_callers"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, _| {
                            read_random(&vault, &mut picks[t].lock().expect("pick"));
                        })
                    })
                });
                group.bench_function(format!("raw_get_{threads}_callers"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, _| {
                            let k = random_key(&mut picks[t].lock().expect("pick"));
                            black_box(db.get(k).expect("get"));
                        })
                    })
                });
            }
        }
        vault.close().expect("close");

        if name == "warm" {
            // Without the worker the reader whose event fills the staging file
            // commits the file's events itself: all the work on the callers' thread.
            let vault = open(
                &data.vault,
                options(Durability::Synced).dek_cache_capacity(capacity),
            );
            settle(&vault, &db);
            warm_up(&vault);
            let event = shape_of(&vault, |_| read_random(&vault, &mut pick));
            group.bench_function("vault_without_worker", |b| {
                b.iter(|| read_random(&vault, &mut pick))
            });
            let mut wo = rocksdb::WriteOptions::default();
            wo.set_sync(false);
            let mut n = 1u64 << 52;
            group.bench_function("raw_get_and_event_write", |b| {
                b.iter(|| {
                    black_box(db.get(random_key(&mut pick)).expect("get"));
                    n += 1;
                    db.write_opt(event_batch(&event, n), &wo)
                        .expect("raw write");
                })
            });
            vault.close().expect("close");
        }
        group.finish();
    }
}

/// A raw write shaped like an audited read's: as many bytes as the vault writes, in
/// its key pattern: the event under the next sequence number, an index entry under a
/// scattered 24-byte key, and the checkpoint under one fixed key.
fn event_batch(shape: &WriteShape, n: u64) -> rocksdb::WriteBatch {
    let fixed = 8 + 24 + 10;
    let values = (shape.bytes as usize).saturating_sub(fixed);
    let mut batch = rocksdb::WriteBatch::default();
    let mut event_key = [0xf0_u8; 16];
    event_key[8..].copy_from_slice(&n.to_be_bytes());
    batch.put(event_key, vec![0x5a; values * 2 / 3]);
    let mut index_key = [0u8; 24];
    let mut pick = Pick::new(n | 1);
    index_key[..8].copy_from_slice(&(pick.below(usize::MAX) as u64).to_be_bytes());
    index_key[0] &= 0x7f;
    index_key[16..].copy_from_slice(&n.to_be_bytes());
    batch.put(index_key, b"");
    batch.put(b"audit/head", vec![0x5a; values / 3]);
    batch
}

/// Export of one subject's 1 000 records among all the loaded subjects, next to a
/// raw prefix scan over 1 000 records of the same size.
fn export(c: &mut Criterion) {
    let data = loaded();
    let vault = open(&data.vault, options(Durability::Synced));
    let db = raw_db(&data.raw);
    settle(&vault, &db);
    let mut group = c.benchmark_group("export_1000");
    group.throughput(Throughput::Elements(EXPORTED as u64));
    group.bench_function("vault", |b| {
        b.iter(|| {
            let export = vault.export("exported-subject").expect("export");
            assert_eq!(export.records.len(), EXPORTED);
            black_box(export)
        })
    });
    group.bench_function("raw_prefix_scan", |b| {
        b.iter(|| {
            let mut ro = rocksdb::ReadOptions::default();
            ro.set_iterate_upper_bound([0xef_u8; 16].to_vec());
            let mut it = db.raw_iterator_opt(ro);
            it.seek([0xee_u8; 16]);
            let mut count = 0;
            while let Some(v) = it.value() {
                black_box(v);
                count += 1;
                it.next();
            }
            assert_eq!(count, EXPORTED);
        })
    });
    group.finish();
    vault.close().expect("close");
}

/// Erasure of a subject with 1, 1 000 and 10 000 records (the latency must not
/// depend on it), then purge throughput.
fn erase(c: &mut Criterion) {
    let data = loaded();
    let vault = open(&data.vault, options(Durability::Synced));
    // The groups before wrote a lot: let their flushes and compactions finish, or the
    // first erasures wait behind them (a stalled write took 20 ms instead of 1).
    let raw = raw_db(&data.raw);
    settle(&vault, &raw);
    drop(raw);
    let fresh = AtomicU64::new(0);
    let mut group = c.benchmark_group("erase");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_millis(1));
    for records in [1usize, 1_000, 10_000] {
        group.bench_function(format!("records_{records}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let s = format!("erased-{}", fresh.fetch_add(1, Ordering::Relaxed));
                    store_records(&vault, &s, records);
                    // Let the flush the set-up may have started finish: the erase's
                    // fsync should not queue behind it.
                    std::thread::sleep(SETTLE);
                    let started = Instant::now();
                    black_box(vault.erase(&s).expect("erase"));
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();

    // Purge: 10 erased subjects of 100 records each, removed from every file.
    let mut group = c.benchmark_group("purge");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_millis(1));
    group.throughput(Throughput::Elements(1_000));
    group.bench_function("vault_1000_records", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for _ in 0..10 {
                    let s = format!("purged-{}", fresh.fetch_add(1, Ordering::Relaxed));
                    store_records(&vault, &s, 100);
                    vault.erase(&s).expect("erase");
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

fn store_records(vault: &Vault, subject: &str, records: usize) {
    let items: Vec<TokenizeRequest> = (0..records)
        .map(|_| TokenizeRequest::new(subject, "email", VALUE))
        .collect();
    for chunk in items.chunks(1000) {
        vault.tokenize_batch(chunk).expect("store");
    }
}

/// KEK rotation over every subject key while another thread tokenizes: DEKs
/// rewrapped per second.
fn rotation(c: &mut Criterion) {
    let data = loaded();
    let vault = open(&data.vault, options(Durability::Synced));
    let deks: u64 = vault
        .key_status()
        .expect("status")
        .versions
        .iter()
        .map(|v| v.deks)
        .sum();
    let mut group = c.benchmark_group("kek_rotation");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_millis(1));
    group.throughput(Throughput::Elements(deks));
    group.bench_function("vault_with_tokenize_traffic", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let stop = AtomicBool::new(false);
                std::thread::scope(|scope| {
                    scope.spawn(|| {
                        let mut pick = Pick::new(17);
                        while !stop.load(Ordering::Relaxed) {
                            let s = subject(pick.below(data.subjects));
                            vault.tokenize(&s, "email", VALUE).expect("traffic");
                        }
                    });
                    let started = Instant::now();
                    vault.rotate_kek().expect("rotate");
                    total += started.elapsed();
                    stop.store(true, Ordering::Relaxed);
                });
            }
            total
        })
    });
    group.finish();
    vault.close().expect("close");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    // Reads first, on the settled load; then the groups that write.
    targets = detokenize, export, tokenize_relaxed, tokenize_durable, tokenize_callers, erase, rotation
}
// `criterion_main!`, and then the removal of the loaded databases.
fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if let Some(data) = LOADED.get() {
        for dir in [&data.vault, &data.raw] {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
