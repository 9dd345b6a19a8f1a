//! Backups through the API and `vaultctl`, and `vault-server restore` with the
//! server stopped: a restore keeps erasures made after the backup erased.

mod common;

use std::process::Command;

use common::{SERVER, Server, TestResult, VAULTCTL};
use vault_client::api::{DetokenizeResult, ItemError};

fn erased(result: &DetokenizeResult) -> bool {
    matches!(
        result,
        DetokenizeResult::Error {
            error: ItemError::Erased,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_backup_keeps_later_erasures_erased() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = Server::start_dev(&data)?;
    let client = server.admin()?;
    let a = client
        .tokenize_one("subject-a", "email", "a@example.com")
        .await?;
    let b = client
        .tokenize_one("subject-b", "email", "b@example.com")
        .await?;

    // vaultctl takes the backup; the API lists it.
    let output = Command::new(VAULTCTL)
        .args(["backup", "create"])
        .env("VAULT_ADDR", &server.url)
        .env("VAULT_API_KEY", &server.api_key)
        .env("VAULT_CACERT", &server.ca_cert)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let created: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let path = created["backup"]["path"].as_str().ok_or("path")?.to_owned();
    assert!(created["backup"]["bytes"].as_u64() > Some(0));
    let list = client.backups().await?;
    assert_eq!(list.backups.len(), 1);
    assert_eq!(list.holding_erased, 0);

    client.erase("subject-a").await?;
    assert_eq!(client.backups().await?.holding_erased, 1);
    tokio::task::block_in_place(|| server.terminate())?;

    // Refused over a vault without --replace; done with it.
    let refused = Command::new(SERVER)
        .args(["restore", "--from", &path, "--dev", "--data-dir"])
        .arg(&data)
        .output()?;
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));
    let restored = Command::new(SERVER)
        .args([
            "restore",
            "--from",
            &path,
            "--dev",
            "--replace",
            "--data-dir",
        ])
        .arg(&data)
        .output()?;
    assert!(restored.status.success(), "{restored:?}");
    let line: serde_json::Value = serde_json::from_slice(&restored.stdout)?;
    assert_eq!(line["erasures_replayed"], 1);
    assert_eq!(line["backup"], created["backup"]["id"]);
    assert!(line["backup_created_at"].is_u64());

    let server = Server::start_dev(&data)?;
    let client = server.admin()?;
    let read = client
        .detokenize(&[a.clone(), b.clone()], "support")
        .await?;
    assert!(erased(&read[0]), "{:?}", read[0]);
    assert!(!erased(&read[1]));
    assert!(client.export("subject-a").await?.records.is_empty());
    // The backups, and the journal, are still there for the next restore.
    assert_eq!(client.backups().await?.backups.len(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_retire_old_keys_and_change_the_root_key() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut server = Server::start_dev(&data)?;
    let client = server.admin()?;
    let token = client.tokenize_one("c-1", "email", "c@example.com").await?;
    client.rotate().await?;
    let output = Command::new(VAULTCTL)
        .args(["keys", "retire"])
        .env("VAULT_ADDR", &server.url)
        .env("VAULT_API_KEY", &server.api_key)
        .env("VAULT_CACERT", &server.ca_cert)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let retirement: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(retirement["retired"], serde_json::json!([1]));
    assert_eq!(retirement["keys"]["active_version"], 2);
    tokio::task::block_in_place(|| server.terminate())?;

    let old_key = std::fs::read(data.join("dev/root.key"))?;
    let new_key = dir.path().join("new.key");
    std::fs::write(&new_key, "ab".repeat(32))?;
    // Refused while others may read it.
    let open = Command::new(SERVER)
        .args(["change-root-key", "--dev", "--new-key-file"])
        .arg(&new_key)
        .arg("--data-dir")
        .arg(&data)
        .output()?;
    assert_eq!(open.status.code(), Some(2), "{open:?}");
    assert!(String::from_utf8_lossy(&open.stderr).contains("chmod 600"));
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&new_key, std::fs::Permissions::from_mode(0o600))?;
    }
    let change = || -> std::io::Result<std::process::Output> {
        Command::new(SERVER)
            .args(["change-root-key", "--dev", "--new-key-file"])
            .arg(&new_key)
            .arg("--data-dir")
            .arg(&data)
            .output()
    };
    let changed = change()?;
    assert!(changed.status.success(), "{changed:?}");
    let line: serde_json::Value = serde_json::from_slice(&changed.stdout)?;
    assert_eq!(line["root_key_changed"], true);
    assert_eq!(line["already_changed"], false);
    assert_ne!(std::fs::read(data.join("dev/root.key"))?, old_key);
    // Run again: nothing more to do, and it says so.
    let again = change()?;
    assert!(again.status.success(), "{again:?}");
    let line: serde_json::Value = serde_json::from_slice(&again.stdout)?;
    assert_eq!(line["already_changed"], true);

    let server = Server::start_dev(&data)?;
    let read = server
        .admin()?
        .detokenize(std::slice::from_ref(&token), "support")
        .await?;
    assert!(!erased(&read[0]));
    assert!(matches!(read[0], DetokenizeResult::Value { .. }));
    Ok(())
}
