//! Resident memory and detokenize latency against the size of the vault: for each
//! size in `VAULT_MEMORY_RECORDS` (default `1000000,5000000`; one record per
//! subject, 100-byte values, LZ4), a vault is loaded and settled, then a fresh
//! process opens it with the server's block cache (256 MiB) and reads random
//! tokens: 200 000 to warm up, 200 000 timed, one at a time. It reports its
//! resident memory after the open and after the reads (VmRSS, and the peak VmHWM),
//! and the read latency. The child's own data is a few MB: the tokens stay in a file
//! it reads by offset.
//!
//! Run with `cargo bench -p vault-benches --bench memory`.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vault_core::{RootKey, TOKEN_TEXT_LEN, TokenizeRequest, Vault, VaultOptions};

const VALUE: &[u8; 100] = &[b'v'; 100];
const WARM: usize = 200_000;
const TIMED: usize = 200_000;
const CHILD: &str = "VAULT_MEMORY_CHILD";

fn root() -> RootKey {
    RootKey::from_bytes(&[1; 32]).expect("a 32-byte key")
}

fn options() -> VaultOptions {
    VaultOptions::default()
        .background_worker(false)
        .block_cache_bytes(vault_core::internal::SERVER_BLOCK_CACHE)
}

fn main() {
    if let Ok(args) = std::env::var(CHILD) {
        let mut parts = args.splitn(3, '\n');
        let (Some(dir), Some(tokens), Some(n)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("{CHILD}: dir, tokens file, records");
        };
        child(
            Path::new(dir),
            Path::new(tokens),
            n.parse().expect("records"),
        );
        return;
    }
    // `cargo bench` passes `--bench`; nothing else is taken.
    let sizes: Vec<usize> = std::env::var("VAULT_MEMORY_RECORDS")
        .unwrap_or_else(|_| "1000000,5000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("VAULT_MEMORY_RECORDS: numbers"))
        .collect();
    println!(
        "records | open: VmRSS | after {TIMED} reads: VmRSS, VmHWM | block cache used | detokenize p50, p99, mean"
    );
    for n in sizes {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("vault");
        let tokens = tmp.path().join("tokens");
        load(&dir, &tokens, n);
        let out = Command::new(std::env::current_exe().expect("this binary"))
            .env(
                CHILD,
                format!("{}\n{}\n{n}", dir.display(), tokens.display()),
            )
            .output()
            .expect("run the measuring process");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}

/// `records` records of as many subjects; their tokens, fixed-length, in `tokens`.
fn load(dir: &Path, tokens: &Path, records: usize) {
    let started = Instant::now();
    let vault = Vault::open(
        dir,
        &root(),
        options().durability(vault_core::Durability::Relaxed),
    )
    .expect("open");
    let mut out = BufWriter::new(File::create(tokens).expect("tokens file"));
    let names: Vec<String> = (0..records).map(|i| format!("subject-{i:08}")).collect();
    for chunk in names.chunks(1000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", VALUE))
            .collect();
        for token in vault.tokenize_batch(&items).expect("load") {
            out.write_all(token.to_string().as_bytes()).expect("write");
        }
    }
    out.flush().expect("flush");
    assert!(vault_core::internal::compact(&vault).expect("compact"));
    vault.close().expect("close");
    eprintln!(
        "loaded {records} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn child(dir: &Path, tokens: &Path, records: usize) {
    let vault = Vault::open(dir, &root(), options()).expect("open");
    let rss_open = status_kib("VmRSS:");
    let file = File::open(tokens).expect("tokens file");
    let mut token = vec![0u8; TOKEN_TEXT_LEN];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = |file: &File, token: &mut Vec<u8>| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let i = (seed % records as u64) * TOKEN_TEXT_LEN as u64;
        file.read_exact_at(token, i).expect("read a token");
    };
    for _ in 0..WARM {
        next(&file, &mut token);
        let text = std::str::from_utf8(&token).expect("ascii");
        vault.detokenize(text).expect("detokenize");
    }
    let mut times = Vec::with_capacity(TIMED);
    for _ in 0..TIMED {
        next(&file, &mut token);
        let text = std::str::from_utf8(&token).expect("ascii");
        let started = Instant::now();
        vault.detokenize(text).expect("detokenize");
        times.push(started.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / TIMED as u32;
    let counters = vault.storage_counters();
    println!(
        "{records} | {:.0} MiB | {:.0} MiB, {:.0} MiB | {:.0} of {:.0} MiB | {:.1} µs, {:.1} µs, {:.1} µs",
        mib(rss_open),
        mib(status_kib("VmRSS:")),
        mib(status_kib("VmHWM:")),
        counters.block_cache_usage as f64 / (1 << 20) as f64,
        counters.block_cache_capacity as f64 / (1 << 20) as f64,
        micros(times[TIMED / 2]),
        micros(times[TIMED * 99 / 100]),
        micros(mean),
    );
    vault.close().expect("close");
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .expect("a VmRSS line")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
