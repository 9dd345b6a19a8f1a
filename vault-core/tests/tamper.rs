//! Tamper evidence: altered or misplaced stored data gives an integrity error, never
//! a wrong value. The tampering is done to the RocksDB data directly, as someone with
//! write access to the disk would.

mod common;

use common::*;
use vault_core::{Error, Vault};

#[test]
fn flipped_bytes_in_a_record_are_detected() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = {
        let vault = open(dir.path());
        let t = vault.tokenize("s1", "email", "a@x.io")?.to_string();
        vault.close()?;
        t
    };
    let id = token_id(dir.path(), &token);
    let original = raw_get(dir.path(), "records", &id).expect("record");
    // Flip each byte in turn (the ciphertext, the tag, the nonce, the field, the
    // framing): every variant must be refused, none may decrypt to something else.
    for i in 0..original.len() {
        let mut bad = original.clone();
        bad[i] ^= 0x01;
        raw_put(dir.path(), "records", &id, &bad);
        let vault = open(dir.path());
        match vault.detokenize(&token) {
            Err(Error::Integrity) => {}
            other => panic!("byte {i}: expected Integrity, got {other:?}"),
        }
        let export = vault.export("s1");
        assert!(
            matches!(export, Err(Error::Integrity)),
            "byte {i}: {export:?}"
        );
    }
    raw_put(dir.path(), "records", &id, &original);
    assert_eq!(
        open(dir.path()).detokenize(&token)?.value.as_bytes(),
        b"a@x.io"
    );
    Ok(())
}

#[test]
fn a_ciphertext_copied_onto_another_record_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (a, b, c) = {
        let vault = open(dir.path());
        let a = vault.tokenize("s1", "email", "a@x.io")?.to_string();
        // Same subject and field: only the token id tells them apart.
        let b = vault.tokenize("s1", "email", "b@x.io")?.to_string();
        // Another subject.
        let c = vault.tokenize("s2", "email", "c@x.io")?.to_string();
        vault.close()?;
        (a, b, c)
    };
    let value_b = raw_get(dir.path(), "records", &token_id(dir.path(), &b)).expect("b");
    let value_c = raw_get(dir.path(), "records", &token_id(dir.path(), &c)).expect("c");
    raw_put(dir.path(), "records", &token_id(dir.path(), &a), &value_b);
    {
        let vault = open(dir.path());
        assert!(matches!(vault.detokenize(&a), Err(Error::Integrity)));
        assert_eq!(vault.detokenize(&b)?.value.as_bytes(), b"b@x.io");
    }
    raw_put(dir.path(), "records", &token_id(dir.path(), &a), &value_c);
    let vault = open(dir.path());
    assert!(matches!(vault.detokenize(&a), Err(Error::Integrity)));
    assert_eq!(vault.detokenize(&c)?.value.as_bytes(), b"c@x.io");
    Ok(())
}

#[test]
fn a_tampered_or_swapped_subject_key_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (a, b, ref_a, ref_b) = {
        let vault = open(dir.path());
        let a = vault.tokenize("s1", "email", "a@x.io")?.to_string();
        let b = vault.tokenize("s2", "email", "b@x.io")?.to_string();
        let ra = subject_ref(&vault, "s1");
        let rb = subject_ref(&vault, "s2");
        vault.close()?;
        (a, b, ra, rb)
    };
    let (sid_a, sid_b) = (hex_decode(&ref_a), hex_decode(&ref_b));
    let key_a = raw_get(dir.path(), "keys", &sid_a).expect("key a");
    let key_b = raw_get(dir.path(), "keys", &sid_b).expect("key b");
    // s2's wrapped key under s1's storage id.
    raw_put(dir.path(), "keys", &sid_a, &key_b);
    assert!(matches!(
        open(dir.path()).detokenize(&a),
        Err(Error::Integrity)
    ));
    let mut flipped = key_a.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x80;
    raw_put(dir.path(), "keys", &sid_a, &flipped);
    let vault = open(dir.path());
    assert!(matches!(vault.detokenize(&a), Err(Error::Integrity)));
    assert_eq!(vault.detokenize(&b)?.value.as_bytes(), b"b@x.io");
    Ok(())
}

#[test]
fn a_tampered_header_does_not_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    open(dir.path()).close()?;
    let path = dir.path().join("VAULT");
    let original = std::fs::read(&path)?;
    let len = original.len();
    // The last bytes are the sealed keyring; earlier ones the commitment and KDF.
    for i in [len - 1, len - 20, len - 60, 12] {
        let mut bad = original.clone();
        bad[i] ^= 0x01;
        std::fs::write(&path, &bad)?;
        let result = Vault::open(dir.path(), &root(), options());
        assert!(
            matches!(
                result,
                Err(Error::Integrity | Error::WrongRootKey | Error::NotAVault { .. })
            ),
            "byte {i}: {result:?}"
        );
    }
    std::fs::write(&path, &original)?;
    open(dir.path()).close()?;
    Ok(())
}

/// Pointing one subject's entry at another subject's storage id must not let an
/// operation on the first act on the second.
#[test]
fn a_subject_entry_pointed_at_another_subject_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let b_token = {
        let vault = open(dir.path());
        vault.tokenize("alice", "email", "a@x.io")?;
        let b = vault.tokenize("bob", "email", "b@x.io")?.to_string();
        vault.close()?;
        b
    };
    // Find both subject entries (keyed by subject hash) and give alice bob's.
    let db = raw_db(dir.path());
    let cf = db.cf_handle("subjects").expect("cf");
    type Entry = (Box<[u8]>, Box<[u8]>);
    let entries: Vec<Entry> = db
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .collect::<Result<_, _>>()?;
    drop(db);
    assert_eq!(entries.len(), 2);
    let vault = open(dir.path());
    let bob_ref = subject_ref(&vault, "bob");
    vault.close()?;
    let (bob_entry, alice_key) = if entries[0].1.windows(16).any(|w| w == hex_decode(&bob_ref)) {
        (&entries[0].1, &entries[1].0)
    } else {
        (&entries[1].1, &entries[0].0)
    };
    raw_put(dir.path(), "subjects", alice_key, bob_entry);

    let vault = open(dir.path());
    assert!(matches!(vault.export("alice"), Err(Error::Integrity)));
    assert!(matches!(
        vault.tokenize("alice", "email", "x"),
        Err(Error::Integrity)
    ));
    assert!(matches!(vault.erase("alice"), Err(Error::Integrity)));
    // Bob is untouched by all of that.
    assert_eq!(vault.detokenize(&b_token)?.value.as_bytes(), b"b@x.io");
    assert_eq!(vault.export("bob")?.records.len(), 1);
    Ok(())
}

/// What an erasure leaves behind is authenticated: it cannot be forged to make live
/// data read as erased.
#[test]
fn forged_erasure_traces_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (live, erased, live_ref, erased_ref) = {
        let vault = open(dir.path());
        let live = vault.tokenize("alice", "email", "a@x.io")?.to_string();
        let erased = vault.tokenize("carol", "email", "c@x.io")?.to_string();
        let live_ref = subject_ref(&vault, "alice");
        let erased_ref = vault
            .erase("carol")?
            .subject_ref
            .expect("carol")
            .to_string();
        vault.purge_now()?;
        vault.close()?;
        (live, erased, live_ref, erased_ref)
    };
    // carol's token is a stub now; copy it over alice's live record.
    let stub = raw_get(dir.path(), "records", &token_id(dir.path(), &erased)).expect("stub");
    let original = raw_get(dir.path(), "records", &token_id(dir.path(), &live)).expect("live");
    raw_put(dir.path(), "records", &token_id(dir.path(), &live), &stub);
    {
        let vault = open(dir.path());
        assert!(matches!(vault.detokenize(&erased), Err(Error::Erased)));
        assert!(matches!(vault.detokenize(&live), Err(Error::Integrity)));
    }
    raw_put(
        dir.path(),
        "records",
        &token_id(dir.path(), &live),
        &original,
    );

    // Delete alice's key and copy carol's erasure entry onto alice's storage id.
    let erasure = raw_get(dir.path(), "erasures", &hex_decode(&erased_ref)).expect("erasure");
    {
        let db = raw_db(dir.path());
        let keys = db.cf_handle("keys").expect("cf");
        db.delete_cf(keys, hex_decode(&live_ref))?;
        db.flush_cf(keys)?;
    }
    raw_put(dir.path(), "erasures", &hex_decode(&live_ref), &erasure);
    let vault = open(dir.path());
    assert!(matches!(vault.detokenize(&live), Err(Error::Integrity)));
    Ok(())
}

/// A forged purge-queue entry must not shred a live subject.
#[test]
fn a_forged_purge_queue_entry_shreds_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (token, sref) = {
        let vault = open(dir.path());
        let t = vault.tokenize("alice", "email", "a@x.io")?.to_string();
        let r = subject_ref(&vault, "alice");
        vault.close()?;
        (t, r)
    };
    // A queue entry for alice's live storage id (value: format byte + due time 0).
    raw_put(dir.path(), "purge_queue", &hex_decode(&sref), &[1, 0]);
    let vault = open(dir.path());
    assert_eq!(vault.pending_purges()?.len(), 1);
    let report = vault.purge_now()?;
    assert_eq!(report.subjects, 0);
    assert!(
        vault.pending_purges()?.is_empty(),
        "the forged entry is dropped"
    );
    assert_eq!(vault.detokenize(&token)?.value.as_bytes(), b"a@x.io");
    assert_eq!(vault.export("alice")?.records.len(), 1);
    Ok(())
}

/// A live record re-pointed at an erased subject's storage id is damage, not an
/// erasure.
#[test]
fn a_record_repointed_at_an_erased_subject_is_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (token, live_ref, erased_ref) = {
        let vault = open(dir.path());
        let t = vault.tokenize("alice", "email", "a@x.io")?.to_string();
        vault.tokenize("carol", "email", "c@x.io")?;
        let live = subject_ref(&vault, "alice");
        let erased = vault
            .erase("carol")?
            .subject_ref
            .expect("carol")
            .to_string();
        vault.close()?;
        (t, live, erased)
    };
    let mut record = raw_get(dir.path(), "records", &token_id(dir.path(), &token)).expect("record");
    let (from, to) = (hex_decode(&live_ref), hex_decode(&erased_ref));
    let at = record
        .windows(16)
        .position(|w| w == from.as_slice())
        .expect("sid in record");
    record[at..at + 16].copy_from_slice(&to);
    raw_put(
        dir.path(),
        "records",
        &token_id(dir.path(), &token),
        &record,
    );
    let vault = open(dir.path());
    assert!(matches!(vault.detokenize(&token), Err(Error::Integrity)));
    assert!(matches!(vault.rectify(&token, "x"), Err(Error::Integrity)));
    assert!(matches!(vault.delete(&token), Err(Error::Integrity)));
    Ok(())
}

/// The wrapped key's AAD binds the subject hash: rewriting the stored hash too (so
/// the plain comparison passes) leaves a key that does not open.
#[test]
fn a_key_entry_relabelled_to_another_subject_does_not_open() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (a, b, ref_a, ref_b) = {
        let vault = open(dir.path());
        let a = vault.tokenize("s1", "email", "a@x.io")?.to_string();
        let b = vault.tokenize("s2", "email", "b@x.io")?.to_string();
        let ra = subject_ref(&vault, "s1");
        let rb = subject_ref(&vault, "s2");
        vault.close()?;
        (a, b, ra, rb)
    };
    let key_a = raw_get(dir.path(), "keys", &hex_decode(&ref_a)).expect("key a");
    let key_b = raw_get(dir.path(), "keys", &hex_decode(&ref_b)).expect("key b");
    // s1's wrapped key, labelled with s2's subject hash.
    let mut relabelled = key_a.clone();
    relabelled[1..33].copy_from_slice(&key_b[1..33]);
    raw_put(dir.path(), "keys", &hex_decode(&ref_a), &relabelled);
    let vault = open(dir.path());
    assert!(matches!(vault.detokenize(&a), Err(Error::Integrity)));
    assert!(matches!(vault.export("s1"), Err(Error::Integrity)));
    assert_eq!(vault.detokenize(&b)?.value.as_bytes(), b"b@x.io");
    Ok(())
}

/// A subject whose wrapped key no longer unwraps can still be erased: the erasure
/// does not need the key, and its purge (without the records' group, derived from
/// the key) compacts whole families and verifies.
#[test]
fn a_subject_whose_key_is_damaged_can_still_be_erased() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (token, sid) = {
        let vault = open(dir.path());
        let t = vault.tokenize("damaged", "email", "d@x.io")?.to_string();
        let sid = common::hex_decode(&common::subject_ref(&vault, "damaged"));
        vault.close()?;
        (t, sid)
    };
    let mut entry = raw_get(dir.path(), "keys", &sid).expect("key entry");
    let last = entry.len() - 1;
    entry[last] ^= 0x01; // the wrapped key's tag
    raw_put(dir.path(), "keys", &sid, &entry);

    let vault = open(dir.path());
    assert!(matches!(vault.detokenize(&token), Err(Error::Integrity)));
    let receipt = vault.erase("damaged")?;
    assert_eq!(receipt.records, 1);
    let report = vault.purge_now()?;
    assert!(report.verified, "{report:?}");
    assert!(matches!(vault.detokenize(&token), Err(Error::Erased)));
    Ok(())
}

/// A purge-queue entry altered to point the purge at other keys (its tag no longer
/// matches) is purged as if it named none: whole families, verified, and the real
/// subject hash is gone from every file (compression off).
#[test]
fn an_altered_purge_queue_entry_is_purged_whole() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (token, sid) = {
        // Enough subjects that their entries fill several table files, so that a
        // purge pointed at the wrong key would compact the wrong one.
        let vault = Vault::open(dir.path(), &root(), relaxed())?;
        let names: Vec<String> = (0..100_000).map(|i| format!("other-{i}")).collect();
        for chunk in names.chunks(5_000) {
            let items: Vec<vault_core::TokenizeRequest> = chunk
                .iter()
                .map(|s| vault_core::TokenizeRequest::new(s, "email", b"o@x.io"))
                .collect();
            vault.tokenize_batch(&items)?;
        }
        let t = vault.tokenize("altered", "email", "a@x.io")?.to_string();
        let sid = common::hex_decode(&common::subject_ref(&vault, "altered"));
        assert!(vault_core::internal::compact(&vault)?);
        vault.close()?;
        (t, sid)
    };
    // The key entry starts with the format byte and the subject hash.
    let hash = raw_get(dir.path(), "keys", &sid).expect("key entry")[1..33].to_vec();
    {
        let vault = open(dir.path());
        vault.erase("altered")?;
        vault.close()?;
    }
    let mut entry = raw_get(dir.path(), "purge_queue", &sid).expect("queue entry");
    // format (1) || due (varint) || Some (1) || hash (32) || group (8) || tag (16):
    // move the hash to the other half of the key space.
    let at = entry.len() - 16 - 8 - 32;
    entry[at] ^= 0x80;
    raw_put(dir.path(), "purge_queue", &sid, &entry);
    assert!(!files_containing(dir.path(), &hash).is_empty(), "control");

    let vault = open(dir.path());
    let report = vault.purge_now()?;
    assert!(report.verified, "{report:?}");
    assert!(matches!(vault.detokenize(&token), Err(Error::Erased)));
    assert!(vault.pending_purges()?.is_empty());
    vault.close()?;
    let holders = files_containing(dir.path(), &hash);
    assert!(holders.is_empty(), "subject hash still in {holders:?}");
    Ok(())
}

/// A record of an erased subject that no longer decodes is shredded by the purge
/// like the others (it is in the subject's key range), not left on disk.
#[test]
fn a_damaged_record_of_an_erased_subject_is_shredded_too() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (damaged, kept) = {
        let vault = open(dir.path());
        let damaged = vault.tokenize("victim", "email", "v@x.io")?.to_string();
        vault.tokenize("victim", "phone", "+100")?;
        let kept = vault.tokenize("bystander", "email", "b@x.io")?.to_string();
        vault.close()?;
        (damaged, kept)
    };
    let key = token_id(dir.path(), &damaged);
    let original = raw_get(dir.path(), "records", &key).expect("record");
    raw_put(dir.path(), "records", &key, &original[..original.len() / 2]);

    let vault = open(dir.path());
    assert!(matches!(vault.detokenize(&damaged), Err(Error::Integrity)));
    vault.erase("victim")?;
    let report = vault.purge_now()?;
    assert!(report.verified, "{report:?}");
    assert!(matches!(vault.detokenize(&damaged), Err(Error::Erased)));
    assert_eq!(vault.detokenize(&kept)?.value.as_bytes(), b"b@x.io");
    vault.close()?;
    let half = &original[original.len() / 2 - 16..original.len() / 2];
    assert!(
        files_containing(dir.path(), half).is_empty(),
        "damaged bytes left"
    );
    Ok(())
}
