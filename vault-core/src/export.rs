//! Export (GDPR Art. 15 and 20): every record of one subject, read through the
//! subject's index prefix and a multi-get of its records, never a scan of others.

use crate::codec::decode;
use crate::consent::ConsentStatus;
use crate::erase::SubjectRef;
use crate::error::Error;
use crate::events::{AuditAction, AuditEvent, AuditOutcome, ReadEvent};
use crate::records::{ExportedRecord, Plaintext, RECORD_FORMAT, StoredRecord, stub_outcome};
use crate::store::{Cf, Storage};
use crate::subjects::{SUBJECT_FORMAT, SubjectEntry};
use crate::token::TokenId;
use crate::vault::Vault;

/// Everything the vault holds about one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectExport {
    /// The subject instance, or `None` when the vault holds nothing under this id.
    pub subject_ref: Option<SubjectRef>,
    /// When the export was made, in milliseconds since the Unix epoch.
    pub exported_at: u64,
    /// The subject's records, in token order.
    pub records: Vec<ExportedRecord>,
    /// The subject's consents: current state and history per purpose.
    pub consents: Vec<ConsentStatus>,
    /// Who did what with the subject's data, when, and for which purpose (GDPR
    /// Art. 15(1)(c)): the audit events about the subject still kept, oldest first.
    /// This export is recorded too, after it was made.
    pub access_log: Vec<AuditEvent>,
}

impl Vault {
    /// Exports every record of `subject`. A subject the vault does not know (never
    /// stored, or erased) exports as empty.
    /// The export is recorded in the audit trail before it is returned.
    pub fn export(&self, subject: &str) -> Result<SubjectExport, Error> {
        self.default_actor().export(subject)
    }

    pub(crate) fn export_by(&self, actor: &str, subject: &str) -> Result<SubjectExport, Error> {
        let export = self.export_unaudited(subject)?;
        let inner = &*self.inner;
        let event = ReadEvent::new(actor, AuditAction::Export, AuditOutcome::Ok)
            .about(export.1, export.0.records.len() as u64);
        inner.commit_read_events(&[event])?;
        Ok(export.0)
    }

    /// The export and the subject's audit reference.
    fn export_unaudited(&self, subject: &str) -> Result<(SubjectExport, Option<[u8; 16]>), Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_subject(subject)?;
        let hash = inner.index.subject_hash(subject);
        let exported_at = inner.now();
        let Some(bytes) = inner.store.get(Cf::Subjects, &hash)? else {
            let empty = SubjectExport {
                subject_ref: None,
                exported_at,
                records: Vec::new(),
                consents: Vec::new(),
                access_log: Vec::new(),
            };
            return Ok((empty, None));
        };
        let entry: SubjectEntry = decode(SUBJECT_FORMAT, &bytes)?;
        let sid = entry.sid;
        let mut ids: Vec<TokenId> = Vec::new();
        inner.store.scan_prefix(Cf::Index, &sid, |key, _| {
            ids.push(key[16..].try_into().map_err(|_| Error::Integrity)?);
            Ok(true)
        })?;
        // Erased between the two reads: the subject is gone.
        let dek = inner.keys.dek(&sid)?.ok_or(Error::Erased)?;
        if dek.subject_hash != hash {
            return Err(Error::Integrity);
        }
        let stored = inner.store.multi_get(Cf::Records, &ids)?;
        let mut records = Vec::with_capacity(ids.len());
        for (id, value) in ids.iter().zip(stored) {
            // Deleted between the index scan and the read: not part of the export.
            let Some(value) = value else { continue };
            match decode(RECORD_FORMAT, &value)? {
                // Past its retention period: no longer held for anyone.
                StoredRecord::Expired { .. } => continue,
                StoredRecord::Live(record) => {
                    if record.sid != sid {
                        return Err(Error::Integrity);
                    }
                    if inner
                        .opts
                        .policy
                        .expired(&record.field, record.created_at, exported_at)
                    {
                        continue;
                    }
                    let plain = record.open(&inner.vault_id, id, &dek.aead)?;
                    records.push(ExportedRecord {
                        token: inner.index.tokens.token(id),
                        field: record.field,
                        value: Plaintext::new(plain),
                        created_at: record.created_at,
                    });
                }
                StoredRecord::Shredded { tag } => {
                    return Err(stub_outcome(&inner.index, id, &tag));
                }
            }
        }
        let consents = inner.consents_of(&sid, &dek)?;
        let access_log = inner.events_about(&dek.audit_ref)?;
        let export = SubjectExport {
            subject_ref: Some(SubjectRef(sid)),
            exported_at,
            records,
            consents,
            access_log,
        };
        Ok((export, Some(dek.audit_ref)))
    }
}
