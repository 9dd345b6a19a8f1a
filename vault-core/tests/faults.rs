//! Injected faults: a full disk (a real one: a small tmpfs, mounted as root) and
//! failed writes and fsyncs (`EIO`, injected at the storage seam with the
//! `failpoints` feature) during tokenize, erase, purge, KEK rotation, backup and a
//! root-key change. After each the vault refuses writes until reopened, loses
//! nothing it acknowledged, and reopens clean. And SIGKILL between the steps of a
//! purge and of a root-key change (child processes paused at a failpoint): the
//! reopened vault, or the change run again, finishes the work.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use common::*;
use vault_core::internal::{Fault, arm_fault, disarm_faults};
use vault_core::{AuditAction, BackupOptions, Error, RootKey, Vault, VaultOptions};

/// A small tmpfs at `at`; `None` (and a line saying so) when not root or the
/// mount fails: the CI runs as root, where these tests run.
fn small_disk(at: &Path, size: &str) -> std::io::Result<Option<Tmpfs>> {
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self")?.uid() != 0 {
        eprintln!("SKIPPED: not root, cannot mount a tmpfs");
        return Ok(None);
    }
    match Tmpfs::mount(at, size) {
        Ok(disk) => Ok(Some(disk)),
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs ({e})");
            Ok(None)
        }
    }
}

/// Fills the filesystem of `dir` with a ballast file; returns it, to free the space.
fn fill(dir: &Path) -> std::io::Result<PathBuf> {
    let ballast = dir.join("ballast");
    let mut file = std::fs::File::create(&ballast)?;
    let chunk = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = file.write_all(&chunk) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // Whatever a page smaller than a chunk still holds.
    while file.write_all(&[0]).is_ok() {}
    Ok(ballast)
}

/// What a vault acknowledged before a fault: values by token, and erased subjects'
/// tokens.
#[derive(Default)]
struct Acked {
    live: Vec<(String, String)>,
    erased: Vec<String>,
    /// Tokens of a subject whose erasure failed: erased or not.
    in_doubt: Vec<String>,
}

/// Tokenizes `n` subjects `{prefix}{i}`, one value each.
fn load(vault: &Vault, prefix: &str, n: usize, acked: &mut Acked) -> Result<(), Error> {
    for i in 0..n {
        let value = format!("{prefix}{i}@example.com");
        let token = vault.tokenize(&format!("{prefix}{i}"), "email", &value)?;
        acked.live.push((token.to_string(), value));
    }
    Ok(())
}

/// Erases subject `{prefix}{i}`, moving its token to the erased ones.
fn erase(vault: &Vault, prefix: &str, i: usize, acked: &mut Acked) -> Result<(), Error> {
    let value = format!("{prefix}{i}@example.com");
    let at = acked.live.iter().position(|(_, v)| *v == value);
    if let Err(e) = vault.erase(&format!("{prefix}{i}")) {
        acked.in_doubt.extend(at.map(|at| acked.live[at].0.clone()));
        return Err(e);
    }
    if let Some(at) = at {
        acked.erased.push(acked.live.remove(at).0);
    }
    Ok(())
}

/// The vault, after a failed write, takes no more writes (of any kind) and still
/// reads.
fn refuses_writes(vault: &Vault, acked: &mut Acked) {
    assert!(
        vault
            .tokenize("later", "email", "later@example.com")
            .is_err(),
        "a tokenization was taken after a failed write"
    );
    if let Some((token, value)) = acked.live.last() {
        let subject = value.trim_end_matches("@example.com");
        // Refused before the store is written; the erasure journal beside the
        // backups may hold it already, and the reopened vault then makes it, as
        // after a crash at that point.
        acked.in_doubt.push(token.clone());
        assert!(
            vault.erase(subject).is_err(),
            "an erasure was taken after a failed write"
        );
        assert_eq!(
            vault.detokenize(token).expect("reads go on").value.as_str(),
            Some(value.as_str())
        );
    }
}

/// Reopened: everything acknowledged is there, the trail verifies, every erasure
/// in effect has its event, and the vault writes again.
fn reopens_clean(dir: &Path, root: &RootKey, opts: VaultOptions, acked: &Acked) -> TestResult {
    let vault = Vault::open(dir, root, opts)?;
    for (token, value) in &acked.live {
        let got = vault.detokenize(token);
        let got = got.as_ref().map(|d| d.value.as_str());
        assert!(
            matches!(got, Ok(Some(v)) if v == value)
                || acked.in_doubt.contains(token) && matches!(got, Err(Error::Erased)),
            "{value}: {got:?}"
        );
    }
    for token in &acked.erased {
        assert!(matches!(vault.detokenize(token), Err(Error::Erased)));
    }
    let check = vault.verify_audit()?;
    assert!(check.ok, "{check:?}");
    let erasures = vault.key_status()?.pending_purges as u64;
    let events = vault.audit_events(None, usize::MAX)?;
    let erase_events = events
        .iter()
        .filter(|e| e.action == AuditAction::Erase)
        .count() as u64;
    assert!(
        erase_events >= erasures,
        "{erasures} erasures pending, {erase_events} in the trail"
    );
    vault.tokenize("after-reopen", "email", "after@example.com")?;
    assert!(vault.purge_now()?.verified);
    assert!(vault.pending_purges()?.is_empty());
    vault.close()?;
    Ok(())
}

/// The operations faults are injected in.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Tokenize,
    Erase,
    Purge,
    Rotate,
    Backup,
}

const OPS: [Op; 5] = [Op::Tokenize, Op::Erase, Op::Purge, Op::Rotate, Op::Backup];

fn fault_options(base: &Path) -> VaultOptions {
    options()
        .rotation_batch(20)
        .backups(BackupOptions::new(base.join("backups")))
}

/// Runs `op` until it fails (or `tries` runs), recording what it acknowledged.
fn run_until_failure(
    vault: &Vault,
    op: Op,
    acked: &mut Acked,
    tries: usize,
) -> Result<Error, Box<dyn std::error::Error>> {
    for i in 0..tries {
        let result = match op {
            Op::Tokenize => load(vault, &format!("t{i}-"), 1, acked),
            Op::Erase => erase(vault, "s", i, acked),
            Op::Purge => vault.purge_now().map(drop),
            Op::Rotate => vault.rotate_kek().map(drop),
            // A read first, so that the backup has staged events to commit.
            Op::Backup => vault
                .detokenize(&acked.live[0].0)
                .and_then(|_| vault.backup())
                .map(drop),
        };
        if let Err(e) = result {
            return Ok(e);
        }
    }
    Err(format!("{op:?} never failed").into())
}

#[test]
fn a_full_disk_fails_each_operation_and_the_reopened_vault_loses_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for op in OPS {
        let Some(disk) = small_disk(&tmp.path().join(format!("{op:?}")), "16m")? else {
            return Ok(());
        };
        let dir = disk.0.join("vault");
        let opts = || fault_options(&disk.0);
        let vault = Vault::open(&dir, &root(), opts())?;
        let mut acked = Acked::default();
        load(&vault, "s", 200, &mut acked)?;
        for i in 0..5 {
            erase(&vault, "s", i, &mut acked)?;
        }
        // A staging file of read events, before the disk is full (a read that
        // cannot stage its events fails, and writes nothing).
        vault.detokenize(&acked.live[0].0)?;
        let ballast = fill(&disk.0)?;
        let failure = run_until_failure(&vault, op, &mut acked, 100_000)?;
        assert!(
            format!("{failure:?}").contains("No space left on device"),
            "{op:?}: {failure:?}"
        );
        // Space again: still no write until the vault is reopened.
        std::fs::remove_file(ballast)?;
        refuses_writes(&vault, &mut acked);
        drop(vault);
        reopens_clean(&dir, &root(), opts(), &acked)?;
        if op == Op::Rotate {
            let vault = Vault::open(&dir, &root(), opts())?;
            let status = vault.resume_kek_rotation()?;
            assert!(!status.rotation_in_progress, "{status:?}");
        }
    }
    Ok(())
}

/// An `EIO` from a write, or from the fsync after it, in each operation.
#[test]
fn a_failed_write_or_fsync_refuses_writes_until_reopened_and_loses_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for op in OPS {
        // The first write the operation makes, the third, and a failed sync after
        // the first and the third (the data then reached the log).
        // (A backup's one write is the commit of the read events staged before it,
        // unsynced.)
        let cases: &[(&str, u32)] = match op {
            Op::Backup => &[("write", 0), ("write", 2)],
            _ => &[("write", 0), ("write", 2), ("sync", 0), ("sync", 2)],
        };
        for &(point, skip) in cases {
            let base = tmp.path().join(format!("{op:?}-{point}-{skip}"));
            let dir = base.join("vault");
            let opts = || fault_options(&base);
            let vault = Vault::open(&dir, &root(), opts())?;
            let mut acked = Acked::default();
            load(&vault, "s", 100, &mut acked)?;
            for i in 0..3 {
                erase(&vault, "s", i, &mut acked)?;
            }
            arm_fault(&dir, point, skip, Fault::Eio);
            let failure = run_until_failure(&vault, op, &mut acked, 50)?;
            let case = format!("{op:?} at {point} after {skip}");
            assert!(
                !disarm_faults(&dir),
                "{case}: failed with {failure:?} before the fault"
            );
            assert!(
                failure.to_string().contains("injected"),
                "{case}: {failure}"
            );
            refuses_writes(&vault, &mut acked);
            drop(vault);
            reopens_clean(&dir, &root(), opts(), &acked)?;
        }
    }
    Ok(())
}

/// A header that could not be replaced (a root-key change): old or new, the
/// vault refuses writes until reopened, and opens with exactly one of the keys.
#[test]
fn a_failed_header_write_refuses_writes_and_one_root_key_opens() -> TestResult {
    let tmp = tempfile::tempdir()?;
    for (point, changed) in [("header.written", false), ("header.renamed", true)] {
        let dir = tmp.path().join(point);
        let vault = Vault::open(&dir, &root(), options())?;
        let mut acked = Acked::default();
        load(&vault, "s", 20, &mut acked)?;
        arm_fault(&dir, point, 0, Fault::Eio);
        assert!(vault.change_root_key(&new_root()).is_err());
        refuses_writes(&vault, &mut acked);
        drop(vault);
        let good = only_opening_key(&dir, changed);
        reopens_clean(&dir, &good, options(), &acked)?;
    }
    Ok(())
}

const DIR_VAR: &str = "VAULT_FAULTS_TEST_DIR";
const POINT_VAR: &str = "VAULT_FAULTS_TEST_POINT";

fn child_env(var: &str) -> String {
    std::env::var(var).expect("set by the parent test")
}

/// Runs the child test `test` on `dir`, paused at `point`, and SIGKILLs it there.
/// The root key the vault in `dir` opens with after a root-key change that did
/// (`changed`) or did not take effect; the other key is refused.
fn only_opening_key(dir: &Path, changed: bool) -> RootKey {
    let (good, bad) = if changed {
        (new_root(), root())
    } else {
        (root(), new_root())
    };
    assert!(matches!(
        Vault::open(dir, &bad, options()),
        Err(Error::WrongRootKey)
    ));
    good
}

fn kill_at(test: &str, dir: &Path, point: &str) -> TestResult {
    let mut child = child_test(test)?
        .env(DIR_VAR, dir)
        .env(POINT_VAR, point)
        .spawn()?;
    let stdout = child.stdout.take().ok_or("piped")?;
    let paused = BufReader::new(stdout)
        .lines()
        .any(|l| l.is_ok_and(|l| l.ends_with(&format!("PAUSED {point}"))));
    child.kill()?; // SIGKILL
    child.wait()?;
    assert!(paused, "the child never reached {point}");
    Ok(())
}

/// Child: purges (erasures, or expired records) and pauses at the failpoint named.
#[test]
#[ignore = "child process of a_purge_killed_between_its_steps_is_finished_on_reopen"]
fn faults_child_purge() {
    let dir = PathBuf::from(child_env(DIR_VAR));
    let point = child_env(POINT_VAR);
    let vault = Vault::open(&dir, &root(), expiry_options()).expect("open");
    arm_fault(&dir, &point, 0, Fault::Pause);
    // Pauses (and is killed) inside one of these.
    vault.purge_now().expect("purge");
    vault.purge_expired().expect("purge expired");
    panic!("{point} was never reached");
}

/// A clock far past the `ip` field's retention (of one day), for the child.
fn expiry_options() -> VaultOptions {
    let clock = ManualClock::starting();
    clock.advance_days(2);
    options()
        .clock(std::sync::Arc::new(clock))
        .retention("ip", std::time::Duration::from_secs(86_400))
}

#[test]
fn a_purge_killed_between_its_steps_is_finished_on_reopen() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // Before the flush and compactions; after them, before the erasures are
    // marked purged; the same for the expired records' purge (the erasures'
    // purge, with none pending, passes through).
    for (case, point) in [
        ("erasure", "purge.flush"),
        ("erasure", "purge.verified"),
        ("expiry", "purge.flush"),
        ("expiry", "purge.verified"),
    ] {
        let dir = tmp.path().join(format!("{case}-{point}"));
        let mut acked = Acked::default();
        let (wrapped_keys, ip_tokens) = {
            let clock = std::sync::Arc::new(ManualClock::starting());
            let opts = options()
                .clock(clock)
                .retention("ip", std::time::Duration::from_secs(86_400));
            let vault = Vault::open(&dir, &root(), opts)?;
            load(&vault, "s", 30, &mut acked)?;
            let mut ips = Vec::new();
            for i in 0..10 {
                ips.push(
                    vault
                        .tokenize(&format!("s{i}"), "ip", "203.0.113.9")?
                        .to_string(),
                );
            }
            let refs: Vec<String> = (0..10)
                .map(|i| subject_ref(&vault, &format!("s{i}")))
                .collect();
            vault.close()?;
            // The subjects' wrapped keys as stored: the purge must leave no file
            // holding them.
            let keys: Vec<Vec<u8>> = refs
                .iter()
                .map(|r| raw_get(&dir, "keys", &hex_decode(r)).expect("a key"))
                // The wrapped key's tail (the entry also holds the subject hash).
                .map(|entry| entry[entry.len() - 32..].to_vec())
                .collect();
            (keys, ips)
        };
        // What the purge must leave in no file: the erased subjects' wrapped keys,
        // or the expired records' ciphertexts (a tail of the stored record, before
        // its 16-byte link).
        let needles = if case == "erasure" {
            let vault = Vault::open(&dir, &root(), options())?;
            for i in 0..10 {
                erase(&vault, "s", i, &mut acked)?;
            }
            vault.close()?;
            wrapped_keys
        } else {
            ip_tokens
                .iter()
                .map(|t| raw_get(&dir, "records", &token_id(&dir, t)).expect("a record"))
                .map(|stored| stored[stored.len() - 48..stored.len() - 16].to_vec())
                .collect()
        };
        for needle in &needles {
            assert!(
                !files_containing(&dir, needle).is_empty(),
                "positive control"
            );
        }
        kill_at("faults_child_purge", &dir, point)?;

        let vault = Vault::open(&dir, &root(), expiry_options())?;
        if case == "erasure" {
            assert_eq!(
                vault.pending_purges()?.len(),
                10,
                "{point}: purged before the kill"
            );
            assert!(vault.purge_now()?.verified);
            assert!(vault.pending_purges()?.is_empty());
        } else {
            let report = vault.purge_expired()?;
            assert!(report.verified, "{point}: {report:?}");
            for token in &ip_tokens {
                assert!(matches!(vault.detokenize(token), Err(Error::Expired)));
            }
        }
        vault.close()?;
        let vault = Vault::open(&dir, &root(), expiry_options())?;
        assert!(vault.verify_audit()?.ok);
        for (token, value) in &acked.live {
            assert_eq!(
                vault.detokenize(token)?.value.as_str(),
                Some(value.as_str())
            );
        }
        for token in &acked.erased {
            assert!(matches!(vault.detokenize(token), Err(Error::Erased)));
        }
        vault.close()?;
        for needle in &needles {
            assert!(
                files_containing(&dir, needle).is_empty(),
                "{case} {point}: left on disk"
            );
        }
    }
    Ok(())
}

fn new_root() -> RootKey {
    RootKey::from_bytes(&[9; 32]).expect("32 bytes")
}

/// Child: changes the root key and pauses at the failpoint named.
#[test]
#[ignore = "child process of a_root_key_change_killed_between_its_steps_is_finished_by_a_rerun"]
fn faults_child_change_root_key() {
    let dir = PathBuf::from(child_env(DIR_VAR));
    let point = child_env(POINT_VAR);
    let vault = Vault::open(&dir, &root(), options()).expect("open");
    arm_fault(&dir, &point, 0, Fault::Pause);
    vault.change_root_key(&new_root()).expect("change");
    panic!("{point} was never reached");
}

/// The change as `vault-server change-root-key` makes it, run again after a crash:
/// done if the vault opens with the new key, else made with the old one.
fn change_root_key(dir: &Path) -> Result<bool, Error> {
    match Vault::open(dir, &new_root(), options()) {
        Ok(vault) => vault.close().map(|()| false),
        Err(Error::WrongRootKey) => {
            let vault = Vault::open(dir, &root(), options())?;
            vault.change_root_key(&new_root())?;
            vault.close().map(|()| true)
        }
        Err(e) => Err(e),
    }
}

#[test]
fn a_root_key_change_killed_between_its_steps_is_finished_by_a_rerun() -> TestResult {
    let tmp = tempfile::tempdir()?;
    // The new header written and synced, not yet in place; in place, its directory
    // not yet synced.
    for (point, done) in [("header.written", false), ("header.renamed", true)] {
        let dir = tmp.path().join(point);
        let mut acked = Acked::default();
        {
            let vault = Vault::open(&dir, &root(), options())?;
            load(&vault, "s", 20, &mut acked)?;
            vault.close()?;
        }
        kill_at("faults_child_change_root_key", &dir, point)?;
        // Killed: exactly one of the keys opens the vault.
        let good = only_opening_key(&dir, done);
        Vault::open(&dir, &good, options())?.close()?;
        // Run again, the change finishes (or finds itself done).
        assert_eq!(change_root_key(&dir)?, !done, "{point}");
        assert!(!dir.join("VAULT.tmp").exists(), "a temporary header left");
        assert!(matches!(
            Vault::open(&dir, &root(), options()),
            Err(Error::WrongRootKey)
        ));
        reopens_clean(&dir, &new_root(), options(), &acked)?;
    }
    Ok(())
}
