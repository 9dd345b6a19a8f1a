//! Durability under SIGKILL, with real child processes: the test binary re-runs
//! itself as the child (an ignored test selected by name), reads what the child
//! acknowledges on stdout, kills it with SIGKILL, reopens the vault and checks.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::*;
use vault_core::{TokenizeRequest, Vault, VaultOptions};

const DIR_VAR: &str = "VAULT_CRASH_TEST_DIR";

fn spawn_child(test: &str, dir: &Path) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(DIR_VAR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

fn child_dir() -> std::path::PathBuf {
    std::env::var_os(DIR_VAR)
        .expect("run by the crash tests, which set the directory")
        .into()
}

/// Child: tokenizes forever from 4 threads (synced writes, group commit) and prints
/// `ACK <token> <value>` after each call returns.
#[test]
#[ignore = "child process of acknowledged_tokenizations_survive_sigkill"]
fn crash_child_tokenize() {
    let vault = Arc::new(Vault::open(child_dir(), &root(), VaultOptions::default()).expect("open"));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let vault = vault.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let value = format!("value-{t}-{i}");
                    let token = vault
                        .tokenize(&format!("subject-{t}-{}", i % 50), "email", &value)
                        .expect("tokenize");
                    println!("ACK {token} {value}");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
}

#[test]
fn acknowledged_tokenizations_survive_sigkill() -> TestResult {
    let dir = tempfile::tempdir()?;
    for round in 0..3 {
        let mut child = spawn_child("crash_child_tokenize", dir.path())?;
        let stdout = child.stdout.take().expect("piped");
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("ACK ") {
                let (token, value) = rest.split_once(' ').expect("token and value");
                acked.push((token.to_string(), value.to_string()));
                if acked.len() >= 300 {
                    break;
                }
            }
        }
        child.kill()?; // SIGKILL
        child.wait()?;
        assert!(acked.len() >= 300, "round {round}: child stopped early");
        let vault = open(dir.path());
        for (token, value) in &acked {
            let got = vault.detokenize(token)?;
            assert_eq!(got.value.as_str(), Some(value.as_str()), "round {round}");
        }
        vault.close()?;
    }
    Ok(())
}

const SUBJECTS: usize = 3_000;

/// Child: creates a vault of `SUBJECTS` subjects (if new), prints `READY`, then starts
/// a KEK rotation and runs it in small batches, printing `STEP n` after each.
#[test]
#[ignore = "child process of a_rotation_killed_midway_resumes"]
fn crash_child_rotate() {
    let opts = options().rotation_batch(50);
    let vault = Vault::open(child_dir(), &root(), opts).expect("open");
    println!("READY");
    vault.start_kek_rotation().expect("start");
    for step in 0.. {
        if !vault.kek_rotation_step().expect("step") {
            break;
        }
        println!("STEP {step}");
    }
    println!("DONE");
}

#[test]
fn a_rotation_killed_midway_resumes() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut tokens = Vec::new();
    {
        let vault = Vault::open(dir.path(), &root(), relaxed())?;
        let names: Vec<String> = (0..SUBJECTS).map(|i| format!("subject-{i}")).collect();
        for chunk in names.chunks(1000) {
            let items: Vec<TokenizeRequest> = chunk
                .iter()
                .map(|s| TokenizeRequest::new(s, "email", s.as_bytes()))
                .collect();
            for (t, s) in vault.tokenize_batch(&items)?.into_iter().zip(chunk) {
                tokens.push((t.to_string(), s.clone()));
            }
        }
        assert_eq!(vault.key_status()?.versions[0].deks, SUBJECTS as u64);
        vault.close()?;
    }

    let mut child = spawn_child("crash_child_rotate", dir.path())?;
    let stdout = child.stdout.take().expect("piped");
    let mut steps = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        if line.starts_with("STEP ") {
            steps += 1;
            if steps == 10 {
                break;
            }
        }
        assert_ne!(
            line, "DONE",
            "the rotation finished before it could be killed"
        );
    }
    child.kill()?;
    child.wait()?;

    let vault = open(dir.path());
    let status = vault.key_status()?;
    assert!(status.rotation_in_progress, "{status:?}");
    assert_eq!(status.active_version, 2);
    let total: u64 = status.versions.iter().map(|v| v.deks).sum();
    assert_eq!(total, SUBJECTS as u64, "{status:?}");
    assert!(
        status
            .versions
            .iter()
            .any(|v| v.version == 2 && v.deks >= 500),
        "{status:?}"
    );
    // Every value readable mid-rotation, under either version.
    for (token, value) in &tokens {
        assert_eq!(
            vault.detokenize(token)?.value.as_str(),
            Some(value.as_str())
        );
    }
    // New subjects get the new version at once.
    vault.tokenize("newcomer", "email", "n@x.io")?;
    let status = vault.resume_kek_rotation()?;
    assert!(!status.rotation_in_progress);
    assert_eq!(
        status.versions.len(),
        1,
        "the old version is destroyed: {status:?}"
    );
    assert_eq!(status.versions[0].version, 2);
    assert_eq!(status.versions[0].deks, SUBJECTS as u64 + 1);
    vault.close()?;

    let vault = open(dir.path());
    for (token, value) in &tokens {
        assert_eq!(
            vault.detokenize(token)?.value.as_str(),
            Some(value.as_str())
        );
    }
    Ok(())
}
