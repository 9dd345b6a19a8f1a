//! The audit trail: tamper-evident, complete for detokenizations and erasures, and
//! unlinkable from an erased subject.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    ManualClock, TestResult, TokenKinds, hex_decode, options, raw_db, root, subject_ref,
    token_kinds,
};
use vault_core::{
    Access, Argument, AuditAction, AuditEvent, Error, LawfulBasis, Purpose, TokenizeRequest,
    VaultOptions,
};

fn audit_options() -> VaultOptions {
    options()
        .purpose(Purpose::new("support", LawfulBasis::Contract).fields(["email"]))
        .purpose(Purpose::new("newsletter", LawfulBasis::Consent))
}

/// A vault with a few audited operations: 8 events.
fn populated(dir: &std::path::Path) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let vault = common::open_vault(dir, &root(), audit_options())?;
    // 2 events: one per subject of the batch.
    let tokens = vault.as_actor("crm")?.tokenize_batch(&[
        TokenizeRequest::new("alice", "email", b"alice@example.com"),
        TokenizeRequest::new("alice", "phone", b"+1 555 0100"),
        TokenizeRequest::new("bob", "email", b"bob@example.com"),
    ])?;
    let [a, p, b] = [0, 1, 2].map(|i| tokens[i].to_string());
    // 3 events: ok, forbidden (phone not covered), ok.
    vault.detokenize_for(&[&a, &p, &b], &Access::new("support", "helpdesk"))?;
    // 1 event: no consent.
    vault.detokenize_for(&[&b], &Access::new("newsletter", "mailer"))?;
    // 1 event: the erasure; 1 more: alice's token read after.
    vault.as_actor("privacy-team")?.erase("alice")?;
    vault.detokenize_for(&[&a], &Access::new("support", "helpdesk"))?;
    vault.close()?;
    Ok(vec![a, p, b])
}

#[test]
fn an_untouched_trail_verifies_and_says_who_did_what() -> TestResult {
    let dir = tempfile::tempdir()?;
    populated(dir.path())?;
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    let check = vault.verify_audit()?;
    assert!(check.ok, "{check:?}");
    assert_eq!(check.events, 8);
    let events = vault.audit_events(None, 100)?;
    let summary: Vec<_> = events
        .iter()
        .map(|e| {
            let purpose = e.purpose.as_deref().unwrap_or("-");
            (
                e.seq,
                e.actor.as_str(),
                e.action.name(),
                e.outcome.name(),
                purpose,
                e.records,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (0, "crm", "tokenize", "ok", "-", 2),
            (1, "crm", "tokenize", "ok", "-", 1),
            (2, "helpdesk", "detokenize", "ok", "support", 1),
            (3, "helpdesk", "detokenize", "forbidden", "support", 0),
            (4, "helpdesk", "detokenize", "ok", "support", 1),
            (5, "mailer", "detokenize", "no_consent", "newsletter", 0),
            (6, "privacy-team", "erase", "ok", "-", 2),
            (7, "helpdesk", "detokenize", "erased", "support", 0),
        ]
    );
    // Alice's events share a reference; bob's differ.
    let alice = events[0].subject;
    assert!(alice.is_some());
    for i in [2, 3] {
        assert_eq!(events[i].subject, alice, "event {i} is about alice");
    }
    assert_eq!(events[6].subject, None, "the erasure names no one");
    for i in [1, 4, 5] {
        assert_ne!(events[i].subject, alice, "event {i} is about bob");
        assert_eq!(events[i].subject, events[1].subject);
    }
    assert_eq!(
        events[7].subject, None,
        "after erasure, nothing can name the subject"
    );
    // Paging.
    let page = vault.audit_events(Some(5), 10)?;
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [6, 7]);
    Ok(())
}

/// `detokenize` of one token, which has its own path (no vectors, a pinned read),
/// answers and records what a batch of that one token does.
#[test]
fn one_token_reads_and_is_recorded_like_a_batch_of_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    let other = tempfile::tempdir()?;
    let TokenKinds {
        live: good,
        erased,
        deleted,
        foreign,
    } = token_kinds(
        &vault,
        &common::open_vault(other.path(), &root(), audit_options())?,
    )?;
    let last = vault.audit_events(None, 100)?.last().map(|e| e.seq);

    let answer = |result: &Result<vault_core::Detokenized, Error>| match result {
        Ok(d) => format!("{:?} {:?}", d.field, d.value.as_str()),
        Err(e) => format!("{e:?}"),
    };
    for token in [&good, "not a token", &erased, &deleted, &foreign] {
        let one = answer(&vault.detokenize(token));
        let batch = vault.detokenize_batch(&[token])?;
        assert_eq!(one, answer(&batch[0]), "{token}");
    }
    assert_eq!(
        answer(&vault.detokenize(&good)),
        "\"email\" Some(\"a@x.io\")"
    );

    // Text that is not a token is recorded by neither; each other read, another
    // vault's token included (a read of a missing record), once by each path, alike.
    let recorded: Vec<_> = vault
        .audit_events(last, 100)?
        .into_iter()
        .map(|e| (e.actor, e.action, e.outcome.name(), e.records, e.subject))
        .collect();
    let outcomes: Vec<_> = recorded.iter().map(|r| r.2).collect();
    assert_eq!(
        outcomes,
        [
            "ok",
            "ok",
            "erased",
            "erased",
            "not_found",
            "not_found",
            "not_found",
            "not_found",
            "ok"
        ]
    );
    for pair in recorded[..8].chunks(2) {
        assert_eq!(pair[0], pair[1]);
    }
    // A read of another vault's token names no subject, as one of a deleted record.
    assert_eq!(recorded[6].4, None);
    assert_eq!(recorded[6], recorded[4]);
    assert_eq!(recorded[0].1, AuditAction::Detokenize);
    assert!(
        recorded[0].4.is_some(),
        "a read of a live record names its subject"
    );
    Ok(())
}

#[test]
fn a_subjects_history_includes_its_reads_still_staged() -> TestResult {
    let dir = tempfile::tempdir()?;
    // No worker: read events stay staged until something commits them.
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    let erin = vault
        .tokenize("erin", "email", "erin@example.com")?
        .to_string();
    let frank = vault
        .tokenize("frank", "email", "frank@example.com")?
        .to_string();
    let reads = |events: &[AuditEvent]| {
        events
            .iter()
            .filter(|e| e.action == AuditAction::Detokenize)
            .count()
    };
    for round in 1..=3 {
        // Another subject's read staged first, then (in the second and third
        // rounds) one of erin's: her history has exactly her reads, however the
        // staged events lie.
        vault.as_actor("crm")?.detokenize(&frank)?;
        if round > 1 {
            vault.as_actor("crm")?.detokenize(&erin)?;
        }
        let written = vault.storage_counters().keys_written;
        let history = vault.subject_audit("erin")?;
        assert_eq!(reads(&history), round - 1, "round {round}");
        if round == 1 {
            // Only frank's read is staged: erin's history commits nothing.
            assert_eq!(vault.storage_counters().keys_written, written);
        }
        let export = vault.export("erin")?;
        assert_eq!(reads(&export.access_log), round - 1, "round {round}");
        assert_eq!(
            reads(&vault.subject_audit("frank")?),
            round,
            "round {round}"
        );
    }
    assert!(vault.verify_audit()?.ok);
    vault.close()?;
    Ok(())
}

#[test]
fn every_operation_on_personal_data_is_recorded_and_listed_for_its_subject() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), audit_options().actor("billing-svc"))?;
    let crm = vault.as_actor("crm")?;
    let t = crm
        .tokenize("erin", "email", "erin@example.com")?
        .to_string();
    let d = crm
        .tokenize_deterministic("erin", "email", "erin@work.example")?
        .to_string();
    crm.rectify(&t, "erin@new.example")?;
    assert_eq!(crm.detokenize(&t)?.value.as_str(), Some("erin@new.example"));
    crm.detokenize_batch(&[&t, &d])?;
    crm.record_consent("erin", "newsletter", true, Some("signup-form"))?;
    vault.detokenize_for(&[&t], &Access::new("newsletter", "mailer"))?;
    crm.record_consent("erin", "newsletter", false, None)?;
    assert_eq!(crm.consents("erin")?.len(), 1);
    crm.delete(&d)?;
    // The vault's own actor, from its options.
    vault.detokenize(&t)?;
    // Someone else's data is not in erin's history.
    vault.tokenize("frank", "email", "frank@example.com")?;

    let history = vault.subject_audit("erin")?;
    let summary: Vec<_> = history
        .iter()
        .map(|e| {
            let purpose = e.purpose.as_deref().unwrap_or("-");
            (e.actor.as_str(), e.action.name(), purpose, e.records)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("crm", "tokenize", "-", 1),
            ("crm", "tokenize_deterministic", "-", 1),
            ("crm", "rectify", "-", 1),
            ("crm", "detokenize", "-", 1),
            ("crm", "detokenize", "-", 1),
            ("crm", "detokenize", "-", 1),
            ("crm", "consent_granted", "newsletter", 0),
            ("mailer", "detokenize", "newsletter", 1),
            ("crm", "consent_withdrawn", "newsletter", 0),
            ("crm", "consents_read", "-", 1),
            ("crm", "delete", "-", 1),
            ("billing-svc", "detokenize", "-", 1),
        ]
    );
    // The export carries that history (Art. 15(1)(c)), and is itself recorded.
    let export = vault.as_actor("dpo")?.export("erin")?;
    assert_eq!(export.access_log, history);
    let last = vault.subject_audit("erin")?.pop().ok_or("no event")?;
    assert_eq!(
        (last.actor.as_str(), last.action, last.records),
        ("dpo", AuditAction::Export, 1)
    );
    // A retention expiry, an erasure and a prune are recorded elsewhere; here: the
    // trail as a whole verifies and carries no personal data.
    assert!(vault.verify_audit()?.ok);
    vault.close()?;
    let db = raw_db(dir.path());
    for family in ["audit", "audit_index"] {
        let cf = db.cf_handle(family).ok_or("family")?;
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item?;
            for needle in [&b"erin"[..], b"example", b"signup-form", b"frank"] {
                assert!(
                    !k.windows(needle.len()).any(|w| w == needle)
                        && !v.windows(needle.len()).any(|w| w == needle),
                    "personal data in {family}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn actor_names_are_checked() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    for bad in ["", "has space", "émile", &"x".repeat(65), "a@b.example"] {
        let err = vault.as_actor(bad).expect_err("refused");
        assert!(matches!(err, Error::InvalidInput(ref e) if e.argument == Argument::Actor));
    }
    assert!(common::open_vault(dir.path(), &root(), audit_options().actor("two words")).is_err());
    Ok(())
}

#[test]
fn the_erasure_receipt_names_its_event() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    vault.tokenize("carol", "email", "carol@example.com")?;
    let receipt = vault.as_actor("dpo")?.erase("carol")?;
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
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    Ok(vault.verify_audit()?)
}

fn key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

#[test]
fn edits_removals_insertions_reorders_and_truncation_are_detected() -> TestResult {
    rocksdb_only!();
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
        let v = get(db, 7);
        put(db, 8, &v);
    })?;
    assert!(!check.ok, "insertion: {check:?}");
    assert_eq!(check.first_bad, Some(8));

    // Truncation: the last two events cut off.
    let check = tampered(|db| {
        delete(db, 7);
        delete(db, 6);
    })?;
    assert!(!check.ok, "truncation: {check:?}");
    assert_eq!(check.first_bad, Some(6));

    // Hiding an event from its subject's access history: its index entry removed.
    let check = tampered(|db| {
        let cf = db.cf_handle("audit_index").expect("audit index");
        let (k, _) = db
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .find_map(|item| item.ok().filter(|(k, _)| k[16..] == key(3)))
            .expect("event 3 is indexed");
        db.delete_cf(cf, k).expect("delete");
    })?;
    assert_eq!(
        (check.ok, check.first_bad),
        (false, Some(3)),
        "index: {check:?}"
    );

    // And the untouched control.
    let check = tampered(|_| {})?;
    assert!(check.ok, "{check:?}");
    Ok(())
}

#[test]
fn after_erasure_nothing_in_the_trail_links_to_the_subject() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let sid;
    {
        let vault = common::open_vault(dir.path(), &root(), audit_options())?;
        let t = vault
            .tokenize("dave", "email", "dave@example.com")?
            .to_string();
        vault.detokenize_for(&[&t], &Access::new("support", "helpdesk"))?;
        assert_eq!(
            vault.subject_audit("dave")?.len(),
            2,
            "found while dave exists: tokenize, detokenize"
        );
        sid = hex_decode(&subject_ref(&vault, "dave"));
        vault.close()?;
    }
    // The keyed hash of the id, which the vault finds the subject by, read while the
    // subject's key entry exists.
    let hash = common::raw_get(dir.path(), "keys", &sid).ok_or("a key entry")?[1..33].to_vec();
    {
        let vault = common::open_vault(dir.path(), &root(), audit_options())?;
        let refs: Vec<_> = vault
            .audit_events(None, 100)?
            .iter()
            .filter_map(|e| e.subject)
            .collect();
        assert_eq!(refs.len(), 3, "tokenize, detokenize, export name dave");
        let receipt = vault.erase("dave")?;
        vault.purge_now()?;
        // The receipt's event proves the erasure and names nobody: with the receipt
        // and the id in hand, it does not lead back to dave's earlier events.
        let seq = receipt.audit_event.ok_or("an event")?;
        let event = vault
            .audit_events(seq.checked_sub(1), 1)?
            .pop()
            .ok_or("event")?;
        assert_eq!((event.action, event.subject), (AuditAction::Erase, None));
        assert!(
            vault.verify_audit()?.ok,
            "the trail still verifies after erasure"
        );
        assert!(vault.subject_audit("dave")?.is_empty());
        // The same id, stored again, is a new subject with a new key: its reference
        // is not the old one.
        let t2 = vault
            .tokenize("dave", "email", "dave@example.com")?
            .to_string();
        vault.detokenize_for(&[&t2], &Access::new("support", "helpdesk"))?;
        let found = vault.subject_audit("dave")?;
        assert_eq!(found.len(), 2, "only the new subject's events");
        assert!(
            found
                .iter()
                .all(|e| !refs.contains(&e.subject.expect("a reference")))
        );
        vault.close()?;
    }
    // Holding the root key and the id: the subject's storage id, the keyed hash of
    // its id and the id itself appear in no event and no index entry.
    let db = raw_db(dir.path());
    for family in ["audit", "audit_index"] {
        let cf = db.cf_handle(family).ok_or("family")?;
        for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (key, value) = item?;
            for needle in [&sid[..], &hash[..], b"dave"] {
                let within = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
                assert!(
                    !within(&key) && !within(&value),
                    "a trace of dave in {family}"
                );
            }
        }
    }
    Ok(())
}

fn pruning_options(clock: &Arc<ManualClock>) -> VaultOptions {
    audit_options()
        .clock(clock.clone())
        .audit_retention(Duration::from_secs(30 * 86_400))
}

#[test]
fn events_past_their_retention_are_pruned_and_the_rest_still_verifies() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let vault = common::open_vault(dir.path(), &root(), pruning_options(&clock))?;
    let old = vault
        .tokenize("gina", "email", "gina@example.com")?
        .to_string();
    vault.detokenize_for(&[&old], &Access::new("support", "helpdesk"))?;
    clock.advance_days(20);
    vault.detokenize_for(&[&old], &Access::new("support", "helpdesk"))?;
    assert_eq!(vault.prune_audit()?, 0, "nothing is 30 days old yet");
    clock.advance_days(15);
    // Events 0 and 1 are 35 days old, event 2 is 15.
    assert_eq!(vault.prune_audit()?, 2);
    let events = vault.audit_events(None, 10)?;
    let kept: Vec<_> = events.iter().map(|e| (e.seq, e.action.name())).collect();
    assert_eq!(kept, [(2, "detokenize"), (3, "audit_pruned")]);
    assert_eq!(
        (events[1].actor.as_str(), events[1].records),
        ("retention", 2)
    );
    let check = vault.verify_audit()?;
    assert!(check.ok, "{check:?}");
    assert_eq!(check.events, 2);
    // The subject's history lists what is kept.
    assert_eq!(vault.subject_audit("gina")?.len(), 1);
    assert_eq!(vault.prune_audit()?, 0, "a second run finds nothing");
    vault.close()?;

    // The background worker prunes too, and the trail survives reopening.
    clock.advance_days(31);
    let vault = common::open_vault(
        dir.path(),
        &root(),
        pruning_options(&clock).background_worker(true),
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while vault.audit_events(None, 10)?.first().map(|e| e.seq) == Some(2) {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not prune"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(vault.verify_audit()?.ok);
    vault.close()?;

    // Removing the oldest kept event, or the base that says where the trail starts,
    // is detected.
    let first = {
        let vault = common::open_vault(dir.path(), &root(), pruning_options(&clock))?;
        vault.audit_events(None, 1)?.pop().ok_or("an event")?.seq
    };
    let base = {
        let db = raw_db(dir.path());
        let meta = db.cf_handle("meta").ok_or("meta")?;
        let base = db.get_cf(meta, b"audit/base")?.ok_or("a base")?;
        db.delete_cf(meta, b"audit/base")?;
        db.flush_wal(true)?;
        base
    };
    let vault = common::open_vault(dir.path(), &root(), pruning_options(&clock))?;
    let check = vault.verify_audit()?;
    assert!(!check.ok, "base removed: {check:?}");
    vault.close()?;
    {
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle("meta").ok_or("meta")?, b"audit/base", &base)?;
        db.delete_cf(db.cf_handle("audit").ok_or("audit")?, first.to_be_bytes())?;
        db.flush_wal(true)?;
    }
    let vault = common::open_vault(dir.path(), &root(), pruning_options(&clock))?;
    let check = vault.verify_audit()?;
    assert_eq!(
        (check.ok, check.first_bad),
        (false, Some(first)),
        "oldest removed: {check:?}"
    );
    Ok(())
}

#[test]
fn a_damaged_checkpoint_is_reported_and_nothing_is_appended_after_it() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    populated(dir.path())?;
    common::alter_checkpoint(dir.path());
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    let check = vault.verify_audit()?;
    assert!(!check.ok);
    assert!(check.problem.unwrap_or_default().contains("checkpoint"));
    let before = vault.audit_events(None, 100)?;
    assert!(matches!(
        vault.tokenize("hana", "email", "hana@example.com"),
        Err(Error::AuditDamaged)
    ));
    assert!(matches!(vault.export("bob"), Err(Error::AuditDamaged)));
    assert_eq!(vault.audit_events(None, 100)?, before, "nothing appended");
    assert!(vault.subject_audit("hana")?.is_empty(), "nothing stored");
    Ok(())
}

#[test]
fn a_missing_or_older_checkpoint_stops_appends_instead_of_overwriting() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    // An older, genuine checkpoint: saved after a first operation.
    let older = {
        let vault = common::open_vault(dir.path(), &root(), audit_options())?;
        vault.tokenize("ivan", "email", "ivan@example.com")?;
        vault.close()?;
        common::raw_get(dir.path(), "meta", b"audit/head").ok_or("a checkpoint")?
    };
    populated(dir.path())?;
    let events =
        common::open_vault(dir.path(), &root(), audit_options())?.audit_events(None, 100)?;
    for (name, head) in [("missing", None), ("older", Some(older))] {
        {
            let db = raw_db(dir.path());
            let meta = db.cf_handle("meta").ok_or("meta")?;
            let current = db.get_cf(meta, b"audit/head")?.ok_or("a checkpoint")?;
            match &head {
                None => db.delete_cf(meta, b"audit/head")?,
                Some(bytes) => db.put_cf(meta, b"audit/head", bytes)?,
            }
            db.flush_wal(true)?;
            drop(db);
            let vault = common::open_vault(dir.path(), &root(), audit_options())?;
            let check = vault.verify_audit()?;
            assert!(!check.ok, "{name}: {check:?}");
            assert!(
                matches!(
                    vault.tokenize("judy", "email", "j@example.com"),
                    Err(Error::AuditDamaged)
                ),
                "{name}: appended after a damaged checkpoint"
            );
            assert_eq!(
                vault.audit_events(None, 100)?,
                events,
                "{name}: the trail changed"
            );
            vault.close()?;
            let db = raw_db(dir.path());
            db.put_cf(db.cf_handle("meta").ok_or("meta")?, b"audit/head", &current)?;
            db.flush_wal(true)?;
        }
        let vault = common::open_vault(dir.path(), &root(), audit_options())?;
        assert!(vault.verify_audit()?.ok, "{name}: restored");
        vault.close()?;
    }
    Ok(())
}

#[test]
fn concurrent_callers_share_commits_and_the_trail_stays_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let syncs_before = vault.storage_counters().wal_syncs;
    std::thread::scope(|scope| -> TestResult {
        // Verification while the trail grows never reports a problem.
        let checker = scope.spawn(|| {
            let mut checks = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let check = vault.verify_audit().expect("verify");
                assert!(check.ok, "{check:?}");
                checks += 1;
            }
            checks
        });
        let workers: Vec<_> = (0..8)
            .map(|t| {
                let vault = &vault;
                scope.spawn(move || {
                    for i in 0..50 {
                        let token = vault
                            .tokenize(&format!("s{t}"), "email", format!("v{i}"))
                            .expect("tokenize")
                            .to_string();
                        vault
                            .detokenize_for(&[&token], &Access::new("support", "helpdesk"))
                            .expect("detokenize");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().map_err(|_| "a worker panicked")?;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(checker.join().map_err(|_| "the checker panicked")? > 0);
        Ok(())
    })?;
    let check = vault.verify_audit()?;
    assert!(check.ok, "{check:?}");
    assert_eq!(check.events, 8 * 50 * 2);
    let events = vault.audit_events(None, 1000)?;
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    for t in 0..8 {
        assert_eq!(vault.subject_audit(&format!("s{t}"))?.len(), 100);
    }
    // Synced tokenizations from 8 threads shared fsyncs (group commit).
    let syncs = vault.storage_counters().wal_syncs - syncs_before;
    assert!(syncs <= 400, "{syncs} syncs for 400 synced writes");
    Ok(())
}

#[test]
fn an_altered_or_removed_mark_of_the_staged_read_events_is_reported_and_reads_refused() -> TestResult
{
    rocksdb_only!();
    for tamper in ["altered", "removed"] {
        let dir = tempfile::tempdir()?;
        let tokens = populated(dir.path())?;
        {
            let db = raw_db(dir.path());
            let meta = db.cf_handle("meta").ok_or("meta")?;
            // The reads of `populated` went through the staging files: the trail took
            // them and marked how far. Without the mark (or with an older one) they
            // would be committed again at the next open.
            let mut mark = db.get_cf(meta, b"audit/staged")?.ok_or("a mark")?;
            if tamper == "altered" {
                mark[1] ^= 1;
                db.put_cf(meta, b"audit/staged", &mark)?;
            } else {
                db.delete_cf(meta, b"audit/staged")?;
            }
            db.flush_wal(true)?;
        }
        let vault = common::open_vault(dir.path(), &root(), audit_options())?;
        let check = vault.verify_audit()?;
        assert!(!check.ok, "{tamper}");
        assert!(
            check.problem.unwrap_or_default().contains("staged"),
            "{tamper}: the problem is named"
        );
        let events = |dir: &std::path::Path| {
            let db = raw_db(dir);
            let audit = db.cf_handle("audit").expect("audit family");
            db.iterator_cf(audit, rocksdb::IteratorMode::Start).count()
        };
        assert!(
            matches!(vault.detokenize(&tokens[0]), Err(Error::AuditDamaged)),
            "{tamper}"
        );
        // Which staged events the trail took is unknown: it is not listed as complete.
        assert!(
            matches!(vault.audit_events(None, 100), Err(Error::AuditDamaged)),
            "{tamper}"
        );
        drop(vault);
        let before = events(dir.path());
        let vault = common::open_vault(dir.path(), &root(), audit_options())?;
        assert!(matches!(vault.export("bob"), Err(Error::AuditDamaged)));
        drop(vault);
        assert_eq!(events(dir.path()), before, "{tamper}: nothing appended");
    }
    Ok(())
}

#[test]
fn a_trail_wiped_with_its_checkpoint_is_found_by_the_mark_left_behind() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    populated(dir.path())?;
    {
        let db = raw_db(dir.path());
        let audit = db.cf_handle("audit").ok_or("audit")?;
        let keys: Vec<Box<[u8]>> = db
            .iterator_cf(audit, rocksdb::IteratorMode::Start)
            .map(|kv| kv.map(|(k, _)| k))
            .collect::<Result<_, _>>()?;
        for k in keys {
            db.delete_cf(audit, k)?;
        }
        let meta = db.cf_handle("meta").ok_or("meta")?;
        db.delete_cf(meta, b"audit/head")?;
        db.flush_wal(true)?;
    }
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    let check = vault.verify_audit()?;
    assert!(!check.ok, "{check:?}");
    assert!(
        check
            .problem
            .unwrap_or_default()
            .contains("checkpoint is missing")
    );
    assert!(matches!(
        vault.tokenize("hana", "email", "hana@example.com"),
        Err(Error::AuditDamaged)
    ));
    Ok(())
}

/// Someone with the disk cuts the trail's tail and puts the older checkpoint (and
/// the mark of staged events that went with it) back: the trail verifies on its
/// own, and only a head kept outside the vault shows what was lost.
#[test]
fn a_head_kept_outside_finds_a_cut_tail_and_a_rolled_back_trail() -> TestResult {
    rocksdb_only!();
    use vault_core::AnchorCheck;
    let dir = tempfile::tempdir()?;
    let copy = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    vault.tokenize("ivan", "email", "ivan@example.com")?;
    let older = vault.audit_head()?.ok_or("a head")?;
    vault.close()?;
    let saved: Vec<(&[u8], Option<Vec<u8>>)> = [&b"audit/head"[..], b"audit/staged"]
        .into_iter()
        .map(|k| (k, common::raw_get(dir.path(), "meta", k)))
        .collect();
    for entry in std::fs::read_dir(dir.path())? {
        let entry = entry?;
        std::fs::copy(entry.path(), copy.path().join(entry.file_name()))?;
    }
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    vault.tokenize("judy", "email", "judy@example.com")?;
    vault.erase("judy")?;
    let anchor = vault.audit_head()?.ok_or("a head")?;
    assert!(anchor.seq > older.seq);
    assert_eq!(
        vault.verify_audit_against(&anchor)?.anchor,
        Some(AnchorCheck::Contained)
    );
    vault.close()?;

    // The cut: every event after the older head removed, its checkpoint put back.
    {
        let db = raw_db(dir.path());
        let audit = db.cf_handle("audit").ok_or("audit")?;
        for seq in older.seq + 1..=anchor.seq {
            db.delete_cf(audit, seq.to_be_bytes())?;
        }
        let meta = db.cf_handle("meta").ok_or("meta")?;
        for (key, value) in &saved {
            match value {
                Some(v) => db.put_cf(meta, key, v)?,
                None => db.delete_cf(meta, key)?,
            }
        }
        db.flush_wal(true)?;
    }
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    assert!(
        vault.verify_audit()?.ok,
        "the cut trail verifies on its own"
    );
    let check = vault.verify_audit_against(&anchor)?;
    assert!(!check.ok);
    assert_eq!(check.anchor, Some(AnchorCheck::Truncated));
    assert_eq!(
        vault.verify_audit_against(&older)?.anchor,
        Some(AnchorCheck::Contained)
    );
    vault.close()?;

    // The rollback: an older copy of the directory, continued.
    let vault = common::open_vault(copy.path(), &root(), audit_options())?;
    vault.tokenize("karl", "email", "karl@example.com")?;
    vault.tokenize("lena", "email", "lena@example.com")?;
    vault.erase("karl")?;
    assert!(vault.audit_head()?.ok_or("a head")?.seq >= anchor.seq);
    assert!(vault.verify_audit()?.ok);
    let check = vault.verify_audit_against(&anchor)?;
    assert!(!check.ok);
    assert_eq!(check.anchor, Some(AnchorCheck::RolledBack));
    vault.close()?;
    Ok(())
}

#[test]
fn deterministic_tokenizations_are_audited_as_such() -> TestResult {
    use vault_core::AuditAction;
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), audit_options())?;
    let crm = vault.as_actor("crm")?;
    crm.tokenize_batch(&[
        TokenizeRequest::new("alice", "email", b"a@example.com").deterministic(),
        TokenizeRequest::new("alice", "phone", b"+1 555 0100"),
    ])?;
    // Handed out again without a write: still a deterministic call, recorded.
    crm.tokenize_batch(
        &[TokenizeRequest::new("alice", "email", b"a@example.com").deterministic()],
    )?;
    let kinds: Vec<(AuditAction, u64)> = vault
        .audit_events(None, 100)?
        .iter()
        .map(|e| (e.action, e.records))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (AuditAction::TokenizeDeterministic, 1),
            (AuditAction::Tokenize, 1),
            (AuditAction::TokenizeDeterministic, 1),
        ]
    );
    vault.close()?;
    Ok(())
}
