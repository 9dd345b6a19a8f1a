//! Records: one value of one subject, stored under its token id and sealed with the
//! subject's DEK. The AAD binds the ciphertext to the vault, the subject's storage id,
//! the token id, the field name, the creation time, the token kind and the record's
//! link tag, so a ciphertext copied onto another record does not decrypt.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::crypto::{Aead256, aad, domain};
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
    Live(LiveRecord),
    /// What a purge leaves of an erased subject's record: nothing but the fact that
    /// the token once existed, so that it keeps answering *erased*. The tag (keyed by
    /// the vault, over the token id) stops a stub being forged over a live record.
    Shredded { tag: [u8; 16] },
    /// What the retention purge leaves of a record past its period: it keeps
    /// answering *expired*. Tagged like a shredded stub, under its own domain.
    Expired { tag: [u8; 16] },
}

/// A live record. Everything stored beside the ciphertext is bound into its AAD.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LiveRecord {
    pub sid: Sid,
    pub field: String,
    pub created_at: u64,
    /// Issued as a deterministic token: its value cannot be rectified, since the
    /// token is a function of it.
    pub deterministic: bool,
    /// `nonce || ciphertext || tag` under the subject's DEK.
    #[serde(with = "crate::codec::bytes")]
    sealed: Vec<u8>,
    /// A vault-keyed tag over (token id, sid): when the subject's key is gone the
    /// ciphertext cannot be checked, and this stops a record being re-pointed at
    /// an erased subject to make it read as *erased*.
    pub link: [u8; 16],
}

/// Where a record lives and what it is: the fields fixed when it is created.
pub(crate) struct RecordPlace<'a> {
    pub vault_id: &'a [u8; 16],
    pub sid: &'a Sid,
    pub id: &'a TokenId,
}

impl LiveRecord {
    /// Seals `value` as a new record at `place`.
    pub(crate) fn seal(
        index: &IndexKeys,
        place: &RecordPlace<'_>,
        field: &str,
        created_at: u64,
        deterministic: bool,
        aead: &Aead256,
        value: &[u8],
    ) -> Result<LiveRecord, Error> {
        let mut record = LiveRecord {
            sid: *place.sid,
            field: field.to_owned(),
            created_at,
            deterministic,
            sealed: Vec::new(),
            link: link_tag(index, place.id, place.sid),
        };
        record.sealed = aead.seal(&record.aad(place.vault_id, place.id), value)?;
        Ok(record)
    }

    /// Decrypts the value; any mismatch of key, place or metadata is `Integrity`.
    pub(crate) fn open(
        &self,
        vault_id: &[u8; 16],
        id: &TokenId,
        aead: &Aead256,
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        aead.open(&self.aad(vault_id, id), &self.sealed)
    }

    /// Replaces the value, keeping field, time and kind, after authenticating them.
    pub(crate) fn reseal(
        mut self,
        vault_id: &[u8; 16],
        id: &TokenId,
        aead: &Aead256,
        value: &[u8],
    ) -> Result<LiveRecord, Error> {
        self.open(vault_id, id, aead)?;
        self.sealed = aead.seal(&self.aad(vault_id, id), value)?;
        Ok(self)
    }

    fn aad(&self, vault_id: &[u8; 16], id: &TokenId) -> Vec<u8> {
        aad(
            domain::RECORD,
            &[
                vault_id,
                &self.sid,
                id,
                self.field.as_bytes(),
                &self.created_at.to_le_bytes(),
                &[u8::from(self.deterministic)],
                &self.link,
            ],
        )
    }
}

pub(crate) fn shredded_tag(index: &IndexKeys, id: &TokenId) -> [u8; 16] {
    index.tombstone_tag(domain::SHREDDED, &[id])
}

fn link_tag(index: &IndexKeys, id: &TokenId, sid: &Sid) -> [u8; 16] {
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

pub(crate) fn expired_tag(index: &IndexKeys, id: &TokenId) -> [u8; 16] {
    index.tombstone_tag(domain::EXPIRED, &[id])
}

/// What an expired stub answers: [`Error::Expired`], if its tag is genuine.
pub(crate) fn expired_outcome(index: &IndexKeys, id: &TokenId, tag: &[u8; 16]) -> Error {
    if bool::from(expired_tag(index, id).ct_eq(tag)) {
        Error::Expired
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
    /// Whether `value` is a masked view rather than the value itself.
    pub masked: bool,
}

impl Detokenized {
    /// The answer for `record`, whose (possibly masked) value is `value`.
    pub(crate) fn of(record: LiveRecord, value: Zeroizing<Vec<u8>>, masked: bool) -> Detokenized {
        Detokenized {
            field: record.field,
            value: Plaintext::new(value),
            created_at: record.created_at,
            masked,
        }
    }
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
