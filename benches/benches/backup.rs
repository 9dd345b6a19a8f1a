//! Backups and restores of a loaded vault, in one run: `VAULT_BACKUP_RECORDS`
//! records (default 1 000 000; 10 per subject, 100-byte values, LZ4), loaded and
//! settled, opened as the server opens it (synced writes, its block cache).
//!
//! 1. Synced tokenizations from 8 threads for `VAULT_BACKUP_SECS` (default 8): alone,
//!    then while `cp -r` copies the vault's files (as loaded) over and over (the
//!    ceiling a backup is compared with), while first backups (nothing to share) are taken
//!    over and over, and while backups that share unchanged tables are.
//!    Tokenizations per second in each window, and each copy's throughput.
//! 3. A plain restore of the backup, then, after 10 000 subjects were erased (the
//!    erasure journal has 10 000 entries), a restore of the same backup that
//!    replays them.
//!
//! Run with `cargo bench -p vault-benches --bench backup`.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vault_core::{
    BackupOptions, Durability, PurgePolicy, RestoreOptions, RootKey, TokenizeRequest, Vault,
    VaultOptions, restore,
};

const VALUE: &[u8; 100] = &[b'v'; 100];
const PER_SUBJECT: usize = 10;
const LOAD_THREADS: usize = 8;
const ERASED: usize = 10_000;

fn size(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> RootKey {
    RootKey::from_bytes(&[1; 32]).expect("a 32-byte key")
}

fn options(backups: &Path) -> VaultOptions {
    VaultOptions::default()
        .background_worker(false)
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)))
        .block_cache_bytes(vault_core::internal::SERVER_BLOCK_CACHE)
        .backups(BackupOptions::new(backups).keep(10))
}

fn subject(i: usize) -> String {
    format!("subject-{i:08}")
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
        let meta = entry.metadata().expect("metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

fn mb_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / 1e6 / time.as_secs_f64()
}

/// Tokenizations per second from `LOAD_THREADS` threads while `during` runs (or for
/// `window` if it is `None`), and how long `during` took.
fn tokenize_rate(
    vault: &Vault,
    next: &AtomicU64,
    window: Duration,
    during: Option<&(dyn Fn() + Sync)>,
) -> (f64, Duration) {
    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (count, took) = std::thread::scope(|scope| {
        for _ in 0..LOAD_THREADS {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    vault
                        .tokenize(&format!("load-{i}"), "email", "load@example.com")
                        .expect("tokenize under load");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Let the load settle first; count only while the work (or the wait) runs.
        std::thread::sleep(Duration::from_secs(1));
        let before = done.load(Ordering::Relaxed);
        let at = Instant::now();
        match during {
            Some(work) => work(),
            None => std::thread::sleep(window),
        }
        let counted = (done.load(Ordering::Relaxed) - before, at.elapsed());
        stop.store(true, Ordering::Relaxed);
        counted
    });
    (count as f64 / took.as_secs_f64(), took)
}

fn main() {
    let records = size("VAULT_BACKUP_RECORDS", 1_000_000) as usize;
    let window = Duration::from_secs(size("VAULT_BACKUP_SECS", 8));
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let live = tmp.path().join("live");
    let backups = tmp.path().join("backups");

    let started = Instant::now();
    {
        let vault = Vault::open(
            &live,
            &root(),
            options(&backups).durability(Durability::Relaxed),
        )
        .expect("open");
        let names: Vec<String> = (0..records).map(|i| subject(i / PER_SUBJECT)).collect();
        for chunk in names.chunks(1000) {
            let items: Vec<TokenizeRequest> = chunk
                .iter()
                .map(|s| TokenizeRequest::new(s, "email", VALUE))
                .collect();
            vault.tokenize_batch(&items).expect("load");
        }
        vault_core::internal::compact(&vault).expect("settle");
        vault.close().expect("close");
    }
    println!(
        "loaded {records} records ({:.0} MB) in {:.1} s",
        dir_bytes(&live) as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    // What cp copies: the vault's files as loaded (a live directory changes under
    // cp, which then fails on a file gone; a backup copies them as of one instant).
    let still = tmp.path().join("still");
    let status = Command::new("cp")
        .arg("-r")
        .arg(&live)
        .arg(&still)
        .status()
        .expect("cp");
    assert!(status.success());
    let vault = Vault::open(&live, &root(), options(&backups)).expect("open");
    let next = AtomicU64::new(0);
    let (idle_rate, _) = tokenize_rate(&vault, &next, window, None);

    // Each kind of copy over and over for the window, under the same load.
    let copy = tmp.path().join("cp-copy");
    let cp_bytes = AtomicU64::new(0);
    let cp_runs = AtomicU64::new(0);
    let (cp_rate, cp_took) = tokenize_rate(
        &vault,
        &next,
        window,
        Some(&|| {
            let until = Instant::now() + window;
            while Instant::now() < until {
                cp_bytes.fetch_add(dir_bytes(&still), Ordering::Relaxed);
                let status = Command::new("cp")
                    .arg("-r")
                    .arg(&still)
                    .arg(&copy)
                    .status()
                    .expect("cp");
                assert!(status.success());
                cp_runs.fetch_add(1, Ordering::Relaxed);
                std::fs::remove_dir_all(&copy).expect("remove the copy");
            }
        }),
    );
    let full_bytes = AtomicU64::new(0);
    let full_runs = AtomicU64::new(0);
    let (full_rate, full_took) = tokenize_rate(
        &vault,
        &next,
        window,
        Some(&|| {
            let until = Instant::now() + window;
            while Instant::now() < until {
                // Every backup a first one: nothing kept to share with.
                for entry in std::fs::read_dir(&backups).expect("backups").flatten() {
                    if entry.file_type().expect("type").is_dir() {
                        std::fs::remove_dir_all(entry.path()).expect("remove");
                    }
                }
                let info = vault.backup().expect("backup");
                full_bytes.fetch_add(info.bytes, Ordering::Relaxed);
                full_runs.fetch_add(1, Ordering::Relaxed);
            }
        }),
    );
    let next_runs = AtomicU64::new(0);
    let (next_rate, next_took) = tokenize_rate(
        &vault,
        &next,
        window,
        Some(&|| {
            let until = Instant::now() + window;
            while Instant::now() < until {
                vault.backup().expect("backup");
                next_runs.fetch_add(1, Ordering::Relaxed);
            }
        }),
    );
    let full = vault.backup().expect("backup");
    let (cp_bytes, cp_runs) = (cp_bytes.into_inner(), cp_runs.into_inner());
    let (full_bytes, full_runs) = (full_bytes.into_inner(), full_runs.into_inner());
    let next_runs = next_runs.into_inner();
    let cp_mb_s = mb_per_s(cp_bytes, cp_took);
    let full_mb_s = mb_per_s(full_bytes, full_took);

    println!(
        "\n| for {} s, under load | runs | time each | MB/s | tokenize/s from {LOAD_THREADS} threads | ÷ without |",
        window.as_secs()
    );
    println!("|---|---|---|---|---|---|");
    println!("| no copy | | | | {idle_rate:.0} | 1.00 |");
    println!(
        "| `cp -r` of the vault directory | {cp_runs} | {:.2} s | {cp_mb_s:.0} | {cp_rate:.0} | {:.2} |",
        cp_took.as_secs_f64() / cp_runs as f64,
        cp_rate / idle_rate
    );
    println!(
        "| first backup (nothing to share) | {full_runs} | {:.2} s | {full_mb_s:.0} ({:.2}× cp) | {full_rate:.0} | {:.2} |",
        full_took.as_secs_f64() / full_runs as f64,
        full_mb_s / cp_mb_s,
        full_rate / idle_rate
    );
    println!(
        "| next backup (unchanged tables shared) | {next_runs} | {:.2} s | | {next_rate:.0} | {:.2} |",
        next_took.as_secs_f64() / next_runs as f64,
        next_rate / idle_rate
    );

    // Restores: plain, then with ERASED erasures to replay.
    let plain_to = tmp.path().join("restored-plain");
    let at = Instant::now();
    let plain = restore(
        &full.path,
        &plain_to,
        &root(),
        options(&backups),
        RestoreOptions::new(),
    )
    .expect("restore");
    let plain_took = at.elapsed();
    std::fs::remove_dir_all(&plain_to).expect("remove");
    let at = Instant::now();
    for i in 0..ERASED {
        vault.erase(&subject(i)).expect("erase");
    }
    let erasing = at.elapsed();
    vault.close().expect("close");
    let replay_to = tmp.path().join("restored-replay");
    let at = Instant::now();
    let replayed = restore(
        &full.path,
        &replay_to,
        &root(),
        options(&backups),
        RestoreOptions::new(),
    )
    .expect("restore with replay");
    let replay_took = at.elapsed();
    println!(
        "\n({ERASED} erasures took {:.1} s: {:.0}/s, each journaled and synced)",
        erasing.as_secs_f64(),
        ERASED as f64 / erasing.as_secs_f64()
    );
    println!("\n| restore | journal entries replayed | time | ÷ plain |");
    println!("|---|---|---|---|");
    println!(
        "| plain | {} | {:.2} s | 1.00 |",
        plain.erasures_replayed,
        plain_took.as_secs_f64()
    );
    println!(
        "| replaying the erasures since | {} | {:.2} s | {:.2} |",
        replayed.erasures_replayed,
        replay_took.as_secs_f64(),
        replay_took.as_secs_f64() / plain_took.as_secs_f64()
    );
}
