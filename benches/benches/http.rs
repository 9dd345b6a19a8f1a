//! The vault over HTTPS under load, next to its baselines measured in the same run.
//!
//! ```text
//! cargo bench -p vault-benches --bench http
//! VAULT_BENCH_PG="$(scripts/bench-postgres start)" cargo bench -p vault-benches --bench http
//! ```
//!
//! Throughput (requests/s), p50 and p99 latency of tokenize, detokenize and export,
//! 64 concurrent keep-alive HTTP/1.1 connections over TLS on loopback, closed loop,
//! for a fixed time each, against:
//!
//! 1. the real `vault-server --dev`, a child process (this binary re-executed in the
//!    `server` role), loaded first over HTTP with batch tokenize;
//! 2. a bare axum echo server over the same TLS stack (axum-server + rustls with
//!    ring, the vault's certificate), another child process, that parses the same
//!    request bodies into the vault's wire types and echoes them back;
//! 3. for tokenize, RocksDB alone behind the same TLS and JSON (a third child), writing
//!    as many keys and bytes per call as the vault did in its measurement (read from
//!    its `/metrics`), answering once the WAL is synced by one thread for every write,
//!    which waits as the vault server's does for concurrent writes to share a sync:
//!    what the durable writes cost without the vault. A fourth child does the same
//!    with only a record and its index entry per call, the least any design writes:
//!    a floor under every vault.
//!    Then tokenize again in rounds, the vault, both RocksDB servers and the bare
//!    server back to back (in turn first), so that the ratios between them come
//!    from measurements seconds apart rather than minutes: these machines drift by
//!    tens of percent in between;
//! 4. PostgreSQL + pgcrypto ("do it yourself"), when `VAULT_BENCH_PG` holds a
//!    connection string: one row per value, encrypted by `pgp_sym_encrypt` (AES-256),
//!    same records, same 64 connections, PostgreSQL's default durability; plus the
//!    latency of an erasure (`DELETE` + `VACUUM`), sequentially, not under load.
//!
//! Also the vault server's resident memory after loading (and the peak sampled while
//! loading), and its DEK-related metrics.
//!
//! Environment: `VAULT_BENCH_SECS` (seconds per measurement, default 10),
//! `VAULT_BENCH_HTTP_RECORDS` (records loaded, default 1 000 000, 10 per subject),
//! `VAULT_BENCH_PG` (libpq-style connection string; PostgreSQL is skipped without it),
//! `VAULT_BENCH_OUT` (JSON results, default `target/bench-results/http.json`).
//! The vault server logs (one JSON line per request, as in production) go to a file
//! in the temporary directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vault_benches::Res;
use vault_benches::WriteShape;
use vault_benches::child::{ChildGuard, ROLE_ENV, exit_when_parent_goes};
use vault_benches::https::{
    LOAD_BATCH, LOAD_CONNECTIONS, RECORDS_PER_SUBJECT, VALUE_LEN, contains, detokenize_body,
    field_name, https_client, load_vault, post, serve_role, subject_id, tokenize_body,
};
use vault_benches::load::{Rng, Stats, drive, utc_now};
use vault_client::api::{DetokenizeRequest, SubjectRequest, TokenizeRequest, TokenizeResponse};

/// Concurrent connections (workers) in every measurement and load.
const CONNECTIONS: usize = 64;
/// Erasures timed one after the other at the end (not under load).
const ERASURES: usize = 5;
/// Rounds of tokenize with the vault, the two RocksDB-alone servers and the bare
/// server back to back.
const TOKENIZE_ROUNDS: usize = 5;

fn main() -> ExitCode {
    match std::env::var(ROLE_ENV).as_deref() {
        Ok("server") => {
            exit_when_parent_goes();
            return vault_server::cli::main();
        }
        Ok("axum") => {
            exit_when_parent_goes();
            return axum_role();
        }
        Ok("raw") => {
            exit_when_parent_goes();
            return raw_role();
        }
        _ => {}
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not: then do nothing
    // rather than a many-minute load.
    if !std::env::args().any(|a| a == "--bench") {
        println!("http bench: skipped (run it with `cargo bench -p vault-benches --bench http`)");
        return ExitCode::SUCCESS;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("http bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("http bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------
// Configuration and results
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Config {
    secs: f64,
    records: usize,
    pg: Option<String>,
    out: PathBuf,
}

impl Config {
    fn from_env() -> Res<Config> {
        let secs = match std::env::var("VAULT_BENCH_SECS") {
            Ok(s) => s
                .trim()
                .parse::<f64>()
                .map_err(|_| format!("VAULT_BENCH_SECS is not a number: {s:?}"))?,
            Err(_) => 10.0,
        };
        if !(secs > 0.0 && secs.is_finite()) {
            return Err("VAULT_BENCH_SECS must be positive".into());
        }
        let records = match std::env::var("VAULT_BENCH_HTTP_RECORDS") {
            Ok(s) => s
                .trim()
                .replace('_', "")
                .parse::<usize>()
                .map_err(|_| format!("VAULT_BENCH_HTTP_RECORDS is not a count: {s:?}"))?,
            Err(_) => 1_000_000,
        };
        if records < RECORDS_PER_SUBJECT * 2 * ERASURES {
            return Err(format!(
                "VAULT_BENCH_HTTP_RECORDS must be at least {}",
                RECORDS_PER_SUBJECT * 2 * ERASURES
            )
            .into());
        }
        let pg = std::env::var("VAULT_BENCH_PG")
            .ok()
            .filter(|s| !s.trim().is_empty());
        let out = std::env::var_os("VAULT_BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // cargo runs benches in the package directory: use the workspace's target.
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
                    .join("bench-results")
                    .join("http.json")
            });
        Ok(Config {
            secs,
            records,
            pg,
            out,
        })
    }

    fn subjects(&self) -> usize {
        self.records.div_ceil(RECORDS_PER_SUBJECT)
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.secs)
    }

    /// Connections are opened and caches warmed before the window starts.
    fn warmup(&self) -> Duration {
        Duration::from_secs_f64((self.secs * 0.2).clamp(0.5, 2.0))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Tokenize,
    Detokenize,
    Export,
}

impl Op {
    const REPORTED: [Op; 3] = [Op::Tokenize, Op::Detokenize, Op::Export];
    /// Export first (subjects still have exactly their 10 loaded records), then
    /// detokenize, then tokenize (which adds records).
    const MEASURED: [Op; 3] = [Op::Export, Op::Detokenize, Op::Tokenize];

    fn name(self) -> &'static str {
        match self {
            Op::Tokenize => "tokenize",
            Op::Detokenize => "detokenize",
            Op::Export => "export",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Op::Tokenize => "/v1/tokenize",
            Op::Detokenize => "/v1/detokenize",
            Op::Export => "/v1/subjects/export",
        }
    }

    fn index(self) -> usize {
        match self {
            Op::Tokenize => 0,
            Op::Detokenize => 1,
            Op::Export => 2,
        }
    }
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

async fn run() -> Res<()> {
    let cfg = Config::from_env()?;
    println!(
        "http bench: {} s per measurement (+{:.1} s warm-up), {CONNECTIONS} connections, \
         {} records ({} subjects), PostgreSQL: {}",
        cfg.secs,
        cfg.warmup().as_secs_f64(),
        cfg.records,
        cfg.subjects(),
        if cfg.pg.is_some() {
            "yes"
        } else {
            "skipped (set VAULT_BENCH_PG, e.g. from scripts/bench-postgres start)"
        }
    );
    // On the machine's disk (not a tmpfs): durability costs what it costs.
    let tmp = tempfile::Builder::new()
        .prefix("vault-bench-http-")
        .tempdir()?;
    let data_dir = tmp.path().join("data");

    // 1. The vault server, a child process.
    let server_log = tmp.path().join("vault-server.log");
    let args: Vec<OsString> = vec![
        "--data-dir".into(),
        data_dir.clone().into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
        "--dev".into(),
    ];
    let (vault_child, info) =
        tokio::task::block_in_place(|| ChildGuard::spawn("server", &args, &server_log))?;
    let field = |name: &str| -> Res<String> {
        info.get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("the server's start line has no {name}: {info}").into())
    };
    let vault_url = field("url")?;
    let ca_cert = PathBuf::from(field("ca_cert")?);
    let api_key: Arc<str> = field("api_key")?.into();
    let dev_dir = PathBuf::from(field("data_dir")?).join("dev");
    let ca_pem = std::fs::read(&ca_cert)?;
    println!(
        "vault server: pid {} at {vault_url} (log {})",
        vault_child.pid(),
        server_log.display()
    );

    // 2. The bare axum echo server, same certificate and key, another child process.
    let axum_log = tmp.path().join("axum.log");
    let axum_args: Vec<OsString> = vec![
        dev_dir.join("tls-cert.pem").into(),
        dev_dir.join("tls-key.pem").into(),
    ];
    let (axum_child, axum_url) = ChildGuard::spawn_server("axum", &axum_args, &axum_log)?;
    println!("axum echo:    pid {} at {axum_url}", axum_child.pid());

    // Load the vault over HTTP, sampling the server's memory.
    let pid = vault_child.pid();
    let sampler = RssSampler::start(pid);
    println!(
        "loading {} records into the vault (batches of {LOAD_BATCH}, {LOAD_CONNECTIONS} at a time)...",
        cfg.records
    );
    let started = Instant::now();
    let tokens = load_vault(&ca_pem, &vault_url, &api_key, cfg.records).await?;
    let vault_load_secs = started.elapsed().as_secs_f64();
    let rss_after_load = rss_kib(pid).ok_or("cannot read the server's VmRSS")?;
    let rss_peak = sampler.stop().await.max(rss_after_load);
    println!(
        "loaded in {vault_load_secs:.1} s ({:.0} records/s); server RSS {:.1} MiB after, \
         peak {:.1} MiB while loading",
        cfg.records as f64 / vault_load_secs,
        mib(rss_after_load),
        mib(rss_peak)
    );
    let metrics_url = field("metrics_url")?;
    let metrics = dek_metrics(&ca_pem, &metrics_url).await?;
    for line in &metrics {
        println!("  metrics: {line}");
    }

    // Vault and bare axum, interleaved per operation.
    let data = Arc::new(Data {
        subjects: cfg.subjects(),
        tokens,
    });
    let mut vault_stats = [Stats::default(); 3];
    let mut axum_stats = [Stats::default(); 3];
    let mut shape = None;
    for op in Op::MEASURED {
        let before = match op {
            Op::Tokenize => Some(write_counters(&ca_pem, &metrics_url).await?),
            _ => None,
        };
        let stats = measure_http(&cfg, &ca_pem, &vault_url, &api_key, op, &data).await?;
        print_line("vault", op.name(), stats);
        vault_stats[op.index()] = stats;
        if let Some(before) = before {
            shape = Some(before.shape_to(&write_counters(&ca_pem, &metrics_url).await?)?);
        }
        let stats = measure_http(&cfg, &ca_pem, &axum_url, &api_key, op, &data).await?;
        print_line("bare axum", op.name(), stats);
        axum_stats[op.index()] = stats;
    }
    // 3. RocksDB alone writing what the vault wrote per tokenize, durably, behind the
    // same TLS and JSON: what durability and those writes cost without the vault.
    let shape = shape.ok_or("the vault's tokenize was not measured")?;
    let spawn_raw = |name: &str, shape: &WriteShape, what: &str| {
        let args: Vec<OsString> = vec![
            dev_dir.join("tls-cert.pem").into(),
            dev_dir.join("tls-key.pem").into(),
            tmp.path().join(name).into(),
            shape.keys.to_string().into(),
            shape.bytes.to_string().into(),
            cfg.records.to_string().into(),
        ];
        println!(
            "{name}: RocksDB alone, {} keys and {} bytes per tokenize ({what}), loading {} records...",
            shape.keys, shape.bytes, cfg.records
        );
        let log = tmp.path().join(format!("{name}.log"));
        let (child, url) = ChildGuard::spawn_server("raw", &args, &log)?;
        println!("{name}: pid {} at {url}", child.pid());
        Res::Ok((child, url))
    };
    let (raw_child, raw_url) = spawn_raw("raw", &shape, "the vault's")?;
    let raw_stats = measure_http(&cfg, &ca_pem, &raw_url, &api_key, Op::Tokenize, &data).await?;
    print_line("raw", Op::Tokenize.name(), raw_stats);
    // The floor: RocksDB alone writing only a record and its index entry, the same
    // way (measured in the rounds only).
    let floor = vault_benches::RECORD_AND_INDEX;
    let (floor_child, floor_url) = spawn_raw("floor", &floor, "a record and its index entry")?;
    // The four again, back to back, each first in its turn.
    let targets = [
        ("vault", &vault_url),
        ("raw", &raw_url),
        ("floor", &floor_url),
        ("bare axum", &axum_url),
    ];
    let mut rounds = Vec::new();
    for round in 0..TOKENIZE_ROUNDS {
        let mut stats = [Stats::default(); 4];
        for i in (0..targets.len()).map(|i| (i + round) % targets.len()) {
            let (name, url) = targets[i];
            stats[i] = measure_http(&cfg, &ca_pem, url, &api_key, Op::Tokenize, &data).await?;
            print_line(name, &format!("tokenize #{}", round + 1), stats[i]);
        }
        let [vault, raw, least, bare] = stats.map(Stats::to_json);
        rounds.push(json!({"vault": vault, "raw": raw, "floor": least, "bare": bare}));
    }
    drop(floor_child);
    drop(raw_child);
    let rss_end = rss_kib(pid).unwrap_or(0);
    let hwm = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let vault_erase_ms = vault_erasures(&ca_pem, &vault_url, &api_key, &cfg).await?;
    println!(
        "vault erase (sequential, purge immediate, ms): {}",
        fmt_list(&vault_erase_ms)
    );
    drop(axum_child);
    drop(vault_child);

    // 3. PostgreSQL + pgcrypto.
    let pg = match &cfg.pg {
        Some(conn) => Some(postgres(&cfg, conn).await?),
        None => {
            println!("PostgreSQL baseline: skipped (VAULT_BENCH_PG is not set)");
            None
        }
    };

    // Results.
    let axum_name = "bare axum echo over the same TLS";
    let mut groups = Vec::new();
    for op in Op::REPORTED {
        groups.push(json!({
            "name": format!("https_{}", op.name()),
            "vault": vault_stats[op.index()].to_json(),
            "baseline": axum_stats[op.index()].with_name(axum_name),
        }));
    }
    groups.push(json!({
        "name": "https_tokenize_raw",
        "vault": vault_stats[Op::Tokenize.index()].to_json(),
        "baseline": raw_stats.with_name(&format!(
            "RocksDB alone, the vault's {} keys and {} bytes per call, WAL synced, same TLS",
            shape.keys, shape.bytes
        )),
    }));
    for op in Op::REPORTED {
        let baseline = match &pg {
            Some(pg) => pg.stats[op.index()].with_name(&pg.name),
            None => Value::Null,
        };
        groups.push(json!({
            "name": format!("postgres_{}", op.name()),
            "vault": vault_stats[op.index()].to_json(),
            "baseline": baseline,
        }));
    }
    let result = json!({
        "date": utc_now(),
        "seconds": cfg.secs,
        "connections": CONNECTIONS,
        "records": cfg.records,
        "groups": groups,
        "tokenize_rounds": rounds,
        "tokenize_floor": {"keys": floor.keys, "bytes": floor.bytes},
        "postgres_erase_ms": pg.as_ref().map(|pg| pg.erase_ms.clone()),
        "postgres_load_secs": pg.as_ref().map(|pg| pg.load_secs),
        "vault_load_secs": vault_load_secs,
        "memory": {
            "rss_after_load_mib": mib(rss_after_load),
            "rss_peak_mib": mib(rss_peak),
            "rss_after_measurements_mib": mib(rss_end),
            "rss_high_water_mib": mib(hwm),
            "vault_erase_ms": vault_erase_ms,
            "metrics": metrics,
        },
    });

    print_table(&cfg, &vault_stats, &axum_stats, pg.as_ref());
    println!(
        "vault load: {vault_load_secs:.1} s; PostgreSQL load: {}",
        pg.as_ref()
            .map_or("skipped".to_owned(), |pg| format!("{:.1} s", pg.load_secs))
    );
    println!(
        "vault server RSS: {:.1} MiB after load, {:.1} MiB peak while loading, {:.1} MiB \
         after the measurements (VmHWM {:.1} MiB)",
        mib(rss_after_load),
        mib(rss_peak),
        mib(rss_end),
        mib(hwm)
    );
    println!(
        "erase, sequential: vault {} ms; PostgreSQL DELETE + VACUUM {}",
        fmt_list(&vault_erase_ms),
        pg.as_ref().map_or("skipped".to_owned(), |pg| format!(
            "{} ms",
            fmt_list(&pg.erase_ms)
        ))
    );

    if let Some(dir) = cfg.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cfg.out, serde_json::to_vec_pretty(&result)?)?;
    let out = std::fs::canonicalize(&cfg.out).unwrap_or_else(|_| cfg.out.clone());
    println!("results: {}", out.display());
    Ok(())
}

/// What the measurements pick from: loaded subjects are `subj-0` … `subj-{subjects-1}`.
#[derive(Debug)]
struct Data {
    subjects: usize,
    tokens: Vec<String>,
}

// ---------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------

fn export_body(rng: &mut Rng, subjects: usize) -> Vec<u8> {
    let request = SubjectRequest {
        subject: subject_id(rng.below(subjects)).into(),
    };
    serde_json::to_vec(&request).expect("an export request serialises")
}

/// One operation against one HTTPS server (vault or echo), same bodies for both.
async fn measure_http(
    cfg: &Config,
    ca_pem: &[u8],
    base: &str,
    key: &Arc<str>,
    op: Op,
    data: &Arc<Data>,
) -> Res<Stats> {
    let url: Arc<str> = format!("{base}{}", op.path()).into();
    let mut workers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        workers.push((https_client(ca_pem)?, url.clone(), key.clone()));
    }
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let make = {
        let data = data.clone();
        move |rng: &mut Rng| match op {
            Op::Tokenize => tokenize_body(rng, data.subjects),
            Op::Detokenize => detokenize_body(rng, &data.tokens),
            Op::Export => export_body(rng, data.subjects),
        }
    };
    let call = {
        let first_error = first_error.clone();
        move |(client, url, key): (reqwest::Client, Arc<str>, Arc<str>), body: Vec<u8>| {
            let first_error = first_error.clone();
            async move {
                let outcome = match post(&client, &url, &key, body).await {
                    // Detokenize answers 200 with a per-token error ("not_found", …).
                    Ok(answer) if contains(&answer, b"\"error\"") => Err(format!(
                        "error in the answer: {}",
                        String::from_utf8_lossy(&answer[..answer.len().min(300)])
                    )),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok(()) => true,
                    Err(e) => {
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert(e);
                        }
                        false
                    }
                }
            }
        }
    };
    let stats = drive(cfg.warmup(), cfg.window(), workers, make, call).await;
    if let Ok(first) = first_error.lock()
        && let Some(e) = first.as_ref()
    {
        println!("  first error ({} {}): {e}", base, op.name());
    }
    Ok(stats)
}

/// The `/metrics` lines about keys and caches (DEK cache entries, recently written
/// subjects cached with their keys, keys per KEK version).
async fn dek_metrics(ca_pem: &[u8], url: &str) -> Res<Vec<String>> {
    let client = https_client(ca_pem)?;
    let response = client.get(url).send().await?;
    if !response.status().is_success() {
        return Err(format!("/metrics answered {}", response.status()).into());
    }
    let text = response.text().await?;
    Ok(text
        .lines()
        .filter(|line| {
            let line = line.to_ascii_lowercase();
            line.contains("dek") || line.contains("subject_cache")
        })
        .map(str::to_owned)
        .collect())
}

/// The vault's storage write counters and its answered tokenize requests, from
/// `/metrics` on the server's metrics listener.
struct WriteCounters {
    keys: f64,
    bytes: f64,
    tokenized: f64,
}

async fn write_counters(ca_pem: &[u8], metrics_url: &str) -> Res<WriteCounters> {
    let client = https_client(ca_pem)?;
    let text = client
        .get(metrics_url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let value = |name: &str| -> Res<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .ok_or_else(|| format!("/metrics has no {name}"))?
            .trim()
            .parse::<f64>()
            .map_err(|e| format!("/metrics {name}: {e}").into())
    };
    Ok(WriteCounters {
        keys: value("vault_storage_keys_written_total")?,
        bytes: value("vault_storage_bytes_written_total")?,
        tokenized: value(
            "vault_http_requests_total{route=\"/v1/tokenize\",method=\"POST\",status=\"200\"}",
        )?,
    })
}

impl WriteCounters {
    /// Keys and bytes written per tokenize answered between `self` and `after`.
    fn shape_to(&self, after: &WriteCounters) -> Res<WriteShape> {
        let calls = after.tokenized - self.tokenized;
        if calls < 1.0 {
            return Err("no tokenize answered while measuring".into());
        }
        Ok(WriteShape {
            keys: ((after.keys - self.keys) / calls).round() as u64,
            bytes: ((after.bytes - self.bytes) / calls).round() as u64,
        })
    }
}

/// A few erasures, one after the other, after the measurements (purge immediate in
/// `--dev`, so this includes the purge of the subject's records from disk).
async fn vault_erasures(ca_pem: &[u8], base: &str, key: &str, cfg: &Config) -> Res<Vec<f64>> {
    let client = https_client(ca_pem)?;
    let url = format!("{base}/v1/subjects/erase");
    let mut times = Vec::new();
    for i in 0..ERASURES {
        // Spread over the loaded subjects; not the ones PostgreSQL erases.
        let subject = subject_id(cfg.subjects() - 1 - i * (cfg.subjects() / (ERASURES * 2)));
        let body = serde_json::to_vec(&SubjectRequest {
            subject: subject.into(),
        })?;
        let started = Instant::now();
        post(&client, &url, key, body).await?;
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(times)
}

// ---------------------------------------------------------------------------------
// PostgreSQL + pgcrypto
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct PgResults {
    name: String,
    stats: [Stats; 3],
    load_secs: f64,
    erase_ms: Vec<f64>,
}

#[derive(Debug)]
struct PgConn {
    client: tokio_postgres::Client,
    tokenize: tokio_postgres::Statement,
    detokenize: tokio_postgres::Statement,
    export: tokio_postgres::Statement,
    load: tokio_postgres::Statement,
    passphrase: Arc<str>,
}

const PG_SCHEMA: &str = "
    CREATE EXTENSION IF NOT EXISTS pgcrypto;
    DROP TABLE IF EXISTS pii;
    CREATE TABLE pii (
        token text PRIMARY KEY,
        subject text NOT NULL,
        field text NOT NULL,
        value bytea NOT NULL
    );
    CREATE INDEX pii_subject ON pii (subject);
";
const PG_TOKENIZE: &str = "INSERT INTO pii (token, subject, field, value) \
     VALUES ($1, $2, $3, pgp_sym_encrypt($4, $5, 'cipher-algo=aes256'))";
const PG_DETOKENIZE: &str = "SELECT field, pgp_sym_decrypt(value, $2) FROM pii WHERE token = $1";
const PG_EXPORT: &str =
    "SELECT token, field, pgp_sym_decrypt(value, $2) FROM pii WHERE subject = $1";
/// Loading: multi-row INSERT (1000 rows per statement), each value still encrypted
/// by pgcrypto in the database.
const PG_LOAD: &str = "INSERT INTO pii (token, subject, field, value) \
     SELECT t, s, f, pgp_sym_encrypt(v, $5, 'cipher-algo=aes256') \
     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS u(t, s, f, v)";

async fn pg_connect(conn: &str) -> Res<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(conn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

async fn postgres(cfg: &Config, conn: &str) -> Res<PgResults> {
    let admin = pg_connect(conn).await?;
    let version: String = admin
        .query_one("SELECT current_setting('server_version')", &[])
        .await?
        .try_get(0)?;
    let version = version.split_whitespace().next().unwrap_or("?").to_owned();
    let name = format!("PostgreSQL {version} + pgcrypto");
    let durability = admin
        .query_one(
            "SELECT current_setting('fsync'), current_setting('synchronous_commit')",
            &[],
        )
        .await?;
    let fsync: String = durability.try_get(0)?;
    let sync_commit: String = durability.try_get(1)?;
    println!("{name}: fsync {fsync}, synchronous_commit {sync_commit}");
    admin.batch_execute(PG_SCHEMA).await?;

    let passphrase: Arc<str> = Rng::new(u64::MAX).alnum(32).into();
    let mut conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let client = pg_connect(conn).await?;
        let tokenize = client.prepare(PG_TOKENIZE).await?;
        let detokenize = client.prepare(PG_DETOKENIZE).await?;
        let export = client.prepare(PG_EXPORT).await?;
        let load = client.prepare(PG_LOAD).await?;
        conns.push(Arc::new(PgConn {
            client,
            tokenize,
            detokenize,
            export,
            load,
            passphrase: passphrase.clone(),
        }));
    }

    println!(
        "loading {} records into PostgreSQL (INSERTs of {LOAD_BATCH} rows, {CONNECTIONS} at a time, then VACUUM ANALYZE)...",
        cfg.records
    );
    let started = Instant::now();
    let tokens = pg_load(cfg, &conns).await?;
    admin.batch_execute("VACUUM ANALYZE pii").await?;
    let load_secs = started.elapsed().as_secs_f64();
    println!(
        "loaded in {load_secs:.1} s ({:.0} records/s)",
        cfg.records as f64 / load_secs
    );

    let data = Arc::new(Data {
        subjects: cfg.subjects(),
        tokens,
    });
    let mut stats = [Stats::default(); 3];
    for op in Op::MEASURED {
        let s = measure_pg(cfg, &conns, op, &data).await;
        print_line("postgres", op.name(), s);
        stats[op.index()] = s;
    }

    // Erasure: DELETE + VACUUM (to get the bytes out of the heap pages), one at a time.
    let mut erase_ms = Vec::new();
    for i in 0..ERASURES {
        let subject = subject_id(i * (cfg.subjects() / (ERASURES * 2)));
        let started = Instant::now();
        let deleted = admin
            .execute("DELETE FROM pii WHERE subject = $1", &[&subject])
            .await?;
        admin.batch_execute("VACUUM pii").await?;
        erase_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        if deleted == 0 {
            return Err(format!("PostgreSQL erase of {subject}: no rows").into());
        }
    }
    println!(
        "postgres erase (DELETE + VACUUM, sequential, ms): {}",
        fmt_list(&erase_ms)
    );
    admin.batch_execute("DROP TABLE pii").await?;
    Ok(PgResults {
        name,
        stats,
        load_secs,
        erase_ms,
    })
}

async fn pg_load(cfg: &Config, conns: &[Arc<PgConn>]) -> Res<Vec<String>> {
    let batches = cfg.records.div_ceil(LOAD_BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for (w, conn) in conns.iter().enumerate() {
        let conn = conn.clone();
        let next = next.clone();
        let records = cfg.records;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::new(1_000_000 + w as u64);
            let mut all = Vec::new();
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    break;
                }
                let range = batch * LOAD_BATCH..((batch + 1) * LOAD_BATCH).min(records);
                let tokens: Vec<String> = range.clone().map(|_| rng.token()).collect();
                let subjects: Vec<String> = range
                    .clone()
                    .map(|i| subject_id(i / RECORDS_PER_SUBJECT))
                    .collect();
                let fields: Vec<String> = range.clone().map(field_name).collect();
                let values: Vec<String> = range.clone().map(|_| rng.alnum(VALUE_LEN)).collect();
                let rows = conn
                    .client
                    .execute(
                        &conn.load,
                        &[&tokens, &subjects, &fields, &values, &&*conn.passphrase],
                    )
                    .await
                    .map_err(|e| format!("loading batch {batch}: {e}"))?;
                if rows != range.len() as u64 {
                    return Err(format!("batch {batch}: {rows} rows inserted"));
                }
                all.extend(tokens);
            }
            Ok::<_, String>(all)
        }));
    }
    let mut tokens = Vec::with_capacity(cfg.records);
    for worker in workers {
        tokens.extend(worker.await??);
    }
    Ok(tokens)
}

#[derive(Debug)]
enum PgRequest {
    Tokenize {
        token: String,
        subject: String,
        value: String,
    },
    Detokenize(String),
    Export(String),
}

async fn measure_pg(cfg: &Config, conns: &[Arc<PgConn>], op: Op, data: &Arc<Data>) -> Stats {
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let make = {
        let data = data.clone();
        move |rng: &mut Rng| match op {
            Op::Tokenize => PgRequest::Tokenize {
                token: rng.token(),
                subject: subject_id(rng.below(data.subjects)),
                value: rng.alnum(VALUE_LEN),
            },
            Op::Detokenize => {
                PgRequest::Detokenize(data.tokens[rng.below(data.tokens.len())].clone())
            }
            Op::Export => PgRequest::Export(subject_id(rng.below(data.subjects))),
        }
    };
    let call = {
        let first_error = first_error.clone();
        move |conn: Arc<PgConn>, request: PgRequest| {
            let first_error = first_error.clone();
            async move {
                let key: &str = &conn.passphrase;
                let outcome = match request {
                    PgRequest::Tokenize {
                        token,
                        subject,
                        value,
                    } => conn
                        .client
                        .execute(&conn.tokenize, &[&token, &subject, &"note", &value, &key])
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|n| {
                            if n == 1 {
                                Ok(())
                            } else {
                                Err(format!("{n} rows inserted"))
                            }
                        }),
                    PgRequest::Detokenize(token) => conn
                        .client
                        .query(&conn.detokenize, &[&token, &key])
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|rows| one_value(&rows, 1)),
                    PgRequest::Export(subject) => conn
                        .client
                        .query(&conn.export, &[&subject, &key])
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|rows| {
                            if rows.is_empty() {
                                Err("no rows for the subject".to_owned())
                            } else {
                                rows.iter().try_for_each(|row| {
                                    row.try_get::<_, String>(2)
                                        .map(drop)
                                        .map_err(|e| e.to_string())
                                })
                            }
                        }),
                };
                match outcome {
                    Ok(()) => true,
                    Err(e) => {
                        if let Ok(mut first) = first_error.lock() {
                            first.get_or_insert(e);
                        }
                        false
                    }
                }
            }
        }
    };
    let stats = drive(cfg.warmup(), cfg.window(), conns.to_vec(), make, call).await;
    if let Ok(first) = first_error.lock()
        && let Some(e) = first.as_ref()
    {
        println!("  first error (postgres {}): {e}", op.name());
    }
    stats
}

fn one_value(rows: &[tokio_postgres::Row], column: usize) -> Result<(), String> {
    match rows {
        [row] => row
            .try_get::<_, String>(column)
            .map(drop)
            .map_err(|e| e.to_string()),
        _ => Err(format!("{} rows for one token", rows.len())),
    }
}

// ---------------------------------------------------------------------------------
// The bare axum echo server (child role)
// ---------------------------------------------------------------------------------

/// `VAULT_BENCH_ROLE=axum http CERT KEY`: axum 0.8 over axum-server + rustls (ring),
/// the vault's TLS configuration, one POST route per operation that parses the
/// vault's request type and echoes it as JSON. Prints `{"url": …}` once listening.
fn axum_role() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key] = args.as_slice() else {
        eprintln!("axum role: expected CERT KEY");
        return ExitCode::from(2);
    };
    use axum::routing::post;
    let app = axum::Router::new()
        .route(Op::Tokenize.path(), post(echo::<TokenizeRequest>))
        .route(Op::Detokenize.path(), post(echo::<DetokenizeRequest>))
        .route(Op::Export.path(), post(echo::<SubjectRequest>));
    serve_role("axum", cert, key, app)
}

async fn echo<T: Serialize + DeserializeOwned>(axum::Json(body): axum::Json<T>) -> axum::Json<T> {
    axum::Json(body)
}

// ---------------------------------------------------------------------------------
// RocksDB alone behind the same TLS (child role)
// ---------------------------------------------------------------------------------

/// `VAULT_BENCH_ROLE=raw http CERT KEY DIR KEYS BYTES RECORDS`: the echo server's TLS
/// and JSON, and a tokenize that writes `KEYS` keys and `BYTES` bytes (the vault's
/// per call, or the floor's; 16-byte keys scattered like token ids) to a RocksDB in
/// `DIR` holding `RECORDS` records, and answers once the WAL is synced. The write is
/// the vault server's: unsynced on the async worker, then awaited while one thread
/// syncs the WAL for every write finished, first waiting the server's `sync_gather`
/// when writes come from several callers (as `vault-core/src/durable.rs`).
fn raw_role() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key, dir, keys, bytes, records] = args.as_slice() else {
        eprintln!("raw role: expected CERT KEY DIR KEYS BYTES RECORDS");
        return ExitCode::from(2);
    };
    let numbers = (keys.parse(), bytes.parse(), records.parse::<usize>());
    let (Ok(keys), Ok(bytes), Ok(records)) = numbers else {
        eprintln!("raw role: KEYS, BYTES and RECORDS are counts");
        return ExitCode::from(2);
    };
    let raw = Arc::new(Raw::load(
        Path::new(dir),
        WriteShape { keys, bytes },
        records,
    ));
    // The syncer runs until the process exits.
    std::thread::spawn({
        let raw = raw.clone();
        move || raw.sync_forever()
    });
    let app = axum::Router::new()
        .route(Op::Tokenize.path(), axum::routing::post(raw_tokenize))
        .with_state(raw);
    serve_role("raw", cert, key, app)
}

struct Raw {
    db: rocksdb::DB,
    shape: WriteShape,
    /// Calls so far: each one's keys are derived from its number.
    calls: AtomicU64,
    sync: std::sync::Mutex<RawSync>,
    /// Wakes the idle syncer when a write finishes.
    written: std::sync::Condvar,
}

#[derive(Default)]
struct RawSync {
    /// Unsynced writes finished; a write's ticket is the count after it.
    written: u64,
    synced: u64,
    /// The syncer waits for a write (a finished write must wake it).
    idle: bool,
    waiters: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl Raw {
    /// Opens the database (`raw_db`'s options, with the server's block cache) and
    /// writes `records` records of the vault's stored record size under random keys.
    fn load(dir: &Path, shape: WriteShape, records: usize) -> Raw {
        let db = vault_benches::raw_db_with_cache(dir, vault_core::internal::SERVER_BLOCK_CACHE);
        vault_benches::load_raw_records(&db, records);
        db.flush().expect("raw flush");
        // Measured settled, as the vault is after its load and earlier measurements.
        while vault_benches::raw_background_work(&db) > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        Raw {
            db,
            shape,
            calls: AtomicU64::new(0),
            sync: std::sync::Mutex::new(RawSync::default()),
            written: std::sync::Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RawSync> {
        self.sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Syncs the WAL whenever writes have finished since the last sync, and
    /// answers their waiters; waits for more first when they come from several
    /// callers (the vault server's rule and wait).
    fn sync_forever(&self) {
        let mut last_covered = 0;
        let mut state = self.lock();
        loop {
            while state.synced == state.written {
                state.idle = true;
                state = self
                    .written
                    .wait_while(state, |s| s.idle)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if state.written - state.synced > 1 || last_covered > 1 {
                drop(state);
                std::thread::sleep(vault_core::DEFAULT_SYNC_GATHER);
                state = self.lock();
            }
            let target = state.written;
            drop(state);
            if let Err(e) = self.db.flush_wal(true) {
                // Nothing more is acknowledged: the waiters' requests fail.
                eprintln!("raw role: WAL sync: {e}");
                std::process::exit(1);
            }
            state = self.lock();
            last_covered = target - state.synced;
            state.synced = target;
            let later = state.waiters.split_off(&(target + 1));
            for (_, waiter) in std::mem::replace(&mut state.waiters, later) {
                let _ = waiter.send(());
            }
        }
    }
}

async fn raw_tokenize(
    axum::extract::State(raw): axum::extract::State<Arc<Raw>>,
    axum::Json(body): axum::Json<TokenizeRequest>,
) -> Result<axum::Json<TokenizeResponse>, axum::http::StatusCode> {
    let failed = axum::http::StatusCode::INTERNAL_SERVER_ERROR;
    let mut tokens = Vec::with_capacity(body.items.len());
    let mut wo = rocksdb::WriteOptions::default();
    wo.set_sync(false);
    for _ in &body.items {
        let call = raw.calls.fetch_add(1, Ordering::Relaxed);
        raw.db
            .write_opt(raw.shape.batch(call), &wo)
            .map_err(|_| failed)?;
        // As long as a vault token.
        tokens.push(format!("tok_{call:032x}"));
    }
    let waiting = {
        let mut state = raw.lock();
        state.written += 1;
        let ticket = state.written;
        if state.idle {
            state.idle = false;
            raw.written.notify_one();
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        state.waiters.insert(ticket, tx);
        rx
    };
    waiting.await.map_err(|_| failed)?;
    Ok(axum::Json(TokenizeResponse { tokens }))
}

// ---------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------

fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

fn rss_kib(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:")
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Samples a process's VmRSS every 50 ms; `stop` gives the highest value seen.
#[derive(Debug)]
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let stop = stop.clone();
            let peak = peak.clone();
            async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        RssSampler { stop, peak, task }
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------

fn print_line(target: &str, op: &str, s: Stats) {
    println!(
        "  {target:<10} {op:<12} {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  {} requests, {} errors",
        s.rps, s.p50_ms, s.p99_ms, s.requests, s.errors
    );
}

fn print_table(cfg: &Config, vault: &[Stats; 3], axum: &[Stats; 3], pg: Option<&PgResults>) {
    println!();
    println!(
        "HTTPS on loopback, {CONNECTIONS} connections, {} s each, {} records loaded",
        cfg.secs, cfg.records
    );
    println!(
        "{:<20} | {:>24} | {:>24} | {:>7} | baseline",
        "group", "vault req/s p50 p99 ms", "baseline req/s p50 p99", "ratio"
    );
    println!("{}", "-".repeat(110));
    let cell = |s: &Stats| {
        format!(
            "{:>8.0} {:>7.2} {:>7.2}{}",
            s.rps,
            s.p50_ms,
            s.p99_ms,
            if s.errors > 0 { "!" } else { " " }
        )
    };
    for op in Op::REPORTED {
        let (v, b) = (&vault[op.index()], &axum[op.index()]);
        println!(
            "{:<20} | {:>24} | {:>24} | {:>6.2}x | bare axum echo over the same TLS",
            format!("https_{}", op.name()),
            cell(v),
            cell(b),
            v.rps / b.rps.max(1e-9)
        );
    }
    for op in Op::REPORTED {
        let v = &vault[op.index()];
        match pg {
            Some(pg) => {
                let b = &pg.stats[op.index()];
                println!(
                    "{:<20} | {:>24} | {:>24} | {:>6.2}x | {}",
                    format!("postgres_{}", op.name()),
                    cell(v),
                    cell(b),
                    v.rps / b.rps.max(1e-9),
                    pg.name
                );
            }
            None => println!(
                "{:<20} | {:>24} | {:>24} | {:>7} | skipped",
                format!("postgres_{}", op.name()),
                cell(v),
                "-",
                "-"
            ),
        }
    }
    let errors: u64 = vault
        .iter()
        .chain(axum)
        .chain(pg.iter().flat_map(|pg| pg.stats.iter()))
        .map(|s| s.errors)
        .sum();
    println!("ratio = vault req/s / baseline req/s; errors (non-2xx or failed): {errors}");
}

fn fmt_list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.1}"))
        .collect::<Vec<_>>()
        .join(", ")
}
