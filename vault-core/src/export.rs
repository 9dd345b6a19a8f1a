//! Export (GDPR Art. 15 and 20): every record of one subject, read through the
//! subject's index prefix and a multi-get of its records, never a scan of others.

use crate::alias;
use crate::codec::decode;
use crate::consent::ConsentStatus;
use crate::erase::SubjectRef;
use crate::error::{Argument, Error, InputError, Problem};
use crate::events::{AuditAction, AuditEvent, AuditOutcome, ReadEvent};
use crate::records::{
    ExportedRecord, Plaintext, RECORD_FORMAT, StoredRecord, index_key, stub_outcome,
};
use crate::store::{Cf, Storage};
use crate::subjects::SubjectEntry;
use crate::token::{Token, TokenId};
use crate::vault::{Inner, Vault};

/// Everything the vault holds about one subject, or one page of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubjectExport {
    /// The subject instance, or `None` when the vault holds nothing under this id.
    /// Pages of one export name the same instance: another means the subject was
    /// erased and stored afresh between two pages.
    pub subject_ref: Option<SubjectRef>,
    /// When the export was made, in milliseconds since the Unix epoch.
    pub exported_at: u64,
    /// The subject's records, in storage order.
    pub records: Vec<ExportedRecord>,
    /// The subject's consents: current state and history per purpose (on the
    /// first page).
    pub consents: Vec<ConsentStatus>,
    /// Who did what with the subject's data, when, and for which purpose (GDPR
    /// Art. 15(1)(c)): the audit events about the subject still kept, oldest first.
    /// This export is recorded too, after it was made. Pages give the records first,
    /// then the events.
    pub access_log: Vec<AuditEvent>,
    /// Where the next page starts ([`Vault::export_page`]); `None` on the last page.
    /// Opaque: it names a position, never a value.
    pub next: Option<String>,
}

/// Where a page of an export starts, and where the export's access log ends.
#[derive(Debug, Clone, Copy)]
struct Position {
    at: At,
    /// The audit events listed are those before this sequence number: the trail's
    /// end when the export began. Later events (its own pages' among them) are
    /// left out, so that following the pages ends.
    until: u64,
}

/// After a record (its token), or after an audit event (its sequence number;
/// `None` before the first).
#[derive(Debug, Clone, Copy)]
enum At {
    Records(TokenId),
    Events(Option<u64>),
}

impl Position {
    /// Parses `r<token>.<until>`, `e<seq>.<until>` or `e.<until>`.
    fn parse(inner: &Inner, cursor: &str) -> Result<Position, Error> {
        let malformed = || Error::from(InputError::new(Argument::Cursor, Problem::Malformed));
        // At most 19 digits: every such number is a u64, so the shape alone
        // (what /openapi.json states) says whether a cursor is taken.
        let digits = |text: &str| -> Result<u64, Error> {
            if !(1..=19).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            text.parse().map_err(|_| malformed())
        };
        let (at, until) = cursor.rsplit_once('.').ok_or_else(malformed)?;
        let until = digits(until)?;
        let at = if let Some(token) = at.strip_prefix('r') {
            let token: Token = token.parse().map_err(|_| malformed())?;
            At::Records(inner.index.tokens.position(&token).ok_or_else(malformed)?)
        } else {
            match at.strip_prefix('e') {
                Some("") => At::Events(None),
                Some(seq) => At::Events(Some(digits(seq)?)),
                None => return Err(malformed()),
            }
        };
        Ok(Position { at, until })
    }

    fn text(self, inner: &Inner) -> String {
        let until = self.until;
        match self.at {
            At::Records(id) => format!("r{}.{until}", inner.index.tokens.token(&id)),
            At::Events(None) => format!("e.{until}"),
            At::Events(Some(seq)) => format!("e{seq}.{until}"),
        }
    }
}

impl Vault {
    /// Exports every record of `subject`, in one answer. A subject the vault does not
    /// know (never stored, or erased) exports as empty.
    /// The export is recorded in the audit trail before it is returned.
    pub fn export(&self, subject: &str) -> Result<SubjectExport, Error> {
        self.default_actor().export(subject)
    }

    /// One page of [`export`](Self::export): up to `limit` records and audit
    /// events (at least one), starting where `cursor` (a previous page's
    /// [`next`](SubjectExport::next)) says, or at the start. Each page is recorded in
    /// the audit trail. Text without a cursor's shape is refused
    /// ([`Argument::Cursor`]); a cursor of that shape is a position among the
    /// subject's records, whoever wrote it.
    pub fn export_page(
        &self,
        subject: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SubjectExport, Error> {
        self.default_actor().export_page(subject, cursor, limit)
    }

    pub(crate) fn export_by(
        &self,
        actor: &str,
        subject: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<SubjectExport, Error> {
        let export = self.export_unaudited(subject, cursor, limit)?;
        let inner = &*self.inner;
        let event = ReadEvent::new(actor, AuditAction::Export, AuditOutcome::Ok)
            .about(export.1, export.0.records.len() as u64);
        inner.commit_read_events(&[event])?;
        Ok(export.0)
    }

    /// The export (or page) and the subject's audit reference.
    fn export_unaudited(
        &self,
        subject: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<(SubjectExport, Option<[u8; 16]>), Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_subject(subject)?;
        let position = cursor.map(|c| Position::parse(inner, c)).transpose()?;
        let limit = limit.max(1);
        let hash = inner.index.subject_hash(subject);
        let exported_at = inner.now();
        let Some(bytes) = inner.store.get(Cf::Subjects, &hash)? else {
            let empty = SubjectExport {
                subject_ref: None,
                exported_at,
                records: Vec::new(),
                consents: Vec::new(),
                access_log: Vec::new(),
                next: None,
            };
            return Ok((empty, None));
        };
        let entry = SubjectEntry::decode(&bytes)?;
        let sid = entry.sid;
        // The access log listed ends where the trail ended as the export began.
        let until = match position {
            Some(p) => p.until,
            None => inner.audit_head()?.map_or(0, |h| h.seq.saturating_add(1)),
        };
        let mut ids: Vec<TokenId> = Vec::new();
        let mut next = None;
        if let None
        | Some(Position {
            at: At::Records(_), ..
        }) = position
        {
            let from = match position {
                Some(Position {
                    at: At::Records(id),
                    ..
                }) => Some(index_key(&sid, &id)),
                _ => None,
            };
            let start = from.as_ref().map_or(&sid[..], |k| &k[..]);
            inner
                .store
                .scan_prefix_from(Cf::Index, &sid, start, |key, _| {
                    if from.is_some_and(|f| f[..] == *key) {
                        return Ok(true);
                    }
                    let id: TokenId = key[16..].try_into().map_err(|_| Error::Integrity)?;
                    if ids.len() == limit {
                        next = ids.last().map(|last| Position {
                            at: At::Records(*last),
                            until,
                        });
                        return Ok(false);
                    }
                    ids.push(id);
                    Ok(true)
                })?;
        }
        // Erased between the two reads: the subject is gone.
        let dek = inner.keys.dek(&sid)?.ok_or(Error::Erased)?;
        if dek.subject_hash != hash {
            return Err(Error::Integrity);
        }
        let stored = inner.store.multi_get(Cf::Records, &ids)?;
        let issued = alias::issued_if_any(&*inner.store, &inner.issued_aliases, &ids)?;
        let mut records = Vec::with_capacity(ids.len());
        for ((id, value), issued) in ids.iter().zip(stored).zip(issued) {
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
                    // The token as issued: in its format, or production's in a
                    // staging vault.
                    let token = match issued {
                        Some(text) => text.parse().map_err(|_| Error::Integrity)?,
                        None => inner.index.tokens.token(id),
                    };
                    records.push(ExportedRecord {
                        token,
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
        let consents = if position.is_none() {
            inner.consents_of(&sid, &dek)?
        } else {
            Vec::new()
        };
        let mut access_log = Vec::new();
        if next.is_none() {
            let after = match position {
                Some(Position {
                    at: At::Events(after),
                    ..
                }) => after,
                _ => None,
            };
            let page = inner.events_about_page(&dek.audit_ref, after, until, limit - ids.len())?;
            next = page.next.map(|after| Position {
                at: At::Events(after),
                until,
            });
            access_log = page.events;
        }
        let export = SubjectExport {
            subject_ref: Some(SubjectRef(sid)),
            exported_at,
            records,
            consents,
            access_log,
            next: next.map(|p| p.text(inner)),
        };
        Ok((export, Some(dek.audit_ref)))
    }
}
