//! Retention (GDPR Art. 5(1)(e)): values kept no longer than their field's period.
//!
//! A record of a field with a retention period gets an entry in the `expiry` family,
//! keyed by its expiry time, when it is stored. From that time its token answers
//! [`Error::Expired`] (checked at read time against the current period), and the
//! retention purge, run by the background worker or [`Vault::purge_expired`], replaces
//! the record with an *expired* stub, deletes its index and expiry entries, then has
//! the storage layer flush, compact and verify the directory exactly as the erasure
//! purge does, so the value's ciphertext leaves every file.

use crate::backup::Destroyed;
use crate::codec::{decode, encode};
use crate::erase::PurgeReport;
use crate::error::Error;
use crate::events::{AuditAction, AuditEvent, AuditOutcome, RESTORE_ACTOR, RETENTION_ACTOR};
use crate::records::{LiveRecord, RECORD_FORMAT, StoredRecord, expired_tag, index_key};
use crate::store::{Batch, Cf, Storage, WriteSet};
use crate::subjects::{Dek, Sid};
use crate::token::TokenId;
use crate::vault::{Inner, Vault};

/// Set while expired records have been stubbed but the file check has not yet passed.
const UNVERIFIED: &[u8] = b"retention/unverified";
/// Expired records handled per run.
const RUN_LIMIT: usize = 10_000;

/// The `expiry` key of a record: expiry time (big-endian, so keys sort by time) ‖ id.
pub(crate) fn expiry_key(at: u64, id: &TokenId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&at.to_be_bytes());
    key[8..].copy_from_slice(id);
    key
}

impl Vault {
    /// Purges every record past its retention period now: stubs them (their tokens
    /// keep answering *expired*), then flushes, compacts and verifies the directory.
    /// The background worker does this by itself; call it when the worker is off.
    pub fn purge_expired(&self) -> Result<PurgeReport, Error> {
        self.inner.purge_expired()
    }
}

impl Inner {
    /// Whether the retention purge has work: an entry due now, or a file check owed.
    pub(crate) fn expiry_due(&self) -> Result<bool, Error> {
        if self.store.get(Cf::Meta, UNVERIFIED)?.is_some() {
            return Ok(true);
        }
        let now = self.now();
        let mut due = false;
        self.store.scan_prefix(Cf::Expiry, &[], |key, _| {
            due = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .is_some_and(|b| u64::from_be_bytes(b) <= now);
            Ok(false)
        })?;
        Ok(due)
    }

    pub(crate) fn purge_expired(&self) -> Result<PurgeReport, Error> {
        let _turn = self.retirement.turn();
        let now = self.now();
        let mut due: Vec<(Vec<u8>, TokenId, Sid)> = Vec::new();
        self.store.scan_prefix(Cf::Expiry, &[], |key, value| {
            let at = key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .ok_or(Error::Integrity)?;
            if at > now || due.len() >= RUN_LIMIT {
                return Ok(false);
            }
            let id: TokenId = key
                .get(8..)
                .and_then(|b| b.try_into().ok())
                .ok_or(Error::Integrity)?;
            let sid: Sid = value.try_into().map_err(|_| Error::Integrity)?;
            due.push((key.to_vec(), id, sid));
            Ok(true)
        })?;
        let mut records = 0u64;
        for (key, id, sid) in &due {
            if self.retrying(|| self.expire_record(key, id, sid, now))? {
                records += 1;
            }
        }
        let owed = self.store.get(Cf::Meta, UNVERIFIED)?.is_some();
        if records == 0 && !owed {
            return Ok(PurgeReport {
                verified: true,
                ..PurgeReport::default()
            });
        }
        // The expired records are stubs already: nothing for the rule to retire.
        let mut scope = crate::store::PurgeScope::everything();
        scope.nothing_doomed = true;
        let verified = self
            .store
            .purge_files(&scope, crate::purge::PURGE_VERIFY_TIMEOUT)?;
        if verified {
            let mut batch = self.store.batch();
            batch.delete(Cf::Meta, UNVERIFIED);
            self.store.write_synced(batch)?;
        }
        Ok(PurgeReport {
            subjects: 0,
            records,
            verified,
        })
    }

    /// Stubs one record if it is live and past its period now; removes its expiry
    /// entry in any case (or moves it, if the period was lengthened). Returns whether
    /// a record was stubbed.
    fn expire_record(&self, key: &[u8], id: &TokenId, sid: &Sid, now: u64) -> Result<bool, Error> {
        // The subject's key gives its hash, for the subject's stripe lock. No key: the
        // subject is erased, and its own purge shreds the record.
        let Some(dek) = self.keys.dek(sid)? else {
            let mut batch = self.store.batch();
            batch.delete(Cf::Expiry, key);
            self.store.write(batch)?;
            return Ok(false);
        };
        let _stripe = self.stripes.lock(&dek.subject_hash);
        let mut batch = self.store.batch();
        batch.delete(Cf::Expiry, key);
        // Under the lock: an erasure of the subject has either finished (key gone:
        // its purge shreds the record) or not begun.
        let Some(dek) = self.keys.dek(sid)? else {
            self.store.write(batch)?;
            return Ok(false);
        };
        let live = match self.store.get(Cf::Records, id)? {
            Some(bytes) => match decode(RECORD_FORMAT, &bytes)? {
                StoredRecord::Live(record) if record.sid == *sid => Some((record, bytes)),
                _ => None,
            },
            None => None,
        };
        let Some((record, stored)) = live else {
            // Deleted, already stubbed, or moved: nothing left to expire.
            self.store.write(batch)?;
            return Ok(false);
        };
        // On a shared store: unless another replica changed it meanwhile.
        batch.expect(Cf::Records, id, Some(&stored));
        if !self
            .opts
            .policy
            .expired(&record.field, record.created_at, now)
        {
            // The period was lengthened (or removed) since the record was stored.
            if let Some(at) = self
                .opts
                .policy
                .expires_at(&record.field, record.created_at)
            {
                batch.put(Cf::Expiry, &expiry_key(at, id), sid);
                batch.put(Cf::Index, &index_key(sid, id), &at.to_be_bytes());
            }
            self.store.write(batch)?;
            return Ok(false);
        }
        let event = self.stub_expired(&mut batch, sid, id, &record, &dek, RETENTION_ACTOR)?;
        // In the erasure journal first: a restored backup expires it again.
        let _journaled = match &self.backups {
            Some(backups) => {
                Some(backups.record(now, &[(*sid, Destroyed::Record(*id))], &mut batch)?)
            }
            None => None,
        };
        self.journal.commit_audited(batch, vec![event], true)?;
        Ok(true)
    }

    /// Expires the record `id` of subject instance `sid` again if it is still live,
    /// as a restore replays the erasure journal (whatever the retention period says
    /// now). Returns whether it stubbed a record.
    pub(crate) fn replay_expiry(&self, sid: &Sid, id: &TokenId) -> Result<bool, Error> {
        let Some(dek) = self.keys.dek(sid)? else {
            // Erased since: its own purge shreds the record.
            return Ok(false);
        };
        let _stripe = self.stripes.lock(&dek.subject_hash);
        let live = match self.store.get(Cf::Records, id)? {
            Some(bytes) => match decode(RECORD_FORMAT, &bytes)? {
                StoredRecord::Live(record) if record.sid == *sid => Some(record),
                _ => None,
            },
            None => None,
        };
        let Some(record) = live else {
            return Ok(false);
        };
        let mut batch = self.store.batch();
        let event = self.stub_expired(&mut batch, sid, id, &record, &dek, RESTORE_ACTOR)?;
        // Not synced: the restore syncs once, before the vault is swapped in.
        self.journal.commit_audited(batch, vec![event], false)?;
        Ok(true)
    }

    /// Adds to `batch` the expiry of a live record: its *expired* stub, its index
    /// entry gone, its subject's count, the file check owed; returns its event.
    fn stub_expired(
        &self,
        batch: &mut Batch<'_>,
        sid: &Sid,
        id: &TokenId,
        record: &LiveRecord,
        dek: &Dek,
        actor: &str,
    ) -> Result<AuditEvent, Error> {
        let stub = StoredRecord::Expired {
            tag: expired_tag(&self.index, id),
        };
        batch.put(Cf::Records, id, &encode(RECORD_FORMAT, &stub));
        batch.delete(Cf::Index, &index_key(sid, id));
        self.count_removed_record(
            &dek.subject_hash,
            sid,
            &record.field,
            record.created_at,
            batch,
        )?;
        batch.put(Cf::Meta, UNVERIFIED, b"");
        Ok(
            AuditEvent::new(actor, AuditAction::Expire, AuditOutcome::Ok)
                .about(Some(dek.audit_ref), 1),
        )
    }
}
