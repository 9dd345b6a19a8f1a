//! The vault's error type.
//!
//! No variant carries a subject id, a field value or a token-to-value pairing: an
//! error's `Display` may end up in a log line. Every failure to authenticate stored
//! data collapses into [`Error::Integrity`], which says nothing about *why*.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in the vault.
///
/// The outcomes of a read are distinct variants, so a caller can tell a token that
/// never existed from one whose subject was erased:
///
/// ```
/// use vault_core::{Error, RootKey, Vault, VaultOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path().join("vault");
/// # let vault = Vault::open(&dir, &RootKey::generate()?, VaultOptions::default())?;
/// # let token = vault.tokenize("customer-42", "email", "alice@example.com")?.to_string();
/// # vault.erase("customer-42")?;
/// match vault.detokenize(&token) {
///     Ok(record) => println!("{} is {} bytes", record.field, record.value.as_bytes().len()),
///     Err(Error::Erased) => println!("the person was erased: forget the token"),
///     Err(Error::NotFound) => println!("no such record (deleted, or not this vault's)"),
///     Err(Error::InvalidToken) => println!("not a token at all"),
///     Err(e) => return Err(e.into()),
/// }
/// // Bad input names the argument and the problem, never the content.
/// let refused = vault.tokenize("", "email", "alice@example.com").unwrap_err();
/// assert_eq!(refused.to_string(), "invalid input: subject id is empty");
/// # vault.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument was rejected before anything was read or written. Displayed in
    /// full ("invalid input: item 2: field name is empty"); not chained as a
    /// `source()`, which would print it twice.
    #[error("invalid input: {0}")]
    InvalidInput(InputError),
    /// The text does not have a token's shape (what [`Token`](crate::Token)'s
    /// `FromStr` refuses): it is not `tok_` and 32 lowercase base32 characters
    /// (alone or at [`EMAIL_TOKEN_DOMAIN`](crate::EMAIL_TOKEN_DOMAIN)), nor 1 to
    /// [`MAX_DIGIT_TOKEN_LEN`](crate::MAX_DIGIT_TOKEN_LEN) digits. A token of that
    /// shape that this vault did not issue is [`Error::NotFound`].
    #[error("invalid token")]
    InvalidToken,
    /// No record exists for this token: it was deleted, or this vault never issued
    /// it (another vault's token, or digits no token was issued as). The shape is
    /// what a client can check; whether this vault issued a token is a lookup,
    /// answered like any missing record.
    #[error("not found")]
    NotFound,
    /// The record's subject has been erased; its key no longer exists.
    #[error("erased")]
    Erased,
    /// The record is past its field's retention period; its value is (or is being)
    /// purged.
    #[error("expired")]
    Expired,
    /// The purpose was not declared in the options the vault was opened with
    /// ([`VaultOptions::purpose`](crate::VaultOptions::purpose); purposes are not
    /// stored, so they must be declared at every open).
    #[error("unknown purpose")]
    UnknownPurpose,
    /// Consent was recorded for a purpose whose lawful basis is not consent.
    #[error("the purpose's lawful basis is not consent")]
    NotConsentBased,
    /// The purpose does not cover the record's field. Nothing was decrypted.
    #[error("the purpose does not cover this field")]
    Forbidden,
    /// The purpose's lawful basis is consent, and the subject's consent to it is not
    /// currently granted (never given, or withdrawn). Nothing was decrypted.
    #[error("no consent for this purpose")]
    NoConsent,
    /// A deterministic token's value cannot be rectified (the token is derived from
    /// it): tokenize the new value and delete the old token instead.
    #[error("a deterministic token cannot be rectified")]
    DeterministicToken,
    /// A new vault (a staging vault) is built only in a new or empty directory.
    #[error("{} is not empty: a staging vault is built in a new directory", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// Every token of the format and length asked for is taken (a short value's
    /// digits allow few tokens): nothing was stored.
    #[error("no token of this format and length is left")]
    TokenSpaceExhausted,
    /// Stored data failed authentication: it was altered, moved, or cannot be read
    /// with this vault's keys. Nothing was returned from it.
    #[error("integrity check failed")]
    Integrity,
    /// The audit trail's checkpoint did not authenticate when the vault opened: its
    /// end is unknown, so nothing that must be audited is done (and the damage is not
    /// overwritten). [`Vault::verify_audit`](crate::Vault::verify_audit) reports it;
    /// restore the vault from a backup.
    #[error("the audit trail is damaged; audited operations are refused")]
    AuditDamaged,
    /// The root key (passphrase or key) does not open this vault. Nothing was
    /// decrypted and nothing on disk changed.
    #[error("the root key does not open this vault")]
    WrongRootKey,
    /// The directory exists but holds something other than a vault. Nothing was changed.
    #[error("{} is not a vault directory", path.display())]
    NotAVault {
        /// The directory that was opened.
        path: PathBuf,
    },
    /// The directory holds no vault and the options did not allow creating one.
    #[error("no vault at {}", path.display())]
    NoVault {
        /// The directory that was opened.
        path: PathBuf,
    },
    /// The vault directory is already open, in this process or another (through any
    /// spelling of its path: a symlink, `dir/.`, a relative path). A vault directory
    /// has one owner at a time; share one [`Vault`](crate::Vault) through an `Arc`
    /// instead of opening it twice. Nothing was read or changed.
    #[error(
        "the vault in {} is already open (by this process or another); a vault directory has one owner at a time",
        path.display()
    )]
    AlreadyOpen {
        /// The directory, canonicalized.
        path: PathBuf,
    },
    /// The vault was written by a newer version of this software.
    #[error("vault format version {found} is newer than the {supported} this build reads")]
    UnsupportedFormat {
        /// The format version found on disk.
        found: u16,
        /// The newest format version this build understands.
        supported: u16,
    },
    /// An option is out of its allowed range.
    #[error("invalid option: {0}")]
    InvalidOption(&'static str),
    /// A file operation on the vault directory failed.
    #[error("I/O error on {}", path.display())]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The storage engine reported an error, displayed with its cause (the engine's
    /// message names files and states, never stored values).
    #[error("storage error: {0}")]
    Storage(StorageError),
    /// The operating system's random generator failed.
    #[error("the operating system's random generator failed")]
    Random,
    /// A purge ran but could not verify that the erased bytes left every file (an
    /// open iterator can pin an old file); the erasures stay pending and are retried.
    #[error("the purge could not be verified yet; it will be retried")]
    PurgeUnverified,
    /// Deriving the root key from the passphrase failed.
    #[error("key derivation failed")]
    Kdf,
    /// A backup, a restore or the erasure journal beside the backups was refused.
    /// Nothing was changed.
    #[error("{0}")]
    Backup(BackupProblem),
    /// Another replica of the vault (on a shared PostgreSQL store) kept changing
    /// what this write depended on, and it was given up after several tries.
    /// Nothing was written; try again.
    #[error("a concurrent change by another replica kept this write from committing; try again")]
    Conflict,
    /// A migration into this PostgreSQL schema began and did not finish: the vault
    /// there may be incomplete. Run the migration again; it copies everything anew.
    #[error("a migration into this PostgreSQL schema did not finish; run it again")]
    MigrationUnfinished,
    /// The operation does not exist on this vault's storage backend.
    #[error("not supported here: {0}")]
    Unsupported(&'static str),
}

/// Why a backup, a restore or the erasure journal was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupProblem {
    /// The vault was opened without a backup directory.
    #[error("no backup directory is configured")]
    NotConfigured,
    /// The directory holds no backup manifest.
    #[error("{} is not a backup", path.display())]
    NotABackup {
        /// The directory given.
        path: PathBuf,
    },
    /// The backup's header does not open with this root key: it is another vault's,
    /// or the root key was changed since (an old backup needs the old root key).
    #[error("the backup in {} is not of this vault, or was made under another root key", path.display())]
    NotOfThisVault {
        /// The backup's directory.
        path: PathBuf,
    },
    /// A file of the backup is missing, truncated or altered, or its manifest does
    /// not authenticate.
    #[error("the backup in {} is damaged: {file} is missing, truncated or altered", path.display())]
    Damaged {
        /// The backup's directory.
        path: PathBuf,
        /// The file that failed its check.
        file: String,
    },
    /// The erasure journal is missing: a restore cannot replay the erasures made
    /// since the backup.
    #[error("the erasure journal {} is missing", path.display())]
    JournalMissing {
        /// Where it should be.
        path: PathBuf,
    },
    /// The erasure journal is another vault's, or its header was altered.
    #[error("the erasure journal {} is not this vault's", path.display())]
    JournalNotOfThisVault {
        /// The journal file.
        path: PathBuf,
    },
    /// An entry of the erasure journal failed authentication.
    #[error("the erasure journal {} is damaged from entry {entry} on", path.display())]
    JournalDamaged {
        /// The journal file.
        path: PathBuf,
        /// The first entry that failed, counted from 1.
        entry: u64,
    },
    /// The erasure journal holds fewer entries than the vault recorded: it was
    /// rolled back, cut or replaced.
    #[error("the erasure journal {} lost entries the vault recorded ({found} of {expected})", path.display())]
    JournalBehind {
        /// The journal file.
        path: PathBuf,
        /// Entries found.
        found: u64,
        /// Entries the vault recorded.
        expected: u64,
    },
    /// The vault recorded its erasures in a journal for backups, and was opened
    /// without the backup directory: erasures made now would come back with a restore.
    #[error("this vault journals its erasures for its backups; open it with its backup directory")]
    JournalNotAttached,
    /// A restore into this directory stopped after its copy was ready and before it
    /// was swapped in: run the same restore again to finish it.
    #[error("a restore into this directory is unfinished ({} exists): run it again", path.display())]
    RestoreUnfinished {
        /// The restore's mark.
        path: PathBuf,
    },
    /// The restore's target directory holds something, and replacing it was not asked for.
    #[error("{} is not empty; pass replace to restore over it", path.display())]
    TargetNotEmpty {
        /// The target directory.
        path: PathBuf,
    },
}

impl From<InputError> for Error {
    fn from(e: InputError) -> Error {
        Error::InvalidInput(e)
    }
}

impl Error {
    /// The error of a call that took one item, made through a batch of one: no
    /// "item 0" in the message.
    pub(crate) fn single(self) -> Error {
        match self {
            Error::InvalidInput(e) => Error::InvalidInput(InputError { item: None, ..e }),
            other => other,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// An error reported by the storage engine. Its message comes from the engine and names
/// files and states, never stored values.
#[derive(Debug)]
pub struct StorageError(pub(crate) String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageError {}

/// Why an argument was rejected: which argument, in which batch item, and what is
/// wrong with it, never its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputError {
    /// Index of the offending item in a batch call, if the call was a batch.
    pub item: Option<usize>,
    /// Which argument was rejected.
    pub argument: Argument,
    /// What is wrong with it.
    pub problem: Problem,
}

impl InputError {
    pub(crate) fn new(argument: Argument, problem: Problem) -> InputError {
        InputError {
            item: None,
            argument,
            problem,
        }
    }

    pub(crate) fn at(mut self, item: usize) -> InputError {
        self.item = Some(item);
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(i) = self.item {
            write!(f, "item {i}: ")?;
        }
        write!(f, "{} {}", self.argument, self.problem)
    }
}

impl std::error::Error for InputError {}

/// The argument an [`InputError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Argument {
    /// The subject id.
    Subject,
    /// The field name.
    Field,
    /// The value.
    Value,
    /// The batch as a whole.
    Batch,
    /// A purpose name.
    Purpose,
    /// The source of a consent (e.g. which form).
    Source,
    /// A token.
    Token,
    /// The actor named for the audit trail.
    Actor,
    /// Where a paged read goes on (an export's `next`).
    Cursor,
    /// A token format.
    Format,
}

impl fmt::Display for Argument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Argument::Subject => "subject id",
            Argument::Field => "field name",
            Argument::Value => "value",
            Argument::Batch => "batch",
            Argument::Purpose => "purpose",
            Argument::Source => "consent source",
            Argument::Token => "token",
            Argument::Actor => "actor",
            Argument::Cursor => "cursor",
            Argument::Format => "token format",
        })
    }
}

/// What is wrong with an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// It is empty.
    Empty,
    /// It is longer than the configured limit (characters for a subject id and a
    /// consent source, items for a batch, else bytes).
    TooLong {
        /// The configured limit.
        limit: usize,
    },
    /// It does not have a token's shape ([`Error::InvalidToken`]).
    NotAToken,
    /// It contains a character that is not allowed (control characters; for field
    /// names anything but ASCII letters, digits, `_`, `-` and `.`).
    BadCharacter,
    /// A subject id with whitespace at its start or end.
    SurroundingWhitespace,
    /// A subject id with a character that shows nothing (zero-width, a direction
    /// mark, a soft hyphen…).
    Invisible,
    /// It does not have the shape of one (an export cursor: `r<token>.<n>`,
    /// `e<n>.<n>` or `e.<n>`, numbers of at most 19 digits).
    Malformed,
    /// It is not one of the names accepted (token formats: digits, luhn, email).
    Unknown,
    /// The value does not have the shape its token format keeps: digits only (1
    /// to 32) for `digits`, 8 to 19 digits for `luhn`.
    WrongShape,
    /// The token format cannot be deterministic (only `email` can).
    NotDeterministic,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => f.write_str("is empty"),
            Problem::TooLong { limit } => write!(f, "exceeds the limit of {limit}"),
            Problem::BadCharacter => f.write_str("contains a character that is not allowed"),
            Problem::NotAToken => f.write_str("does not have a token's shape"),
            Problem::SurroundingWhitespace => f.write_str("has whitespace at its start or end"),
            Problem::Invisible => f.write_str("contains an invisible character"),
            Problem::Malformed => f.write_str("does not have the shape of one"),
            Problem::Unknown => f.write_str("is not one of those accepted"),
            Problem::WrongShape => f.write_str("does not have the shape its token format keeps"),
            Problem::NotDeterministic => f.write_str("cannot be deterministic"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// What `anyhow`'s `{:#}` prints: the error and each source, joined by ": ".
    fn chain(e: &Error) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        text
    }

    #[test]
    fn a_storage_error_shows_its_cause_once() {
        let e = Error::Storage(StorageError("IO error: No space left on device".into()));
        assert_eq!(
            chain(&e),
            "storage error: IO error: No space left on device"
        );
    }

    #[test]
    fn an_input_error_shows_its_argument_and_item_once() {
        let e = Error::from(InputError::new(Argument::Field, Problem::Empty).at(2));
        assert_eq!(chain(&e), "invalid input: item 2: field name is empty");
        assert_eq!(chain(&e.single()), "invalid input: field name is empty");
    }
}
