//! Audit events: what an entry of the trail says (who did what, when, for which
//! purpose, about which subject reference: no personal data), how it is stored
//! with its chained MAC, and the trail's checkpoint and retention base. The model
//! that the journal writes, the staging files hold and the queries in `audit` read.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::crypto::{Key, domain};
use crate::error::Error;
use crate::store::{Cf, Storage, Store};

/// The actor the audit trail names for records expired by the retention purge.
pub const RETENTION_ACTOR: &str = "retention";
/// The actor of the erasures a restore replays from the erasure journal.
pub const RESTORE_ACTOR: &str = "restore";

pub(crate) const AUDIT_FORMAT: u8 = 1;
pub(crate) const HEAD: &[u8] = b"audit/head";
pub(crate) const BASE: &[u8] = b"audit/base";

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditAction {
    /// Values stored (one event per subject of a call).
    Tokenize,
    /// A value read (one event per token).
    Detokenize,
    /// A value replaced.
    Rectify,
    /// A record deleted.
    Delete,
    /// A subject erased.
    Erase,
    /// A subject's data exported.
    Export,
    /// Consent granted for the event's purpose.
    ConsentGranted,
    /// Consent withdrawn for the event's purpose.
    ConsentWithdrawn,
    /// A subject's consent ledger read.
    ConsentsRead,
    /// Records purged at the end of their retention period.
    Expire,
    /// Audit events past their retention pruned (`records` of them).
    AuditPruned,
    /// Deterministic tokens asked for (one event per subject of a call; `records`
    /// of them). Such a call confirms whether a guessed value is stored.
    TokenizeDeterministic,
    /// A subject's records listed without their values, its consents and access
    /// log read (a privacy desk's look-up; `records` listed).
    Lookup,
}

impl AuditOutcome {
    /// The outcome's name.
    pub fn name(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Forbidden => "forbidden",
            AuditOutcome::NoConsent => "no_consent",
            AuditOutcome::NotFound => "not_found",
            AuditOutcome::Erased => "erased",
            AuditOutcome::Expired => "expired",
            AuditOutcome::Integrity => "integrity",
        }
    }
}

impl AuditAction {
    /// The action's name.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::Tokenize => "tokenize",
            AuditAction::Detokenize => "detokenize",
            AuditAction::Rectify => "rectify",
            AuditAction::Delete => "delete",
            AuditAction::Erase => "erase",
            AuditAction::Export => "export",
            AuditAction::ConsentGranted => "consent_granted",
            AuditAction::ConsentWithdrawn => "consent_withdrawn",
            AuditAction::ConsentsRead => "consents_read",
            AuditAction::Expire => "expire",
            AuditAction::AuditPruned => "audit_pruned",
            AuditAction::TokenizeDeterministic => "tokenize_deterministic",
            AuditAction::Lookup => "lookup",
        }
    }
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditOutcome {
    /// Done.
    Ok,
    /// Refused: the purpose does not cover the field.
    Forbidden,
    /// Refused: no consent.
    NoConsent,
    /// Nothing there.
    NotFound,
    /// The subject was erased.
    Erased,
    /// Past its retention period.
    Expired,
    /// Stored data failed authentication.
    Integrity,
}

/// One event. No subject id, value or field value: the subject is a reference derived
/// from its key. (Its fields, in order, are a stored format: a read's event is
/// staged as a `ReadEvent` with the same fields.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// Position in the trail.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at: u64,
    /// Who: an API key's name, or the caller id an embedding service passes.
    pub actor: String,
    /// What.
    pub action: AuditAction,
    /// For which purpose, if any.
    pub purpose: Option<String>,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// How many records it concerned.
    pub records: u64,
    /// The subject's reference (derived from its key), if it concerned one.
    pub subject: Option<[u8; 16]>,
}

impl AuditEvent {
    pub(crate) fn new(actor: &str, action: AuditAction, outcome: AuditOutcome) -> AuditEvent {
        AuditEvent {
            seq: 0,
            at: 0,
            actor: actor.to_owned(),
            action,
            purpose: None,
            outcome,
            records: 0,
            subject: None,
        }
    }

    pub(crate) fn purpose(mut self, purpose: &str) -> AuditEvent {
        self.purpose = Some(purpose.to_owned());
        self
    }

    /// About `records` records of the subject with reference `subject`.
    pub(crate) fn about(mut self, subject: Option<[u8; 16]>, records: u64) -> AuditEvent {
        self.subject = subject;
        self.records = records;
        self
    }
}

/// A read's event, borrowing its names: the read stages it as it encodes it, with
/// no copy (a copied name is freed by the thread that commits the event, which
/// left each reader's allocations to the allocator's slow path). It encodes as the
/// [`AuditEvent`] it stands for: the same fields, in the same order.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct ReadEvent<'a> {
    pub seq: u64,
    pub at: u64,
    pub actor: &'a str,
    pub action: AuditAction,
    pub purpose: Option<&'a str>,
    pub outcome: AuditOutcome,
    pub records: u64,
    pub subject: Option<[u8; 16]>,
}

impl<'a> ReadEvent<'a> {
    pub(crate) fn new(actor: &'a str, action: AuditAction, outcome: AuditOutcome) -> Self {
        ReadEvent {
            seq: 0,
            at: 0,
            actor,
            action,
            purpose: None,
            outcome,
            records: 0,
            subject: None,
        }
    }

    pub(crate) fn purpose(self, purpose: &'a str) -> Self {
        ReadEvent {
            purpose: Some(purpose),
            ..self
        }
    }

    /// About `records` records of the subject with reference `subject`.
    pub(crate) fn about(self, subject: Option<[u8; 16]>, records: u64) -> Self {
        ReadEvent {
            subject,
            records,
            ..self
        }
    }

    /// Happened at `at` (milliseconds since the Unix epoch).
    pub(crate) fn at(self, at: u64) -> Self {
        ReadEvent { at, ..self }
    }

    /// The event, owned. (Both structs are written out whole, here and in
    /// [`AuditEvent`]'s literal, so that a field added to either fails to compile
    /// until it is added to both; their order is checked by a test of the staging
    /// file's entries.)
    pub(crate) fn to_event(self) -> AuditEvent {
        let ReadEvent {
            seq,
            at,
            actor,
            action,
            purpose,
            outcome,
            records,
            subject,
        } = self;
        AuditEvent {
            seq,
            at,
            actor: actor.to_owned(),
            action,
            purpose: purpose.map(str::to_owned),
            outcome,
            records,
            subject,
        }
    }
}

impl AuditOutcome {
    /// The outcome a per-item result is recorded with.
    pub(crate) fn of<T>(result: &Result<T, Error>) -> AuditOutcome {
        match result {
            Ok(_) => AuditOutcome::Ok,
            Err(Error::Forbidden) => AuditOutcome::Forbidden,
            Err(Error::NoConsent) => AuditOutcome::NoConsent,
            Err(Error::Erased) => AuditOutcome::Erased,
            Err(Error::Expired) => AuditOutcome::Expired,
            Err(Error::Integrity) => AuditOutcome::Integrity,
            Err(_) => AuditOutcome::NotFound,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEvent {
    pub(crate) event: AuditEvent,
    pub(crate) mac: [u8; 32],
}

/// The checkpoint: the last event's sequence number and MAC.
#[derive(Serialize, Deserialize)]
pub(crate) struct Head {
    pub(crate) seq: u64,
    pub(crate) mac: [u8; 32],
    /// The mark of the staged read events in the trail when it was written, so that a
    /// mark deleted or replayed (which would have staged events committed twice at
    /// the next open) does not match.
    pub(crate) staged: u64,
    pub(crate) tag: [u8; 32],
}

/// The checkpoint as written before read events were staged (format 1).
#[derive(Deserialize)]
pub(crate) struct HeadV1 {
    seq: u64,
    mac: [u8; 32],
    tag: [u8; 32],
}

pub(crate) const HEAD_FORMAT: u8 = 2;

/// Where the trail starts once events were pruned: the first kept sequence number
/// and the MAC of the event before it.
#[derive(Serialize, Deserialize)]
pub(crate) struct Base {
    pub(crate) first: u64,
    pub(crate) mac: [u8; 32],
    pub(crate) tag: [u8; 32],
}

pub(crate) fn chain_mac(key: &Key, prev: &[u8; 32], event: &AuditEvent) -> Result<[u8; 32], Error> {
    let body = postcard::to_allocvec(event).map_err(|_| Error::Integrity)?;
    Ok(key.mac_parts(&[domain::AUDIT_EVENT, prev, &body]))
}

pub(crate) fn head_tag(key: &Key, seq: u64, mac: &[u8; 32], staged: u64) -> [u8; 32] {
    key.mac_parts(&[
        domain::AUDIT_HEAD,
        &seq.to_be_bytes(),
        mac,
        &staged.to_be_bytes(),
    ])
}

pub(crate) fn head_v1_tag(key: &Key, seq: u64, mac: &[u8; 32]) -> [u8; 32] {
    key.mac_parts(&[domain::AUDIT_HEAD, &seq.to_be_bytes(), mac])
}

pub(crate) fn base_tag(key: &Key, first: u64, mac: &[u8; 32]) -> [u8; 32] {
    key.mac_parts(&[domain::AUDIT_BASE, &first.to_be_bytes(), mac])
}

pub(crate) fn index_key(subject: &[u8; 16], seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(subject);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The stored checkpoint, if any, checked against the mark of the staged read events
/// (a format-1 checkpoint names no mark); `Err` with what is wrong when it does not
/// authenticate or match.
/// The checkpoint from its stored bytes, if they authenticate (current format: a
/// vault on a shared store was never written by an older version).
pub(crate) fn parse_head(key: &Key, bytes: &[u8]) -> Option<Head> {
    let head = decode::<Head>(HEAD_FORMAT, bytes).ok()?;
    bool::from(head_tag(key, head.seq, &head.mac, head.staged).ct_eq(&head.tag)).then_some(head)
}

pub(crate) fn read_head(
    store: &Store,
    key: &Key,
) -> Result<Result<Option<Head>, &'static str>, Error> {
    // One multi-get: both from the same snapshot (a group committing in between
    // writes both).
    let mut found = store.multi_get(Cf::Meta, &[HEAD, STAGED])?.into_iter();
    let (head, mark) = (found.next().flatten(), found.next().flatten());
    let mark = parse_mark(key, mark.as_deref());
    let Some(bytes) = head else {
        // A mark is only written with a checkpoint.
        return Ok(match mark {
            Ok(0) => Ok(None),
            Ok(_) => Err("the checkpoint is missing"),
            Err(problem) => Err(problem),
        });
    };
    if let Ok(head) = decode::<Head>(HEAD_FORMAT, &bytes) {
        if !bool::from(head_tag(key, head.seq, &head.mac, head.staged).ct_eq(&head.tag)) {
            return Ok(Err("the checkpoint was altered"));
        }
        return Ok(match mark {
            Ok(mark) if mark == head.staged => Ok(Some(head)),
            Ok(_) => Err("the mark of the staged read events does not match the checkpoint"),
            Err(problem) => Err(problem),
        });
    }
    Ok(match (decode::<HeadV1>(AUDIT_FORMAT, &bytes), mark) {
        (Ok(old), Ok(mark)) if bool::from(head_v1_tag(key, old.seq, &old.mac).ct_eq(&old.tag)) => {
            Ok(Some(Head {
                seq: old.seq,
                mac: old.mac,
                staged: mark,
                tag: old.tag,
            }))
        }
        (_, Err(problem)) => Err(problem),
        _ => Err("the checkpoint was altered"),
    })
}

/// The stored base (sequence 0 after an all-zero MAC when nothing was pruned).
pub(crate) fn read_base(
    store: &Store,
    key: &Key,
) -> Result<Result<(u64, [u8; 32]), &'static str>, Error> {
    let Some(bytes) = store.get(Cf::Meta, BASE)? else {
        return Ok(Ok((0, [0u8; 32])));
    };
    Ok(match decode::<Base>(AUDIT_FORMAT, &bytes) {
        Ok(base) if bool::from(base_tag(key, base.first, &base.mac).ct_eq(&base.tag)) => {
            Ok((base.first, base.mac))
        }
        _ => Err("the retention base was altered"),
    })
}

/// Where the trail records the last staging sequence number it committed.
pub(crate) const STAGED: &[u8] = b"audit/staged";
const STAGED_FORMAT: u8 = 1;

/// The mark the trail keeps with the staged events it takes: the last staging
/// number, authenticated like the checkpoint (an altered one would have staged
/// events dropped, or committed twice, at the next open).
#[derive(Serialize, Deserialize)]
struct Mark {
    seq: u64,
    tag: [u8; 32],
}

fn mark_tag(key: &Key, seq: u64) -> [u8; 32] {
    key.mac_parts(&[domain::AUDIT_STAGED_MARK, &seq.to_be_bytes()])
}

/// The stored mark of the staged events in the trail (0: none yet); `Err` with
/// what is wrong when it does not authenticate.
pub(crate) fn read_mark(store: &Store, key: &Key) -> Result<Result<u64, &'static str>, Error> {
    Ok(parse_mark(key, store.get(Cf::Meta, STAGED)?.as_deref()))
}

/// The mark from its stored form (`None`: not stored, 0).
pub(crate) fn parse_mark(key: &Key, bytes: Option<&[u8]>) -> Result<u64, &'static str> {
    let Some(bytes) = bytes else {
        return Ok(0);
    };
    match decode::<Mark>(STAGED_FORMAT, bytes) {
        Ok(mark) if bool::from(mark_tag(key, mark.seq).ct_eq(&mark.tag)) => Ok(mark.seq),
        _ => Err("the mark of the staged read events was altered"),
    }
}

/// The stored form of the mark for staging number `seq`.
pub(crate) fn mark_value(key: &Key, seq: u64) -> Vec<u8> {
    encode(
        STAGED_FORMAT,
        &Mark {
            seq,
            tag: mark_tag(key, seq),
        },
    )
}
