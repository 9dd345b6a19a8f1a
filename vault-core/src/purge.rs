//! The purge: makes pending erasures physical, many at a time.
//!
//! A subject's data is a few key ranges: its key and its subject entry (one key
//! each), and in a vault of the current format its index entries and consents
//! (keyed by its storage id) and its records (keyed by its record group). The purge marks the subjects
//! doomed ([`crate::retire`]) and has the storage engine compact those ranges only,
//! so its work follows the erased data, not the size of the vault. Older vaults,
//! whose records are scattered, and a purge that lost its first attempt's subject
//! hashes compact whole families instead, as every purge once did.
//!
//! The erasure's subject hash and record group wait in the purge queue until the
//! first attempt, which rewrites the queue without them before anything is
//! compacted: once the purge is verified, nothing stored links them to the
//! subject's storage id.

use std::collections::HashMap;
use std::time::Duration;

use crate::codec::{decode, encode};
use crate::erase::{ERASURE_FORMAT, ErasureEntry, PurgeReport, QueueEntry};
use crate::error::Error;
use crate::records::{RECORD_FORMAT, StoredRecord};
use crate::retention::expiry_key;
use crate::store::{Cf, PurgeScope, Storage, WriteSet};
use crate::subjects::{Sid, SubjectHash};
use crate::token::RecordGroup;
use crate::token::TokenId;
use crate::vault::Inner;

/// How long a purge waits for pinned files (an export's iterator) to be released.
pub(crate) const PURGE_VERIFY_TIMEOUT: Duration = Duration::from_secs(30);

impl Inner {
    pub(crate) fn purge_due(&self) -> Result<PurgeReport, Error> {
        let now = self.now();
        if self.pending()?.iter().any(|p| p.due_by <= now) {
            self.purge_pending()
        } else {
            Ok(PurgeReport {
                verified: true,
                ..PurgeReport::default()
            })
        }
    }

    /// Flushes and compacts every subject-data family whole.
    pub(crate) fn compact_all(&self) -> Result<bool, Error> {
        let _turn = self.retirement.turn();
        self.store
            .purge_files(&PurgeScope::everything(), PURGE_VERIFY_TIMEOUT)
    }

    /// Purges every queued erasure in one run (one flush and set of compactions).
    pub(crate) fn purge_pending(&self) -> Result<PurgeReport, Error> {
        // On a shared store another replica may be purging the same erasures.
        self.retrying(|| self.purge_pending_once())
    }

    fn purge_pending_once(&self) -> Result<PurgeReport, Error> {
        let turn = self.retirement.turn();
        let mut queued: Vec<(Sid, QueueEntry)> = Vec::new();
        self.store.scan_prefix(Cf::PurgeQueue, &[], |k, v| {
            let sid: Sid = k.try_into().map_err(|_| Error::Integrity)?;
            queued.push((sid, QueueEntry::decode(v)?));
            Ok(true)
        })?;
        let done = PurgeReport {
            verified: true,
            ..PurgeReport::default()
        };
        if queued.is_empty() {
            return Ok(done);
        }
        // Only genuine erasures are purged: the key is gone and an authentic erasure
        // entry exists. A forged queue entry must not shred a live subject.
        let mut genuine = Vec::with_capacity(queued.len());
        let mut forged = Vec::new();
        for (sid, entry) in queued {
            let erased = self.store.get(Cf::Keys, &sid)?.is_none()
                && matches!(ErasureEntry::load(self, &sid), Ok(Some(_)));
            if erased {
                genuine.push((sid, entry));
            } else {
                forged.push(sid);
            }
        }
        if !forged.is_empty() {
            let mut batch = self.store.batch();
            for sid in &forged {
                batch.delete(Cf::PurgeQueue, sid);
            }
            self.store.write_synced(batch)?;
        }
        if genuine.is_empty() {
            return Ok(done);
        }
        let mut records = 0u64;
        let mut expiries = Vec::new();
        for (sid, _) in &genuine {
            self.store.scan_prefix(Cf::Index, sid, |key, value| {
                records += 1;
                if let Some(at) = self.expiry_of(key, value)? {
                    expiries.push(at);
                }
                Ok(true)
            })?;
        }
        let taken = self.take_subjects(&genuine)?;
        let mut scope = self.scope(&genuine, &taken);
        // A record's expiry entry links its token to the storage id until its
        // time comes, maybe decades: it goes with the rest.
        if !scope.is_whole() {
            for key in &expiries {
                scope.key(Cf::Expiry, key);
            }
        }
        // The records' groups say which records may be doomed, without decoding
        // the others; a subject without one has every record decoded.
        let groups = genuine
            .iter()
            .map(|(sid, _)| taken.get(sid).map(|&(_, group)| group))
            .collect();
        let doomed = turn.doom(genuine.iter().map(|(sid, _)| *sid), groups);
        let verified = self.purge_files(&scope, &genuine, &taken, &expiries);
        drop(doomed);
        if verified? {
            let now = self.now();
            let mut batch = self.store.batch();
            for (sid, _) in &genuine {
                batch.delete(Cf::PurgeQueue, sid);
                // Checked just above; a failure here only skips the purge time.
                if let Ok(Some(mut entry)) = ErasureEntry::load(self, sid) {
                    entry.purged_at = Some(now);
                    batch.put(Cf::Erasures, sid, &encode(ERASURE_FORMAT, &entry));
                }
            }
            self.store.write_synced(batch)?;
            return Ok(PurgeReport {
                subjects: genuine.len(),
                records,
                verified: true,
            });
        }
        Ok(PurgeReport {
            subjects: genuine.len(),
            records,
            verified: false,
        })
    }

    /// Compacts the scope and checks that nothing of the subjects is left. A
    /// targeted purge that cannot show it (a range's files rewritten by another
    /// range's compaction can look half-done) compacts the subject-data families
    /// and the purge queue whole, as every purge once did, and checks again.
    fn purge_files(
        &self,
        scope: &PurgeScope,
        subjects: &[(Sid, QueueEntry)],
        taken: &Taken,
        expiries: &[[u8; 24]],
    ) -> Result<bool, Error> {
        if self.store.purge_files(scope, PURGE_VERIFY_TIMEOUT)?
            && self.nothing_left(subjects, taken, expiries)?
        {
            return Ok(true);
        }
        if scope.is_whole() {
            return Ok(false);
        }
        let mut whole = PurgeScope::everything();
        whole.whole(Cf::PurgeQueue);
        Ok(self.store.purge_files(&whole, PURGE_VERIFY_TIMEOUT)?
            && self.nothing_left(subjects, taken, expiries)?)
    }

    /// Takes each subject's hash and record group out of its queue entry, for this
    /// attempt only: once the purge is verified, nothing stored may link them to
    /// the storage id (the queue's older versions are compacted away with it).
    fn take_subjects(&self, subjects: &[(Sid, QueueEntry)]) -> Result<Taken, Error> {
        let mut taken = Taken::new();
        let mut batch = self.store.batch();
        let mut rewritten = false;
        for (sid, entry) in subjects {
            if entry.subject.is_some() {
                rewritten = true;
                if let Some(subject) = entry.subject(&self.index, sid) {
                    taken.insert(*sid, subject);
                }
                let kept = QueueEntry::new(&self.index, sid, entry.due_by, None);
                // Not over another replica's purge that finished (and removed the
                // entry) since this one read it.
                batch.expect(Cf::PurgeQueue, sid, Some(&entry.encode()));
                batch.put(Cf::PurgeQueue, sid, &kept.encode());
            }
        }
        if rewritten {
            self.store.write_synced(batch)?;
        }
        Ok(taken)
    }

    /// The key ranges that hold the subjects' data, with the purge queue (whole: it
    /// is small, and its older versions hold what [`take_subjects`](Self::take_subjects)
    /// took out). Whole families where a subject's hash or group is not known (an
    /// attempt after the first) or its records are scattered (format 1).
    fn scope(&self, subjects: &[(Sid, QueueEntry)], taken: &Taken) -> PurgeScope {
        let mut scope = PurgeScope::default();
        scope.whole(Cf::PurgeQueue);
        let targeted =
            self.index.tokens.grouped() && subjects.iter().all(|(sid, _)| taken.contains_key(sid));
        if !targeted {
            for cf in Cf::SUBJECT_DATA {
                scope.whole(cf);
            }
            return scope;
        }
        for (sid, _) in subjects {
            let (hash, group) = &taken[sid];
            scope.key(Cf::Keys, sid);
            scope.key(Cf::Subjects, hash);
            scope.prefix(Cf::Index, sid);
            scope.prefix(Cf::Consents, sid);
            scope.prefix(Cf::Records, group);
        }
        scope
    }

    /// After the compactions: no live record, index entry or consent of the subjects
    /// is left to read (what the files held is the storage layer's check).
    fn nothing_left(
        &self,
        subjects: &[(Sid, QueueEntry)],
        taken: &Taken,
        expiries: &[[u8; 24]],
    ) -> Result<bool, Error> {
        for key in expiries {
            if self.store.get(Cf::Expiry, key)?.is_some() {
                return Ok(false);
            }
        }
        let mut clean = true;
        for (sid, _) in subjects {
            for cf in [Cf::Index, Cf::Consents] {
                self.store.scan_prefix(cf, sid, |_, _| {
                    clean = false;
                    Ok(false)
                })?;
            }
            // Format 1 has no groups: there the whole compaction's check stands.
            if let Some((_, group)) = taken.get(sid).filter(|_| self.index.tokens.grouped()) {
                self.store.scan_prefix(Cf::Records, group, |_, v| {
                    if let Ok(StoredRecord::Live(record)) = decode(RECORD_FORMAT, v)
                        && record.sid == *sid
                    {
                        clean = false;
                    }
                    Ok(clean)
                })?;
            }
        }
        Ok(clean)
    }
}

impl Inner {
    /// The `expiry` key of the record an index entry names, if it has one: the time
    /// the entry carries, or for an entry written before it carried one, the time
    /// the retention policy gives the record now.
    fn expiry_of(&self, index_key: &[u8], value: &[u8]) -> Result<Option<[u8; 24]>, Error> {
        let id: TokenId = index_key
            .get(16..)
            .and_then(|id| id.try_into().ok())
            .ok_or(Error::Integrity)?;
        if let Ok(at) = <[u8; 8]>::try_from(value) {
            return Ok(Some(expiry_key(u64::from_be_bytes(at), &id)));
        }
        let Some(bytes) = self.store.get(Cf::Records, &id)? else {
            return Ok(None);
        };
        Ok(match decode(RECORD_FORMAT, &bytes) {
            Ok(StoredRecord::Live(record)) => self
                .opts
                .policy
                .expires_at(&record.field, record.created_at)
                .map(|at| expiry_key(at, &id)),
            _ => None,
        })
    }
}

/// What a purge attempt took out of the queue: each subject's hash and record group.
type Taken = HashMap<Sid, (SubjectHash, RecordGroup)>;
