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
//!
//! Retention: events older than the configured period are pruned from the start of
//! the trail; a base checkpoint (the first kept sequence number and the MAC before
//! it, authenticated) lets the rest verify, and the pruning is itself an event.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::crypto::{Key, domain};
use crate::error::{Error, StorageError};

use crate::retention::RETENTION_ACTOR;
use crate::staged::{self, STAGED, Staged};
use crate::store::{Batch, Cf, RawBatch, Store, concat_batches};
use crate::vault::{Inner, Vault};

const AUDIT_FORMAT: u8 = 1;
const HEAD: &[u8] = b"audit/head";
const BASE: &[u8] = b"audit/base";
/// Events pruned per batch (and per `AuditPruned` event).
const PRUNE_CHUNK: usize = 10_000;
/// The ticket of the staged read events a leader puts first in its group (callers'
/// tickets count up from 0 and never reach it).
const STAGED_TICKET: u64 = u64::MAX;

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
struct StoredEvent {
    event: AuditEvent,
    mac: [u8; 32],
}

/// The checkpoint: the last event's sequence number and MAC.
#[derive(Serialize, Deserialize)]
struct Head {
    seq: u64,
    mac: [u8; 32],
    /// The mark of the staged read events in the trail when it was written, so that a
    /// mark deleted or replayed (which would have staged events committed twice at
    /// the next open) does not match.
    staged: u64,
    tag: [u8; 32],
}

/// The checkpoint as written before read events were staged (format 1).
#[derive(Deserialize)]
struct HeadV1 {
    seq: u64,
    mac: [u8; 32],
    tag: [u8; 32],
}

const HEAD_FORMAT: u8 = 2;

/// Where the trail starts once events were pruned: the first kept sequence number
/// and the MAC of the event before it.
#[derive(Serialize, Deserialize)]
struct Base {
    first: u64,
    mac: [u8; 32],
    tag: [u8; 32],
}

fn chain_mac(key: &Key, prev: &[u8; 32], event: &AuditEvent) -> Result<[u8; 32], Error> {
    let body = postcard::to_allocvec(event).map_err(|_| Error::Integrity)?;
    Ok(key.mac_parts(&[domain::AUDIT_EVENT, prev, &body]))
}

fn head_tag(key: &Key, seq: u64, mac: &[u8; 32], staged: u64) -> [u8; 32] {
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

fn index_key(subject: &[u8; 16], seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(subject);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The stored checkpoint, if any, checked against the mark of the staged read events
/// (a format-1 checkpoint names no mark); `Err` with what is wrong when it does not
/// authenticate or match.
fn read_head(store: &Store, key: &Key) -> Result<Result<Option<Head>, &'static str>, Error> {
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

/// Per ticket, the sequence numbers or the error; then the next sequence number and
/// the last MAC after the group.
type GroupOutcome = (Vec<(u64, Result<Vec<u64>, String>)>, u64, [u8; 32]);

struct Request {
    ticket: u64,
    batch: RawBatch,
    events: Vec<AuditEvent>,
    sync: bool,
    /// The caller, parked until its group is written or it is to lead the next one.
    caller: Thread,
}

#[derive(Default)]
struct State {
    /// The next sequence number and the last event's MAC.
    next_seq: u64,
    last_mac: [u8; 32],
    /// The mark of the staged read events in the trail.
    staged_done: u64,
    queue: VecDeque<Request>,
    leader: bool,
    next_ticket: u64,
    done: HashMap<u64, Result<Vec<u64>, String>>,
}

/// A group whose leader panicked: its callers get an error instead of waiting
/// forever, and the next caller in the queue leads. Defused when the group ends
/// normally.
struct Abandoned<'a> {
    journal: &'a Journal,
    tickets: Vec<u64>,
    callers: Vec<Thread>,
    armed: bool,
}

impl Abandoned<'_> {
    fn defuse(mut self) {
        self.armed = false;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self
            .journal
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for &ticket in &self.tickets {
            state
                .done
                .insert(ticket, Err("the journal's leader panicked".to_owned()));
        }
        state.leader = false;
        let next = state.queue.front().map(|r| r.caller.clone());
        drop(state);
        for caller in self.callers.iter().chain(&next) {
            caller.unpark();
        }
    }
}

/// The audit journal: orders and commits audited writes.
pub(crate) struct Journal {
    state: Mutex<State>,
    /// Set when the checkpoint did not authenticate at open: nothing is appended to a
    /// trail whose end is unknown (verification reports it).
    pub(crate) damaged: Option<&'static str>,
    /// Held by pruning and verification, so a verification sees no half-pruned trail.
    prune: Mutex<()>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Reads the checkpoint. One that does not authenticate leaves the journal
    /// refusing writes, so the damage is reported (by verification) and not
    /// overwritten by the next event's checkpoint.
    pub(crate) fn open(store: &Store, key: &Key) -> Result<Journal, Error> {
        let mut state = State::default();
        // The checkpoint must name the last stored event: a missing or older one
        // would have the next event overwrite the trail.
        let last = match store.last_key(Cf::Audit)? {
            Some(k) => Some(u64::from_be_bytes(
                k.as_slice().try_into().map_err(|_| Error::Integrity)?,
            )),
            None => None,
        };
        let mut staged_done = 0;
        let mut damaged = match (read_head(store, key)?, last) {
            (Err(problem), _) => Some(problem),
            (Ok(None), None) => None,
            (Ok(None), Some(_)) => Some("the checkpoint is missing"),
            (Ok(Some(head)), last) => {
                if last.is_some_and(|l| l != head.seq) {
                    Some("the checkpoint does not name the last event")
                } else {
                    state.next_seq = head.seq + 1;
                    state.last_mac = head.mac;
                    staged_done = head.staged;
                    None
                }
            }
        };
        if staged_done == 0 {
            // No usable checkpoint: the mark alone (none on a new vault). A damaged
            // trail still needs it, to tell which staged events it has taken.
            match staged::read_mark(store, key)? {
                Ok(seq) => staged_done = seq,
                Err(problem) => damaged = damaged.or(Some(problem)),
            }
        }
        state.staged_done = staged_done;
        Ok(Journal {
            state: Mutex::new(state),
            damaged,
            prune: Mutex::new(()),
        })
    }

    /// The mark of the staged read events in the trail: the last staging number it
    /// took.
    pub(crate) fn staged_done(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .staged_done
    }

    /// Pretends a group is being written (or ends the pretence), for tests of
    /// callers that must not wait for one.
    #[cfg(test)]
    pub(crate) fn set_leader(&self, leader: bool) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .leader = leader;
    }

    fn prune_lock(&self) -> MutexGuard<'_, ()> {
        self.prune.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// Whether writes are synced: as the vault's durability says. (Erasures and
    /// consent changes are synced whatever it says.)
    pub(crate) fn synced(&self) -> bool {
        self.opts.durability == crate::options::Durability::Synced
    }

    /// Records the audit events of a read before its value is returned: staged (copied
    /// into a staging file, committed to the trail by the worker within 100 ms, see
    /// [`crate::staged`]), or committed and synced at once when
    /// [`VaultOptions::sync_read_events`](crate::VaultOptions::sync_read_events) is on.
    pub(crate) fn commit_read_events(&self, events: &[ReadEvent<'_>]) -> Result<(), Error> {
        if self.journal.damaged.is_some() {
            return Err(Error::AuditDamaged);
        }
        if self.synced() && self.opts.sync_read_events {
            let events = events.iter().map(|e| e.to_event()).collect();
            self.commit_audited(self.store.batch(), events, true)?;
            return Ok(());
        }
        if self.staging.backlogged() {
            // Commits have been failing: refuse reads rather than pile up events.
            self.flush_staged()?;
        }
        if self
            .staging
            .append(&self.index.audit_key, self.now(), events)?
        {
            // The staging file is full: commit it now rather than let it grow. The
            // events are staged, so the read stands even if this fails (the worker
            // retries and reports it).
            if let Err(e) = self.flush_staged() {
                self.set_background_error(Some(e));
            }
        }
        Ok(())
    }

    /// Commits the staged read events to the trail (unsynced: the worker syncs), or
    /// waits for the commit that took them. A damaged trail takes no events: with
    /// some staged (a killed process's, found at open) this is `AuditDamaged`, so
    /// that nobody reads the trail as complete.
    pub(crate) fn flush_staged(&self) -> Result<(), Error> {
        if self.staging.settled() {
            return Ok(());
        }
        if self.journal.damaged.is_some() {
            return Err(Error::AuditDamaged);
        }
        // The journal's leader takes the staged events into its group.
        self.commit_audited(self.store.batch(), Vec::new(), false)
            .map(drop)
    }

    /// Syncs the WAL if staged read events were committed without a sync since the
    /// last call.
    pub(crate) fn sync_read_events(&self) -> Result<(), Error> {
        if self.unsynced_events.swap(false, Ordering::AcqRel)
            && let Err(e) = self.store.sync_wal()
        {
            self.unsynced_events.store(true, Ordering::Release);
            return Err(e);
        }
        Ok(())
    }

    /// The staged read events as the first request of a group: they happened before
    /// the group's callers came (or alongside), and go into the trail in that order,
    /// with the last staging number they carry, so that none is committed twice.
    fn staged_request(&self, staged: &[Staged]) -> Option<Request> {
        let &(last, _) = staged.last()?;
        let mut batch = self.store.batch();
        batch.put(
            Cf::Meta,
            STAGED,
            &staged::mark_value(&self.index.audit_key, last),
        );
        Some(Request {
            ticket: STAGED_TICKET,
            batch: batch.into_raw(),
            events: staged.iter().map(|(_, e)| e.clone()).collect(),
            sync: false,
            caller: thread::current(),
        })
    }

    /// Commits `batch` together with `events` (sequence numbers and times filled in
    /// here), after every earlier audited write; returns the events' sequence numbers.
    pub(crate) fn commit_audited(
        &self,
        batch: Batch<'_>,
        events: Vec<AuditEvent>,
        sync: bool,
    ) -> Result<Vec<u64>, Error> {
        let (mut state, ticket) = self.enqueue(batch, events, sync)?;
        // Each caller is woken only when its own group is written, or when it is the
        // first in the queue and the leader is done (a `notify_all` woke every
        // waiting caller at every group: with 64 callers, most of the CPU of a
        // durable write). Parking tolerates an unpark that comes first.
        loop {
            if let Some(result) = state.done.remove(&ticket) {
                return result.map_err(|e| Error::Storage(StorageError(e)));
            }
            if !state.leader {
                state = self.lead(state);
                continue;
            }
            drop(state);
            thread::park();
            state = self
                .journal
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// [`commit_audited`](Self::commit_audited) without a sync, if that means no
    /// waiting: nobody else is writing or waiting to, so this caller writes its own
    /// group at once. `None` (nothing written) when it would have to wait.
    pub(crate) fn commit_audited_if_free(
        &self,
        batch: Batch<'_>,
        events: Vec<AuditEvent>,
    ) -> Result<Option<Vec<u64>>, Error> {
        let (state, ticket) = self.enqueue(batch, events, false)?;
        if state.leader || state.queue.len() > 1 || self.store.syncing() {
            // Someone came first after all (or a synced write outside the journal
            // began): take the request back out.
            let mut state = state;
            state.queue.retain(|r| r.ticket != ticket);
            return Ok(None);
        }
        let mut state = self.lead(state);
        match state.done.remove(&ticket) {
            Some(result) => result
                .map(Some)
                .map_err(|e| Error::Storage(StorageError(e))),
            None => Err(Error::Integrity),
        }
    }

    /// Whether a commit would have to wait now: a group is being written, callers
    /// are queued for the next one, or a synced write outside the journal (a purge,
    /// a rotation batch) is under way, whose sync a write now could wait for.
    pub(crate) fn writes_in_the_way(&self) -> bool {
        if self.store.syncing() {
            return true;
        }
        let state = self
            .journal
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.leader || !state.queue.is_empty()
    }

    /// Queues a request; the state, still locked, and the request's ticket.
    fn enqueue(
        &self,
        batch: Batch<'_>,
        mut events: Vec<AuditEvent>,
        sync: bool,
    ) -> Result<(MutexGuard<'_, State>, u64), Error> {
        if self.journal.damaged.is_some() {
            return Err(Error::AuditDamaged);
        }
        // After a failed WAL sync, a later sync would not prove the earlier writes
        // reached the disk: nothing more is acknowledged.
        self.wal_sync.healthy()?;
        let now = self.now();
        // Staged read events keep the time of the read.
        for e in events.iter_mut().filter(|e| e.at == 0) {
            e.at = now;
        }
        let batch = batch.into_raw();
        let mut state = self
            .journal
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.queue.push_back(Request {
            ticket,
            batch,
            events,
            sync,
            caller: thread::current(),
        });
        Ok((state, ticket))
    }

    /// Leads one group: everything queued (after the staged read events), written
    /// as one batch; every caller in it is woken, and the first one still queued, to
    /// lead the next. Called with the state locked and no leader; returns it locked.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let journal = &self.journal;
        state.leader = true;
        let mut group: Vec<Request> = state.queue.drain(..).collect();
        let callers: Vec<Thread> = group.iter().map(|r| r.caller.clone()).collect();
        let abandoned = Abandoned {
            journal,
            tickets: group.iter().map(|r| r.ticket).collect(),
            callers: callers.clone(),
            armed: true,
        };
        let (next_seq, last_mac) = (state.next_seq, state.last_mac);
        let staged_done = state.staged_done;
        drop(state);
        let synced = group.iter().any(|r| r.sync);
        let staged = self.staging.take();
        let staged_mark = staged.last().map_or(staged_done, |&(seq, _)| seq);
        if let Some(request) = self.staged_request(&staged) {
            group.insert(0, request);
        }
        let (mut outcomes, next_seq, last_mac) =
            self.write_group(group, next_seq, last_mac, (staged_done, staged_mark));
        let staged_committed = match outcomes.iter().position(|(t, _)| *t == STAGED_TICKET) {
            Some(at) => {
                let committed = outcomes.remove(at).1.is_ok();
                self.staging.done(staged, committed);
                committed
            }
            None => false,
        };
        if staged_committed && !synced {
            self.unsynced_events.store(true, Ordering::Release);
        }
        // The group is written (or failed): past here the leader only updates the
        // state, under its lock, which the guard would need.
        abandoned.defuse();
        state = journal.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.next_seq = next_seq;
        state.last_mac = last_mac;
        if staged_committed {
            state.staged_done = staged_mark;
        }
        state.done.extend(outcomes);
        state.leader = false;
        let next_leader = state.queue.front().map(|r| r.caller.clone());
        drop(state);
        for caller in callers.iter().chain(&next_leader) {
            if caller.id() != thread::current().id() {
                caller.unpark();
            }
        }
        journal.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a group as one batch (the callers' batches in order, each with its
    /// events, and the checkpoint once), synced if any caller asked for it: one WAL
    /// write and at most one sync per group. All or nothing: a failed write fails
    /// every caller of the group and leaves the chain where it was.
    fn write_group(
        &self,
        group: Vec<Request>,
        next_seq: u64,
        last_mac: [u8; 32],
        (staged_before, staged_after): (u64, u64),
    ) -> GroupOutcome {
        let sync = group.iter().any(|r| r.sync);
        let key = &self.index.audit_key;
        let (mut seq, mut mac) = (next_seq, last_mac);
        let mut outcomes = Vec::with_capacity(group.len());
        let mut batches = Vec::with_capacity(group.len() + 1);
        // The subjects' index entries of the whole group, written in key order: the
        // memtable then finds each one's place from the last one's (a group of
        // staged read events holds thousands, at scattered positions).
        let mut index_keys = Vec::new();
        for mut request in group {
            // Stage this caller's events on copies of the chain state, so a caller
            // whose event cannot be encoded leaves no gap.
            let (mut s, mut m) = (seq, mac);
            let mut seqs = Vec::with_capacity(request.events.len());
            let indexed_before = index_keys.len();
            let mut staged = Ok(());
            for mut event in request.events {
                event.seq = s;
                match chain_mac(key, &m, &event) {
                    Ok(next) => m = next,
                    Err(e) => {
                        staged = Err(e);
                        break;
                    }
                }
                if let Some(subject) = &event.subject {
                    index_keys.push(index_key(subject, s));
                }
                let stored = StoredEvent { event, mac: m };
                self.store.put_raw(
                    &mut request.batch,
                    Cf::Audit,
                    &s.to_be_bytes(),
                    &encode(AUDIT_FORMAT, &stored),
                );
                seqs.push(s);
                s += 1;
            }
            match staged {
                Ok(()) => {
                    (seq, mac) = (s, m);
                    batches.push(request.batch);
                    outcomes.push((request.ticket, Ok(seqs)));
                }
                Err(e) => {
                    // Its events are not written: nor are their index entries.
                    index_keys.truncate(indexed_before);
                    outcomes.push((request.ticket, Err(e.to_string())));
                }
            }
        }
        if seq > next_seq {
            let last = seq - 1;
            // The mark moves only if the staged events are in (their request, and
            // the mark in its batch, are dropped if they could not be encoded).
            let staged_in = outcomes
                .iter()
                .any(|(t, r)| *t == STAGED_TICKET && r.is_ok());
            let staged = if staged_in {
                staged_after
            } else {
                staged_before
            };
            let head = Head {
                seq: last,
                mac,
                staged,
                tag: head_tag(key, last, &mac, staged),
            };
            // Events were staged, so there is a batch to carry the checkpoint and
            // their index entries.
            if let Some(last_batch) = batches.last_mut() {
                index_keys.sort_unstable();
                for k in &index_keys {
                    self.store.put_raw(last_batch, Cf::AuditIndex, k, b"");
                }
                self.store
                    .put_raw(last_batch, Cf::Meta, HEAD, &encode(HEAD_FORMAT, &head));
            }
        }
        match self.store.write_raw(concat_batches(batches), sync) {
            Ok(()) => (outcomes, seq, mac),
            Err(e) => {
                let message = e.to_string();
                for (_, outcome) in &mut outcomes {
                    if outcome.is_ok() {
                        *outcome = Err(message.clone());
                    }
                }
                (outcomes, next_seq, last_mac)
            }
        }
    }

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
