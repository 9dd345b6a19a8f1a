//! Retention: records past their field's period answer *expired* and are purged from
//! every file like erased ones. Time is injected; nothing sleeps for days.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{ManualClock, TestResult, files_containing, options, raw_get, root, token_id};
use vault_core::{Access, Error, LawfulBasis, Purpose, Vault, VaultOptions};

fn retention_options(clock: &Arc<ManualClock>) -> VaultOptions {
    options()
        .clock(clock.clone())
        .retention("ip_address", Duration::from_secs(30 * 86_400))
        .purpose(Purpose::new("security", LawfulBasis::LegitimateInterests))
}

/// The stored ciphertext of a record (the tail of its stored value).
fn stored_ciphertext(
    dir: &std::path::Path,
    vault: &Vault,
    token: &str,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let key = vault_core::internal::record_key(vault, token)?;
    let stored = raw_get(dir, "records", &key).ok_or("no record")?;
    // The sealed value is `nonce || ciphertext || tag` near the end of the record,
    // followed by the 16-byte link tag; 32 bytes before the link are ciphertext/tag.
    let end = stored.len() - 16;
    Ok(stored[end - 32..end].to_vec())
}

#[test]
fn expired_values_answer_expired_and_leave_the_disk() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let vault = common::open_vault(dir.path(), &root(), retention_options(&clock))?;
    let ip = vault
        .tokenize("s1", "ip_address", "203.0.113.77")?
        .to_string();
    let email = vault
        .tokenize("s1", "email", "kept@example.com")?
        .to_string();
    let ip_cipher = stored_ciphertext(dir.path(), &vault, &ip)?;
    let email_cipher = stored_ciphertext(dir.path(), &vault, &email)?;
    assert!(
        !files_containing(dir.path(), &ip_cipher).is_empty(),
        "positive control"
    );

    clock.advance_days(29);
    assert_eq!(vault.detokenize(&ip)?.value.as_str(), Some("203.0.113.77"));
    assert!(vault.purge_expired()?.records == 0, "nothing due yet");

    clock.advance_days(2);
    assert!(matches!(vault.detokenize(&ip), Err(Error::Expired)));
    let access = Access::new("security", "siem");
    let results = vault.detokenize_for(&[&ip, &email], &access)?;
    assert!(matches!(results[0], Err(Error::Expired)));
    assert!(results[1].is_ok(), "a field without retention is kept");
    assert!(matches!(
        vault.rectify(&ip, "198.51.100.1"),
        Err(Error::Expired)
    ));
    let export = vault.export("s1")?;
    let fields: Vec<_> = export.records.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(fields, ["email"], "expired records are not exported");

    let report = vault.purge_expired()?;
    assert_eq!((report.records, report.verified), (1, true));
    let last = vault.subject_audit("s1")?.pop().ok_or("an event")?;
    assert_eq!(
        (last.actor.as_str(), last.action.name(), last.records),
        ("retention", "expire", 1),
        "the expiry is in the subject's history"
    );
    assert!(
        files_containing(dir.path(), &ip_cipher).is_empty(),
        "the expired ciphertext is still on disk"
    );
    assert!(
        !files_containing(dir.path(), &email_cipher).is_empty(),
        "bystander kept"
    );
    assert!(
        matches!(vault.detokenize(&ip), Err(Error::Expired)),
        "the stub answers expired"
    );
    // A tokenization after the expiry counts from the stored entry (not from one
    // the vault kept in memory since the tokenizations before it).
    vault.tokenize("s1", "phone", "+1 555 0100")?;
    assert_eq!(
        vault.erase("s1")?.records,
        2,
        "the subject's record count went down with the expiry"
    );
    vault.close()?;

    let vault = common::open_vault(dir.path(), &root(), retention_options(&clock))?;
    assert!(matches!(vault.detokenize(&ip), Err(Error::Expired)));
    Ok(())
}

#[test]
fn the_background_worker_purges_expired_records() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let vault = common::open_vault(
        dir.path(),
        &root(),
        retention_options(&clock).background_worker(true),
    )?;
    let ip = vault
        .tokenize("s2", "ip_address", "192.0.2.10")?
        .to_string();
    let cipher = stored_ciphertext(dir.path(), &vault, &ip)?;
    clock.advance_days(31);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !files_containing(dir.path(), &cipher).is_empty() {
        if Instant::now() > deadline {
            return Err("the worker did not purge the expired record".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(matches!(vault.detokenize(&ip), Err(Error::Expired)));
    assert!(vault.key_status()?.background_error.is_none());
    Ok(())
}

#[test]
fn a_forged_expired_stub_is_an_integrity_error() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let token = {
        let vault = common::open_vault(dir.path(), &root(), retention_options(&clock))?;
        let t = vault
            .tokenize("s3", "email", "live@example.com")?
            .to_string();
        vault.close()?;
        t
    };
    // An expired stub of another token, copied over a live record: its tag is bound
    // to the other token's id.
    let other = {
        let vault = common::open_vault(dir.path(), &root(), retention_options(&clock))?;
        let t = vault.tokenize("s3", "ip_address", "10.0.0.1")?.to_string();
        clock.advance_days(31);
        vault.purge_expired()?;
        vault.close()?;
        t
    };
    let stub = raw_get(dir.path(), "records", &token_id(dir.path(), &other)).ok_or("no stub")?;
    common::raw_put(dir.path(), "records", &token_id(dir.path(), &token), &stub);
    let vault = common::open_vault(dir.path(), &root(), retention_options(&clock))?;
    assert!(matches!(vault.detokenize(&token), Err(Error::Integrity)));
    assert!(matches!(vault.detokenize(&other), Err(Error::Expired)));
    Ok(())
}

/// A deterministic token whose record expired (stubbed or not yet) is not handed
/// back answering *expired*: the value is stored again, with a new creation time,
/// under the same token.
#[test]
fn a_deterministic_tokenization_of_an_expired_value_stores_it_afresh() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let vault = common::open_vault(dir.path(), &root(), retention_options(&clock))?;
    let first = vault
        .tokenize_deterministic("alice", "ip_address", "192.0.2.1")?
        .to_string();
    clock.advance_days(31);
    // Expired but not purged yet.
    assert!(matches!(vault.detokenize(&first), Err(Error::Expired)));
    let again = vault
        .tokenize_deterministic("alice", "ip_address", "192.0.2.1")?
        .to_string();
    assert_eq!(again, first);
    let read = vault.detokenize(&again)?;
    assert_eq!(read.value.as_str(), Some("192.0.2.1"));
    assert_eq!(read.created_at, common::START + 31 * common::DAY);
    // Expired and purged: a stub.
    clock.advance_days(31);
    assert_eq!(vault.purge_expired()?.records, 1);
    assert!(matches!(vault.detokenize(&first), Err(Error::Expired)));
    let third = vault
        .tokenize_deterministic("alice", "ip_address", "192.0.2.1")?
        .to_string();
    assert_eq!(third, first);
    assert_eq!(vault.detokenize(&third)?.value.as_str(), Some("192.0.2.1"));
    assert_eq!(vault.export("alice")?.records.len(), 1);
    vault.close()?;
    Ok(())
}

/// An erased subject's expiry entries (expiry time ‖ token id → storage id) link
/// its tokens to its storage id until they fall due, maybe decades later: the purge
/// removes them with the rest, from every file.
#[test]
fn an_erasure_purges_the_subjects_expiry_entries() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let vault = common::open_vault(dir.path(), &root(), retention_options(&clock))?;
    for i in 0..5 {
        vault.tokenize("victim", "ip_address", format!("192.0.2.{i}"))?;
    }
    vault.tokenize("bystander", "ip_address", "198.51.100.1")?;
    let victim = common::hex_decode(&common::subject_ref(&vault, "victim"));
    let bystander = common::hex_decode(&common::subject_ref(&vault, "bystander"));
    vault.close()?;
    let expiry_values =
        |dir: &std::path::Path| -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
            let db = common::raw_db(dir);
            let cf = db.cf_handle("expiry").ok_or("expiry")?;
            let mut values = Vec::new();
            for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
                values.push(item?.1.to_vec());
            }
            Ok(values)
        };
    let before = expiry_values(dir.path())?;
    assert_eq!(
        before.iter().filter(|v| **v == victim).count(),
        5,
        "control"
    );
    // The files of the expiry family, and whether any holds `needle`. (The record
    // stubs keep the token ids, and the erasure entry the storage id: only here
    // are the two linked.)
    let expiry_files_holding = |needle: &[u8]| -> Result<usize, Box<dyn std::error::Error>> {
        let db = common::raw_db(dir.path());
        let cf = db.cf_handle("expiry").ok_or("expiry")?;
        db.flush_cf(cf)?;
        let mut holding = 0;
        for file in db.live_files()? {
            if file.column_family_name == "expiry" {
                let path = dir.path().join(file.name.trim_start_matches('/'));
                let bytes = std::fs::read(path)?;
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    holding += 1;
                }
            }
        }
        Ok(holding)
    };
    assert!(
        expiry_files_holding(&victim)? > 0,
        "control: the storage id in an expiry file"
    );

    let vault = common::open_vault(
        dir.path(),
        &root(),
        retention_options(&clock).purge_policy(vault_core::PurgePolicy::Immediate),
    )?;
    vault.erase("victim")?;
    vault.close()?;
    let after = expiry_values(dir.path())?;
    assert_eq!(
        after.iter().filter(|v| **v == victim).count(),
        0,
        "an entry left"
    );
    assert_eq!(after.iter().filter(|v| **v == bystander).count(), 1);
    assert_eq!(
        expiry_files_holding(&victim)?,
        0,
        "the storage id is still in an expiry file"
    );
    assert!(expiry_files_holding(&bystander)? > 0);
    Ok(())
}
