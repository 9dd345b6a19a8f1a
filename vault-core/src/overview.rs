//! A subject at a glance, without its values: what a privacy desk shows before
//! anyone reveals a value (each reveal is a detokenization of its own, audited as
//! one).

use crate::alias;
use crate::codec::decode;
use crate::consent::ConsentStatus;
use crate::erase::SubjectRef;
use crate::error::Error;
use crate::events::{AuditAction, AuditEvent, AuditOutcome, ReadEvent};
use crate::records::{RECORD_FORMAT, StoredRecord};
use crate::store::{Cf, Storage};
use crate::subjects::SubjectEntry;
use crate::token::{Token, TokenId};
use crate::vault::Vault;

/// What the vault holds about one subject, values left out.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectOverview {
    /// The subject instance, or `None` when the vault holds nothing under this id.
    pub subject_ref: Option<SubjectRef>,
    /// The first records, in storage order (their values are not read).
    pub records: Vec<RecordInfo>,
    /// Whether the subject has more records than listed (an export lists all).
    pub more_records: bool,
    /// The consents: current state and history per purpose.
    pub consents: Vec<ConsentStatus>,
    /// The latest audit events about the subject (its access log), oldest first.
    pub access_log: Vec<AuditEvent>,
    /// Whether there are older events than listed (an export lists every one).
    pub more_events: bool,
    /// The kept backups taken since the subject was stored: they hold its data.
    pub backups: Vec<String>,
}

/// One record of a [`SubjectOverview`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordInfo {
    /// Its token, as issued.
    pub token: Token,
    /// The field name.
    pub field: String,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at: u64,
}

impl Vault {
    /// The subject's first `limit` records (tokens, fields, times: no value is
    /// decrypted), consents, latest `limit` audit events and the backups that hold
    /// it. Recorded in the audit trail as a lookup, also when the vault holds
    /// nothing under the id (so that probing ids leaves a trace).
    pub fn overview(&self, subject: &str, limit: usize) -> Result<SubjectOverview, Error> {
        self.default_actor().overview(subject, limit)
    }

    pub(crate) fn overview_by(
        &self,
        actor: &str,
        subject: &str,
        limit: usize,
    ) -> Result<SubjectOverview, Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_subject(subject)?;
        let limit = limit.max(1);
        let hash = inner.index.subject_hash(subject);
        let Some(bytes) = inner.store.get(Cf::Subjects, &hash)? else {
            let event =
                ReadEvent::new(actor, AuditAction::Lookup, AuditOutcome::NotFound).about(None, 0);
            inner.commit_read_events(&[event])?;
            return Ok(SubjectOverview {
                subject_ref: None,
                records: Vec::new(),
                more_records: false,
                consents: Vec::new(),
                access_log: Vec::new(),
                more_events: false,
                backups: Vec::new(),
            });
        };
        let entry = SubjectEntry::decode(&bytes)?;
        let sid = entry.sid;
        let dek = inner.keys.dek(&sid)?.ok_or(Error::Erased)?;
        if dek.subject_hash != hash {
            return Err(Error::Integrity);
        }
        let mut ids: Vec<TokenId> = Vec::new();
        let mut more_records = false;
        inner.store.scan_prefix(Cf::Index, &sid, |key, _| {
            if ids.len() == limit {
                more_records = true;
                return Ok(false);
            }
            ids.push(key[16..].try_into().map_err(|_| Error::Integrity)?);
            Ok(true)
        })?;
        let issued = alias::issued_if_any(&*inner.store, &inner.issued_aliases, &ids)?;
        let now = inner.now();
        let mut records = Vec::with_capacity(ids.len());
        for ((id, stored), issued) in ids
            .iter()
            .zip(inner.store.multi_get(Cf::Records, &ids)?)
            .zip(issued)
        {
            let Some(stored) = stored else { continue };
            let StoredRecord::Live(record) = decode(RECORD_FORMAT, &stored)? else {
                continue;
            };
            if record.sid != sid
                || inner
                    .opts
                    .policy
                    .expired(&record.field, record.created_at, now)
            {
                continue;
            }
            let token = match issued {
                Some(text) => text.parse().map_err(|_| Error::Integrity)?,
                None => inner.index.tokens.token(id),
            };
            records.push(RecordInfo {
                token,
                field: record.field,
                created_at: record.created_at,
            });
        }
        let consents = inner.consents_of(&sid, &dek)?;
        let until = inner.audit_head()?.map_or(0, |h| h.seq.saturating_add(1));
        // The latest `limit`: the pages read in order, the oldest dropped.
        let mut access_log: std::collections::VecDeque<AuditEvent> =
            std::collections::VecDeque::with_capacity(limit);
        let mut more_events = false;
        let mut after = None;
        loop {
            let page = inner.events_about_page(&dek.audit_ref, after, until, limit)?;
            for event in page.events {
                if access_log.len() == limit {
                    access_log.pop_front();
                    more_events = true;
                }
                access_log.push_back(event);
            }
            match page.next {
                Some(next) => after = next,
                None => break,
            }
        }
        let access_log: Vec<AuditEvent> = access_log.into();
        let backups = match &inner.backups {
            Some(_) if !inner.store.shared() => inner
                .backup_list()?
                .backups
                .into_iter()
                .filter(|b| b.created_at >= entry.created_at)
                .map(|b| b.id)
                .collect(),
            _ => Vec::new(),
        };
        let event = ReadEvent::new(actor, AuditAction::Lookup, AuditOutcome::Ok)
            .about(Some(dek.audit_ref), records.len() as u64);
        inner.commit_read_events(&[event])?;
        Ok(SubjectOverview {
            subject_ref: Some(SubjectRef(sid)),
            records,
            more_records,
            consents,
            access_log,
            more_events,
            backups,
        })
    }
}
