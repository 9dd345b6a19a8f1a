//! A staging vault built from a production vault: production's tokens resolve to
//! fakes of the right shape, the same real value to the same fake, erased and
//! expired tokens stay so, and nothing real is in the staging vault's files.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{DAY, ManualClock, TestResult, files_containing, luhn_valid, options, root};
use vault_core::{
    Error, FakeFields, FakeKind, LawfulBasis, Purpose, RootKey, TokenFormat, TokenizeRequest,
    Vault, VaultOptions, pseudonymize,
};

fn opts(clock: &Arc<ManualClock>) -> VaultOptions {
    options()
        .clock(clock.clone())
        .retention("session_note", Duration::from_millis(30 * DAY))
        .purpose(Purpose::new("support", LawfulBasis::Contract))
        .purpose(Purpose::new("newsletter", LawfulBasis::Consent))
}

fn staging_root() -> RootKey {
    RootKey::from_bytes(&[0x42; 32]).expect("32 bytes")
}

/// Production: what each live token's value is, and the tokens that must answer
/// erased and expired.
struct Production {
    live: BTreeMap<String, (String, String)>,
    erased: Vec<String>,
    expired: Vec<String>,
    /// A record deleted in production: nothing of it is copied.
    deleted: String,
    /// Every real value and subject id, for the scan.
    secrets: Vec<String>,
    /// Two subjects' tokens of the same e-mail address.
    same_email: (String, String),
}

fn production(vault: &Vault, clock: &ManualClock) -> Result<Production, Error> {
    let mut live = BTreeMap::new();
    let mut secrets = Vec::new();
    let people = [
        (
            "cust-ana-4471",
            "Ana Lima",
            "ana.lima@mail.example",
            "+351 912 345 678",
            "PT50000201231234567890154",
            "1984-03-17",
        ),
        (
            "cust-bo-9915",
            "Bo Jensen",
            "bo@mail.example",
            "+45 20 12 34 56",
            "DK5000400440116243",
            "1990-11-02",
        ),
        (
            "cust-cy-0203",
            "Cyrille Dubois-Martin",
            "shared@mail.example",
            "01 23 45 67 89",
            "FR1420041010050500013M02606",
            "02/05/1971",
        ),
        (
            "cust-di-7777",
            "Di",
            "shared@mail.example",
            "+1 415 555 0199",
            "GB82WEST12345698765432",
            "19991231",
        ),
    ];
    let mut shared = Vec::new();
    for (subject, name, email, phone, iban, birth) in people {
        secrets.extend([subject, name, email, phone, iban, birth].map(str::to_owned));
        let items = [
            TokenizeRequest::new(subject, "full_name", name.as_bytes()),
            TokenizeRequest::new(subject, "email", email.as_bytes()),
            TokenizeRequest::new(subject, "phone", phone.as_bytes()),
            TokenizeRequest::new(subject, "iban", iban.as_bytes()),
            TokenizeRequest::new(subject, "date_of_birth", birth.as_bytes()),
            TokenizeRequest::new(subject, "card_number", b"4929123456781234")
                .format(TokenFormat::Luhn),
            TokenizeRequest::new(subject, "canary_field_zq8x", b"ordinary value"),
        ];
        let tokens = vault.tokenize_batch(&items)?;
        for (item, token) in items.iter().zip(&tokens) {
            let value = String::from_utf8(item.value.to_vec()).expect("utf-8");
            live.insert(token.to_string(), (item.field.to_owned(), value));
        }
        if email == "shared@mail.example" {
            shared.push(tokens[1].to_string());
        }
    }
    secrets.extend([
        "4929123456781234".into(),
        "unsubscribe-link".into(),
        "signup-form".into(),
    ]);
    vault.record_consent("cust-ana-4471", "newsletter", true, Some("signup-form"))?;
    vault.record_consent(
        "cust-ana-4471",
        "newsletter",
        false,
        Some("unsubscribe-link"),
    )?;
    vault.record_consent("cust-bo-9915", "newsletter", true, None)?;

    // An erased and purged subject, and an erased one not purged yet.
    let mut erased = Vec::new();
    for (subject, value) in [
        ("cust-gone-1", "gone1@mail.example"),
        ("cust-gone-2", "gone2@mail.example"),
    ] {
        erased.push(vault.tokenize(subject, "email", value)?.to_string());
        let digits =
            TokenizeRequest::new(subject, "account", b"12345678").format(TokenFormat::Digits);
        erased.push(vault.tokenize_batch(&[digits])?.remove(0).to_string());
        secrets.extend([subject.to_owned(), value.to_owned()]);
        vault.erase(subject)?;
        if subject == "cust-gone-1" {
            vault.purge_now()?;
        }
    }
    // An expired record, purged, and one past its period but not purged yet.
    let mut expired = vec![
        vault
            .tokenize("cust-bo-9915", "session_note", "old note 1")?
            .to_string(),
    ];
    clock.advance_days(20);
    expired.push(
        vault
            .tokenize("cust-bo-9915", "session_note", "old note 2")?
            .to_string(),
    );
    clock.advance_days(11);
    assert_eq!(vault.purge_expired()?.records, 1);
    clock.advance_days(20);
    secrets.extend(["old note 1".to_owned(), "old note 2".to_owned()]);
    let deleted = vault
        .tokenize("cust-bo-9915", "phone", "+44 20 7946 0000")?
        .to_string();
    vault.delete(&deleted)?;
    Ok(Production {
        live,
        erased,
        expired,
        deleted,
        secrets,
        same_email: (shared[0].clone(), shared[1].clone()),
    })
}

fn check_shape(field: &str, real: &str, fake: &str) {
    assert_ne!(fake, real, "{field}");
    match field {
        "email" => {
            assert!(
                fake.ends_with("@example.com") || fake.ends_with("@example.net"),
                "{fake}"
            );
        }
        "full_name" => {
            assert_eq!(
                fake.split_whitespace().count(),
                real.split_whitespace().count(),
                "{fake}"
            );
        }
        "phone" => {
            assert_eq!(fake.len(), real.len());
            let prefix = if real.starts_with('+') {
                real.split(' ').next().unwrap_or("")
            } else {
                "0"
            };
            assert!(fake.starts_with(prefix), "{real} -> {fake}");
        }
        "iban" => {
            assert_eq!(fake.len(), real.len());
            assert_eq!(&fake[..2], &real[..2], "country kept");
        }
        "date_of_birth" => assert_eq!(fake.len(), real.len(), "{real} -> {fake}"),
        "card_number" => {
            assert_eq!(fake.len(), 16);
            assert!(fake.starts_with("400000") && luhn_valid(fake), "{fake}");
        }
        _ => assert_eq!(fake.chars().count(), real.chars().count()),
    }
}

fn build(dir: &Path) -> Result<(Production, tempfile::TempDir), Box<dyn std::error::Error>> {
    let clock = Arc::new(ManualClock::starting());
    let prod = Vault::open(dir.join("prod"), &root(), opts(&clock))?;
    let production = production(&prod, &clock)?;
    let out = tempfile::tempdir()?;
    let mut calls = 0;
    let report = pseudonymize(
        &prod,
        &dir.join("staging"),
        &staging_root(),
        opts(&clock),
        &FakeFields::default().field("canary_field_zq8x", FakeKind::Text),
        Some(&out.path().join("mapping.txt")),
        |_, _| calls += 1,
    )?;
    assert!(calls > 0, "progress was reported");
    assert_eq!(report.subjects, 4);
    assert_eq!(report.records, 28);
    assert_eq!(report.erased_tokens, 4);
    assert_eq!(report.expired_tokens, 2);
    assert_eq!(report.consents, 2);
    Ok((production, out))
}

#[test]
fn production_tokens_resolve_to_fakes_of_the_same_shape_in_staging() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (production, out) = build(dir.path())?;
    let clock = Arc::new(ManualClock::starting());
    let staging = Vault::open(dir.path().join("staging"), &staging_root(), opts(&clock))?;
    for (token, (field, real)) in &production.live {
        let found = staging.detokenize(token)?;
        assert_eq!(&found.field, field);
        check_shape(field, real, found.value.as_str().expect("text"));
    }
    // The same real value gives the same fake, for two subjects.
    let (a, b) = &production.same_email;
    assert_eq!(staging.detokenize(a)?.value, staging.detokenize(b)?.value);
    for token in &production.erased {
        assert!(
            matches!(staging.detokenize(token), Err(Error::Erased)),
            "{token}"
        );
    }
    for token in &production.expired {
        assert!(
            matches!(staging.detokenize(token), Err(Error::Expired)),
            "{token}"
        );
    }
    // A deletion leaves nothing to copy: the token names no record in staging, as
    // in production.
    assert!(matches!(
        staging.detokenize(&production.deleted),
        Err(Error::NotFound)
    ));
    // Subjects under pseudonymous ids, from the mapping (the operator's file).
    let mapping = std::fs::read_to_string(out.path().join("mapping.txt"))?;
    let mode = std::fs::metadata(out.path().join("mapping.txt"))?
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ids: Vec<&str> = mapping
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .collect();
    assert_eq!(ids.len(), 4);
    let mut exported = 0;
    for id in &ids {
        assert!(id.starts_with("psn_"));
        let export = staging.export(id)?;
        for record in &export.records {
            assert!(
                production.live.contains_key(&record.token.to_string()),
                "tokens as issued"
            );
        }
        exported += export.records.len();
    }
    assert_eq!(exported, production.live.len());
    let consents: Vec<_> = ids
        .iter()
        .map(|id| staging.consents(id))
        .collect::<Result<_, _>>()?;
    let histories: Vec<usize> = consents
        .iter()
        .flat_map(|c| c.iter().map(|s| s.history.len()))
        .collect();
    assert_eq!(
        histories.iter().sum::<usize>(),
        3,
        "grant, withdrawal, grant"
    );
    assert!(
        consents
            .iter()
            .flatten()
            .any(|s| !s.granted && s.history.len() == 2)
    );
    // The sources were the callers' free text: not copied.
    let sources: Vec<Option<&str>> = consents
        .iter()
        .flatten()
        .flat_map(|s| s.history.iter().map(|e| e.source.as_deref()))
        .collect();
    assert_eq!(sources.len(), 3);
    assert!(
        sources
            .iter()
            .all(|s| s.is_none() || *s == Some("copied from production")),
        "{sources:?}"
    );
    // Counted like any write: the inventory of staging.
    assert_eq!(staging.inventory()?.records, production.live.len() as u64);
    // Staging is a vault of its own: new tokens, rectify, erase.
    let fresh = staging.tokenize("dev-user", "email", "dev@example.org")?;
    assert!(staging.detokenize(&fresh.to_string()).is_ok());
    staging.erase(ids[0])?;
    Ok(())
}

#[test]
fn nothing_real_is_in_the_staging_vaults_files() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (production, _out) = build(dir.path())?;
    let staging_dir = dir.path().join("staging");
    // Positive control: the scan reads these files in clear (a field name is kept
    // in clear in its subjects' entries).
    assert!(!files_containing(&staging_dir, b"canary_field_zq8x").is_empty());
    // (Needles of a few bytes would turn up by chance in any binary file.)
    for secret in production.secrets.iter().filter(|s| s.len() >= 6) {
        let found = files_containing(&staging_dir, secret.as_bytes());
        assert!(found.is_empty(), "{secret:?} in {found:?}");
    }
    // Nor among the decrypted values: every fake differs from every real value.
    let clock = Arc::new(ManualClock::starting());
    let staging = Vault::open(&staging_dir, &staging_root(), opts(&clock))?;
    for token in production.live.keys() {
        let fake = staging.detokenize(token)?;
        let fake = fake.value.as_str().expect("text");
        assert!(!production.secrets.iter().any(|s| s == fake), "{fake}");
    }
    drop(staging);
    // Production does not open with the staging vault's key, nor staging with
    // production's.
    assert!(matches!(
        Vault::open(dir.path().join("prod"), &staging_root(), opts(&clock)),
        Err(Error::WrongRootKey)
    ));
    assert!(matches!(
        Vault::open(&staging_dir, &root(), opts(&clock)),
        Err(Error::WrongRootKey)
    ));
    Ok(())
}

#[test]
fn a_staging_vault_is_built_only_in_a_new_directory() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let prod = Vault::open(dir.path().join("prod"), &root(), opts(&clock))?;
    prod.tokenize("s", "email", "a@mail.example")?;
    let target = dir.path().join("staging");
    std::fs::create_dir(&target)?;
    std::fs::write(target.join("keep.txt"), "mine")?;
    let result = pseudonymize(
        &prod,
        &target,
        &staging_root(),
        opts(&clock),
        &FakeFields::default(),
        None,
        |_, _| {},
    );
    assert!(matches!(result, Err(Error::NotEmpty { .. })), "{result:?}");
    assert_eq!(std::fs::read_to_string(target.join("keep.txt"))?, "mine");
    // A mapping file that exists is refused before anything is built.
    let mapping = dir.path().join("mapping.txt");
    std::fs::write(&mapping, "theirs")?;
    let fresh = dir.path().join("fresh");
    let result = pseudonymize(
        &prod,
        &fresh,
        &staging_root(),
        opts(&clock),
        &FakeFields::default(),
        Some(&mapping),
        |_, _| {},
    );
    assert!(matches!(result, Err(Error::NotEmpty { .. })), "{result:?}");
    assert!(!fresh.exists() && !dir.path().join("fresh.pseudonymizing").exists());
    // A build leaves the vault in place and nothing beside it; production's trail
    // says who read its values.
    pseudonymize(
        &prod,
        &fresh,
        &staging_root(),
        opts(&clock),
        &FakeFields::default(),
        None,
        |_, _| {},
    )?;
    assert!(fresh.join("VAULT").exists());
    assert!(!dir.path().join("fresh.pseudonymizing").exists());
    let events = prod.audit_events(None, 100)?;
    assert!(
        events
            .iter()
            .any(|e| e.actor == "pseudonymize" && e.action == vault_core::AuditAction::Export),
        "{events:?}"
    );
    Ok(())
}
