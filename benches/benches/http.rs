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

use std::error::Error;
use std::ffi::OsString;
use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vault_benches::WriteShape;
use vault_client::api::{
    DetokenizeRequest, SubjectRequest, TokenizeItem, TokenizeRequest, TokenizeResponse,
};

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Concurrent connections (workers) in every measurement and load.
const CONNECTIONS: usize = 64;
/// Batches loaded at a time: 64 concurrent 1 000-item batches queue past the server's
/// 10 s request timeout once RocksDB starts compacting.
const LOAD_CONNECTIONS: usize = 8;
/// Bytes per value.
const VALUE_LEN: usize = 100;
/// Records per data subject when loading.
const RECORDS_PER_SUBJECT: usize = 10;
/// Items per batch tokenize (and rows per INSERT) when loading.
const LOAD_BATCH: usize = 1000;
/// Erasures timed one after the other at the end (not under load).
const ERASURES: usize = 5;
/// Rounds of tokenize with the vault, the two RocksDB-alone servers and the bare
/// server back to back.
const TOKENIZE_ROUNDS: usize = 5;
/// The purpose used for detokenize (dev: legitimate interests, every field).
const PURPOSE: &str = "support";
const ROLE_ENV: &str = "VAULT_BENCH_ROLE";

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

#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
}

impl Stats {
    fn to_json(self) -> Value {
        json!({"rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors})
    }

    fn with_name(self, name: &str) -> Value {
        json!({"name": name, "rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors})
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
    let tokens = load_vault(&cfg, &ca_pem, &vault_url, &api_key).await?;
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
    let metrics = dek_metrics(&ca_pem, &field("metrics_url")?).await?;
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
            Op::Tokenize => Some(write_counters(&ca_pem, &vault_url).await?),
            _ => None,
        };
        let stats = measure_http(&cfg, &ca_pem, &vault_url, &api_key, op, &data).await?;
        print_line("vault", op.name(), stats);
        vault_stats[op.index()] = stats;
        if let Some(before) = before {
            shape = Some(before.shape_to(&write_counters(&ca_pem, &vault_url).await?)?);
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

fn subject_id(i: usize) -> String {
    format!("subj-{i}")
}

fn field_name(i: usize) -> String {
    format!("field{}", i % RECORDS_PER_SUBJECT)
}

// ---------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------

/// One client per worker: HTTP/1.1, one keep-alive connection each.
fn https_client(ca_pem: &[u8]) -> Res<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .http1_only()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// POSTs a JSON body; the answer's body when the status is 2xx.
async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: Vec<u8>,
) -> Result<axum::body::Bytes, String> {
    let response = client
        .post(url)
        .bearer_auth(key)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ))
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn tokenize_body(rng: &mut Rng, subjects: usize) -> Vec<u8> {
    let request = TokenizeRequest {
        items: vec![TokenizeItem::new(
            subject_id(rng.below(subjects)),
            "note",
            rng.alnum(VALUE_LEN),
        )],
    };
    serde_json::to_vec(&request).expect("a tokenize request serialises")
}

fn detokenize_body(rng: &mut Rng, tokens: &[String]) -> Vec<u8> {
    let request = DetokenizeRequest {
        tokens: vec![tokens[rng.below(tokens.len())].clone()],
        purpose: PURPOSE.to_owned(),
    };
    serde_json::to_vec(&request).expect("a detokenize request serialises")
}

fn export_body(rng: &mut Rng, subjects: usize) -> Vec<u8> {
    let request = SubjectRequest {
        subject: subject_id(rng.below(subjects)).into(),
    };
    serde_json::to_vec(&request).expect("an export request serialises")
}

/// Loads `cfg.records` records with batch tokenize, 8 batches at a time; the tokens.
async fn load_vault(cfg: &Config, ca_pem: &[u8], url: &str, key: &Arc<str>) -> Res<Vec<String>> {
    let batches = cfg.records.div_ceil(LOAD_BATCH);
    let next = Arc::new(AtomicUsize::new(0));
    let url: Arc<str> = format!("{url}{}", Op::Tokenize.path()).into();
    let mut workers = Vec::new();
    for w in 0..LOAD_CONNECTIONS {
        let client = https_client(ca_pem)?;
        let next = next.clone();
        let url = url.clone();
        let key = key.clone();
        let records = cfg.records;
        workers.push(tokio::spawn(async move {
            let mut rng = Rng::new(w as u64);
            let mut tokens = Vec::new();
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    break;
                }
                let range = batch * LOAD_BATCH..((batch + 1) * LOAD_BATCH).min(records);
                let items: Vec<TokenizeItem> = range
                    .clone()
                    .map(|i| {
                        TokenizeItem::new(
                            subject_id(i / RECORDS_PER_SUBJECT),
                            field_name(i),
                            rng.alnum(VALUE_LEN),
                        )
                    })
                    .collect();
                let body = serde_json::to_vec(&TokenizeRequest { items })
                    .map_err(|e| format!("serialising a batch: {e}"))?;
                let answer = post(&client, &url, &key, body)
                    .await
                    .map_err(|e| format!("loading batch {batch}: {e}"))?;
                let answer: TokenizeResponse = serde_json::from_slice(&answer)
                    .map_err(|e| format!("loading batch {batch}: the answer: {e}"))?;
                if answer.tokens.len() != range.len() {
                    return Err(format!(
                        "batch {batch}: {} tokens for {} items",
                        answer.tokens.len(),
                        range.len()
                    ));
                }
                tokens.extend(answer.tokens);
            }
            Ok::<_, String>(tokens)
        }));
    }
    let mut tokens = Vec::with_capacity(cfg.records);
    for worker in workers {
        tokens.extend(worker.await??);
    }
    Ok(tokens)
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
    let stats = drive(cfg, workers, make, call).await;
    if let Ok(first) = first_error.lock()
        && let Some(e) = first.as_ref()
    {
        println!("  first error ({} {}): {e}", base, op.name());
    }
    Ok(stats)
}

/// Closed loop: every worker sends its next request as soon as the previous answer
/// is in. Requests started in the warm-up are not counted; latency is measured from
/// just before sending (the body is built before) to the end of the answer's body.
async fn drive<W, R, M, C, Fut>(cfg: &Config, workers: Vec<W>, make: M, call: C) -> Stats
where
    W: Clone + Send + 'static,
    R: Send + 'static,
    M: Fn(&mut Rng) -> R + Send + Sync + 'static,
    C: Fn(W, R) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let make = Arc::new(make);
    let call = Arc::new(call);
    let start = Instant::now();
    let t0 = start + cfg.warmup();
    let end = t0 + cfg.window();
    let seed = SEED.fetch_add(1_000, Ordering::Relaxed);
    let mut handles = Vec::with_capacity(workers.len());
    for (i, worker) in workers.into_iter().enumerate() {
        let make = make.clone();
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed + i as u64);
            let mut latencies: Vec<u32> = Vec::with_capacity(16 * 1024);
            let mut errors = 0u64;
            let mut last = t0;
            loop {
                if Instant::now() >= end {
                    break;
                }
                let request = make(&mut rng);
                let sent = Instant::now();
                let ok = call(worker.clone(), request).await;
                let done = Instant::now();
                if !ok {
                    errors += 1;
                } else if sent >= t0 {
                    let micros = done.duration_since(sent).as_micros();
                    latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
                if sent >= t0 {
                    last = last.max(done);
                }
            }
            (latencies, errors, last)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    let mut last = t0;
    for handle in handles {
        match handle.await {
            Ok((latencies, e, l)) => {
                all.extend(latencies);
                errors += e;
                last = last.max(l);
            }
            Err(_) => errors += 1,
        }
    }
    all.sort_unstable();
    let elapsed = last.duration_since(t0).as_secs_f64().max(1e-9);
    Stats {
        rps: all.len() as f64 / elapsed,
        p50_ms: percentile_ms(&all, 0.50),
        p99_ms: percentile_ms(&all, 0.99),
        errors,
        requests: all.len() as u64,
    }
}

static SEED: AtomicU64 = AtomicU64::new(1);

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted[index]) / 1000.0
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
/// `/metrics`.
struct WriteCounters {
    keys: f64,
    bytes: f64,
    tokenized: f64,
}

async fn write_counters(ca_pem: &[u8], base: &str) -> Res<WriteCounters> {
    let client = https_client(ca_pem)?;
    let text = client
        .get(format!("{base}/metrics"))
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
    let stats = drive(cfg, conns.to_vec(), make, call).await;
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

/// Serves `app` for a child role until the process ends.
fn serve_role(role: &str, cert: &str, key: &str, app: axum::Router) -> ExitCode {
    let served = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Into::into)
        .and_then(|runtime| runtime.block_on(serve_tls(Path::new(cert), Path::new(key), app)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{role} role: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Serves `app` over TLS on a loopback port, as vault-server does; prints
/// `{"url": …}` once listening.
async fn serve_tls(cert: &Path, key: &Path, app: axum::Router) -> Res<()> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    // As vault-server's serve::tls_config: ring, TLS 1.2 + 1.3, h2 and HTTP/1.1.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let config = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(tls));
    let server = axum_server::from_tcp_rustls(listener, config)?;
    println!(
        "{}",
        json!({ "url": format!("https://127.0.0.1:{}", addr.port()) })
    );
    server.serve(app.into_make_service()).await?;
    Ok(())
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
// Child processes
// ---------------------------------------------------------------------------------

/// A child process of this binary in another role; killed (and reaped) on drop, also
/// when the bench panics. The child also exits by itself when its stdin closes, i.e.
/// when this process is gone, however it ended.
#[derive(Debug)]
struct ChildGuard {
    child: Child,
    _stdin: Option<ChildStdin>,
    _stdout: BufReader<ChildStdout>,
}

impl ChildGuard {
    /// Starts `role` and reads its one JSON start line from stdout; stderr to `log`.
    fn spawn(role: &str, args: &[OsString], log: &Path) -> Res<(ChildGuard, Value)> {
        let exe = std::env::current_exe()?;
        let log_file = std::fs::File::create(log)?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, role)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("the child has no stdout")?;
        let mut guard = ChildGuard {
            child,
            _stdin: stdin,
            _stdout: BufReader::new(stdout),
        };
        let mut line = String::new();
        guard._stdout.read_line(&mut line)?;
        if line.trim().is_empty() {
            return Err(format!(
                "the {role} child printed no start line; its log ({}) ends with:\n{}",
                log.display(),
                tail(log, 20)
            )
            .into());
        }
        let info: Value = serde_json::from_str(line.trim())
            .map_err(|e| format!("the {role} child's start line is not JSON ({e}): {line}"))?;
        Ok((guard, info))
    }

    /// [`spawn`](Self::spawn) for a server role (from the runtime); its URL.
    fn spawn_server(role: &str, args: &[OsString], log: &Path) -> Res<(ChildGuard, String)> {
        let (child, info) = tokio::task::block_in_place(|| ChildGuard::spawn(role, args, log))?;
        let url = info
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the {role} server's start line has no url"))?
            .to_owned();
        Ok((child, url))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// In a child role: exit as soon as stdin reaches its end (the parent is gone).
fn exit_when_parent_goes() {
    std::thread::spawn(|| {
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => std::process::exit(0),
                Ok(_) => {}
            }
        }
    });
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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

fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

// ---------------------------------------------------------------------------------
// Randomness (not cryptographic: workload choices and test values only)
// ---------------------------------------------------------------------------------

#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(stream: u64) -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = Rng(nanos ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next();
        rng
    }

    /// splitmix64
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn alnum(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| char::from(CHARS[self.below(CHARS.len())]))
            .collect()
    }

    /// A client-side token for the PostgreSQL baseline (128 random bits).
    fn token(&mut self) -> String {
        format!("tok_{:016x}{:016x}", self.next(), self.next())
    }
}
