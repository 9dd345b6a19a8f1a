//! The audit trail: tamper-evident, complete for detokenizations and erasures, and
//! unlinkable from an erased subject.

mod common;

use common::{TestResult, hex_decode, options, raw_db, root, subject_ref};
use vault_core::{Access, AuditAction, AuditOutcome, LawfulBasis, Purpose, Vault, VaultOptions};

fn audit_options() -> VaultOptions {
    options()
        .purpose(Purpose::new("support", LawfulBasis::Contract).fields(["email"]))
        .purpose(Purpose::new("newsletter", LawfulBasis::Consent))
}

/// A vault with a few audited operations: 6 events.
fn populated(dir: &std::path::Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let vault = Vault::open(dir, &root(), audit_options())?;
    let a = vault
        .tokenize("alice", "email", "alice@example.com")?
        .to_string();
    let p = vault.tokenize("alice", "phone", "+1 555 0100")?.to_string();
    let b = vault
        .tokenize("bob", "email", "bob@example.com")?
        .to_string();
    // 3 events: ok, forbidden (phone not covered), ok.
    vault.detokenize_for(&[&a, &p, &b], &Access::new("support", "helpdesk"))?;
    // 1 event: no consent.
    vault.detokenize_for(&[&b], &Access::new("newsletter", "mailer"))?;
    // 1 event: the erasure; 1 more: bob's token read after.
    vault.erase_as("alice", "privacy-team")?;
    vault.detokenize_for(&[&a], &Access::new("support", "helpdesk"))?;
    vault.close()?;
    Ok(vec![a, p, b])
}

#[test]
fn an_untouched_trail_verifies_and_says_who_did_what() -> TestResult {
    let dir = tempfile::tempdir()?;
    populated(dir.path())?;
    let vault = Vault::open(dir.path(), &root(), audit_options())?;
    let check = vault.verify_audit()?;
    assert!(check.ok, "{check:?}");
    assert_eq!(check.events, 6);
    let events = vault.audit_events(None, 100)?;
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            (
                e.seq,
                e.actor.as_str(),
                e.action,
                e.outcome,
                e.purpose.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                0,
                "helpdesk",
                AuditAction::Detokenize,
                AuditOutcome::Ok,
                Some("support")
            ),
            (
                1,
                "helpdesk",
                AuditAction::Detokenize,
                AuditOutcome::Forbidden,
                Some("support")
            ),
            (
                2,
                "helpdesk",
                AuditAction::Detokenize,
                AuditOutcome::Ok,
                Some("support")
            ),
            (
                3,
                "mailer",
                AuditAction::Detokenize,
                AuditOutcome::NoConsent,
                Some("newsletter")
            ),
            (
                4,
                "privacy-team",
                AuditAction::Erase,
                AuditOutcome::Ok,
                None
            ),
            (
                5,
                "helpdesk",
                AuditAction::Detokenize,
                AuditOutcome::Erased,
                Some("support")
            ),
        ]
    );
    // Alice's events share a reference; bob's differ.
    assert_eq!(events[0].subject, events[1].subject);
    assert_ne!(events[0].subject, events[2].subject);
    assert_eq!(
        events[0].subject, events[4].subject,
        "the erasure names the same reference"
    );
    assert_eq!(
        events[5].subject, None,
        "after erasure, nothing can name the subject"
    );
    // Paging.
    let page = vault.audit_events(Some(3), 10)?;
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    Ok(())
}

#[test]
fn the_erasure_receipt_names_its_event() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = Vault::open(dir.path(), &root(), audit_options())?;
    vault.tokenize("carol", "email", "carol@example.com")?;
    let receipt = vault.erase_as("carol", "dpo")?;
    let seq = receipt.audit_event.ok_or("no audit event")?;
    let event = vault
        .audit_events(seq.checked_sub(1), 1)?
        .pop()
        .ok_or("no event")?;
    assert_eq!(
        (event.seq, event.action, event.records),
        (seq, AuditAction::Erase, 1)
    );
    assert!(vault.verify_audit()?.ok);
    Ok(())
}

/// Edits the raw `audit` family of a closed vault, then verifies.
fn tampered(
    edit: impl FnOnce(&rocksdb::DB),
) -> Result<vault_core::AuditVerification, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    populated(dir.path())?;
    {
        let db = raw_db(dir.path());
        edit(&db);
        db.flush_wal(true)?;
    }
    let vault = Vault::open(dir.path(), &root(), audit_options())?;
    Ok(vault.verify_audit()?)
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[test]
fn edits_removals_insertions_reorders_and_truncation_are_detected() -> TestResult {
    let get = |db: &rocksdb::DB, seq: u64| -> Vec<u8> {
        let cf = db.cf_handle("audit").expect("audit family");
        db.get_cf(cf, key(seq)).expect("read").expect("event")
    };
    let put = |db: &rocksdb::DB, seq: u64, value: &[u8]| {
        let cf = db.cf_handle("audit").expect("audit family");
        db.put_cf(cf, key(seq), value).expect("write");
    };
    let delete = |db: &rocksdb::DB, seq: u64| {
        let cf = db.cf_handle("audit").expect("audit family");
        db.delete_cf(cf, key(seq)).expect("delete");
    };

    // Edit: change the actor's name inside event 2 (same length).
    let check = tampered(|db| {
        let mut v = get(db, 2);
        let at = v.windows(8).position(|w| w == b"helpdesk").expect("actor");
        v[at] = b'H';
        put(db, 2, &v);
    })?;
    assert_eq!(
        (check.ok, check.first_bad),
        (false, Some(2)),
        "edit: {check:?}"
    );

    // Removal of a middle event.
    let check = tampered(|db| delete(db, 3))?;
    assert_eq!(
        (check.ok, check.first_bad),
        (false, Some(3)),
        "removal: {check:?}"
    );

    // Reorder: swap events 1 and 2.
    let check = tampered(|db| {
        let (one, two) = (get(db, 1), get(db, 2));
        put(db, 1, &two);
        put(db, 2, &one);
    })?;
    assert_eq!(
        (check.ok, check.first_bad),
        (false, Some(1)),
        "reorder: {check:?}"
    );

    // Insertion: a copy of an event appended after the last one.
    let check = tampered(|db| {
        let v = get(db, 5);
        put(db, 6, &v);
    })?;
    assert!(!check.ok, "insertion: {check:?}");
    assert_eq!(check.first_bad, Some(6));

    // Truncation: the last two events cut off.
    let check = tampered(|db| {
        delete(db, 5);
        delete(db, 4);
    })?;
    assert!(!check.ok, "truncation: {check:?}");
    assert_eq!(check.first_bad, Some(4));

    // And the untouched control.
    let check = tampered(|_| {})?;
    assert!(check.ok, "{check:?}");
    Ok(())
}

#[test]
fn after_erasure_nothing_in_the_trail_links_to_the_subject() -> TestResult {
    let dir = tempfile::tempdir()?;
    let sid;
    {
        let vault = Vault::open(dir.path(), &root(), audit_options())?;
        let t = vault
            .tokenize("dave", "email", "dave@example.com")?
            .to_string();
        vault.detokenize_for(&[&t], &Access::new("support", "helpdesk"))?;
        assert_eq!(
            vault.subject_audit("dave")?.len(),
            1,
            "found while dave exists"
        );
        sid = hex_decode(&subject_ref(&vault, "dave"));
        vault.erase("dave")?;
        vault.purge_now()?;
        assert!(
            vault.verify_audit()?.ok,
            "the trail still verifies after erasure"
        );
        assert!(vault.subject_audit("dave")?.is_empty());
        // The same id, stored again, is a new subject with a new key: its reference
        // does not find the old events.
        let t2 = vault
            .tokenize("dave", "email", "dave@example.com")?
            .to_string();
        vault.detokenize_for(&[&t2], &Access::new("support", "helpdesk"))?;
        let found = vault.subject_audit("dave")?;
        assert_eq!(found.len(), 1, "only the new subject's event");
        vault.close()?;
    }
    // Holding the root key and the id: the subject's storage id and the keyed hash of
    // its id (what the vault uses to find it) appear in no event.
    let db = raw_db(dir.path());
    let cf = db.cf_handle("audit").ok_or("audit family")?;
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (_, value) = item?;
        assert!(
            !value.windows(sid.len()).any(|w| w == sid.as_slice()),
            "a storage id in an event"
        );
        assert!(
            !value.windows(4).any(|w| w == b"dave"),
            "a subject id in an event"
        );
    }
    Ok(())
}
