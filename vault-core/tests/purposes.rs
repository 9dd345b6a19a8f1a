//! Purposes, consent and masked views: the checks between a token and its value.

mod common;

use common::{TestResult, TokenKinds, hex_decode, options, raw_db, root, subject_ref, token_kinds};
use vault_core::{
    Access, Argument, AuditAction, Error, InputError, LawfulBasis, Mask, Problem, Purpose,
    TokenizeRequest, Vault, VaultOptions,
};

const FIELDS: [&str; 3] = ["email", "phone", "iban"];

fn values(subject: &str) -> [String; 3] {
    [
        format!("{subject}.person@example.com"),
        format!("+33 1 23 45 67 {:02}", subject.len()),
        format!("FR76300060000112345678901{:02}", subject.len()),
    ]
}

fn gdpr_options() -> VaultOptions {
    options()
        .purpose(Purpose::new("billing", LawfulBasis::Contract).fields(["email", "iban"]))
        .purpose(Purpose::new("newsletter", LawfulBasis::Consent).fields(["email"]))
        .purpose(Purpose::new("marketing", LawfulBasis::Consent))
        .purpose(Purpose::new("support", LawfulBasis::LegitimateInterests).masked(true))
        .purpose(Purpose::new("fraud", LawfulBasis::LegalObligation).fields(["iban", "phone"]))
        .field_mask("email", Mask::Email)
        .field_mask("phone", Mask::Phone { keep_last: 2 })
        .field_mask("iban", Mask::KeepLast(4))
}

fn open(dir: &std::path::Path) -> Result<Vault, Error> {
    common::open_vault(dir, &root(), gdpr_options())
}

/// What the model expects: the value (possibly masked) or the error.
#[derive(Debug, PartialEq)]
enum Expect {
    Value(String),
    Forbidden,
    NoConsent,
}

#[test]
fn purpose_basis_consent_and_field_matrix() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path())?;
    // Consent states: "granted" consents to newsletter and marketing, "never" never
    // did, "withdrawn" granted then withdrew both, "partial" only newsletter.
    let subjects = ["granted", "never", "withdrawn", "partial"];
    let mut tokens = Vec::new();
    for s in subjects {
        let v = values(s);
        let items: Vec<_> = FIELDS
            .iter()
            .zip(&v)
            .map(|(f, v)| TokenizeRequest::new(s, f, v.as_bytes()))
            .collect();
        for (t, (f, v)) in vault
            .tokenize_batch(&items)?
            .into_iter()
            .zip(FIELDS.iter().zip(v))
        {
            tokens.push((s, *f, v, t.to_string()));
        }
    }
    for purpose in ["newsletter", "marketing"] {
        vault.record_consent("granted", purpose, true, Some("signup-form"))?;
        vault.record_consent("withdrawn", purpose, true, None)?;
        vault.record_consent("withdrawn", purpose, false, Some("unsubscribe-link"))?;
    }
    vault.record_consent("partial", "newsletter", true, None)?;

    let granted = |subject: &str, purpose: &str| match subject {
        "granted" => true,
        "partial" => purpose == "newsletter",
        _ => false,
    };
    let all: Vec<String> = tokens.iter().map(|(_, _, _, t)| t.clone()).collect();
    let mut checked = 0;
    for purpose in ["billing", "newsletter", "marketing", "support", "fraud"] {
        for forced_mask in [false, true] {
            let access = Access::new(purpose, "test-suite");
            let access = if forced_mask { access.masked() } else { access };
            let results = vault.detokenize_for(&all, &access)?;
            for ((subject, field, value, _), result) in tokens.iter().zip(&results) {
                let covers = match purpose {
                    "billing" => ["email", "iban"].contains(field),
                    "newsletter" => *field == "email",
                    "fraud" => ["iban", "phone"].contains(field),
                    _ => true,
                };
                let consent_basis = ["newsletter", "marketing"].contains(&purpose);
                let masked = forced_mask || purpose == "support";
                let expected = if !covers {
                    Expect::Forbidden
                } else if consent_basis && !granted(subject, purpose) {
                    Expect::NoConsent
                } else if masked {
                    let mask = match *field {
                        "email" => Mask::Email,
                        "phone" => Mask::Phone { keep_last: 2 },
                        _ => Mask::KeepLast(4),
                    };
                    Expect::Value(mask.apply(value))
                } else {
                    Expect::Value(value.clone())
                };
                let got = match result {
                    Ok(d) => {
                        assert_eq!(d.masked, masked);
                        assert_eq!(d.field, *field);
                        Expect::Value(d.value.as_str().ok_or("utf-8")?.to_owned())
                    }
                    Err(Error::Forbidden) => Expect::Forbidden,
                    Err(Error::NoConsent) => Expect::NoConsent,
                    Err(e) => return Err(format!("{purpose} {subject} {field}: {e}").into()),
                };
                assert_eq!(
                    got, expected,
                    "{purpose} (masked {forced_mask}) {subject} {field}"
                );
                if masked {
                    assert!(
                        !matches!(&got, Expect::Value(v) if v == value),
                        "a masked view showed the value"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 5 * 2 * 12);
    Ok(())
}

/// A token of a token's shape that this vault did not issue (another vault's,
/// digits never issued) is answered per item, and audited, like a deleted record:
/// whether the vault issued it is a lookup. Text without a token's shape fails the
/// whole call, naming the item, and nothing is recorded.
#[test]
fn a_token_this_vault_did_not_issue_is_not_found_per_item() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path())?;
    let other_dir = tempfile::tempdir()?;
    let TokenKinds {
        live,
        deleted,
        foreign,
        ..
    } = token_kinds(&vault, &open(other_dir.path())?)?;
    let access = Access::new("billing", "test-suite");
    let last = vault.audit_events(None, 1000)?.last().map(|e| e.seq);
    let tokens = [
        live.as_str(),
        foreign.as_str(),
        deleted.as_str(),
        "0000000000000000",
    ];
    let results = vault.detokenize_for(&tokens, &access)?;
    assert!(results[0].is_ok());
    for (token, result) in tokens.iter().zip(&results).skip(1) {
        assert!(
            matches!(result, Err(Error::NotFound)),
            "{token}: {result:?}"
        );
    }
    let recorded: Vec<_> = vault
        .audit_events(last, 100)?
        .into_iter()
        .filter(|e| e.action == AuditAction::Detokenize)
        .map(|e| (e.outcome.name(), e.purpose, e.subject.is_some()))
        .collect();
    let billing = Some("billing".to_owned());
    assert_eq!(
        recorded,
        [
            ("ok", billing.clone(), true),
            ("not_found", billing.clone(), false),
            ("not_found", billing.clone(), false),
            ("not_found", billing, false),
        ]
    );

    let before = vault.audit_events(None, 1000)?.len();
    let refused = vault
        .detokenize_for(&[live.as_str(), foreign.as_str(), "tok_x"], &access)
        .expect_err("refused");
    let expected = InputError {
        item: Some(2),
        argument: Argument::Token,
        problem: Problem::NotAToken,
    };
    assert!(
        matches!(&refused, Error::InvalidInput(e) if *e == expected),
        "{refused:?}"
    );
    assert_eq!(vault.audit_events(None, 1000)?.len(), before);
    Ok(())
}

#[test]
fn a_withdrawal_applies_to_the_very_next_request() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path())?;
    let token = vault
        .tokenize("alice", "email", "alice@example.com")?
        .to_string();
    let access = Access::new("newsletter", "mailer");
    let first = vault.detokenize_for(&[&token], &access)?;
    assert!(matches!(first[0], Err(Error::NoConsent)), "no consent yet");
    vault.record_consent("alice", "newsletter", true, Some("form-7"))?;
    let second = vault.detokenize_for(&[&token], &access)?;
    assert_eq!(
        second[0]
            .as_ref()
            .map_err(|e| e.to_string())?
            .value
            .as_str(),
        Some("alice@example.com")
    );
    vault.record_consent("alice", "newsletter", false, Some("support-ticket"))?;
    let third = vault.detokenize_for(&[&token], &access)?;
    assert!(matches!(third[0], Err(Error::NoConsent)), "withdrawn");
    // Other purposes are unaffected.
    let billing = vault.detokenize_for(&[&token], &Access::new("billing", "erp"))?;
    assert!(billing[0].is_ok());
    Ok(())
}

#[test]
fn consent_history_is_kept_and_exported() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path())?;
    // Consent before any data: the subject is created.
    vault.record_consent("bob", "marketing", true, Some("signup"))?;
    vault.record_consent("bob", "marketing", false, Some("preferences"))?;
    vault.record_consent("bob", "marketing", true, None)?;
    vault.record_consent("bob", "newsletter", true, Some("footer"))?;
    let consents = vault.consents("bob")?;
    assert_eq!(consents.len(), 2);
    let marketing = &consents[0];
    assert_eq!(
        (marketing.purpose.as_str(), marketing.granted),
        ("marketing", true)
    );
    let history: Vec<_> = marketing
        .history
        .iter()
        .map(|e| (e.granted, e.source.as_deref()))
        .collect();
    assert_eq!(
        history,
        [
            (true, Some("signup")),
            (false, Some("preferences")),
            (true, None)
        ]
    );
    assert_eq!(marketing.since, marketing.history[2].at);
    assert_eq!(consents[1].purpose, "newsletter");

    vault.tokenize("bob", "email", "bob@example.com")?;
    let export = vault.export("bob")?;
    assert_eq!(export.consents, consents);
    assert_eq!(export.records.len(), 1);
    assert!(vault.consents("nobody")?.is_empty());
    Ok(())
}

#[test]
fn bad_consent_input_is_refused_and_writes_nothing() -> TestResult {
    let dir = tempfile::tempdir()?;
    let vault = open(dir.path())?;
    vault.tokenize("carol", "email", "carol@example.com")?;
    let before = vault.storage_counters().keys_written;
    let long = "s".repeat(257);
    let cases: [(&str, &str, Option<&str>); 6] = [
        ("carol", "unknown-purpose", None),
        ("carol", "billing", None),
        ("carol", "marketing", Some("")),
        ("carol", "marketing", Some(long.as_str())),
        ("carol", "marketing", Some("line\nbreak")),
        ("", "marketing", None),
    ];
    for (subject, purpose, source) in cases {
        let err = vault
            .record_consent(subject, purpose, true, source)
            .err()
            .ok_or("accepted")?;
        assert!(
            matches!(
                err,
                Error::InvalidInput(_) | Error::UnknownPurpose | Error::NotConsentBased
            ),
            "{subject:?} {purpose:?} {source:?}: {err}"
        );
    }
    let token = vault.tokenize("carol", "phone", "+1 555 0100")?.to_string();
    let err = vault
        .detokenize_for(&[&token], &Access::new("nope", "x"))
        .err()
        .ok_or("accepted")?;
    assert!(matches!(err, Error::UnknownPurpose));
    // Only the one tokenize above wrote: its record, index entry and subject entry,
    // its audit event, the event's index entry and the checkpoint, and the
    // inventory's counts of it (its field's records, subjects and day, and the
    // field's sealed name).
    assert_eq!(vault.storage_counters().keys_written - before, 10);
    Ok(())
}

#[test]
fn a_rolled_back_consent_state_is_detected() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let (token, old_current, current_key) = {
        let vault = open(dir.path())?;
        let token = vault
            .tokenize("fay", "email", "fay@example.com")?
            .to_string();
        vault.record_consent("fay", "newsletter", true, None)?;
        vault.close()?;
        let sid = hex_decode(&subject_ref(&open(dir.path())?, "fay"));
        let db = raw_db(dir.path());
        let cf = db.cf_handle("consents").ok_or("no consents family")?;
        let (key, value) = db
            .prefix_iterator_cf(cf, &sid)
            .filter_map(Result::ok)
            .find(|(k, _)| k.len() == 32)
            .ok_or("no current entry")?;
        (token, value.to_vec(), key.to_vec())
    };
    {
        let vault = open(dir.path())?;
        vault.record_consent("fay", "newsletter", false, Some("unsubscribe"))?;
        vault.close()?;
    }
    // Put back the sealed "granted" state over the withdrawal.
    common::raw_put(dir.path(), "consents", &current_key, &old_current);
    let vault = open(dir.path())?;
    let results = vault.detokenize_for(&[&token], &Access::new("newsletter", "mailer"))?;
    assert!(
        matches!(results[0], Err(Error::Integrity)),
        "{:?}",
        results[0]
    );
    assert!(matches!(vault.consents("fay"), Err(Error::Integrity)));
    assert!(matches!(
        vault.record_consent("fay", "newsletter", true, None),
        Err(Error::Integrity)
    ));
    Ok(())
}

#[test]
fn an_undeclared_or_malformed_purpose_is_refused_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = options().purpose(Purpose::new("Has Spaces", LawfulBasis::Consent));
    assert!(matches!(
        common::open_vault(dir.path(), &root(), bad),
        Err(Error::InvalidOption(_))
    ));
    let empty =
        options().purpose(Purpose::new("x", LawfulBasis::Consent).fields(Vec::<String>::new()));
    assert!(matches!(
        common::open_vault(dir.path(), &root(), empty),
        Err(Error::InvalidOption(_))
    ));
}

#[test]
fn the_consent_ledger_goes_with_the_subject() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let subject_ref_hex;
    {
        let vault = open(dir.path())?;
        vault.tokenize("dave", "email", "dave@example.com")?;
        vault.record_consent("dave", "marketing", true, Some("form"))?;
        vault.record_consent("dave", "newsletter", true, Some("form"))?;
        vault.tokenize("erin", "email", "erin@example.com")?;
        vault.record_consent("erin", "marketing", true, Some("form"))?;
        subject_ref_hex = subject_ref(&vault, "dave");
        vault.close()?;
    }
    // The sealed consent entries of dave, as stored, to look for in every file.
    let sid = hex_decode(&subject_ref_hex);
    let sealed: Vec<Vec<u8>> = {
        let db = raw_db(dir.path());
        let cf = db.cf_handle("consents").ok_or("no consents family")?;
        db.prefix_iterator_cf(cf, &sid)
            .filter_map(Result::ok)
            .filter(|(k, _)| k.starts_with(&sid))
            .map(|(_, v)| v[v.len() - 32..].to_vec())
            .collect()
    };
    assert_eq!(
        sealed.len(),
        4,
        "two purposes: current state and one event each"
    );
    assert!(
        sealed
            .iter()
            .all(|s| !common::files_containing(dir.path(), s).is_empty()),
        "positive control"
    );
    {
        let vault = open(dir.path())?;
        vault.erase("dave")?;
        let report = vault.purge_now()?;
        assert!(report.verified);
        assert!(vault.consents("dave")?.is_empty());
        assert_eq!(vault.consents("erin")?.len(), 1, "bystander kept");
        vault.close()?;
    }
    for s in &sealed {
        assert!(
            common::files_containing(dir.path(), s).is_empty(),
            "a sealed consent entry is still on disk"
        );
    }
    let db = raw_db(dir.path());
    let cf = db.cf_handle("consents").ok_or("no consents family")?;
    let left = db
        .prefix_iterator_cf(cf, &sid)
        .filter_map(Result::ok)
        .filter(|(k, _)| k.starts_with(&sid))
        .count();
    assert_eq!(left, 0, "consent entries of the erased subject remain");
    let all = db.iterator_cf(cf, rocksdb::IteratorMode::Start).count();
    assert_eq!(all, 2, "erin's current state and event remain");
    Ok(())
}
