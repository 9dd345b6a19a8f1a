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

mod access;
mod actor;
mod audit;
mod codec;
mod consent;
mod crypto;
mod durable;
mod erase;
mod error;
mod export;
mod header;
mod keys;
mod mapped;
mod options;
mod purposes;
mod records;
mod retention;
mod rotate;
mod staged;
mod store;
mod subjects;
mod token;
mod vault;
mod worker;

pub use actor::Actor;
pub use audit::{AuditAction, AuditEvent, AuditOutcome, AuditVerification};
pub use consent::{ConsentEvent, ConsentStatus, MAX_SOURCE_LEN};
pub use durable::{Synced, Unsynced};
pub use erase::{ErasureReceipt, PendingPurge, PurgeReport, PurgeState, SubjectRef};
pub use error::{Argument, Error, InputError, Problem, StorageError};
pub use export::SubjectExport;
pub use keys::RootKey;
pub use options::{
    Clock, DEFAULT_ACTOR, DEFAULT_BLOCK_CACHE, DEFAULT_SYNC_GATHER, Durability, KdfParams, Limits,
    MAX_PURGE_DELAY, MAX_SYNC_GATHER, MIN_BLOCK_CACHE, PurgePolicy, SCATTERED_WRITE_BUFFER,
    SERVER_BLOCK_CACHE, SMALL_ENTRY_WRITE_BUFFER, SystemClock, VaultOptions, valid_actor,
};
pub use purposes::{Access, LawfulBasis, Mask, Purpose, valid_purpose_name};
pub use records::{Detokenized, ExportedRecord, Plaintext};
pub use retention::RETENTION_ACTOR;
pub use rotate::{KekVersionStatus, KeyStatus};
pub use store::StorageCounters;
pub use token::{TOKEN_TEXT_LEN, Token};
pub use vault::{TokenizeRequest, Vault};
