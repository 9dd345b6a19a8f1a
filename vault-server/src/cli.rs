//! The `vault-server` command line.
//!
//! ```text
//! vault-server --data-dir DIR [--listen ADDR] (--config FILE | --dev)
//! vault-server new-api-key
//! vault-server restore --from BACKUP --data-dir DIR (--config FILE | --dev)
//!     [--replace] [--danger-skip-erasure-journal]
//! vault-server change-root-key --data-dir DIR (--config FILE | --dev) --new-key-file FILE
//! vault-server migrate --from-data-dir DIR [--to URL] (--config FILE | --dev)
//!     [--ca-file FILE] [--schema NAME]
//! vault-server pseudonymize --from-data-dir DIR (--config FILE | --dev)
//!     --to-data-dir DIR [--to-root-key-file FILE] [--fields-config FILE]
//!     [--mapping-file FILE]
//! ```
//!
//! Everything is checked (configuration, TLS files, root key, the vault itself)
//! before the listener is bound; a problem ends with one clear line on stderr and
//! exit code 2.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use vault_core::Vault;

use crate::auth;
use crate::config::{self, ConfigError, ServerConfig};
use crate::dev::{self, DevInfo};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    name = "vault-server",
    version,
    about = "Personal-data vault over HTTPS",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Directory for the vault's data (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8200")]
    listen: SocketAddr,
    /// Address of the Prometheus metrics listener (plain HTTP, no key: keep it on
    /// loopback or a private network), or `off`.
    #[arg(long, value_name = "ADDR|off", default_value = "127.0.0.1:9464", value_parser = metrics_listen)]
    metrics_listen: MetricsListen,
    /// Configuration file (TOML): TLS, root key source, API keys, limits.
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Development mode: creates a root key file, a self-signed certificate and an
    /// admin API key under DATA_DIR/dev. Not for production.
    #[arg(long)]
    dev: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where `/metrics` is served.
#[derive(Debug, Clone, Copy)]
enum MetricsListen {
    At(SocketAddr),
    Off,
}

fn metrics_listen(text: &str) -> Result<MetricsListen, String> {
    if text == "off" {
        return Ok(MetricsListen::Off);
    }
    text.parse()
        .map(MetricsListen::At)
        .map_err(|_| "an address (IP:PORT) or `off`".to_owned())
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a new random API key and the hash to put in the configuration.
    NewApiKey,
    /// Restores a backup into the data directory (the server stopped), replaying
    /// every erasure made since from the erasure journal beside the backups, and
    /// prints one JSON line.
    Restore(RestoreArgs),
    /// Reseals the keyring under a new root key (the server stopped). Old copies
    /// of the data directory and old backups then open only with the old key.
    ChangeRootKey(ChangeRootKeyArgs),
    /// Copies the vault of a data directory into PostgreSQL, keys still sealed (the
    /// server stopped), checks the copy, and prints one JSON line.
    Migrate(MigrateArgs),
    /// Builds a staging vault in a new data directory: every token of production
    /// resolves there to a fake value of the same shape, under a pseudonymous
    /// subject id (run it on a restored backup, or with production stopped).
    /// Progress on stderr, then one JSON line.
    Pseudonymize(PseudonymizeArgs),
}

#[derive(Debug, clap::Args)]
struct PseudonymizeArgs {
    /// Production's data directory.
    #[arg(long, value_name = "DIR")]
    from_data_dir: PathBuf,
    /// Production's configuration file (root key, purposes, retention).
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// Production's development set-up under DIR/dev; the staging vault gets one
    /// of its own under its data directory (serve it with --dev).
    #[arg(long)]
    dev: bool,
    /// The staging vault's data directory (new, or without a vault).
    #[arg(long, value_name = "DIR")]
    to_data_dir: PathBuf,
    /// The staging vault's root key (32 bytes or 64 hex digits), created (mode
    /// 0600) if missing. Required with --config.
    #[arg(long, value_name = "FILE")]
    to_root_key_file: Option<PathBuf>,
    /// A TOML file of fake kinds per field: `[fields]` then `notes = "text"`
    /// (kinds: email, name, phone, iban, date, card, text, shape). Others by name.
    #[arg(long, value_name = "FILE")]
    fields_config: Option<PathBuf>,
    /// Writes each subject's production reference and staging id here (mode
    /// 0600; new file). Without it the mapping is printed nowhere.
    #[arg(long, value_name = "FILE")]
    mapping_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct MigrateArgs {
    /// The data directory the server ran with.
    #[arg(long, value_name = "DIR")]
    from_data_dir: PathBuf,
    /// The PostgreSQL URL to copy into (default: [storage] url of the
    /// configuration). A password here is visible to other local users in the
    /// process list: prefer a configuration with url_env.
    #[arg(long, value_name = "URL")]
    to: Option<String>,
    /// The server's configuration file (root key, purposes, backups).
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// The development set-up under DIR/dev.
    #[arg(long)]
    dev: bool,
    /// PEM certificates that sign PostgreSQL's TLS certificate (with --to).
    #[arg(long, value_name = "FILE", requires = "to")]
    ca_file: Option<PathBuf>,
    /// The schema to create the vault in (with --to; default `vault`).
    #[arg(long, value_name = "NAME", requires = "to")]
    schema: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ChangeRootKeyArgs {
    /// The data directory the server runs with.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The server's configuration file (it names the current root key).
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// The development set-up under DATA_DIR/dev (its key file is replaced).
    #[arg(long)]
    dev: bool,
    /// The new root key: 32 bytes or 64 hex digits. Never on the command line.
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
}

#[derive(Debug, clap::Args)]
struct RestoreArgs {
    /// The backup's directory (`path` in `GET /v1/admin/backups`).
    #[arg(long, value_name = "BACKUP")]
    from: PathBuf,
    /// The data directory the server runs with.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The server's configuration file (root key, purposes, retention).
    #[arg(long, value_name = "FILE", conflicts_with = "dev")]
    config: Option<PathBuf>,
    /// The development set-up under DATA_DIR/dev.
    #[arg(long)]
    dev: bool,
    /// Replace the vault the data directory holds.
    #[arg(long)]
    replace: bool,
    /// Restore even if the erasure journal is missing or fails authentication:
    /// subjects erased since the backup may come back.
    #[arg(long)]
    danger_skip_erasure_journal: bool,
}

/// Runs the command line; the return value is the process's exit code.
pub fn main() -> ExitCode {
    if let Err(e) = forbid_core_dumps() {
        eprintln!("vault-server: cannot turn core dumps off: {e}");
        return ExitCode::FAILURE;
    }
    let args = Args::parse();
    match &args.command {
        Some(Command::NewApiKey) => return new_api_key(),
        Some(Command::Restore(restore)) => return restore_backup(restore),
        Some(Command::ChangeRootKey(change)) => return report_line(change_root_key(change)),
        Some(Command::Migrate(migrate)) => return report_line(migrate_vault(migrate)),
        Some(Command::Pseudonymize(args)) => return report_line(pseudonymize(args)),
        None => {}
    }
    init_logging();
    match prepare(&args) {
        Ok(prepared) => run(prepared),
        Err(e) => {
            eprintln!("vault-server: {e}");
            ExitCode::from(2)
        }
    }
}

/// Makes the process not dumpable: a crash (a fault in the storage engine's C++, an I/O error
/// under a memory map, an abort) then writes no core file, which would hold the root
/// key, subject keys and values in clear; nor can another process of the same user
/// attach to it to read them.
fn forbid_core_dumps() -> std::io::Result<()> {
    use rustix::process::{DumpableBehavior, set_dumpable_behavior};
    set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

fn new_api_key() -> ExitCode {
    match auth::generate_key() {
        Ok((key, hash)) => {
            let line = serde_json::json!({ "api_key": key.as_str(), "hash": hash.to_string() });
            println!("{line}");
            eprintln!(
                "Give api_key to the service (it is shown only now); put hash in the \
                 server's [[api_keys]] entry."
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vault-server: cannot generate a key: {e}");
            ExitCode::FAILURE
        }
    }
}

fn restore_backup(args: &RestoreArgs) -> ExitCode {
    report_line(restore_with(args))
}

/// One JSON line on stdout, or one line on stderr and exit code 2.
fn report_line(result: Result<serde_json::Value, ConfigError>) -> ExitCode {
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vault-server: {e}");
            ExitCode::from(2)
        }
    }
}

/// The configuration a command run with the server stopped needs: the file's, or
/// the development set-up's.
fn offline_config(
    config: Option<&std::path::Path>,
    dev: bool,
    data_dir: &std::path::Path,
    command: &str,
) -> Result<ServerConfig, ConfigError> {
    match (config, dev) {
        (Some(path), false) => config::load(path, data_dir),
        (None, true) => Ok(dev::prepare(data_dir)?.0),
        _ => Err(ConfigError::new(format!(
            "either --config FILE or --dev is required (see vault-server {command} --help)"
        ))),
    }
}

fn change_root_key(args: &ChangeRootKeyArgs) -> Result<serde_json::Value, ConfigError> {
    let data_dir = &args.data_dir;
    let config = offline_config(
        args.config.as_deref(),
        args.dev,
        data_dir,
        "change-root-key",
    )?;
    config::check_private(&args.new_key_file)?;
    let new = config::read_root_key_file(&args.new_key_file)?;
    let options = config
        .vault_options()
        .create_if_missing(false)
        .background_worker(false);
    // Already done (a rerun, or a change whose key-file update was cut short): the
    // vault opens with the new key.
    let changed = match config.open_raw(&new, options.clone()) {
        Ok(vault) => {
            vault
                .close()
                .map_err(|e| ConfigError::new(format!("cannot close the vault: {e}")))?;
            false
        }
        Err(vault_core::Error::WrongRootKey) => {
            let vault = config.open_vault_with(&config.root_key, options)?;
            vault
                .change_root_key(&new)
                .map_err(|e| ConfigError::new(format!("cannot change the root key: {e}")))?;
            vault
                .close()
                .map_err(|e| ConfigError::new(format!("cannot close the vault: {e}")))?;
            true
        }
        Err(e) => return Err(config.open_error(e)),
    };
    if args.dev {
        dev::replace_root_key(data_dir, &new)?;
    } else {
        eprintln!(
            "vault-server: the vault now opens only with the new root key: point [root_key] \
             in the configuration at it before starting the server, and destroy the old key \
             once no old copy or backup must be readable"
        );
    }
    Ok(serde_json::json!({
        "root_key_changed": true,
        "already_changed": !changed,
        "data_dir": data_dir.display().to_string(),
    }))
}

fn pseudonymize(args: &PseudonymizeArgs) -> Result<serde_json::Value, ConfigError> {
    let config = offline_config(
        args.config.as_deref(),
        args.dev,
        &args.from_data_dir,
        "pseudonymize",
    )?;
    crate::staging::build(&crate::staging::StagingArgs {
        source: &config,
        to_data_dir: &args.to_data_dir,
        root_key_file: args.to_root_key_file.as_deref(),
        dev: args.dev,
        fields_config: args.fields_config.as_deref(),
        mapping_file: args.mapping_file.as_deref(),
    })
}

fn migrate_vault(args: &MigrateArgs) -> Result<serde_json::Value, ConfigError> {
    let data_dir = &args.from_data_dir;
    let config = offline_config(args.config.as_deref(), args.dev, data_dir, "migrate")?;
    let target = match (&args.to, &config.storage) {
        (Some(url), _) => {
            let mut target = vault_core::PostgresConfig::new(url.clone());
            if let Some(ca) = &args.ca_file {
                target = target.ca_file(ca);
            }
            if let Some(schema) = &args.schema {
                target = target.schema(schema.clone());
            }
            target
        }
        (None, config::Storage::Postgres(target)) => target.clone(),
        (None, config::Storage::Directory(_)) => {
            return Err(ConfigError::new(
                "--to URL is required unless the configuration's [storage] is postgres",
            ));
        }
    };
    let report = vault_core::migrate_to_postgres(
        &config.vault_dir,
        &target,
        &config.root_key,
        config.vault_options(),
    )
    .map_err(|e| ConfigError::new(format!("migration refused or failed: {e}")))?;
    Ok(serde_json::json!({
        "migrated": true,
        "from": config.vault_dir.display().to_string(),
        "schema": report.schema,
        "rows": report.rows,
        "records_compared": report.records_compared,
    }))
}

fn restore_with(args: &RestoreArgs) -> Result<serde_json::Value, ConfigError> {
    let data_dir = &args.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ConfigError::new(format!("cannot create {}: {e}", data_dir.display())))?;
    let config = offline_config(args.config.as_deref(), args.dev, data_dir, "restore")?;
    if matches!(config.storage, config::Storage::Postgres(_)) {
        return Err(ConfigError::new(
            "restore restores a vault in a data directory; a vault on PostgreSQL is restored \
             with the cluster's own tools (see the README)",
        ));
    }
    let options = vault_core::RestoreOptions::new()
        .replace(args.replace)
        .danger_skip_erasure_journal(args.danger_skip_erasure_journal);
    let report = vault_core::restore(
        &args.from,
        &config.vault_dir,
        &config.root_key,
        config.vault_options(),
        options,
    )
    .map_err(|e| ConfigError::new(format!("restore refused: {e}")))?;
    Ok(serde_json::json!({
        "backup": report.backup,
        "backup_created_at": report.backup_created_at,
        "erasures_replayed": report.erasures_replayed,
        "erasure_journal_entries": report.journal_entries,
        "erasure_journal_entries_skipped": report.journal_entries_skipped,
        "erasure_journal_unverified": report.journal_unverified,
        "data_dir": data_dir.display().to_string(),
    }))
}

/// Structured JSON logs on stderr; the level from `RUST_LOG` (default `info`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Removes the variables the root key came from, so that nothing started later (a
/// child process, a crash reporter) inherits or prints them.
#[allow(unsafe_code)]
fn forget_root_key_variables(config: &ServerConfig) {
    for var in &config.root_key_variables {
        // SAFETY: called from `prepare` on the main thread, before the vault, the
        // runtime or the log writer start a thread: nothing reads the environment
        // concurrently.
        unsafe { std::env::remove_var(var) };
    }
}

/// Everything checked and opened, ready to serve.
struct Prepared {
    config: ServerConfig,
    dev_info: Option<DevInfo>,
    tls: Option<Arc<rustls::ServerConfig>>,
    vault: Vault,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
}

/// Configuration, vault, listener: everything that can fail on a misconfiguration.
fn prepare(args: &Args) -> Result<Prepared, ConfigError> {
    let data_dir = args
        .data_dir
        .as_ref()
        .ok_or_else(|| ConfigError::new("--data-dir is required (see vault-server --help)"))?;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| ConfigError::new(format!("cannot create {}: {e}", data_dir.display())))?;
    // Absolute, so that what is printed (certificate path, data dir) works anywhere.
    let data_dir = &std::fs::canonicalize(data_dir)
        .map_err(|e| ConfigError::new(format!("cannot resolve {}: {e}", data_dir.display())))?;
    let (config, dev_info) = match (&args.config, args.dev) {
        (Some(path), false) => (config::load(path, data_dir)?, None),
        (None, true) => {
            let (config, info) = dev::prepare(data_dir)?;
            (config, Some(info))
        }
        _ => {
            return Err(ConfigError::new(
                "either --config FILE or --dev is required (see vault-server --help)",
            ));
        }
    };
    forget_root_key_variables(&config);
    let tls = match &config.transport {
        config::Transport::Tls { cert_pem, key_pem } => {
            Some(Arc::new(crate::serve::tls_config(cert_pem, key_pem)?))
        }
        config::Transport::InsecurePlainHttp => None,
    };
    let vault = config.open_vault()?;
    let listener = TcpListener::bind(args.listen)
        .map_err(|e| ConfigError::new(format!("cannot listen on {}: {e}", args.listen)))?;
    let metrics_listener = match args.metrics_listen {
        MetricsListen::At(addr) => Some(TcpListener::bind(addr).map_err(|e| {
            ConfigError::new(format!(
                "cannot listen for metrics on {addr}: {e} (--metrics-listen ADDR|off)"
            ))
        })?),
        MetricsListen::Off => None,
    };
    // Warnings only once nothing can refuse the start: a refused start says one line.
    if dev_info.is_some() {
        warn_dev_mode(data_dir);
    }
    if tls.is_none() {
        tracing::warn!(
            "INSECURE: serving plain HTTP (insecure_plain_http = true); values and API keys cross the network in the clear"
        );
    }
    if let MetricsListen::At(addr) = args.metrics_listen
        && !addr.ip().is_loopback()
    {
        tracing::warn!(
            %addr,
            "metrics are served without TLS or API key to anyone who can reach this address"
        );
    }
    Ok(Prepared {
        config,
        dev_info,
        tls,
        vault,
        listener,
        metrics_listener,
    })
}

fn warn_dev_mode(data_dir: &std::path::Path) {
    let dev = data_dir.join("dev");
    eprintln!(
        "\n\
         ************************************************************************\n\
         *  DEVELOPMENT MODE — NOT FOR PRODUCTION                               *\n\
         *  The root key sits in a file next to the data ({}),\n\
         *  the TLS certificate is self-signed, and the admin API key is kept\n\
         *  in clear. Anyone who can read the data directory can read the vault.\n\
         ************************************************************************\n",
        dev.join("root.key").display()
    );
}

fn run(prepared: Prepared) -> ExitCode {
    let Prepared {
        config,
        dev_info,
        tls,
        vault,
        listener,
        metrics_listener,
    } = prepared;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vault-server")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vault-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("vault-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() || ip.is_loopback() => "127.0.0.1".to_owned(),
        IpAddr::V6(ip) if ip.is_unspecified() || ip.is_loopback() => "[::1]".to_owned(),
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let url = format!("{scheme}://{host}:{}", addr.port());
    let metrics_url = metrics_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|addr| format!("http://{addr}/metrics"));
    tracing::info!(url = %url, metrics_url = metrics_url.as_deref(), api_keys = config.api_keys.len(), "vault-server listening");
    // One JSON line on stdout for scripts: where to connect, and in dev mode what
    // to trust and which key to use.
    let line = match &dev_info {
        Some(info) => serde_json::json!({
            "url": url,
            "metrics_url": metrics_url,
            "ca_cert": info.ca_cert,
            "api_key": info.api_key.as_str(),
            "data_dir": config.vault_dir.parent(),
        }),
        None => serde_json::json!({ "url": url, "metrics_url": metrics_url }),
    };
    println!("{line}");
    let ServerConfig {
        api_keys,
        limits,
        audit_head_every,
        ..
    } = config;
    let served = runtime.block_on(crate::serve::serve(
        vault,
        api_keys,
        limits,
        tls,
        listener,
        metrics_listener,
        audit_head_every,
    ));
    // Requests still running when the grace period ended may finish and log while
    // the runtime shuts down, after `serve`'s flush of the access log.
    drop(runtime);
    crate::access_log::flush();
    match served {
        Ok(()) => {
            tracing::info!("vault-server stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "vault-server failed");
            eprintln!("vault-server: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::process::{DumpableBehavior, dumpable_behavior};

    #[test]
    fn core_dumps_are_turned_off() -> std::io::Result<()> {
        // A test process is dumpable unless its environment says otherwise.
        let before = dumpable_behavior()?;
        forbid_core_dumps()?;
        assert_eq!(dumpable_behavior()?, DumpableBehavior::NotDumpable);
        assert_ne!(before, DumpableBehavior::NotDumpable, "nothing was changed");
        Ok(())
    }
}
