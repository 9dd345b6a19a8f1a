//! Failover under load: two vault-server replicas on the Patroni cluster (etcd, a
//! primary and its synchronous standby), tokenizations through both from several
//! tasks, erasures beside them, and a `kill -9` of the primary's postmaster while
//! it all runs. Patroni promotes the standby; the replicas find it through the
//! multi-host URL on their own, without a restart. Then nothing acknowledged is
//! lost: every acknowledged token reads back through both replicas, every
//! acknowledged erasure holds, and the audit trail verifies, with the head taken
//! before the kill still in it. Prints how long tokenizing was unavailable, per
//! replica and overall, and the load's counts.
//!
//! A failed tokenization is not acknowledged, and the client does not retry it
//! (it is not idempotent): it is counted, and what it may have left is not checked.
//!
//! And, without the cluster, what a failover does to one write: its connection cut
//! in its first round trip, which must be answered (an error) and leave its subject
//! free for the next write.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{postgres, schema_for};
use common::ha::HaCluster;
use common::{Launch, Server, TestResult, write_replica_config};
use vault_client::Client;
use vault_client::api::{DetokenizeResult, ExpectedHead, ItemError};

/// Tokenizing tasks per replica.
const TASKS_PER_REPLICA: usize = 3;
/// Load before the kill.
const LOAD_BEFORE_KILL: Duration = Duration::from_secs(3);
/// How long each replica may take to tokenize again after the promotion.
const RECOVERY_LIMIT: Duration = Duration::from_secs(30);
/// Load kept up once both tokenize again.
const LOAD_AFTER_RECOVERY: Duration = Duration::from_secs(2);
/// Subjects tokenized first and erased during the load, one every `ERASE_EVERY`.
const ERASE_SUBJECTS: usize = 80;
const ERASE_EVERY: Duration = Duration::from_millis(100);
/// The replicas' names in the report.
const NAMES: [&str; 2] = ["A", "B"];
/// The purpose everything is read for.
const PURPOSE: &str = "support";

/// A tokenization the vault acknowledged.
struct Ack {
    token: String,
    value: String,
}

/// One task's record of its calls.
#[derive(Default)]
struct Tally {
    acks: Vec<Ack>,
    /// When each acknowledged call was sent, and when it returned.
    successes: Vec<(Instant, Instant)>,
    /// When each failed call was sent, and how it failed.
    failures: Vec<(Instant, String)>,
}

/// A subject tokenized before the load and erased during it.
struct Erasure {
    tokens: Vec<String>,
    /// When its erasure was acknowledged, if it was.
    acked_at: Option<Instant>,
}

/// What every task sees: when to stop, and each replica's latest acknowledged
/// tokenization by the time its call was sent (µs after `epoch`).
struct Shared {
    epoch: Instant,
    stop: AtomicBool,
    latest_sent: [AtomicU64; 2],
}

impl Shared {
    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }
}

/// The configuration of both replicas: the cluster's multi-host URL, over TLS
/// checked against its CA, and an admin key.
fn vault_config(dir: &Path, cluster: &HaCluster) -> TestResult<(PathBuf, PathBuf, String)> {
    let url = cluster.url();
    // The URL carries target_session_attrs=read-write; TLS is required here, not
    // merely preferred (which would fall back to plain text if the server refused it).
    assert!(url.contains("target_session_attrs=read-write"), "{url}");
    let url = if url.contains("sslmode=") {
        url
    } else {
        format!("{url}&sslmode=require")
    };
    write_replica_config(dir, &url, &cluster.ca_file(), PURPOSE, "")
}

/// How a call failed, coarsely, for the counts.
fn failure_kind(e: &vault_client::Error) -> String {
    match e {
        vault_client::Error::Api { status, code, .. } => format!("{status} {code}"),
        vault_client::Error::Transport(_) => "transport".to_owned(),
        other => other.to_string(),
    }
}

/// Tokenizes one value after another through `client` until told to stop.
async fn tokenize_load(client: Client, replica: usize, task: usize, shared: Arc<Shared>) -> Tally {
    let mut tally = Tally::default();
    let mut i = 0u64;
    while !shared.stop.load(Ordering::Relaxed) {
        let subject = format!("load-{replica}-{task}-{i}");
        let value = format!("{subject}@example.com");
        i += 1;
        let sent = Instant::now();
        match client
            .tokenize_one(subject.as_str(), "email", value.as_str())
            .await
        {
            Ok(token) => {
                tally.successes.push((sent, Instant::now()));
                tally.acks.push(Ack { token, value });
                shared.latest_sent[replica].fetch_max(shared.micros(sent), Ordering::Relaxed);
            }
            Err(e) => {
                tally.failures.push((sent, failure_kind(&e)));
                // Not a busy loop while nothing answers.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tally
}

/// Erases the subjects one after another, alternating replicas, until done or
/// told to stop.
async fn erase_load(
    clients: [Client; 2],
    mut subjects: Vec<(String, Erasure)>,
    shared: Arc<Shared>,
) -> (Vec<(String, Erasure)>, Vec<String>) {
    let mut failures = Vec::new();
    for (i, (subject, erasure)) in subjects.iter_mut().enumerate() {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        match clients[i % 2].erase(subject.as_str()).await {
            Ok(_) => erasure.acked_at = Some(Instant::now()),
            Err(e) => failures.push(failure_kind(&e)),
        }
        tokio::time::sleep(ERASE_EVERY).await;
    }
    (subjects, failures)
}

/// The outage a set of calls saw: (the last acknowledged before it, the first
/// acknowledged of those sent after `kill`), as when they returned, in seconds
/// after `kill` (negative before it); `None` if no call sent after `kill` was
/// acknowledged.
fn outage(successes: &[(Instant, Instant)], kill: Instant) -> Option<(f64, f64)> {
    let relative = |at: Instant| {
        if at >= kill {
            at.duration_since(kill).as_secs_f64()
        } else {
            -kill.duration_since(at).as_secs_f64()
        }
    };
    let first_after = successes
        .iter()
        .filter(|(sent, _)| *sent >= kill)
        .map(|&(_, done)| done)
        .min()?;
    let last_before = successes
        .iter()
        .map(|&(_, done)| done)
        .filter(|&done| done < first_after)
        .max()?;
    Some((relative(last_before), relative(first_after)))
}

fn count_kinds<'a>(kinds: impl Iterator<Item = &'a String>) -> BTreeMap<&'a str, usize> {
    let mut counts = BTreeMap::new();
    for kind in kinds {
        *counts.entry(kind.as_str()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_kill_of_the_primary_under_load() -> TestResult {
    let mut cluster = tokio::task::block_in_place(HaCluster::start)?;
    let old = cluster.primary()?;
    let standby =
        tokio::task::block_in_place(|| cluster.wait_for_sync_standby(Duration::from_secs(30)))?;
    assert_ne!(old, standby);

    let dir = tempfile::tempdir()?;
    let (config, cert, key) = vault_config(dir.path(), &cluster)?;
    let mut servers = tokio::task::block_in_place(|| -> TestResult<[Server; 2]> {
        Ok([
            Server::start(Launch::config(&dir.path().join("a"), &config, &cert))?,
            Server::start(Launch::config(&dir.path().join("b"), &config, &cert))?,
        ])
    })?;
    let pids = [servers[0].pid(), servers[1].pid()];
    let clients = [servers[0].client(&key)?, servers[1].client(&key)?];

    // The subjects to erase during the load, each with a token through each replica.
    let mut subjects = Vec::new();
    for i in 0..ERASE_SUBJECTS {
        let subject = format!("erase-{i}");
        let mut tokens = Vec::new();
        for client in &clients {
            tokens.push(
                client
                    .tokenize_one(subject.as_str(), "email", format!("{subject}@example.com"))
                    .await?,
            );
        }
        let erasure = Erasure {
            tokens,
            acked_at: None,
        };
        subjects.push((subject, erasure));
    }

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        stop: AtomicBool::new(false),
        latest_sent: [AtomicU64::new(0), AtomicU64::new(0)],
    });
    let mut loaders = Vec::new();
    for (replica, client) in clients.iter().enumerate() {
        for task in 0..TASKS_PER_REPLICA {
            loaders.push(tokio::spawn(tokenize_load(
                client.clone(),
                replica,
                task,
                Arc::clone(&shared),
            )));
        }
    }
    let eraser = tokio::spawn(erase_load(clients.clone(), subjects, Arc::clone(&shared)));

    tokio::time::sleep(LOAD_BEFORE_KILL).await;
    // The trail's end as a client would keep it, just before the kill.
    let head = clients[0].audit_head().await?;
    let killed_at = tokio::task::block_in_place(|| cluster.kill_primary_postgres())?;
    let promoted =
        tokio::task::block_in_place(|| cluster.wait_for_new_primary(Duration::from_secs(30)))?;
    let promoted_after = killed_at.elapsed();
    assert_eq!(promoted, standby, "the synchronous standby is promoted");

    // Load goes on until a tokenization sent after the promotion was acknowledged
    // through each replica, and a little longer.
    let promoted_micros = shared.micros(Instant::now());
    let deadline = Instant::now() + RECOVERY_LIMIT;
    let mut recovered: [Option<Duration>; 2] = [None, None];
    while recovered.iter().any(Option::is_none) && Instant::now() < deadline {
        for (replica, latest) in shared.latest_sent.iter().enumerate() {
            if recovered[replica].is_none() && latest.load(Ordering::Relaxed) > promoted_micros {
                recovered[replica] = Some(killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if recovered.iter().all(Option::is_some) {
        tokio::time::sleep(LOAD_AFTER_RECOVERY).await;
    }
    shared.stop.store(true, Ordering::Relaxed);
    let mut tallies = [Vec::new(), Vec::new()];
    for (n, loader) in loaders.into_iter().enumerate() {
        tallies[n / TASKS_PER_REPLICA].push(loader.await?);
    }
    let (subjects, erase_failures) = eraser.await?;
    let stopped_at = killed_at.elapsed();

    // The measurements, printed before anything is asserted on them.
    let mut report = String::new();
    writeln!(
        report,
        "failover under load: kill -9 of {}'s postmaster; {} promoted after {:.2} s; \
         load stopped at {:.2} s",
        old.name,
        promoted.name,
        promoted_after.as_secs_f64(),
        stopped_at.as_secs_f64()
    )?;
    let mut all_successes = Vec::new();
    for (replica, tally) in tallies.iter().enumerate() {
        let successes: Vec<(Instant, Instant)> =
            tally.iter().flat_map(|t| t.successes.clone()).collect();
        let before = successes
            .iter()
            .filter(|(_, done)| *done <= killed_at)
            .count();
        let failures: Vec<&(Instant, String)> = tally.iter().flat_map(|t| &t.failures).collect();
        let window = outage(&successes, killed_at);
        // Calls sent once the replica tokenized again that failed all the same.
        let late_failures = match window {
            Some((_, after)) => failures
                .iter()
                .filter(|(sent, _)| *sent > killed_at + Duration::from_secs_f64(after))
                .count(),
            None => 0,
        };
        let window = match (window, recovered[replica]) {
            (Some((before, after)), Some(_)) => {
                format!("unavailable from {before:+.3} s to {after:+.3} s")
            }
            _ => "never tokenized again".to_owned(),
        };
        writeln!(
            report,
            "  replica {}: {} tokenizations acknowledged ({before} before the kill, {} after), \
             {} failed {:?} ({late_failures} of them sent after it tokenized again); {window}",
            NAMES[replica],
            successes.len(),
            successes.len() - before,
            failures.len(),
            count_kinds(failures.iter().map(|(_, kind)| kind)),
        )?;
        all_successes.extend(successes);
    }
    if let (Some((before, after)), true) = (
        outage(&all_successes, killed_at),
        recovered.iter().all(Option::is_some),
    ) {
        writeln!(
            report,
            "  overall: no tokenization acknowledged from {before:+.3} s to {after:+.3} s after \
             the kill: {:.3} s",
            after - before
        )?;
    }
    let erased_before = subjects
        .iter()
        .filter(|(_, e)| e.acked_at.is_some_and(|at| at <= killed_at))
        .count();
    let erased_after = subjects
        .iter()
        .filter(|(_, e)| e.acked_at.is_some_and(|at| at > killed_at))
        .count();
    writeln!(
        report,
        "  erasures: {erased_before} acknowledged before the kill, {erased_after} after, {} \
         failed {:?}, {} not tried",
        erase_failures.len(),
        count_kinds(erase_failures.iter()),
        ERASE_SUBJECTS - erased_before - erased_after - erase_failures.len(),
    )?;
    print!("{report}");

    // Neither replica was restarted.
    for (server, pid) in servers.iter_mut().zip(pids) {
        assert_eq!(server.pid(), pid);
        assert!(
            server.running()?,
            "a replica exited; its log:\n{}",
            server.log_text()
        );
    }
    // A replica that never tokenized again answers no audited call (a read is one
    // too): what was acknowledged is checked through the others, then it fails.
    let stuck: Vec<String> = (0..2)
        .filter(|&replica| recovered[replica].is_none())
        .map(|replica| {
            format!(
                "replica {} did not tokenize again within {RECOVERY_LIMIT:?} of the promotion; \
                 the last storage errors in its log: {:?}",
                NAMES[replica],
                storage_errors(&servers[replica], 3)
            )
        })
        .collect();
    let healthy: Vec<&Client> = (0..2)
        .filter(|&replica| recovered[replica].is_some())
        .map(|replica| &clients[replica])
        .collect();
    if healthy.is_empty() {
        return Err(format!("{}\n{report}", stuck.join("\n")).into());
    }

    // 0 lost: every acknowledged token reads back.
    let acks: Vec<&Ack> = tallies.iter().flatten().flat_map(|t| &t.acks).collect();
    for client in &healthy {
        let mut lost = Vec::new();
        for chunk in acks.chunks(500) {
            let tokens: Vec<String> = chunk.iter().map(|a| a.token.clone()).collect();
            let read = client.detokenize(&tokens, PURPOSE).await?;
            assert_eq!(read.len(), chunk.len());
            for (result, ack) in read.iter().zip(chunk) {
                match result {
                    DetokenizeResult::Value { value, .. } if value.expose() == ack.value => {}
                    other => lost.push(format!("{other:?}")),
                }
            }
        }
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged tokenizations lost: {:?}\n{report}",
            lost.len(),
            acks.len(),
            &lost[..lost.len().min(10)]
        );
    }

    // Every acknowledged erasure holds, before the kill or after.
    let erased_tokens: Vec<String> = subjects
        .iter()
        .filter(|(_, e)| e.acked_at.is_some())
        .flat_map(|(_, e)| e.tokens.clone())
        .collect();
    for client in &healthy {
        let read = client.detokenize(&erased_tokens, PURPOSE).await?;
        for result in &read {
            assert!(
                matches!(
                    result,
                    DetokenizeResult::Error {
                        error: ItemError::Erased,
                        ..
                    }
                ),
                "an acknowledged erasure was undone: {result:?}\n{report}"
            );
        }
    }

    // One trail, intact, holding the head a client took before the kill.
    let (Some(seq), Some(mac)) = (head.seq, head.mac) else {
        return Err("the trail was empty before the kill".into());
    };
    let mut events = 0;
    for client in &healthy {
        let check = client
            .verify_audit_against(ExpectedHead {
                seq,
                mac: mac.clone(),
            })
            .await?;
        assert!(check.ok, "{check:?}");
        assert_eq!(check.anchor.as_deref(), Some("contained"), "{check:?}");
        events = check.events;
    }

    // The cluster now, for the reader: with synchronous_mode_strict the old primary
    // may or may not be back as the synchronous standby; nothing above needs it.
    let members = tokio::task::block_in_place(|| cluster.members()).unwrap_or_default();
    println!(
        "  {} acknowledged tokens and {} erased subjects checked through {} replica(s), \
         and the audit trail ({} events); cluster now: {}",
        acks.len(),
        erased_before + erased_after,
        healthy.len(),
        events,
        members.join(", ")
    );
    if !stuck.is_empty() {
        return Err(format!("{}\n{report}", stuck.join("\n")).into());
    }
    Ok(())
}

/// The last `n` storage errors a server logged (each one's message, no personal
/// data: the server logs none).
fn storage_errors(server: &Server, n: usize) -> Vec<String> {
    let log = server.log_text();
    let errors: Vec<String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "storage error")
        .filter_map(|line| line["fields"]["error"].as_str().map(str::to_owned))
        .collect();
    errors[errors.len().saturating_sub(n)..].to_vec()
}

/// What a failover does to a write, without the cluster: the connection carrying
/// a journal group is cut before the group has read the audit trail's head (the
/// group's first round trip; here while it waits for the head's row lock, held
/// by this test). The write is answered, with an error, not left waiting, and its
/// subject can be tokenized again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_in_its_first_round_trip_is_answered() -> TestResult {
    let dir = tempfile::tempdir()?;
    let (url, ca) = postgres();
    let schema = schema_for(dir.path());
    let (config, cert, key) = write_replica_config(
        dir.path(),
        url,
        ca,
        PURPOSE,
        &format!("schema = \"{schema}\"\n[limits]\nrequest_timeout_ms = 4000\n"),
    )?;
    let server = tokio::task::block_in_place(|| {
        Server::start(Launch::config(&dir.path().join("a"), &config, &cert))
    })?;
    let client = server.client(&key)?;
    client
        .tokenize_one("alice", "email", "alice@example.com")
        .await?;

    // The vault's own role, beside it: it may lock the vault's rows and end its
    // own backends.
    let plain = url.replace("sslmode=require", "sslmode=disable");
    let (mut db, connection) = tokio_postgres::connect(&plain, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let lock = db.transaction().await?;
    lock.execute(
        &format!("SELECT 1 FROM \"{schema}\".meta WHERE k = $1 FOR UPDATE"),
        &[&b"audit/head".as_slice()],
    )
    .await?;
    let sent = Instant::now();
    let cut_off = tokio::spawn({
        let client = client.clone();
        async move { client.tokenize_one("bob", "email", "bob@example.com").await }
    });
    // Every connection of the vault that waits for the head is ended, for a second
    // (the store may try its first round trip again on a new connection).
    let mut ended = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline || ended == 0 {
        let rows = lock
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'vault' AND wait_event_type = 'Lock'",
                &[],
            )
            .await?;
        ended += rows.len();
        if sent.elapsed() > Duration::from_secs(3) {
            return Err("the write never waited for the audit trail's head".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lock.rollback().await?;
    let outcome = cut_off.await?;
    let answered_after = sent.elapsed();
    println!(
        "connections ended while a write waited for the head: {ended}; the write was \
         answered after {:.2} s: {outcome:?}",
        answered_after.as_secs_f64()
    );
    // Answered by the vault itself, not by the server's request timeout; and the
    // subject is not left locked by a request that never ends.
    let never_answered = outcome.as_ref().is_err_and(|e| e.code() == Some("timeout"));
    let again = client.tokenize_one("bob", "email", "bob@example.com").await;
    println!("bob tokenized again: {again:?}");
    assert!(
        !never_answered && again.is_ok(),
        "a write whose connection was cut in its first round trip was never answered \
         ({outcome:?}), and its subject cannot be tokenized again ({again:?})"
    );
    assert!(client.verify_audit().await?.ok);
    Ok(())
}
