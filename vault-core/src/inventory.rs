//! The data inventory (GDPR Art. 30, the record of processing): per field, the
//! live records, the subjects who have one, the day of the oldest, its retention
//! period and the purposes that may read it; and vault-wide totals.
//!
//! The counts are counters (`counters` family, added to in the same batch as the
//! write they count), so reading the inventory scans no record. A subject's live
//! records per field are kept in its entry, so a write knows when a subject gains
//! its first record of a field or loses its last. A vault of an earlier build is
//! counted once, when it is first opened by this one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::purposes::LawfulBasis;
use crate::records::{RECORD_FORMAT, StoredRecord};
use crate::rotate::KeyStatus;
use crate::store::{Batch, Cf, Storage, WriteSet};
use crate::subjects::{SUBJECT_FORMAT, SubjectEntry};
use crate::token::TokenId;
use crate::vault::{Inner, Vault};

/// Set once the counters count every record: at creation, or by the first open of
/// an older vault.
pub(crate) const COUNTED: &[u8] = b"inventory/counted";

const DAY_MS: u64 = 86_400_000;
const SUBJECTS_TOTAL: &[u8] = b"inv/subjects";
const ERASED_TOTAL: &[u8] = b"inv/erased";
const RECORDS: &[u8] = b"inv/records/";
const SUBJECTS: &[u8] = b"inv/subjects/";
const DAYS: &[u8] = b"inv/day/";

fn field_key(prefix: &[u8], field: &str) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(field.as_bytes());
    key
}

/// Records of `field` created on the day of `at`: `inv/day/<field>/<day>`. Field
/// names hold no `/`.
fn day_key(field: &str, at: u64) -> Vec<u8> {
    let mut key = field_key(DAYS, field);
    key.push(b'/');
    let day = u32::try_from(at / DAY_MS).unwrap_or(u32::MAX);
    key.extend_from_slice(&day.to_be_bytes());
    key
}

/// The changes a write makes to the counters, added to its batch by [`write`](Self::write).
#[derive(Debug, Default)]
pub(crate) struct Tally(BTreeMap<Vec<u8>, i64>);

impl Tally {
    fn add(&mut self, key: Vec<u8>, delta: i64) {
        *self.0.entry(key).or_insert(0) += delta;
    }

    /// A live record of `field` created at `at` stored for the subject of `entry`
    /// (whose counts it updates).
    pub(crate) fn record_added(&mut self, entry: &mut SubjectEntry, field: &str, at: u64) {
        if entry.records == 0 {
            self.add(SUBJECTS_TOTAL.to_vec(), 1);
        }
        entry.records += 1;
        let count = match entry.fields.iter_mut().find(|(f, _)| f == field) {
            Some((_, count)) => count,
            None => {
                entry.fields.push((field.to_owned(), 0));
                let last = entry.fields.len() - 1;
                &mut entry.fields[last].1
            }
        };
        if *count == 0 {
            self.add(field_key(SUBJECTS, field), 1);
        }
        *count += 1;
        self.add(field_key(RECORDS, field), 1);
        self.add(day_key(field, at), 1);
    }

    /// A live record of `field` created at `at` removed (deleted or expired).
    pub(crate) fn record_removed(&mut self, entry: &mut SubjectEntry, field: &str, at: u64) {
        entry.records = entry.records.saturating_sub(1);
        if entry.records == 0 {
            self.add(SUBJECTS_TOTAL.to_vec(), -1);
        }
        if let Some(i) = entry.fields.iter().position(|(f, _)| f == field) {
            entry.fields[i].1 = entry.fields[i].1.saturating_sub(1);
            if entry.fields[i].1 == 0 {
                entry.fields.remove(i);
                self.add(field_key(SUBJECTS, field), -1);
            }
        }
        self.add(field_key(RECORDS, field), -1);
        self.add(day_key(field, at), -1);
    }

    /// A live record stored again under its id (a deterministic token past its
    /// period): same field, new creation time.
    pub(crate) fn record_renewed(&mut self, field: &str, was: u64, now: u64) {
        self.add(day_key(field, was), -1);
        self.add(day_key(field, now), 1);
    }

    /// The subject of `entry` erased, with its live records (field, creation time).
    pub(crate) fn subject_erased(&mut self, entry: &SubjectEntry, records: &[(String, u64)]) {
        if entry.records > 0 {
            self.add(SUBJECTS_TOTAL.to_vec(), -1);
        }
        self.add(ERASED_TOTAL.to_vec(), 1);
        for (field, count) in &entry.fields {
            if *count > 0 {
                self.add(field_key(SUBJECTS, field), -1);
            }
        }
        for (field, at) in records {
            self.add(field_key(RECORDS, field), -1);
            self.add(day_key(field, *at), -1);
        }
    }

    /// Adds the changes to `batch`.
    pub(crate) fn write(self, batch: &mut Batch<'_>) {
        for (key, delta) in self.0 {
            if delta != 0 {
                batch.add(&key, delta);
            }
        }
    }
}

/// The record of processing of one vault, as of one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Inventory {
    /// When it was read, in milliseconds since the Unix epoch.
    pub taken_at: u64,
    /// Every field that has (or had) records, or that a purpose or a retention
    /// period names; by name.
    pub fields: Vec<FieldInventory>,
    /// Live records of every field.
    pub records: u64,
    /// Subjects with at least one live record.
    pub subjects: u64,
    /// Subjects erased (every erasure of a subject instance, ever).
    pub erased_subjects: u64,
    /// Erasures whose bytes are not purged yet.
    pub pending_purges: usize,
    /// The KEK version new subject keys are wrapped with.
    pub active_kek_version: u32,
    /// Every KEK version that still exists (more than one: a rotation is under way).
    pub kek_versions: Vec<u32>,
    /// The backups, when the vault takes them.
    pub backups: Option<BackupStatus>,
}

/// One field of an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldInventory {
    /// The field name.
    pub field: String,
    /// Live records (values held; those past their period until the retention
    /// purge removes them).
    pub records: u64,
    /// Subjects with at least one live record of the field.
    pub subjects: u64,
    /// The start (UTC) of the day the oldest live record was created, in
    /// milliseconds since the Unix epoch; `None` without records.
    pub oldest_record_day: Option<u64>,
    /// How long its values are kept; `None`: until deleted or erased.
    pub retention: Option<Duration>,
    /// The purposes that may read it.
    pub purposes: Vec<FieldPurpose>,
}

/// A purpose that may read a field.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FieldPurpose {
    /// The purpose's name.
    pub purpose: String,
    /// Its lawful basis.
    pub basis: LawfulBasis,
    /// Whether it sees masked values only.
    pub masked: bool,
}

/// The backups of an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupStatus {
    /// Backups kept.
    pub kept: usize,
    /// When the newest was taken, in milliseconds since the Unix epoch.
    pub latest_at: Option<u64>,
    /// How many may hold data of a subject erased (or a record expired) since.
    pub holding_erased: usize,
    /// When the last of those will be deleted, if backups are taken on a schedule.
    pub erasures_in_backups_until: Option<u64>,
}

impl Vault {
    /// The data inventory: per field, live records, subjects, the oldest record's
    /// day, retention and purposes; vault-wide totals, erasures, pending purges, KEK
    /// versions and backups. Read from counters kept as the vault writes: no scan
    /// of the records.
    pub fn inventory(&self) -> Result<Inventory, Error> {
        self.inner.inventory(self.key_status()?)
    }
}

impl Inner {
    fn inventory(&self, keys: KeyStatus) -> Result<Inventory, Error> {
        let counts = |prefix: &[u8]| -> Result<BTreeMap<String, u64>, Error> {
            let mut out = BTreeMap::new();
            self.store.scan_prefix(Cf::Counters, prefix, |key, value| {
                let field = String::from_utf8(key[prefix.len()..].to_vec())
                    .map_err(|_| Error::Integrity)?;
                out.insert(field, non_negative(value));
                Ok(true)
            })?;
            Ok(out)
        };
        let records = counts(RECORDS)?;
        let subjects = counts(SUBJECTS)?;
        let policy = &self.opts.policy;
        let mut names: BTreeSet<String> = records.keys().cloned().collect();
        names.extend(policy.retained_fields().map(str::to_owned));
        for purpose in policy.purposes() {
            if let Some(fields) = purpose.field_names() {
                names.extend(fields.iter().cloned());
            }
        }
        let mut fields = Vec::with_capacity(names.len());
        for field in names {
            let held = records.get(&field).copied().unwrap_or(0);
            fields.push(FieldInventory {
                oldest_record_day: if held > 0 {
                    self.oldest_day(&field)?
                } else {
                    None
                },
                records: held,
                subjects: subjects.get(&field).copied().unwrap_or(0),
                retention: policy.retention_of(&field),
                purposes: policy
                    .purposes()
                    .filter(|p| p.covers(&field))
                    .map(|p| FieldPurpose {
                        purpose: p.name().to_owned(),
                        basis: p.basis(),
                        masked: p.is_masked(),
                    })
                    .collect(),
                field,
            });
        }
        let backups = match &self.backups {
            Some(_) if !self.store.shared() => {
                let list = self.backup_list()?;
                Some(BackupStatus {
                    kept: list.backups.len(),
                    latest_at: list.backups.last().map(|b| b.created_at),
                    holding_erased: list.holding_erased,
                    erasures_in_backups_until: list.erasures_in_backups_until,
                })
            }
            _ => None,
        };
        Ok(Inventory {
            taken_at: self.now(),
            records: fields.iter().map(|f| f.records).sum(),
            subjects: non_negative_i64(self.store.counter(SUBJECTS_TOTAL)?),
            erased_subjects: non_negative_i64(self.store.counter(ERASED_TOTAL)?),
            pending_purges: keys.pending_purges,
            active_kek_version: keys.active_version,
            kek_versions: keys.versions.iter().map(|v| v.version).collect(),
            backups,
            fields,
        })
    }

    /// The start of the first day with a live record of `field`.
    fn oldest_day(&self, field: &str) -> Result<Option<u64>, Error> {
        let mut prefix = field_key(DAYS, field);
        prefix.push(b'/');
        let mut oldest = None;
        self.store
            .scan_prefix(Cf::Counters, &prefix, |key, value| {
                if non_negative(value) == 0 {
                    return Ok(true);
                }
                let day: [u8; 4] = key[prefix.len()..]
                    .try_into()
                    .map_err(|_| Error::Integrity)?;
                oldest = Some(u64::from(u32::from_be_bytes(day)) * DAY_MS);
                Ok(false)
            })?;
        Ok(oldest)
    }

    /// The live records of the subject instance `sid`: (field, creation time).
    pub(crate) fn records_of(&self, sid: &[u8; 16]) -> Result<Vec<(String, u64)>, Error> {
        let mut ids: Vec<TokenId> = Vec::new();
        self.store.scan_prefix(Cf::Index, sid, |key, _| {
            ids.push(key[16..].try_into().map_err(|_| Error::Integrity)?);
            Ok(true)
        })?;
        let mut out = Vec::with_capacity(ids.len());
        for bytes in self
            .store
            .multi_get(Cf::Records, &ids)?
            .into_iter()
            .flatten()
        {
            if let Ok(StoredRecord::Live(record)) = decode(RECORD_FORMAT, &bytes)
                && record.sid == *sid
            {
                out.push((record.field, record.created_at));
            }
        }
        Ok(out)
    }

    /// Counts every record of a vault whose counters do not (one written before the
    /// inventory), once, at open: every subject entry gets its per-field counts,
    /// and the counters their totals, in one batch with the mark that they are
    /// done. On a shared store, replicas opening together count once: the batch
    /// expects the mark absent.
    pub(crate) fn count_inventory(&self) -> Result<(), Error> {
        if self.store.get(Cf::Meta, COUNTED)?.is_some() {
            return Ok(());
        }
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        self.store.scan_prefix(Cf::Subjects, &[], |key, value| {
            entries.push((key.to_vec(), value.to_vec()));
            Ok(true)
        })?;
        let mut batch = self.store.batch();
        batch.expect(Cf::Meta, COUNTED, None);
        let mut tally = Tally::default();
        for (key, value) in &entries {
            let mut entry = SubjectEntry::decode(value)?;
            let records = self.records_of(&entry.sid)?;
            entry.records = 0;
            entry.fields.clear();
            for (field, at) in &records {
                tally.record_added(&mut entry, field, *at);
            }
            batch.expect(Cf::Subjects, key, Some(value));
            batch.put(Cf::Subjects, key, &encode(SUBJECT_FORMAT, &entry));
        }
        let mut erased = 0;
        self.store.scan_prefix(Cf::Erasures, &[], |_, _| {
            erased += 1;
            Ok(true)
        })?;
        tally.add(ERASED_TOTAL.to_vec(), erased);
        tally.write(&mut batch);
        batch.put(Cf::Meta, COUNTED, &[1]);
        self.store.write_synced(batch)
    }
}

fn non_negative(value: &[u8]) -> u64 {
    let bytes: [u8; 8] = value.try_into().unwrap_or([0; 8]);
    non_negative_i64(i64::from_le_bytes(bytes))
}

fn non_negative_i64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
