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
//! crash leaves a prefix. The events, their chain and checkpoint are the model in
//! `events`; this module holds the queries over the trail: listing, verification
//! and pruning.
//!
//! Retention: events older than the configured period are pruned from the start of
//! the trail; a base checkpoint (the first kept sequence number and the MAC before
//! it, authenticated) lets the rest verify, and the pruning is itself an event.

use subtle::ConstantTimeEq;

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::events::{
    AUDIT_FORMAT, AuditAction, AuditEvent, AuditOutcome, BASE, Base, RETENTION_ACTOR, StoredEvent,
    base_tag, chain_mac, index_key, read_base, read_head,
};

use crate::store::{Cf, Storage, WriteSet};
use crate::vault::{Inner, Vault};

/// Events pruned per batch (and per `AuditPruned` event).
const PRUNE_CHUNK: usize = 10_000;

/// The result of [`Vault::verify_audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AuditVerification {
    /// Whether the whole trail is intact (and holds the expected head, if one was
    /// given).
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// The first event found altered, missing, inserted or out of order, if any.
    pub first_bad: Option<u64>,
    /// What is wrong, if anything.
    pub problem: Option<String>,
    /// What became of the expected head given to
    /// [`Vault::verify_audit_against`]; `None` without one.
    pub anchor: Option<AnchorCheck>,
}

impl AuditVerification {
    fn bad(events: u64, first_bad: Option<u64>, problem: String) -> AuditVerification {
        AuditVerification {
            ok: false,
            events,
            first_bad,
            problem: Some(problem),
            anchor: None,
        }
    }
}

/// The end of the audit trail: the last event's sequence number and chained MAC.
/// Kept outside the vault (a log shipper, a ticket), it later shows whether the
/// trail still holds everything it held then. Names nobody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// The last event's sequence number.
    pub seq: u64,
    /// Its MAC, which chains every event before it.
    pub mac: [u8; 32],
}

/// Whether the trail still holds an expected head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AnchorCheck {
    /// The event is there with that MAC: nothing up to it was lost or rewritten.
    Contained,
    /// The trail ends before that event: its tail was cut off (and the checkpoint
    /// put back to match).
    Truncated,
    /// The trail holds that event with another MAC: it was replaced by another
    /// history (an older copy, continued).
    RolledBack,
    /// The event is older than the first one kept (pruned by the audit retention):
    /// it cannot be checked.
    Pruned,
}

impl Inner {
    pub(crate) fn verify_audit(&self) -> Result<AuditVerification, Error> {
        // Staged read events are part of the trail: commit them first, if the trail
        // takes them (a damaged one is reported below).
        if self.journal.damaged.is_none() {
            self.journal.flush_staged()?;
        }
        let key = self.journal.audit_key();
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
            anchor: None,
        })
    }

    pub(crate) fn audit_head(&self) -> Result<Option<AuditHead>, Error> {
        if self.journal.damaged.is_none() {
            self.journal.flush_staged()?;
        }
        match read_head(&self.store, self.journal.audit_key())? {
            Ok(head) => Ok(head.map(|h| AuditHead {
                seq: h.seq,
                mac: h.mac,
            })),
            Err(_) => Err(Error::AuditDamaged),
        }
    }

    pub(crate) fn verify_audit_against(
        &self,
        expected: &AuditHead,
    ) -> Result<AuditVerification, Error> {
        let mut check = self.verify_audit()?;
        if !check.ok {
            return Ok(check);
        }
        // The chain is intact, so every stored MAC is the one the vault wrote.
        let key = self.journal.audit_key();
        let (first, _) = read_base(&self.store, key)?.map_err(|_| Error::AuditDamaged)?;
        let anchor = if expected.seq < first {
            AnchorCheck::Pruned
        } else {
            match self.store.get(Cf::Audit, &expected.seq.to_be_bytes())? {
                None => AnchorCheck::Truncated,
                Some(bytes) => {
                    let stored: StoredEvent = decode(AUDIT_FORMAT, &bytes)?;
                    if bool::from(stored.mac.ct_eq(&expected.mac)) {
                        AnchorCheck::Contained
                    } else {
                        AnchorCheck::RolledBack
                    }
                }
            }
        };
        if matches!(anchor, AnchorCheck::Truncated | AnchorCheck::RolledBack) {
            check.ok = false;
            check.first_bad = Some(expected.seq);
            check.problem = Some(match anchor {
                AnchorCheck::Truncated => format!(
                    "the trail ends before event {}, the expected head (truncated)",
                    expected.seq
                ),
                _ => format!(
                    "event {} is not the expected head (the trail was rolled back or replaced)",
                    expected.seq
                ),
            });
        }
        check.anchor = Some(anchor);
        Ok(check)
    }

    pub(crate) fn audit_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, Error> {
        self.journal.flush_staged()?;
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
        Ok(self
            .events_about_page(subject, None, u64::MAX, usize::MAX)?
            .events)
    }

    /// Up to `limit` events about `subject` after sequence number `after` and
    /// before `until`, and where the next page starts if more follow.
    pub(crate) fn events_about_page(
        &self,
        subject: &[u8; 16],
        after: Option<u64>,
        until: u64,
        limit: usize,
    ) -> Result<EventsPage, Error> {
        // Staged events about the subject go into the trail first; other subjects'
        // are left to the next group (a damaged trail refuses either way).
        if self.journal.damaged.is_some() || self.journal.holds_about(subject) {
            self.journal.flush_staged()?;
        }
        let from = after.map(|seq| index_key(subject, seq));
        // The events' keys in the trail: their sequence numbers, big-endian.
        let mut keys: Vec<[u8; 8]> = Vec::new();
        let mut more = false;
        let start = from.as_ref().map_or(&subject[..], |k| &k[..]);
        self.store
            .scan_prefix_from(Cf::AuditIndex, subject, start, |k, _| {
                if from.is_some_and(|f| f[..] == *k) {
                    return Ok(true);
                }
                let seq: [u8; 8] = k[16..].try_into().map_err(|_| Error::Integrity)?;
                if u64::from_be_bytes(seq) >= until {
                    return Ok(false);
                }
                if keys.len() == limit {
                    more = true;
                    return Ok(false);
                }
                keys.push(seq);
                Ok(true)
            })?;
        // Where the next page starts: after the last event listed, even if it was
        // pruned between the two reads.
        let last = keys.last().map(|k| u64::from_be_bytes(*k));
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
        Ok(EventsPage {
            events: out,
            next: if more { Some(last.or(after)) } else { None },
        })
    }

    /// Prunes events older than the audit retention period at `now`, checking their
    /// chain first (damage is never pruned away); returns how many were pruned.
    pub(crate) fn prune_audit(&self) -> Result<u64, Error> {
        let Some(period) = self.opts.audit_retention else {
            return Ok(0);
        };
        self.journal.flush_staged()?;
        let key = self.journal.audit_key();
        let cutoff = self
            .now()
            .saturating_sub(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        let _prune = self.journal.prune_lock();
        let mut pruned = 0;
        // On a shared store every replica's worker prunes: one at a time moves the
        // base (the others' batches expect the base they read, and run again).
        self.retrying(|| self.prune_from_base(key, cutoff, &mut pruned))?;
        Ok(pruned)
    }

    /// Prunes page by page from the trail's base, adding to `pruned`.
    fn prune_from_base(
        &self,
        key: &crate::crypto::Key,
        cutoff: u64,
        pruned: &mut u64,
    ) -> Result<(), Error> {
        loop {
            let stored_base = self.store.get(Cf::Meta, BASE)?;
            let (first, mut mac) = read_base(&self.store, key)?.map_err(|_| Error::Integrity)?;
            let from = first.checked_sub(1).map(u64::to_be_bytes);
            let from = from.as_ref().map(|k| &k[..]);
            // Most runs find nothing due: look at the oldest event before reading more.
            let Some((_, oldest)) = self.store.scan_after(Cf::Audit, from, 1)?.pop() else {
                return Ok(());
            };
            if decode::<StoredEvent>(AUDIT_FORMAT, &oldest)?.event.at >= cutoff {
                return Ok(());
            }
            let page = self.store.scan_after(Cf::Audit, from, PRUNE_CHUNK)?;
            let mut batch = self.store.batch();
            batch.expect(Cf::Meta, BASE, stored_base.as_deref());
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
                return Ok(());
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
            self.journal.commit_audited(batch, vec![event], true)?;
            *pruned += count;
        }
    }
}

/// A page of the events about one subject.
pub(crate) struct EventsPage {
    pub(crate) events: Vec<AuditEvent>,
    /// `Some(after)` when more events follow: the next page starts after `after`.
    pub(crate) next: Option<Option<u64>>,
}

impl Vault {
    /// Checks the whole audit trail: every event's chained MAC, their order, and the
    /// checkpoint against the last event. Reports the first bad event.
    pub fn verify_audit(&self) -> Result<AuditVerification, Error> {
        self.inner.verify_audit()
    }

    /// The end of the trail now (staged read events included), to keep outside the
    /// vault; `None` while the trail is empty. [`Error::AuditDamaged`] if its
    /// checkpoint does not authenticate.
    pub fn audit_head(&self) -> Result<Option<AuditHead>, Error> {
        self.inner.audit_head()
    }

    /// [`verify_audit`](Self::verify_audit), and whether the trail still holds
    /// `expected`, a head taken earlier: a trail whose tail was cut off with an
    /// older checkpoint put back verifies on its own, and fails this.
    pub fn verify_audit_against(&self, expected: &AuditHead) -> Result<AuditVerification, Error> {
        self.inner.verify_audit_against(expected)
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
        let Some(dek) = inner.keys.dek(&entry.sid)? else {
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
