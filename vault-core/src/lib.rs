//! `vault-core`: an embeddable personal-data vault.
//!
//! Services store opaque [`Token`]s; the vault keeps the values, each encrypted under
//! a key of its data subject's own. Erasing a subject destroys that key
//! (crypto-shredding) and then purges the bytes from every file; exporting a subject
//! decrypts just its records.
//!
//! ```no_run
//! use vault_core::{RootKey, Vault, VaultOptions};
//!
//! # fn main() -> Result<(), vault_core::Error> {
//! let root = RootKey::passphrase("a long and secret passphrase");
//! let vault = Vault::open("./vault-data", &root, VaultOptions::default())?;
//! let token = vault.tokenize("customer-42", "email", "alice@example.com")?;
//! let record = vault.detokenize(&token.to_string())?;
//! assert_eq!(record.value.as_str(), Some("alice@example.com"));
//! let receipt = vault.erase("customer-42")?;
//! assert!(matches!(vault.detokenize(&token.to_string()), Err(vault_core::Error::Erased)));
//! # let _ = receipt; Ok(()) }
//! ```
//!
//! See the repository's README for the design: key hierarchy, storage layout,
//! erasure and what the vault guarantees.

// Denied, not forbidden: `mapped` (a memory-mapped file, one `unsafe` call with its
// safety argument) is the one module allowed it.
#![deny(unsafe_code)]
#![deny(missing_docs)]

// Declared in the order rustdoc lists `Vault`'s methods: opening and the everyday
// calls first, then purposes and consent, the data subject's rights, and the
// operations for ops people.
mod vault;

mod tokenize;

mod read;

mod update;

mod access;
mod consent;
mod export;

mod actor;
mod backups;
mod erase;
mod purge;
mod restore;

mod audit;
mod retention;
mod rotate;
mod status;

mod alias;
mod backup;
mod cache;
mod codec;
mod crypto;
mod durable;
mod error;
mod events;
mod failpoints;
mod header;
mod inventory;
mod journal;
mod key_state;
mod keys;
mod mapped;
#[cfg(feature = "postgres")]
mod migrate;
mod options;
mod overview;
mod owner;
mod pseudonymize;
mod purposes;
mod records;
mod retire;
mod staged;
mod store;
mod subjects;
mod synthetic;
mod token;
mod worker;

// --- Opening a vault ---
pub use keys::RootKey;
pub use options::{Clock, Durability, KdfParams, Limits, PurgePolicy, SystemClock, VaultOptions};
pub use tokenize::TokenizeRequest;
pub use vault::Vault;

// --- Tokens and values ---
pub use durable::{Synced, Unsynced};
pub use records::{Detokenized, ExportedRecord, Plaintext};
pub use token::{EMAIL_TOKEN_DOMAIN, MAX_DIGIT_TOKEN_LEN, TOKEN_TEXT_LEN, Token, TokenFormat};

// --- Purposes and consent ---
pub use consent::{ConsentEvent, ConsentStatus, MAX_SOURCE_LEN};
pub use purposes::{Access, LawfulBasis, Mask, Purpose, valid_purpose_name};

// --- The data subject's rights: export and erasure ---
pub use erase::{ErasureReceipt, PendingPurge, PurgeReport, PurgeState, SubjectRef};
pub use export::SubjectExport;
pub use inventory::{BackupStatus, FieldInventory, FieldPurpose, Inventory};
pub use overview::{RecordInfo, SubjectOverview};

// --- Accountability: actors and the audit trail ---
pub use actor::Actor;
pub use audit::{AnchorCheck, AuditHead, AuditVerification};
pub use events::{AuditAction, AuditEvent, AuditOutcome, RESTORE_ACTOR, RETENTION_ACTOR};
pub use options::{DEFAULT_ACTOR, valid_actor};

// --- Backups and restores ---
pub use backup::{BackupInfo, BackupList};
pub use options::{BackupOptions, DEFAULT_BACKUPS_KEPT};
pub use restore::{RestoreOptions, RestoreReport, restore};

// --- Keys and storage, for ops ---
#[cfg(feature = "postgres")]
pub use migrate::{MigrationReport, migrate_to_postgres};
pub use pseudonymize::{FakeFields, PseudonymizeReport, pseudonymize};
pub use rotate::{KekVersionStatus, KeyStatus};
#[cfg(feature = "postgres")]
pub use store::PostgresConfig;
pub use store::StorageCounters;
pub use synthetic::FakeKind;

// --- Errors ---
pub use error::{Argument, BackupProblem, Error, InputError, Problem, StorageError};

// --- Limits and defaults of the options ---
pub use options::{
    DEFAULT_BLOCK_CACHE, DEFAULT_SYNC_GATHER, MAX_PURGE_DELAY, MAX_SYNC_GATHER, MIN_BLOCK_CACHE,
};

/// Tuning constants the server and the benchmarks share with the vault. Not part of
/// the API: they change with measurements.
#[doc(hidden)]
pub mod internal {
    pub use crate::options::{
        SCATTERED_WRITE_BUFFER, SERVER_BLOCK_CACHE, SMALL_ENTRY_WRITE_BUFFER,
    };

    /// The storage key of the record a token names (tests that read or damage the
    /// stored bytes need it: a token encrypts it).
    pub fn record_key(vault: &crate::Vault, token: &str) -> Result<[u8; 16], crate::Error> {
        vault.inner.token_id(token)
    }

    /// Flushes and compacts every subject-data family whole, as a purge once did:
    /// benchmarks settle a loaded vault with it. `false` if it could not verify
    /// that no older file is left.
    pub fn compact(vault: &crate::Vault) -> Result<bool, crate::Error> {
        vault.inner.compact_all()
    }

    /// Injected faults for the fault-injection tests (feature `failpoints`).
    #[cfg(feature = "failpoints")]
    pub use crate::failpoints::{Fault, arm as arm_fault, disarm as disarm_faults};
}

/// The decoders of untrusted bytes, for the fuzz targets in `fuzz/` (feature
/// `fuzzing`) and the tests that replay their corpus. Not part of the API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

// Every Rust block of the README is compiled and run as a doctest, so that the
// embedding examples there cannot stop compiling unnoticed.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
