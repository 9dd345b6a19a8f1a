//! The whole lifecycle through `vault-client` and `vaultctl` against a server
//! process in `--dev` mode, over TLS on loopback.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Server, TestResult, VAULTCTL};
use vault_client::api::{DetokenizeResult, ItemError, Purge, TokenizeItem};

fn value_of(result: &DetokenizeResult) -> Option<&str> {
    match result {
        DetokenizeResult::Value { value, .. } => Some(value.expose()),
        DetokenizeResult::Error { .. } => None,
    }
}

fn error_of(result: &DetokenizeResult) -> Option<ItemError> {
    match result {
        DetokenizeResult::Error { error, .. } => Some(*error),
        DetokenizeResult::Value { .. } => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_sets_itself_up_and_keeps_its_files_private() -> TestResult {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let server = Server::start_dev(&data)?;
    let line: serde_json::Value = serde_json::from_str(&server.stdout_line)?;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "{}",
        server.url
    );
    assert!(server.api_key.starts_with("pvk_"));
    assert!(line["data_dir"].is_string());
    for private in ["root.key", "tls-key.pem", "admin-api-key"] {
        let mode = std::fs::metadata(data.join("dev").join(private))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{private} is readable by others: {mode:o}");
    }
    assert!(server.log_text().contains("NOT FOR PRODUCTION"));
    let (live, ready) = server.admin()?.health().await?;
    assert!(live && ready);

    // A restart reuses the key file, certificate and API key.
    let (url, key, ca) = (
        server.url.clone(),
        server.api_key.clone(),
        server.ca_cert.clone(),
    );
    let token = server
        .admin()?
        .tokenize_one("c-1", "email", "one@example.com")
        .await?;
    drop(server);
    let server = Server::start_dev(&data)?;
    assert_eq!((server.api_key.clone(), server.ca_cert.clone()), (key, ca));
    assert_ne!(server.url, url, "a new port each time (listen :0)");
    let back = server.admin()?.detokenize(&[token], "support").await?;
    assert_eq!(value_of(&back[0]), Some("one@example.com"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_detokenize_rectify_delete_export_erase() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let client = server.admin()?;

    let tokens = client
        .tokenize(vec![
            TokenizeItem::new("customer-42", "email", "alice@example.com"),
            TokenizeItem::new("customer-42", "name", "Alice Martin"),
            TokenizeItem::new("customer-7", "email", "bob@example.com"),
            TokenizeItem::new("customer-42", "email", "alice@example.com").deterministic(),
        ])
        .await?;
    assert_eq!(tokens.len(), 4);
    assert!(tokens.iter().all(|t| t.starts_with("tok_")));
    let again = client
        .tokenize(vec![
            TokenizeItem::new("customer-42", "email", "alice@example.com").deterministic(),
        ])
        .await?;
    assert_eq!(again[0], tokens[3], "deterministic tokens repeat");

    let results = client.detokenize(&tokens, "support").await?;
    let values: Vec<_> = results.iter().map(value_of).collect();
    assert_eq!(
        values,
        [
            Some("alice@example.com"),
            Some("Alice Martin"),
            Some("bob@example.com"),
            Some("alice@example.com")
        ]
    );

    client.rectify(&tokens[1], "Alice Dupont").await?;
    let results = client.detokenize(&tokens[1..2], "support").await?;
    assert_eq!(value_of(&results[0]), Some("Alice Dupont"));
    let err = client
        .rectify(&tokens[3], "x")
        .await
        .err()
        .ok_or("rectified")?;
    assert_eq!(err.code(), Some("deterministic_token"));

    let export = client.export("customer-42").await?;
    assert_eq!(export.subject.expose(), "customer-42");
    let mut fields: Vec<_> = export
        .records
        .iter()
        .map(|r| {
            (
                r.field.as_str(),
                r.value.as_ref().map(|v| v.expose().to_owned()),
            )
        })
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("email", Some("alice@example.com".to_owned())),
            ("email", Some("alice@example.com".to_owned())),
            ("name", Some("Alice Dupont".to_owned()))
        ]
    );
    assert!(export.records.iter().all(|r| tokens.contains(&r.token)));

    client.delete(&tokens[0]).await?;
    let results = client.detokenize(&tokens[..1], "support").await?;
    assert_eq!(error_of(&results[0]), Some(ItemError::NotFound));
    let err = client
        .delete(&tokens[0])
        .await
        .err()
        .ok_or("deleted twice")?;
    assert_eq!((err.status(), err.code()), (Some(404), Some("not_found")));

    let receipt = client.erase("customer-42").await?;
    assert_eq!(receipt.records, 2, "the two records left after the delete");
    assert!(
        matches!(receipt.purge, Purge::Done { .. }),
        "dev mode purges at once"
    );
    let subject_ref = receipt.subject_ref.clone().ok_or("no subject_ref")?;
    assert!(!subject_ref.contains("customer"));
    let results = client.detokenize(&tokens, "support").await?;
    let outcomes: Vec<_> = results.iter().map(error_of).collect();
    assert_eq!(
        outcomes,
        [
            Some(ItemError::NotFound),
            Some(ItemError::Erased),
            None,
            Some(ItemError::Erased)
        ]
    );
    assert_eq!(
        value_of(&results[2]),
        Some("bob@example.com"),
        "bystander kept"
    );
    let err = client
        .rectify(&tokens[1], "x")
        .await
        .err()
        .ok_or("rectified")?;
    assert_eq!((err.status(), err.code()), (Some(410), Some("erased")));
    assert!(client.export("customer-42").await?.records.is_empty());

    // Idempotent: erasing again finds nothing to do.
    let again = client.erase("customer-42").await?;
    assert_eq!(again.purge, Purge::NotNeeded);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_while_traffic_runs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let client = server.admin()?;
    // Enough subjects that the rewrap takes many batches.
    for chunk in 0..40 {
        let items = (0..500)
            .map(|i| TokenizeItem::new(format!("s-{chunk}-{i}"), "email", format!("v-{chunk}-{i}")))
            .collect();
        client.tokenize(items).await?;
    }
    let before = client.keys().await?;
    assert_eq!(before.versions.len(), 1);

    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let stop = stop.clone();
        let completed = completed.clone();
        workers.push(tokio::spawn(async move {
            let mut issued = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let value = format!("w{w}-{n}");
                let token = client
                    .tokenize_one(format!("traffic-{w}-{}", n % 50), "email", value.as_str())
                    .await
                    .map_err(|e| e.to_string())?;
                let back = client
                    .detokenize(std::slice::from_ref(&token), "support")
                    .await
                    .map_err(|e| e.to_string())?;
                if value_of(&back[0]) != Some(value.as_str()) {
                    return Err(format!("{token} read back wrong during rotation"));
                }
                issued.push((token, value));
                completed.fetch_add(1, Ordering::SeqCst);
                n += 1;
            }
            Ok::<_, String>(issued)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Counted from before the call: a rotation of 20 000 keys can be over before
    // the call's answer arrives.
    let during_start = completed.load(Ordering::SeqCst);
    let started = client.rotate().await?;
    assert_eq!(started.active_version, before.active_version + 1);
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let status = client.keys().await?;
        if !status.rotation_in_progress {
            break status;
        }
        if Instant::now() > deadline {
            return Err(format!("rotation did not finish: {status:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let during_end = completed.load(Ordering::SeqCst);
    stop.store(true, Ordering::Relaxed);
    assert!(
        during_end > during_start,
        "no request completed between the rotate call and the rotation's end"
    );
    let mut issued = Vec::new();
    for worker in workers {
        issued.extend(worker.await??);
    }
    assert!(!issued.is_empty());
    assert_eq!(
        done.versions.len(),
        1,
        "the old version is retired: {done:?}"
    );
    assert_eq!(done.active_version, started.active_version);
    assert!(done.background_error.is_none(), "{done:?}");
    // Everything issued before and during the rotation still reads back.
    let tokens: Vec<String> = issued.iter().map(|(t, _)| t.clone()).collect();
    for (chunk, expected) in tokens.chunks(500).zip(issued.chunks(500)) {
        let back = client.detokenize(chunk, "support").await?;
        for (result, (_, value)) in back.iter().zip(expected) {
            assert_eq!(value_of(result), Some(value.as_str()));
        }
    }
    Ok(())
}

fn vaultctl(
    server: &Server,
    key: &str,
    args: &[&str],
) -> TestResult<(i32, serde_json::Value, String)> {
    vaultctl_stdin(server, key, args, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaultctl_runs_the_lifecycle_with_exit_codes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let key = server.api_key.clone();

    let (code, out, err) = vaultctl(
        &server,
        &key,
        &[
            "tokenize",
            "--subject",
            "customer-9",
            "--field",
            "email",
            "--value",
            "carol@example.com",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let token = out["tokens"][0].as_str().ok_or("no token")?.to_owned();

    let (code, out, err) = vaultctl(
        &server,
        &key,
        &["detokenize", "--purpose", "support", &token],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["results"][0]["value"], "carol@example.com");

    let (code, out, _) = vaultctl(&server, &key, &["purposes"])?;
    assert_eq!(code, 0);
    assert!(
        out["purposes"].as_array().is_some_and(|p| p.len() == 4),
        "{out}"
    );
    let (code, _, err) = vaultctl(
        &server,
        &key,
        &[
            "consent",
            "--subject",
            "customer-9",
            "--purpose",
            "marketing",
            "--grant",
            "--source",
            "cli",
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = vaultctl(
        &server,
        &key,
        &["detokenize", "--purpose", "marketing", &token],
    )?;
    assert_eq!(code, 0);
    assert_eq!(out["results"][0]["value"], "carol@example.com");
    let (code, _, _) = vaultctl(
        &server,
        &key,
        &[
            "consent",
            "--subject",
            "customer-9",
            "--purpose",
            "marketing",
            "--withdraw",
        ],
    )?;
    assert_eq!(code, 0);
    let (code, out, _) = vaultctl(
        &server,
        &key,
        &["detokenize", "--purpose", "marketing", &token],
    )?;
    assert_eq!(code, 0);
    assert_eq!(out["results"][0]["error"], "no_consent");
    let (code, out, _) = vaultctl(&server, &key, &["consents", "--subject", "customer-9"])?;
    assert_eq!(code, 0);
    assert_eq!(
        out["consents"][0]["history"].as_array().map(Vec::len),
        Some(2)
    );
    let (code, out, _) = vaultctl(
        &server,
        &key,
        &["detokenize", "--purpose", "analytics", &token],
    )?;
    assert_eq!(code, 0);
    assert_eq!(out["results"][0]["value"], "c***@example.com");
    assert_eq!(out["results"][0]["masked"], true);

    let (code, out, _) = vaultctl(&server, &key, &["export", "--subject", "customer-9"])?;
    assert_eq!(code, 0);
    assert_eq!(out["records"][0]["token"], token.as_str());
    assert_eq!(out["consents"][0]["purpose"], "marketing");
    let actions: Vec<_> = out["access_log"]
        .as_array()
        .ok_or("no access log")?
        .iter()
        .map(|e| e["action"].as_str().unwrap_or("?").to_owned())
        .collect();
    for action in [
        "tokenize",
        "consent_granted",
        "detokenize",
        "consent_withdrawn",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }

    let (code, out, _) = vaultctl(&server, &key, &["erase", "--subject", "customer-9"])?;
    assert_eq!(code, 0);
    assert_eq!(out["records"], 1);
    assert_eq!(out["purge"]["state"], "done");

    let (code, out, _) = vaultctl(
        &server,
        &key,
        &["detokenize", "--purpose", "support", &token],
    )?;
    assert_eq!(code, 0);
    assert_eq!(out["results"][0]["error"], "erased");

    let (code, out, err) = vaultctl(&server, &key, &["audit-verify"])?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out["ok"], true);
    let (code, out, _) = vaultctl(&server, &key, &["audit", "--limit", "1000"])?;
    assert_eq!(code, 0);
    let events = out["events"].as_array().ok_or("no events")?;
    assert!(events.iter().any(|e| e["action"] == "erase"), "{out}");
    assert!(
        !out.to_string().contains("carol"),
        "no personal data in the trail"
    );

    let (code, out, _) = vaultctl(&server, &key, &["keys"])?;
    assert_eq!(code, 0);
    assert_eq!(out["active_version"], 1);

    // The server refuses: exit 1, its code on stderr.
    let (code, _, err) = vaultctl(&server, "pvk_wrong", &["keys"])?;
    assert_eq!(code, 1);
    assert!(err.contains("unauthenticated"), "{err}");
    // Usage errors: exit 2.
    let (code, _, _) = vaultctl(&server, &key, &["tokenize", "--subject", "x"])?;
    assert_eq!(code, 2);
    // Nobody listening: exit 3.
    let output = Command::new(VAULTCTL)
        .args(["keys"])
        .env("VAULT_ADDR", "https://127.0.0.1:9")
        .env("VAULT_API_KEY", &key)
        .env("VAULT_CACERT", &server.ca_cert)
        .output()?;
    assert_eq!(output.status.code(), Some(3));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_head_is_logged_and_checked_against_the_trail() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let key = server.api_key.clone();
    server
        .admin()?
        .tokenize_one("c-1", "email", "one@example.com")
        .await?;
    let (code, head, err) = vaultctl(&server, &key, &["audit-head"])?;
    assert_eq!(code, 0, "{err}");
    let (seq, mac) = (
        head["seq"].as_u64().ok_or("seq")?,
        head["mac"].as_str().ok_or("mac")?.to_owned(),
    );
    assert_eq!(mac.len(), 64);
    let seq_text = seq.to_string();
    let (code, check, err) = vaultctl(
        &server,
        &key,
        &[
            "audit-verify",
            "--expected-seq",
            &seq_text,
            "--expected-mac",
            &mac,
        ],
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(check["anchor"], "contained");
    // A head this trail never had: another history (rolled back).
    let other = "0".repeat(64);
    let (code, check, _) = vaultctl(
        &server,
        &key,
        &[
            "audit-verify",
            "--expected-seq",
            &seq_text,
            "--expected-mac",
            &other,
        ],
    )?;
    assert_eq!(code, 1);
    assert_eq!(check["anchor"], "rolled_back");
    // Beyond its end: truncated.
    let beyond = (seq + 1000).to_string();
    let (code, check, _) = vaultctl(
        &server,
        &key,
        &[
            "audit-verify",
            "--expected-seq",
            &beyond,
            "--expected-mac",
            &mac,
        ],
    )?;
    assert_eq!(code, 1);
    assert_eq!(check["anchor"], "truncated");
    // The server logged a head when it started, for a log shipper to keep.
    let log = server.log_text_once(|text| text.contains("audit head"));
    assert!(log.contains("audit_head_seq"), "{log}");
    Ok(())
}

/// `vaultctl` with `stdin` piped in.
fn vaultctl_stdin(
    server: &Server,
    key: &str,
    args: &[&str],
    stdin: &str,
) -> TestResult<(i32, serde_json::Value, String)> {
    use std::io::Write;
    let mut child = Command::new(VAULTCTL)
        .args(args)
        .env("VAULT_ADDR", &server.url)
        .env("VAULT_API_KEY", key)
        .env("VAULT_CACERT", &server.ca_cert)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(stdin.as_bytes())?;
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8(output.stdout)?;
    let json = if stdout.trim().is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&stdout)?
    };
    Ok((
        output.status.code().unwrap_or(-1),
        json,
        String::from_utf8(output.stderr)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaultctl_takes_every_personal_argument_from_stdin() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let key = server.api_key.clone();
    let (code, out, err) = vaultctl_stdin(
        &server,
        &key,
        &[
            "tokenize",
            "--subject-stdin",
            "--field",
            "email",
            "--value-stdin",
        ],
        "stdin-subject-7\nstdin@example.com\n",
    )?;
    assert_eq!(code, 0, "{err}");
    let token = out["tokens"][0].as_str().ok_or("a token")?.to_owned();
    let client = server.admin()?;
    let read = client
        .detokenize(std::slice::from_ref(&token), "support")
        .await?;
    assert_eq!(value_of(&read[0]), Some("stdin@example.com"));
    let export = client.export("stdin-subject-7").await?;
    assert_eq!(export.records.len(), 1);

    let (code, _, err) = vaultctl_stdin(
        &server,
        &key,
        &[
            "consent",
            "--subject-stdin",
            "--purpose",
            "marketing",
            "--grant",
            "--source-stdin",
        ],
        "stdin-subject-7\nsignup-form-3\n",
    )?;
    assert_eq!(code, 0, "{err}");
    let consents = client.consents("stdin-subject-7").await?;
    let history = serde_json::to_string(&consents)?;
    assert!(history.contains("signup-form-3"), "{history}");
    // One -stdin option alone takes the whole of stdin, lines and all.
    let (code, _, err) = vaultctl_stdin(
        &server,
        &key,
        &["rectify", &token, "--value-stdin"],
        "line one\nline two\n",
    )?;
    assert_eq!(code, 0, "{err}");
    let read = client.detokenize(&[token], "support").await?;
    assert_eq!(value_of(&read[0]), Some("line one\nline two"));
    Ok(())
}

/// An export larger than a page comes in pages over HTTP, each a bounded answer;
/// the typed client and `vaultctl export` follow the cursor to every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_come_in_pages_that_vaultctl_follows() -> TestResult {
    let dir = tempfile::tempdir()?;
    let server = Server::start_dev(&dir.path().join("data"))?;
    let client = server.admin()?;
    // More than the default page (128), in batches the server accepts.
    let mut tokens = Vec::new();
    for batch in 0..3 {
        let items = (0..200)
            .map(|i| TokenizeItem::new("big-subject", "note", format!("note {batch}-{i}")))
            .collect();
        tokens.extend(client.tokenize(items).await?);
    }

    // One page over HTTP: at most `limit`, and a cursor.
    let first = client.export_page("big-subject", None, Some(100)).await?;
    assert_eq!(first.records.len(), 100);
    let cursor = first
        .next_cursor
        .clone()
        .ok_or("a first page has a cursor")?;
    let second = client
        .export_page("big-subject", Some(cursor), Some(100))
        .await?;
    assert_eq!(second.subject_ref, first.subject_ref);
    assert!(second.consents.is_empty());
    assert!(
        second
            .records
            .iter()
            .all(|r| first.records.iter().all(|f| f.token != r.token)),
        "pages do not overlap"
    );
    // A limit over the server's page is refused, as is a cursor it did not issue.
    let over = client.export_page("big-subject", None, Some(100_000)).await;
    assert_eq!(
        over.err()
            .and_then(|e| e.code().map(str::to_owned))
            .as_deref(),
        Some("invalid_item")
    );
    let forged = client
        .export_page("big-subject", Some("rtok_forged".into()), None)
        .await;
    assert_eq!(forged.err().and_then(|e| e.status()), Some(400));

    // vaultctl follows the pages to every record.
    let (code, out, err) = vaultctl(
        &server,
        &server.api_key,
        &["export", "--subject", "big-subject"],
    )?;
    assert_eq!(code, 0, "{err}");
    let mut exported: Vec<&str> = out["records"]
        .as_array()
        .ok_or("records")?
        .iter()
        .filter_map(|r| r["token"].as_str())
        .collect();
    exported.sort_unstable();
    let mut expected: Vec<&str> = tokens.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(exported, expected, "every record, once");
    assert!(out["next_cursor"].is_null());
    Ok(())
}
