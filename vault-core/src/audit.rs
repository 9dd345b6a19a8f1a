//! The audit trail (GDPR Art. 5(2), 30): who did what to personal data, when, and
//! for which purpose, with no personal data in it, tamper-evident.
//!
//! Events live in the `audit` family under their sequence number. Each carries a MAC
//! over the previous event's MAC and its own content, under a key derived from the
//! vault's index key, so altering, removing, inserting or reordering an event breaks
//! the chain; a checkpoint (the last sequence number and MAC, itself authenticated)
//! is written with every event, so cutting the tail off is detected too.
//!
//! A subject appears only as a reference derived from its key: while the subject
//! exists its events can be found; once the key is destroyed nobody, not even with the
//! root key and the subject id, can tell which events were about it.
//!
//! Ordering without serialising fsyncs: every audited write goes through the
//! journal ([`crate::journal`]), which assigns sequence numbers and MACs and writes
//! the callers' batches in that order, syncing once per group of concurrent callers
//! (its own group commit). The chain order is therefore the commit order, and a
//! crash leaves a prefix. This module holds the events, their chain and checkpoint,
//! and the queries over the trail: listing, verification and pruning.
//!
//! Retention: events older than the configured period are pruned from the start of
//! the trail; a base checkpoint (the first kept sequence number and the MAC before
//! it, authenticated) lets the rest verify, and the pruning is itself an event.

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::crypto::{Key, domain};
use crate::error::Error;

use crate::retention::RETENTION_ACTOR;
use crate::staged::{self, STAGED};
use crate::store::{Cf, Storage, Store, WriteSet};
use crate::vault::{Inner, Vault};

pub(crate) const AUDIT_FORMAT: u8 = 1;
pub(crate) const HEAD: &[u8] = b"audit/head";
const BASE: &[u8] = b"audit/base";
/// Events pruned per batch (and per `AuditPruned` event).
const PRUNE_CHUNK: usize = 10_000;

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
struct HeadV1 {
    seq: u64,
    mac: [u8; 32],
    tag: [u8; 32],
}

pub(crate) const HEAD_FORMAT: u8 = 2;

/// Where the trail starts once events were pruned: the first kept sequence number
/// and the MAC of the event before it.
#[derive(Serialize, Deserialize)]
struct Base {
    first: u64,
    mac: [u8; 32],
    tag: [u8; 32],
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

fn head_v1_tag(key: &Key, seq: u64, mac: &[u8; 32]) -> [u8; 32] {
    key.mac_parts(&[domain::AUDIT_HEAD, &seq.to_be_bytes(), mac])
}

fn base_tag(key: &Key, first: u64, mac: &[u8; 32]) -> [u8; 32] {
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
pub(crate) fn read_head(
    store: &Store,
    key: &Key,
) -> Result<Result<Option<Head>, &'static str>, Error> {
    // One multi-get: both from the same snapshot (a group committing in between
    // writes both).
    let mut found = store.multi_get(Cf::Meta, &[HEAD, STAGED])?.into_iter();
    let (head, mark) = (found.next().flatten(), found.next().flatten());
    let mark = staged::parse_mark(key, mark.as_deref());
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
fn read_base(store: &Store, key: &Key) -> Result<Result<(u64, [u8; 32]), &'static str>, Error> {
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

/// The result of [`Vault::verify_audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditVerification {
    /// Whether the whole trail is intact.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// The first event found altered, missing, inserted or out of order, if any.
    pub first_bad: Option<u64>,
    /// What is wrong, if anything.
    pub problem: Option<String>,
}

impl AuditVerification {
    fn bad(events: u64, first_bad: Option<u64>, problem: String) -> AuditVerification {
        AuditVerification {
            ok: false,
            events,
            first_bad,
            problem: Some(problem),
        }
    }
}

impl Inner {
    pub(crate) fn verify_audit(&self) -> Result<AuditVerification, Error> {
        // Staged read events are part of the trail: commit them first, if the trail
        // takes them (a damaged one is reported below).
        if self.journal.damaged.is_none() {
            self.flush_staged()?;
        }
        let key = &self.index.audit_key;
        let _prune = self.journal.prune_lock();
        // The checkpoint first: events appended while we scan come after it, and
        // are checked by the chain like the rest.
        let head = match read_head(&self.store, key)? {
            Ok(head) => head,
            Err(problem) => return Ok(AuditVerification::bad(0, None, problem.to_owned())),
        };
        let (first, base_mac) = match read_base(&self.store, key)? {
            Ok(base) => base,
            Err(problem) => return Ok(AuditVerification::bad(0, None, problem.to_owned())),
        };
        let mut expected = first;
        let mut prev = base_mac;
        // The MAC of the event the checkpoint names, once reached.
        let mut at_head = head
            .as_ref()
            .filter(|h| h.seq.checked_add(1) == Some(first))
            .map(|_| base_mac);
        let mut bad: Option<(u64, String)> = None;
        self.store.scan_prefix(Cf::Audit, &[], |k, v| {
            let Ok(at) = <[u8; 8]>::try_from(k) else {
                bad = Some((expected, "a key that is not a sequence number".to_owned()));
                return Ok(false);
            };
            let seq = u64::from_be_bytes(at);
            let problem = match decode::<StoredEvent>(AUDIT_FORMAT, v) {
                Err(_) => Some("undecodable"),
                Ok(stored) if stored.event.seq != seq => Some("stored under another position"),
                Ok(_) if seq != expected => Some(if seq > expected {
                    "missing (removed)"
                } else {
                    "out of order, or before the first kept event"
                }),
                Ok(stored) => match chain_mac(key, &prev, &stored.event) {
                    Ok(mac) if bool::from(mac.ct_eq(&stored.mac)) => {
                        prev = mac;
                        // Hidden from its subject's access history?
                        match &stored.event.subject {
                            Some(subject)
                                if self
                                    .store
                                    .get(Cf::AuditIndex, &index_key(subject, seq))?
                                    .is_none() =>
                            {
                                Some("missing from its subject's index")
                            }
                            _ => None,
                        }
                    }
                    _ => Some("altered, inserted or reordered"),
                },
            };
            if let Some(problem) = problem {
                bad = Some((expected.min(seq), problem.to_owned()));
                return Ok(false);
            }
            if head.as_ref().is_some_and(|h| h.seq == seq) {
                at_head = Some(prev);
            }
            expected += 1;
            Ok(true)
        })?;
        let checked = expected - first;
        // Events past the checkpoint are appends made while we scanned, unless the
        // checkpoint now still names an earlier one (it was rolled back).
        let now_head = read_head(&self.store, key)?.ok().flatten();
        if bad.is_none()
            && expected > first
            && now_head
                .as_ref()
                .is_none_or(|h| h.seq.saturating_add(1) < expected)
        {
            bad = Some(match &now_head {
                Some(h) => (
                    h.seq.saturating_add(1),
                    "after the checkpoint (rolled back?)".to_owned(),
                ),
                None => (first, "the checkpoint is missing".to_owned()),
            });
        }
        if let Some((seq, problem)) = bad {
            return Ok(AuditVerification::bad(
                checked,
                Some(seq),
                format!("event {seq}: {problem}"),
            ));
        }
        // The events up to the checkpoint must all be there, ending in its MAC:
        // otherwise the tail was cut off.
        // (Without a checkpoint when the scan began, every event scanned was checked
        // against the one read after it, above.)
        match head {
            None => {}
            Some(head) => {
                let reached = at_head.is_some_and(|mac| bool::from(mac.ct_eq(&head.mac)));
                if !reached {
                    return Ok(AuditVerification::bad(
                        checked,
                        Some(expected.min(head.seq.saturating_add(1))),
                        format!(
                            "the trail ends before event {} that the checkpoint names (truncated or altered)",
                            head.seq
                        ),
                    ));
                }
            }
        }
        Ok(AuditVerification {
            ok: true,
            events: checked,
            first_bad: None,
            problem: None,
        })
    }

    pub(crate) fn audit_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, Error> {
        self.flush_staged()?;
        let mut out = Vec::new();
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        let after_key = start.checked_sub(1).map(u64::to_be_bytes);
        for (_, v) in self
            .store
            .scan_after(Cf::Audit, after_key.as_ref().map(|k| &k[..]), limit)?
        {
            let stored: StoredEvent = decode(AUDIT_FORMAT, &v)?;
            out.push(stored.event);
        }
        Ok(out)
    }

    /// The events about the subject with reference `subject`, through the index.
    pub(crate) fn events_about(&self, subject: &[u8; 16]) -> Result<Vec<AuditEvent>, Error> {
        // Staged events about the subject go into the trail first; other subjects'
        // are left to the next group (a damaged trail refuses either way).
        if self.journal.damaged.is_some() || self.staging.holds_about(subject) {
            self.flush_staged()?;
        }
        let mut keys = Vec::new();
        self.store.scan_prefix(Cf::AuditIndex, subject, |k, _| {
            keys.push(k[16..].to_vec());
            Ok(true)
        })?;
        let mut out = Vec::with_capacity(keys.len());
        // An event pruned between the two reads is simply no longer there.
        for bytes in self
            .store
            .multi_get(Cf::Audit, &keys)?
            .into_iter()
            .flatten()
        {
            let stored: StoredEvent = decode(AUDIT_FORMAT, &bytes)?;
            if stored.event.subject.as_ref() != Some(subject) {
                return Err(Error::Integrity);
            }
            out.push(stored.event);
        }
        Ok(out)
    }

    /// Prunes events older than the audit retention period at `now`, checking their
    /// chain first (damage is never pruned away); returns how many were pruned.
    pub(crate) fn prune_audit(&self) -> Result<u64, Error> {
        let Some(period) = self.opts.audit_retention else {
            return Ok(0);
        };
        self.flush_staged()?;
        let key = &self.index.audit_key;
        let cutoff = self
            .now()
            .saturating_sub(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        let _prune = self.journal.prune_lock();
        let mut pruned = 0;
        loop {
            let (first, mut mac) = read_base(&self.store, key)?.map_err(|_| Error::Integrity)?;
            let from = first.checked_sub(1).map(u64::to_be_bytes);
            let from = from.as_ref().map(|k| &k[..]);
            // Most runs find nothing due: look at the oldest event before reading more.
            let Some((_, oldest)) = self.store.scan_after(Cf::Audit, from, 1)?.pop() else {
                return Ok(pruned);
            };
            if decode::<StoredEvent>(AUDIT_FORMAT, &oldest)?.event.at >= cutoff {
                return Ok(pruned);
            }
            let page = self.store.scan_after(Cf::Audit, from, PRUNE_CHUNK)?;
            let mut batch = self.store.batch();
            let mut next = first;
            for (k, v) in &page {
                let stored: StoredEvent = decode(AUDIT_FORMAT, v)?;
                if stored.event.at >= cutoff {
                    break;
                }
                let expected = chain_mac(key, &mac, &stored.event)?;
                if stored.event.seq != next
                    || k[..] != next.to_be_bytes()
                    || !bool::from(expected.ct_eq(&stored.mac))
                {
                    return Err(Error::Integrity);
                }
                batch.delete(Cf::Audit, k);
                if let Some(subject) = &stored.event.subject {
                    batch.delete(Cf::AuditIndex, &index_key(subject, next));
                }
                mac = stored.mac;
                next += 1;
            }
            let count = next - first;
            if count == 0 {
                return Ok(pruned);
            }
            let base = Base {
                first: next,
                mac,
                tag: base_tag(key, next, &mac),
            };
            batch.put(Cf::Meta, BASE, &encode(AUDIT_FORMAT, &base));
            let event =
                AuditEvent::new(RETENTION_ACTOR, AuditAction::AuditPruned, AuditOutcome::Ok)
                    .about(None, count);
            self.commit_audited(batch, vec![event], true)?;
            pruned += count;
        }
    }
}

impl Vault {
    /// Checks the whole audit trail: every event's chained MAC, their order, and the
    /// checkpoint against the last event. Reports the first bad event.
    pub fn verify_audit(&self) -> Result<AuditVerification, Error> {
        self.inner.verify_audit()
    }

    /// Up to `limit` events after sequence number `after` (from the start if `None`).
    pub fn audit_events(&self, after: Option<u64>, limit: usize) -> Result<Vec<AuditEvent>, Error> {
        self.inner.audit_events(after, limit)
    }

    /// The audit events about a subject, while it exists (its reference is derived from
    /// its key). Empty for a subject the vault does not know.
    pub fn subject_audit(&self, subject: &str) -> Result<Vec<AuditEvent>, Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_subject(subject)?;
        let h = inner.index.subject_hash(subject);
        let Some(bytes) = inner.store.get(Cf::Subjects, &h)? else {
            return Ok(Vec::new());
        };
        let entry: crate::subjects::SubjectEntry = decode(crate::subjects::SUBJECT_FORMAT, &bytes)?;
        let Some(dek) = inner.dek(&entry.sid)? else {
            return Ok(Vec::new());
        };
        inner.events_about(&dek.audit_ref)
    }

    /// Prunes the audit events older than [`VaultOptions::audit_retention`]
    /// (the background worker does this too); returns how many. Nothing without a
    /// retention period. The pruning is recorded as an event (actor `retention`), and the trail keeps
    /// verifying from the first kept event.
    ///
    /// [`VaultOptions::audit_retention`]: crate::VaultOptions::audit_retention
    pub fn prune_audit(&self) -> Result<u64, Error> {
        self.inner.prune_audit()
    }
}
