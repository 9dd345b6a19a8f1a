//! Migration of a vault from its directory into PostgreSQL: the same vault there
//! (tokens, erasures, consents, the audit trail), every row counted, a sample read
//! through both; a migration cut short is refused until it is run again.

mod common;

use common::{TestResult, options, postgres, postgres_config, root, schema_for};
use vault_core::{Error, LawfulBasis, Purpose, Vault, migrate_to_postgres};

fn with_purpose() -> vault_core::VaultOptions {
    options().purpose(Purpose::new("newsletter", LawfulBasis::Consent).fields(["email"]))
}

#[test]
fn a_migrated_vault_is_the_same_vault_on_postgres() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let mut tokens = Vec::new();
    {
        let vault = Vault::open(&dir, &root(), with_purpose())?;
        for i in 0..300 {
            let token = vault.tokenize(&format!("s{}", i % 40), "email", format!("{i}@x.io"))?;
            tokens.push((token.to_string(), format!("{i}@x.io"), i % 40));
        }
        vault.record_consent("s1", "newsletter", true, Some("web form"))?;
        vault.erase("s0")?;
        vault.close()?;
    }
    let config = postgres_config(tmp.path());
    let report = migrate_to_postgres(&dir, &config, &root(), with_purpose())?;
    assert_eq!(report.rows["records"], 300);
    assert_eq!(report.rows["keys"], 39, "one key per subject left");
    assert!(report.records_compared > 100, "{report:?}");

    let vault = Vault::open_postgres(&config, &root(), with_purpose())?;
    for (token, value, subject) in &tokens {
        match vault.detokenize(token) {
            Ok(record) => assert_eq!(record.value.as_str(), Some(value.as_str())),
            Err(Error::Erased) if *subject == 0 => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(vault.consents("s1")?.iter().any(|c| c.granted));
    let check = vault.verify_audit()?;
    assert!(check.ok && check.events > 40, "{check:?}");
    // Into a schema that holds a vault: refused.
    drop(vault);
    assert!(migrate_to_postgres(&dir, &config, &root(), with_purpose()).is_err());
    Ok(())
}

#[test]
fn a_migration_cut_short_is_refused_until_it_is_run_again() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("vault");
    let token = {
        let vault = Vault::open(&dir, &root(), options())?;
        let token = vault.tokenize("alice", "email", "a@x.io")?.to_string();
        vault.close()?;
        token
    };
    let config = postgres_config(tmp.path());
    migrate_to_postgres(&dir, &config, &root(), options())?;
    // As if the copy had stopped before its check: the mark is back.
    let (url, _) = postgres();
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let mut client = postgres::Client::connect(&plain, postgres::NoTls)?;
    client.execute(
        &format!(
            "INSERT INTO \"{}\".meta (k, v) VALUES ('migration/unfinished'::bytea, ''::bytea)",
            schema_for(tmp.path())
        ),
        &[],
    )?;
    assert!(matches!(
        Vault::open_postgres(&config, &root(), options()),
        Err(Error::MigrationUnfinished)
    ));
    let report = migrate_to_postgres(&dir, &config, &root(), options())?;
    assert_eq!(report.rows["records"], 1);
    let vault = Vault::open_postgres(&config, &root(), options())?;
    assert_eq!(vault.detokenize(&token)?.value.as_str(), Some("a@x.io"));
    Ok(())
}
