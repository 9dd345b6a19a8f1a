//! Records: one value of one subject, stored under its token id and sealed with the
//! subject's DEK. The AAD binds the ciphertext to the vault, the subject's storage id,
//! the token id, the field name, the creation time and the token kind, so a ciphertext copied onto another record does
//! not decrypt.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{aad, domain};
use crate::error::Error;
use crate::keys::IndexKeys;
use crate::subjects::Sid;
use crate::token::{Token, TokenId};
use subtle::ConstantTimeEq;

pub(crate) const RECORD_FORMAT: u8 = 1;

/// `records` column family: token id → this.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum StoredRecord {
    /// A record whose subject still exists (or is erased but not yet purged).
    Live {
        sid: Sid,
        field: String,
        created_at: u64,
        /// Issued as a deterministic token: its value cannot be rectified, since the
        /// token is a function of it.
        deterministic: bool,
        /// `nonce || ciphertext || tag` under the subject's DEK.
        sealed: Vec<u8>,
        /// A vault-keyed tag over (token id, sid): when the subject's key is gone the
        /// ciphertext cannot be checked, and this stops a record being re-pointed at
        /// an erased subject to make it read as *erased*.
        link: [u8; 16],
    },
    /// What a purge leaves of an erased subject's record: nothing but the fact that
    /// the token once existed, so that it keeps answering *erased*. The tag (keyed by
    /// the vault, over the token id) stops a stub being forged over a live record.
    Shredded { tag: [u8; 16] },
}

/// The AAD of a record: everything stored beside the ciphertext is bound to it.
pub(crate) fn record_aad(
    vault_id: &[u8; 16],
    sid: &Sid,
    id: &TokenId,
    field: &str,
    created_at: u64,
    deterministic: bool,
    link: &[u8; 16],
) -> Vec<u8> {
    aad(
        domain::RECORD,
        &[
            vault_id,
            sid,
            id,
            field.as_bytes(),
            &created_at.to_le_bytes(),
            &[u8::from(deterministic)],
            link,
        ],
    )
}

pub(crate) fn shredded_tag(index: &IndexKeys, id: &TokenId) -> [u8; 16] {
    index.tombstone_tag(domain::SHREDDED, &[id])
}

pub(crate) fn link_tag(index: &IndexKeys, id: &TokenId, sid: &Sid) -> [u8; 16] {
    index.tombstone_tag(domain::LINK, &[id, sid])
}

/// Whether a record's link tag is genuine.
pub(crate) fn link_ok(index: &IndexKeys, id: &TokenId, sid: &Sid, link: &[u8; 16]) -> bool {
    bool::from(link_tag(index, id, sid).ct_eq(link))
}

/// What a stub means: the subject was erased, if the stub is genuine.
pub(crate) fn stub_outcome(index: &IndexKeys, id: &TokenId, tag: &[u8; 16]) -> Error {
    if bool::from(shredded_tag(index, id).ct_eq(tag)) {
        Error::Erased
    } else {
        Error::Integrity
    }
}

/// The `index` key of a record: sid || token id.
pub(crate) fn index_key(sid: &Sid, id: &TokenId) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(sid);
    key[16..].copy_from_slice(id);
    key
}

/// A decrypted value. Wiped on drop; its `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct Plaintext(Zeroizing<Vec<u8>>);

impl Plaintext {
    pub(crate) fn new(bytes: Zeroizing<Vec<u8>>) -> Plaintext {
        Plaintext(bytes)
    }

    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value as UTF-8 text, if it is.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The bytes, still in a wiping container.
    pub fn into_bytes(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

impl fmt::Debug for Plaintext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Plaintext([REDACTED; {} bytes])", self.0.len())
    }
}

/// A record turned back into its value by [`Vault::detokenize`](crate::Vault::detokenize).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Detokenized {
    /// The field name given at tokenization.
    pub field: String,
    /// The value.
    pub value: Plaintext,
    /// When the record was created, in milliseconds since the Unix epoch.
    pub created_at: u64,
}

/// One record of a [`SubjectExport`](crate::SubjectExport).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportedRecord {
    /// The record's token.
    pub token: Token,
    /// The field name.
    pub field: String,
    /// The value.
    pub value: Plaintext,
    /// When the record was created, in milliseconds since the Unix epoch.
    pub created_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_debug_is_redacted() {
        let p = Plaintext::new(Zeroizing::new(b"alice@example.com".to_vec()));
        let shown = format!("{p:?}");
        assert!(!shown.contains("alice"));
        assert!(shown.contains("17 bytes"));
        assert_eq!(p.as_str(), Some("alice@example.com"));
    }
}
