//! The write path: every audited write (tokenize, rectify, delete, erase, consent,
//! pruning, and the staged read events) is committed here, by the journal's own
//! group commit.
//!
//! Callers enqueue their batch with its audit events; one of them leads a group: it
//! gives the events their sequence numbers and chained MACs, writes every caller's
//! batch of the group as one engine batch with one checkpoint, and syncs once for
//! the group. The chain order is therefore the commit order, an operation and its
//! events are one atomic write, and a crash leaves a prefix of the trail. Staged
//! read events go first in the next group, with the mark of the last one taken.
//!
//! On a shared store (PostgreSQL, replicas) the chain's end is not this process's
//! to keep: each group reads the checkpoint under a row lock in its own
//! transaction ([`Store::write_locked`]), numbers its events after it and writes
//! the new one, so replicas' groups take turns and the trail stays one chain. A
//! caller's batch whose expectations no longer hold is left out of the group, with
//! no events numbered for it, and gets [`Error::Conflict`]. Read events are not
//! staged there (a replica's files would be lost with its machine): they go
//! through the journal like any other, committed without a synchronous flush
//! unless [`VaultOptions::sync_read_events`](crate::VaultOptions::sync_read_events)
//! says otherwise.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};

use crate::codec::encode;
use crate::crypto::Key;
use crate::durable::SyncState;
use crate::error::{Error, StorageError};
use crate::events::{
    AUDIT_FORMAT, AuditEvent, HEAD, HEAD_FORMAT, Head, ReadEvent, StoredEvent, chain_mac, head_tag,
    index_key, parse_head, read_head,
};
use crate::events::{STAGED, mark_value, read_mark};
use crate::options::{Clock, Durability, VaultOptions};
use crate::staged::{Staged, Staging};
use crate::store::{Batch, Cf, RawBatch, Storage, Store, WriteSet};

/// The ticket of the staged read events a leader puts first in its group (callers'
/// tickets count up from 0 and never reach it).
const STAGED_TICKET: u64 = u64::MAX;

/// Why a caller's write failed.
#[derive(Clone)]
enum Failure {
    /// Its expectations did not hold (a shared store): run the operation again.
    Conflict,
    Storage(String),
}

impl Failure {
    fn of(e: &Error) -> Failure {
        match e {
            Error::Conflict => Failure::Conflict,
            // Its own message, not "storage error: …" twice once wrapped again.
            Error::Storage(cause) => Failure::Storage(cause.to_string()),
            other => Failure::Storage(other.to_string()),
        }
    }

    fn into_error(self) -> Error {
        match self {
            Failure::Conflict => Error::Conflict,
            Failure::Storage(message) => Error::Storage(StorageError(message)),
        }
    }
}

/// Per ticket, the sequence numbers or the failure.
type Outcomes = Vec<(u64, Result<Vec<u64>, Failure>)>;
/// The outcomes; then the next sequence number and the last MAC after the group.
type GroupOutcome = (Outcomes, u64, [u8; 32]);

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
    done: HashMap<u64, Result<Vec<u64>, Failure>>,
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
            state.done.insert(
                ticket,
                Err(Failure::Storage("the journal's leader panicked".to_owned())),
            );
        }
        state.leader = false;
        let next = state.queue.front().map(|r| r.caller.clone());
        drop(state);
        for caller in self.callers.iter().chain(&next) {
            caller.unpark();
        }
    }
}

/// The audit journal: orders and commits audited writes. It owns what the write
/// path needs, so that it is a component of the vault and not a view of all of it.
pub(crate) struct Journal {
    state: Mutex<State>,
    /// Set when the checkpoint did not authenticate at open: nothing is appended to a
    /// trail whose end is unknown (verification reports it).
    pub(crate) damaged: Option<&'static str>,
    /// Held by pruning and verification, so a verification sees no half-pruned trail.
    prune: Mutex<()>,
    /// The vault's store, shared with the rest of the vault.
    store: Arc<Store>,
    /// Chains and authenticates the audit trail (the one copy: see
    /// [`Keyring::audit_key`](crate::keys::Keyring::audit_key)).
    audit_key: Key,
    /// Read events on their way into the audit trail (none on a shared store).
    staging: Option<Staging>,
    /// Whether other replicas write the store too (see the module's documentation).
    shared: bool,
    /// Set when staged read events were committed without syncing the WAL.
    unsynced_events: AtomicBool,
    /// Unsynced writes awaiting the syncer (see [`crate::durable`]).
    pub(crate) wal_sync: Arc<SyncState>,
    /// Times the events, as the vault's clock says.
    clock: Arc<dyn Clock>,
    /// Whether writes are synced ([`Durability::Synced`]).
    synced: bool,
    /// [`VaultOptions::sync_read_events`](crate::VaultOptions::sync_read_events).
    sync_read_events: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").finish_non_exhaustive()
    }
}

impl Journal {
    /// Reads the checkpoint, then opens the staging files in `dir` (which need its
    /// mark of the staged events). A checkpoint that does not authenticate leaves the
    /// journal refusing writes, so the damage is reported (by verification) and not
    /// overwritten by the next event's checkpoint.
    pub(crate) fn open(
        store: Arc<Store>,
        dir: Option<&Path>,
        audit_key: Key,
        opts: &VaultOptions,
    ) -> Result<Journal, Error> {
        let key = &audit_key;
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
        // On a shared store other replicas append between any two reads here: the
        // head is checked only for authenticity (each group reads it under its lock).
        let head = if store.shared() {
            match store.get(Cf::Meta, HEAD)? {
                None => Ok(None),
                Some(bytes) => parse_head(key, &bytes)
                    .map(Some)
                    .ok_or("the checkpoint was altered"),
            }
        } else {
            read_head(&store, key)?
        };
        let last = if store.shared() {
            head.as_ref().ok().and_then(|h| h.as_ref().map(|h| h.seq))
        } else {
            last
        };
        let mut damaged = match (head, last) {
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
            match read_mark(&store, key)? {
                Ok(seq) => staged_done = seq,
                Err(problem) => damaged = damaged.or(Some(problem)),
            }
        }
        state.staged_done = staged_done;
        let staging = match dir {
            Some(dir) if !store.shared() => Some(Staging::open(dir, staged_done, key)?),
            _ => None,
        };
        Ok(Journal {
            shared: store.shared(),
            state: Mutex::new(state),
            damaged,
            prune: Mutex::new(()),
            store,
            audit_key,
            staging,
            unsynced_events: AtomicBool::new(false),
            wal_sync: Arc::default(),
            clock: opts.clock.clone(),
            synced: opts.durability == Durability::Synced,
            sync_read_events: opts.sync_read_events,
        })
    }

    /// The key that chains and authenticates the audit trail, for the queries over
    /// it (verification and pruning, in `audit`).
    pub(crate) fn audit_key(&self) -> &Key {
        &self.audit_key
    }

    fn now(&self) -> u64 {
        self.clock.now_millis()
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

    /// Held by pruning and verification (in `audit`), so a verification sees no
    /// half-pruned trail.
    pub(crate) fn prune_lock(&self) -> MutexGuard<'_, ()> {
        self.prune.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether writes are synced: as the vault's durability says. (Erasures and
    /// consent changes are synced whatever it says.)
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    /// Whether a read may wait for the disk or for a commit of the staged events
    /// (see [`Vault::reads_may_wait`](crate::Vault::reads_may_wait)).
    pub(crate) fn reads_may_wait(&self) -> bool {
        (self.synced && self.sync_read_events) || self.staging.as_ref().is_none_or(Staging::filling)
    }

    /// Whether read events about `subject` are staged and not in the trail yet.
    pub(crate) fn holds_about(&self, subject: &[u8; 16]) -> bool {
        self.staging
            .as_ref()
            .is_some_and(|s| s.holds_about(subject))
    }

    /// Lets the staging files shrink back (the worker's chore).
    pub(crate) fn trim_staging(&self) {
        if let Some(staging) = &self.staging {
            staging.trim();
        }
    }

    /// Records the audit events of a read before its value is returned: staged (copied
    /// into a staging file, committed to the trail by the worker within 100 ms, see
    /// [`crate::staged`]), or committed and synced at once when
    /// [`VaultOptions::sync_read_events`](crate::VaultOptions::sync_read_events) is on.
    ///
    /// `Ok(Some(error))`: the events are staged, so the read stands, but the full
    /// staging file they filled could not be committed; the caller reports it (the
    /// journal knows no background error), and the worker retries.
    pub(crate) fn commit_read_events(
        &self,
        events: &[ReadEvent<'_>],
    ) -> Result<Option<Error>, Error> {
        if self.damaged.is_some() {
            return Err(Error::AuditDamaged);
        }
        let staging = match &self.staging {
            Some(staging) if !(self.synced && self.sync_read_events) => staging,
            _ => {
                let sync = self.synced && self.sync_read_events;
                let events = events.iter().map(|e| e.to_event()).collect();
                self.commit_audited(self.store.batch(), events, sync)?;
                if !sync {
                    self.unsynced_events.store(true, Ordering::Release);
                }
                return Ok(None);
            }
        };
        if staging.backlogged() {
            // Commits have been failing: refuse reads rather than pile up events.
            self.flush_staged()?;
        }
        if staging.append(&self.audit_key, self.now(), events)? {
            // The staging file is full: commit it now rather than let it grow. The
            // events are staged, so the read stands even if this fails (the worker
            // retries, and the caller reports it).
            return Ok(self.flush_staged().err());
        }
        Ok(None)
    }

    /// Commits the staged read events to the trail (unsynced: the worker syncs), or
    /// waits for the commit that took them. A damaged trail takes no events: with
    /// some staged (a killed process's, found at open) this is `AuditDamaged`, so
    /// that nobody reads the trail as complete.
    pub(crate) fn flush_staged(&self) -> Result<(), Error> {
        if self.staging.as_ref().is_none_or(Staging::settled) {
            return Ok(());
        }
        if self.damaged.is_some() {
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
        batch.put(Cf::Meta, STAGED, &mark_value(&self.audit_key, last));
        Some(Request {
            ticket: STAGED_TICKET,
            batch: Store::detach(batch),
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
                return result.map_err(Failure::into_error);
            }
            if !state.leader {
                state = self.lead(state);
                continue;
            }
            drop(state);
            thread::park();
            state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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
            Some(result) => result.map(Some).map_err(Failure::into_error),
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
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.leader || !state.queue.is_empty()
    }

    /// Queues a request; the state, still locked, and the request's ticket.
    fn enqueue(
        &self,
        batch: Batch<'_>,
        mut events: Vec<AuditEvent>,
        sync: bool,
    ) -> Result<(MutexGuard<'_, State>, u64), Error> {
        if self.damaged.is_some() {
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
        let batch = Store::detach(batch);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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
        state.leader = true;
        let mut group: Vec<Request> = state.queue.drain(..).collect();
        let callers: Vec<Thread> = group.iter().map(|r| r.caller.clone()).collect();
        let abandoned = Abandoned {
            journal: self,
            tickets: group.iter().map(|r| r.ticket).collect(),
            callers: callers.clone(),
            armed: true,
        };
        let (next_seq, last_mac) = (state.next_seq, state.last_mac);
        let staged_done = state.staged_done;
        drop(state);
        let synced = group.iter().any(|r| r.sync);
        let staged = self.staging.as_ref().map(Staging::take).unwrap_or_default();
        let staged_mark = staged.last().map_or(staged_done, |&(seq, _)| seq);
        if let Some(request) = self.staged_request(&staged) {
            group.insert(0, request);
        }
        let (mut outcomes, next_seq, last_mac) = if self.shared {
            (self.write_group_shared(group), next_seq, last_mac)
        } else {
            self.write_group(group, next_seq, last_mac, (staged_done, staged_mark))
        };
        let staged_committed = match outcomes.iter().position(|(t, _)| *t == STAGED_TICKET) {
            Some(at) => {
                let committed = outcomes.remove(at).1.is_ok();
                if let Some(staging) = &self.staging {
                    staging.done(staged, committed);
                }
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
        state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
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
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes a group as one batch (the callers' batches in order, each with its
    /// events, and the checkpoint once), synced if any caller asked for it: one WAL
    /// write and at most one sync per group. All or nothing: a failed write fails
    /// every caller of the group and leaves the chain where it was. The group may
    /// still be in the log (its sync failed, say), so the store then refuses every
    /// later write: a next group would number its events as this one's.
    fn write_group(
        &self,
        group: Vec<Request>,
        next_seq: u64,
        last_mac: [u8; 32],
        staged: (u64, u64),
    ) -> GroupOutcome {
        let sync = group.iter().any(|r| r.sync);
        let (mut outcomes, batches, seq, mac) = self.chain(group, next_seq, last_mac, staged);
        match self.store.write_detached(Store::join(batches), sync) {
            Ok(()) => (outcomes, seq, mac),
            Err(e) => {
                fail_all(&mut outcomes, &e);
                (outcomes, next_seq, last_mac)
            }
        }
    }

    /// [`write_group`](Self::write_group) on a shared store: the chain's end is read
    /// under a row lock in the group's own transaction, and callers whose
    /// expectations no longer hold are left out with [`Failure::Conflict`].
    fn write_group_shared(&self, mut group: Vec<Request>) -> Outcomes {
        let sync = group.iter().any(|r| r.sync);
        let batches: Vec<RawBatch> = group
            .iter_mut()
            .map(|r| std::mem::take(&mut r.batch))
            .collect();
        // Every caller gets an outcome, whatever fails (the connection, the first
        // round trip, the head): one left without would wait forever, holding its
        // subjects' locks.
        let tickets: Vec<u64> = group.iter().map(|r| r.ticket).collect();
        let mut outcomes = Vec::with_capacity(group.len());
        let result = self
            .store
            .write_locked(Cf::Meta, HEAD, batches, sync, |head, checked| {
                let (next_seq, last_mac, staged) = match &head {
                    None => (0, [0; 32], 0),
                    Some(bytes) => {
                        let head = parse_head(&self.audit_key, bytes).ok_or(Error::AuditDamaged)?;
                        (head.seq + 1, head.mac, head.staged)
                    }
                };
                let mut kept = Vec::with_capacity(group.len());
                for (mut request, (batch, holds)) in group.into_iter().zip(checked) {
                    if holds {
                        request.batch = batch;
                        kept.push(request);
                    } else {
                        outcomes.push((request.ticket, Err(Failure::Conflict)));
                    }
                }
                // The mark of staged read events stays as it is (a vault migrated
                // from a directory has one; replicas stage nothing).
                let (chained, batches, _, _) =
                    self.chain(kept, next_seq, last_mac, (staged, staged));
                outcomes.extend(chained);
                let mut joined = Store::join(batches);
                if head.is_none() {
                    // The trail's first events: no head row to lock, so its insert
                    // fails if another replica's group got there first.
                    Store::expect_detached(&mut joined, Cf::Meta, HEAD, None);
                }
                Ok(joined)
            });
        if let Err(e) = result {
            fail_all(&mut outcomes, &e);
            for ticket in tickets {
                if !outcomes.iter().any(|(t, _)| *t == ticket) {
                    outcomes.push((ticket, Err(Failure::of(&e))));
                }
            }
        }
        outcomes
    }

    /// Numbers and chains the group's events after `next_seq` and `last_mac`, into
    /// the callers' batches (the checkpoint and the subjects' index entries into the
    /// last); the outcomes, the batches to write, and the chain's end after them.
    fn chain(
        &self,
        group: Vec<Request>,
        next_seq: u64,
        last_mac: [u8; 32],
        (staged_before, staged_after): (u64, u64),
    ) -> (Outcomes, Vec<RawBatch>, u64, [u8; 32]) {
        let key = &self.audit_key;
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
                self.store.put_detached(
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
                    outcomes.push((request.ticket, Err(Failure::of(&e))));
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
                    self.store.put_detached(last_batch, Cf::AuditIndex, k, b"");
                }
                self.store
                    .put_detached(last_batch, Cf::Meta, HEAD, &encode(HEAD_FORMAT, &head));
            }
        }
        (outcomes, batches, seq, mac)
    }
}

/// Fails every caller of a group whose write failed.
fn fail_all(outcomes: &mut Outcomes, e: &Error) {
    let failure = Failure::of(e);
    for (_, outcome) in outcomes {
        if outcome.is_ok() {
            *outcome = Err(failure.clone());
        }
    }
}
