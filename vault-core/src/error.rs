//! The vault's error type.
//!
//! No variant carries a subject id, a field value or a token-to-value pairing: an
//! error's `Display` may end up in a log line. Every failure to authenticate stored
//! data collapses into [`Error::Integrity`], which says nothing about *why*.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong in the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument was rejected before anything was read or written.
    #[error("invalid input: {0}")]
    InvalidInput(#[from] InputError),
    /// The text is not a token of this vault (malformed, or issued by another vault).
    #[error("invalid token")]
    InvalidToken,
    /// No record exists for this token.
    #[error("not found")]
    NotFound,
    /// The record's subject has been erased; its key no longer exists.
    #[error("erased")]
    Erased,
    /// The record is past its field's retention period; its value is (or is being)
    /// purged.
    #[error("expired")]
    Expired,
    /// The purpose was not declared in the vault's options.
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
    /// The storage engine reported an error.
    #[error("storage error")]
    Storage(#[source] StorageError),
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
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// An error reported by the storage engine. Its message comes from RocksDB and names
/// files and states, never stored values.
#[derive(Debug)]
pub struct StorageError(pub(crate) String);

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StorageError {}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Error {
        Error::Storage(StorageError(e.into_string()))
    }
}

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
        })
    }
}

/// What is wrong with an argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// It is empty.
    Empty,
    /// It is longer than the configured limit (bytes, or items for a batch).
    TooLong {
        /// The configured limit.
        limit: usize,
    },
    /// It is not a token of this vault (malformed, or another vault's).
    NotAToken,
    /// It contains a character that is not allowed (control characters; for field
    /// names anything but ASCII letters, digits, `_`, `-` and `.`).
    BadCharacter,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Empty => f.write_str("is empty"),
            Problem::TooLong { limit } => write!(f, "exceeds the limit of {limit}"),
            Problem::BadCharacter => f.write_str("contains a character that is not allowed"),
            Problem::NotAToken => f.write_str("is not a token of this vault"),
        }
    }
}
