//! `--dev`: a vault that starts with nothing set up, for trying it out.
//!
//! Creates what is missing under `DATA_DIR/dev/`: a root key file, a self-signed TLS
//! certificate for `localhost` and `127.0.0.1`, and one API key with every scope and
//! any purpose (kept in clear, so that restarts print the same key). The root key in a
//! file next to the data is exactly what production must never do; the server says so.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vault_core::{LawfulBasis, Mask, Purpose, RootKey};
use zeroize::Zeroizing;

use crate::auth::{self, ApiKey, ApiKeys, KeyHash, Purposes, Scope};
use crate::config::{self, ConfigError, LimitsConfig, ServerConfig};

/// What `--dev` prints for scripts (one JSON line on stdout). (`Debug` shows no key.)
pub struct DevInfo {
    /// The certificate a client must trust.
    pub ca_cert: PathBuf,
    /// The admin API key.
    pub api_key: Zeroizing<String>,
}

impl std::fmt::Debug for DevInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevInfo")
            .field("ca_cert", &self.ca_cert)
            .field("api_key", &"[REDACTED]")
            .finish()
    }
}

/// Sets up (or reuses) the development files and returns the configuration.
pub fn prepare(data_dir: &Path) -> Result<(ServerConfig, DevInfo), ConfigError> {
    let dir = data_dir.join("dev");
    fs::create_dir_all(&dir)
        .map_err(|e| ConfigError::new(format!("cannot create {}: {e}", dir.display())))?;
    // The directory holds the root key: refuse to go on if it cannot be private.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(|e| {
        ConfigError::new(format!(
            "cannot make {} private (mode 700): {e}",
            dir.display()
        ))
    })?;

    let root_path = dir.join("root.key");
    let root_key = if root_path.exists() {
        config::read_root_key_file(&root_path)?
    } else {
        new_root_key_file(&root_path)?
    };

    let cert_path = dir.join("tls-cert.pem");
    let key_path = dir.join("tls-key.pem");
    if !cert_path.exists() || !key_path.exists() {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .map_err(|e| ConfigError::new(format!("cannot make a TLS certificate: {e}")))?;
        let key_pem = Zeroizing::new(certified.signing_key.serialize_pem());
        write_private(&key_path, key_pem.as_bytes())?;
        write_file(&cert_path, certified.cert.pem().as_bytes(), 0o644)?;
    }
    let transport = config::read_tls(&cert_path, &key_path)?;

    let key_file = dir.join("admin-api-key");
    let api_key = if key_file.exists() {
        let text =
            Zeroizing::new(fs::read_to_string(&key_file).map_err(|e| {
                ConfigError::new(format!("cannot read {}: {e}", key_file.display()))
            })?);
        let key = Zeroizing::new(text.trim().to_owned());
        if !auth::is_well_formed_key(&key) {
            return Err(ConfigError::new(format!(
                "{} does not hold an API key (pvk_ + 64 hex digits); delete it to get a new one",
                key_file.display()
            )));
        }
        key
    } else {
        let (key, _) =
            auth::generate_key().map_err(|e| ConfigError::new(format!("random: {e}")))?;
        write_private(&key_file, key.as_bytes())?;
        key
    };
    let admin = ApiKey {
        name: "dev-admin".into(),
        hash: KeyHash::of(&api_key),
        scopes: Scope::ALL.into_iter().collect(),
        purposes: Purposes::Any,
        masked: false,
        limit: None,
    };
    let config = ServerConfig {
        vault_dir: config::vault_dir(data_dir),
        storage: config::Storage::Directory(config::vault_dir(data_dir)),
        root_key,
        transport,
        api_keys: ApiKeys::new(vec![admin]),
        limits: LimitsConfig::default(),
        // Erasures purge before the call returns: what a first try expects to see.
        purge: vault_core::PurgePolicy::Immediate,
        purposes: dev_purposes(),
        masks: vec![
            ("email".to_owned(), Mask::Email),
            ("phone".to_owned(), Mask::Phone { keep_last: 2 }),
        ],
        default_mask: Some(Mask::KeepLast(2)),
        retention: Vec::new(),
        audit_retention: None,
        sync_read_events: false,
        sync_gather: vault_core::DEFAULT_SYNC_GATHER,
        // As a configured server's (a cap, filled as blocks are read): the HTTPS
        // benchmark runs this server and must measure what production runs.
        block_cache_bytes: vault_core::internal::SERVER_BLOCK_CACHE,
        backups: Some(vault_core::BackupOptions::new(data_dir.join("backups"))),
        root_key_variables: Vec::new(),
        audit_head_every: Some(std::time::Duration::from_secs(
            config::DEFAULT_AUDIT_HEAD_LOG_SECS,
        )),
    };
    let ca_cert = fs::canonicalize(&cert_path).unwrap_or(cert_path);
    Ok((config, DevInfo { ca_cert, api_key }))
}

/// Example purposes, one per common case, so that a first try can detokenize:
/// `support` (legitimate interests), `billing` (contract), `marketing` (consent:
/// record a grant first), `analytics` (masked values only).
fn dev_purposes() -> Vec<Purpose> {
    vec![
        Purpose::new("support", LawfulBasis::LegitimateInterests),
        Purpose::new("billing", LawfulBasis::Contract),
        Purpose::new("marketing", LawfulBasis::Consent),
        Purpose::new("analytics", LawfulBasis::LegitimateInterests).masked(true),
    ]
}

/// Makes `new` the development root key (after the vault's header was resealed
/// under it): written beside the old file, synced, then renamed over it.
pub fn replace_root_key(data_dir: &Path, new: &RootKey) -> Result<(), ConfigError> {
    let dir = data_dir.join("dev");
    let path = dir.join("root.key");
    let tmp = dir.join("root.key.new");
    let bytes = new
        .expose_bytes()
        .ok_or_else(|| ConfigError::new("the new root key must be a key, not a passphrase"))?;
    let hex = Zeroizing::new(hex(bytes));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(ConfigError::new(format!(
                "cannot remove {}: {e}",
                tmp.display()
            )));
        }
        _ => {}
    }
    write_private(&tmp, hex.as_bytes())?;
    fs::rename(&tmp, &path)
        .and_then(|()| fs::File::open(&dir)?.sync_all())
        .map_err(|e| ConfigError::new(format!("cannot replace {}: {e}", path.display())))
}

/// A new random root key, written as 64 hex digits to a new file at `path`
/// (mode 0600).
pub fn new_root_key_file(path: &Path) -> Result<RootKey, ConfigError> {
    let root = RootKey::generate().map_err(|e| ConfigError::new(e.to_string()))?;
    let bytes = root
        .expose_bytes()
        .ok_or_else(|| ConfigError::new("a generated root key has bytes"))?;
    let hex = Zeroizing::new(hex(bytes));
    write_private(path, hex.as_bytes())?;
    config::read_root_key_file(path)
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    write_file(path, bytes, 0o600)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let fail =
        |e: std::io::Error| ConfigError::new(format!("cannot write {}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration type, formatted with `Debug`, shows none of the secrets
    /// it holds: the admin API key, the TLS private key, the root key.
    #[test]
    fn no_secret_in_debug() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (config, info) = prepare(dir.path())?;
        let dev = dir.path().join("dev");
        let root_hex = fs::read_to_string(dev.join("root.key"))?;
        let key_pem = fs::read_to_string(dev.join("tls-key.pem"))?;
        // The base64 body of the private key, a line of it at least.
        let key_line = key_pem
            .lines()
            .find(|l| !l.starts_with("-----") && l.len() > 20)
            .ok_or("a PEM body")?;
        // Bytes print as a list of numbers: look for those too.
        let key_numbers = format!("{:?}", &key_line.as_bytes()[..16]);
        let key_numbers = key_numbers.trim_matches(|c| c == '[' || c == ']');
        let shown = format!("{config:?} {config:#?} {info:?} {:?}", config.transport);
        for secret in [
            info.api_key.as_str(),
            root_hex.trim(),
            key_line,
            key_numbers,
        ] {
            assert!(!shown.contains(secret), "a secret in Debug output");
        }
        // The control: the formatted text holds the rest.
        assert!(shown.contains("ca_cert") && shown.contains("cert_pem_bytes"));
        Ok(())
    }
}
