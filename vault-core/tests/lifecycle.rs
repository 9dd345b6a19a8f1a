//! The vault used the way an embedding service uses it: tokenize, detokenize,
//! deterministic tokens, rectify, delete, export, erase, reuse of a subject id,
//! root-key changes, and refusals of bad input and foreign directories.

mod common;

use common::*;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use vault_core::{
    Argument, Error, KdfParams, Problem, RootKey, TokenizeRequest, Vault, VaultOptions,
};

#[test]
fn tokenize_detokenize_round_trip_survives_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let token = {
        let vault = open(dir.path());
        let token = vault.tokenize("customer-1", "email", "alice@example.com")?;
        let got = vault.detokenize(&token.to_string())?;
        assert_eq!(got.field, "email");
        assert_eq!(got.value.as_str(), Some("alice@example.com"));
        vault.close()?;
        token
    };
    let vault = open(dir.path());
    let got = vault.detokenize(&token.to_string())?;
    assert_eq!(got.value.as_bytes(), b"alice@example.com");
    Ok(())
}

/// Runs a future to completion on this thread (no executor needed for one future).
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(output) => return output,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[test]
fn an_unsynced_tokenization_is_ready_only_after_a_wal_sync() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let syncs = || vault.storage_counters().wal_syncs;

    // Awaited (the way an async server does it)...
    let before = syncs();
    let unsynced =
        vault.tokenize_batch_unsynced(&[TokenizeRequest::new("customer-1", "email", b"a@x")])?;
    let awaited = block_on(unsynced.into_future())?;
    assert!(syncs() > before, "ready before the WAL was synced");
    // ...or waited for on a thread that may block.
    let before = syncs();
    let waited = vault
        .as_actor("billing")?
        .tokenize_batch_unsynced(&[TokenizeRequest::new("customer-2", "email", b"b@x")])?
        .wait()?;
    assert!(syncs() > before, "ready before the WAL was synced");
    vault.close()?;

    let vault = open(dir.path());
    for (tokens, value) in [(awaited, "a@x"), (waited, "b@x")] {
        let got = vault.detokenize(&tokens[0].to_string())?;
        assert_eq!(got.value.as_str(), Some(value));
    }
    // Bad input is refused before anything is written, as with the synced call.
    let bad = vault.tokenize_batch_unsynced(&[TokenizeRequest::new("", "email", b"x")]);
    assert!(matches!(bad, Err(Error::InvalidInput(_))));
    Ok(())
}

#[test]
fn an_unsynced_write_outstanding_at_close_is_synced_by_the_close() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let unsynced =
        vault.tokenize_batch_unsynced(&[TokenizeRequest::new("customer-1", "email", b"a@x")])?;
    vault.close()?;
    let tokens = unsynced.wait()?;
    let vault = open(dir.path());
    let got = vault.detokenize(&tokens[0].to_string())?;
    assert_eq!(got.value.as_str(), Some("a@x"));

    // With relaxed durability there is nothing to wait for, and no sync is made.
    let dir = tempfile::tempdir()?;
    let vault = common::open_vault(dir.path(), &root(), relaxed())?;
    let before = vault.storage_counters().wal_syncs;
    let tokens = vault
        .tokenize_batch_unsynced(&[TokenizeRequest::new("customer-1", "email", b"a@x")])?
        .wait()?;
    if common::on_postgres() {
        // Every commit on PostgreSQL is synchronous, whatever the durability says.
        assert!(vault.storage_counters().wal_syncs > before);
    } else {
        assert_eq!(vault.storage_counters().wal_syncs, before);
    }
    assert!(vault.detokenize(&tokens[0].to_string()).is_ok());
    Ok(())
}

#[test]
fn tokens_are_opaque_and_unlinkable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let a = vault.tokenize("customer-1", "email", "same")?.to_string();
    let b = vault.tokenize("customer-1", "email", "same")?.to_string();
    assert_ne!(a, b, "random tokens differ even for the same value");
    assert_eq!(a.len(), vault_core::TOKEN_TEXT_LEN);
    assert!(!a.contains("customer") && !a.contains("same"));
    // No common prefix beyond the fixed "tok_" that would tie two tokens to a subject.
    assert_ne!(a[4..8], b[4..8]);
    Ok(())
}

#[test]
fn batch_tokenize_is_ordered_and_atomic() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let items = [
        TokenizeRequest::new("s1", "email", b"a@x.io"),
        TokenizeRequest::new("s2", "phone", b"+33 1 23 45 67 89"),
        TokenizeRequest::new("s1", "name", b"Alice"),
    ];
    let tokens = vault.tokenize_batch(&items)?;
    assert_eq!(tokens.len(), 3);
    for (t, item) in tokens.iter().zip(&items) {
        let got = vault.detokenize(&t.to_string())?;
        assert_eq!(got.value.as_bytes(), item.value);
        assert_eq!(got.field, item.field);
    }

    // One invalid item: an error naming it, and nothing of the batch stored.
    let before = vault.storage_counters().keys_written;
    let bad = [
        TokenizeRequest::new("s3", "email", b"ok@x.io"),
        TokenizeRequest::new("s3", "email", b""),
    ];
    match vault.tokenize_batch(&bad) {
        Err(Error::InvalidInput(e)) => {
            assert_eq!(e.item, Some(1));
            assert_eq!(e.argument, Argument::Value);
            assert_eq!(e.problem, Problem::Empty);
        }
        other => panic!("expected an input error, got {other:?}"),
    }
    assert_eq!(vault.storage_counters().keys_written, before);
    assert!(vault.export("s3")?.records.is_empty());
    Ok(())
}

/// The record count an erasure reports follows every write of the subject: the
/// vault keeps the subjects it tokenizes for in memory, and a deletion between two
/// tokenizations must not leave the second one counting from a stale entry.
#[test]
fn erasure_counts_the_records_left_after_deletions_between_tokenizations() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let a = vault.tokenize("s1", "email", "a@x.io")?.to_string();
    let b = vault.tokenize("s1", "email", "b@x.io")?.to_string();
    vault.delete(&a)?;
    vault.tokenize("s1", "phone", "1")?;
    vault.delete(&b)?;
    vault.tokenize("s1", "phone", "2")?;
    vault.tokenize_batch(&[
        TokenizeRequest::new("s1", "phone", b"3"),
        TokenizeRequest::new("s2", "phone", b"4"),
        TokenizeRequest::new("s1", "phone", b"5"),
    ])?;
    assert_eq!(vault.export("s1")?.records.len(), 4);
    assert_eq!(vault.erase("s1")?.records, 4);
    assert_eq!(vault.erase("s2")?.records, 1);
    Ok(())
}

#[test]
fn detokenize_batch_gives_one_result_per_token() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let other_dir = tempfile::tempdir()?;
    let TokenKinds {
        live: good,
        erased,
        deleted,
        foreign,
    } = token_kinds(&vault, &open(other_dir.path()))?;
    let results = vault.detokenize_batch(&[
        good.as_str(),
        "not a token",
        erased.as_str(),
        deleted.as_str(),
        foreign.as_str(),
        good.as_str(),
    ])?;
    assert_eq!(results.len(), 6);
    assert_eq!(
        results[0]
            .as_ref()
            .map(|d| d.value.as_bytes().to_vec())
            .ok(),
        Some(b"a@x.io".to_vec())
    );
    assert!(matches!(results[1], Err(Error::InvalidToken)));
    assert!(matches!(results[2], Err(Error::Erased)));
    assert!(matches!(results[3], Err(Error::NotFound)));
    // Another vault's token has a token's shape: this vault has no record for it.
    assert!(matches!(results[4], Err(Error::NotFound)));
    assert!(results[5].is_ok());
    Ok(())
}

#[test]
fn deterministic_tokens_repeat_per_subject_and_die_with_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let a = vault.tokenize_deterministic("s1", "email", "a@x.io")?;
    let b = vault.tokenize_deterministic("s1", "email", "a@x.io")?;
    assert_eq!(a, b);
    // Its value is what the token is derived from: it cannot be rectified.
    assert!(matches!(
        vault.rectify(&a.to_string(), "other@x.io"),
        Err(Error::DeterministicToken)
    ));
    assert_eq!(
        vault.detokenize(&a.to_string())?.value.as_bytes(),
        b"a@x.io"
    );
    assert_ne!(a, vault.tokenize_deterministic("s2", "email", "a@x.io")?);
    assert_ne!(
        a,
        vault.tokenize_deterministic("s1", "backup_email", "a@x.io")?
    );
    // Repeating it stores nothing new.
    assert_eq!(vault.export("s1")?.records.len(), 2);
    // In one batch, duplicates collapse to one record too.
    let req = TokenizeRequest::new("s3", "email", b"c@x.io").deterministic();
    let tokens = vault.tokenize_batch(&[req, req])?;
    assert_eq!(tokens[0], tokens[1]);
    assert_eq!(vault.export("s3")?.records.len(), 1);

    vault.erase("s1")?;
    assert!(matches!(
        vault.detokenize(&a.to_string()),
        Err(Error::Erased)
    ));
    // The same id is a new subject with a new key: a different deterministic token.
    let again = vault.tokenize_deterministic("s1", "email", "a@x.io")?;
    assert_ne!(again, a);
    assert_eq!(
        vault.detokenize(&again.to_string())?.value.as_bytes(),
        b"a@x.io"
    );
    Ok(())
}

#[test]
fn rectify_and_delete() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let t = vault.tokenize("s1", "email", "old@x.io")?.to_string();
    let created = vault.detokenize(&t)?.created_at;
    vault.rectify(&t, "new@x.io")?;
    let got = vault.detokenize(&t)?;
    assert_eq!(got.value.as_bytes(), b"new@x.io");
    assert_eq!(got.field, "email");
    assert_eq!(got.created_at, created);
    assert!(matches!(vault.rectify(&t, ""), Err(Error::InvalidInput(_))));
    assert_eq!(vault.detokenize(&t)?.value.as_bytes(), b"new@x.io");

    vault.delete(&t)?;
    assert!(matches!(vault.detokenize(&t), Err(Error::NotFound)));
    assert!(matches!(vault.delete(&t), Err(Error::NotFound)));
    assert!(matches!(vault.rectify(&t, "x"), Err(Error::NotFound)));
    assert!(vault.export("s1")?.records.is_empty());

    let t2 = vault.tokenize("s1", "email", "x@x.io")?.to_string();
    vault.erase("s1")?;
    assert!(matches!(vault.rectify(&t2, "y"), Err(Error::Erased)));
    assert!(matches!(vault.delete(&t2), Err(Error::Erased)));
    Ok(())
}

#[test]
fn export_returns_exactly_the_subjects_records() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let mut mine = Vec::new();
    for i in 0..20 {
        let value = format!("value-{i}");
        mine.push((vault.tokenize("me", &format!("f{i}"), &value)?, value));
        vault.tokenize("someone-else", "email", format!("other-{i}"))?;
    }
    let export = vault.export("me")?;
    assert!(export.subject_ref.is_some());
    assert_eq!(export.records.len(), 20);
    for (token, value) in &mine {
        let rec = export
            .records
            .iter()
            .find(|r| &r.token == token)
            .expect("every token exported");
        assert_eq!(rec.value.as_str(), Some(value.as_str()));
    }
    assert!(vault.export("nobody")?.records.is_empty());
    assert!(vault.export("nobody")?.subject_ref.is_none());
    Ok(())
}

/// Pages of an export, followed by their cursors, give exactly the one-call export:
/// every record once, then the access log, consents on the first page.
#[test]
fn export_pages_follow_their_cursor_to_the_whole_export() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    for i in 0..23 {
        vault.tokenize("me", &format!("f{i}"), format!("value-{i}"))?;
        vault.tokenize("someone-else", "email", format!("other-{i}"))?;
    }
    let tokens: Vec<String> = vault
        .export("me")?
        .records
        .iter()
        .map(|r| r.token.to_string())
        .collect();
    for t in tokens.iter().take(4) {
        vault.detokenize(t)?;
    }
    let whole = vault.export("me")?;
    assert!(whole.next.is_none());
    // The whole export is in the access log now, as are 4 reads and 1 export.
    let events_before = whole.access_log.len();

    let mut records = Vec::new();
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = vault.export_page("me", cursor.as_deref(), 5)?;
        pages += 1;
        assert!(page.records.len() + page.access_log.len() <= 5);
        assert_eq!(page.subject_ref, whole.subject_ref);
        assert_eq!(
            page.consents.is_empty(),
            pages > 1 || whole.consents.is_empty()
        );
        if !events.is_empty() {
            assert!(page.records.is_empty(), "records come before events");
        }
        records.extend(page.records);
        events.extend(page.access_log);
        match page.next {
            Some(next) => {
                assert!(!next.contains("value"), "a cursor names a position only");
                cursor = Some(next);
            }
            None => break,
        }
        assert!(pages < 100, "the cursor must move");
    }
    let paged: Vec<String> = records.iter().map(|r| r.token.to_string()).collect();
    assert_eq!(paged, tokens, "every record once, in order");
    // The access log as the paged export began: the whole export's, and that
    // export itself; not the paged export's own pages, or following them would
    // never end.
    assert_eq!(events.len(), events_before + 1);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "each event once");
    let before: Vec<u64> = whole.access_log.iter().map(|e| e.seq).collect();
    assert_eq!(seqs[..events_before], before[..]);

    // Pages of one item end too: each page's own event is not listed.
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = vault.export_page("me", cursor.as_deref(), 1)?;
        pages += 1;
        assert!(pages < 200, "pages of one item must end");
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }

    // A cursor is a position: one of a token's shape whose tag this vault did not
    // make (the last letter changed) seeks where the real one does, among the
    // subject's own records.
    let first = vault
        .export_page("me", None, 1)?
        .next
        .ok_or("a first page")?;
    let (at, until) = first.rsplit_once('.').ok_or("a cursor")?;
    let last = at.chars().last().ok_or("a token")?;
    let other = if last == 'a' { 'b' } else { 'a' };
    let forged = format!("{}{other}.{until}", &at[..at.len() - 1]);
    assert_ne!(forged, first);
    let tokens_of = |cursor: &str| -> Result<Vec<String>, Error> {
        let page = vault.export_page("me", Some(cursor), 3)?;
        Ok(page.records.iter().map(|r| r.token.to_string()).collect())
    };
    assert_eq!(tokens_of(&forged)?, tokens_of(&first)?);
    assert_eq!(tokens_of(&forged)?, tokens[1..4]);

    // Text that is not a cursor is refused, naming no content.
    let cut = format!("r{}", &tokens[0][..10]);
    for bad in [
        "",
        "x",
        "rnot-a-token.1",
        "e-1.1",
        "e1x.1",
        "e+1.1",
        "e1",
        "e.",
        "e1.x",
        &cut,
    ] {
        match vault.export_page("me", Some(bad), 5) {
            Err(Error::InvalidInput(e)) => {
                assert_eq!(
                    (e.argument, e.problem),
                    (Argument::Cursor, Problem::Malformed)
                );
            }
            other => panic!("cursor {bad:?}: {other:?}"),
        }
    }
    Ok(())
}

#[test]
fn erase_receipt_and_reuse_of_subject_id() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let tokens: Vec<String> = (0..5)
        .map(|i| {
            vault
                .tokenize("s1", "email", format!("v{i}"))
                .map(|t| t.to_string())
        })
        .collect::<Result<_, _>>()?;
    let receipt = vault.erase("s1")?;
    assert_eq!(receipt.records, 5);
    let sref = receipt.subject_ref.clone().expect("a subject was erased");
    assert!(matches!(
        receipt.purge,
        vault_core::PurgeState::Pending { .. }
    ));
    for t in &tokens {
        assert!(matches!(vault.detokenize(t), Err(Error::Erased)));
    }
    assert_eq!(vault.pending_purges()?.len(), 1);
    assert!(vault.export("s1")?.records.is_empty());

    // Idempotent: erasing again finds nothing.
    let again = vault.erase("s1")?;
    assert_eq!(again.purge, vault_core::PurgeState::NotNeeded);
    assert_eq!(again.records, 0);

    // Reuse: a new subject, new key, and the old tokens stay erased.
    let fresh = vault.tokenize("s1", "email", "new")?.to_string();
    assert_eq!(vault.detokenize(&fresh)?.value.as_bytes(), b"new");
    assert_eq!(vault.export("s1")?.records.len(), 1);
    assert_ne!(vault.export("s1")?.subject_ref, Some(sref.clone()));

    let report = vault.purge_now()?;
    assert!(report.verified);
    assert_eq!(report.records, 5);
    assert!(vault.pending_purges()?.is_empty());
    for t in &tokens {
        assert!(matches!(vault.detokenize(t), Err(Error::Erased)));
    }
    let later = vault.erasure_receipt(&sref)?.expect("receipt kept");
    assert!(matches!(later.purge, vault_core::PurgeState::Done { .. }));
    assert_eq!(later.records, 5);
    assert_eq!(vault.detokenize(&fresh)?.value.as_bytes(), b"new");
    Ok(())
}

#[test]
fn passphrase_vault_wrong_key_and_root_change() -> TestResult {
    let dir = tempfile::tempdir()?;
    let opts = || options().kdf_params(KdfParams::MINIMUM);
    let token = {
        let vault =
            common::open_vault(dir.path(), &RootKey::passphrase("first passphrase"), opts())?;
        vault.tokenize("s1", "email", "a@x.io")?.to_string()
    };

    let before = snapshot(dir.path());
    for wrong in [
        RootKey::passphrase("wrong passphrase"),
        RootKey::from_bytes(&[1; 32])?,
    ] {
        match common::open_vault(dir.path(), &wrong, opts()) {
            Err(Error::WrongRootKey) => {}
            other => panic!("expected WrongRootKey, got {other:?}"),
        }
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "a refused open changes nothing on disk"
    );

    {
        let vault =
            common::open_vault(dir.path(), &RootKey::passphrase("first passphrase"), opts())?;
        vault.change_root_key(&RootKey::passphrase("second passphrase"))?;
        assert_eq!(vault.detokenize(&token)?.value.as_bytes(), b"a@x.io");
    }
    assert!(matches!(
        common::open_vault(dir.path(), &RootKey::passphrase("first passphrase"), opts()),
        Err(Error::WrongRootKey)
    ));
    {
        let vault = common::open_vault(
            dir.path(),
            &RootKey::passphrase("second passphrase"),
            opts(),
        )?;
        assert_eq!(vault.detokenize(&token)?.value.as_bytes(), b"a@x.io");
        vault.change_root_key(&root())?;
    }
    let vault = common::open_vault(dir.path(), &root(), opts())?;
    assert_eq!(vault.detokenize(&token)?.value.as_bytes(), b"a@x.io");
    Ok(())
}

#[test]
fn weak_kdf_parameters_are_refused() -> TestResult {
    let dir = tempfile::tempdir()?;
    let weak = KdfParams {
        memory_kib: 1024,
        iterations: 1,
        parallelism: 1,
    };
    let result = common::open_vault(
        dir.path(),
        &RootKey::passphrase("long enough passphrase"),
        options().kdf_params(weak),
    );
    assert!(matches!(result, Err(Error::InvalidOption(_))));
    assert!(all_files(dir.path()).is_empty(), "nothing created");
    Ok(())
}

#[test]
fn a_short_passphrase_is_refused_for_a_new_vault_and_a_new_root_key() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let missing = tmp.path().join("vault");
    for short in ["", "short"] {
        let result = common::open_vault(&missing, &RootKey::passphrase(short), options());
        assert!(
            matches!(&result, Err(Error::InvalidOption(m)) if m.contains("at least 12 characters")),
            "{:?}",
            result.map(|_| ())
        );
        assert!(!missing.exists(), "no directory created");
    }
    // The same into an empty directory: nothing written.
    let result = common::open_vault(tmp.path(), &RootKey::passphrase(""), options());
    assert!(matches!(result, Err(Error::InvalidOption(_))));
    assert!(all_files(tmp.path()).is_empty(), "nothing created");

    let vault = common::open_vault(&missing, &RootKey::passphrase("twelve chars"), options())?;
    let result = vault.change_root_key(&RootKey::passphrase("eleven char"));
    assert!(matches!(result, Err(Error::InvalidOption(_))));
    vault.close()?;
    // The passphrase it was made with still opens it.
    common::open_vault(&missing, &RootKey::passphrase("twelve chars"), options())?.close()?;
    Ok(())
}

#[test]
fn foreign_directories_and_newer_formats_are_refused_untouched() -> TestResult {
    rocksdb_only!();
    // A directory with other things in it.
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("notes.txt"), b"hello")?;
    let before = snapshot(dir.path());
    assert!(matches!(
        open_result(dir.path()),
        Err(Error::NotAVault { .. })
    ));
    assert_eq!(snapshot(dir.path()), before);

    // A vault from a newer format version.
    let dir = tempfile::tempdir()?;
    open(dir.path()).close()?;
    let header = dir.path().join("VAULT");
    let mut bytes = std::fs::read(&header)?;
    bytes[8] = 0xff;
    std::fs::write(&header, &bytes)?;
    let before = snapshot(dir.path());
    assert!(matches!(
        open_result(dir.path()),
        Err(Error::UnsupportedFormat {
            found: 0xff,
            supported: 2
        })
    ));
    assert_eq!(snapshot(dir.path()), before);

    // A missing directory with creation off.
    let missing = tempfile::tempdir()?.path().join("nope");
    let result = common::open_vault(&missing, &root(), options().create_if_missing(false));
    assert!(matches!(result, Err(Error::NoVault { .. })));
    assert!(!missing.exists());
    Ok(())
}

fn open_result(dir: &std::path::Path) -> Result<Vault, Error> {
    common::open_vault(dir, &root(), options())
}

#[test]
fn bad_input_is_refused_without_content_and_changes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let t = vault.tokenize("s1", "email", "a@x.io")?.to_string();
    let secret = "very-secret-subject-0xdeadbeef";
    let long_subject = format!("{secret}{}", "x".repeat(300));
    let long_value = format!("{secret}{}", "v".repeat(70_000));
    let before = vault.storage_counters().keys_written;
    let cases: Vec<Result<(), Error>> = vec![
        vault.tokenize("", "email", "v").map(drop),
        vault.tokenize(&long_subject, "email", "v").map(drop),
        vault.tokenize("s1\u{7}", "email", "v").map(drop),
        vault.tokenize("s1", "", "v").map(drop),
        vault.tokenize("s1", "e mail", "v").map(drop),
        vault.tokenize("s1", &"f".repeat(65), "v").map(drop),
        vault.tokenize("s1", "email", "").map(drop),
        vault.tokenize("s1", "email", &long_value).map(drop),
        vault.tokenize_batch(&[]).map(drop),
        vault.rectify(&t, &long_value),
        vault.rectify("tok_garbage", "v"),
        vault.erase("").map(drop),
        vault.erase(&long_subject).map(drop),
        vault.export(&long_subject).map(drop),
        vault.detokenize(secret).map(drop),
        vault.delete("").map(drop),
    ];
    for (i, case) in cases.into_iter().enumerate() {
        let err = case.expect_err("bad input must be refused");
        assert!(
            matches!(err, Error::InvalidInput(_) | Error::InvalidToken),
            "case {i}: {err:?}"
        );
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("secret"), "case {i} leaks input: {shown}");
    }
    let many: Vec<TokenizeRequest> = (0..10_001)
        .map(|_| TokenizeRequest::new("s", "f", b"v"))
        .collect();
    assert!(matches!(
        vault.tokenize_batch(&many),
        Err(Error::InvalidInput(_))
    ));
    assert_eq!(
        vault.storage_counters().keys_written,
        before,
        "nothing written"
    );
    assert_eq!(vault.detokenize(&t)?.value.as_bytes(), b"a@x.io");
    assert_eq!(vault.export("s1")?.records.len(), 1);
    Ok(())
}

#[test]
fn limits_are_configurable() -> TestResult {
    let dir = tempfile::tempdir()?;
    let limits = vault_core::Limits {
        max_value_len: 8,
        ..vault_core::Limits::default()
    };
    let vault = common::open_vault(dir.path(), &root(), options().limits(limits))?;
    vault.tokenize("s", "f", "12345678")?;
    assert!(matches!(
        vault.tokenize("s", "f", "123456789"),
        Err(Error::InvalidInput(e)) if e.problem == Problem::TooLong { limit: 8 }
    ));
    assert!(matches!(
        common::open_vault(
            tempfile::tempdir()?.path(),
            &root(),
            VaultOptions::default().dek_cache_capacity(0)
        ),
        Err(Error::InvalidOption(_))
    ));
    Ok(())
}

#[test]
fn secrets_stay_out_of_debug_output() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let t = vault.tokenize("alice@example.com", "email", "alice@example.com")?;
    let got = vault.detokenize(&t.to_string())?;
    let export = vault.export("alice@example.com")?;
    for shown in [
        format!("{vault:?}"),
        format!("{got:?}"),
        format!("{export:?}"),
        format!("{:?}", root()),
        format!("{:?}", RootKey::passphrase("hunter2 hunter2")),
        format!(
            "{:?}",
            TokenizeRequest::new("alice@example.com", "email", b"alice@example.com")
        ),
    ] {
        assert!(!shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // The root key's bytes as Debug would list them, twenty in a row: a short
        // run like "7, 7, 7" turns up in a random subject reference now and then.
        assert!(!shown.contains(&format!("{ROOT:?}")[1..60]), "{shown}");
    }
    Ok(())
}

/// A vault of the first format (records under random keys, the tokens' own ids)
/// keeps working as one: tokens round-trip, erasure and its purge (whole families,
/// verified) work, and the header stays in that format when it is rewritten.
#[test]
fn a_vault_of_the_first_format_keeps_its_layout() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    open(dir.path()).close()?;
    let header = dir.path().join("VAULT");
    let mut bytes = std::fs::read(&header)?;
    assert_eq!(bytes[8], 2, "new vaults are of format 2");
    bytes[8] = 1;
    std::fs::write(&header, &bytes)?;

    let vault = open(dir.path());
    let kept = vault.tokenize("kept", "email", "k@x.io")?.to_string();
    let also = vault.tokenize("kept", "phone", "+100")?.to_string();
    let gone = vault.tokenize("gone", "email", "g@x.io")?.to_string();
    // Scattered: two records of one subject share no record group.
    let (a, b) = (
        vault_core::internal::record_key(&vault, &kept)?,
        vault_core::internal::record_key(&vault, &also)?,
    );
    assert_ne!(a[..8], b[..8], "format 1 stores records under random keys");
    vault.rotate_kek()?;
    assert_eq!(vault.detokenize(&kept)?.value.as_bytes(), b"k@x.io");
    vault.erase("gone")?;
    let report = vault.purge_now()?;
    assert!(report.verified, "{report:?}");
    assert!(matches!(vault.detokenize(&gone), Err(Error::Erased)));
    vault.close()?;
    assert_eq!(std::fs::read(&header)?[8], 1, "the format is kept");
    let vault = open(dir.path());
    assert_eq!(vault.detokenize(&kept)?.value.as_bytes(), b"k@x.io");
    assert!(matches!(vault.detokenize(&gone), Err(Error::Erased)));
    Ok(())
}

#[test]
fn an_overview_lists_records_without_their_values_and_is_audited() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path());
    let tokens: Vec<String> = (0..5)
        .map(|i| {
            vault
                .tokenize("ov-1", "email", format!("secret-{i}@x.example"))
                .map(|t| t.to_string())
        })
        .collect::<Result<_, _>>()?;
    let overview = vault.overview("ov-1", 3)?;
    assert_eq!(overview.records.len(), 3);
    assert!(overview.more_records);
    assert!(overview.subject_ref.is_some());
    for record in &overview.records {
        assert!(tokens.contains(&record.token.to_string()));
        assert_eq!(record.field, "email");
    }
    // Nothing of the values, in any form the overview gives.
    assert!(!format!("{overview:?}").contains("secret-"));
    // The latest events: 5 tokenize events, then this lookup.
    let few = vault.overview("ov-1", 2)?;
    assert!(few.more_events);
    assert_eq!(few.access_log.len(), 2);
    assert_eq!(
        few.access_log[1].action,
        vault_core::AuditAction::Lookup,
        "the newest last"
    );
    let all = vault.overview("ov-1", 10)?;
    assert_eq!(all.records.len(), 5);
    assert!(!all.more_records);
    let events = vault.audit_events(None, 100)?;
    let lookups: Vec<_> = events
        .iter()
        .filter(|e| e.action == vault_core::AuditAction::Lookup)
        .collect();
    assert_eq!(lookups.len(), 3);
    assert_eq!(lookups[0].records, 3);
    // Nobody under this id: nothing, but the look-up is recorded (about no one).
    let none = vault.overview("nobody", 10)?;
    assert!(none.subject_ref.is_none() && none.records.is_empty());
    let last = vault.audit_events(None, 100)?.pop().expect("an event");
    assert_eq!(last.action, vault_core::AuditAction::Lookup);
    assert_eq!(last.outcome, vault_core::AuditOutcome::NotFound);
    assert!(last.subject.is_none());
    vault.erase("ov-1")?;
    assert!(vault.overview("ov-1", 10)?.subject_ref.is_none());
    Ok(())
}
