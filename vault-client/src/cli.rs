//! `vaultctl`: the vault's API from a shell, for people and ops.
//!
//! Reads `VAULT_ADDR`, `VAULT_API_KEY` and `VAULT_CACERT`. Prints JSON on stdout.
//! Exit codes: 0 done, 1 the server refused (its error code on stderr), 2 usage or
//! client configuration, 3 the server could not be reached or answered nonsense.
//!
//! Values can come from stdin (`--value-stdin`), which keeps them out of the shell
//! history and the process list.

use std::io::Read;
use std::process::ExitCode;

use clap::{Args as ClapArgs, Parser, Subcommand};
use serde::Serialize;

use crate::api::{Sensitive, TokenFormat, TokenizeItem, TokenizeRequest};
use crate::client::{Client, Error};

/// `vaultctl` arguments.
#[derive(Debug, Parser)]
#[command(
    name = "vaultctl",
    version,
    about = "Command-line client of the personal-data vault",
    after_help = "Environment: VAULT_ADDR (e.g. https://127.0.0.1:8200), VAULT_API_KEY, VAULT_CACERT (PEM file of the CA to trust).\nExit codes: 0 done, 1 refused by the server, 2 usage or configuration, 3 server unreachable."
)]
pub struct Args {
    /// Accept an http:// VAULT_ADDR: the API key, subject ids and values then cross
    /// the network in the clear.
    #[arg(long, global = true)]
    danger_allow_plain_http: bool,
    #[command(subcommand)]
    command: Command,
}

/// A subject id: on the command line (visible in the process list and shell
/// history) or, better, from stdin.
#[derive(Debug, ClapArgs)]
#[group(required = true, multiple = false)]
struct SubjectArgs {
    /// The subject id.
    #[arg(long)]
    subject: Option<String>,
    /// Read the subject id from stdin (one trailing newline is dropped).
    #[arg(long)]
    subject_stdin: bool,
}

impl SubjectArgs {
    fn read(self) -> Result<Sensitive, Failure> {
        self.read_from(&mut StdinParts::new(1))
    }

    /// Without `--subject`, the subject comes from stdin.
    fn read_from(self, stdin: &mut StdinParts) -> Result<Sensitive, Failure> {
        match self.subject {
            Some(subject) => Ok(Sensitive::new(subject)),
            None => stdin.next("subject id").map(Sensitive::new),
        }
    }

    fn wants_stdin(&self) -> bool {
        self.subject.is_none()
    }
}

/// Standard input for the `--…-stdin` options, read once. With one such option the
/// whole of it is the value (one trailing newline dropped); with several, each
/// takes one line, in the order subject, value, source.
struct StdinParts {
    wanted: usize,
    lines: Option<std::vec::IntoIter<String>>,
}

impl StdinParts {
    fn new(wanted: usize) -> StdinParts {
        StdinParts {
            wanted,
            lines: None,
        }
    }

    fn next(&mut self, what: &str) -> Result<String, Failure> {
        if self.lines.is_none() {
            let text = read_stdin_line()?;
            let parts: Vec<String> = if self.wanted > 1 {
                text.lines().map(str::to_owned).collect()
            } else {
                vec![text]
            };
            self.lines = Some(parts.into_iter());
        }
        self.lines
            .as_mut()
            .and_then(Iterator::next)
            .ok_or_else(|| Failure::Usage(format!("stdin holds no line for the {what}")))
    }
}

fn read_stdin_line() -> Result<String, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tokenize one value (or a batch with --batch).
    Tokenize(TokenizeArgs),
    /// Turn tokens back into values.
    Detokenize {
        /// Why the values are needed (the API key must be allowed it).
        #[arg(long)]
        purpose: String,
        /// Tokens.
        #[arg(required = true)]
        tokens: Vec<String>,
    },
    /// Replace the value behind a token (rectification).
    Rectify {
        /// The token.
        token: String,
        #[command(flatten)]
        value: ValueArgs,
    },
    /// Delete the record behind a token.
    Delete {
        /// The token.
        token: String,
    },
    /// Erase a subject (right to be forgotten): prints the erasure receipt.
    Erase {
        #[command(flatten)]
        subject: SubjectArgs,
    },
    /// Export everything the vault holds about a subject.
    Export {
        #[command(flatten)]
        subject: SubjectArgs,
    },
    /// Record a subject's consent to a purpose (--grant) or its withdrawal (--withdraw).
    Consent {
        #[command(flatten)]
        subject: SubjectArgs,
        /// A declared purpose.
        #[arg(long)]
        purpose: String,
        /// Grant consent.
        #[arg(
            long,
            conflicts_with = "withdraw",
            required_unless_present = "withdraw"
        )]
        grant: bool,
        /// Withdraw consent.
        #[arg(long)]
        withdraw: bool,
        /// Where it was given or withdrawn (e.g. which form).
        #[arg(long, conflicts_with = "source_stdin")]
        source: Option<String>,
        /// Read the source from stdin (with the subject from stdin too: the second
        /// line).
        #[arg(long)]
        source_stdin: bool,
    },
    /// Show a subject's consents: current state and history per purpose.
    Consents {
        #[command(flatten)]
        subject: SubjectArgs,
    },
    /// List the declared purposes and their lawful bases.
    Purposes,
    /// Print audit events (no personal data in them).
    Audit {
        /// Events after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// How many (1-1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Check the whole audit trail; exits 1 if it was tampered with, or if it no
    /// longer holds the head given (taken earlier with `audit-head`).
    AuditVerify {
        /// The expected head's sequence number.
        #[arg(long, requires = "expected_mac")]
        expected_seq: Option<u64>,
        /// The expected head's MAC (64 hex digits).
        #[arg(long, requires = "expected_seq")]
        expected_mac: Option<String>,
    },
    /// Print the audit trail's head (sequence number and MAC), to keep elsewhere.
    AuditHead,
    /// Print the data inventory, the record of processing (GDPR Art. 30): per
    /// field, records, subjects, oldest record, retention and purposes.
    Inventory {
        /// `markdown` (a table for an auditor) or `json`.
        #[arg(long, default_value = "markdown", value_parser = ["markdown", "json"])]
        format: String,
    },
    /// Start a key-encryption-key rotation.
    Rotate,
    /// Show key versions, rotation and purge progress; `keys retire` finishes the
    /// rotation under way and retires the old versions.
    Keys {
        #[command(subcommand)]
        action: Option<KeysCommand>,
    },
    /// Take or list backups.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Check that the server is live and ready.
    Health,
    /// Print the server's Prometheus metrics.
    Metrics,
    /// Print the server's OpenAPI document.
    Openapi,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Finish the rotation under way and retire the old KEK versions.
    Retire,
}

#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Take a backup now (the server keeps serving); prints it.
    Create,
    /// List the kept backups and how long erased subjects live on in them.
    List,
}

#[derive(Debug, ClapArgs)]
struct TokenizeArgs {
    /// The subject id (visible in the process list: prefer --subject-stdin).
    #[arg(
        long,
        required_unless_present_any = ["batch", "subject_stdin"],
        conflicts_with_all = ["batch", "subject_stdin"]
    )]
    subject: Option<String>,
    /// Read the subject id from stdin (with --value-stdin too: its first line).
    #[arg(long, conflicts_with = "batch")]
    subject_stdin: bool,
    /// The field name (e.g. email).
    #[arg(long, required_unless_present = "batch", conflicts_with = "batch")]
    field: Option<String>,
    #[command(flatten)]
    value: ValueArgs,
    /// Ask for the deterministic token.
    #[arg(long, conflicts_with = "batch")]
    deterministic: bool,
    /// The token's shape: digits, luhn or email.
    #[arg(long, value_name = "FORMAT", conflicts_with = "batch", value_parser = parse_format)]
    format: Option<TokenFormat>,
    /// A JSON file of `{"items": [...]}` as the API takes it; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    batch: Option<String>,
}

#[derive(Debug, ClapArgs)]
#[group(multiple = false)]
struct ValueArgs {
    /// The value (visible in the process list: prefer --value-stdin).
    #[arg(long)]
    value: Option<String>,
    /// Read the value from stdin (one trailing newline is dropped).
    #[arg(long)]
    value_stdin: bool,
}

fn parse_format(text: &str) -> Result<TokenFormat, String> {
    match text {
        "digits" => Ok(TokenFormat::Digits),
        "luhn" => Ok(TokenFormat::Luhn),
        "email" => Ok(TokenFormat::Email),
        _ => Err("a token format is digits, luhn or email".into()),
    }
}

impl ValueArgs {
    fn read(self) -> Result<Option<Sensitive>, Failure> {
        self.read_from(&mut StdinParts::new(1))
    }

    fn read_from(self, stdin: &mut StdinParts) -> Result<Option<Sensitive>, Failure> {
        if let Some(value) = self.value {
            return Ok(Some(Sensitive::new(value)));
        }
        if self.value_stdin {
            return stdin.next("value").map(|text| Some(Sensitive::new(text)));
        }
        Ok(None)
    }
}

enum Failure {
    Usage(String),
    Client(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Client(e)
    }
}

/// Runs `vaultctl`; the return value is the exit code.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("vaultctl: cannot start: {e}");
            return ExitCode::from(3);
        }
    };
    match runtime.block_on(run(args.command, args.danger_allow_plain_http)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("vaultctl: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Client(e)) => {
            eprintln!("vaultctl: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::from(match e {
                Error::Api { .. } => 1,
                Error::Config(_) | Error::InvalidArgument(_) => 2,
                _ => 3,
            })
        }
    }
}

fn print(value: &impl Serialize) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Usage(format!("cannot print the answer: {e}")))?;
    println!("{text}");
    Ok(())
}

async fn run(command: Command, allow_plain_http: bool) -> Result<(), Failure> {
    let mut builder = Client::builder_from_env()?;
    if allow_plain_http {
        builder = builder.danger_allow_plain_http();
    }
    let client = builder.build()?;
    match command {
        Command::Tokenize(args) => {
            let items = match args.batch {
                Some(file) => read_batch(&file)?,
                None => {
                    let mut stdin = StdinParts::new(
                        usize::from(args.subject_stdin) + usize::from(args.value.value_stdin),
                    );
                    let subject = match args.subject {
                        Some(subject) => subject,
                        None if args.subject_stdin => stdin.next("subject id")?,
                        None => {
                            return Err(Failure::Usage(
                                "--subject or --subject-stdin is required".into(),
                            ));
                        }
                    };
                    let Some(field) = args.field else {
                        return Err(Failure::Usage("--field is required".into()));
                    };
                    let value = args.value.read_from(&mut stdin)?.ok_or_else(|| {
                        Failure::Usage("--value or --value-stdin is required".into())
                    })?;
                    let mut item = TokenizeItem::new(subject, field, value);
                    item.format = args.format;
                    vec![if args.deterministic {
                        item.deterministic()
                    } else {
                        item
                    }]
                }
            };
            let tokens = client.tokenize(items).await?;
            print(&crate::api::TokenizeResponse { tokens })
        }
        Command::Detokenize { purpose, tokens } => {
            let results = client.detokenize(&tokens, &purpose).await?;
            print(&crate::api::DetokenizeResponse { results })
        }
        Command::Rectify { token, value } => {
            let value = value
                .read()?
                .ok_or_else(|| Failure::Usage("--value or --value-stdin is required".into()))?;
            client.rectify(&token, value).await?;
            print(&serde_json::json!({ "rectified": token }))
        }
        Command::Delete { token } => {
            client.delete(&token).await?;
            print(&serde_json::json!({ "deleted": token }))
        }
        Command::Erase { subject } => print(&client.erase(subject.read()?).await?),
        Command::Export { subject } => print(&client.export(subject.read()?).await?),
        Command::Consent {
            subject,
            purpose,
            grant,
            withdraw: _,
            source,
            source_stdin,
        } => {
            let mut stdin =
                StdinParts::new(usize::from(subject.wants_stdin()) + usize::from(source_stdin));
            let subject = subject.read_from(&mut stdin)?;
            let source = match source {
                Some(source) => Some(source),
                None if source_stdin => Some(stdin.next("source")?),
                None => None,
            };
            client
                .record_consent(subject, &purpose, grant, source.as_deref())
                .await?;
            print(&serde_json::json!({ "purpose": purpose, "granted": grant }))
        }
        Command::Consents { subject } => print(&client.consents(subject.read()?).await?),
        Command::Purposes => print(&client.purposes().await?),
        Command::Audit { after, limit } => print(&client.audit_events(after, limit).await?),
        Command::AuditHead => print(&client.audit_head().await?),
        Command::Inventory { format } => {
            let inventory = client.inventory().await?;
            if format == "json" {
                print(&inventory)
            } else {
                print!("{}", crate::inventory::markdown(&inventory));
                Ok(())
            }
        }
        Command::AuditVerify {
            expected_seq,
            expected_mac,
        } => {
            let check = match expected_seq.zip(expected_mac) {
                Some((seq, mac)) => {
                    client
                        .verify_audit_against(crate::api::ExpectedHead { seq, mac })
                        .await?
                }
                None => client.verify_audit().await?,
            };
            print(&check)?;
            if check.ok {
                Ok(())
            } else {
                Err(Failure::Client(Error::Api {
                    status: 200,
                    code: "audit_tampered".into(),
                    message: check.problem.unwrap_or_default(),
                    item: None,
                }))
            }
        }
        Command::Rotate => print(&client.rotate().await?),
        Command::Keys { action: None } => print(&client.keys().await?),
        Command::Keys {
            action: Some(KeysCommand::Retire),
        } => print(&client.retire_keys().await?),
        Command::Backup(BackupCommand::Create) => print(&client.create_backup().await?),
        Command::Backup(BackupCommand::List) => print(&client.backups().await?),
        Command::Metrics => {
            print!("{}", client.metrics().await?);
            Ok(())
        }
        Command::Openapi => print(&client.openapi().await?),
        Command::Health => {
            let (live, ready) = client.health().await?;
            print(&serde_json::json!({ "live": live, "ready": ready }))?;
            if live && ready {
                Ok(())
            } else {
                Err(Failure::Client(Error::Api {
                    status: 503,
                    code: "not_ready".into(),
                    message: "the server is not ready".into(),
                    item: None,
                }))
            }
        }
    }
}

fn read_batch(file: &str) -> Result<Vec<TokenizeItem>, Failure> {
    let text = if file == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
        text
    } else {
        std::fs::read_to_string(file)
            .map_err(|e| Failure::Usage(format!("cannot read {file}: {e}")))?
    };
    let batch: TokenizeRequest = serde_json::from_str(&text).map_err(|e| {
        // serde quotes the input; say only where it went wrong.
        Failure::Usage(format!(
            "{file}: not a tokenize batch ({{\"items\": [{{\"subject\",\"field\",\"value\"}}]}}) at line {}, column {}",
            e.line(),
            e.column()
        ))
    })?;
    Ok(batch.items)
}
