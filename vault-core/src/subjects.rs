//! Subjects and their keys: the stored subject entry and wrapped DEK, the unwrapped
//! DEK, the bounded DEK cache, and the striped per-subject write locks.
//!
//! A subject id is stored only as its keyed hash. Each subject *instance* gets a
//! random 16-byte storage id (`sid`): its key, records and index entries live under
//! the sid, and erasure deletes the hash → sid link, so a subject id used again after
//! an erasure is a new subject with a new key and nothing links it to the old one.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};

use serde::{Deserialize, Serialize};

use crate::cache::ShardedCache;
use crate::codec::decode;
use crate::crypto::{Aead256, Key, label};
use crate::error::Error;
use crate::token::{RECORD_GROUP_LEN, RecordGroup, TokenId};

/// A subject instance's random storage id.
pub(crate) type Sid = [u8; 16];
/// A subject id's keyed hash.
pub(crate) type SubjectHash = [u8; 32];

/// Format 2 added the per-field counts; entries of format 1 are still read.
pub(crate) const SUBJECT_FORMAT: u8 = 2;
const SUBJECT_FORMAT_1: u8 = 1;
pub(crate) const KEY_FORMAT: u8 = 1;

/// `subjects` column family: subject hash → this.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SubjectEntry {
    pub sid: Sid,
    pub created_at: u64,
    /// Live records, kept so that erasure can report them without counting (O(1)).
    pub records: u64,
    /// Live records per field and creation day (fields with none are left out),
    /// for the inventory: a write sees when the subject gains its first record of
    /// a field or loses its last, and an erasure takes the subject's records off
    /// the counts without reading them.
    pub fields: Vec<FieldDays>,
}

/// A subject's live records of one field, per creation day.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FieldDays {
    pub field: String,
    /// (day since the Unix epoch, records created that day).
    pub days: Vec<(u32, u64)>,
}

/// A subject entry of format 1 (no per-field counts).
#[derive(Deserialize)]
struct SubjectEntry1 {
    sid: Sid,
    created_at: u64,
    records: u64,
}

impl SubjectEntry {
    /// A stored entry, of either format. Format 1 comes without per-field counts:
    /// the first open by a build with the inventory counts them
    /// (`Inner::count_inventory`) before anything else reads them.
    pub(crate) fn decode(bytes: &[u8]) -> Result<SubjectEntry, Error> {
        if bytes.first() == Some(&SUBJECT_FORMAT_1) {
            let old: SubjectEntry1 = decode(SUBJECT_FORMAT_1, bytes)?;
            return Ok(SubjectEntry {
                sid: old.sid,
                created_at: old.created_at,
                records: old.records,
                fields: Vec::new(),
            });
        }
        decode(SUBJECT_FORMAT, bytes)
    }
}

/// `keys` column family: sid → this. The DEK sealed under KEK `kek_version`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct KeyEntry {
    pub subject_hash: SubjectHash,
    pub kek_version: u32,
    pub wrapped: Vec<u8>,
}

/// The counter of DEKs wrapped by one KEK version.
pub(crate) fn dek_counter(version: u32) -> Vec<u8> {
    let mut key = b"deks/".to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// An unwrapped subject key, ready to use; wiped when the last holder drops it.
pub(crate) struct Dek {
    pub aead: Aead256,
    deterministic: Key,
    pub subject_hash: SubjectHash,
    /// The subject's reference in audit events: derived from the key, so nothing
    /// links events to the subject once the key is destroyed.
    pub audit_ref: [u8; 16],
    /// The first bytes of the subject's records' storage keys: derived from the key
    /// too, so that once it is destroyed nothing links those keys (nor the tokens
    /// that encrypt them) to the subject's storage id.
    pub record_group: RecordGroup,
}

impl Dek {
    pub(crate) fn new(key: &Key, subject_hash: SubjectHash) -> Dek {
        let mac = key.derive(label::AUDIT_SUBJECT).mac(b"subject reference");
        let mut audit_ref = [0u8; 16];
        audit_ref.copy_from_slice(&mac[..16]);
        let mac = key.derive(label::RECORD_GROUP).mac(b"record group");
        let mut record_group = [0u8; RECORD_GROUP_LEN];
        record_group.copy_from_slice(&mac[..RECORD_GROUP_LEN]);
        Dek {
            aead: key.aead(),
            deterministic: key.derive(label::DETERMINISTIC_TOKEN),
            subject_hash,
            audit_ref,
            record_group,
        }
    }

    /// The deterministic token id of (field, value) for this subject.
    pub(crate) fn deterministic_id(&self, field: &str, value: &[u8]) -> TokenId {
        let mac = self.deterministic.mac_parts(&[field.as_bytes(), value]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&mac[..16]);
        id
    }
}

impl std::fmt::Debug for Dek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dek([REDACTED])")
    }
}

/// Unwrapped DEKs by sid. A miss loads *while holding the shard lock*, so an
/// erasure's [`remove`](ShardedCache::remove) (after its write) cannot be overtaken
/// by a load that read the key before the write. Evicted values are dropped (a DEK
/// is wiped once no call still uses it).
pub(crate) type DekCache = ShardedCache<Sid, Arc<Dek>>;

/// The subject entries and keys of recently written subjects, by subject hash, so a
/// tokenization of a known subject reads neither its entry nor its key.
///
/// Every write of a subject entry holds the subject's stripe lock, and so does every
/// use of this cache: under that lock, an entry cached here is the stored one. A
/// tokenization takes its subjects' entries out and puts them back, updated, only
/// once its write is committed; an erasure and a write that removes a record
/// (through the vault's `count_removed_record`) remove the subject's entry before
/// they write.
pub(crate) type SubjectCache = ShardedCache<SubjectHash, KnownSubject>;

/// A subject as stored, with its unwrapped key.
#[derive(Debug)]
pub(crate) struct KnownSubject {
    pub entry: SubjectEntry,
    pub dek: Arc<Dek>,
}

const STRIPES: usize = 1024;

/// Per-subject write serialisation: tokenize, rectify, delete and erase of one subject
/// take its stripe, so an erasure and a write of the same subject are ordered. Reads
/// take no lock.
pub(crate) struct Stripes {
    locks: Vec<Mutex<()>>,
}

impl std::fmt::Debug for Stripes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stripes")
    }
}

impl Stripes {
    pub(crate) fn new() -> Stripes {
        Stripes {
            locks: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    fn index(hash: &SubjectHash) -> usize {
        Self::index_of(hash[0], hash[1])
    }

    /// The stripe of a key whose first bytes (of a keyed hash) are `a`, `b`.
    pub(crate) fn index_of(a: u8, b: u8) -> usize {
        usize::from(u16::from_le_bytes([a, b])) % STRIPES
    }

    /// Stripe `i`, if nobody holds it (this thread included).
    pub(crate) fn try_lock_index(&self, i: usize) -> Option<MutexGuard<'_, ()>> {
        match self.locks.get(i)?.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    pub(crate) fn lock(&self, hash: &SubjectHash) -> MutexGuard<'_, ()> {
        self.locks[Self::index(hash)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The stripes of `hashes`, once each, in stripe order (so that batches cannot
    /// deadlock).
    pub(crate) fn indices<'a>(hashes: impl Iterator<Item = &'a SubjectHash>) -> Vec<usize> {
        let mut indices: Vec<usize> = hashes.map(Self::index).collect();
        indices.sort_unstable();
        indices.dedup();
        indices
    }

    /// Locks the stripes of all `hashes`.
    pub(crate) fn lock_all<'a>(
        &'a self,
        hashes: impl Iterator<Item = &'a SubjectHash>,
    ) -> Vec<MutexGuard<'a, ()>> {
        Self::indices(hashes)
            .into_iter()
            .map(|i| self.locks[i].lock().unwrap_or_else(PoisonError::into_inner))
            .collect()
    }

    /// [`lock_all`](Self::lock_all) if no stripe is held by anyone else; `None`
    /// otherwise (none is held then).
    pub(crate) fn try_lock_all<'a>(
        &'a self,
        hashes: impl Iterator<Item = &'a SubjectHash>,
    ) -> Option<Vec<MutexGuard<'a, ()>>> {
        Self::indices(hashes)
            .into_iter()
            .map(|i| match self.locks[i].try_lock() {
                Ok(guard) => Some(guard),
                Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
                Err(TryLockError::WouldBlock) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_ids_depend_on_key_field_and_value() -> Result<(), Error> {
        let a = Dek::new(&Key::random()?, [0; 32]);
        let b = Dek::new(&Key::random()?, [0; 32]);
        assert_eq!(
            a.deterministic_id("email", b"x"),
            a.deterministic_id("email", b"x")
        );
        assert_ne!(
            a.deterministic_id("email", b"x"),
            b.deterministic_id("email", b"x")
        );
        assert_ne!(
            a.deterministic_id("email", b"x"),
            a.deterministic_id("phone", b"x")
        );
        assert_ne!(
            a.deterministic_id("emai", b"lx"),
            a.deterministic_id("email", b"x")
        );
        Ok(())
    }
}
