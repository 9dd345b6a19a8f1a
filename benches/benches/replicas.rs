//! Replicas of the vault on PostgreSQL over HTTPS, next to raw PostgreSQL doing the
//! same rows' work, all measured in one run.
//!
//! ```text
//! export VAULT_PG_DIR=/tmp/vault-bench-replicas-pg VAULT_PG_PORT=55436
//! VAULT_BENCH_REPLICAS_PG="$(scripts/postgres start)" \
//! VAULT_BENCH_REPLICAS_CA="$(scripts/postgres ca)" \
//!     cargo bench -p vault-benches --bench replicas
//! scripts/postgres stop
//! ```
//!
//! Throughput (requests/s), p50 and p99 of tokenize (one value a request) and
//! detokenize (one token a request), from [`CONNECTIONS`] concurrent clients in a
//! closed loop, for a fixed time each, against:
//!
//! 1. one `vault-server` on PostgreSQL (`[storage] backend = "postgres"`, TLS to the
//!    database, a pool of [`POOL_SIZE`] connections), a child process (this binary
//!    in the `server` role), loaded first over HTTPS with batch tokenize;
//! 2. two such replicas on the same schema, the connections split between them;
//! 3. raw PostgreSQL from as many connections (tokio-postgres, the same TLS),
//!    doing the rows' work of each call (see [`Baseline::describe`]): for tokenize,
//!    the rows a vault tokenize writes, in one transaction committed with
//!    `synchronous_commit = on`; for detokenize, the point selects a vault detokenize
//!    makes (record, key row) and the audit rows it commits with
//!    `synchronous_commit = off`, as the issue asks. Its tables are copies of the
//!    vault's, so they hold as many rows of the same sizes;
//! 4. for detokenize, the same with the audit rows committed with
//!    `synchronous_commit = on`: the vault commits every write on PostgreSQL so,
//!    read events included, and this is the baseline of the same durability;
//!    and for both, the same without the audit trail's head row (each event
//!    numbered by a sequence): what the one chain costs raw PostgreSQL;
//! 5. the ceiling: the baseline's statements behind the same TLS and JSON (an axum
//!    server as in `http.rs`, another child), so a vault doing per call what the
//!    baseline does, and nothing more, would reach its ratio and no more on this
//!    machine, where the client shares the cores.
//!
//! Each round measures them all back to back, each first in its turn, for both
//! operations; the report gives the medians over the rounds. Also measured: the CPU
//! each process took (the client, each server, PostgreSQL's processes, the rest of
//! the machine), and the vault's storage counters per request.
//!
//! Environment: `VAULT_BENCH_REPLICAS_PG` (the database URL, required),
//! `VAULT_BENCH_REPLICAS_CA` (the CA of its TLS certificate, required),
//! `VAULT_BENCH_SECS` (seconds per measurement, default 10), `VAULT_BENCH_ROUNDS`
//! (default 3), `VAULT_BENCH_REPLICAS_RECORDS` (records loaded, default 1 000 000,
//! 10 per subject), `VAULT_BENCH_REPLICAS_OUT` (JSON results, default
//! `target/bench-results/replicas.json`). The schemas `bench` and `raw` are made
//! afresh in the database, and dropped at the end.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_postgres::{Client, SimpleQueryMessage, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;
use vault_benches::Res;
use vault_benches::child::{self, ChildGuard};
use vault_benches::https::{
    PURPOSE, RECORDS_PER_SUBJECT, VALUE_LEN, contains, detokenize_body, https_client, load_vault,
    post, serve_tls, tokenize_body,
};
use vault_benches::load::{Rng, Stats, drive, median, utc_now};
use vault_client::api::{
    DetokenizeRequest, DetokenizeResponse, DetokenizeResult, TokenizeRequest, TokenizeResponse,
};

/// Concurrent clients in every measurement: the two replicas' pools together (16
/// each), so that the baseline's connections are as many as the database
/// connections of the two replicas, and enough callers for the vault's journal to
/// group their writes.
const CONNECTIONS: usize = 32;
/// Database connections of each replica (the server's default).
const POOL_SIZE: usize = 16;
/// The vault's schema, and the baseline's.
const VAULT_SCHEMA: &str = "bench";
const RAW_SCHEMA: &str = "raw";
/// The tables the baseline works on, copied from the vault's.
const RAW_TABLES: [&str; 6] = [
    "records",
    "index",
    "subjects",
    "keys",
    "audit",
    "audit_index",
];

fn main() -> ExitCode {
    match child::role().as_deref() {
        Some("server") => {
            child::exit_when_parent_goes();
            return vault_server::cli::main();
        }
        Some("raw-https") => {
            child::exit_when_parent_goes();
            return raw_https_role();
        }
        _ => {}
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not: then do nothing
    // rather than a many-minute load.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "replicas bench: skipped (run it with `cargo bench -p vault-benches --bench replicas`)"
        );
        return ExitCode::SUCCESS;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("replicas bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replicas bench: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Config {
    secs: f64,
    rounds: usize,
    records: usize,
    /// The database, and the CA of its certificate.
    url: String,
    ca: PathBuf,
    out: PathBuf,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> Res<T> {
    match std::env::var(name) {
        Ok(s) => s
            .trim()
            .replace('_', "")
            .parse::<T>()
            .map_err(|_| format!("{name} is not a number: {s:?}").into()),
        Err(_) => Ok(default),
    }
}

impl Config {
    fn from_env() -> Res<Config> {
        let secs: f64 = env_number("VAULT_BENCH_SECS", 10.0)?;
        if !(secs > 0.0 && secs.is_finite()) {
            return Err("VAULT_BENCH_SECS must be positive".into());
        }
        let rounds: usize = env_number("VAULT_BENCH_ROUNDS", 3)?;
        let records: usize = env_number("VAULT_BENCH_REPLICAS_RECORDS", 1_000_000)?;
        if rounds == 0 || records < RECORDS_PER_SUBJECT {
            return Err(
                "VAULT_BENCH_ROUNDS and VAULT_BENCH_REPLICAS_RECORDS must be at least 1 and 10"
                    .into(),
            );
        }
        let needed = |name: &str| -> Res<String> {
            std::env::var(name)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    format!(
                        "{name} is not set: give this benchmark a PostgreSQL cluster of its own \
                         (see the top of benches/benches/replicas.rs, or scripts/bench)"
                    )
                    .into()
                })
        };
        let url = needed("VAULT_BENCH_REPLICAS_PG")?;
        let ca = PathBuf::from(needed("VAULT_BENCH_REPLICAS_CA")?);
        let out = std::env::var_os("VAULT_BENCH_REPLICAS_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // cargo runs benches in the package directory: use the workspace's target.
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("..")
                    .join("target")
                    .join("bench-results")
                    .join("replicas.json")
            });
        Ok(Config {
            secs,
            rounds,
            records,
            url,
            ca,
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

    /// The URL with TLS required (the certificate is checked against the CA, and
    /// its name against the host, whatever the mode says).
    fn tls_url(&self) -> String {
        if self.url.contains("sslmode=") {
            self.url.clone()
        } else if self.url.contains('?') {
            format!("{}&sslmode=require", self.url)
        } else {
            format!("{}?sslmode=require", self.url)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Tokenize,
    Detokenize,
}

impl Op {
    const ALL: [Op; 2] = [Op::Tokenize, Op::Detokenize];

    fn name(self) -> &'static str {
        match self {
            Op::Tokenize => "tokenize",
            Op::Detokenize => "detokenize",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Op::Tokenize => "/v1/tokenize",
            Op::Detokenize => "/v1/detokenize",
        }
    }
}

/// What is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    OneReplica,
    TwoReplicas,
    Raw,
    /// Detokenize only: the read's audit rows committed with
    /// `synchronous_commit = on`, as the vault commits them.
    RawSynced,
    RawUnchained,
    RawHttps,
}

impl Target {
    /// What is measured for `op`, in the order of the first round.
    fn of(op: Op) -> &'static [Target] {
        match op {
            Op::Tokenize => &[
                Target::OneReplica,
                Target::TwoReplicas,
                Target::Raw,
                Target::RawUnchained,
                Target::RawHttps,
            ],
            Op::Detokenize => &[
                Target::OneReplica,
                Target::TwoReplicas,
                Target::Raw,
                Target::RawSynced,
                Target::RawUnchained,
                Target::RawHttps,
            ],
        }
    }

    /// The raw statements of a raw target.
    fn baseline(self) -> Option<Baseline> {
        match self {
            Target::Raw | Target::RawHttps => Some(Baseline::ASKED),
            Target::RawSynced => Some(Baseline {
                read_sync: true,
                ..Baseline::ASKED
            }),
            Target::RawUnchained => Some(Baseline {
                chained: false,
                ..Baseline::ASKED
            }),
            Target::OneReplica | Target::TwoReplicas => None,
        }
    }

    fn is_vault(self) -> bool {
        matches!(self, Target::OneReplica | Target::TwoReplicas)
    }

    fn key(self) -> &'static str {
        match self {
            Target::OneReplica => "vault_1_replica",
            Target::TwoReplicas => "vault_2_replicas",
            Target::Raw => "raw_postgres",
            Target::RawSynced => "raw_postgres_read_events_synced",
            Target::RawUnchained => "raw_postgres_no_head_row",
            Target::RawHttps => "raw_postgres_behind_https",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Target::OneReplica => "vault, 1 replica",
            Target::TwoReplicas => "vault, 2 replicas",
            Target::Raw => "raw PostgreSQL (baseline)",
            Target::RawSynced => "raw, read events synced",
            Target::RawUnchained => "raw PostgreSQL, no head row",
            Target::RawHttps => "raw PostgreSQL behind HTTPS",
        }
    }
}

// ---------------------------------------------------------------------------------
// The run
// ---------------------------------------------------------------------------------

/// One measurement of one target.
#[derive(Debug, Clone)]
struct Sample {
    round: usize,
    op: Op,
    target: Target,
    stats: Stats,
    cpu: CpuShare,
    /// The vault's storage counters per request answered (vault targets only).
    vault_counters: Option<VaultCounters>,
}

async fn run() -> Res<()> {
    let cfg = Config::from_env()?;
    println!(
        "replicas bench: {CONNECTIONS} connections, {} s per measurement (+{:.1} s warm-up), \
         {} rounds, {} records ({} subjects), {} cores",
        cfg.secs,
        cfg.warmup().as_secs_f64(),
        cfg.rounds,
        cfg.records,
        cfg.subjects(),
        Machine::read()?.cores
    );
    let tls = pg_tls(&cfg.ca)?;
    let url = cfg.tls_url();
    let admin = pg_connect(&url, &tls).await?;
    let settings = admin
        .query_one(
            "SELECT split_part(current_setting('server_version'), ' ', 1), current_setting('fsync'), \
             current_setting('synchronous_commit'), current_setting('shared_buffers'), \
             current_setting('max_connections'), pg_backend_pid()",
            &[],
        )
        .await?;
    let pg_version: String = settings.try_get(0)?;
    let postgres = json!({
        "version": pg_version,
        "fsync": settings.try_get::<_, String>(1)?,
        "synchronous_commit": settings.try_get::<_, String>(2)?,
        "shared_buffers": settings.try_get::<_, String>(3)?,
        "max_connections": settings.try_get::<_, String>(4)?,
        "tls": true,
    });
    println!("PostgreSQL: {postgres}");
    let postmaster = postmaster_of(u32::try_from(settings.try_get::<_, i32>(5)?)?)?;
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {VAULT_SCHEMA} CASCADE; DROP SCHEMA IF EXISTS {RAW_SCHEMA} CASCADE"
        ))
        .await?;

    // On the machine's disk (not a tmpfs), like the database.
    let tmp = tempfile::Builder::new()
        .prefix("vault-bench-replicas-")
        .tempdir()?;
    let files = write_config(tmp.path(), &url, &cfg.ca)?;
    let ca_pem = std::fs::read(&files.cert)?;
    let api_key: Arc<str> = files.api_key.as_str().into();

    // 1 and 2: two replicas of one vault.
    let mut replicas = Vec::new();
    for name in ["a", "b"] {
        let args: Vec<OsString> = vec![
            "--data-dir".into(),
            tmp.path().join(name).into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--config".into(),
            files.config.clone().into(),
        ];
        let log = tmp.path().join(format!("vault-server-{name}.log"));
        let (guard, info) =
            tokio::task::block_in_place(|| ChildGuard::spawn("server", &args, &log))?;
        let field = |key: &str| -> Res<String> {
            info.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| format!("the server's start line has no {key}: {info}").into())
        };
        let replica = Replica {
            url: field("url")?,
            metrics_url: field("metrics_url")?,
            guard,
        };
        println!(
            "replica {name}: pid {} at {} (log {})",
            replica.guard.pid(),
            replica.url,
            log.display()
        );
        replicas.push(replica);
    }

    println!("loading {} records through replica a...", cfg.records);
    let started = Instant::now();
    let tokens = load_vault(&ca_pem, &replicas[0].url, &api_key, cfg.records).await?;
    let load_secs = started.elapsed().as_secs_f64();
    println!(
        "loaded in {load_secs:.1} s ({:.0} records/s)",
        cfg.records as f64 / load_secs
    );

    // 3 and 4: the baseline's tables, copies of the vault's.
    let started = Instant::now();
    let shape = copy_tables(&admin).await?;
    println!(
        "copied the vault's tables into schema {RAW_SCHEMA} in {:.1} s; row sizes: {}",
        started.elapsed().as_secs_f64(),
        serde_json::to_string(&shape)?
    );
    let raw_data = Arc::new(RawData::load(&admin, shape).await?);
    let mut raw_conns = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        raw_conns.push(Arc::new(RawConn::connect(&url, &tls).await?));
    }

    // 5: the ceiling, another child.
    let ceiling_args: Vec<OsString> = vec![
        files.cert.clone().into(),
        files.key.clone().into(),
        url.clone().into(),
        cfg.ca.clone().into(),
        serde_json::to_string(&shape)?.into(),
    ];
    let ceiling_log = tmp.path().join("raw-https.log");
    let (ceiling, ceiling_url) =
        ChildGuard::spawn_server("raw-https", &ceiling_args, &ceiling_log)?;
    println!("raw behind HTTPS: pid {} at {ceiling_url}", ceiling.pid());

    let data = Arc::new(VaultData {
        subjects: cfg.subjects(),
        tokens,
    });
    let processes = Processes {
        postmaster,
        servers: vec![
            ("vault a", replicas[0].guard.pid()),
            ("vault b", replicas[1].guard.pid()),
            ("raw behind https", ceiling.pid()),
        ],
    };
    let mut samples = Vec::new();
    for round in 0..cfg.rounds {
        for op in Op::ALL {
            let targets = Target::of(op);
            for i in 0..targets.len() {
                let target = targets[(i + round) % targets.len()];
                let before_cpu = processes.sample()?;
                let before_vault = vault_counters(&replicas, target).await?;
                let stats = match target {
                    Target::OneReplica => {
                        let urls = [replicas[0].url.clone()];
                        measure_https(&cfg, &ca_pem, &urls, &api_key, op, &data).await?
                    }
                    Target::TwoReplicas => {
                        let urls = [replicas[0].url.clone(), replicas[1].url.clone()];
                        measure_https(&cfg, &ca_pem, &urls, &api_key, op, &data).await?
                    }
                    Target::Raw | Target::RawSynced | Target::RawUnchained => {
                        let baseline = target.baseline().ok_or("a raw target")?;
                        measure_raw(&cfg, &raw_conns, &raw_data, baseline, op).await
                    }
                    Target::RawHttps => {
                        let urls = [ceiling_url.clone()];
                        measure_https(&cfg, &ca_pem, &urls, &api_key, op, &data).await?
                    }
                };
                let cpu = processes.sample()?.since(&before_cpu);
                let after_vault = vault_counters(&replicas, target).await?;
                let vault_counters = before_vault
                    .zip(after_vault)
                    .map(|(b, a)| a.per_request_since(&b, stats.completed));
                print_sample(round, op, target, &stats, &cpu, vault_counters.as_ref());
                samples.push(Sample {
                    round,
                    op,
                    target,
                    stats,
                    cpu,
                    vault_counters,
                });
            }
        }
    }
    drop(ceiling);
    drop(replicas);
    drop(raw_conns);
    admin
        .batch_execute(&format!(
            "DROP SCHEMA {VAULT_SCHEMA} CASCADE; DROP SCHEMA {RAW_SCHEMA} CASCADE"
        ))
        .await?;

    let summary = Summary::of(&samples);
    print_report(&cfg, &summary, &shape, &raw_data);
    let result = json!({
        "date": utc_now(),
        "cores": Machine::read()?.cores,
        "connections": CONNECTIONS,
        "pool_size_per_replica": POOL_SIZE,
        "seconds": cfg.secs,
        "rounds": cfg.rounds,
        "records": cfg.records,
        "vault_load_secs": load_secs,
        "postgres": postgres,
        "row_sizes": shape,
        "baselines": {
            "tokenize": Baseline::ASKED.describe(Op::Tokenize, &shape, &raw_data),
            "detokenize": Baseline::ASKED.describe(Op::Detokenize, &shape, &raw_data),
            "detokenize_read_events_synced": Target::RawSynced.baseline().map(|b| b.describe(Op::Detokenize, &shape, &raw_data)),
            "tokenize_no_head_row": Target::RawUnchained.baseline().map(|b| b.describe(Op::Tokenize, &shape, &raw_data)),
            "detokenize_no_head_row": Target::RawUnchained.baseline().map(|b| b.describe(Op::Detokenize, &shape, &raw_data)),
            "behind_https": RAW_HTTPS_DESCRIPTION,
        },
        "summary": summary.to_json(),
        "samples": samples.iter().map(sample_json).collect::<Vec<_>>(),
    });
    if let Some(dir) = cfg.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cfg.out, serde_json::to_vec_pretty(&result)?)?;
    let out = std::fs::canonicalize(&cfg.out).unwrap_or_else(|_| cfg.out.clone());
    println!("results: {}", out.display());
    Ok(())
}

/// A vault-server replica.
#[derive(Debug)]
struct Replica {
    url: String,
    metrics_url: String,
    guard: ChildGuard,
}

/// What the vault's measurements pick from: loaded subjects are `subj-0` …
/// `subj-{subjects-1}`.
#[derive(Debug)]
struct VaultData {
    subjects: usize,
    tokens: Vec<String>,
}

/// The files of the replicas' configuration.
#[derive(Debug)]
struct ConfigFiles {
    config: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    api_key: String,
}

/// Writes the replicas' configuration into `dir`: a self-signed certificate for
/// 127.0.0.1, a root key file, one API key, the purpose detokenize asks for, and
/// the vault in PostgreSQL at `url` (TLS checked against `ca`). Everything else is
/// the server's default.
fn write_config(dir: &Path, url: &str, ca: &Path) -> Res<ConfigFiles> {
    use std::os::unix::fs::PermissionsExt;

    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let root = vault_core::RootKey::generate()?;
    let root_hex: String = root
        .expose_bytes()
        .ok_or("a generated root key has bytes")?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root_file = dir.join("root.key");
    std::fs::write(&root_file, root_hex)?;
    std::fs::set_permissions(&root_file, std::fs::Permissions::from_mode(0o600))?;
    let (api_key, hash) = vault_server::auth::generate_key()?;
    let text = format!(
        "[tls]\ncert = {cert:?}\nkey = {key:?}\n\
         [root_key]\nfile = {root_file:?}\n\
         [[api_keys]]\nname = \"bench\"\nhash = \"{hash}\"\nscopes = [\"tokenize\", \"detokenize\"]\npurposes = [\"{PURPOSE}\"]\n\
         [[purposes]]\nname = \"{PURPOSE}\"\nbasis = \"legitimate_interests\"\n\
         [storage]\nbackend = \"postgres\"\nurl = {url:?}\nca_file = {ca:?}\nschema = \"{VAULT_SCHEMA}\"\npool_size = {POOL_SIZE}\n",
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        root_file = root_file.display().to_string(),
        ca = ca.display().to_string(),
    );
    let config = dir.join("vault.toml");
    std::fs::write(&config, text)?;
    Ok(ConfigFiles {
        config,
        cert,
        key,
        api_key: api_key.to_string(),
    })
}

// ---------------------------------------------------------------------------------
// HTTPS: the vault's replicas and the raw server behind HTTPS
// ---------------------------------------------------------------------------------

/// One operation against HTTPS servers, the connections split evenly between
/// `bases`; the same bodies for every server.
async fn measure_https(
    cfg: &Config,
    ca_pem: &[u8],
    bases: &[String],
    key: &Arc<str>,
    op: Op,
    data: &Arc<VaultData>,
) -> Res<Stats> {
    let mut workers = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let url: Arc<str> = format!("{}{}", bases[i % bases.len()], op.path()).into();
        workers.push((https_client(ca_pem)?, url, key.clone()));
    }
    let first_error = Arc::new(Mutex::new(None::<String>));
    let make = {
        let data = data.clone();
        move |rng: &mut Rng| match op {
            Op::Tokenize => tokenize_body(rng, data.subjects),
            Op::Detokenize => detokenize_body(rng, &data.tokens),
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
                note_error(&first_error, outcome)
            }
        }
    };
    let stats = drive(cfg.warmup(), cfg.window(), workers, make, call).await;
    report_first_error(&first_error, &format!("{} {}", bases.join(" "), op.name()));
    Ok(stats)
}

/// Keeps the first error; whether the call succeeded.
fn note_error(first: &Mutex<Option<String>>, outcome: Result<(), String>) -> bool {
    match outcome {
        Ok(()) => true,
        Err(e) => {
            first
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_or_insert(e);
            false
        }
    }
}

fn report_first_error(first: &Mutex<Option<String>>, what: &str) {
    if let Some(e) = first
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        println!("  first error ({what}): {e}");
    }
}

/// The vault's storage counters, summed over the replicas, from `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct VaultCounters {
    keys_read: f64,
    keys_written: f64,
    /// Commits with `synchronous_commit = on` (on PostgreSQL every write: one per
    /// journal group).
    synced_commits: f64,
}

impl VaultCounters {
    fn per_request_since(&self, before: &VaultCounters, requests: u64) -> VaultCounters {
        let n = requests.max(1) as f64;
        VaultCounters {
            keys_read: (self.keys_read - before.keys_read) / n,
            keys_written: (self.keys_written - before.keys_written) / n,
            synced_commits: (self.synced_commits - before.synced_commits) / n,
        }
    }

    fn to_json(self) -> Value {
        json!({
            "keys_read": self.keys_read,
            "keys_written": self.keys_written,
            "synced_commits": self.synced_commits,
        })
    }
}

/// The replicas' counters, for a vault target.
async fn vault_counters(replicas: &[Replica], target: Target) -> Res<Option<VaultCounters>> {
    if !target.is_vault() {
        return Ok(None);
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut sum = VaultCounters::default();
    for replica in replicas {
        let text = client
            .get(&replica.metrics_url)
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
        sum.keys_read += value("vault_storage_keys_read_total")?;
        sum.keys_written += value("vault_storage_keys_written_total")?;
        sum.synced_commits += value("vault_storage_wal_syncs_total")?;
    }
    Ok(Some(sum))
}

// ---------------------------------------------------------------------------------
// Raw PostgreSQL: the baseline
// ---------------------------------------------------------------------------------

fn pg_tls(ca: &Path) -> Res<MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    // As the vault's store: ring, the safe default protocol versions.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

async fn pg_connect(url: &str, tls: &MakeRustlsConnect) -> Res<Client> {
    let mut config: tokio_postgres::Config = url.parse()?;
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("postgres connection: {e}");
        }
    });
    Ok(client)
}

/// Sizes of the rows the baseline writes, as the vault stored them (averages over
/// its tables after the load), in bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct RowShape {
    record_key: usize,
    record_value: usize,
    index_key: usize,
    index_value: usize,
    subject_key: usize,
    subject_value: usize,
    audit_value: usize,
    audit_index_key: usize,
    head_value: usize,
}

/// Copies the vault's tables the baseline works on into its own schema (with their
/// primary keys), adds the head row and the sequence it numbers events by, and
/// measures the vault's row sizes.
async fn copy_tables(admin: &Client) -> Res<RowShape> {
    let mut sql = format!("CREATE SCHEMA {RAW_SCHEMA}; ");
    for table in RAW_TABLES {
        let _ = write!(
            sql,
            "CREATE TABLE {RAW_SCHEMA}.\"{table}\" (LIKE {VAULT_SCHEMA}.\"{table}\" INCLUDING ALL); \
             INSERT INTO {RAW_SCHEMA}.\"{table}\" SELECT * FROM {VAULT_SCHEMA}.\"{table}\"; "
        );
    }
    // Event numbers far above the copied events' (8-byte big-endian keys, as the vault's).
    let _ = write!(
        sql,
        "CREATE TABLE {RAW_SCHEMA}.audit_head (k bytea PRIMARY KEY, n bigint NOT NULL, v bytea NOT NULL); \
         INSERT INTO {RAW_SCHEMA}.audit_head VALUES ('\\x00', 1000000000000, ''); \
         CREATE SEQUENCE {RAW_SCHEMA}.audit_seq START 2000000000000; "
    );
    admin.batch_execute(&sql).await?;
    // Both sides measured analysed and with their copies on disk.
    // Both sides measured analysed (VACUUM runs outside a transaction: a statement
    // of its own).
    let tables: Vec<String> = [VAULT_SCHEMA, RAW_SCHEMA]
        .iter()
        .flat_map(|schema| RAW_TABLES.iter().map(move |t| format!("{schema}.\"{t}\"")))
        .collect();
    admin
        .batch_execute(&format!("VACUUM ANALYZE {}", tables.join(", ")))
        .await?;
    let avg = |table: &str, column: &str| {
        format!(
            "(SELECT coalesce(avg(octet_length({column})), 0)::float8 FROM {VAULT_SCHEMA}.\"{table}\")"
        )
    };
    let row = admin
        .query_one(
            &format!(
                "SELECT {}, {}, {}, {}, {}, {}, {}, {}, \
                 (SELECT coalesce(octet_length(v), 0)::float8 FROM {VAULT_SCHEMA}.meta \
                  WHERE k = convert_to('audit/head', 'UTF8'))",
                avg("records", "k"),
                avg("records", "v"),
                avg("index", "k"),
                avg("index", "v"),
                avg("subjects", "k"),
                avg("subjects", "v"),
                avg("audit", "v"),
                avg("audit_index", "k"),
            ),
            &[],
        )
        .await?;
    let size = |i: usize| -> Res<usize> { Ok(row.try_get::<_, f64>(i)?.round() as usize) };
    Ok(RowShape {
        record_key: size(0)?,
        record_value: size(1)?,
        index_key: size(2)?,
        index_value: size(3)?,
        subject_key: size(4)?,
        subject_value: size(5)?,
        audit_value: size(6)?,
        audit_index_key: size(7)?,
        head_value: size(8)?,
    })
}

/// The keys the baseline reads and updates: every record, key row and subject
/// entry the vault held after its load (copied into the baseline's tables).
#[derive(Debug)]
struct RawData {
    shape: RowShape,
    records: Vec<Vec<u8>>,
    keys: Vec<Vec<u8>>,
    subjects: Vec<Vec<u8>>,
}

impl RawData {
    async fn load(client: &Client, shape: RowShape) -> Res<RawData> {
        let keys_of = async |table: &str| -> Res<Vec<Vec<u8>>> {
            let rows = client
                .query(&format!("SELECT k FROM {RAW_SCHEMA}.\"{table}\""), &[])
                .await?;
            let keys = rows
                .iter()
                .map(|row| row.try_get::<_, Vec<u8>>(0))
                .collect::<Result<Vec<_>, _>>()?;
            if keys.is_empty() {
                return Err(format!("the vault's {table} table is empty").into());
            }
            Ok(keys)
        };
        Ok(RawData {
            shape,
            records: keys_of("records").await?,
            keys: keys_of("keys").await?,
            subjects: keys_of("subjects").await?,
        })
    }
}

/// One baseline connection and its prepared point selects.
#[derive(Debug)]
struct RawConn {
    client: Client,
    record: Statement,
    key: Statement,
}

impl RawConn {
    async fn connect(url: &str, tls: &MakeRustlsConnect) -> Res<RawConn> {
        let client = pg_connect(url, tls).await?;
        let record = client
            .prepare(&format!("SELECT v FROM {RAW_SCHEMA}.records WHERE k = $1"))
            .await?;
        let key = client
            .prepare(&format!("SELECT v FROM {RAW_SCHEMA}.keys WHERE k = $1"))
            .await?;
        Ok(RawConn {
            client,
            record,
            key,
        })
    }
}

/// Appends `bytes` as a hex `bytea` literal.
fn hex(sql: &mut String, bytes: &[u8]) {
    sql.push_str("'\\x");
    for b in bytes {
        let _ = write!(sql, "{b:02x}");
    }
    sql.push('\'');
}

/// The baseline's statements: raw PostgreSQL writing what the vault writes per
/// call, with its audit events numbered by one head row (`chained`, as the vault's
/// trail) or by a sequence, and a read's audit rows committed with
/// `synchronous_commit` on (`read_sync`) or off.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    chained: bool,
    read_sync: bool,
}

/// A baseline call, its statements built before it is timed (as the vault's
/// request bodies are).
#[derive(Debug)]
enum RawCall {
    Tokenize(String),
    Detokenize {
        record: Vec<u8>,
        key: Vec<u8>,
        audit: String,
    },
}

/// Rows a tokenize transaction inserts or updates, as PostgreSQL counts them:
/// record, index entry, subject entry, audit index entry (the head row and the
/// event are counted within the last statement's data-modifying CTEs, not by it).
const TOKENIZE_ROWS: u64 = 4;

impl Baseline {
    /// The baseline the issue asks for: the head row, and a read's audit rows
    /// committed with `synchronous_commit = off` (as the vault committed read
    /// events when it was asked for; every commit of the vault on PostgreSQL has
    /// been synchronous since commit 754e252).
    const ASKED: Baseline = Baseline {
        chained: true,
        read_sync: false,
    };

    /// The audit rows of one event: with the head row, one statement that
    /// increments it and numbers the event by it; else the event numbered by a
    /// sequence. Then the event's index entry (its subject's reference and the
    /// number). Ends with `; `.
    fn audit(self, sql: &mut String, rng: &mut Rng, shape: &RowShape) {
        let reference_len = shape.audit_index_key.saturating_sub(8);
        if self.chained {
            let _ = write!(
                sql,
                "WITH h AS (UPDATE {RAW_SCHEMA}.audit_head SET n = n + 1, v = "
            );
            hex(sql, &rng.bytes(shape.head_value));
            let _ = write!(
                sql,
                " WHERE k = '\\x00' RETURNING n), e AS (INSERT INTO {RAW_SCHEMA}.audit (k, v) SELECT int8send(n), "
            );
            hex(sql, &rng.bytes(shape.audit_value));
            sql.push_str(" FROM h RETURNING k) ");
        } else {
            let _ = write!(
                sql,
                "WITH e AS (INSERT INTO {RAW_SCHEMA}.audit (k, v) VALUES (int8send(nextval('{RAW_SCHEMA}.audit_seq')), "
            );
            hex(sql, &rng.bytes(shape.audit_value));
            sql.push_str(") RETURNING k) ");
        }
        let _ = write!(sql, "INSERT INTO {RAW_SCHEMA}.audit_index (k, v) SELECT ");
        hex(sql, &rng.bytes(reference_len));
        sql.push_str(" || e.k, '' FROM e; ");
    }

    /// A tokenize: one transaction, one round trip, committed with
    /// `synchronous_commit = on`.
    fn tokenize(self, rng: &mut Rng, data: &RawData) -> String {
        let shape = &data.shape;
        let mut sql = String::with_capacity(2048);
        sql.push_str("BEGIN; SET LOCAL synchronous_commit = on; ");
        let record = rng.bytes(shape.record_key);
        let _ = write!(sql, "INSERT INTO {RAW_SCHEMA}.records (k, v) VALUES (");
        hex(&mut sql, &record);
        sql.push(',');
        hex(&mut sql, &rng.bytes(shape.record_value));
        let _ = write!(sql, "); INSERT INTO {RAW_SCHEMA}.\"index\" (k, v) VALUES (");
        // A subject's key id, then the token's id, as the vault's index keys.
        let mut index_key = data.keys[rng.below(data.keys.len())].clone();
        index_key.extend_from_slice(&record);
        hex(&mut sql, &index_key);
        sql.push(',');
        hex(&mut sql, &rng.bytes(shape.index_value));
        let _ = write!(sql, "); INSERT INTO {RAW_SCHEMA}.subjects (k, v) VALUES (");
        hex(&mut sql, &data.subjects[rng.below(data.subjects.len())]);
        sql.push(',');
        hex(&mut sql, &rng.bytes(shape.subject_value));
        sql.push_str(") ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v; ");
        self.audit(&mut sql, rng, shape);
        sql.push_str("COMMIT");
        sql
    }

    /// A detokenize: a record and a key row picked among the loaded ones, and the
    /// read's audit rows in one transaction.
    fn detokenize(self, rng: &mut Rng, data: &RawData) -> RawCall {
        let mut audit = String::with_capacity(512);
        audit.push_str(if self.read_sync {
            "BEGIN; SET LOCAL synchronous_commit = on; "
        } else {
            "BEGIN; SET LOCAL synchronous_commit = off; "
        });
        self.audit(&mut audit, rng, &data.shape);
        audit.push_str("COMMIT");
        RawCall::Detokenize {
            record: data.records[rng.below(data.records.len())].clone(),
            key: data.keys[rng.below(data.keys.len())].clone(),
            audit,
        }
    }

    fn call(self, op: Op, rng: &mut Rng, data: &RawData) -> RawCall {
        match op {
            Op::Tokenize => RawCall::Tokenize(self.tokenize(rng, data)),
            Op::Detokenize => self.detokenize(rng, data),
        }
    }

    /// Exactly what the baseline does per call.
    fn describe(self, op: Op, shape: &RowShape, data: &RawData) -> String {
        let audit = if self.chained {
            format!(
                "one statement that UPDATEs the audit trail's head row (n + 1, a {}-byte value; \
                 the row lock is held to the commit, as the vault's) and INSERTs the audit event \
                 numbered by it ({} bytes), then the INSERT of the event's index entry (a {}-byte key)",
                shape.head_value, shape.audit_value, shape.audit_index_key
            )
        } else {
            format!(
                "the INSERT of the audit event numbered by a sequence (nextval, no head row; {} bytes), \
                 then of its index entry (a {}-byte key)",
                shape.audit_value, shape.audit_index_key
            )
        };
        match op {
            Op::Tokenize => format!(
                "one transaction per call sent as one simple query (one round trip; values as hex \
                 bytea literals, as the vault writes), committed with synchronous_commit = on: \
                 INSERT of a record ({}-byte key, {}-byte value), INSERT of its index entry ({}-byte \
                 key), upsert of a loaded subject's entry (INSERT ... ON CONFLICT DO UPDATE, {} of them, \
                 {}-byte value), {audit}. No reads (the vault reads the subject's entry and key row first)",
                shape.record_key,
                shape.record_value,
                shape.index_key,
                data.subjects.len(),
                shape.subject_value
            ),
            Op::Detokenize => format!(
                "a prepared point SELECT of a record (one of {} loaded) and one of a key row (one of {}), \
                 one round trip each, then one transaction sent as one simple query, committed with \
                 synchronous_commit = {}: {audit}. Values are not decrypted",
                data.records.len(),
                data.keys.len(),
                if self.read_sync { "on" } else { "off" }
            ),
        }
    }
}

/// A database error with PostgreSQL's code and message.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Runs a transaction sent as one simple query; rolls back what it left open if it
/// failed. The rows it wrote, as PostgreSQL counts them.
async fn transaction(client: &Client, sql: &str) -> Result<u64, String> {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .iter()
            .map(|m| match m {
                SimpleQueryMessage::CommandComplete(n) => *n,
                _ => 0,
            })
            .sum()),
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK").await;
            Err(pg_error(&e))
        }
    }
}

/// Runs one baseline call on `conn`.
async fn raw_call(conn: &RawConn, call: RawCall) -> Result<Option<Vec<u8>>, String> {
    match call {
        RawCall::Tokenize(sql) => match transaction(&conn.client, &sql).await? {
            TOKENIZE_ROWS => Ok(None),
            n => Err(format!("tokenize: {n} rows written")),
        },
        RawCall::Detokenize { record, key, audit } => {
            let value = conn
                .client
                .query_opt(&conn.record, &[&record])
                .await
                .map_err(|e| pg_error(&e))?
                .ok_or("no such record")?
                .try_get::<_, Vec<u8>>(0)
                .map_err(|e| pg_error(&e))?;
            conn.client
                .query_opt(&conn.key, &[&key])
                .await
                .map_err(|e| pg_error(&e))?
                .ok_or("no such key")?;
            match transaction(&conn.client, &audit).await? {
                1 => Ok(Some(value)),
                n => Err(format!("detokenize: {n} audit index rows written")),
            }
        }
    }
}

async fn measure_raw(
    cfg: &Config,
    conns: &[Arc<RawConn>],
    data: &Arc<RawData>,
    baseline: Baseline,
    op: Op,
) -> Stats {
    let first_error = Arc::new(Mutex::new(None::<String>));
    let make = {
        let data = data.clone();
        move |rng: &mut Rng| baseline.call(op, rng, &data)
    };
    let call = {
        let first_error = first_error.clone();
        move |conn: Arc<RawConn>, call: RawCall| {
            let first_error = first_error.clone();
            async move { note_error(&first_error, raw_call(&conn, call).await.map(drop)) }
        }
    };
    let stats = drive(cfg.warmup(), cfg.window(), conns.to_vec(), make, call).await;
    report_first_error(&first_error, &format!("raw {}", op.name()));
    stats
}

// ---------------------------------------------------------------------------------
// Raw PostgreSQL behind HTTPS: the ceiling (child role)
// ---------------------------------------------------------------------------------

const RAW_HTTPS_DESCRIPTION: &str = "the baseline's statements (with the head row) behind the same \
     TLS and JSON: an axum server over axum-server + rustls with ring, as vault-server, that parses \
     the vault's request, runs the baseline's call on one of 32 pooled connections (the same TLS to \
     PostgreSQL) and answers in the vault's JSON once it committed; no authentication, no crypto";

/// The ceiling server's state.
#[derive(Debug)]
struct RawServer {
    data: RawData,
    conns: Mutex<Vec<Arc<RawConn>>>,
    free: tokio::sync::Semaphore,
    calls: AtomicU64,
}

impl RawServer {
    /// Runs `call` on a pooled connection.
    async fn run(&self, call: RawCall) -> Result<Option<Vec<u8>>, String> {
        let _permit = self.free.acquire().await.map_err(|e| e.to_string())?;
        let conn = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .ok_or("no free connection")?;
        let result = raw_call(&conn, call).await;
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(conn);
        result
    }

    fn rng(&self) -> Rng {
        Rng::new(self.calls.fetch_add(1, Ordering::Relaxed))
    }
}

/// `VAULT_BENCH_ROLE=raw-https replicas CERT KEY URL CA SHAPE`: the baseline with
/// its audit head row behind the vault server's TLS and JSON, on the baseline's
/// tables. Prints `{"url": …}` once listening.
fn raw_https_role() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [cert, key, url, ca, shape] = args.as_slice() else {
        eprintln!("raw-https role: expected CERT KEY URL CA SHAPE");
        return ExitCode::from(2);
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let setup = async {
        let shape: RowShape = serde_json::from_str(shape)?;
        let tls = pg_tls(Path::new(ca))?;
        let admin = pg_connect(url, &tls).await?;
        let data = RawData::load(&admin, shape).await?;
        let mut conns = Vec::with_capacity(CONNECTIONS);
        for _ in 0..CONNECTIONS {
            conns.push(Arc::new(RawConn::connect(url, &tls).await?));
        }
        Res::Ok(RawServer {
            data,
            conns: Mutex::new(conns),
            free: tokio::sync::Semaphore::new(CONNECTIONS),
            calls: AtomicU64::new(0),
        })
    };
    // The connections live on the runtime that made them: the server's.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("raw-https role: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = match runtime.block_on(setup) {
        Ok(state) => Arc::new(state),
        Err(e) => {
            eprintln!("raw-https role: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = axum::Router::new()
        .route(Op::Tokenize.path(), axum::routing::post(raw_https_tokenize))
        .route(
            Op::Detokenize.path(),
            axum::routing::post(raw_https_detokenize),
        )
        .with_state(state);
    match runtime.block_on(serve_tls(Path::new(cert), Path::new(key), app)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raw-https role: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn raw_https_tokenize(
    axum::extract::State(server): axum::extract::State<Arc<RawServer>>,
    axum::Json(body): axum::Json<TokenizeRequest>,
) -> Result<axum::Json<TokenizeResponse>, axum::http::StatusCode> {
    let mut tokens = Vec::with_capacity(body.items.len());
    for _ in &body.items {
        let (sql, token) = {
            let mut rng = server.rng();
            let sql = Baseline::ASKED.tokenize(&mut rng, &server.data);
            (sql, rng.token())
        };
        server
            .run(RawCall::Tokenize(sql))
            .await
            .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?;
        tokens.push(token);
    }
    Ok(axum::Json(TokenizeResponse { tokens }))
}

async fn raw_https_detokenize(
    axum::extract::State(server): axum::extract::State<Arc<RawServer>>,
    axum::Json(body): axum::Json<DetokenizeRequest>,
) -> Result<axum::Json<DetokenizeResponse>, axum::http::StatusCode> {
    let mut results = Vec::with_capacity(body.tokens.len());
    for token in body.tokens {
        let call = Baseline::ASKED.detokenize(&mut server.rng(), &server.data);
        let value = server
            .run(call)
            .await
            .map_err(|_| axum::http::StatusCode::INTERNAL_SERVER_ERROR)?
            .unwrap_or_default();
        // As long as the vault's values.
        let mut text = String::with_capacity(VALUE_LEN);
        for b in value.iter().cycle().take(VALUE_LEN / 2) {
            let _ = write!(text, "{b:02x}");
        }
        results.push(DetokenizeResult::Value {
            token,
            field: "note".to_owned(),
            value: text.into(),
            masked: false,
        });
    }
    Ok(axum::Json(DetokenizeResponse { results }))
}

// ---------------------------------------------------------------------------------
// CPU: who used the two cores
// ---------------------------------------------------------------------------------

/// The processes whose CPU time is sampled besides this one (the client).
#[derive(Debug)]
struct Processes {
    postmaster: u32,
    servers: Vec<(&'static str, u32)>,
}

/// CPU time in clock ticks, at one instant.
#[derive(Debug, Clone)]
struct CpuSample {
    client: u64,
    servers: Vec<(&'static str, u64)>,
    postgres: u64,
    machine: Machine,
}

/// Cores used, on average over a measurement (warm-up included).
#[derive(Debug, Clone, Default)]
struct CpuShare {
    client: f64,
    servers: Vec<(&'static str, f64)>,
    postgres: f64,
    /// Everything else on the machine (other processes, the kernel's own threads).
    other: f64,
    idle: f64,
}

/// The machine's CPU counters (`/proc/stat`, ticks).
#[derive(Debug, Clone, Copy)]
struct Machine {
    cores: usize,
    busy: u64,
    total: u64,
}

impl Machine {
    fn read() -> Res<Machine> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let mut lines = stat.lines();
        let first = lines.next().ok_or("/proc/stat is empty")?;
        let ticks: Vec<u64> = first
            .split_whitespace()
            .skip(1)
            .filter_map(|t| t.parse().ok())
            .collect();
        let total: u64 = ticks.iter().take(8).sum();
        // idle and iowait
        let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
        let cores = lines
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count();
        Ok(Machine {
            cores: cores.max(1),
            busy: total - idle,
            total,
        })
    }
}

/// A process's parent and CPU ticks (its own; with `children`, also those of its
/// children that ended and were reaped).
fn proc_stat(pid: u32, children: bool) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command, which may hold spaces, in parentheses.
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let ppid = u32::try_from(number(1)?).ok()?;
    let mut ticks = number(11)? + number(12)?;
    if children {
        ticks += number(13)? + number(14)?;
    }
    Some((ppid, ticks))
}

/// The postmaster of the backend `backend`.
fn postmaster_of(backend: u32) -> Res<u32> {
    proc_stat(backend, false)
        .map(|(ppid, _)| ppid)
        .ok_or_else(|| {
            "cannot read PostgreSQL's processes in /proc (is the database on this machine?)".into()
        })
}

impl Processes {
    fn sample(&self) -> Res<CpuSample> {
        let client = proc_stat(std::process::id(), false).map_or(0, |(_, t)| t);
        let servers = self
            .servers
            .iter()
            .map(|&(name, pid)| (name, proc_stat(pid, false).map_or(0, |(_, t)| t)))
            .collect();
        // The postmaster (with its reaped children: autovacuum workers) and every
        // process it started.
        let mut postgres = proc_stat(self.postmaster, true).map_or(0, |(_, t)| t);
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((ppid, ticks)) = proc_stat(pid, false)
                && ppid == self.postmaster
            {
                postgres += ticks;
            }
        }
        Ok(CpuSample {
            client,
            servers,
            postgres,
            machine: Machine::read()?,
        })
    }
}

impl CpuSample {
    /// The cores each used since `before`.
    fn since(&self, before: &CpuSample) -> CpuShare {
        let elapsed = self.machine.total.saturating_sub(before.machine.total) as f64
            / self.machine.cores as f64;
        let cores = |ticks: u64| ticks as f64 / elapsed.max(1.0);
        let client = cores(self.client.saturating_sub(before.client));
        let servers: Vec<(&'static str, f64)> = self
            .servers
            .iter()
            .zip(&before.servers)
            .map(|(&(name, after), &(_, before))| (name, cores(after.saturating_sub(before))))
            .collect();
        // A process that ended and was reaped meanwhile moves its time into the
        // postmaster's children's: the sum can only grow.
        let postgres = cores(self.postgres.saturating_sub(before.postgres));
        let busy = cores(self.machine.busy.saturating_sub(before.machine.busy));
        let known = client + postgres + servers.iter().map(|(_, c)| c).sum::<f64>();
        CpuShare {
            client,
            servers,
            postgres,
            other: (busy - known).max(0.0),
            idle: (self.machine.cores as f64 - busy).max(0.0),
        }
    }
}

impl CpuShare {
    fn to_json(&self) -> Value {
        let mut servers = serde_json::Map::new();
        for (name, cores) in &self.servers {
            servers.insert((*name).to_owned(), json!(cores));
        }
        json!({
            "client": self.client,
            "servers": servers,
            "postgres": self.postgres,
            "other": self.other,
            "idle": self.idle,
        })
    }

    /// Only the servers that did something.
    fn brief(&self) -> String {
        let mut text = format!("client {:.2}", self.client);
        for (name, cores) in &self.servers {
            if *cores >= 0.02 {
                let _ = write!(text, ", {name} {cores:.2}");
            }
        }
        let _ = write!(
            text,
            ", postgres {:.2}, other {:.2}, idle {:.2}",
            self.postgres, self.other, self.idle
        );
        text
    }
}

// ---------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------

/// The baseline that commits as durably as the vault on PostgreSQL, where every
/// commit is synchronous.
fn same_durability(op: Op) -> Target {
    match op {
        Op::Tokenize => Target::Raw,
        Op::Detokenize => Target::RawSynced,
    }
}

/// One target's medians over the rounds for one operation.
#[derive(Debug)]
struct Figure {
    op: Op,
    target: Target,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu: CpuShare,
    counters: Option<VaultCounters>,
    /// The median over the rounds of its requests/s ÷ the baseline's in the same
    /// round (none for the baseline).
    ratio: Option<f64>,
    /// For the vault, the same against the baseline of the vault's durability
    /// (detokenize: the read's audit rows synced).
    ratio_same_durability: Option<f64>,
}

/// Medians over the rounds.
#[derive(Debug)]
struct Summary {
    figures: Vec<Figure>,
    /// Per operation: the median over the rounds of two replicas ÷ one.
    scaling: Vec<(Op, f64)>,
}

impl Summary {
    fn of(samples: &[Sample]) -> Summary {
        let rps_in = |op: Op, target: Target, round: usize| -> Option<f64> {
            samples
                .iter()
                .find(|s| s.op == op && s.target == target && s.round == round)
                .map(|s| s.stats.rps)
        };
        // Per round, `target`'s requests/s ÷ `base`'s.
        let over = |op: Op, target: Target, base: Target| -> f64 {
            let per_round: Vec<f64> = samples
                .iter()
                .filter(|s| s.op == op && s.target == target)
                .filter_map(|s| Some(s.stats.rps / rps_in(op, base, s.round)?))
                .collect();
            median(&per_round)
        };
        let mut figures = Vec::new();
        let mut scaling = Vec::new();
        for op in Op::ALL {
            for &target in Target::of(op) {
                let ss: Vec<&Sample> = samples
                    .iter()
                    .filter(|s| s.op == op && s.target == target)
                    .collect();
                let med = |f: &dyn Fn(&Sample) -> f64| {
                    median(&ss.iter().map(|s| f(s)).collect::<Vec<_>>())
                };
                let servers = ss.first().map_or_else(Vec::new, |first| {
                    (0..first.cpu.servers.len())
                        .map(|i| (first.cpu.servers[i].0, med(&|s| s.cpu.servers[i].1)))
                        .collect()
                });
                let cpu = CpuShare {
                    client: med(&|s| s.cpu.client),
                    servers,
                    postgres: med(&|s| s.cpu.postgres),
                    other: med(&|s| s.cpu.other),
                    idle: med(&|s| s.cpu.idle),
                };
                let counter = |f: fn(&VaultCounters) -> f64| {
                    med(&|s| s.vault_counters.as_ref().map_or(f64::NAN, f))
                };
                let counters = ss
                    .first()
                    .and_then(|s| s.vault_counters)
                    .map(|_| VaultCounters {
                        keys_read: counter(|v| v.keys_read),
                        keys_written: counter(|v| v.keys_written),
                        synced_commits: counter(|v| v.synced_commits),
                    });
                figures.push(Figure {
                    op,
                    target,
                    rps: med(&|s| s.stats.rps),
                    p50_ms: med(&|s| s.stats.p50_ms),
                    p99_ms: med(&|s| s.stats.p99_ms),
                    cpu,
                    counters,
                    ratio: (target != Target::Raw).then(|| over(op, target, Target::Raw)),
                    ratio_same_durability: target
                        .is_vault()
                        .then(|| over(op, target, same_durability(op))),
                });
            }
            scaling.push((op, over(op, Target::TwoReplicas, Target::OneReplica)));
        }
        Summary { figures, scaling }
    }

    fn to_json(&self) -> Value {
        let mut out = serde_json::Map::new();
        for op in Op::ALL {
            let mut targets = serde_json::Map::new();
            for f in self.figures.iter().filter(|f| f.op == op) {
                targets.insert(
                    f.target.key().to_owned(),
                    json!({
                        "name": f.target.label(),
                        "rps": f.rps,
                        "p50_ms": f.p50_ms,
                        "p99_ms": f.p99_ms,
                        "ratio_to_baseline": f.ratio,
                        "ratio_to_baseline_of_same_durability": f.ratio_same_durability,
                        "cpu_cores": f.cpu.to_json(),
                        "vault_per_request": f.counters.map(VaultCounters::to_json),
                    }),
                );
            }
            let two_over_one = self.scaling.iter().find(|(o, _)| *o == op).map(|s| s.1);
            out.insert(
                op.name().to_owned(),
                json!({
                    "targets": targets,
                    "target_ratio": 0.5,
                    "two_replicas_over_one": two_over_one,
                }),
            );
        }
        Value::Object(out)
    }
}

fn sample_json(s: &Sample) -> Value {
    json!({
        "round": s.round + 1,
        "op": s.op.name(),
        "target": s.target.key(),
        "rps": s.stats.rps,
        "p50_ms": s.stats.p50_ms,
        "p99_ms": s.stats.p99_ms,
        "errors": s.stats.errors,
        "requests": s.stats.requests,
        "cpu_cores": s.cpu.to_json(),
        "vault_per_request": s.vault_counters.map(VaultCounters::to_json),
    })
}

fn print_sample(
    round: usize,
    op: Op,
    target: Target,
    s: &Stats,
    cpu: &CpuShare,
    counters: Option<&VaultCounters>,
) {
    println!(
        "  #{} {:<10} {:<28} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>7.2} ms  {} requests, {} errors",
        round + 1,
        op.name(),
        target.label(),
        s.rps,
        s.p50_ms,
        s.p99_ms,
        s.requests,
        s.errors
    );
    print!("     cores: {}", cpu.brief());
    if let Some(c) = counters {
        print!(
            "; vault per request: {:.2} keys read, {:.2} written, {:.3} synced commits",
            c.keys_read, c.keys_written, c.synced_commits
        );
    }
    println!();
}

fn print_report(cfg: &Config, summary: &Summary, shape: &RowShape, data: &RawData) {
    println!();
    println!(
        "Vault replicas on PostgreSQL over HTTPS vs raw PostgreSQL: {CONNECTIONS} connections, \
         {} s each, medians of {} rounds, {} records loaded",
        cfg.secs, cfg.rounds, cfg.records
    );
    println!(
        "operation  | target                       |    req/s |  p50 ms |  p99 ms |  ratio | durable | target | cores used"
    );
    println!("{}", "-".repeat(160));
    let times = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.2}x"));
    for f in &summary.figures {
        let (goal, verdict) = match f.target {
            Target::OneReplica | Target::TwoReplicas => {
                let met = [f.ratio, f.ratio_same_durability]
                    .iter()
                    .all(|r| r.is_some_and(|r| r >= 0.5));
                ("≥ 0.5", if met { "met" } else { "MISSED" })
            }
            Target::RawHttps => ("", "ceiling"),
            _ => ("", ""),
        };
        println!(
            "{:<10} | {:<28} | {:>8.0} | {:>7.2} | {:>7.2} | {:>6} | {:>7} | {:>6} | {} {}",
            f.op.name(),
            f.target.label(),
            f.rps,
            f.p50_ms,
            f.p99_ms,
            times(f.ratio),
            times(f.ratio_same_durability),
            goal,
            f.cpu.brief(),
            verdict
        );
    }
    for (op, two_over_one) in &summary.scaling {
        println!("{}: 2 replicas / 1 replica = {two_over_one:.2}", op.name());
    }
    println!(
        "ratio = requests/s ÷ the baseline's in the same round (median over rounds); durable: \
         the same against the baseline that commits as the vault does (every commit of the \
         vault on PostgreSQL is synchronous: for detokenize, the raw row with read events \
         synced). ceiling: the baseline's calls behind the same HTTPS and client; a vault doing \
         per call what the baseline does reaches this ratio and no more on this machine (the \
         vault groups its audit commits, so it can pass it)"
    );
    for op in Op::ALL {
        println!(
            "baseline {}: {}",
            op.name(),
            Baseline::ASKED.describe(op, shape, data)
        );
    }
    println!("read events synced: the same, committed with synchronous_commit = on");
    println!("no head row: the same, with the audit event numbered by a sequence instead");
    println!("behind HTTPS: {RAW_HTTPS_DESCRIPTION}");
}
