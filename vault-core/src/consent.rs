//! The consent ledger (GDPR Art. 7): per subject and purpose, every grant and
//! withdrawal with its time and source, and the current state.
//!
//! Entries live in the `consents` family under the subject's storage id and are
//! sealed with the subject's key, so they disappear with the subject: erasure
//! destroys the key, and the purge deletes them and compacts them off the disk. The
//! current state is its own entry, so the check on each detokenization is one read.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::crypto::{aad, domain};
use crate::error::{Argument, Error, InputError, Problem};
use crate::events::{AuditAction, AuditEvent, AuditOutcome, ReadEvent};
use crate::store::{Cf, Storage, WriteSet};
use crate::subjects::{Dek, SUBJECT_FORMAT, Sid, SubjectEntry, SubjectHash};
use crate::vault::{Inner, Vault};

pub(crate) const CONSENT_FORMAT: u8 = 1;
/// The source of a consent event in a staging vault, where production's said one.
const COPIED_SOURCE: &str = "copied from production";
/// Longest consent source, in characters (Unicode scalar values, as JSON Schema's
/// `maxLength` counts them).
pub const MAX_SOURCE_LEN: usize = 256;

/// One grant or withdrawal. Its `Debug` leaves out the source (caller text).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ConsentEvent {
    /// The purpose.
    pub purpose: String,
    /// Granted (`true`) or withdrawn.
    pub granted: bool,
    /// When, in milliseconds since the Unix epoch.
    pub at: u64,
    /// Where it was given or withdrawn (e.g. which form), as the caller said.
    pub source: Option<String>,
}

impl std::fmt::Debug for ConsentEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentEvent")
            .field("purpose", &self.purpose)
            .field("granted", &self.granted)
            .field("at", &self.at)
            .field("source", &self.source.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

/// The consent of one subject to one purpose: its current state and its history.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsentStatus {
    /// The purpose.
    pub purpose: String,
    /// Whether consent is currently granted.
    pub granted: bool,
    /// When the current state began, in milliseconds since the Unix epoch.
    pub since: u64,
    /// Every grant and withdrawal, oldest first.
    pub history: Vec<ConsentEvent>,
}

/// The current state of one (subject, purpose).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Current {
    purpose: String,
    granted: bool,
    at: u64,
    /// Sequence number of the last event.
    seq: u64,
}

fn current_key(sid: &Sid, pid: &[u8; 16]) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(sid);
    key[16..].copy_from_slice(pid);
    key
}

fn event_key(sid: &Sid, pid: &[u8; 16], seq: u64) -> [u8; 40] {
    let mut key = [0u8; 40];
    key[..32].copy_from_slice(&current_key(sid, pid));
    key[32..].copy_from_slice(&seq.to_be_bytes());
    key
}

impl Inner {
    /// A purpose's fixed-length id in storage keys.
    fn purpose_id(&self, purpose: &str) -> [u8; 16] {
        self.index
            .tombstone_tag(domain::PURPOSE_ID, &[purpose.as_bytes()])
    }

    /// Seals `value` under the subject's key, bound to the vault and its storage key.
    fn seal_consent<T: Serialize>(
        &self,
        dek: &Dek,
        key: &[u8],
        value: &T,
    ) -> Result<Vec<u8>, Error> {
        let plain =
            zeroize::Zeroizing::new(postcard::to_allocvec(value).map_err(|_| Error::Integrity)?);
        let sealed = dek
            .aead
            .seal(&aad(domain::CONSENT, &[&self.vault_id, key]), &plain)?;
        Ok(encode(CONSENT_FORMAT, &sealed))
    }

    fn open_consent<T: for<'de> Deserialize<'de>>(
        &self,
        dek: &Dek,
        key: &[u8],
        stored: &[u8],
    ) -> Result<T, Error> {
        let sealed: Vec<u8> = decode(CONSENT_FORMAT, stored)?;
        let plain = dek
            .aead
            .open(&aad(domain::CONSENT, &[&self.vault_id, key]), &sealed)?;
        postcard::from_bytes(&plain).map_err(|_| Error::Integrity)
    }

    /// Adds to `batch` a subject's consents as another vault held them (a staging
    /// vault's copy): every event of each history in order, and the current state.
    pub(crate) fn import_consents(
        &self,
        batch: &mut crate::store::Batch<'_>,
        sid: &Sid,
        dek: &Dek,
        consents: &[ConsentStatus],
    ) -> Result<(), Error> {
        for status in consents {
            let pid = self.purpose_id(&status.purpose);
            let mut seq = 0;
            for (i, event) in status.history.iter().enumerate() {
                seq = i as u64;
                let ekey = event_key(sid, &pid, seq);
                // The source is the caller's free text, which may name the person.
                let event = ConsentEvent {
                    source: event.source.as_ref().map(|_| COPIED_SOURCE.to_owned()),
                    ..event.clone()
                };
                batch.put(Cf::Consents, &ekey, &self.seal_consent(dek, &ekey, &event)?);
            }
            let ckey = current_key(sid, &pid);
            let current = Current {
                purpose: status.purpose.clone(),
                granted: status.granted,
                at: status.since,
                seq,
            };
            batch.put(
                Cf::Consents,
                &ckey,
                &self.seal_consent(dek, &ckey, &current)?,
            );
        }
        Ok(())
    }

    /// Whether the subject currently consents to `purpose`.
    pub(crate) fn consent_granted(
        &self,
        sid: &Sid,
        dek: &Dek,
        purpose: &str,
    ) -> Result<bool, Error> {
        let key = current_key(sid, &self.purpose_id(purpose));
        match self.store.get(Cf::Consents, &key)? {
            None => Ok(false),
            Some(stored) => {
                let current: Current = self.open_consent(dek, &key, &stored)?;
                if current.purpose != purpose {
                    return Err(Error::Integrity);
                }
                // A current state rolled back to an older sealed copy is followed by
                // a later event in the history.
                let pid = self.purpose_id(purpose);
                let next = event_key(sid, &pid, current.seq.saturating_add(1));
                if self.store.get(Cf::Consents, &next)?.is_some() {
                    return Err(Error::Integrity);
                }
                Ok(current.granted)
            }
        }
    }
}

impl Vault {
    /// Records a grant (`granted = true`) or withdrawal of the subject's consent to a
    /// declared purpose whose basis is consent ([`Error::NotConsentBased`] otherwise), with an optional source (e.g. `signup-form-v3`; at most
    /// 256 characters, no control characters). The change applies to the very next
    /// detokenization. A subject the vault does not know yet is created (consent is
    /// often given before any data is stored).
    pub fn record_consent(
        &self,
        subject: &str,
        purpose: &str,
        granted: bool,
        source: Option<&str>,
    ) -> Result<ConsentEvent, Error> {
        self.default_actor()
            .record_consent(subject, purpose, granted, source)
    }

    pub(crate) fn record_consent_by(
        &self,
        actor: &str,
        subject: &str,
        purpose: &str,
        granted: bool,
        source: Option<&str>,
    ) -> Result<ConsentEvent, Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_subject(subject)?;
        match inner.opts.policy.purpose(purpose) {
            None => return Err(Error::UnknownPurpose),
            Some(p) if p.basis() != crate::purposes::LawfulBasis::Consent => {
                return Err(Error::NotConsentBased);
            }
            Some(_) => {}
        }
        if let Some(source) = source {
            if source.is_empty() {
                return Err(InputError::new(Argument::Source, Problem::Empty).into());
            }
            if source.chars().count() > MAX_SOURCE_LEN {
                let problem = Problem::TooLong {
                    limit: MAX_SOURCE_LEN,
                };
                return Err(InputError::new(Argument::Source, problem).into());
            }
            if source.chars().any(char::is_control) {
                return Err(InputError::new(Argument::Source, Problem::BadCharacter).into());
            }
        }
        let h = inner.index.subject_hash(subject);
        inner.retrying(|| inner.record_consent_once(actor, &h, purpose, granted, source))
    }
}

impl Inner {
    /// One attempt of [`Vault::record_consent`], on what it reads now.
    fn record_consent_once(
        &self,
        actor: &str,
        h: &SubjectHash,
        purpose: &str,
        granted: bool,
        source: Option<&str>,
    ) -> Result<ConsentEvent, Error> {
        let inner = self;
        let h = *h;
        let _stripe = inner.stripes.lock(&h);
        let _keys = inner
            .keys
            .writes()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ring = inner.keys.sealed();
        let now = inner.now();
        let found = inner.store.get(Cf::Subjects, &h)?;
        let mut batch = inner.store.batch();
        let (entry, dek, created) =
            inner.subject_for_write(&h, found.as_deref(), &ring, &mut batch, now)?;
        if created {
            batch.put(Cf::Subjects, &h, &encode(SUBJECT_FORMAT, &entry));
        }
        let pid = inner.purpose_id(purpose);
        let ckey = current_key(&entry.sid, &pid);
        let stored = inner.store.get(Cf::Consents, &ckey)?;
        // On a shared store: unless another replica recorded a change meanwhile.
        batch.expect(Cf::Consents, &ckey, stored.as_deref());
        let seq = match stored {
            Some(stored) => {
                let current: Current = inner.open_consent(&dek, &ckey, &stored)?;
                current.seq + 1
            }
            None => 0,
        };
        // Never overwrite history (a rolled-back current state would make us).
        if inner
            .store
            .get(Cf::Consents, &event_key(&entry.sid, &pid, seq))?
            .is_some()
        {
            return Err(Error::Integrity);
        }
        let event = ConsentEvent {
            purpose: purpose.to_owned(),
            granted,
            at: now,
            source: source.map(str::to_owned),
        };
        let current = Current {
            purpose: purpose.to_owned(),
            granted,
            at: now,
            seq,
        };
        let ekey = event_key(&entry.sid, &pid, seq);
        batch.put(
            Cf::Consents,
            &ekey,
            &inner.seal_consent(&dek, &ekey, &event)?,
        );
        batch.put(
            Cf::Consents,
            &ckey,
            &inner.seal_consent(&dek, &ckey, &current)?,
        );
        let action = if granted {
            AuditAction::ConsentGranted
        } else {
            AuditAction::ConsentWithdrawn
        };
        let audit = AuditEvent::new(actor, action, AuditOutcome::Ok)
            .purpose(purpose)
            .about(Some(dek.audit_ref), 0);
        // Synced whatever the durability: a withdrawal must not come undone.
        inner.journal.commit_audited(batch, vec![audit], true)?;
        if created {
            inner.keys.remember(entry.sid, dek);
        }
        Ok(event)
    }
}

impl Vault {
    /// The subject's consents: per purpose, the current state and every change,
    /// read by the subject's prefix. Empty for a subject the vault does not know.
    /// The read is recorded in the audit trail.
    pub fn consents(&self, subject: &str) -> Result<Vec<ConsentStatus>, Error> {
        self.default_actor().consents(subject)
    }

    pub(crate) fn consents_by(
        &self,
        actor: &str,
        subject: &str,
    ) -> Result<Vec<ConsentStatus>, Error> {
        let inner = &*self.inner;
        inner.opts.limits.check_subject(subject)?;
        let h = inner.index.subject_hash(subject);
        let read = |subject_ref, purposes| {
            ReadEvent::new(actor, AuditAction::ConsentsRead, AuditOutcome::Ok)
                .about(subject_ref, purposes)
        };
        let Some(bytes) = inner.store.get(Cf::Subjects, &h)? else {
            inner.commit_read_events(&[read(None, 0)])?;
            return Ok(Vec::new());
        };
        let entry = SubjectEntry::decode(&bytes)?;
        let dek = inner.keys.dek(&entry.sid)?.ok_or(Error::Integrity)?;
        if dek.subject_hash != h {
            return Err(Error::Integrity);
        }
        let consents = inner.consents_of(&entry.sid, &dek)?;
        inner.commit_read_events(&[read(Some(dek.audit_ref), consents.len() as u64)])?;
        Ok(consents)
    }
}

impl Inner {
    pub(crate) fn consents_of(&self, sid: &Sid, dek: &Dek) -> Result<Vec<ConsentStatus>, Error> {
        let mut by_purpose: BTreeMap<[u8; 16], (ConsentStatus, u64)> = BTreeMap::new();
        let mut events: BTreeMap<[u8; 16], Vec<ConsentEvent>> = BTreeMap::new();
        self.store.scan_prefix(Cf::Consents, sid, |key, stored| {
            let pid: [u8; 16] = key
                .get(16..32)
                .and_then(|p| p.try_into().ok())
                .ok_or(Error::Integrity)?;
            match key.len() {
                32 => {
                    let current: Current = self.open_consent(dek, key, stored)?;
                    if self.purpose_id(&current.purpose) != pid {
                        return Err(Error::Integrity);
                    }
                    let status = ConsentStatus {
                        purpose: current.purpose,
                        granted: current.granted,
                        since: current.at,
                        history: Vec::new(),
                    };
                    by_purpose.insert(pid, (status, current.seq));
                }
                40 => {
                    let event: ConsentEvent = self.open_consent(dek, key, stored)?;
                    if self.purpose_id(&event.purpose) != pid {
                        return Err(Error::Integrity);
                    }
                    events.entry(pid).or_default().push(event);
                }
                _ => return Err(Error::Integrity),
            }
            Ok(true)
        })?;
        let mut out = Vec::with_capacity(by_purpose.len());
        for (pid, (mut status, seq)) in by_purpose {
            // Keys sort by sequence number: the history is in order, and must be
            // complete (0..=seq) and end in the current state.
            status.history = events.remove(&pid).unwrap_or_default();
            let last = status.history.last();
            let complete = status.history.len() as u64 == seq.saturating_add(1)
                && last.is_some_and(|e| e.granted == status.granted && e.at == status.since);
            if !complete {
                return Err(Error::Integrity);
            }
            out.push(status);
        }
        if !events.is_empty() {
            // History without a current state: an entry was removed.
            return Err(Error::Integrity);
        }
        out.sort_by(|a, b| a.purpose.cmp(&b.purpose));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::MAX_SOURCE_LEN;
    use crate::error::{Argument, Error, InputError, Problem};
    use crate::{KdfParams, LawfulBasis, Purpose, RootKey, Vault, VaultOptions};

    #[test]
    fn a_source_is_measured_in_characters() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
        let opts = VaultOptions::default()
            .background_worker(false)
            .kdf_params(KdfParams::MINIMUM)
            .purpose(Purpose::new("newsletter", LawfulBasis::Consent));
        let vault = Vault::open(dir.path(), &RootKey::from_bytes(&[7; 32])?, opts)?;
        // A 4-byte character: the longest source is 1 KiB.
        let wide = "\u{1F4DD}";
        let longest = wide.repeat(MAX_SOURCE_LEN);
        vault.record_consent("s1", "newsletter", true, Some(&longest))?;
        let over = wide.repeat(MAX_SOURCE_LEN + 1);
        let refused = vault
            .record_consent("s1", "newsletter", false, Some(&over))
            .expect_err("refused");
        let expected = InputError::new(
            Argument::Source,
            Problem::TooLong {
                limit: MAX_SOURCE_LEN,
            },
        );
        assert!(matches!(refused, Error::InvalidInput(e) if e == expected));
        vault.close()
    }
}
