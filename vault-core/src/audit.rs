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
//! [`Journal`], which assigns sequence numbers and MACs and writes the callers'
//! batches in that order, syncing once per group of concurrent callers (its own group
//! commit). The chain order is therefore the commit order, and a crash leaves a prefix.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::crypto::{Key, domain};
use crate::error::{Error, StorageError};
use rocksdb::WriteBatch;

use crate::store::{Batch, Cf, Store};
use crate::vault::{Inner, Vault};

const AUDIT_FORMAT: u8 = 1;
const HEAD: &[u8] = b"audit/head";

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AuditAction {
    /// Values stored.
    Tokenize,
    /// Values read for a purpose.
    Detokenize,
    /// A subject erased.
    Erase,
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
            AuditAction::Erase => "erase",
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
/// from its key.
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
}

#[derive(Serialize, Deserialize)]
struct StoredEvent {
    event: AuditEvent,
    mac: [u8; 32],
}

/// The checkpoint: the last event's sequence number and MAC.
#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    mac: [u8; 32],
    tag: [u8; 32],
}

fn chain_mac(key: &Key, prev: &[u8; 32], event: &AuditEvent) -> Result<[u8; 32], Error> {
    let body = postcard::to_allocvec(event).map_err(|_| Error::Integrity)?;
    Ok(key.mac_parts(&[domain::AUDIT_EVENT, prev, &body]))
}

fn head_tag(key: &Key, seq: u64, mac: &[u8; 32]) -> [u8; 32] {
    key.mac_parts(&[domain::AUDIT_HEAD, &seq.to_be_bytes(), mac])
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

/// Per ticket, the sequence numbers or the error; then the next sequence number and
/// the last MAC after the group.
type GroupOutcome = (Vec<(u64, Result<Vec<u64>, String>)>, u64, [u8; 32]);

struct Request {
    ticket: u64,
    batch: WriteBatch,
    events: Vec<AuditEvent>,
    sync: bool,
}

#[derive(Default)]
struct State {
    /// The next sequence number and the last event's MAC.
    next_seq: u64,
    last_mac: [u8; 32],
    queue: VecDeque<Request>,
    leader: bool,
    next_ticket: u64,
    done: HashMap<u64, Result<Vec<u64>, String>>,
}

/// The audit journal: orders and commits audited writes.
pub(crate) struct Journal {
    state: Mutex<State>,
    cv: Condvar,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Reads the checkpoint.
    pub(crate) fn open(store: &Store, key: &Key) -> Result<Journal, Error> {
        let mut state = State::default();
        if let Some(bytes) = store.get(Cf::Meta, HEAD)? {
            let head: Head = decode(AUDIT_FORMAT, &bytes)?;
            if !bool::from(head_tag(key, head.seq, &head.mac).ct_eq(&head.tag)) {
                return Err(Error::Integrity);
            }
            state.next_seq = head.seq + 1;
            state.last_mac = head.mac;
        }
        Ok(Journal {
            state: Mutex::new(state),
            cv: Condvar::new(),
        })
    }
}

impl Inner {
    /// Commits `batch` together with `events` (sequence numbers and times filled in
    /// here), after every earlier audited write; returns the events' sequence numbers.
    pub(crate) fn commit_audited(
        &self,
        batch: Batch<'_>,
        mut events: Vec<AuditEvent>,
        sync: bool,
    ) -> Result<Vec<u64>, Error> {
        let now = self.now();
        for e in &mut events {
            e.at = now;
        }
        let batch = batch.into_raw();
        let journal = &self.journal;
        let mut state = journal.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Request {
            ticket,
            batch,
            events,
            sync,
        });
        loop {
            if let Some(result) = state.done.remove(&ticket) {
                return result.map_err(|e| Error::Storage(StorageError(e)));
            }
            if !state.leader {
                state.leader = true;
                let group: Vec<Request> = state.queue.drain(..).collect();
                let (next_seq, last_mac) = (state.next_seq, state.last_mac);
                drop(state);
                let (outcomes, next_seq, last_mac) = self.write_group(group, next_seq, last_mac);
                state = journal.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.next_seq = next_seq;
                state.last_mac = last_mac;
                state.done.extend(outcomes);
                state.leader = false;
                journal.cv.notify_all();
                continue;
            }
            state = journal
                .cv
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes a group in order, syncing once at its end if any caller asked for it.
    fn write_group(
        &self,
        group: Vec<Request>,
        mut next_seq: u64,
        mut last_mac: [u8; 32],
    ) -> GroupOutcome {
        let sync = group.iter().any(|r| r.sync);
        let count = group.len();
        let key = &self.index.audit_key;
        let mut outcomes = Vec::with_capacity(count);
        let mut failed: Option<String> = None;
        for (i, mut request) in group.into_iter().enumerate() {
            if let Some(e) = &failed {
                outcomes.push((request.ticket, Err(e.clone())));
                continue;
            }
            let (mut seq, mut mac) = (next_seq, last_mac);
            let mut seqs = Vec::with_capacity(request.events.len());
            let mut staged = Ok(());
            for mut event in request.events {
                event.seq = seq;
                match chain_mac(key, &mac, &event) {
                    Ok(m) => mac = m,
                    Err(e) => {
                        staged = Err(e);
                        break;
                    }
                }
                let stored = StoredEvent { event, mac };
                self.store.put_raw(
                    &mut request.batch,
                    Cf::Audit,
                    &seq.to_be_bytes(),
                    &encode(AUDIT_FORMAT, &stored),
                );
                seqs.push(seq);
                seq += 1;
            }
            if !seqs.is_empty() {
                let last = seq - 1;
                let head = Head {
                    seq: last,
                    mac,
                    tag: head_tag(key, last, &mac),
                };
                self.store.put_raw(
                    &mut request.batch,
                    Cf::Meta,
                    HEAD,
                    &encode(AUDIT_FORMAT, &head),
                );
            }
            let written =
                staged.and_then(|()| self.store.write_raw(request.batch, sync && i + 1 == count));
            match written {
                Ok(()) => {
                    next_seq = seq;
                    last_mac = mac;
                    outcomes.push((request.ticket, Ok(seqs)));
                }
                Err(e) => {
                    let message = e.to_string();
                    failed = Some(message.clone());
                    outcomes.push((request.ticket, Err(message)));
                }
            }
        }
        (outcomes, next_seq, last_mac)
    }

    pub(crate) fn verify_audit(&self) -> Result<AuditVerification, Error> {
        let key = &self.index.audit_key;
        let mut expected = 0u64;
        let mut prev = [0u8; 32];
        let mut bad: Option<(u64, String)> = None;
        self.store.scan_prefix(Cf::Audit, &[], |k, v| {
            let at: [u8; 8] = k.try_into().map_err(|_| Error::Integrity)?;
            let seq = u64::from_be_bytes(at);
            let problem = match decode::<StoredEvent>(AUDIT_FORMAT, v) {
                Err(_) => Some("undecodable"),
                Ok(stored) if stored.event.seq != seq => Some("stored under another position"),
                Ok(_) if seq != expected => Some(if seq > expected {
                    "missing (removed)"
                } else {
                    "out of order"
                }),
                Ok(stored) => match chain_mac(key, &prev, &stored.event) {
                    Ok(mac) if bool::from(mac.ct_eq(&stored.mac)) => {
                        prev = mac;
                        None
                    }
                    _ => Some("altered, inserted or reordered"),
                },
            };
            if let Some(problem) = problem {
                bad = Some((expected.min(seq), problem.to_owned()));
                return Ok(false);
            }
            expected += 1;
            Ok(true)
        })?;
        if let Some((seq, problem)) = bad {
            return Ok(AuditVerification {
                ok: false,
                events: seq,
                first_bad: Some(seq),
                problem: Some(format!("event {seq}: {problem}")),
            });
        }
        // The checkpoint must name the last event: otherwise the tail was cut off.
        let head = match self.store.get(Cf::Meta, HEAD)? {
            None if expected == 0 => None,
            None => {
                return Ok(AuditVerification {
                    ok: false,
                    events: expected,
                    first_bad: Some(0),
                    problem: Some("the checkpoint is missing".into()),
                });
            }
            Some(bytes) => Some(decode::<Head>(AUDIT_FORMAT, &bytes)?),
        };
        if let Some(head) = head {
            let genuine = bool::from(head_tag(key, head.seq, &head.mac).ct_eq(&head.tag));
            if !genuine || head.seq + 1 != expected || !bool::from(head.mac.ct_eq(&prev)) {
                let first = expected.min(head.seq + 1);
                return Ok(AuditVerification {
                    ok: false,
                    events: expected,
                    first_bad: Some(first),
                    problem: Some(format!(
                        "the trail ends at {expected} events but the checkpoint names event {} (truncated or altered)",
                        head.seq
                    )),
                });
            }
        }
        Ok(AuditVerification {
            ok: true,
            events: expected,
            first_bad: None,
            problem: None,
        })
    }

    pub(crate) fn audit_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, Error> {
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
        let mut out = Vec::new();
        inner.store.scan_prefix(Cf::Audit, &[], |_, v| {
            let stored: StoredEvent = decode(AUDIT_FORMAT, v)?;
            if stored.event.subject == Some(dek.audit_ref) {
                out.push(stored.event);
            }
            Ok(true)
        })?;
        Ok(out)
    }
}
