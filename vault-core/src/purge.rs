//! The purge: makes pending erasures physical, many at a time.
//!
//! A subject's data is a few key ranges: its key and its subject entry (one key
//! each), and in a vault of the current format its records and consents (each one
//! range, keyed by its storage id). The purge marks the subjects
//! doomed ([`crate::retire`]) and has the storage engine compact those ranges only,
//! so its work follows the erased data, not the size of the vault. Older vaults,
//! whose records are scattered, and a purge that lost its first attempt's subject
//! hashes compact whole families instead, as every purge once did.
//!
//! The erasure's subject hash waits in the purge queue until the first attempt, which
//! rewrites the queue without it before anything is compacted: once the purge is
//! verified, no stored copy of it is left.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;

use crate::codec::encode;
use crate::erase::{ERASURE_FORMAT, ErasureEntry, PurgeReport, QueueEntry};
use crate::error::Error;
use crate::records::{RECORD_FORMAT, StoredRecord};
use crate::store::{Cf, PurgeScope, Storage, WriteSet};
use crate::subjects::Sid;
use crate::vault::Inner;

/// Index entries deleted per write batch during a purge.
const PURGE_CHUNK: usize = 10_000;
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
        let _purge = self
            .purge_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.store
            .purge_files(&PurgeScope::everything(), PURGE_VERIFY_TIMEOUT)
    }

    /// Purges every queued erasure in one run (one flush and set of compactions).
    pub(crate) fn purge_pending(&self) -> Result<PurgeReport, Error> {
        let _purge = self
            .purge_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
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
        // The index entries go by delete, not by compaction: their bytes (the storage
        // id and the records' keys) stay on disk anyway, as the erasure entry's key
        // and the record stubs' keys, so compacting them away would hide nothing.
        let mut records = 0u64;
        for (sid, _) in &genuine {
            let mut keys = Vec::new();
            self.store.scan_prefix(Cf::Index, sid, |k, _| {
                keys.push(k.to_vec());
                Ok(true)
            })?;
            records += keys.len() as u64;
            for chunk in keys.chunks(PURGE_CHUNK) {
                let mut batch = self.store.batch();
                for key in chunk {
                    batch.delete(Cf::Index, key);
                }
                self.store.write(batch)?;
            }
        }
        let scope = self.scope(&genuine)?;

        self.doomed.add(genuine.iter().map(|(sid, _)| *sid));
        let verified = self.purge_files(&scope, &genuine);
        self.doomed.clear();
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
    /// whole, as every purge once did, and checks again.
    fn purge_files(
        &self,
        scope: &PurgeScope,
        subjects: &[(Sid, QueueEntry)],
    ) -> Result<bool, Error> {
        if self.store.purge_files(scope, PURGE_VERIFY_TIMEOUT)? && self.nothing_left(subjects)? {
            return Ok(true);
        }
        if scope.is_whole() {
            return Ok(false);
        }
        Ok(self
            .store
            .purge_files(&PurgeScope::everything(), PURGE_VERIFY_TIMEOUT)?
            && self.nothing_left(subjects)?)
    }

    /// The key ranges that hold the subjects' data, with the purge queue (whole: it
    /// is small, and its older versions hold the subject hashes, which are taken
    /// out of it here).
    fn scope(&self, subjects: &[(Sid, QueueEntry)]) -> Result<PurgeScope, Error> {
        let mut scope = PurgeScope::default();
        scope.whole(Cf::PurgeQueue);
        let mut batch = self.store.batch();
        let mut hashes = HashMap::new();
        for (sid, entry) in subjects {
            if let Some(hash) = entry.subject_hash {
                hashes.insert(*sid, hash);
                let kept = QueueEntry {
                    due_by: entry.due_by,
                    subject_hash: None,
                };
                batch.put(Cf::PurgeQueue, sid, &kept.encode());
            }
        }
        if !hashes.is_empty() {
            self.store.write_synced(batch)?;
        }
        let grouped = subjects.iter().all(|(sid, _)| {
            hashes.contains_key(sid) && self.index.tokens.subject_range(sid).is_some()
        });
        if !grouped {
            for cf in Cf::SUBJECT_DATA {
                scope.whole(cf);
            }
            return Ok(scope);
        }
        for (sid, _) in subjects {
            scope.key(Cf::Keys, sid);
            scope.key(Cf::Subjects, &hashes[sid]);
            scope.prefix(Cf::Consents, sid);
            if let Some((first, last)) = self.index.tokens.subject_range(sid) {
                scope.range(Cf::Records, &first, &last);
            }
        }
        Ok(scope)
    }

    /// After the compactions: no live record, index entry or consent of the subjects
    /// is left to read (what the files held is the storage layer's check).
    fn nothing_left(&self, subjects: &[(Sid, QueueEntry)]) -> Result<bool, Error> {
        let mut clean = true;
        for (sid, _) in subjects {
            for cf in [Cf::Index, Cf::Consents] {
                self.store.scan_prefix(cf, sid, |_, _| {
                    clean = false;
                    Ok(false)
                })?;
            }
            if let Some((first, _)) = self.index.tokens.subject_range(sid) {
                let prefix = &first[..crate::token::SUBJECT_PREFIX_LEN];
                self.store.scan_prefix(Cf::Records, prefix, |_, v| {
                    if let Ok(StoredRecord::Live(record)) = crate::codec::decode(RECORD_FORMAT, v)
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
