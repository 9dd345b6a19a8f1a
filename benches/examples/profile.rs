//! A target for a profiler: loads N records (default 1 000 000, 10 per subject,
//! compacted), prints `loaded` on stderr, then runs `tokenize` or `detokenize` of random
//! subjects/tokens for 8 seconds on T threads (default 1) and prints the time per call.
//! `detokenize-worker` detokenizes with the background worker on (the default).
//!
//! ```sh
//! cargo build --release -p vault-benches --example profile
//! target/release/examples/profile detokenize 2>err & \
//!   until grep -q loaded err; do sleep 1; done; perf record -p $! -- sleep 6
//! ```

use std::time::{Duration, Instant};
use vault_core::{Durability, PurgePolicy, RootKey, TokenizeRequest, Vault, VaultOptions};

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let threads: usize = std::env::args()
        .nth(3)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = VaultOptions::default()
        .durability(Durability::Relaxed)
        .background_worker(mode == "detokenize-worker")
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)));
    let vault =
        Vault::open(dir.path(), &RootKey::from_bytes(&[1; 32]).expect("k"), opts).expect("open");
    let names: Vec<String> = (0..n).map(|i| format!("subject-{:07}", i / 10)).collect();
    let mut tokens = Vec::new();
    for chunk in names.chunks(1000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", &[b'v'; 100]))
            .collect();
        tokens.extend(
            vault
                .tokenize_batch(&items)
                .expect("b")
                .into_iter()
                .map(|t| t.to_string()),
        );
    }
    vault.tokenize("x", "email", "y").expect("t");
    vault.erase("x").expect("e");
    vault.purge_now().expect("p");
    eprintln!("loaded");
    let t = Instant::now();
    let calls: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads as u64)
            .map(|w| {
                let (vault, names, tokens, mode) = (&vault, &names, &tokens, &mode);
                scope.spawn(move || {
                    let mut k = 0u64;
                    let mut x = 88172645463325252u64 ^ (w << 32);
                    while t.elapsed() < Duration::from_secs(8) {
                        for _ in 0..1000 {
                            k += 1;
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let i = (x % tokens.len() as u64) as usize;
                            if mode == "tokenize" {
                                std::hint::black_box(
                                    vault.tokenize(&names[i], "email", [b'v'; 100]).expect("t"),
                                );
                            } else {
                                std::hint::black_box(vault.detokenize(&tokens[i]).expect("d"));
                            }
                        }
                    }
                    k
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    println!(
        "{mode} on {threads} threads: {:?} per call",
        t.elapsed() / calls as u32
    );
}
