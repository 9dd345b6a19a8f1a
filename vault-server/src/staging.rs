//! `vault-server pseudonymize`: a staging vault built from production's, with fake
//! values behind production's tokens (see `vault_core::pseudonymize`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vault_core::{FakeFields, FakeKind};

use crate::config::{self, ConfigError, ServerConfig};
use crate::dev;

/// Where the staging vault goes and how its values are faked.
#[derive(Debug)]
pub struct StagingArgs<'a> {
    /// Production's configuration (root key, purposes, retention, limits).
    pub source: &'a ServerConfig,
    /// The new data directory.
    pub to_data_dir: &'a Path,
    /// The staging vault's root key file: read if it exists, else created. `None`
    /// with `dev`: the development set-up of `to_data_dir` (created), so that
    /// `vault-server --data-dir STAGING --dev` serves the staging vault.
    pub root_key_file: Option<&'a Path>,
    pub dev: bool,
    /// A TOML file: `[fields]` of field name = kind.
    pub fields_config: Option<&'a Path>,
    /// Where to write production subject reference → staging id (mode 0600).
    pub mapping_file: Option<&'a Path>,
}

/// The `--fields-config` file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldsFile {
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

/// Reads `--fields-config`: each field's kind, by name.
pub fn read_fields(path: &Path) -> Result<FakeFields, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
    // toml's messages quote the offending line, which could be anything: position only.
    let file: FieldsFile = toml::from_str(&text).map_err(|e| {
        ConfigError::new(format!(
            "{}: not a fields configuration ([fields] with field = \"kind\"){}",
            path.display(),
            e.span()
                .map(|s| format!(" at byte {}", s.start))
                .unwrap_or_default()
        ))
    })?;
    let mut fields = FakeFields::default();
    for (field, kind) in file.fields {
        let kind: FakeKind = kind.parse().map_err(|e: String| {
            ConfigError::new(format!("{}: field {field}: {e}", path.display()))
        })?;
        fields = fields.field(field, kind);
    }
    Ok(fields)
}

/// Builds the staging vault; returns the final JSON line's fields.
pub fn build(args: &StagingArgs<'_>) -> Result<serde_json::Value, ConfigError> {
    let fields = match args.fields_config {
        Some(path) => read_fields(path)?,
        None => FakeFields::default(),
    };
    let target = config::vault_dir(args.to_data_dir);
    if std::fs::read_dir(&target).is_ok_and(|mut d| d.next().is_some()) {
        return Err(ConfigError::new(format!(
            "{} holds a vault already: a staging vault is built in a new data directory",
            target.display()
        )));
    }
    let (root, root_file, created) = match (args.root_key_file, args.dev) {
        (Some(path), _) if path.exists() => {
            config::check_private(path)?;
            (config::read_root_key_file(path)?, path.to_path_buf(), false)
        }
        (Some(path), _) => (dev::new_root_key_file(path)?, path.to_path_buf(), true),
        (None, true) => {
            let (staging, _) = dev::prepare(args.to_data_dir)?;
            let file = args.to_data_dir.join("dev").join("root.key");
            (staging.root_key, file, true)
        }
        (None, false) => {
            return Err(ConfigError::new(
                "--to-root-key-file FILE is required with --config (the staging vault's own key)",
            ));
        }
    };
    let source = args.source;
    if let (Some(a), Some(b)) = (root.expose_bytes(), source.root_key.expose_bytes())
        && a == b
    {
        return Err(ConfigError::new(
            "the staging vault's root key is production's: give it a key of its own",
        ));
    }
    let options = source
        .vault_options()
        .create_if_missing(false)
        .background_worker(false);
    let vault = source.open_vault_with(&source.root_key, options)?;
    let started = Instant::now();
    let mut bar = Progress::new();
    let report = vault_core::pseudonymize(
        &vault,
        &target,
        &root,
        source.vault_options(),
        &fields,
        args.mapping_file,
        |done, total| bar.show(done, total),
    )
    .map_err(|e| ConfigError::new(format!("the staging vault was not built: {e}")))?;
    bar.finish();
    vault
        .close()
        .map_err(|e| ConfigError::new(format!("cannot close the vault: {e}")))?;
    Ok(serde_json::json!({
        "pseudonymized": true,
        "to_data_dir": args.to_data_dir.display().to_string(),
        "root_key_file": root_file.display().to_string(),
        "root_key_created": created,
        "mapping_file": args.mapping_file.map(|p| p.display().to_string()),
        "subjects": report.subjects,
        "records": report.records,
        "erased_tokens": report.erased_tokens,
        "expired_tokens": report.expired_tokens,
        "consents": report.consents,
        "seconds": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }))
}

/// A progress bar on stderr: redrawn in place on a terminal, a line every few
/// seconds otherwise (a log).
struct Progress {
    terminal: bool,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, done: u64, total: u64) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|at| at.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        // The total is the engine's estimate: never past 100 %.
        let total = total.max(done).max(1);
        let percent = done.saturating_mul(100) / total;
        let filled = usize::try_from(percent / 4).unwrap_or(25);
        let line = format!(
            "pseudonymize [{}{}] {percent:>3}% {done} records",
            "#".repeat(filled),
            "-".repeat(25 - filled.min(25)),
        );
        let mut err = std::io::stderr();
        let _ = if self.terminal {
            write!(err, "\r{line}")
        } else {
            writeln!(err, "{line}")
        };
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.terminal && self.drawn {
            let _ = writeln!(std::io::stderr());
        }
    }
}
