//! Erasure (crypto-shredding) and the purge that makes it physical.
//!
//! 1. [`Vault::erase`] destroys the subject's wrapped DEK and its id → storage-id link
//!    in one synced batch that also records the erasure (by storage id, with a time)
//!    and queues the purge. Its cost does not depend on the subject's record count.
//!    The cached DEK is dropped before it returns; from then on every token of the
//!    subject answers [`Error::Erased`].
//! 2. The purge ((`purge.rs`)) makes it physical: it has the storage engine
//!    rewrite only the files that hold the subject's key ranges, turning its records
//!    into stubs and dropping the rest (`retire.rs`), and verify that no older
//!    file and no older log holding them is left.
//! 3. Only after the verification passed is the erasure marked purged.

use std::fmt;
use std::sync::PoisonError;

use subtle::ConstantTimeEq;

use crate::backup::Destroyed;
use crate::codec::{decode, encode};
use crate::crypto::domain;
use crate::error::Error;
use crate::events::{AuditAction, AuditEvent, AuditOutcome, RESTORE_ACTOR};
use crate::inventory::Tally;
use crate::keys::IndexKeys;
use crate::options::PurgePolicy;
use crate::records::link_ok;
use crate::store::{Cf, Storage, WriteSet};
use crate::subjects::{KEY_FORMAT, KeyEntry, Sid, SubjectEntry, SubjectHash, dek_counter};
use crate::token::{RecordGroup, TokenId};
use crate::vault::{Inner, Vault};

pub(crate) const ERASURE_FORMAT: u8 = 1;
/// Format 1 held only the time the purge is due.
pub(crate) const QUEUE_FORMAT_1: u8 = 1;
pub(crate) const QUEUE_FORMAT: u8 = 2;

/// `purge_queue` column family: sid → this, while the erasure's purge is pending.
/// (No `Debug`: it holds the subject hash.)
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct QueueEntry {
    pub(crate) due_by: u64,
    /// The erased subject's hash (the key of its subject entry) and its records'
    /// group (derived from the destroyed key), until the first purge attempt takes
    /// them: the purge compacts those ranges alone, and then nothing stored may
    /// link them to the storage id. Without them a purge compacts whole families.
    pub(crate) subject: Option<(SubjectHash, RecordGroup)>,
    /// A tag keyed by the vault over the storage id, hash and group: a queue entry
    /// altered to point the purge at other keys is purged as if it had none.
    pub(crate) tag: [u8; 16],
}

impl QueueEntry {
    pub(crate) fn decode(bytes: &[u8]) -> Result<QueueEntry, Error> {
        decode(QUEUE_FORMAT, bytes).or_else(|_| {
            decode(QUEUE_FORMAT_1, bytes).map(|due_by| QueueEntry {
                due_by,
                subject: None,
                tag: [0; 16],
            })
        })
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        encode(QUEUE_FORMAT, self)
    }

    pub(crate) fn new(
        index: &IndexKeys,
        sid: &Sid,
        due_by: u64,
        subject: Option<(SubjectHash, RecordGroup)>,
    ) -> QueueEntry {
        let tag = subject.map_or([0; 16], |s| Self::expected_tag(index, sid, &s));
        QueueEntry {
            due_by,
            subject,
            tag,
        }
    }

    /// The subject's hash and group, if present and authentic.
    pub(crate) fn subject(
        &self,
        index: &IndexKeys,
        sid: &Sid,
    ) -> Option<(SubjectHash, RecordGroup)> {
        let subject = self.subject?;
        let expected = Self::expected_tag(index, sid, &subject);
        bool::from(expected.ct_eq(&self.tag)).then_some(subject)
    }

    fn expected_tag(
        index: &IndexKeys,
        sid: &Sid,
        (hash, group): &(SubjectHash, RecordGroup),
    ) -> [u8; 16] {
        index.tombstone_tag(domain::PURGE_SCOPE, &[sid, hash, group])
    }
}

/// `erasures` column family: sid → this. No personal data. The tag (keyed by the
/// vault, over the sid and the immutable fields) stops an erasure being forged to
/// make a live subject's records look erased.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct ErasureEntry {
    erased_at: u64,
    records: u64,
    pub(crate) purged_at: Option<u64>,
    tag: [u8; 16],
}

impl ErasureEntry {
    fn new(index: &IndexKeys, sid: &Sid, erased_at: u64, records: u64) -> ErasureEntry {
        ErasureEntry {
            erased_at,
            records,
            purged_at: None,
            tag: Self::expected_tag(index, sid, erased_at, records),
        }
    }

    fn expected_tag(index: &IndexKeys, sid: &Sid, erased_at: u64, records: u64) -> [u8; 16] {
        index.tombstone_tag(
            domain::ERASURE,
            &[sid, &erased_at.to_le_bytes(), &records.to_le_bytes()],
        )
    }

    /// Reads and authenticates the erasure entry of `sid`, if there is one.
    pub(crate) fn load(inner: &Inner, sid: &Sid) -> Result<Option<ErasureEntry>, Error> {
        let Some(bytes) = inner.store.get(Cf::Erasures, sid)? else {
            return Ok(None);
        };
        let entry: ErasureEntry = decode(ERASURE_FORMAT, &bytes)?;
        let expected = Self::expected_tag(&inner.index, sid, entry.erased_at, entry.records);
        if bool::from(expected.ct_eq(&entry.tag)) {
            Ok(Some(entry))
        } else {
            Err(Error::Integrity)
        }
    }
}

/// A reference to one subject instance that says nothing about who it is: the hex
/// form of its random storage id. Once the subject is erased and purged, nothing in
/// the vault links it to the subject id.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectRef(pub(crate) Sid);

impl SubjectRef {
    /// Parses the hex form.
    pub fn parse(text: &str) -> Option<SubjectRef> {
        // Digits only: `from_str_radix` also takes a sign ("+f").
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut sid = [0u8; 16];
        for (i, byte) in sid.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(SubjectRef(sid))
    }
}

impl fmt::Display for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for SubjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SubjectRef({self})")
    }
}

/// Where the physical removal of an erased subject's bytes stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PurgeState {
    /// The subject's key and ciphertexts are gone from every live file of the vault.
    Done {
        /// When the purge was verified, in milliseconds since the Unix epoch.
        at: u64,
    },
    /// The key is destroyed; the bytes are scheduled for removal.
    Pending {
        /// The purge deadline, in milliseconds since the Unix epoch.
        due_by: u64,
    },
    /// There was nothing to erase: no subject with this id exists.
    NotNeeded,
}

/// What [`Vault::erase`] did. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ErasureReceipt {
    /// The erased subject instance, or `None` when no subject had this id: its
    /// storage id, which [`Vault::erasure_receipt`] looks the erasure up by. It is
    /// not the `subject` of the subject's audit events (a MAC under the subject's
    /// key, now destroyed), so a receipt kept with the person's id does not lead
    /// back to their history.
    pub subject_ref: Option<SubjectRef>,
    /// When the key was destroyed, in milliseconds since the Unix epoch.
    pub erased_at: u64,
    /// How many records were shredded with it.
    pub records: u64,
    /// Whether the bytes have been purged from disk yet.
    pub purge: PurgeState,
    /// The audit event that records the erasure: proof of it that names nobody.
    /// Set in the receipt [`Vault::erase`] returns; `None` in one looked up later
    /// with [`Vault::erasure_receipt`] (the erasure is stored in the same write as
    /// its event, before the journal numbers the event), and when nothing was erased.
    pub audit_event: Option<u64>,
    /// The kept backups that may still hold the subject (every one taken before its
    /// purge finished). A restore of one erases the subject again, from the erasure
    /// journal. Empty without backups.
    pub backups: Vec<String>,
    /// When the last of [`backups`](Self::backups) is deleted by
    /// [`keep`](crate::BackupOptions::keep), in milliseconds since the Unix epoch,
    /// if backups are taken [`every`](crate::BackupOptions::every) interval.
    pub in_backups_until: Option<u64>,
}

/// An erasure whose purge has not completed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingPurge {
    /// The erased subject instance.
    pub subject_ref: SubjectRef,
    /// The purge deadline, in milliseconds since the Unix epoch.
    pub due_by: u64,
}

/// What a purge run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct PurgeReport {
    /// Erased subjects whose bytes this run removed.
    pub subjects: usize,
    /// Records stubbed.
    pub records: u64,
    /// Whether the file check passed; if not, the erasures stay pending and the purge
    /// is retried.
    pub verified: bool,
}

fn purged_at(purge: PurgeState) -> Option<u64> {
    match purge {
        PurgeState::Done { at } => Some(at),
        _ => None,
    }
}

impl Vault {
    /// Erases a subject: destroys its key (crypto-shredding) and returns a receipt.
    ///
    /// Every token of the subject answers [`Error::Erased`] from the moment this
    /// returns. Its bytes are purged from disk now or within the configured delay
    /// ([`PurgePolicy`]). Erasing an id with no subject is not an error: the receipt
    /// says [`PurgeState::NotNeeded`]. The id can be used again afterwards; it then
    /// names a new subject with a new key.
    pub fn erase(&self, subject: &str) -> Result<ErasureReceipt, Error> {
        self.default_actor().erase(subject)
    }

    pub(crate) fn erase_by(&self, actor: &str, subject: &str) -> Result<ErasureReceipt, Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_subject(subject)?;
        let hash = inner.index.subject_hash(subject);
        let now = inner.now();
        let destroyed = inner.retrying(|| {
            let _stripe = inner.stripes.lock(&hash);
            let _keys = inner
                .keys
                .writes()
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            // Out of the cache before anything is written: a tokenization after this
            // erasure (or after its failure) reads what is stored.
            inner.subjects.remove(&hash);
            let Some(bytes) = inner.store.get(Cf::Subjects, &hash)? else {
                return Ok(None);
            };
            inner.destroy(actor, &hash, &bytes, now, false).map(Some)
        })?;
        let Some((sid, records, due_by, audit_event)) = destroyed else {
            return Ok(ErasureReceipt {
                subject_ref: None,
                erased_at: now,
                records: 0,
                purge: PurgeState::NotNeeded,
                audit_event: None,
                backups: Vec::new(),
                in_backups_until: None,
            });
        };
        // The key is gone: from here on the caller gets a receipt, never an error. A
        // purge that fails leaves the erasure pending, for the worker or `purge_now`.
        let purge = match inner.opts.purge {
            PurgePolicy::Immediate => match inner.purge_pending() {
                Ok(report) if report.verified => PurgeState::Done { at: inner.now() },
                Ok(_) => PurgeState::Pending { due_by },
                Err(e) => {
                    inner.set_background_error(Some(e));
                    PurgeState::Pending { due_by }
                }
            },
            PurgePolicy::Within(_) => PurgeState::Pending { due_by },
        };
        // Still a receipt, never an error: a backup directory that cannot be read
        // is reported where the worker's errors are.
        let (backups, in_backups_until) =
            inner.backups_holding(purged_at(purge)).unwrap_or_else(|e| {
                inner.set_background_error(Some(e));
                (Vec::new(), None)
            });
        Ok(ErasureReceipt {
            subject_ref: Some(SubjectRef(sid)),
            erased_at: now,
            records,
            purge,
            audit_event,
            backups,
            in_backups_until,
        })
    }

    /// Purges every pending erasure now, whatever its deadline.
    pub fn purge_now(&self) -> Result<PurgeReport, Error> {
        self.inner.purge_pending()
    }

    /// Purges the pending erasures if any is due (the background worker calls this);
    /// all pending ones share the run.
    pub fn purge_due(&self) -> Result<PurgeReport, Error> {
        self.inner.purge_due()
    }

    /// Erasures whose bytes have not been purged yet.
    pub fn pending_purges(&self) -> Result<Vec<PendingPurge>, Error> {
        self.inner.pending()
    }

    /// The receipt of an earlier erasure, by its subject reference
    /// ([`ErasureReceipt::subject_ref`]). It does not name the audit event
    /// (`audit_event` is `None`); keep the receipt `erase` returned for that.
    pub fn erasure_receipt(
        &self,
        subject_ref: &SubjectRef,
    ) -> Result<Option<ErasureReceipt>, Error> {
        let inner = &*self.inner;
        let Some(entry) = ErasureEntry::load(inner, &subject_ref.0)? else {
            return Ok(None);
        };
        let purge = match entry.purged_at {
            Some(at) => PurgeState::Done { at },
            None => match inner.store.get(Cf::PurgeQueue, &subject_ref.0)? {
                Some(queued) => PurgeState::Pending {
                    due_by: QueueEntry::decode(&queued)?.due_by,
                },
                None => PurgeState::Pending {
                    due_by: entry.erased_at,
                },
            },
        };
        let (backups, in_backups_until) = inner.backups_holding(purged_at(purge))?;
        Ok(Some(ErasureReceipt {
            subject_ref: Some(subject_ref.clone()),
            erased_at: entry.erased_at,
            records: entry.records,
            purge,
            audit_event: None,
            backups,
            in_backups_until,
        }))
    }
}

impl Inner {
    /// Destroys the key of the subject instance `entry` names (subject hash `hash`)
    /// and queues its purge, in one synced write with its audit event, recorded
    /// first in the erasure journal. A restore `replaying` the journal writes no new
    /// entry and does not sync (it syncs once, before the restored vault is swapped
    /// in). Callers hold the subject's stripe and the key-write lock, and have
    /// dropped the subject from the cache.
    /// Returns the storage id, the records, the purge deadline and the event.
    fn destroy(
        &self,
        actor: &str,
        hash: &SubjectHash,
        stored: &[u8],
        now: u64,
        replaying: bool,
    ) -> Result<(Sid, u64, u64, Option<u64>), Error> {
        let entry = SubjectEntry::decode(stored)?;
        let sid = entry.sid;
        let mut batch = self.store.batch();
        // On a shared store: only if no other replica erased or wrote the subject
        // (or rewrapped its key) since this one read it.
        batch.expect(Cf::Subjects, hash, Some(stored));
        // The key must be this subject's: a subject entry pointed at another
        // subject's key must not destroy it. The stored subject hash is what the
        // key's AAD binds, so a key whose hash was rewritten to match is already
        // unusable, and destroying it costs nothing. A subject entry without a
        // key is damage: nothing is erased or recorded for an unproven id.
        let key = self.store.get(Cf::Keys, &sid)?.ok_or(Error::Integrity)?;
        batch.expect(Cf::Keys, &sid, Some(&key));
        let key: KeyEntry = decode(KEY_FORMAT, &key)?;
        if key.subject_hash != *hash {
            return Err(Error::Integrity);
        }
        batch.add(&dek_counter(key.kek_version), -1);
        let mut tally = Tally::default();
        tally.subject_erased(&entry);
        tally.write(&self.index, &mut batch)?;
        batch.delete(Cf::Subjects, hash);
        batch.delete(Cf::Keys, &sid);
        let erasure = ErasureEntry::new(&self.index, &sid, now, entry.records);
        batch.put(Cf::Erasures, &sid, &encode(ERASURE_FORMAT, &erasure));
        let due_by = match self.opts.purge {
            PurgePolicy::Immediate => now,
            PurgePolicy::Within(delay) => now.saturating_add(delay.as_millis() as u64),
        };
        // The records' group, for the purge: derived from the key, which is
        // gone once this batch is written. A key that cannot be unwrapped does
        // not stop the erasure: its purge then compacts whole families.
        let group = self
            .keys
            .dek(&sid)
            .ok()
            .flatten()
            .map(|dek| dek.record_group);
        let queued = QueueEntry::new(&self.index, &sid, due_by, group.map(|group| (*hash, group)));
        batch.put(Cf::PurgeQueue, &sid, &queued.encode());
        // No subject reference: the receipt names this event, and a reference
        // here would let whoever keeps the receipt with the subject id find the
        // subject's earlier events again.
        let event =
            AuditEvent::new(actor, AuditAction::Erase, AuditOutcome::Ok).about(None, entry.records);
        // In the erasure journal first, synced: a backup restored later destroys
        // the key again. (A replay is already there.)
        let _journaled = match &self.backups {
            Some(backups) if !replaying => {
                Some(backups.record(now, &[(sid, Destroyed::Subject)], &mut batch)?)
            }
            _ => None,
        };
        // Synced whatever the vault's durability: an acknowledged erasure must not
        // come undone after a machine crash.
        let seqs = self
            .journal
            .commit_audited(batch, vec![event], !replaying)?;
        self.keys.forget(&sid);
        Ok((sid, entry.records, due_by, seqs.first().copied()))
    }

    /// Erases the subject instance `sid` again if its key is still stored, as a
    /// restore replays the erasure journal: exactly as an erasure, without a new
    /// journal entry. Returns whether it destroyed a key.
    pub(crate) fn replay_erasure(&self, sid: &Sid) -> Result<bool, Error> {
        let Some(key) = self.store.get(Cf::Keys, sid)? else {
            return Ok(false);
        };
        let hash = decode::<KeyEntry>(KEY_FORMAT, &key)?.subject_hash;
        let _stripe = self.stripes.lock(&hash);
        let _keys = self
            .keys
            .writes()
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        self.subjects.remove(&hash);
        let Some(stored) = self.store.get(Cf::Subjects, &hash)? else {
            return Err(Error::Integrity);
        };
        if SubjectEntry::decode(&stored)?.sid != *sid {
            return Err(Error::Integrity);
        }
        self.destroy(RESTORE_ACTOR, &hash, &stored, self.now(), true)?;
        Ok(true)
    }

    /// Why a live record's key is missing: its subject was erased (the record's link
    /// and an erasure entry are authentic), or the data is damaged.
    pub(crate) fn missing_key(&self, sid: &Sid, id: &TokenId, link: &[u8; 16]) -> Error {
        if !link_ok(&self.index, id, sid, link) {
            return Error::Integrity;
        }
        match ErasureEntry::load(self, sid) {
            Ok(Some(_)) => Error::Erased,
            Ok(None) => Error::Integrity,
            Err(e) => e,
        }
    }

    pub(crate) fn pending(&self) -> Result<Vec<PendingPurge>, Error> {
        let mut out = Vec::new();
        self.store.scan_prefix(Cf::PurgeQueue, &[], |k, v| {
            let sid: Sid = k.try_into().map_err(|_| Error::Integrity)?;
            out.push(PendingPurge {
                subject_ref: SubjectRef(sid),
                due_by: QueueEntry::decode(v)?.due_by,
            });
            Ok(true)
        })?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_ref_round_trips() {
        let r = SubjectRef([0xa5; 16]);
        assert_eq!(SubjectRef::parse(&r.to_string()), Some(r));
        assert_eq!(SubjectRef::parse("zz"), None);
        assert_eq!(SubjectRef::parse(&"g".repeat(32)), None);
        // Found by the `stored` fuzz target: a sign made a second spelling.
        assert_eq!(SubjectRef::parse(&format!("+3{}", "0".repeat(30))), None);
    }
}
