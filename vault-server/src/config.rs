//! The server's configuration: a TOML file (or `--dev`), checked completely before
//! anything opens or listens.
//!
//! ```toml
//! [tls]
//! cert = "/etc/pii-vault/tls/cert.pem"
//! key = "/etc/pii-vault/tls/key.pem"
//!
//! [root_key]
//! file = "/etc/pii-vault/root.key"          # or: env = "VAULT_ROOT_KEY"
//!                                           # or: passphrase_env = "VAULT_PASSPHRASE"
//! [limits]                                  # all optional; defaults shown
//! max_body_bytes = 8388608
//! max_value_bytes = 65536
//! max_batch = 1000
//! request_timeout_ms = 10000
//! max_concurrent_requests = 512
//! max_response_bytes = 33554432
//! export_page = 128                         # records and events per export page
//! failed_auth_per_sec = 1.0                 # failed authentications per client address…
//! failed_auth_burst = 20                    # …and at once; then 429 for that address
//!
//! [vault]                                   # optional
//! purge_delay_secs = 900                    # 0 purges at once on erase
//! audit_retention_days = 730                # audit events kept (default: forever)
//! sync_read_events = false                  # fsync each read's audit event (default: within 100 ms)
//! sync_gather_us = 500                      # concurrent writes wait this long to share a WAL sync (0-100000)
//! block_cache_mib = 256                     # memory for cached blocks of the vault's files (1-1048576)
//!
//! [[api_keys]]
//! name = "billing"
//! hash = "blake3:…"                         # from `vault-server new-api-key`
//! scopes = ["tokenize", "detokenize"]
//! purposes = ["invoicing"]
//! rate_per_sec = 200                        # optional: items a second (a batch of n costs n)
//! burst = 1000                              # optional: items at once (default: rate_per_sec)
//! ```
//!
//! The root key is never a command-line argument: a file (32 raw bytes, or 64 hex
//! digits), an environment variable holding 64 hex digits, or an environment variable
//! holding a passphrase (Argon2id).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use vault_core::{
    BackupOptions, LawfulBasis, Limits, Mask, PurgePolicy, Purpose, RootKey, VaultOptions,
};
use zeroize::Zeroizing;

use crate::auth::{self, ApiKey, ApiKeys, KeyHash, Purposes, Scope};
use crate::throttle::RateLimit;

/// A configuration problem, reported before the server starts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

/// The configuration file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// TLS certificate and key. Required unless plain HTTP is explicitly chosen.
    pub tls: Option<TlsFiles>,
    /// Serve plain HTTP instead of HTTPS. Only behind a TLS-terminating proxy on the
    /// same host: anything else sends personal data and API keys in the clear.
    #[serde(default)]
    pub insecure_plain_http: bool,
    /// Where the root key comes from.
    pub root_key: Option<RootKeySource>,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Vault options.
    #[serde(default)]
    pub vault: VaultConfig,
    /// The API keys.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// The purposes of processing.
    #[serde(default)]
    pub purposes: Vec<PurposeConfig>,
    /// How masked views show each field (`"*"`: fields without their own).
    #[serde(default)]
    pub masks: BTreeMap<String, String>,
    /// Retention period per field, in days.
    #[serde(default)]
    pub retention_days: BTreeMap<String, u64>,
    /// Backups and the erasure journal.
    pub backup: Option<BackupConfig>,
    /// Where the vault's data lives: the data directory (default), or PostgreSQL.
    #[serde(default)]
    pub storage: StorageConfig,
}

/// `[storage]`, as written. (Its `Debug` leaves out the URL, which may hold a
/// password.)
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `"rocksdb"` (embedded, in the data directory; the default) or `"postgres"`.
    #[serde(default)]
    pub backend: Backend,
    /// PostgreSQL: a libpq URL, several hosts allowed
    /// (`postgresql://vault@db1:5432,db2:5432/vault?target_session_attrs=read-write`).
    pub url: Option<String>,
    /// PostgreSQL: the environment variable holding the URL instead (it may hold a
    /// password); removed from the environment once read.
    pub url_env: Option<String>,
    /// PostgreSQL: connections kept at most (1-1024; 16 if unset).
    pub pool_size: Option<usize>,
    /// PostgreSQL: a PEM file of the certificates that sign the database's TLS
    /// certificate (relative to the configuration file's directory); the Mozilla
    /// roots if unset. `sslmode=disable` in the URL turns TLS off.
    pub ca_file: Option<PathBuf>,
    /// PostgreSQL: the schema of the vault's tables (`vault` if unset).
    pub schema: Option<String>,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("backend", &self.backend)
            .field("url_env", &self.url_env)
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// The storage backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Embedded, in the data directory.
    #[default]
    Rocksdb,
    /// A PostgreSQL database shared by any number of replicas.
    Postgres,
}

/// Where the server's vault lives, checked.
#[derive(Debug, Clone)]
pub enum Storage {
    /// In this directory (under the data directory).
    Directory(PathBuf),
    /// In PostgreSQL.
    Postgres(vault_core::PostgresConfig),
}

/// `[backup]`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupConfig {
    /// The backup directory (relative to the configuration file's directory).
    pub dir: PathBuf,
    /// Backups kept (1-1000; 7 if unset).
    pub keep: Option<usize>,
    /// How often backups are taken (by cron or a timer calling the API), in hours:
    /// it dates when erased subjects leave the backups.
    pub every_hours: Option<u64>,
}

/// A purpose of processing, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurposeConfig {
    /// Its name (1-64 of a-z, 0-9, '_', '-', '.').
    pub name: String,
    /// Its lawful basis: consent, contract, legal_obligation, vital_interests,
    /// public_task, legitimate_interests.
    pub basis: String,
    /// The fields it may reveal; all when absent.
    pub fields: Option<Vec<String>>,
    /// Masked values only.
    #[serde(default)]
    pub masked: bool,
}

/// PEM files of the server's certificate chain and private key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// Exactly one of the three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootKeySource {
    /// A file holding 32 raw bytes or 64 hex digits.
    pub file: Option<PathBuf>,
    /// The name of an environment variable holding 64 hex digits.
    pub env: Option<String>,
    /// The name of an environment variable holding a passphrase.
    pub passphrase_env: Option<String>,
    /// Accept a key file that others than its owner may read. Insecure: any
    /// process of those users can read the root key.
    #[serde(default)]
    pub insecure_key_file_readable_by_others: bool,
}

/// Request limits (see [`Limits`] for the vault's own).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest value, in bytes.
    pub max_value_bytes: usize,
    /// Most items (values or tokens) in one request.
    pub max_batch: usize,
    /// How long a request may take, in milliseconds.
    pub request_timeout_ms: u64,
    /// Requests served at once; beyond, requests are refused with 429.
    pub max_concurrent_requests: usize,
    /// Largest detokenize answer, in bytes (estimated before it is encoded): beyond,
    /// 413 `response_too_large`.
    pub max_response_bytes: usize,
    /// Most records and audit events in one page of an export (a request's `limit`
    /// may ask for fewer).
    pub export_page: usize,
    /// Failed authentications a client address may make per second on average…
    pub failed_auth_per_sec: f64,
    /// …and at once; beyond, its requests are refused with 429 before any key is
    /// looked at.
    pub failed_auth_burst: u32,
}

impl LimitsConfig {
    /// The vault's own limits, from these: values and batches as configured, subject
    /// ids and field names at the vault's defaults.
    pub fn vault_limits(&self) -> Limits {
        Limits {
            max_value_len: self.max_value_bytes,
            max_batch: self.max_batch,
            ..Limits::default()
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 8 * 1024 * 1024,
            max_value_bytes: 64 * 1024,
            max_batch: 1000,
            request_timeout_ms: 10_000,
            max_concurrent_requests: 512,
            max_response_bytes: 32 * 1024 * 1024,
            // 128 values at the default 64 KiB limit fit the default answer cap.
            export_page: 128,
            failed_auth_per_sec: 1.0,
            failed_auth_burst: 20,
        }
    }
}

/// Vault options.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// Longest delay between an erasure and the purge of its bytes, in seconds; 0
    /// purges before the erase call returns.
    pub purge_delay_secs: u64,
    /// How long audit events are kept, in days (1-36500); kept forever if unset.
    pub audit_retention_days: Option<u64>,
    /// Sync each read's audit event before answering (default: synced within 100 ms;
    /// written before answering either way).
    pub sync_read_events: bool,
    /// How long concurrent writes wait for more to share a WAL sync, in
    /// microseconds (0-100 000; [`vault_core::DEFAULT_SYNC_GATHER`] if unset); a
    /// lone writer waits at most once, after concurrent ones.
    pub sync_gather_us: Option<u64>,
    /// Memory for the storage engine's cache of the vault's file blocks, in MiB (1-1 048 576;
    /// `vault_core::internal::SERVER_BLOCK_CACHE`, 256 MiB, if unset).
    pub block_cache_mib: Option<u64>,
    /// How often the server logs the audit trail's head (sequence number and MAC),
    /// in seconds, for a log shipper to keep outside the vault; 0: never.
    pub audit_head_log_secs: u64,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            purge_delay_secs: 15 * 60,
            audit_retention_days: None,
            sync_read_events: false,
            sync_gather_us: None,
            block_cache_mib: None,
            audit_head_log_secs: DEFAULT_AUDIT_HEAD_LOG_SECS,
        }
    }
}

/// The audit head is logged every 5 minutes unless configured.
pub const DEFAULT_AUDIT_HEAD_LOG_SECS: u64 = 300;

/// One API key, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A name for logs (e.g. the service holding the key).
    pub name: String,
    /// `blake3:` + 64 hex digits, from `vault-server new-api-key`.
    pub hash: String,
    /// Scope names.
    pub scopes: Vec<String>,
    /// Purposes it may detokenize for; `["*"]` for any declared one.
    #[serde(default)]
    pub purposes: Vec<String>,
    /// Masked values only, whatever the purpose allows.
    #[serde(default)]
    pub masked: bool,
    /// Items (values to tokenize, tokens to detokenize; other requests count one)
    /// per second on average; unlimited when absent.
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// Items at once above the average (default: one second's worth, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// How the server listens. (`Debug` shows no key.)
#[derive(Clone)]
pub enum Transport {
    /// HTTPS with this certificate chain and key (PEM bytes).
    Tls {
        /// Certificate chain, PEM.
        cert_pem: Vec<u8>,
        /// Private key, PEM.
        key_pem: Zeroizing<Vec<u8>>,
    },
    /// Plain HTTP (chosen explicitly, insecure).
    InsecurePlainHttp,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tls { cert_pem, .. } => f
                .debug_struct("Tls")
                .field("cert_pem_bytes", &cert_pem.len())
                .field("key_pem", &"[REDACTED]")
                .finish(),
            Transport::InsecurePlainHttp => f.write_str("InsecurePlainHttp"),
        }
    }
}

/// Everything the server needs, checked.
#[derive(Debug)]
pub struct ServerConfig {
    /// The vault's directory (used when the storage is the directory).
    pub vault_dir: PathBuf,
    /// Where the vault lives.
    pub storage: Storage,
    /// The root key.
    pub root_key: RootKey,
    /// HTTPS or (explicitly) plain HTTP.
    pub transport: Transport,
    /// API keys.
    pub api_keys: ApiKeys,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Erasure purge policy.
    pub purge: PurgePolicy,
    /// The declared purposes.
    pub purposes: Vec<Purpose>,
    /// Masks per field, and the default (`"*"`).
    pub masks: Vec<(String, Mask)>,
    /// The mask of fields without their own.
    pub default_mask: Option<Mask>,
    /// Retention period per field.
    pub retention: Vec<(String, Duration)>,
    /// How long audit events are kept (forever if `None`).
    pub audit_retention: Option<Duration>,
    /// Sync each read's audit event before answering.
    pub sync_read_events: bool,
    /// How long concurrent writes wait for more to share a WAL sync.
    pub sync_gather: Duration,
    /// Memory for the storage engine's block cache, in bytes.
    pub block_cache_bytes: usize,
    /// Backups and the erasure journal, if configured.
    pub backups: Option<BackupOptions>,
    /// The environment variables the root key (and the PostgreSQL URL) came from,
    /// to be removed from the process environment.
    pub root_key_variables: Vec<String>,
    /// How often the audit head is logged (`None`: never).
    pub audit_head_every: Option<Duration>,
}

impl ServerConfig {
    /// The vault's own limits, from the request limits.
    pub fn vault_limits(&self) -> Limits {
        self.limits.vault_limits()
    }

    /// Opens the vault where the configuration says, with its options.
    pub fn open_vault(&self) -> Result<vault_core::Vault, ConfigError> {
        self.open_vault_with(&self.root_key, self.vault_options())
    }

    /// Opens the vault where the configuration says, with this key and options.
    /// A refusal is one line naming where the vault is.
    pub fn open_vault_with(
        &self,
        root: &RootKey,
        options: VaultOptions,
    ) -> Result<vault_core::Vault, ConfigError> {
        self.open_raw(root, options).map_err(|e| self.open_error(e))
    }

    /// [`open_vault_with`](Self::open_vault_with), with the vault's own error.
    pub fn open_raw(
        &self,
        root: &RootKey,
        options: VaultOptions,
    ) -> Result<vault_core::Vault, vault_core::Error> {
        match &self.storage {
            Storage::Directory(dir) => vault_core::Vault::open(dir, root, options),
            Storage::Postgres(pg) => vault_core::Vault::open_postgres(pg, root, options),
        }
    }

    /// A vault's refusal to open, as one line naming where the vault is.
    pub fn open_error(&self, e: vault_core::Error) -> ConfigError {
        match e {
            // Names the directory itself; most likely another vault-server.
            vault_core::Error::AlreadyOpen { .. } => ConfigError::new(e.to_string()),
            e => ConfigError::new(format!(
                "cannot open the vault {}: {e}",
                self.storage_name()
            )),
        }
    }

    /// Where the vault is, for messages: its directory, or its PostgreSQL schema.
    pub fn storage_name(&self) -> String {
        match &self.storage {
            Storage::Directory(dir) => format!("in {}", dir.display()),
            Storage::Postgres(pg) => format!("in PostgreSQL (schema {})", pg.schema_name()),
        }
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms)
    }

    /// The vault's options: limits, purge policy, purposes and masks.
    pub fn vault_options(&self) -> VaultOptions {
        let mut options = VaultOptions::default()
            .limits(self.vault_limits())
            .purge_policy(self.purge)
            .statistics(true);
        for purpose in &self.purposes {
            options = options.purpose(purpose.clone());
        }
        for (field, mask) in &self.masks {
            options = options.field_mask(field.clone(), *mask);
        }
        if let Some(mask) = self.default_mask {
            options = options.default_mask(mask);
        }
        for (field, period) in &self.retention {
            options = options.retention(field.clone(), *period);
        }
        if let Some(period) = self.audit_retention {
            options = options.audit_retention(period);
        }
        if let Some(backups) = &self.backups {
            options = options.backups(backups.clone());
        }
        options
            .sync_read_events(self.sync_read_events)
            .sync_gather(self.sync_gather)
            .block_cache_bytes(self.block_cache_bytes)
    }
}

/// Reads and checks a configuration file.
pub fn load(path: &Path, data_dir: &Path) -> Result<ServerConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
    // The message and where, not the quoted line: that could hold a secret (the
    // PostgreSQL URL's password).
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                format!(" (line {line})")
            })
            .unwrap_or_default();
        ConfigError::new(format!("{}{at}: {}", path.display(), e.message()))
    })?;
    resolve(file, data_dir, path.parent().unwrap_or(Path::new(".")))
}

/// Checks a parsed configuration; relative paths are relative to `base`.
pub fn resolve(
    file: FileConfig,
    data_dir: &Path,
    base: &Path,
) -> Result<ServerConfig, ConfigError> {
    let limits = check_limits(file.limits)?;
    let transport = match (file.tls, file.insecure_plain_http) {
        (Some(_), true) => {
            return Err(ConfigError::new(
                "[tls] and insecure_plain_http = true are both set; choose one",
            ));
        }
        (Some(tls), false) => read_tls(&base.join(&tls.cert), &base.join(&tls.key))?,
        (None, true) => Transport::InsecurePlainHttp,
        (None, false) => {
            return Err(ConfigError::new(
                "no [tls] section: the server serves HTTPS only (set cert and key), \
                 unless insecure_plain_http = true is set explicitly",
            ));
        }
    };
    let (root_key, root_key_variables) = match file.root_key {
        Some(source) => (read_root_key(&source, base)?, root_key_variables(&source)),
        None => return Err(ConfigError::new("no [root_key] section")),
    };
    let purposes = check_purposes(&file.purposes)?;
    let (masks, default_mask) = check_masks(&file.masks)?;
    let api_keys = check_api_keys(&file.api_keys, &purposes)?;
    let storage = check_storage(&file.storage, data_dir, base)?;
    let mut root_key_variables = root_key_variables;
    root_key_variables.extend(file.storage.url_env.clone());
    // On PostgreSQL the backups are the cluster's, and [backup] keeps the erasure
    // journal alone: a directory every replica reaches.
    if let (Storage::Postgres(_), Some(backup)) = (&storage, &file.backup)
        && (backup.keep.is_some() || backup.every_hours.is_some())
    {
        return Err(ConfigError::new(
            "with [storage] backend = \"postgres\", [backup] keeps only the erasure journal \
             (dir); keep and every_hours do not apply: back up the PostgreSQL cluster itself \
             (pg_basebackup, WAL archiving)",
        ));
    }
    Ok(ServerConfig {
        vault_dir: vault_dir(data_dir),
        storage,
        root_key,
        transport,
        api_keys,
        limits,
        purge: purge_policy(file.vault.purge_delay_secs)?,
        purposes,
        masks,
        default_mask,
        retention: check_retention(&file.retention_days)?,
        audit_retention: file
            .vault
            .audit_retention_days
            .map(|days| days_between("vault.audit_retention_days", days))
            .transpose()?,
        sync_read_events: file.vault.sync_read_events,
        sync_gather: file
            .vault
            .sync_gather_us
            .map_or(Ok(vault_core::DEFAULT_SYNC_GATHER), sync_gather)?,
        block_cache_bytes: file
            .vault
            .block_cache_mib
            .map_or(Ok(vault_core::internal::SERVER_BLOCK_CACHE), block_cache)?,
        backups: file
            .backup
            .map(|backup| check_backup(&backup, base))
            .transpose()?,
        root_key_variables,
        audit_head_every: (file.vault.audit_head_log_secs > 0)
            .then(|| Duration::from_secs(file.vault.audit_head_log_secs)),
    })
}

fn check_backup(config: &BackupConfig, base: &Path) -> Result<BackupOptions, ConfigError> {
    let mut options = BackupOptions::new(base.join(&config.dir));
    if let Some(keep) = config.keep {
        if !(1..=1000).contains(&keep) {
            return Err(ConfigError::new("backup.keep must be 1-1000"));
        }
        options = options.keep(keep);
    }
    if let Some(hours) = config.every_hours {
        if !(1..=24 * 366).contains(&hours) {
            return Err(ConfigError::new("backup.every_hours must be 1-8784"));
        }
        options = options.every(Duration::from_secs(hours * 3600));
    }
    Ok(options)
}

/// The most `block_cache_mib` takes: 1 TiB.
const MAX_BLOCK_CACHE_MIB: u64 = 1 << 20;

fn block_cache(mib: u64) -> Result<usize, ConfigError> {
    if !(1..=MAX_BLOCK_CACHE_MIB).contains(&mib) {
        return Err(ConfigError::new(format!(
            "vault.block_cache_mib must be 1-{MAX_BLOCK_CACHE_MIB}"
        )));
    }
    usize::try_from(mib << 20)
        .map_err(|_| ConfigError::new("vault.block_cache_mib is more than this machine addresses"))
}

fn sync_gather(micros: u64) -> Result<Duration, ConfigError> {
    let wait = Duration::from_micros(micros);
    if wait > vault_core::MAX_SYNC_GATHER {
        return Err(ConfigError::new(format!(
            "vault.sync_gather_us must be at most {}",
            vault_core::MAX_SYNC_GATHER.as_micros()
        )));
    }
    Ok(wait)
}

fn check_retention(days: &BTreeMap<String, u64>) -> Result<Vec<(String, Duration)>, ConfigError> {
    days.iter()
        .map(|(field, days)| {
            let period = days_between(&format!("retention_days.{field}"), *days)?;
            Ok((field.clone(), period))
        })
        .collect()
}

/// A period of 1 to 36500 days.
fn days_between(name: &str, days: u64) -> Result<Duration, ConfigError> {
    if !(1..=36_500).contains(&days) {
        return Err(ConfigError::new(format!(
            "{name} must be between 1 and 36500"
        )));
    }
    Ok(Duration::from_secs(days * 86_400))
}

pub(crate) fn check_purposes(configs: &[PurposeConfig]) -> Result<Vec<Purpose>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut purposes = Vec::new();
    for config in configs {
        let name = &config.name;
        if !vault_core::valid_purpose_name(name) {
            return Err(ConfigError::new(format!(
                "purpose {name:?}: a name is 1-64 of a-z, 0-9, '_', '-', '.'"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(ConfigError::new(format!(
                "purpose {name} is declared twice"
            )));
        }
        let basis = LawfulBasis::parse(&config.basis).ok_or_else(|| {
            ConfigError::new(format!(
                "purpose {name}: unknown basis {:?} (known: {})",
                config.basis,
                LawfulBasis::ALL.map(LawfulBasis::name).join(", ")
            ))
        })?;
        let mut purpose = Purpose::new(name.clone(), basis).masked(config.masked);
        if let Some(fields) = &config.fields {
            if fields.is_empty() {
                return Err(ConfigError::new(format!(
                    "purpose {name}: fields is empty (leave it out for all fields)"
                )));
            }
            purpose = purpose.fields(fields.iter().cloned());
        }
        purposes.push(purpose);
    }
    Ok(purposes)
}

/// Masks per field, and the default mask (from the `"*"` entry).
type Masks = (Vec<(String, Mask)>, Option<Mask>);

fn check_masks(configs: &BTreeMap<String, String>) -> Result<Masks, ConfigError> {
    let mut masks = Vec::new();
    let mut default = None;
    for (field, text) in configs {
        let mask = Mask::parse(text).ok_or_else(|| {
            ConfigError::new(format!(
                "masks.{field}: {text:?} is not a mask (email, phone:N, last:N, hidden)"
            ))
        })?;
        if field == "*" {
            default = Some(mask);
        } else {
            masks.push((field.clone(), mask));
        }
    }
    Ok((masks, default))
}

/// `[storage]`, checked: the data directory, or a PostgreSQL configuration. (The
/// variable `url_env` names is removed from the environment with the root key's.)
fn check_storage(
    config: &StorageConfig,
    data_dir: &Path,
    base: &Path,
) -> Result<Storage, ConfigError> {
    if config.backend == Backend::Rocksdb {
        let set = config.url.is_some()
            || config.url_env.is_some()
            || config.pool_size.is_some()
            || config.ca_file.is_some()
            || config.schema.is_some();
        if set {
            return Err(ConfigError::new(
                "storage.url, url_env, pool_size, ca_file and schema apply to backend = \"postgres\" only",
            ));
        }
        return Ok(Storage::Directory(vault_dir(data_dir)));
    }
    let url = match (&config.url, &config.url_env) {
        (Some(url), None) => url.clone(),
        (None, Some(name)) => std::env::var(name).map_err(|_| {
            ConfigError::new(format!(
                "storage.url_env: the environment variable {name} is not set"
            ))
        })?,
        _ => {
            return Err(ConfigError::new(
                "backend = \"postgres\" needs exactly one of storage.url and storage.url_env",
            ));
        }
    };
    let mut pg = vault_core::PostgresConfig::new(url);
    if let Some(size) = config.pool_size {
        if !(1..=1024).contains(&size) {
            return Err(ConfigError::new("storage.pool_size must be 1-1024"));
        }
        pg = pg.pool_size(size);
    }
    if let Some(ca) = &config.ca_file {
        pg = pg.ca_file(base.join(ca));
    }
    if let Some(schema) = &config.schema {
        pg = pg.schema(schema.clone());
    }
    Ok(Storage::Postgres(pg))
}

/// Where the vault lives under the data directory.
pub fn vault_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("vault")
}

pub(crate) fn purge_policy(delay_secs: u64) -> Result<PurgePolicy, ConfigError> {
    if delay_secs == 0 {
        return Ok(PurgePolicy::Immediate);
    }
    let delay = Duration::from_secs(delay_secs);
    if delay > vault_core::MAX_PURGE_DELAY {
        return Err(ConfigError::new(format!(
            "vault.purge_delay_secs exceeds the maximum of {} seconds",
            vault_core::MAX_PURGE_DELAY.as_secs()
        )));
    }
    Ok(PurgePolicy::Within(delay))
}

fn check_limits(limits: LimitsConfig) -> Result<LimitsConfig, ConfigError> {
    let checks = [
        (
            limits.max_body_bytes,
            1024,
            1 << 30,
            "limits.max_body_bytes",
        ),
        (
            limits.max_value_bytes,
            1,
            16 << 20,
            "limits.max_value_bytes",
        ),
        (limits.max_batch, 1, 100_000, "limits.max_batch"),
        (limits.export_page, 1, 100_000, "limits.export_page"),
        (
            limits.max_response_bytes,
            1024,
            1 << 30,
            "limits.max_response_bytes",
        ),
        (
            limits.max_concurrent_requests,
            1,
            100_000,
            "limits.max_concurrent_requests",
        ),
    ];
    for (value, min, max, name) in checks {
        if !(min..=max).contains(&value) {
            return Err(ConfigError::new(format!(
                "{name} must be between {min} and {max}"
            )));
        }
    }
    if !(0.001..=1e6).contains(&limits.failed_auth_per_sec) {
        return Err(ConfigError::new(
            "limits.failed_auth_per_sec must be between 0.001 and 1000000",
        ));
    }
    if !(1..=1_000_000).contains(&limits.failed_auth_burst) {
        return Err(ConfigError::new(
            "limits.failed_auth_burst must be between 1 and 1000000",
        ));
    }
    if !(100..=3_600_000).contains(&limits.request_timeout_ms) {
        return Err(ConfigError::new(
            "limits.request_timeout_ms must be between 100 and 3600000",
        ));
    }
    if limits.max_value_bytes > limits.max_body_bytes {
        return Err(ConfigError::new(
            "limits.max_value_bytes cannot exceed limits.max_body_bytes",
        ));
    }
    Ok(limits)
}

pub(crate) fn read_tls(cert: &Path, key: &Path) -> Result<Transport, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = std::fs::read(cert).map_err(|e| {
        ConfigError::new(format!(
            "cannot read TLS certificate {}: {e}",
            cert.display()
        ))
    })?;
    let key_pem =
        Zeroizing::new(std::fs::read(key).map_err(|e| {
            ConfigError::new(format!("cannot read TLS key {}: {e}", key.display()))
        })?);
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|_| {
            ConfigError::new(format!("{} is not a PEM certificate chain", cert.display()))
        })?;
    if certs.is_empty() {
        return Err(ConfigError::new(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| ConfigError::new(format!("{} holds no PEM private key", key.display())))?;
    Ok(Transport::Tls { cert_pem, key_pem })
}

fn read_root_key(source: &RootKeySource, base: &Path) -> Result<RootKey, ConfigError> {
    let given = [
        source.file.is_some(),
        source.env.is_some(),
        source.passphrase_env.is_some(),
    ];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(ConfigError::new(
            "[root_key] needs exactly one of file, env, passphrase_env",
        ));
    }
    if let Some(file) = &source.file {
        let path = base.join(file);
        if !source.insecure_key_file_readable_by_others {
            check_private(&path)?;
        }
        return read_root_key_file(&path);
    }
    if let Some(var) = &source.env {
        let text = Zeroizing::new(env_var(var)?);
        let bytes = auth::decode_hex32(text.trim()).ok_or_else(|| {
            ConfigError::new(format!(
                "environment variable {var} must hold a root key of 64 hex digits"
            ))
        })?;
        let bytes = Zeroizing::new(bytes);
        return RootKey::from_bytes(bytes.as_slice()).map_err(|e| ConfigError::new(e.to_string()));
    }
    if let Some(var) = &source.passphrase_env {
        let passphrase = env_var(var)?;
        let min = RootKey::MIN_PASSPHRASE_CHARS;
        if passphrase.chars().count() < min {
            return Err(ConfigError::new(format!(
                "the passphrase in {var} is shorter than {min} characters"
            )));
        }
        return Ok(RootKey::passphrase(passphrase));
    }
    Err(ConfigError::new(
        "[root_key] needs one of file, env, passphrase_env",
    ))
}

fn env_var(var: &str) -> Result<String, ConfigError> {
    std::env::var(var).map_err(|_| {
        ConfigError::new(format!(
            "environment variable {var} (the root key source) is not set or not UTF-8"
        ))
    })
}

/// Refuses a key file that its group or others may read.
pub fn check_private(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| {
            ConfigError::new(format!("cannot read root key file {}: {e}", path.display()))
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(ConfigError::new(format!(
            "root key file {} may be read by others than its owner (mode {:o}): chmod 600 it \
             (or set insecure_key_file_readable_by_others = true in [root_key])",
            path.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// The environment variables the root key was read from: the caller removes them
/// from the process environment once nothing else runs (see `cli`).
pub fn root_key_variables(source: &RootKeySource) -> Vec<String> {
    [&source.env, &source.passphrase_env]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
}

/// Reads a root key file: 32 raw bytes, or 64 hex digits (whitespace around allowed).
pub fn read_root_key_file(path: &Path) -> Result<RootKey, ConfigError> {
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
        ConfigError::new(format!("cannot read root key file {}: {e}", path.display()))
    })?);
    if bytes.len() == 32 {
        return RootKey::from_bytes(&bytes).map_err(|e| ConfigError::new(e.to_string()));
    }
    let decoded = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| auth::decode_hex32(text.trim()))
        .map(Zeroizing::new)
        .ok_or_else(|| {
            ConfigError::new(format!(
                "root key file {} must hold 32 bytes or 64 hex digits",
                path.display()
            ))
        })?;
    RootKey::from_bytes(decoded.as_slice()).map_err(|e| ConfigError::new(e.to_string()))
}

fn check_api_keys(configs: &[ApiKeyConfig], declared: &[Purpose]) -> Result<ApiKeys, ConfigError> {
    if configs.is_empty() {
        return Err(ConfigError::new(
            "no [[api_keys]]: nothing could call the vault (create one with `vault-server new-api-key`)",
        ));
    }
    let mut names = BTreeSet::new();
    let mut hashes = BTreeMap::new();
    let mut keys = Vec::new();
    for config in configs {
        let name = &config.name;
        let name_ok = (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return Err(ConfigError::new(
                "an API key name must be 1-64 of ASCII letters, digits, '_', '-', '.'",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(ConfigError::new(format!(
                "API key name {name} is used twice"
            )));
        }
        let hash = KeyHash::parse(&config.hash).ok_or_else(|| {
            ConfigError::new(format!(
                "API key {name}: hash must be blake3: + 64 hex digits (from `vault-server new-api-key`)"
            ))
        })?;
        if let Some(other) = hashes.insert(hash.to_string(), name.clone()) {
            return Err(ConfigError::new(format!(
                "API keys {other} and {name} have the same hash"
            )));
        }
        let mut scopes = BTreeSet::new();
        for scope in &config.scopes {
            let parsed = Scope::parse(scope).ok_or_else(|| {
                ConfigError::new(format!(
                    "API key {name}: unknown scope {scope:?} (known: {})",
                    Scope::ALL.map(Scope::name).join(", ")
                ))
            })?;
            scopes.insert(parsed);
        }
        if scopes.is_empty() {
            return Err(ConfigError::new(format!("API key {name} has no scopes")));
        }
        let purposes = if config.purposes.iter().any(|p| p == "*") {
            if config.purposes.len() != 1 {
                return Err(ConfigError::new(format!(
                    "API key {name}: \"*\" (any purpose) cannot be combined with others"
                )));
            }
            Purposes::Any
        } else {
            for purpose in &config.purposes {
                if !declared.iter().any(|p| p.name() == purpose) {
                    return Err(ConfigError::new(format!(
                        "API key {name}: purpose {purpose:?} is not declared in [[purposes]]"
                    )));
                }
            }
            Purposes::Only(config.purposes.iter().cloned().collect())
        };
        if scopes.contains(&Scope::Detokenize) && purposes == Purposes::Only(BTreeSet::new()) {
            return Err(ConfigError::new(format!(
                "API key {name} has the detokenize scope but no purposes"
            )));
        }
        if config.masked && scopes.contains(&Scope::Export) {
            return Err(ConfigError::new(format!(
                "API key {name} is masked but has the export scope, which shows full values"
            )));
        }
        let limit = match (config.rate_per_sec, config.burst) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ConfigError::new(format!(
                    "API key {name}: burst needs rate_per_sec"
                )));
            }
            (Some(rate), burst) => {
                if !(0.001..=1e9).contains(&rate) {
                    return Err(ConfigError::new(format!(
                        "API key {name}: rate_per_sec must be between 0.001 and 1000000000"
                    )));
                }
                let burst = burst.unwrap_or(rate.ceil().min(f64::from(u32::MAX)) as u32);
                if burst == 0 {
                    return Err(ConfigError::new(format!(
                        "API key {name}: burst must be at least 1"
                    )));
                }
                Some(std::sync::Arc::new(RateLimit::new(rate, burst)))
            }
        };
        keys.push(ApiKey {
            name: name.clone(),
            hash,
            scopes,
            purposes,
            masked: config.masked,
            limit,
        });
    }
    Ok(ApiKeys::new(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServerConfig, ConfigError> {
        parse_with_mode(text, 0o600)
    }

    /// `text` resolved next to a root key file `root.key` of this mode.
    fn parse_with_mode(text: &str, mode: u32) -> Result<ServerConfig, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().map_err(|e| ConfigError::new(e.to_string()))?;
        let key = dir.path().join("root.key");
        std::fs::write(&key, "ab".repeat(32))
            .and_then(|()| std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)))
            .map_err(|e| ConfigError::new(e.to_string()))?;
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::new(e.message().to_owned()))?;
        resolve(file, dir.path(), dir.path())
    }

    fn hash() -> String {
        KeyHash::of("pvk_test").to_string()
    }

    #[test]
    fn a_root_key_file_others_may_read_is_refused_unless_told() -> Result<(), ConfigError> {
        let text = |extra: &str| {
            format!(
                "insecure_plain_http = true\n[root_key]\nfile = \"root.key\"\n{extra}\
                 [[api_keys]]\nname = \"svc\"\nhash = \"{}\"\nscopes = [\"tokenize\"]\n",
                hash()
            )
        };
        for mode in [0o644, 0o640, 0o604] {
            let refused = parse_with_mode(&text(""), mode);
            let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains("chmod 600"), "mode {mode:o}: {message}");
        }
        parse_with_mode(
            &text("insecure_key_file_readable_by_others = true\n"),
            0o644,
        )?;
        parse_with_mode(&text(""), 0o400)?;
        Ok(())
    }

    #[test]
    fn a_minimal_plain_config_resolves() -> Result<(), ConfigError> {
        let config = parse(&format!(
            "insecure_plain_http = true\n[root_key]\nfile = \"root.key\"\n\
             [[api_keys]]\nname = \"svc\"\nhash = \"{}\"\nscopes = [\"tokenize\"]\n",
            hash()
        ))?;
        assert!(matches!(config.transport, Transport::InsecurePlainHttp));
        assert_eq!(config.api_keys.len(), 1);
        assert_eq!(config.limits.max_batch, 1000);
        assert_eq!(config.sync_gather, vault_core::DEFAULT_SYNC_GATHER);
        assert_eq!(
            config.block_cache_bytes,
            vault_core::internal::SERVER_BLOCK_CACHE
        );
        Ok(())
    }

    #[test]
    fn misconfigurations_are_refused_with_a_reason() {
        let h = hash();
        let key =
            format!("[[api_keys]]\nname = \"svc\"\nhash = \"{h}\"\nscopes = [\"tokenize\"]\n");
        let root = "[root_key]\nfile = \"root.key\"\n";
        let cases = [
            (format!("{root}{key}"), "no [tls]"),
            (
                format!("insecure_plain_http = true\n{key}"),
                "no [root_key]",
            ),
            (
                format!("insecure_plain_http = true\n{root}"),
                "no [[api_keys]]",
            ),
            (
                format!(
                    "insecure_plain_http = true\n[root_key]\nfile = \"root.key\"\nenv = \"X\"\n{key}"
                ),
                "exactly one",
            ),
            (
                format!(
                    "insecure_plain_http = true\n{root}{}",
                    key.replace("tokenize", "tokenise")
                ),
                "unknown scope",
            ),
            (
                format!(
                    "insecure_plain_http = true\n{root}{}",
                    key.replace("tokenize", "detokenize")
                ),
                "no purposes",
            ),
            (
                format!("insecure_plain_http = true\n{root}{key}{key}"),
                "used twice",
            ),
            (
                format!(
                    "insecure_plain_http = true\n{root}{}",
                    key.replace(&h, "blake3:00")
                ),
                "hash must be",
            ),
            (
                format!("insecure_plain_http = true\n{root}{key}[limits]\nmax_batch = 0\n"),
                "max_batch",
            ),
            (
                format!(
                    "insecure_plain_http = true\n{root}{key}[vault]\npurge_delay_secs = 99999999\n"
                ),
                "purge_delay_secs",
            ),
            (
                format!(
                    "insecure_plain_http = true\n[tls]\ncert = \"missing.pem\"\nkey = \"missing.pem\"\n{root}{key}"
                ),
                "both set",
            ),
            (
                format!("[tls]\ncert = \"missing.pem\"\nkey = \"missing.pem\"\n{root}{key}"),
                "cannot read TLS certificate",
            ),
            (
                format!("insecure_plain_http = true\n[root_key]\nfile = \"nope.key\"\n{key}"),
                "cannot read root key file",
            ),
        ];
        for (text, expected) in cases {
            match parse(&text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => assert!(e.to_string().contains(expected), "{e} (wanted {expected})"),
            }
        }
        let purpose = "[[purposes]]\nname = \"billing\"\nbasis = \"contract\"\n";
        let more = [
            (purpose.replace("contract", "whim"), "unknown basis"),
            (format!("{purpose}{purpose}"), "declared twice"),
            (purpose.replace("billing", "Billing Team"), "a name is"),
            (format!("{purpose}fields = []\n"), "fields is empty"),
            (
                format!("{purpose}[masks]\nemail = \"rot13\"\n"),
                "not a mask",
            ),
        ];
        for (extra, expected) in more {
            let text = format!("insecure_plain_http = true\n{root}{key}{extra}");
            match parse(&text) {
                Ok(_) => panic!("accepted:\n{text}"),
                Err(e) => assert!(e.to_string().contains(expected), "{e} (wanted {expected})"),
            }
        }
        let retention =
            format!("insecure_plain_http = true\n{root}{key}[retention_days]\nip = 0\n");
        assert!(parse(&retention).is_err_and(|e| e.to_string().contains("retention_days.ip")));
        let audit =
            format!("insecure_plain_http = true\n{root}{key}[vault]\naudit_retention_days = 0\n");
        assert!(parse(&audit).is_err_and(|e| e.to_string().contains("audit_retention_days")));
        let audit =
            format!("insecure_plain_http = true\n{root}{key}[vault]\naudit_retention_days = 400\n");
        let config = parse(&audit).expect("a valid period is accepted");
        assert_eq!(
            config.audit_retention,
            Some(Duration::from_secs(400 * 86_400))
        );
        let gather =
            format!("insecure_plain_http = true\n{root}{key}[vault]\nsync_gather_us = 100001\n");
        assert!(parse(&gather).is_err_and(|e| e.to_string().contains("sync_gather_us")));
        let gather =
            format!("insecure_plain_http = true\n{root}{key}[vault]\nsync_gather_us = 0\n");
        let config = parse(&gather).expect("no gathering is accepted");
        assert_eq!(config.sync_gather, Duration::ZERO);
        for mib in [0, MAX_BLOCK_CACHE_MIB + 1] {
            let cache = format!(
                "insecure_plain_http = true\n{root}{key}[vault]\nblock_cache_mib = {mib}\n"
            );
            assert!(parse(&cache).is_err_and(|e| e.to_string().contains("block_cache_mib")));
        }
        let cache =
            format!("insecure_plain_http = true\n{root}{key}[vault]\nblock_cache_mib = 1\n");
        let config = parse(&cache).expect("a 1 MiB block cache is accepted");
        assert_eq!(config.block_cache_bytes, 1 << 20);
        // Rate limits: a burst needs a rate, a rate is positive; a valid one is kept.
        for (limit, expected) in [
            ("burst = 10\n", "burst needs rate_per_sec"),
            ("rate_per_sec = 0\n", "rate_per_sec must be"),
            ("rate_per_sec = -1\n", "rate_per_sec must be"),
            ("rate_per_sec = 5\nburst = 0\n", "burst must be"),
        ] {
            let text = format!("insecure_plain_http = true\n{root}{key}{limit}");
            assert!(
                parse(&text).is_err_and(|e| e.to_string().contains(expected)),
                "{limit}"
            );
        }
        let text = format!("insecure_plain_http = true\n{root}{key}rate_per_sec = 2.5\n");
        let limited = parse(&text).expect("a rate alone is accepted");
        let keys = format!("{:?}", limited.api_keys);
        assert!(
            keys.contains("limit: Some(RateLimit { per_sec: 2.5, burst: 3.0, .. })"),
            "the burst defaults to a second's worth: {keys}"
        );
        let text =
            format!("insecure_plain_http = true\n{root}{key}[limits]\nfailed_auth_per_sec = 0\n");
        assert!(parse(&text).is_err_and(|e| e.to_string().contains("failed_auth_per_sec")));
        // And the vault opened with the config's options has it.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let options = config
            .vault_options()
            .background_worker(false)
            .kdf_params(vault_core::KdfParams::MINIMUM);
        let vault = vault_core::Vault::open(dir.path(), &config.root_key, options)
            .expect("the vault opens");
        assert_eq!(vault.storage_counters().block_cache_capacity, 1 << 20);
        let masked_export = format!(
            "insecure_plain_http = true\n{root}{}",
            key.replace("[\"tokenize\"]", "[\"export\"]\nmasked = true")
        );
        assert!(
            parse(&masked_export)
                .is_err_and(|e| e.to_string().contains("masked but has the export scope")),
            "a masked key could read full values through export"
        );
        let typo = format!("insecure_plain_http = true\n{root}{key}[limits]\nmax_batchh = 5\n");
        assert!(parse(&typo).is_err(), "unknown keys are refused");
    }
}
