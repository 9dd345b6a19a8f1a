//! Concurrency: erase racing tokenize on one subject never leaves an undecryptable
//! token of a live subject; many threads tokenizing and detokenizing get correct
//! results; rotation runs while traffic does.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use vault_core::Error;

/// Sets the flag when dropped: when its thread ends, by returning or panicking.
struct StopOnExit(Arc<AtomicBool>);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn tokenize_racing_erase_on_one_subject() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = Arc::new(common::open_vault(dir.path(), &root(), relaxed())?);
    let stop = Arc::new(AtomicBool::new(false));
    // Erasures begun and finished: a token may read back *erased* only if an
    // erasure was under way or began after its tokenize started.
    let started = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    // Tokens issued so far: the eraser goes on until the writers have made enough.
    let count = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (vault, stop, count) = (vault.clone(), stop.clone(), count.clone());
            let (started, finished) = (started.clone(), finished.clone());
            std::thread::spawn(move || -> Result<Vec<(String, String)>, Error> {
                // A writer that fails stops the eraser, which would otherwise wait
                // for its tokens; the join reports why.
                let _stops = StopOnExit(stop.clone());
                let mut issued = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let value = format!("v-{w}-{i}");
                    let done_before = finished.load(Ordering::SeqCst);
                    let token = vault.tokenize("contested", "email", &value)?.to_string();
                    match vault.detokenize(&token) {
                        Ok(d) => assert_eq!(d.value.as_str(), Some(value.as_str())),
                        Err(Error::Erased) => assert!(
                            started.load(Ordering::SeqCst) > done_before,
                            "a token of a live subject answered erased"
                        ),
                        Err(e) => panic!("token of a live subject unreadable: {e:?}"),
                    }
                    issued.push((token, value));
                    count.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
                Ok(issued)
            })
        })
        .collect();
    let eraser = {
        let (vault, stop) = (vault.clone(), stop.clone());
        let (started, finished, count) = (started.clone(), finished.clone(), count.clone());
        std::thread::spawn(move || -> Result<u32, Error> {
            let mut erased = 0;
            let mut attempts = 0;
            while (erased < 50 || count.load(Ordering::SeqCst) <= 100)
                && !stop.load(Ordering::SeqCst)
                && attempts < 1_000_000
            {
                attempts += 1;
                started.fetch_add(1, Ordering::SeqCst);
                let receipt = vault.erase("contested")?;
                finished.fetch_add(1, Ordering::SeqCst);
                if receipt.subject_ref.is_some() {
                    erased += 1;
                }
                std::thread::yield_now();
            }
            Ok(erased)
        })
    };
    let erased = eraser.join().expect("eraser")?;
    stop.store(true, Ordering::SeqCst);
    let mut issued = Vec::new();
    for w in writers {
        issued.extend(w.join().expect("writer")?);
    }
    assert!(erased >= 50, "the race happened ({erased} erasures)");
    assert!(issued.len() > 100);

    // Every token is either readable with its own value, or erased; the tokens
    // exported for the live subject are exactly the readable ones.
    let live = vault.export("contested")?;
    let mut readable = 0;
    for (token, value) in &issued {
        match vault.detokenize(token) {
            Ok(d) => {
                assert_eq!(d.value.as_str(), Some(value.as_str()));
                assert!(live.records.iter().any(|r| &r.token.to_string() == token));
                readable += 1;
            }
            Err(Error::Erased) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(readable, live.records.len());
    assert!(vault.purge_now()?.verified);
    for (token, _) in &issued {
        assert!(matches!(
            vault.detokenize(token),
            Ok(_) | Err(Error::Erased)
        ));
    }
    Ok(())
}

#[test]
fn many_threads_tokenize_and_detokenize() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let vault = Arc::new(common::open_vault(
        dir.path(),
        &root(),
        relaxed().dek_cache_capacity(64),
    )?);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let vault = vault.clone();
            std::thread::spawn(move || -> Result<Vec<(String, String)>, Error> {
                let mut mine = Vec::new();
                for i in 0..500 {
                    let value = format!("{t}:{i}");
                    let subject = format!("s{}", (t * 7 + i) % 300);
                    let token = if i % 5 == 0 {
                        vault.tokenize_deterministic(&subject, "det", &value)?
                    } else {
                        vault.tokenize(&subject, "email", &value)?
                    }
                    .to_string();
                    mine.push((token, value));
                    // Read back a random earlier one of ours.
                    let (tok, val) = &mine[(i * 31) % mine.len()];
                    assert_eq!(vault.detokenize(tok)?.value.as_str(), Some(val.as_str()));
                }
                Ok(mine)
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in threads {
        all.extend(t.join().expect("thread")?);
    }
    let tokens: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
    for (chunk, expected) in tokens.chunks(1000).zip(all.chunks(1000)) {
        for (result, (_, value)) in vault.detokenize_batch(chunk)?.iter().zip(expected) {
            assert_eq!(
                result.as_ref().map_err(|e| e.to_string())?.value.as_str(),
                Some(value.as_str())
            );
        }
    }
    assert!(
        vault.cached_keys() <= 64,
        "cache bound: {}",
        vault.cached_keys()
    );
    // 300 subjects written: the cache of recently written ones is full, and bounded.
    assert_eq!(vault.cached_subjects(), 64);
    Ok(())
}

#[test]
fn rotation_under_traffic_keeps_every_value_readable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = Arc::new(common::open_vault(
        dir.path(),
        &root(),
        relaxed().rotation_batch(100),
    )?);
    let mut seed = Vec::new();
    for i in 0..2000 {
        seed.push((
            vault
                .tokenize(&format!("s{i}"), "email", format!("v{i}"))?
                .to_string(),
            format!("v{i}"),
        ));
    }
    let stop = Arc::new(AtomicBool::new(false));
    // The traffic says when its first round is done, so the rotation runs with it.
    let (first_round, first_round_done) = std::sync::mpsc::channel();
    let traffic = {
        let (vault, stop) = (vault.clone(), stop.clone());
        let seed = seed.clone();
        std::thread::spawn(move || -> Result<(), Error> {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = vault.tokenize(&format!("new{n}"), "email", format!("n{n}"))?;
                assert_eq!(
                    vault.detokenize(&t.to_string())?.value.as_str(),
                    Some(format!("n{n}").as_str())
                );
                let (tok, val) = &seed[n % seed.len()];
                match vault.detokenize(tok) {
                    Ok(d) => assert_eq!(d.value.as_str(), Some(val.as_str())),
                    Err(Error::Erased) => {}
                    Err(e) => return Err(e),
                }
                if n % 10 == 0 {
                    vault.erase(&format!("s{}", n % 2000))?;
                }
                n += 1;
                if n == 1 {
                    let _ = first_round.send(());
                }
            }
            Ok(())
        })
    };
    // An error if the traffic thread ended first: its join below says why.
    let _ = first_round_done.recv();
    let status = vault.rotate_kek()?;
    stop.store(true, Ordering::Relaxed);
    traffic.join().expect("traffic")?;
    assert_eq!(status.versions.len(), 1, "{status:?}");
    assert_eq!(vault.key_status()?.versions.len(), 1);
    for (tok, val) in &seed {
        match vault.detokenize(tok) {
            Ok(d) => assert_eq!(d.value.as_str(), Some(val.as_str())),
            Err(Error::Erased) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    Ok(())
}

/// A reader of the trail sees every read that returned before it asked, even while
/// the journal is committing staged events (synced writes alongside hold a group,
/// and the staged events in it, for the length of an fsync).
#[test]
fn the_trail_shows_every_read_that_returned_before_it_is_read() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = Arc::new(common::open_vault(dir.path(), &root(), options())?);
    let token = vault
        .tokenize("watched", "email", "watched@example.com")?
        .to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (vault, stop) = (vault.clone(), stop.clone());
        std::thread::spawn(move || -> Result<(), Error> {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                vault.tokenize("busy", "email", format!("busy-{i}"))?;
                i += 1;
            }
            Ok(())
        })
    };
    let mut reads = 0;
    for round in 0..300 {
        vault.detokenize(&token)?;
        reads += 1;
        let seen = vault
            .subject_audit("watched")?
            .iter()
            .filter(|e| e.action == vault_core::AuditAction::Detokenize)
            .count();
        assert_eq!(seen, reads, "round {round}: a returned read is missing");
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("writer")?;
    assert!(vault.verify_audit()?.ok);
    Ok(())
}
