//! `vault-server pseudonymize` as ops run it: production served and stopped, the
//! staging vault built by the command, then served and asked for production's
//! tokens.

mod common;

use std::process::Command;

use common::{SERVER, Server, TestResult};
use vault_client::api::{DetokenizeResult, ItemError, TokenFormat, TokenizeItem};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_vault_serves_productions_tokens_with_fake_values() -> TestResult {
    let dir = tempfile::tempdir()?;
    let prod_dir = dir.path().join("prod");
    let staging_dir = dir.path().join("staging");
    let mut prod = Server::start_dev(&prod_dir)?;
    let client = prod.admin()?;
    let tokens = client
        .tokenize(vec![
            TokenizeItem::new("cust-1", "email", "ana.real@mail.example"),
            TokenizeItem::new("cust-1", "full_name", "Ana Realname"),
            TokenizeItem::new("cust-1", "card_number", "4929123456781234")
                .format(TokenFormat::Luhn),
            TokenizeItem::new("cust-2", "email", "ana.real@mail.example"),
            TokenizeItem::new("cust-2", "loyalty_code", "AB-12345"),
            TokenizeItem::new("cust-3", "email", "gone@mail.example"),
        ])
        .await?;
    client.erase("cust-3").await?;
    assert!(prod.terminate()?.success());

    let fields = dir.path().join("fields.toml");
    std::fs::write(&fields, "[fields]\nloyalty_code = \"shape\"\n")?;
    let mapping = dir.path().join("mapping.txt");
    let run = |extra: &[&str]| {
        Command::new(SERVER)
            .args(["pseudonymize", "--dev", "--from-data-dir"])
            .arg(&prod_dir)
            .arg("--to-data-dir")
            .arg(&staging_dir)
            .args(extra)
            .output()
    };
    let out = run(&[
        "--fields-config",
        &fields.display().to_string(),
        "--mapping-file",
        &mapping.display().to_string(),
    ])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pseudonymize ["),
        "a progress bar: {stderr}"
    );
    let line: serde_json::Value = serde_json::from_str(String::from_utf8(out.stdout)?.trim())?;
    assert_eq!(line["pseudonymized"], true);
    assert_eq!(line["subjects"], 2);
    assert_eq!(line["records"], 5);
    assert_eq!(line["erased_tokens"], 1);
    assert_eq!(std::fs::read_to_string(&mapping)?.lines().count(), 2);
    for secret in [
        "ana.real",
        "Realname",
        "4929123456781234",
        "cust-1",
        "AB-12345",
    ] {
        assert!(!line.to_string().contains(secret) && !stderr.contains(secret));
    }

    // Built once: a second run into the same directory is refused, and so is a
    // staging vault under --config without a key of its own.
    let again = run(&[])?;
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("holds a vault already"));
    let config_dir = tempfile::tempdir()?;
    let admin = common::KeySpec {
        name: "admin",
        scopes: &common::SCOPES,
        purposes: &["support"],
    };
    let (config, _, _) = common::write_config(config_dir.path(), &[admin], "")?;
    let out = Command::new(SERVER)
        .args(["pseudonymize", "--config"])
        .arg(&config)
        .arg("--from-data-dir")
        .arg(&prod_dir)
        .arg("--to-data-dir")
        .arg(dir.path().join("elsewhere"))
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--to-root-key-file"), "{stderr}");

    // Production's own root key is refused as the staging vault's.
    let out = Command::new(SERVER)
        .args(["pseudonymize", "--dev", "--from-data-dir"])
        .arg(&prod_dir)
        .arg("--to-data-dir")
        .arg(dir.path().join("elsewhere"))
        .arg("--to-root-key-file")
        .arg(prod_dir.join("dev").join("root.key"))
        .output()?;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("a key of its own"), "{stderr}");

    // Staging serves production's tokens: fakes of the same shape.
    let staging = Server::start_dev(&staging_dir)?;
    let results = staging.admin()?.detokenize(&tokens, "support").await?;
    let value = |i: usize| match &results[i] {
        DetokenizeResult::Value { value, .. } => value.expose().to_owned(),
        other => panic!("{other:?}"),
    };
    let email = value(0);
    assert!(
        email.ends_with("@example.com") || email.ends_with("@example.net"),
        "{email}"
    );
    assert_eq!(value(3), email, "the same real value, the same fake");
    assert_eq!(value(1).split(' ').count(), 2);
    let card = value(2);
    assert!(card.starts_with("400000") && card.len() == 16, "{card}");
    let code = value(4);
    assert_eq!(code.len(), 8);
    assert_eq!(code.as_bytes()[2], b'-');
    assert!(matches!(
        &results[5],
        DetokenizeResult::Error {
            error: ItemError::Erased,
            ..
        }
    ));
    Ok(())
}
