//! A staging vault built from a production vault: the same tokens, realistic fake
//! values behind them, pseudonymous subject ids.
//!
//! Production's tokens become aliases in the staging vault (looked up by their
//! text, like digit tokens): a copy of production's application database, which
//! holds only tokens, works against it. Every live value is replaced by a fake of
//! its field's kind ([`FakeKind`]), derived under a key of the staging vault that
//! production never sees, so the same real value gives the same fake everywhere;
//! subject ids are pseudonymised the same way. Tokens of erased subjects and of
//! expired records stay *erased* and *expired*. Consents are copied; the audit
//! trail, erasure receipts and backups are not.

use std::collections::BTreeMap;
use std::path::Path;

use zeroize::Zeroizing;

use crate::alias;
use crate::codec::{decode, encode};
use crate::consent::ConsentStatus;
use crate::crypto::random_bytes;
use crate::error::Error;
use crate::events::{AuditAction, AuditEvent, AuditOutcome};
use crate::inventory::Tally;
use crate::keys::RootKey;
use crate::options::VaultOptions;
use crate::records::{
    LiveRecord, RECORD_FORMAT, RecordPlace, StoredRecord, expired_tag, index_key, shredded_tag,
};
use crate::retention::expiry_key;
use crate::store::{Batch, Cf, Storage, WriteSet};
use crate::subjects::{SUBJECT_FORMAT, SubjectEntry};
use crate::synthetic::{FakeKind, Faker};
use crate::token::{Token, TokenId};
use crate::vault::{Inner, Vault};

/// Subjects copied per write.
const SUBJECTS_PER_BATCH: usize = 256;
/// Records read per step of the stub pass.
const RECORDS_PER_STEP: usize = 4096;
/// The actor of the staging vault's events about the copy.
const ACTOR: &str = "pseudonymize";

/// What [`pseudonymize`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PseudonymizeReport {
    /// Subjects copied, under pseudonymous ids.
    pub subjects: u64,
    /// Live values replaced by fakes.
    pub records: u64,
    /// Tokens that answer *erased* in staging as in production.
    pub erased_tokens: u64,
    /// Tokens that answer *expired* in staging as in production.
    pub expired_tokens: u64,
    /// Consents copied (one per subject and purpose).
    pub consents: u64,
}

/// How [`pseudonymize`] fakes each field: a kind per field name, and the default
/// by name ([`FakeKind::for_field`]) for the others.
#[derive(Debug, Clone, Default)]
pub struct FakeFields {
    kinds: BTreeMap<String, FakeKind>,
}

impl FakeFields {
    /// Fakes `field` as `kind`.
    pub fn field(mut self, field: impl Into<String>, kind: FakeKind) -> FakeFields {
        self.kinds.insert(field.into(), kind);
        self
    }

    /// The kind of `field`.
    pub fn kind(&self, field: &str) -> FakeKind {
        self.kinds
            .get(field)
            .copied()
            .unwrap_or_else(|| FakeKind::for_field(field))
    }
}

/// Builds a new staging vault in `target` (which must not exist, or be empty),
/// under its own root key `root` and `opts` (without their backups), from the open vault `source`: every
/// token of `source` detokenizes in the staging vault to a fake of the same
/// shape, under a pseudonymous subject id. `mapping`, if given, is written (mode
/// 0600) with one line per subject: its reference in `source` (as exports and
/// erasure receipts show it), a space, its id in the staging vault. `progress`
/// is called with the records done and the engine's estimate of the total.
///
/// Run it on a copy of production (a restored backup) or with production
/// stopped: `source` must be open, and a vault has one owner.
pub fn pseudonymize(
    source: &Vault,
    target: &Path,
    root: &RootKey,
    opts: VaultOptions,
    fields: &FakeFields,
    mapping: Option<&Path>,
    mut progress: impl FnMut(u64, u64),
) -> Result<PseudonymizeReport, Error> {
    if std::fs::read_dir(target).is_ok_and(|mut d| d.next().is_some()) {
        return Err(Error::NotEmpty {
            path: target.to_path_buf(),
        });
    }
    if let Some(path) = mapping
        && path.exists()
    {
        return Err(Error::NotEmpty {
            path: path.to_path_buf(),
        });
    }
    // Built beside the target and renamed into place once whole: a build cut
    // short leaves no vault that serves half of production's tokens.
    let partial = partial_dir(target)?;
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
    }
    // Production's backup directory and erasure journal are production's.
    let mut opts = opts.create_if_missing(true).background_worker(false);
    opts.backups = None;
    // Production's trail says who read every value, and when.
    let event = AuditEvent::new(ACTOR, AuditAction::Export, AuditOutcome::Ok)
        .about(None, source.inner.store.estimate_keys(Cf::Records));
    source
        .inner
        .journal
        .commit_audited(source.inner.store.batch(), vec![event], true)?;
    let staging = Vault::open(&partial, root, opts)?;
    let faker = Faker::new(staging.inner.keys.ring().synthetic_key());
    let mut batch = staging.inner.store.batch();
    alias::mark_foreign(&mut batch);
    staging.inner.store.write(batch)?;
    staging
        .inner
        .foreign_aliases
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut copy = Copy {
        source: &source.inner,
        staging: &staging.inner,
        faker: &faker,
        fields,
        report: PseudonymizeReport::default(),
        mapping: Vec::new(),
        total: source.inner.store.estimate_keys(Cf::Records),
        done: 0,
    };
    copy.subjects(&mut progress)?;
    copy.stubs(&mut progress)?;
    let (report, lines) = (copy.report, copy.mapping);
    staging.close()?;
    if let Some(path) = mapping {
        write_private(path, &lines)?;
    }
    std::fs::rename(&partial, target).map_err(|e| Error::io(target, e))?;
    if let Some(parent) = target.parent() {
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(parent, e))?;
    }
    Ok(report)
}

/// Where the staging vault is built before it is renamed to `target`.
fn partial_dir(target: &Path) -> Result<std::path::PathBuf, Error> {
    let name = target.file_name().ok_or(Error::InvalidOption(
        "the staging vault's directory has no name",
    ))?;
    let mut partial = name.to_os_string();
    partial.push(".pseudonymizing");
    Ok(target.with_file_name(partial))
}

/// A record of a production subject, faked, for the staging vault.
struct Copied {
    field: String,
    created_at: u64,
    deterministic: bool,
    value: Vec<u8>,
    /// The texts it is looked up by (production's token, and its digits form).
    lookups: Vec<String>,
    /// The token as production issued it, shown by staging's exports.
    issued: String,
}

struct Copy<'a> {
    source: &'a Inner,
    staging: &'a Inner,
    faker: &'a Faker,
    fields: &'a FakeFields,
    report: PseudonymizeReport,
    mapping: Vec<u8>,
    total: u64,
    done: u64,
}

impl Copy<'_> {
    /// Every subject of production with its live records and consents, a page
    /// of subjects per write.
    fn subjects(&mut self, progress: &mut impl FnMut(u64, u64)) -> Result<(), Error> {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page =
                self.source
                    .store
                    .scan_after(Cf::Subjects, after.as_deref(), SUBJECTS_PER_BATCH)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let mut batch = self.staging.store.batch();
            let mut events = Vec::new();
            for (hash, stored) in &page {
                if let Some(event) = self.subject(hash, stored, &mut batch)? {
                    events.push(event);
                }
            }
            self.staging.journal.commit_audited(batch, events, false)?;
            progress(self.done, self.total);
        }
    }

    /// One production subject into `batch`: its pseudonymous subject, records and
    /// consents, and the stubs of its expired records. Its event, if it had any.
    fn subject(
        &mut self,
        hash: &[u8],
        stored: &[u8],
        batch: &mut Batch<'_>,
    ) -> Result<Option<AuditEvent>, Error> {
        let source = self.source;
        let entry = SubjectEntry::decode(stored)?;
        // A subject entry without its key is damage; production reports it itself.
        let Some(dek) = source.keys.dek(&entry.sid)? else {
            return Ok(None);
        };
        let mut ids: Vec<TokenId> = Vec::new();
        source.store.scan_prefix(Cf::Index, &entry.sid, |key, _| {
            ids.push(key[16..].try_into().map_err(|_| Error::Integrity)?);
            Ok(true)
        })?;
        let issued = self.issued(&ids)?;
        let now = source.now();
        let mut records = Vec::with_capacity(ids.len());
        for ((id, bytes), issued) in ids
            .iter()
            .zip(source.store.multi_get(Cf::Records, &ids)?)
            .zip(issued)
        {
            let Some(bytes) = bytes else { continue };
            let StoredRecord::Live(record) = decode(RECORD_FORMAT, &bytes)? else {
                continue;
            };
            if record.sid != entry.sid {
                return Err(Error::Integrity);
            }
            self.done += 1;
            let (lookups, shown) = self.texts(id, issued)?;
            if source
                .opts
                .policy
                .expired(&record.field, record.created_at, now)
            {
                self.stub(batch, Stub::Expired, &lookups)?;
                continue;
            }
            let value = Zeroizing::new(record.open(&source.vault_id, id, &dek.aead)?.to_vec());
            let kind = self.fields.kind(&record.field);
            // Dates shift by an offset of the subject and field: one field's real
            // date (a sign-up day near the record's creation) gives away no other's.
            let seed = [&dek.subject_hash[..], record.field.as_bytes()].concat();
            records.push(Copied {
                value: self.faker.fake(kind, &value, &seed),
                field: record.field,
                created_at: record.created_at,
                deterministic: record.deterministic,
                lookups,
                issued: shown,
            });
        }
        let consents = source.consents_of(&entry.sid, &dek)?;
        if records.is_empty() && consents.is_empty() {
            return Ok(None);
        }
        let subject = self.faker.subject_id(hash);
        let reference = crate::erase::SubjectRef(entry.sid).to_string();
        self.mapping
            .extend_from_slice(format!("{reference} {subject}\n").as_bytes());
        self.report.subjects += 1;
        self.report.records += records.len() as u64;
        self.report.consents += consents.len() as u64;
        Ok(Some(
            self.staging
                .import_subject(&subject, &records, &consents, batch)?,
        ))
    }

    /// The issued texts of production's records `ids` (formats), if it has any.
    fn issued(&self, ids: &[TokenId]) -> Result<Vec<Option<String>>, Error> {
        alias::issued_if_any(&*self.source.store, &self.source.issued_aliases, ids)
    }

    /// The texts production's record `id` is found by, and the one it was issued as.
    fn texts(&self, id: &TokenId, issued: Option<String>) -> Result<(Vec<String>, String), Error> {
        let plain = self.source.index.tokens.token(id).to_string();
        let mut lookups = vec![plain.clone()];
        let shown = match issued {
            Some(text) => {
                let token: Token = text.parse().map_err(|_| Error::Integrity)?;
                let lookup = token.lookup_text();
                if lookup != plain {
                    lookups.push(lookup);
                }
                text
            }
            None => plain,
        };
        Ok((lookups, shown))
    }

    /// Every token of production that answers *erased* or *expired* (a stub, or a
    /// record whose subject's key is gone), as a stub of staging found by the
    /// same texts.
    fn stubs(&mut self, progress: &mut impl FnMut(u64, u64)) -> Result<(), Error> {
        let source = self.source;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = source
                .store
                .scan_after(Cf::Records, after.as_deref(), RECORDS_PER_STEP)?;
            let Some((last, _)) = page.last() else {
                return Ok(());
            };
            after = Some(last.clone());
            let mut batch = self.staging.store.batch();
            let ids: Vec<TokenId> = page
                .iter()
                .map(|(k, _)| k.as_slice().try_into().map_err(|_| Error::Integrity))
                .collect::<Result<_, _>>()?;
            let issued = self.issued(&ids)?;
            for ((id, (_, bytes)), issued) in ids.iter().zip(&page).zip(issued) {
                let stub = match decode(RECORD_FORMAT, bytes)? {
                    StoredRecord::Shredded { .. } => Stub::Erased,
                    StoredRecord::Expired { .. } => Stub::Expired,
                    // Copied with its subject, unless its key is gone (erased,
                    // not purged yet).
                    StoredRecord::Live(record) => {
                        if source.keys.dek(&record.sid)?.is_some() {
                            continue;
                        }
                        Stub::Erased
                    }
                };
                self.done += 1;
                let (lookups, _) = self.texts(id, issued)?;
                self.stub(&mut batch, stub, &lookups)?;
            }
            self.staging.store.write(batch)?;
            progress(self.done, self.total);
        }
    }

    /// A stub of staging, found by `lookups`.
    fn stub(&mut self, batch: &mut Batch<'_>, stub: Stub, lookups: &[String]) -> Result<(), Error> {
        let staging = self.staging;
        let id: TokenId = random_bytes()?;
        let stored = match stub {
            Stub::Erased => {
                self.report.erased_tokens += 1;
                StoredRecord::Shredded {
                    tag: shredded_tag(&staging.index, &id),
                }
            }
            Stub::Expired => {
                self.report.expired_tokens += 1;
                StoredRecord::Expired {
                    tag: expired_tag(&staging.index, &id),
                }
            }
        };
        batch.put(Cf::Records, &id, &encode(RECORD_FORMAT, &stored));
        for text in lookups {
            alias::put(batch, &staging.index, text, &id, false);
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Stub {
    Erased,
    Expired,
}

impl Inner {
    /// Adds to `batch` a new subject `subject` of this (staging) vault with
    /// `records` and `consents`; returns its event.
    fn import_subject(
        &self,
        subject: &str,
        records: &[Copied],
        consents: &[ConsentStatus],
        batch: &mut Batch<'_>,
    ) -> Result<AuditEvent, Error> {
        let hash = self.index.subject_hash(subject);
        let ring = self.keys.sealed();
        let now = self.now();
        let (mut entry, dek, _) = self.subject_for_write(&hash, None, &ring, batch, now)?;
        let mut tally = Tally::default();
        for record in records {
            let id = self
                .index
                .tokens
                .record_key(&dek.record_group, &random_bytes()?);
            let place = RecordPlace {
                vault_id: &self.vault_id,
                sid: &entry.sid,
                id: &id,
            };
            let sealed = LiveRecord::seal(
                &self.index,
                &place,
                &record.field,
                record.created_at,
                record.deterministic,
                &dek.aead,
                &record.value,
            )?;
            batch.put(
                Cf::Records,
                &id,
                &encode(RECORD_FORMAT, &StoredRecord::Live(sealed)),
            );
            let expires = self
                .opts
                .policy
                .expires_at(&record.field, record.created_at);
            let at = expires.map(u64::to_be_bytes);
            batch.put(
                Cf::Index,
                &index_key(&entry.sid, &id),
                at.as_ref().map_or(&[][..], |at| &at[..]),
            );
            if let Some(at) = expires {
                batch.put(Cf::Expiry, &expiry_key(at, &id), &entry.sid);
            }
            for text in &record.lookups {
                alias::put(batch, &self.index, text, &id, false);
            }
            alias::put_issued(batch, &id, &record.issued);
            tally.record_added(&mut entry, &record.field, record.created_at);
        }
        self.issued_aliases
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.import_consents(batch, &entry.sid, &dek, consents)?;
        tally.write(&self.index, batch)?;
        batch.put(Cf::Subjects, &hash, &encode(SUBJECT_FORMAT, &entry));
        Ok(
            AuditEvent::new(ACTOR, AuditAction::Tokenize, AuditOutcome::Ok)
                .about(Some(dek.audit_ref), records.len() as u64),
        )
    }
}

/// Writes `bytes` to a new file at `path`, readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}
