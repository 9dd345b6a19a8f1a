//! Replicas of one vault on PostgreSQL: several `Vault`s open on the same schema,
//! as several vault-server processes are. Each test opens its replicas in one
//! process (they share nothing but the database: no cache, lock or journal state),
//! against the cluster `scripts/postgres` runs.

mod common;

use std::sync::Arc;
use std::thread;

use common::{TestResult, options, postgres_config, root};
use vault_core::{Error, RootKey, Vault, VaultOptions};

/// Two replicas of a new vault in a schema of its own.
fn replicas(
    opts: impl Fn() -> VaultOptions,
) -> Result<(tempfile::TempDir, Vault, Vault), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    let config = postgres_config(tmp.path());
    let a = Vault::open_postgres(&config, &root(), opts())?;
    let b = Vault::open_postgres(&config, &root(), opts())?;
    Ok((tmp, a, b))
}

#[test]
fn an_erasure_through_one_replica_is_seen_by_the_other_at_once() -> TestResult {
    let (_tmp, a, b) = replicas(options)?;
    let token = a
        .tokenize("alice", "email", "alice@example.com")?
        .to_string();
    // B reads it (and would have cached its key, on RocksDB).
    assert_eq!(
        b.detokenize(&token)?.value.as_str(),
        Some("alice@example.com")
    );
    let receipt = b.erase("alice")?;
    assert_eq!(receipt.records, 1);
    assert!(matches!(a.detokenize(&token), Err(Error::Erased)));
    assert!(matches!(b.detokenize(&token), Err(Error::Erased)));
    // The subject id names a new subject on either replica.
    let again = a.tokenize("alice", "email", "new@example.com")?.to_string();
    assert_eq!(
        b.detokenize(&again)?.value.as_str(),
        Some("new@example.com")
    );
    assert!(matches!(b.detokenize(&token), Err(Error::Erased)));
    assert!(a.verify_audit()?.ok);
    Ok(())
}

#[test]
fn concurrent_writes_through_two_replicas_keep_one_trail_and_every_token() -> TestResult {
    let (_tmp, a, b) = replicas(options)?;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let mut handles = Vec::new();
    for (n, vault) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        handles.push(thread::spawn(
            move || -> Result<Vec<(String, String)>, Error> {
                let mut issued = Vec::new();
                for i in 0..40 {
                    // Every writer tokenizes for the same few subjects: their entries
                    // are written by both replicas at once.
                    let subject = format!("subject-{}", i % 3);
                    let value = format!("{n}-{i}@example.com");
                    let token = vault.tokenize(&subject, "email", &value)?.to_string();
                    issued.push((token, value));
                }
                Ok(issued)
            },
        ));
    }
    let mut issued = Vec::new();
    for handle in handles {
        issued.extend(handle.join().expect("writer thread")?);
    }
    assert_eq!(issued.len(), 160);
    for (i, (token, value)) in issued.iter().enumerate() {
        let reader = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            reader.detokenize(token)?.value.as_str(),
            Some(value.as_str())
        );
    }
    // Each subject's record count saw every write (no lost update of its entry).
    let erased = a.erase("subject-0")?.records
        + b.erase("subject-1")?.records
        + a.erase("subject-2")?.records;
    assert_eq!(erased, issued.len() as u64);
    let conflicts = a.storage_counters().conflicts + b.storage_counters().conflicts;
    eprintln!("writes run again after a conflict: {conflicts}");
    let check = b.verify_audit()?;
    assert!(check.ok, "{check:?}");
    Ok(())
}

#[test]
fn a_rotation_through_one_replica_while_the_other_writes_keeps_every_token() -> TestResult {
    let (_tmp, a, b) = replicas(|| options().rotation_batch(7))?;
    let mut issued = Vec::new();
    for i in 0..60 {
        let token = a.tokenize(&format!("s{i}"), "email", format!("{i}@x.io"))?;
        issued.push((token.to_string(), format!("{i}@x.io")));
    }
    let b = Arc::new(b);
    let writer = {
        let b = b.clone();
        thread::spawn(move || -> Result<Vec<(String, String)>, Error> {
            let mut issued = Vec::new();
            for i in 60..120 {
                let token = b.tokenize(&format!("s{i}"), "email", format!("{i}@x.io"))?;
                issued.push((token.to_string(), format!("{i}@x.io")));
                // Erasures race the rotation's rewraps too.
                if i % 10 == 0 {
                    b.erase(&format!("s{}", i - 60))?;
                }
            }
            Ok(issued)
        })
    };
    let before = a.key_status()?.active_version;
    let status = a.rotate_kek()?;
    let written = writer.join().expect("writer thread")?;
    // The other replica may have created keys under the old version just before
    // the rotation began: finishing from either replica leaves one version.
    let status = if status.versions.len() > 1 {
        b.resume_kek_rotation()?
    } else {
        status
    };
    assert_eq!(status.versions.len(), 1, "{status:?}");
    assert_ne!(status.active_version, before);
    assert_eq!(b.key_status()?.active_version, status.active_version);
    for (i, (token, value)) in issued.iter().chain(&written).enumerate() {
        let erased = i < 60 && i % 10 == 0;
        for vault in [&a, &*b] {
            match vault.detokenize(token) {
                Ok(record) if !erased => assert_eq!(record.value.as_str(), Some(value.as_str())),
                Err(Error::Erased) if erased => {}
                other => panic!("token {i}: {other:?}"),
            }
        }
    }
    assert!(b.verify_audit()?.ok);
    Ok(())
}

#[test]
fn a_wrong_root_key_is_refused_and_a_second_replica_opens_the_same_vault() -> TestResult {
    let (tmp, a, _b) = replicas(options)?;
    let token = a.tokenize("alice", "email", "a@x.io")?.to_string();
    let config = postgres_config(tmp.path());
    let wrong = RootKey::from_bytes(&[9; 32])?;
    assert!(matches!(
        Vault::open_postgres(&config, &wrong, options()),
        Err(Error::WrongRootKey)
    ));
    let c = Vault::open_postgres(&config, &root(), options())?;
    assert_eq!(c.detokenize(&token)?.value.as_str(), Some("a@x.io"));
    Ok(())
}

#[test]
fn a_missing_vault_is_not_created_when_creation_is_off() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let config = postgres_config(tmp.path());
    assert!(matches!(
        Vault::open_postgres(&config, &root(), options().create_if_missing(false)),
        Err(Error::NoVault { .. })
    ));
    Ok(())
}

/// A PostgreSQL cluster of this test's own (`scripts/postgres` in a directory and
/// on a port of its own), stopped and deleted when dropped: small enough that every
/// byte of its data directory and WAL can be scanned.
struct OwnCluster {
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnCluster {
    fn script(&self, arg: &str) -> Result<String, Box<dyn std::error::Error>> {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/postgres");
        let out = std::process::Command::new(script)
            .arg(arg)
            .env("VAULT_PG_DIR", &self.dir)
            .env("VAULT_PG_PORT", self.port.to_string())
            .stderr(std::process::Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("scripts/postgres {arg} failed").into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_owned())
    }

    fn start(tmp: &std::path::Path) -> Result<OwnCluster, Box<dyn std::error::Error>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cluster = OwnCluster {
            dir: std::path::PathBuf::from(format!(
                "/tmp/vault-scan-pg-{}",
                tmp.file_name().unwrap_or_default().to_string_lossy()
            )),
            port,
        };
        cluster.script("start")?;
        Ok(cluster)
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

#[test]
fn the_database_files_and_wal_hold_no_value_and_no_subject_id() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let cluster = OwnCluster::start(tmp.path())?;
    let url = format!("{}?sslmode=require", cluster.script("url")?);
    let config = vault_core::PostgresConfig::new(url.clone()).ca_file(cluster.script("ca")?);
    let vault = Vault::open_postgres(&config, &root(), options())?;
    let marker = common::schema_for(tmp.path());
    let mut needles: Vec<Vec<u8>> = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..20 {
        let subject = format!("scan-subject-{marker}-{i}");
        let value = format!("scan-value-{marker}-{i}@example.com");
        tokens.push(vault.tokenize(&subject, "email", &value)?.to_string());
        needles.push(subject.into_bytes());
        needles.push(value.into_bytes());
    }
    let rectified = format!("scan-rectified-{marker}@example.com");
    vault.rectify(&tokens[3], &rectified)?;
    needles.push(rectified.into_bytes());
    vault.erase(&format!("scan-subject-{marker}-5"))?;
    vault.purge_now()?;
    let exported = vault.export(&format!("scan-subject-{marker}-7"))?;
    assert_eq!(exported.records.len(), 1);

    // The positive control: plaintext that PostgreSQL does store, in a table of
    // the same database; the scan must find it (in the WAL, and after the
    // checkpoint in the table's file).
    // (Nothing in common with the needles: the scan matches 16-byte pieces.)
    let reversed: String = marker.chars().rev().collect();
    let control = format!("positive-control/{reversed}/plaintext");
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let mut client = postgres::Client::connect(&plain, postgres::NoTls)?;
    client.batch_execute(&format!(
        "CREATE TABLE vault.scan_control (t text); INSERT INTO vault.scan_control VALUES ('{control}')"
    ))?;
    let mut admin = postgres::Client::connect(&cluster.script("admin")?, postgres::NoTls)?;
    admin.batch_execute("CHECKPOINT")?;
    vault.close()?;

    let data = cluster.dir.join("data");
    let mut all = needles.clone();
    all.push(control.clone().into_bytes());
    let holders = common::holders_of_each(&data, &all);
    let control_in = holders.last().ok_or("no control result")?;
    assert!(
        control_in
            .iter()
            .any(|p| p.starts_with(data.join("pg_wal")))
            && control_in.iter().any(|p| p.starts_with(data.join("base"))),
        "the control must be found in the WAL and in a table file: {control_in:?}"
    );
    for (needle, found) in needles.iter().zip(&holders) {
        assert!(
            found.is_empty(),
            "{} found in {found:?}",
            String::from_utf8_lossy(needle)
        );
    }
    Ok(())
}

/// Copies every table of `schema` into a new schema `copy` (rows, keys and all),
/// as a base backup of the database would keep them.
fn snapshot(client: &mut postgres::Client, schema: &str, copy: &str) -> TestResult {
    client.batch_execute(&format!("CREATE SCHEMA \"{copy}\""))?;
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&schema],
        )?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in tables {
        client.batch_execute(&format!(
            "CREATE TABLE \"{copy}\".\"{table}\" (LIKE \"{schema}\".\"{table}\" INCLUDING ALL); \
             INSERT INTO \"{copy}\".\"{table}\" SELECT * FROM \"{schema}\".\"{table}\""
        ))?;
    }
    Ok(())
}

#[test]
fn a_database_restored_to_before_erasures_has_them_replayed_from_the_shared_journal() -> TestResult
{
    let tmp = tempfile::tempdir()?;
    let journal = tmp.path().join("journal");
    let opts = || options().backups(vault_core::BackupOptions::new(&journal));
    let config = postgres_config(tmp.path());
    let schema = config.schema_name().to_owned();
    let (url, _) = common::postgres();
    let mut client = postgres::Client::connect(
        &url.replace("sslmode=require", "sslmode=disable"),
        postgres::NoTls,
    )?;

    let a = Vault::open_postgres(&config, &root(), opts())?;
    let b = Vault::open_postgres(&config, &root(), opts())?;
    let alice = a.tokenize("alice", "email", "a@x.io")?.to_string();
    let bob = a.tokenize("bob", "email", "b@x.io")?.to_string();
    let carol = b.tokenize("carol", "email", "c@x.io")?.to_string();
    // The database as a base backup taken now would hold it.
    snapshot(&mut client, &schema, &format!("{schema}_base"))?;
    // Both replicas append to the one journal.
    a.erase("alice")?;
    b.erase("bob")?;
    drop((a, b));

    // The cluster restored to the base backup: alice and bob are back in it...
    client.batch_execute(&format!(
        "DROP SCHEMA \"{schema}\" CASCADE; ALTER SCHEMA \"{schema}_base\" RENAME TO \"{schema}\""
    ))?;
    // ...and a replica without the journal refuses to serve them.
    assert!(matches!(
        Vault::open_postgres(&config, &root(), options()),
        Err(Error::Backup(vault_core::BackupProblem::JournalNotAttached))
    ));
    // With it, both erasures are made again before anything is served.
    let c = Vault::open_postgres(&config, &root(), opts())?;
    assert!(matches!(c.detokenize(&alice), Err(Error::Erased)));
    assert!(matches!(c.detokenize(&bob), Err(Error::Erased)));
    assert_eq!(c.detokenize(&carol)?.value.as_str(), Some("c@x.io"));
    assert!(c.verify_audit()?.ok);
    // A backup of its own is not offered on PostgreSQL.
    assert!(matches!(c.backup(), Err(Error::Unsupported(_))));
    Ok(())
}

#[test]
fn a_purge_is_not_verified_while_an_older_snapshot_can_still_see_the_rows() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let config = postgres_config(tmp.path());
    let vault = Vault::open_postgres(&config, &root(), options())?;
    vault.tokenize("alice", "email", "a@x.io")?;
    // A reader (a long report, a backup) whose snapshot predates the erasure.
    let (url, _) = common::postgres();
    let mut reader = postgres::Client::connect(
        &url.replace("sslmode=require", "sslmode=disable"),
        postgres::NoTls,
    )?;
    let mut snapshot = reader
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .start()?;
    snapshot.query(
        &format!("SELECT count(*) FROM \"{}\".keys", config.schema_name()),
        &[],
    )?;
    vault.erase("alice")?;
    let report = vault.purge_now()?;
    assert!(!report.verified, "{report:?}");
    assert_eq!(vault.pending_purges()?.len(), 1);
    snapshot.commit()?;
    // Other tests' transactions run on the same cluster: the purge is retried, as
    // the worker does, until none older is left.
    let mut verified = false;
    for _ in 0..100 {
        if vault.purge_now()?.verified {
            verified = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(verified, "the purge verifies once the old snapshot is gone");
    assert!(vault.pending_purges()?.is_empty());
    Ok(())
}

#[test]
fn replicas_starting_while_others_write_lose_no_event_and_find_the_trail_whole() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let config = postgres_config(tmp.path());
    // The vault exists; its trail has no event yet, so the first groups of the
    // two writers race for the trail's first head.
    drop(Vault::open_postgres(&config, &root(), options())?);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let config = config.clone();
            thread::spawn(move || -> Result<u64, Error> {
                let vault = Vault::open_postgres(&config, &root(), options())?;
                for i in 0..30 {
                    vault.tokenize(&format!("w{w}-{i}"), "email", "v@x.io")?;
                }
                Ok(30)
            })
        })
        .collect();
    // Replicas coming up meanwhile (a rolling restart) find the trail whole.
    for _ in 0..10 {
        let replica = Vault::open_postgres(&config, &root(), options())?;
        assert!(replica.verify_audit()?.ok);
        replica.tokenize("starter", "email", "s@x.io")?;
    }
    let mut written = 10;
    for writer in writers {
        written += writer.join().expect("writer thread")?;
    }
    let check = Vault::open_postgres(&config, &root(), options())?.verify_audit()?;
    // One event per tokenization, none overwritten.
    assert!(check.ok, "{check:?}");
    assert_eq!(check.events, written, "{check:?}");
    Ok(())
}
