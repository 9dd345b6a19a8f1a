//! Harness for the end-to-end tests: the real server binary as a child process on a
//! loopback port, over real TLS, with its log captured to a file.

#![allow(dead_code)] // each test file uses a part of the harness

pub mod ha;

// The PostgreSQL cluster of the core tests (scripts/postgres).
#[path = "../../../vault-core/tests/common/cluster.rs"]
pub mod cluster;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub const SERVER: &str = env!("CARGO_BIN_EXE_e2e-vault-server");
pub const VAULTCTL: &str = env!("CARGO_BIN_EXE_e2e-vaultctl");

/// Every API key scope.
pub const SCOPES: [&str; 10] = [
    "tokenize",
    "tokenize_deterministic",
    "detokenize",
    "rectify",
    "delete",
    "erase",
    "export",
    "consent",
    "audit",
    "admin",
];

/// A running server process.
pub struct Server {
    child: Option<Child>,
    /// The base URL it printed.
    pub url: String,
    /// Its metrics page (plain HTTP on loopback).
    pub metrics_url: String,
    /// The certificate to trust.
    pub ca_cert: PathBuf,
    /// The dev admin key (dev mode only).
    pub api_key: String,
    /// Its stderr (the log).
    pub log: PathBuf,
    /// What it printed on stdout.
    pub stdout_line: String,
}

/// How to start a server.
pub struct Launch<'a> {
    pub data_dir: &'a Path,
    pub args: Vec<String>,
    pub envs: Vec<(String, String)>,
    pub log: PathBuf,
    /// The CA to trust when the server is not in dev mode.
    pub ca_cert: Option<PathBuf>,
}

impl<'a> Launch<'a> {
    pub fn dev(data_dir: &'a Path) -> Launch<'a> {
        Launch {
            data_dir,
            args: vec!["--dev".into()],
            envs: Vec::new(),
            log: data_dir.with_extension("log"),
            ca_cert: None,
        }
    }

    pub fn config(data_dir: &'a Path, config: &Path, ca_cert: &Path) -> Launch<'a> {
        Launch {
            data_dir,
            args: vec!["--config".into(), config.display().to_string()],
            envs: Vec::new(),
            log: data_dir.with_extension("log"),
            ca_cert: Some(ca_cert.to_path_buf()),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    pub fn log_to(mut self, path: PathBuf) -> Self {
        self.log = path;
        self
    }
}

impl Server {
    pub fn start_dev(data_dir: &Path) -> TestResult<Server> {
        Server::start(Launch::dev(data_dir))
    }

    pub fn start(launch: Launch<'_>) -> TestResult<Server> {
        let log = fs::File::create(&launch.log)?;
        let mut command = Command::new(SERVER);
        command
            .arg("--data-dir")
            .arg(launch.data_dir)
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(&launch.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        if !launch.envs.iter().any(|(k, _)| k == "RUST_LOG") {
            command.env("RUST_LOG", "info");
        }
        for (k, v) in &launch.envs {
            command.env(k, v);
        }
        let mut child = command.spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            // Keep draining so the server never blocks on a full pipe.
            let mut rest = String::new();
            while matches!(reader.read_line(&mut rest), Ok(n) if n > 0) {
                rest.clear();
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(line)) if !line.trim().is_empty() => line,
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                let log = fs::read_to_string(&launch.log).unwrap_or_default();
                return Err(format!("the server did not start; its log:\n{log}").into());
            }
        };
        let info: serde_json::Value = serde_json::from_str(line.trim())?;
        let url = info["url"].as_str().ok_or("no url")?.to_owned();
        let metrics_url = info["metrics_url"]
            .as_str()
            .ok_or("no metrics_url")?
            .to_owned();
        let ca_cert = match (info["ca_cert"].as_str(), launch.ca_cert) {
            (Some(path), _) => PathBuf::from(path),
            (None, Some(path)) => path,
            (None, None) => PathBuf::new(),
        };
        Ok(Server {
            child: Some(child),
            url,
            metrics_url,
            ca_cert,
            api_key: info["api_key"].as_str().unwrap_or_default().to_owned(),
            log: launch.log,
            stdout_line: line,
        })
    }

    /// A typed client with this API key.
    pub fn client(&self, api_key: &str) -> TestResult<vault_client::Client> {
        let mut builder = vault_client::Client::builder(&self.url).api_key(api_key);
        if self.url.starts_with("http://") {
            builder = builder.danger_allow_plain_http();
        }
        if !self.ca_cert.as_os_str().is_empty() {
            builder = builder.ca_cert_file(&self.ca_cert)?;
        }
        Ok(builder.build()?)
    }

    /// The dev admin client.
    pub fn admin(&self) -> TestResult<vault_client::Client> {
        self.client(&self.api_key)
    }

    /// A raw HTTP client trusting the server's certificate, for requests the typed
    /// client would never send.
    pub fn raw(&self) -> TestResult<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_secs(60));
        if !self.ca_cert.as_os_str().is_empty() {
            let pem = fs::read(&self.ca_cert)?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        Ok(builder.build()?)
    }

    /// The `/metrics` page of the metrics listener, fetched with `http`.
    pub async fn metrics_page(&self, http: &reqwest::Client) -> TestResult<String> {
        let response = http.get(&self.metrics_url).send().await?;
        if !response.status().is_success() {
            return Err(format!("/metrics answered {}", response.status()).into());
        }
        Ok(response.text().await?)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether the process is still running (it has not exited, nor been waited for).
    pub fn running(&mut self) -> TestResult<bool> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> TestResult<ExitStatus> {
        self.signal("TERM")?;
        self.wait(Duration::from_secs(60))
    }

    pub fn signal(&self, name: &str) -> TestResult {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()?;
        if !status.success() {
            return Err(format!("kill -{name} failed").into());
        }
        Ok(())
    }

    pub fn wait(&mut self, limit: Duration) -> TestResult<ExitStatus> {
        let child = self.child.as_mut().ok_or("already waited")?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err("the server did not exit in time".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log once `ready` holds for it, or as it is after 10 s: the server writes
    /// its access log lines a few milliseconds after their requests.
    pub fn log_text_once(&self, ready: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log_text();
            if ready(&log) || Instant::now() > deadline {
                return log;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A self-signed certificate for localhost in `dir`: (cert, key) paths.
pub fn write_tls(dir: &Path) -> TestResult<(PathBuf, PathBuf)> {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    fs::write(&cert, certified.cert.pem())?;
    fs::write(&key, certified.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// One API key of a configuration.
pub struct KeySpec<'a> {
    pub name: &'a str,
    pub scopes: &'a [&'a str],
    pub purposes: &'a [&'a str],
}

/// Writes a complete configuration (TLS, a root key file, the keys, `extra` TOML
/// appended) into `dir`; returns its path, the CA to trust and each key by name.
pub fn write_config(
    dir: &Path,
    keys: &[KeySpec<'_>],
    extra: &str,
) -> TestResult<(PathBuf, PathBuf, BTreeMap<String, String>)> {
    let (cert, key) = write_tls(dir)?;
    fs::write(dir.join("root.key"), "5a".repeat(32))?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir.join("root.key"), fs::Permissions::from_mode(0o600))?;
    }
    let mut text = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\n[root_key]\nfile = \"root.key\"\n",
        cert.display(),
        key.display()
    );
    // Every purpose a key names is declared (as a contract purpose) unless `extra`
    // declares it itself.
    let mut declared = std::collections::BTreeSet::new();
    for spec in keys {
        for purpose in spec.purposes {
            if *purpose != "*"
                && !extra.contains(&format!("name = \"{purpose}\""))
                && declared.insert(*purpose)
            {
                text.push_str(&format!(
                    "[[purposes]]\nname = \"{purpose}\"\nbasis = \"contract\"\n"
                ));
            }
        }
    }
    let mut secrets = BTreeMap::new();
    for spec in keys {
        let (secret, hash) = vault_server::auth::generate_key()?;
        text.push_str(&format!(
            "[[api_keys]]\nname = \"{}\"\nhash = \"{hash}\"\nscopes = {:?}\npurposes = {:?}\n",
            spec.name, spec.scopes, spec.purposes
        ));
        secrets.insert(spec.name.to_owned(), secret.to_string());
    }
    text.push_str(extra);
    let path = dir.join("vault.toml");
    fs::write(&path, text)?;
    Ok((path, cert, secrets))
}

/// A configuration for vault-server replicas on PostgreSQL at `url` (TLS checked
/// against `ca`): an admin key with every scope and `purpose` (a contract purpose)
/// declared, `extra` appended after the `[storage]` section; its path, the
/// certificate to trust and the admin key.
pub fn write_replica_config(
    dir: &Path,
    url: &str,
    ca: &Path,
    purpose: &str,
    extra: &str,
) -> TestResult<(PathBuf, PathBuf, String)> {
    let admin = KeySpec {
        name: "admin",
        scopes: &SCOPES,
        purposes: &["*"],
    };
    let text = format!(
        "[[purposes]]\nname = \"{purpose}\"\nbasis = \"contract\"\n\
         [storage]\nbackend = \"postgres\"\nurl = \"{url}\"\nca_file = \"{}\"\npool_size = 8\n{extra}",
        ca.display()
    );
    let (config, cert, keys) = write_config(dir, &[admin], &text)?;
    Ok((config, cert, keys["admin"].clone()))
}

/// Reads one metric's value from a Prometheus text page.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}
