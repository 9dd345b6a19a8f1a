//! Two vault-server replicas on one PostgreSQL vault (`[storage] backend =
//! "postgres"`): any replica answers any request, an erasure through one is
//! effective on the other before it returns, and a rotation started on one
//! completes while both serve traffic. And the configurations that must not start.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{postgres, schema_for};
use common::{Launch, SERVER, Server, TestResult, write_replica_config};
use vault_client::api::{DetokenizeResult, ItemError, TokenizeItem};

/// A configuration for replicas of the vault in `schema`, with an admin key.
fn replica_config(
    dir: &Path,
    schema: &str,
) -> TestResult<(std::path::PathBuf, std::path::PathBuf, String)> {
    let (url, ca) = postgres();
    write_replica_config(
        dir,
        url,
        ca,
        "support",
        &format!("schema = \"{schema}\"\n[vault]\npurge_delay_secs = 0\n"),
    )
}

fn value(result: &DetokenizeResult) -> Option<&str> {
    match result {
        DetokenizeResult::Value { value, .. } => Some(value.expose()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_answer_alike_and_an_erasure_through_one_holds_on_the_other() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (config, cert, key) = replica_config(dir.path(), &schema_for(dir.path()))?;
    let a = Server::start(Launch::config(&dir.path().join("a"), &config, &cert))?;
    let b = Server::start(Launch::config(&dir.path().join("b"), &config, &cert))?;
    let (ca, cb) = (a.client(&key)?, b.client(&key)?);

    let token = ca
        .tokenize_one("alice", "email", "alice@example.com")
        .await?;
    let read = cb
        .detokenize(std::slice::from_ref(&token), "support")
        .await?;
    assert_eq!(value(&read[0]), Some("alice@example.com"));

    let receipt = cb.erase("alice").await?;
    assert_eq!(receipt.records, 1);
    // At once, through the other replica.
    let read = ca
        .detokenize(std::slice::from_ref(&token), "support")
        .await?;
    assert!(
        matches!(
            &read[0],
            DetokenizeResult::Error {
                error: ItemError::Erased,
                ..
            }
        ),
        "{read:?}"
    );
    // One trail, whichever replica verifies it.
    let check = ca.verify_audit().await?;
    assert!(check.ok, "{check:?}");
    assert_eq!(cb.audit_head().await?.seq, ca.audit_head().await?.seq);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_started_on_one_replica_completes_while_both_serve() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (config, cert, key) = replica_config(dir.path(), &schema_for(dir.path()))?;
    let a = Server::start(Launch::config(&dir.path().join("a"), &config, &cert))?;
    let b = Server::start(Launch::config(&dir.path().join("b"), &config, &cert))?;
    let (ca, cb) = (a.client(&key)?, b.client(&key)?);

    let mut issued = Vec::new();
    for i in 0..40 {
        let items = vec![TokenizeItem::new(
            format!("s{i}"),
            "email",
            format!("{i}@x.io"),
        )];
        issued.push((ca.tokenize(items).await?.remove(0), format!("{i}@x.io")));
    }
    let before = ca.keys().await?.active_version;
    let started = ca.rotate().await?;
    assert_ne!(started.active_version, before);
    // B keeps writing and reading while the replicas' workers rewrap the keys.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut i = 40;
    loop {
        let items = vec![TokenizeItem::new(
            format!("s{i}"),
            "email",
            format!("{i}@x.io"),
        )];
        issued.push((cb.tokenize(items).await?.remove(0), format!("{i}@x.io")));
        i += 1;
        let status = cb.keys().await?;
        if !status.rotation_in_progress && i > 60 {
            assert_eq!(status.versions.len(), 1, "{status:?}");
            assert_eq!(status.active_version, started.active_version);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the rotation did not finish: {status:?}"
        );
    }
    assert_eq!(ca.keys().await?.active_version, started.active_version);
    let tokens: Vec<String> = issued.iter().map(|(t, _)| t.clone()).collect();
    for client in [&ca, &cb] {
        let read = client.detokenize(&tokens, "support").await?;
        for (result, (_, expected)) in read.iter().zip(&issued) {
            assert_eq!(value(result), Some(expected.as_str()), "{result:?}");
        }
    }
    assert!(cb.verify_audit().await?.ok);
    Ok(())
}

/// Starts a server that must refuse to: exit code 2 and one line on stderr.
fn refused(dir: &Path, config: &Path) -> TestResult<String> {
    let output = Command::new(SERVER)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--config",
        ])
        .arg(config)
        .output()?;
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(
        output.stdout.is_empty(),
        "nothing printed on stdout: {output:?}"
    );
    Ok(String::from_utf8(output.stderr)?)
}

#[test]
fn bad_postgres_settings_stop_the_server_before_it_listens() -> TestResult {
    let dir = tempfile::tempdir()?;
    let schema = schema_for(dir.path());
    let (config, _, _) = replica_config(dir.path(), &schema)?;
    let text = std::fs::read_to_string(&config)?;
    let (url, _) = postgres();

    // Nothing listens there.
    std::fs::write(
        &config,
        text.replace(url.as_str(), "postgresql://vault@127.0.0.1:9/vault"),
    )?;
    let message = refused(dir.path(), &config)?;
    assert!(
        message.contains("cannot open the vault in PostgreSQL"),
        "{message}"
    );

    // A wrong password: the message says so, and does not repeat it.
    let wrong = url.replace("vault-test-password", "not-the-password");
    std::fs::write(&config, text.replace(url.as_str(), &wrong))?;
    let message = refused(dir.path(), &config)?;
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    assert!(!message.contains("not-the-password"), "{message}");

    // A schema written by a newer version of the vault: refused untouched.
    std::fs::write(&config, &text)?;
    let server = Server::start(Launch::config(
        &dir.path().join("a"),
        &config,
        &dir.path().join("cert.pem"),
    ))?;
    drop(server);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let set_version = |version: i32| -> TestResult {
        rt.block_on(async {
            let plain = url.replace("sslmode=require", "sslmode=disable");
            let (client, connection) =
                tokio_postgres::connect(&plain, tokio_postgres::NoTls).await?;
            tokio::spawn(connection);
            client
                .execute(
                    &format!("UPDATE \"{schema}\".schema_version SET version = $1"),
                    &[&version],
                )
                .await?;
            Ok(())
        })
    };
    set_version(99)?;
    let message = refused(dir.path(), &config)?;
    assert!(message.contains("newer"), "{message}");
    set_version(1)?;
    drop(Server::start(Launch::config(
        &dir.path().join("a"),
        &config,
        &dir.path().join("cert.pem"),
    ))?);

    // [backup] keeps the erasure journal alone on PostgreSQL: no backups to keep.
    std::fs::write(
        &config,
        format!("{text}[backup]\ndir = \"journal\"\nkeep = 3\n"),
    )?;
    let message = refused(dir.path(), &config)?;
    assert!(message.contains("only the erasure journal"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_migrated_from_its_directory_serves_its_tokens_from_postgres() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = Server::start_dev(&data)?;
    let admin = server.admin()?;
    let kept = admin
        .tokenize_one("alice", "email", "alice@example.com")
        .await?;
    let erased = admin
        .tokenize_one("bob", "email", "bob@example.com")
        .await?;
    admin.erase("bob").await?;
    tokio::task::block_in_place(|| server.terminate())?;

    let (url, ca) = postgres();
    let schema = schema_for(dir.path());
    let output = Command::new(SERVER)
        .args(["migrate", "--dev", "--from-data-dir"])
        .arg(&data)
        .args(["--to", url, "--schema", &schema, "--ca-file"])
        .arg(ca)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let line: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(line["migrated"], true);
    assert_eq!(line["rows"]["records"], 2);
    assert_eq!(line["rows"]["keys"], 1);
    // Nothing of the URL's password in what it printed.
    assert!(!String::from_utf8_lossy(&output.stdout).contains("vault-test-password"));

    // The same root key (the dev one), now with the vault in PostgreSQL.
    let (config, cert, key) = replica_config(dir.path(), &schema)?;
    let text = std::fs::read_to_string(&config)?.replace(
        "file = \"root.key\"",
        &format!("file = \"{}\"", data.join("dev/root.key").display()),
    );
    std::fs::write(&config, text)?;
    let replica = Server::start(Launch::config(&dir.path().join("r"), &config, &cert))?;
    let client = replica.client(&key)?;
    let read = client.detokenize(&[kept, erased], "support").await?;
    assert_eq!(value(&read[0]), Some("alice@example.com"));
    assert!(
        matches!(
            &read[1],
            DetokenizeResult::Error {
                error: ItemError::Erased,
                ..
            }
        ),
        "{read:?}"
    );
    assert!(client.verify_audit().await?.ok);
    Ok(())
}
