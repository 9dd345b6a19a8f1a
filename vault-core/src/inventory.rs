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
use crate::crypto::domain;
use crate::error::Error;
use crate::keys::IndexKeys;
use crate::purposes::{LawfulBasis, Policy};
use crate::records::{RECORD_FORMAT, StoredRecord};
use crate::rotate::KeyStatus;
use crate::store::{Batch, Cf, Storage, WriteSet};
use crate::subjects::{FieldDays, SUBJECT_FORMAT, SubjectEntry};
use crate::token::TokenId;
use crate::vault::{Inner, Vault};

/// Set once the counters count every record: at creation, or by the first open of
/// an older vault.
pub(crate) const COUNTED: &[u8] = b"inventory/counted";

const DAY_MS: u64 = 86_400_000;
/// Subjects counted per write when a vault of an earlier build is counted.
const COUNT_PAGE: usize = 2_000;
/// The subject entry format without per-field counts.
const FIRST_SUBJECT_FORMAT: u8 = 1;
const SUBJECTS_TOTAL: &[u8] = b"inv/subjects";
const ERASED_TOTAL: &[u8] = b"inv/erased";
/// Counters per field, under the field's id (a keyed hash of its name).
const RECORDS: &[u8] = b"inv/records/";
const SUBJECTS: &[u8] = b"inv/subjects/";
const DAYS: &[u8] = b"inv/day/";
/// `meta`: field id → the field's name, sealed under a vault key. So no file holds
/// a field name in clear once the last record of the field is erased.
const NAMES: &[u8] = b"inventory/field/";

type FieldId = [u8; 16];

fn field_id(index: &IndexKeys, field: &str) -> FieldId {
    index.tombstone_tag(domain::INVENTORY_FIELD, &[field.as_bytes()])
}

fn field_key(prefix: &[u8], id: &FieldId) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(id);
    key
}

/// Records of a field created on `day`: `inv/day/<field id><day>`.
fn day_key(id: &FieldId, day: u32) -> Vec<u8> {
    let mut key = field_key(DAYS, id);
    key.extend_from_slice(&day.to_be_bytes());
    key
}

/// The day (since the Unix epoch, UTC) of a time in milliseconds.
fn day_of(at: u64) -> u32 {
    u32::try_from(at / DAY_MS).unwrap_or(u32::MAX)
}

/// One counter a write changes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Count {
    SubjectsTotal,
    Erased,
    Records(String),
    Subjects(String),
    Day(String, u32),
}

/// The changes a write makes to the counters, added to its batch by [`write`](Self::write).
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counts: BTreeMap<Count, i64>,
    /// Fields that gained a subject: their sealed names are (re)written.
    named: BTreeSet<String>,
}

impl Tally {
    fn add(&mut self, count: Count, delta: i64) {
        *self.counts.entry(count).or_insert(0) += delta;
    }

    /// A live record of `field` created at `at` stored for the subject of `entry`
    /// (whose counts it updates).
    pub(crate) fn record_added(&mut self, entry: &mut SubjectEntry, field: &str, at: u64) {
        if entry.records == 0 {
            self.add(Count::SubjectsTotal, 1);
        }
        entry.records += 1;
        let day = day_of(at);
        let i = match entry.fields.iter().position(|f| f.field == field) {
            Some(i) => i,
            None => {
                entry.fields.push(FieldDays {
                    field: field.to_owned(),
                    days: Vec::new(),
                });
                self.add(Count::Subjects(field.to_owned()), 1);
                self.named.insert(field.to_owned());
                entry.fields.len() - 1
            }
        };
        let days = &mut entry.fields[i].days;
        match days.iter_mut().find(|(d, _)| *d == day) {
            Some((_, n)) => *n += 1,
            None => days.push((day, 1)),
        }
        self.add(Count::Records(field.to_owned()), 1);
        self.add(Count::Day(field.to_owned(), day), 1);
    }

    /// A live record of `field` created at `at` removed (deleted or expired).
    pub(crate) fn record_removed(&mut self, entry: &mut SubjectEntry, field: &str, at: u64) {
        entry.records = entry.records.saturating_sub(1);
        if entry.records == 0 {
            self.add(Count::SubjectsTotal, -1);
        }
        let day = day_of(at);
        if let Some(i) = entry.fields.iter().position(|f| f.field == field) {
            let days = &mut entry.fields[i].days;
            if let Some(j) = days.iter().position(|(d, _)| *d == day) {
                days[j].1 = days[j].1.saturating_sub(1);
                if days[j].1 == 0 {
                    days.swap_remove(j);
                }
            }
            if days.is_empty() {
                entry.fields.swap_remove(i);
                self.add(Count::Subjects(field.to_owned()), -1);
            }
        }
        self.add(Count::Records(field.to_owned()), -1);
        self.add(Count::Day(field.to_owned(), day), -1);
    }

    /// A live record stored again under its id (a deterministic token past its
    /// period): same field, new creation time.
    pub(crate) fn record_renewed(
        &mut self,
        entry: &mut SubjectEntry,
        field: &str,
        was: u64,
        now: u64,
    ) {
        self.record_removed(entry, field, was);
        self.record_added(entry, field, now);
    }

    /// The subject of `entry` erased, with every live record its entry counts.
    pub(crate) fn subject_erased(&mut self, entry: &SubjectEntry) {
        if entry.records > 0 {
            self.add(Count::SubjectsTotal, -1);
        }
        self.add(Count::Erased, 1);
        for f in &entry.fields {
            self.add(Count::Subjects(f.field.clone()), -1);
            for &(day, n) in &f.days {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                self.add(Count::Records(f.field.clone()), -n);
                self.add(Count::Day(f.field.clone(), day), -n);
            }
        }
    }

    /// Adds the changes to `batch`.
    pub(crate) fn write(self, index: &IndexKeys, batch: &mut Batch<'_>) -> Result<(), Error> {
        let mut ids: BTreeMap<&str, FieldId> = BTreeMap::new();
        for field in &self.named {
            let fid = field_id(index, field);
            let sealed = index.field_names.seal(&fid, field.as_bytes())?;
            batch.put(Cf::Meta, &field_key(NAMES, &fid), &sealed);
            ids.insert(field, fid);
        }
        for (count, delta) in &self.counts {
            if *delta == 0 {
                continue;
            }
            let of = |field: &str| {
                ids.get(field)
                    .copied()
                    .unwrap_or_else(|| field_id(index, field))
            };
            let key = match count {
                Count::SubjectsTotal => SUBJECTS_TOTAL.to_vec(),
                Count::Erased => ERASED_TOTAL.to_vec(),
                Count::Records(field) => field_key(RECORDS, &of(field)),
                Count::Subjects(field) => field_key(SUBJECTS, &of(field)),
                Count::Day(field, day) => day_key(&of(field), *day),
            };
            batch.add(&key, *delta);
        }
        Ok(())
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
        let counts = |prefix: &[u8]| -> Result<BTreeMap<FieldId, u64>, Error> {
            let mut out = BTreeMap::new();
            self.store.scan_prefix(Cf::Counters, prefix, |key, value| {
                let id: FieldId = key[prefix.len()..]
                    .try_into()
                    .map_err(|_| Error::Integrity)?;
                out.insert(id, non_negative(value));
                Ok(true)
            })?;
            Ok(out)
        };
        let records = counts(RECORDS)?;
        let subjects = counts(SUBJECTS)?;
        // Every field that ever had a record has its name; declared fields too.
        let mut names: BTreeMap<String, FieldId> = BTreeMap::new();
        self.store.scan_prefix(Cf::Meta, NAMES, |key, sealed| {
            let id: FieldId = key[NAMES.len()..]
                .try_into()
                .map_err(|_| Error::Integrity)?;
            let name = self.index.field_names.open(&id, sealed)?;
            let name = String::from_utf8(name.to_vec()).map_err(|_| Error::Integrity)?;
            names.insert(name, id);
            Ok(true)
        })?;
        let policy = &self.opts.policy;
        let mut declared: Vec<&str> = policy.retained_fields().collect();
        for purpose in policy.purposes() {
            if let Some(fields) = purpose.field_names() {
                declared.extend(fields.iter().map(String::as_str));
            }
        }
        for field in declared {
            names
                .entry(field.to_owned())
                .or_insert_with(|| field_id(&self.index, field));
        }
        let mut fields = Vec::with_capacity(names.len());
        for (field, id) in names {
            let held = records.get(&id).copied().unwrap_or(0);
            // A field of an erased subject alone keeps its name but no record.
            if held == 0 && !policy_names(policy, &field) {
                continue;
            }
            fields.push(FieldInventory {
                oldest_record_day: if held > 0 {
                    self.oldest_day(&id)?
                } else {
                    None
                },
                records: held,
                subjects: subjects.get(&id).copied().unwrap_or(0),
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

    /// The start of the first day with a live record of the field `id`.
    fn oldest_day(&self, id: &FieldId) -> Result<Option<u64>, Error> {
        let prefix = field_key(DAYS, id);
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
    /// inventory), once, at open: subject entries of the first format get their
    /// per-field counts and the counters their records, a page of subjects per
    /// write (an entry of the second format is counted), then the erasures, with
    /// the mark that the count is done. A count cut short goes on at the next
    /// open; replicas opening together share the work (each page expects the
    /// entries it converts, the mark expects to be absent).
    pub(crate) fn count_inventory(&self) -> Result<(), Error> {
        if self.store.get(Cf::Meta, COUNTED)?.is_some() {
            return Ok(());
        }
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .scan_after(Cf::Subjects, after.as_deref(), COUNT_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            self.retrying(|| self.count_page(&page))?;
        }
        self.retrying(|| {
            if self.store.get(Cf::Meta, COUNTED)?.is_some() {
                return Ok(());
            }
            let mut erased = 0;
            self.store.scan_prefix(Cf::Erasures, &[], |_, _| {
                erased += 1;
                Ok(true)
            })?;
            let mut batch = self.store.batch();
            batch.expect(Cf::Meta, COUNTED, None);
            let mut tally = Tally::default();
            tally.add(Count::Erased, erased);
            tally.write(&self.index, &mut batch)?;
            batch.put(Cf::Meta, COUNTED, &[1]);
            self.store.write_synced(batch)
        })
    }

    /// Counts the subjects of `page` whose entries are of the first format (as
    /// stored now: another replica may have counted them).
    fn count_page(&self, page: &[crate::store::KeyValue]) -> Result<(), Error> {
        let keys: Vec<&[u8]> = page.iter().map(|(k, _)| k.as_slice()).collect();
        let mut batch = self.store.batch();
        let mut tally = Tally::default();
        let mut any = false;
        for (key, stored) in keys.iter().zip(self.store.multi_get(Cf::Subjects, &keys)?) {
            let Some(value) = stored else { continue };
            if value.first() != Some(&FIRST_SUBJECT_FORMAT) {
                continue;
            }
            any = true;
            let mut entry = SubjectEntry::decode(&value)?;
            entry.records = 0;
            entry.fields.clear();
            for (field, at) in &self.records_of(&entry.sid)? {
                tally.record_added(&mut entry, field, *at);
            }
            batch.expect(Cf::Subjects, key, Some(&value));
            batch.put(Cf::Subjects, key, &encode(SUBJECT_FORMAT, &entry));
        }
        if !any {
            return Ok(());
        }
        tally.write(&self.index, &mut batch)?;
        self.store.write_synced(batch)
    }
}

/// Whether the policy names `field` (a retention period, or a purpose's fields).
fn policy_names(policy: &Policy, field: &str) -> bool {
    policy.retention_of(field).is_some()
        || policy
            .purposes()
            .any(|p| p.field_names().is_some_and(|f| f.contains(field)))
}

fn non_negative(value: &[u8]) -> u64 {
    let bytes: [u8; 8] = value.try_into().unwrap_or([0; 8]);
    non_negative_i64(i64::from_le_bytes(bytes))
}

fn non_negative_i64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
