//! Erasure is physical, O(1) to take effect, and export reads only its subject.
//!
//! The physical test follows ERASURE.md: the subject is created through the vault's
//! API; a positive control shows the scanner finds the wrapped DEK, the record
//! ciphertexts and a clear-text canary in the files before the erasure (compression
//! off); after erase + purge no file under the directory holds any of them, also
//! after reopening, while a subject that was not erased is still found.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vault_core::{PurgePolicy, PurgeState, TokenizeRequest, Vault};

/// What an attacker with the disk could look for: the subject's stored key entry
/// (wrapped DEK) and each record's stored value (ciphertext), read raw from RocksDB.
struct Traces {
    /// The keyed hash of the subject id: the subject's storage key.
    subject_hash: Vec<u8>,
    wrapped_dek: Vec<u8>,
    ciphertexts: Vec<Vec<u8>>,
}

fn traces(dir: &Path, subject_ref: &str, tokens: &[String]) -> Traces {
    let sid = hex_decode(subject_ref);
    let key_entry = raw_get(dir, "keys", &sid).expect("the key entry exists before erasure");
    // The entry is: format (1) || subject hash (32) || KEK version || length ||
    // nonce (24) || wrapped key (32) || tag (16).
    let subject_hash = key_entry[1..33].to_vec();
    let wrapped_dek = key_entry[key_entry.len() - 72..].to_vec();
    let ciphertexts = tokens
        .iter()
        .map(|t| {
            let record = raw_get(dir, "records", &token_id(dir, t)).expect("record exists");
            record[record.len() - 40..].to_vec()
        })
        .collect();
    Traces {
        subject_hash,
        wrapped_dek,
        ciphertexts,
    }
}

/// `count` records of `victim@example.com` holding `value`: the first under the
/// clear-text canary field name, the others under `f1`, `f2`, …; their tokens.
fn victim_records(
    vault: &Vault,
    count: usize,
    canary_field: &str,
    value: &str,
) -> Result<Vec<String>, vault_core::Error> {
    (0..count)
        .map(|i| {
            let field = if i == 0 {
                canary_field.to_string()
            } else {
                format!("f{i}")
            };
            Ok(vault
                .tokenize("victim@example.com", &field, value)?
                .to_string())
        })
        .collect()
}

fn found(dir: &Path, needle: &[u8]) -> bool {
    !files_containing(dir, needle).is_empty()
}

#[test]
fn erasure_removes_key_and_ciphertexts_from_every_file() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let canary_field = "canary_field_q7x9z";
    let value = "erasure-canary-3f1d9a@example.com";
    let (victim, bystander) = {
        let vault = open(dir.path());
        let victim_tokens = victim_records(&vault, 50, canary_field, value)?;
        let bystander_tokens = vec![vault.tokenize("bystander", "email", "b@x.io")?.to_string()];
        let victim_ref = subject_ref(&vault, "victim@example.com");
        let bystander_ref = subject_ref(&vault, "bystander");
        vault.close()?;
        (
            (victim_ref, victim_tokens),
            (bystander_ref, bystander_tokens),
        )
    };
    let victim_traces = traces(dir.path(), &victim.0, &victim.1);
    let bystander_traces = traces(dir.path(), &bystander.0, &bystander.1);

    // Positive control: the scanner does see these bytes while they exist.
    assert!(
        found(dir.path(), &victim_traces.wrapped_dek),
        "control: wrapped DEK on disk"
    );
    for ct in &victim_traces.ciphertexts {
        assert!(found(dir.path(), ct), "control: ciphertext on disk");
    }
    assert!(
        found(dir.path(), canary_field.as_bytes()),
        "control: clear-text canary found"
    );
    // The values and the subject id are never on disk in clear.
    assert!(!found(dir.path(), value.as_bytes()));
    assert!(!found(dir.path(), b"victim@example.com"));

    {
        let vault = common::open_vault(
            dir.path(),
            &root(),
            options().purge_policy(PurgePolicy::Immediate),
        )?;
        let receipt = vault.erase("victim@example.com")?;
        assert_eq!(receipt.records, 50);
        assert!(
            matches!(receipt.purge, PurgeState::Done { .. }),
            "{receipt:?}"
        );
        assert!(vault.pending_purges()?.is_empty());
        for t in &victim.1 {
            assert!(matches!(
                vault.detokenize(t),
                Err(vault_core::Error::Erased)
            ));
        }
        // Scan while the vault is still open, then again after closing and reopening.
        assert_gone(dir.path(), &victim_traces, canary_field, value);
        vault.close()?;
    }
    assert_gone(dir.path(), &victim_traces, canary_field, value);
    {
        let vault = open(dir.path());
        for t in &victim.1 {
            assert!(matches!(
                vault.detokenize(t),
                Err(vault_core::Error::Erased)
            ));
        }
        assert_eq!(
            vault.detokenize(&bystander.1[0])?.value.as_bytes(),
            b"b@x.io"
        );
        vault.close()?;
    }
    assert_gone(dir.path(), &victim_traces, canary_field, value);
    // The bystander was not erased: its key is still found by the same scanner.
    assert!(found(dir.path(), &bystander_traces.wrapped_dek));
    assert!(found(dir.path(), &bystander_traces.subject_hash));
    Ok(())
}

fn assert_gone(dir: &Path, traces: &Traces, canary: &str, value: &str) {
    let holders = files_containing(dir, &traces.subject_hash);
    assert!(holders.is_empty(), "subject hash still in {holders:?}");
    let holders = files_containing(dir, &traces.wrapped_dek);
    assert!(holders.is_empty(), "wrapped DEK still in {holders:?}");
    for ct in &traces.ciphertexts {
        let holders = files_containing(dir, ct);
        assert!(holders.is_empty(), "ciphertext still in {holders:?}");
    }
    let holders = files_containing(dir, canary.as_bytes());
    assert!(holders.is_empty(), "canary still in {holders:?}");
    assert!(!found(dir, value.as_bytes()));
}

/// The same at a larger size, where the purge compacts only the files that hold the
/// subject: in a settled vault of 300 000 records the purge leaves no trace of the
/// subject in any file (positive control first), keeps a bystander's, and reads a
/// part of what the vault stores (a whole compaction reads all of it).
#[test]
fn erasure_in_a_larger_vault_purges_only_the_subjects_files() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), relaxed())?;
    let names: Vec<String> = (0..300_000)
        .map(|i| format!("subject-{:06}", i / 10))
        .collect();
    for chunk in names.chunks(5_000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", b"someone-else@example.com"))
            .collect();
        vault.tokenize_batch(&items)?;
    }
    let canary_field = "canary_field_w4k2m";
    let value = "larger-canary-8c2e71@example.com";
    let victim_tokens = victim_records(&vault, 10, canary_field, value)?;
    let bystander = vault.tokenize("bystander", "email", "b@x.io")?.to_string();
    let victim_ref = subject_ref(&vault, "victim@example.com");
    let bystander_ref = subject_ref(&vault, "bystander");
    // Settled, as long-stored subjects are: their bytes in the bottom level.
    assert!(vault_core::internal::compact(&vault)?);
    vault.close()?;
    let stored: u64 = all_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let victim = traces(dir.path(), &victim_ref, &victim_tokens);
    let other = traces(dir.path(), &bystander_ref, &[bystander]);
    let mut needles = vec![victim.subject_hash.clone(), victim.wrapped_dek.clone()];
    needles.extend(victim.ciphertexts.iter().cloned());
    needles.push(canary_field.as_bytes().to_vec());
    needles.push(other.wrapped_dek.clone());
    needles.push(other.subject_hash.clone());
    // Positive control: every trace is found before the erasure.
    for (needle, holders) in needles.iter().zip(holders_of_each(dir.path(), &needles)) {
        assert!(!holders.is_empty(), "control: {needle:?} on disk");
    }

    let vault = common::open_vault(dir.path(), &root(), relaxed())?;
    let before = vault.storage_counters();
    let receipt = vault.erase("victim@example.com")?;
    let report = vault.purge_now()?;
    let after = vault.storage_counters();
    vault.close()?;
    assert_eq!(receipt.records, 10);
    assert!(report.verified, "{report:?}");
    let read = after.compaction_bytes_read - before.compaction_bytes_read;
    // A whole compaction reads everything stored; this one a few table files.
    assert!(
        read * 2 < stored,
        "the purge's compactions read {read} bytes of the {stored} stored"
    );
    let holders = holders_of_each(dir.path(), &needles);
    let (victims, bystanders) = holders.split_at(needles.len() - 2);
    for (needle, holders) in needles.iter().zip(victims) {
        assert!(holders.is_empty(), "{needle:?} still in {holders:?}");
    }
    assert!(
        bystanders.iter().all(|h| !h.is_empty()),
        "the bystander is kept"
    );
    assert!(files_containing(dir.path(), value.as_bytes()).is_empty());
    Ok(())
}

#[test]
fn batched_purge_runs_when_due_and_covers_every_pending_erasure() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(
        dir.path(),
        &root(),
        options().purge_policy(PurgePolicy::Within(std::time::Duration::ZERO)),
    )?;
    for s in ["a", "b", "c"] {
        vault.tokenize(s, "email", "v")?;
    }
    let ra = vault.erase("a")?;
    let rb = vault.erase("b")?;
    assert!(matches!(ra.purge, PurgeState::Pending { .. }));
    assert_eq!(vault.pending_purges()?.len(), 2);
    let report = vault.purge_due()?;
    assert_eq!(report.subjects, 2);
    assert!(report.verified);
    assert!(vault.pending_purges()?.is_empty());
    for r in [ra, rb] {
        let receipt = vault
            .erasure_receipt(&r.subject_ref.expect("erased"))?
            .expect("kept");
        assert!(matches!(receipt.purge, PurgeState::Done { .. }));
    }
    Ok(())
}

#[test]
fn background_worker_purges_within_the_delay() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(
        dir.path(),
        &root(),
        options()
            .background_worker(true)
            .purge_policy(PurgePolicy::Within(std::time::Duration::from_millis(100))),
    )?;
    vault.tokenize("a", "email", "v")?;
    vault.erase("a")?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !vault.pending_purges()?.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker never purged"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}

/// A purge of subjects erased amid new writes (so the flushed files span every key)
/// stays targeted: it verifies, keeps most table files as they were, reads less
/// than a whole compaction of the same vault reads, and the erased tokens answer
/// *erased* while the others read.
#[test]
fn a_purge_of_subjects_erased_amid_writes_stays_targeted() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), relaxed())?;
    let names: Vec<String> = (0..300_000)
        .map(|i| format!("subject-{:06}", i / 10))
        .collect();
    let mut tokens = Vec::new();
    for chunk in names.chunks(5_000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", b"someone@example.com"))
            .collect();
        tokens.extend(vault.tokenize_batch(&items)?);
    }
    let before = vault.storage_counters();
    assert!(vault_core::internal::compact(&vault)?);
    let settled = vault.storage_counters();
    let whole = settled.compaction_bytes_read - before.compaction_bytes_read;
    let mut erased = Vec::new();
    for k in 0..2 {
        let i = 7 + k * 15_000;
        assert_eq!(vault.erase(&format!("subject-{i:06}"))?.records, 10);
        erased.push(tokens[i * 10].to_string());
        // New subjects between the erasures, as in a vault in use.
        let fresh: Vec<String> = (0..2_000).map(|j| format!("new-{k}-{j}")).collect();
        let items: Vec<TokenizeRequest> = fresh
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", b"new@example.com"))
            .collect();
        vault.tokenize_batch(&items)?;
    }
    // Table files and their sizes.
    let tables = |dir: &Path| -> Vec<(PathBuf, u64)> {
        all_files(dir)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "sst"))
            .map(|p| {
                let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                (p, len)
            })
            .collect()
    };
    let before_purge = tables(dir.path());
    let report = vault.purge_now()?;
    let read = vault.storage_counters().compaction_bytes_read - settled.compaction_bytes_read;
    // A whole compaction rewrites every table file; this one only those holding
    // the two subjects (and what background compactions take meanwhile).
    let after_purge = tables(dir.path());
    let total: u64 = before_purge.iter().map(|(_, len)| len).sum();
    let kept: u64 = before_purge
        .iter()
        .filter(|t| after_purge.contains(t))
        .map(|(_, len)| len)
        .sum();
    // (300 000 records of 8 MiB files: the two subjects' files, their key and
    // subject-entry families and the new flushes are about half; a whole
    // compaction keeps only the families it does not compact, about a tenth.)
    assert!(kept * 10 > total * 3, "{kept} of {total} table bytes kept");
    assert!(report.verified, "{report:?}");
    assert_eq!((report.subjects, report.records), (2, 20));
    // A purge that fell back to a whole compaction would read more than `whole`
    // (its targeted attempt, then everything); the counter also takes in the
    // background compactions the new subjects' flushes start meanwhile.
    assert!(
        read < whole,
        "the purge's compactions read {read} bytes, a whole compaction {whole}"
    );
    for t in &erased {
        assert!(matches!(
            vault.detokenize(t),
            Err(vault_core::Error::Erased)
        ));
    }
    assert_eq!(
        vault.detokenize(&tokens[5].to_string())?.value.as_bytes(),
        b"someone@example.com"
    );
    assert!(vault.pending_purges()?.is_empty());
    Ok(())
}

/// A token names its record by a storage key whose first 8 bytes (the record group)
/// are derived from the subject's key, not its storage id: before the purge, the
/// index links the two (a positive control finds the storage id's tail next to
/// the group); after it, no file does, so a token of an erased subject, decrypted
/// with the vault's keys, leads to no erasure receipt.
#[test]
fn purged_tokens_cannot_be_linked_to_the_storage_id() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let (sid, group) = {
        let vault = open(dir.path());
        let mut keys = Vec::new();
        for i in 0..5 {
            let t = vault.tokenize("linked@example.com", &format!("f{i}"), "v")?;
            keys.push(vault_core::internal::record_key(&vault, &t.to_string())?);
        }
        vault.tokenize("someone-else", "email", "w")?;
        let sid = hex_decode(&subject_ref(&vault, "linked@example.com"));
        vault.close()?;
        let group = keys[0][..8].to_vec();
        assert!(
            keys.iter().all(|k| k[..8] == group[..]),
            "one group per subject"
        );
        assert_ne!(group[..], sid[..8], "the group is not the storage id");
        (sid, group)
    };
    let mut link = sid[8..].to_vec();
    link.extend_from_slice(&group);
    assert!(found(dir.path(), &link), "control: the index links them");

    let vault = common::open_vault(
        dir.path(),
        &root(),
        options().purge_policy(PurgePolicy::Immediate),
    )?;
    let receipt = vault.erase("linked@example.com")?;
    assert!(
        matches!(receipt.purge, PurgeState::Done { .. }),
        "{receipt:?}"
    );
    vault.close()?;
    let holders = files_containing(dir.path(), &link);
    assert!(
        holders.is_empty(),
        "storage id and group still linked in {holders:?}"
    );
    Ok(())
}

/// Erasure does the same storage work whatever the subject's record count: the
/// records are the purge's business.
#[test]
fn erase_cost_does_not_grow_with_record_count() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    vault.tokenize("small", "email", "v")?;
    let values: Vec<String> = (0..10_000).map(|i| format!("value-{i}")).collect();
    for chunk in values.chunks(1000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|v| TokenizeRequest::new("large", "email", v.as_bytes()))
            .collect();
        vault.tokenize_batch(&items)?;
    }
    let cost = |subject: &str| -> Result<[u64; 4], vault_core::Error> {
        let before = vault.storage_counters();
        let receipt = vault.erase(subject)?;
        let after = vault.storage_counters();
        assert!(receipt.subject_ref.is_some());
        Ok([
            after.keys_read - before.keys_read,
            after.keys_written - before.keys_written,
            after.seeks - before.seeks,
            after.iterator_steps - before.iterator_steps,
        ])
    };
    let small = cost("small")?;
    let large = cost("large")?;
    assert_eq!(
        small, large,
        "reads, writes, seeks, steps: small {small:?} vs large {large:?}"
    );
    // Subject and key entries, counter, erasure entry, purge queue, audit event and
    // audit checkpoint; the inventory's counters of subjects and erasures, and of
    // the one field its subjects, records and records of the one creation day.
    assert!(small[1] <= 12, "{small:?}");
    assert_eq!(small[3], 0, "erase iterates nothing");
    Ok(())
}

/// Export reads the subject's own index prefix and records, not other subjects'.
#[test]
fn export_touches_only_the_subjects_keys() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), relaxed())?;
    let others: Vec<String> = (0..100_000).map(|i| format!("subject-{i:06}")).collect();
    for chunk in others.chunks(5_000) {
        let items: Vec<TokenizeRequest> = chunk
            .iter()
            .map(|s| TokenizeRequest::new(s, "email", b"someone@example.com"))
            .collect();
        vault.tokenize_batch(&items)?;
    }
    let mine: Vec<String> = (0..40).map(|i| format!("mine-{i}")).collect();
    let items: Vec<TokenizeRequest> = mine
        .iter()
        .map(|v| TokenizeRequest::new("subject-050000x", "note", v.as_bytes()))
        .collect();
    vault.tokenize_batch(&items)?;

    let before = vault.storage_counters();
    let export = vault.export("subject-050000x")?;
    let after = vault.storage_counters();
    assert_eq!(export.records.len(), 40);
    let reads = after.keys_read - before.keys_read;
    let steps = after.iterator_steps - before.iterator_steps;
    let seeks = after.seeks - before.seeks;
    // subjects entry + (on a cache miss) the key entry + 40 records + the subject's
    // one audit event (its tokenize batch) + the trail's head (where the listed
    // access log ends).
    assert!(reads <= 44, "point reads: {reads}");
    // One prefix scan each of the index, the (empty) consent ledger and the subject's
    // audit index.
    assert!(steps <= 43, "iterator steps: {steps}");
    assert_eq!(seeks, 3);
    Ok(())
}

/// A purge that has nothing left to write (the erased subject had no records, and the
/// vault was reopened, so every memtable is empty) must still verify.
#[test]
fn purge_verifies_with_nothing_to_write_after_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    {
        let vault = open(dir.path());
        let t = vault.tokenize("a", "email", "v")?.to_string();
        vault.delete(&t)?;
        assert_eq!(vault.erase("a")?.records, 0);
        vault.close()?;
    }
    let vault = open(dir.path());
    let report = vault.purge_now()?;
    assert!(report.verified, "{report:?}");
    assert_eq!(report.subjects, 1);
    assert!(vault.pending_purges()?.is_empty());
    Ok(())
}

/// An erasure and a rotation batch sync the WAL even in a vault whose ordinary
/// writes do not: an acknowledged erasure, or a KEK about to be destroyed, must not
/// depend on the OS flushing its buffers.
#[test]
fn erasure_and_rotation_sync_the_wal_under_relaxed_durability() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), relaxed())?;
    vault.tokenize("a", "email", "v")?;
    let before = vault.storage_counters().wal_syncs;
    vault.tokenize("b", "email", "v")?;
    if common::on_postgres() {
        // On PostgreSQL every commit is synchronous, whatever the durability says:
        // an asynchronous one could be lost in a failover.
        assert!(vault.storage_counters().wal_syncs > before);
        return Ok(());
    }
    assert_eq!(
        vault.storage_counters().wal_syncs,
        before,
        "relaxed writes do not sync"
    );
    vault.erase("a")?;
    let after_erase = vault.storage_counters().wal_syncs;
    assert!(after_erase > before, "the erasure synced the WAL");
    vault.start_kek_rotation()?;
    vault.kek_rotation_step()?;
    assert!(
        vault.storage_counters().wal_syncs > after_erase,
        "the rotation batch synced"
    );
    Ok(())
}
