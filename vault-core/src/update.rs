//! Changes to one record: rectify (a new value behind the same token) and delete.
//! Both run under the subject's stripe lock, on a record checked again under it.

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::events::{AuditAction, AuditEvent, AuditOutcome};
use crate::records::{
    LiveRecord, RECORD_FORMAT, StoredRecord, expired_outcome, index_key, stub_outcome,
};
use crate::store::{Cf, Storage, WriteSet};
use crate::subjects::{Dek, Sid};
use crate::token::TokenId;
use crate::vault::{Inner, Vault};

impl Vault {
    /// Replaces the value behind `token`; the token stays valid and keeps its field.
    /// A token this vault did not issue is [`Error::NotFound`], like a deleted one;
    /// text without a token's shape is [`Error::InvalidToken`].
    pub fn rectify(&self, token: &str, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.default_actor().rectify(token, value)
    }

    pub(crate) fn rectify_by(&self, actor: &str, token: &str, value: &[u8]) -> Result<(), Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_value(value)?;
        let id = inner.token_id(token)?;
        inner.with_live_record(&id, |sid, dek, record, stored| {
            if inner
                .opts
                .policy
                .expired(&record.field, record.created_at, inner.now())
            {
                return Err(Error::Expired);
            }
            if record.deterministic {
                // Checked on authenticated data: open before trusting the flag.
                record.open(&inner.vault_id, &id, &dek.aead)?;
                return Err(Error::DeterministicToken);
            }
            let updated =
                StoredRecord::Live(record.reseal(&inner.vault_id, &id, &dek.aead, value)?);
            let mut batch = inner.store.batch();
            batch.expect(Cf::Records, &id, Some(stored));
            inner.expect_key(sid, &mut batch)?;
            batch.put(Cf::Records, &id, &encode(RECORD_FORMAT, &updated));
            let event = AuditEvent::new(actor, AuditAction::Rectify, AuditOutcome::Ok)
                .about(Some(dek.audit_ref), 1);
            inner
                .journal
                .commit_audited(batch, vec![event], inner.journal.synced())?;
            Ok(())
        })
    }

    /// Deletes the record behind `token`; the token then answers [`Error::NotFound`],
    /// as does a token this vault did not issue.
    ///
    /// The ciphertext stays in older storage files until compaction reaches them; it is
    /// still under the subject's key. Erasure is what removes bytes provably.
    pub fn delete(&self, token: &str) -> Result<(), Error> {
        self.default_actor().delete(token)
    }

    pub(crate) fn delete_by(&self, actor: &str, token: &str) -> Result<(), Error> {
        let inner = &*self.inner;
        let id = inner.token_id(token)?;
        inner.with_live_record(&id, |sid, dek, record, stored| {
            let mut batch = inner.store.batch();
            batch.expect(Cf::Records, &id, Some(stored));
            inner.expect_key(sid, &mut batch)?;
            batch.delete(Cf::Records, &id);
            batch.delete(Cf::Index, &index_key(sid, &id));
            inner.count_removed_record(
                &dek.subject_hash,
                sid,
                &record.field,
                record.created_at,
                &mut batch,
            )?;
            let event = AuditEvent::new(actor, AuditAction::Delete, AuditOutcome::Ok)
                .about(Some(dek.audit_ref), 1);
            inner
                .journal
                .commit_audited(batch, vec![event], inner.journal.synced())?;
            Ok(())
        })
    }
}

impl Inner {
    /// Runs `f` on a live record (and its stored bytes) under its subject's stripe
    /// lock, after checking again under the lock that the record is live and its
    /// subject not erased; again on fresh reads if another replica's write
    /// conflicted.
    fn with_live_record<T>(
        &self,
        id: &TokenId,
        mut f: impl FnMut(&Sid, &Dek, LiveRecord, &[u8]) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.retrying(|| self.with_live_record_once(id, &mut f))
    }

    fn with_live_record_once<T>(
        &self,
        id: &TokenId,
        f: &mut impl FnMut(&Sid, &Dek, LiveRecord, &[u8]) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let read = |id: &TokenId| -> Result<(LiveRecord, Vec<u8>), Error> {
            let bytes = self.store.get(Cf::Records, id)?.ok_or(Error::NotFound)?;
            match decode(RECORD_FORMAT, &bytes)? {
                StoredRecord::Shredded { tag } => Err(stub_outcome(&self.index, id, &tag)),
                StoredRecord::Expired { tag } => Err(expired_outcome(&self.index, id, &tag)),
                StoredRecord::Live(record) => Ok((record, bytes)),
            }
        };
        let (first, _) = read(id)?;
        let sid = first.sid;
        let dek = self
            .keys
            .dek(&sid)?
            .ok_or_else(|| self.missing_key(&sid, id, &first.link))?;
        let _stripe = self.stripes.lock(&dek.subject_hash);
        // Under the lock: an erasure has either finished (key gone, cache entry
        // dropped) or not begun.
        let (record, stored) = read(id)?;
        if record.sid != sid {
            return Err(Error::Integrity);
        }
        let dek = self
            .keys
            .dek(&sid)?
            .ok_or_else(|| self.missing_key(&sid, id, &record.link))?;
        f(&sid, &dek, record, &stored)
    }
}
