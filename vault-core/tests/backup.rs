//! Backups and restores: a restore brings back what the backup held, minus every
//! erasure (and expiry) recorded in the erasure journal since; a backup or journal
//! that is damaged, foreign or missing is refused before anything is written.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use vault_core::{
    BackupOptions, BackupProblem, Error, PurgePolicy, RestoreOptions, RootKey, Vault, VaultOptions,
    restore,
};

fn with_backups(dir: &Path) -> VaultOptions {
    options().backups(BackupOptions::new(dir))
}

/// Tokens of `subject`: `count` records, the first under a clear-text canary field.
fn records(vault: &Vault, subject: &str, count: usize, value: &str) -> Vec<String> {
    (0..count)
        .map(|i| {
            let field = if i == 0 {
                "canary_field_b4k".to_owned()
            } else {
                format!("f{i}")
            };
            vault
                .tokenize(subject, &field, value)
                .expect("tokenize")
                .to_string()
        })
        .collect()
}

/// The storage key of a token's record, read from the vault in `live` (closed
/// again after).
fn record_key(live: &Path, backups: &Path, token: &str) -> Result<[u8; 16], Error> {
    let vault = Vault::open(live, &root(), with_backups(backups))?;
    let key = vault_core::internal::record_key(&vault, token)?;
    vault.close()?;
    Ok(key)
}

struct Setup {
    _tmp: tempfile::TempDir,
    live: PathBuf,
    backups: PathBuf,
    backup: PathBuf,
    a_tokens: Vec<String>,
    b_tokens: Vec<String>,
    /// A's wrapped key and one record's stored bytes, read before the erasure.
    a_traces: Vec<Vec<u8>>,
}

/// A and B tokenized, a backup taken, then A erased and purged; the vault closed.
fn erased_after_backup() -> Result<Setup, Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("live");
    let backups = tmp.path().join("backups");
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    let a_tokens = records(&vault, "subject-a", 20, "a-value-7d1e@example.com");
    let b_tokens = records(&vault, "subject-b", 5, "b-value-2c9f@example.com");
    let a_ref = subject_ref(&vault, "subject-a");
    let info = vault.backup()?;
    assert_eq!(info.path, backups.join(&info.id));
    assert!(info.bytes > 0);
    vault.close()?;
    let sid = hex_decode(&a_ref);
    let key = raw_get(&live, "keys", &sid).ok_or("A's key")?;
    let record_key = record_key(&live, &backups, &a_tokens[3])?;
    let record = raw_get(&live, "records", &record_key).ok_or("A's record")?;
    let a_traces = vec![
        key[key.len() - 72..].to_vec(),
        record[record.len() - 40..].to_vec(),
    ];

    let vault = Vault::open(
        &live,
        &root(),
        with_backups(&backups).purge_policy(PurgePolicy::Immediate),
    )?;
    vault.erase("subject-a")?;
    vault.close()?;
    Ok(Setup {
        _tmp: tmp,
        live,
        backup: info.path,
        backups,
        a_tokens,
        b_tokens,
        a_traces,
    })
}

#[test]
fn a_restore_keeps_erasures_made_after_the_backup_erased() -> TestResult {
    let s = erased_after_backup()?;
    // Positive control: the backup itself still holds A (until `keep` deletes it).
    for trace in &s.a_traces {
        assert!(!files_containing(&s.backups, trace).is_empty(), "control");
    }
    let target = s.live.with_file_name("restored");
    let report = restore(
        &s.backup,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    )?;
    assert_eq!(report.erasures_replayed, 1);
    assert_eq!(report.journal_entries, 1);
    assert_eq!(report.journal_entries_skipped, 0);
    assert_eq!(report.data_dir, target);
    assert!(!target.with_file_name("restored.restoring").exists());
    assert!(!target.with_file_name("restored.restored").exists());

    for trace in &s.a_traces {
        let holders = files_containing(&target, trace);
        assert!(holders.is_empty(), "A's bytes restored in {holders:?}");
    }
    let vault = Vault::open(&target, &root(), with_backups(&s.backups))?;
    for token in &s.a_tokens {
        assert!(
            matches!(vault.detokenize(token), Err(Error::Erased)),
            "{token}"
        );
    }
    assert!(vault.export("subject-a")?.records.is_empty());
    for token in &s.b_tokens {
        assert_eq!(
            vault.detokenize(token)?.value.as_bytes(),
            b"b-value-2c9f@example.com"
        );
    }
    assert!(vault.verify_audit()?.ok);
    vault.close()?;
    Ok(())
}

#[test]
fn a_missing_or_altered_journal_refuses_the_restore_unless_told() -> TestResult {
    let s = erased_after_backup()?;
    let journal = s.backups.join("erasures.journal");
    let good = std::fs::read(&journal)?;
    let record_key = record_key(&s.live, &s.backups, &s.a_tokens[0])?;

    let target = s.live.with_file_name("restored");

    std::fs::remove_file(&journal)?;
    let refused = restore(
        &s.backup,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    );
    assert!(
        matches!(
            refused,
            Err(Error::Backup(BackupProblem::JournalMissing { .. }))
        ),
        "{refused:?}"
    );
    assert!(!target.exists());

    let mut altered = good.clone();
    let last = altered.len() - 40;
    altered[last] ^= 1;
    std::fs::write(&journal, &altered)?;
    let refused = restore(
        &s.backup,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    );
    assert!(
        matches!(
            refused,
            Err(Error::Backup(BackupProblem::JournalDamaged {
                entry: 1,
                ..
            }))
        ),
        "{refused:?}"
    );
    assert!(!target.exists());

    // Told to go on: restored, and the report says what was skipped.
    let report = restore(
        &s.backup,
        &target,
        &root(),
        options(),
        RestoreOptions::new().danger_skip_erasure_journal(true),
    )?;
    assert_eq!(report.erasures_replayed, 0);
    assert_eq!(report.journal_entries_skipped, 1);
    assert!(report.journal_unverified);
    // A came back, as the option warns: read without the journal, it is there.
    assert!(raw_get(&target, "records", &record_key).is_some());
    // The vault will not serve with that journal; with the whole one back, it
    // catches up as it opens and A is erased again.
    let damaged = Vault::open(&target, &root(), with_backups(&s.backups));
    assert!(matches!(
        damaged,
        Err(Error::Backup(BackupProblem::JournalDamaged { .. }))
    ));
    std::fs::write(&journal, &good)?;
    let vault = Vault::open(&target, &root(), with_backups(&s.backups))?;
    assert!(matches!(
        vault.detokenize(&s.a_tokens[0]),
        Err(Error::Erased)
    ));
    vault.close()?;
    Ok(())
}

#[test]
fn damaged_foreign_or_non_backups_are_refused_and_nothing_is_written() -> TestResult {
    let s = erased_after_backup()?;
    let target = s.live.with_file_name("restored");

    let not_a_backup = restore(&s.live, &target, &root(), options(), RestoreOptions::new());
    assert!(
        matches!(
            not_a_backup,
            Err(Error::Backup(BackupProblem::NotABackup { .. }))
        ),
        "{not_a_backup:?}"
    );
    let other_key = RootKey::from_bytes(&[9; 32])?;
    let foreign = restore(
        &s.backup,
        &target,
        &other_key,
        options(),
        RestoreOptions::new(),
    );
    assert!(
        matches!(
            foreign,
            Err(Error::Backup(BackupProblem::NotOfThisVault { .. }))
        ),
        "{foreign:?}"
    );

    // One byte of one shared table file.
    let table = std::fs::read_dir(s.backups.join("tables"))?
        .next()
        .ok_or("a table file")??
        .path();
    let good = std::fs::read(&table)?;
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x40;
    std::fs::write(&table, &bad)?;
    let damaged = restore(
        &s.backup,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    );
    assert!(
        matches!(damaged, Err(Error::Backup(BackupProblem::Damaged { .. }))),
        "{damaged:?}"
    );
    // Truncated.
    std::fs::write(&table, &good[..good.len() - 1])?;
    let truncated = restore(
        &s.backup,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    );
    assert!(matches!(
        truncated,
        Err(Error::Backup(BackupProblem::Damaged { .. }))
    ));
    std::fs::write(&table, &good)?;
    // The manifest altered.
    let manifest = s.backup.join("MANIFEST");
    let mut bytes = std::fs::read(&manifest)?;
    bytes[10] ^= 1;
    std::fs::write(&manifest, &bytes)?;
    let altered = restore(
        &s.backup,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    );
    assert!(matches!(
        altered,
        Err(Error::Backup(BackupProblem::Damaged { .. }))
    ));
    assert!(!target.exists());
    assert!(!target.with_file_name("restored.restoring").exists());
    Ok(())
}

#[test]
fn a_restore_over_a_vault_needs_replace_and_leaves_no_leftovers() -> TestResult {
    let s = erased_after_backup()?;
    let refused = restore(
        &s.backup,
        &s.live,
        &root(),
        options(),
        RestoreOptions::new(),
    );
    assert!(matches!(
        refused,
        Err(Error::Backup(BackupProblem::TargetNotEmpty { .. }))
    ));
    // Open elsewhere: refused too.
    let open = Vault::open(&s.live, &root(), with_backups(&s.backups))?;
    let busy = restore(
        &s.backup,
        &s.live,
        &root(),
        options(),
        RestoreOptions::new().replace(true),
    );
    assert!(matches!(busy, Err(Error::AlreadyOpen { .. })), "{busy:?}");
    open.close()?;

    let report = restore(
        &s.backup,
        &s.live,
        &root(),
        options(),
        RestoreOptions::new().replace(true),
    )?;
    assert_eq!(report.erasures_replayed, 1);
    let names: Vec<String> = std::fs::read_dir(s.live.parent().ok_or("parent")?)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert!(
        names.iter().all(|n| n == "live" || n == "backups"),
        "{names:?}"
    );
    let vault = Vault::open(&s.live, &root(), with_backups(&s.backups))?;
    assert!(matches!(
        vault.detokenize(&s.a_tokens[0]),
        Err(Error::Erased)
    ));
    assert!(vault.detokenize(&s.b_tokens[0]).is_ok());
    vault.close()?;
    Ok(())
}

#[test]
fn backups_inside_the_data_directory_survive_a_replacing_restore() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("data");
    let backups = live.join("backups");
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    let a = vault.tokenize("a", "email", "a@example.com")?.to_string();
    let info = vault.backup()?;
    vault.erase("a")?;
    vault.close()?;
    let report = restore(
        &info.path,
        &live,
        &root(),
        options(),
        RestoreOptions::new().replace(true),
    )?;
    assert_eq!(report.erasures_replayed, 1);
    assert!(backups.join("erasures.journal").exists());
    assert!(backups.join(&info.id).join("MANIFEST").exists());
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    assert!(matches!(vault.detokenize(&a), Err(Error::Erased)));
    assert_eq!(vault.backups()?.backups.len(), 1);
    vault.close()?;
    Ok(())
}

#[test]
fn backups_share_unchanged_tables_and_only_the_newest_are_kept() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let backups = tmp.path().join("backups");
    let vault = Vault::open(
        tmp.path().join("live"),
        &root(),
        options().backups(BackupOptions::new(&backups).keep(2)),
    )?;
    for i in 0..200 {
        vault.tokenize(&format!("s{i}"), "email", "x@example.com")?;
    }
    let tables = |dir: &Path| -> std::io::Result<usize> {
        Ok(std::fs::read_dir(dir.join("tables"))?.count())
    };
    let first = vault.backup()?;
    let after_first = tables(&backups)?;
    let second = vault.backup()?;
    // Nothing written in between: the flush made no table, so none is added.
    assert_eq!(tables(&backups)?, after_first);
    assert_eq!(first.bytes, second.bytes);
    vault.tokenize("late", "email", "y@example.com")?;
    let third = vault.backup()?;
    let list = vault.backups()?;
    let ids: Vec<_> = list.backups.iter().map(|b| b.id.clone()).collect();
    assert_eq!(ids, vec![second.id.clone(), third.id.clone()]);
    assert!(!backups.join(&first.id).exists());
    assert_eq!(list.holding_erased, 0);
    assert_eq!(list.erasures_in_backups_until, None);

    vault.erase("s1")?;
    let list = vault.backups()?;
    assert_eq!(list.holding_erased, 2);
    assert_eq!(list.backups_until_clean, 2);
    vault.close()?;
    Ok(())
}

#[test]
fn a_vault_refuses_to_open_without_its_journal() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("live");
    let backups = tmp.path().join("backups");
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    vault.tokenize("a", "email", "a@example.com")?;
    vault.erase("a")?;
    vault.close()?;

    let detached = Vault::open(&live, &root(), options());
    assert!(
        matches!(
            detached,
            Err(Error::Backup(BackupProblem::JournalNotAttached))
        ),
        "{detached:?}"
    );
    std::fs::remove_file(backups.join("erasures.journal"))?;
    let behind = Vault::open(&live, &root(), with_backups(&backups));
    assert!(
        matches!(
            behind,
            Err(Error::Backup(BackupProblem::JournalBehind {
                found: 0,
                expected: 1,
                ..
            }))
        ),
        "{behind:?}"
    );
    Ok(())
}

#[test]
fn a_restore_expires_again_what_expired_since_the_backup() -> TestResult {
    use std::sync::Arc;
    use std::time::Duration;
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("live");
    let backups = tmp.path().join("backups");
    let clock = Arc::new(ManualClock::starting());
    let opts = || {
        with_backups(&backups)
            .clock(clock.clone())
            .retention("ip", Duration::from_secs(86_400))
    };
    let vault = Vault::open(&live, &root(), opts())?;
    let ip = vault.tokenize("a", "ip", "192.0.2.1")?.to_string();
    let email = vault.tokenize("a", "email", "a@example.com")?.to_string();
    let info = vault.backup()?;
    clock.advance_days(2);
    assert_eq!(vault.purge_expired()?.records, 1);
    vault.close()?;

    // Restored under a policy without the period: the journal still expires it.
    let target = tmp.path().join("restored");
    let report = restore(
        &info.path,
        &target,
        &root(),
        with_backups(&backups).clock(clock.clone()),
        RestoreOptions::new(),
    )?;
    assert_eq!(report.erasures_replayed, 1);
    let vault = Vault::open(
        &target,
        &root(),
        with_backups(&backups).clock(clock.clone()),
    )?;
    assert!(
        matches!(vault.detokenize(&ip), Err(Error::Expired)),
        "{:?}",
        vault.detokenize(&ip)
    );
    assert!(vault.detokenize(&email).is_ok());
    vault.close()?;
    Ok(())
}

#[test]
fn receipts_name_the_backups_that_still_hold_the_subject() -> TestResult {
    use std::sync::Arc;
    use std::time::Duration;
    let tmp = tempfile::tempdir()?;
    let backups = tmp.path().join("backups");
    let clock = Arc::new(ManualClock::starting());
    let hour = Duration::from_secs(3600);
    let vault = Vault::open(
        tmp.path().join("live"),
        &root(),
        options()
            .clock(clock.clone())
            .purge_policy(PurgePolicy::Immediate)
            .backups(BackupOptions::new(&backups).keep(2).every(hour)),
    )?;
    vault.tokenize("a", "email", "a@example.com")?;
    vault.tokenize("b", "email", "b@example.com")?;
    let first = vault.backup()?;
    clock.advance_days(1);
    let second = vault.backup()?;
    clock.advance_days(1);

    let receipt = vault.erase("a")?;
    assert_eq!(receipt.backups, vec![first.id.clone(), second.id.clone()]);
    // The second goes once two newer ones exist: two intervals after it.
    let two_hours = 2 * 3_600_000;
    assert_eq!(
        receipt.in_backups_until,
        Some(second.created_at + two_hours)
    );
    let list = vault.backups()?;
    assert_eq!(list.holding_erased, 2);
    assert_eq!(list.erasures_in_backups_until, receipt.in_backups_until);

    // A backup taken after the purge does not hold it; the receipt looked up later
    // still names the two before.
    clock.advance_days(1);
    vault.backup()?;
    let later = vault
        .erasure_receipt(receipt.subject_ref.as_ref().ok_or("a subject")?)?
        .ok_or("a receipt")?;
    assert_eq!(
        later.backups,
        vec![second.id.clone()],
        "the first was deleted by keep"
    );
    // Without backups: none.
    let none = vault.erase("nobody")?;
    assert!(none.backups.is_empty());
    vault.close()?;
    Ok(())
}

#[test]
fn a_full_backup_disk_fails_the_backup_cleanly_and_harms_nothing() -> TestResult {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")?.uid() != 0 {
        // Mounting a small filesystem needs root, as the CI runs it.
        eprintln!("SKIPPED: not root, cannot mount a tmpfs");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("live");
    let disk = Tmpfs::mount(&tmp.path().join("small"), "1m")?;
    let backups = disk.0.join("backups");
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    let value = "v".repeat(200);
    let mut tokens = Vec::new();
    for i in 0..20_000 {
        tokens.push(
            vault
                .tokenize(&format!("s{i}"), "email", &value)?
                .to_string(),
        );
    }
    let full = vault.backup();
    // From the engine copying table files, or from the vault's own writes.
    let no_space = match &full {
        Err(Error::Io { source, .. }) => source.raw_os_error() == Some(libc::ENOSPC),
        Err(Error::Storage(e)) => e.to_string().contains("No space left on device"),
        _ => false,
    };
    assert!(no_space, "{full:?}");
    // Nothing left behind: no partial backup, no unlisted table file.
    let left: Vec<_> = std::fs::read_dir(&backups)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert!(
        left.iter()
            .all(|n| n == "erasures.journal" || n == "tables"),
        "{left:?}"
    );
    assert_eq!(std::fs::read_dir(backups.join("tables"))?.count(), 0);
    assert!(vault.backups()?.backups.is_empty());
    // The live vault is unharmed: it reads, writes and erases (journaled).
    assert_eq!(
        vault.detokenize(&tokens[7])?.value.as_str(),
        Some(value.as_str())
    );
    vault.tokenize("after", "email", "after@example.com")?;
    vault.erase("s7")?;
    assert!(matches!(vault.detokenize(&tokens[7]), Err(Error::Erased)));
    vault.close()?;
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    assert!(vault.detokenize(&tokens[8]).is_ok());
    vault.close()?;
    Ok(())
}

#[test]
fn a_backup_taken_amid_tokenizations_holds_every_one_acknowledged_before_it() -> TestResult {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    let tmp = tempfile::tempdir()?;
    let backups = tmp.path().join("backups");
    let vault = Vault::open(tmp.path().join("live"), &root(), with_backups(&backups))?;
    let acknowledged = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let (info, before) = std::thread::scope(|scope| -> Result<_, Error> {
        for t in 0..4 {
            let (vault, acknowledged, stop) = (&vault, &acknowledged, &stop);
            scope.spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let token = vault
                        .tokenize(
                            &format!("t{t}-{i}"),
                            "email",
                            format!("v{t}-{i}@example.com"),
                        )
                        .expect("tokenize");
                    acknowledged
                        .lock()
                        .expect("lock")
                        .push((token.to_string(), format!("v{t}-{i}@example.com")));
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        // Everything acknowledged before the backup starts must be in it.
        let before = acknowledged.lock().expect("lock").clone();
        let info = vault.backup()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        Ok((info, before))
    })?;
    vault.close()?;
    assert!(before.len() > 100, "only {} tokenizations", before.len());
    let target = tmp.path().join("restored");
    restore(
        &info.path,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    )?;
    let restored = Vault::open(&target, &root(), with_backups(&backups))?;
    for (token, value) in &before {
        assert_eq!(
            restored.detokenize(token)?.value.as_str(),
            Some(value.as_str())
        );
    }
    assert!(restored.verify_audit()?.ok);
    restored.close()?;
    Ok(())
}

#[test]
fn an_old_copy_opened_with_the_journal_catches_up_on_its_erasures() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("live");
    let copy = tmp.path().join("copy");
    let backups = tmp.path().join("backups");
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    let a = vault.tokenize("a", "email", "a@example.com")?.to_string();
    let b = vault.tokenize("b", "email", "b@example.com")?.to_string();
    vault.close()?;
    std::fs::create_dir(&copy)?;
    for entry in std::fs::read_dir(&live)? {
        let entry = entry?;
        std::fs::copy(entry.path(), copy.join(entry.file_name()))?;
    }
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    vault.erase("a")?;
    // One vault per backup directory: a second one is refused.
    let second = Vault::open(&copy, &root(), with_backups(&backups));
    assert!(
        matches!(second, Err(Error::AlreadyOpen { .. })),
        "{second:?}"
    );
    vault.close()?;

    // The copy (a disk snapshot from before the erasure) opened as the vault.
    let old = Vault::open(&copy, &root(), with_backups(&backups))?;
    assert!(matches!(old.detokenize(&a), Err(Error::Erased)));
    assert!(old.detokenize(&b).is_ok());
    old.close()?;
    Ok(())
}

#[test]
fn a_journal_shorter_than_a_backup_saw_refuses_the_restore() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let live = tmp.path().join("live");
    let backups = tmp.path().join("backups");
    let vault = Vault::open(&live, &root(), with_backups(&backups))?;
    vault.tokenize("a", "email", "a@example.com")?;
    vault.tokenize("b", "email", "b@example.com")?;
    vault.erase("a")?;
    vault.erase("b")?;
    let info = vault.backup()?;
    vault.close()?;
    // The journal rolled back to one entry: whole and authentic, but short.
    let journal = backups.join("erasures.journal");
    let bytes = std::fs::read(&journal)?;
    let entry = (bytes.len() - 56) / 2;
    std::fs::write(&journal, &bytes[..bytes.len() - entry])?;
    let target = tmp.path().join("restored");
    let refused = restore(
        &info.path,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    );
    assert!(
        matches!(
            refused,
            Err(Error::Backup(BackupProblem::JournalBehind {
                found: 1,
                expected: 2,
                ..
            }))
        ),
        "{refused:?}"
    );
    assert!(!target.exists());
    Ok(())
}

#[test]
fn a_vault_with_an_unfinished_restore_beside_it_does_not_open() -> TestResult {
    let s = erased_after_backup()?;
    let marker = s.live.with_file_name("live.restored");
    std::fs::write(&marker, b"")?;
    let refused = Vault::open(&s.live, &root(), with_backups(&s.backups));
    assert!(
        matches!(
            refused,
            Err(Error::Backup(BackupProblem::RestoreUnfinished { .. }))
        ),
        "{refused:?}"
    );
    Ok(())
}

#[test]
fn a_backup_of_another_vault_is_not_restored_over_a_vault() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (x, y) = (tmp.path().join("x"), tmp.path().join("y"));
    // Same root key, two vaults.
    let vault = Vault::open(&x, &root(), with_backups(&tmp.path().join("bx")))?;
    vault.tokenize("a", "email", "a@example.com")?;
    vault.close()?;
    let vault = Vault::open(&y, &root(), with_backups(&tmp.path().join("by")))?;
    let info = vault.backup()?;
    vault.close()?;
    let before = snapshot(&x);
    let refused = restore(
        &info.path,
        &x,
        &root(),
        options(),
        RestoreOptions::new().replace(true),
    );
    assert!(
        matches!(
            refused,
            Err(Error::Backup(BackupProblem::NotOfThisVault { .. }))
        ),
        "{refused:?}"
    );
    assert!(snapshot(&x) == before, "the vault was changed");
    Ok(())
}

/// A token of digits issued after a backup is never issued again once the vault
/// is restored from that backup: a service may still hold it, and it must not come
/// to name someone else's value.
#[test]
fn a_restore_never_issues_again_a_token_of_digits_issued_after_the_backup() -> TestResult {
    use std::collections::HashSet;
    use vault_core::{TokenFormat, TokenizeRequest};
    let dir = tempfile::tempdir()?;
    let live = dir.path().join("live");
    let backups = dir.path().join("backups");
    fn pin(s: &str) -> TokenizeRequest<'_> {
        TokenizeRequest::new(s, "pin", b"55").format(TokenFormat::Digits)
    }
    let backup = {
        let vault = Vault::open(&live, &root(), with_backups(&backups))?;
        let before: Vec<String> = (0..40)
            .map(|i| {
                Ok(vault
                    .tokenize_batch(&[pin(&format!("early-{i}"))])?
                    .remove(0)
                    .to_string())
            })
            .collect::<Result<_, Error>>()?;
        let backup = vault.backup()?;
        // After the backup: the rest of the 2-digit space (99 tokens, not "55").
        let mut after = HashSet::new();
        for i in 0..59 {
            after.insert(
                vault
                    .tokenize_batch(&[pin(&format!("late-{i}"))])?
                    .remove(0)
                    .to_string(),
            );
        }
        assert!(matches!(
            vault.tokenize_batch(&[pin("one-more")]),
            Err(Error::TokenSpaceExhausted)
        ));
        assert_eq!(before.len() + after.len(), 99);
        vault.close()?;
        (backup, after)
    };
    let target = dir.path().join("restored");
    restore(
        &backup.0.path,
        &target,
        &root(),
        options(),
        RestoreOptions::new(),
    )?;
    let vault = Vault::open(&target, &root(), with_backups(&backups))?;
    // The tokens issued after the backup lost their records with the restore, and
    // answer not_found; none of them is given to a new value.
    for token in &backup.1 {
        assert!(
            matches!(vault.detokenize(token), Err(Error::NotFound)),
            "{token}"
        );
    }
    assert!(matches!(
        vault.tokenize_batch(&[pin("after-restore")]),
        Err(Error::TokenSpaceExhausted)
    ));
    vault.close()?;
    Ok(())
}
