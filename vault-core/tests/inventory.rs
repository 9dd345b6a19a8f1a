//! The data inventory: its counts against a model of what the vault holds, after
//! random tokenizations, deletions, erasures, expiries and restarts; and a vault
//! written before the inventory existed, counted at its first open.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{DAY, ManualClock, TestResult, open_vault, options, root};
use vault_core::{Inventory, LawfulBasis, Purpose, TokenizeRequest, Vault, VaultOptions};

const FIELDS: [&str; 3] = ["email", "phone", "note"];
const SUBJECTS: usize = 6;

fn opts(clock: &Arc<ManualClock>) -> VaultOptions {
    options()
        .clock(clock.clone())
        .retention("phone", Duration::from_millis(10 * DAY))
        .purpose(
            Purpose::new("support", LawfulBasis::Contract)
                .fields(["email", "phone"])
                .masked(true),
        )
        .purpose(Purpose::new("billing", LawfulBasis::LegalObligation).fields(["email"]))
}

/// What the vault holds, as the test did it.
#[derive(Default)]
struct Model {
    /// Live records: token → (subject, field, created at).
    live: BTreeMap<String, (usize, &'static str, u64)>,
    /// Subjects whose instance exists (tokenized since their last erasure).
    exists: BTreeSet<usize>,
    erased: u64,
}

impl Model {
    fn check(&self, inventory: &Inventory, step: &str) {
        let mut records: HashMap<&str, u64> = HashMap::new();
        let mut subjects: HashMap<&str, BTreeSet<usize>> = HashMap::new();
        let mut oldest: HashMap<&str, u64> = HashMap::new();
        let mut holders = BTreeSet::new();
        for (subject, field, at) in self.live.values() {
            *records.entry(field).or_default() += 1;
            subjects.entry(field).or_default().insert(*subject);
            let day = at / DAY * DAY;
            let o = oldest.entry(field).or_insert(day);
            *o = (*o).min(day);
            holders.insert(*subject);
        }
        for field in FIELDS {
            // A field never stored nor declared is not listed.
            let Some(found) = inventory.fields.iter().find(|f| f.field == field) else {
                assert!(!records.contains_key(field), "{step}: {field} listed");
                continue;
            };
            assert_eq!(
                found.records,
                records.get(field).copied().unwrap_or(0),
                "{step}: {field} records"
            );
            assert_eq!(
                found.subjects,
                subjects.get(field).map_or(0, |s| s.len() as u64),
                "{step}: {field} subjects"
            );
            assert_eq!(
                found.oldest_record_day,
                oldest.get(field).copied(),
                "{step}: {field} oldest"
            );
        }
        assert_eq!(inventory.records, self.live.len() as u64, "{step}: records");
        assert_eq!(inventory.subjects, holders.len() as u64, "{step}: subjects");
        assert_eq!(inventory.erased_subjects, self.erased, "{step}: erased");
    }
}

/// A small deterministic generator (xorshift), so a failing sequence can be rerun.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn run(seed: u64) -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let mut vault = open_vault(dir.path(), &root(), opts(&clock))?;
    let mut model = Model::default();
    let mut rng = Rng(seed);
    for step in 0..160 {
        let now = clock.0.load(std::sync::atomic::Ordering::SeqCst);
        let subject = rng.below(SUBJECTS);
        let name = format!("subject-{subject}");
        match rng.below(10) {
            0..=3 => {
                let field = FIELDS[rng.below(FIELDS.len())];
                let value = format!("v{}", rng.below(4));
                let item = TokenizeRequest::new(&name, field, value.as_bytes());
                let deterministic = rng.below(3) == 0;
                let item = if deterministic {
                    item.deterministic()
                } else {
                    item
                };
                let token = vault.tokenize_batch(&[item])?.remove(0).to_string();
                model.exists.insert(subject);
                let expired = |at: u64| field == "phone" && at + 10 * DAY <= now;
                match model.live.get_mut(&token) {
                    // Handed out again; stored afresh if it was past its period.
                    Some(entry) if expired(entry.2) => entry.2 = now,
                    Some(_) => {}
                    None => {
                        model.live.insert(token, (subject, field, now));
                    }
                }
            }
            4 => {
                let mine: Vec<String> = model
                    .live
                    .iter()
                    .filter(|(_, (s, f, at))| {
                        *s == subject && !(*f == "phone" && at + 10 * DAY <= now)
                    })
                    .map(|(t, _)| t.clone())
                    .collect();
                if let Some(token) = mine.get(rng.below(mine.len().max(1))) {
                    vault.delete(token)?;
                    model.live.remove(token);
                }
            }
            5 => {
                vault.erase(&name)?;
                if model.exists.remove(&subject) {
                    model.erased += 1;
                }
                model.live.retain(|_, (s, _, _)| *s != subject);
            }
            6 => clock.advance_days(1 + rng.below(4) as u64),
            7 => {
                vault.purge_expired()?;
                model
                    .live
                    .retain(|_, (_, f, at)| !(*f == "phone" && *at + 10 * DAY <= now));
            }
            8 => {
                drop(vault);
                vault = open_vault(dir.path(), &root(), opts(&clock))?;
            }
            _ => {
                vault.purge_now()?;
            }
        }
        model.check(&vault.inventory()?, &format!("seed {seed} step {step}"));
    }
    Ok(())
}

#[test]
fn counts_match_a_model_through_writes_erasures_expiries_and_restarts() -> TestResult {
    for seed in [1, 7, 42, 1_000_003, 0x5eed] {
        run(seed)?;
    }
    Ok(())
}

#[test]
fn fields_show_their_purposes_retention_and_the_vault_its_keys() -> TestResult {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let vault = open_vault(dir.path(), &root(), opts(&clock))?;
    vault.tokenize("a", "email", "a@x.example")?;
    vault.tokenize("a", "shoe_size", "44")?;
    vault.start_kek_rotation()?;
    let inventory = vault.inventory()?;
    let names: Vec<&str> = inventory.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(
        names,
        ["email", "phone", "shoe_size"],
        "counted and declared fields, by name"
    );
    let email = &inventory.fields[0];
    let purposes: Vec<(&str, LawfulBasis, bool)> = email
        .purposes
        .iter()
        .map(|p| (p.purpose.as_str(), p.basis, p.masked))
        .collect();
    assert_eq!(
        purposes,
        [
            ("billing", LawfulBasis::LegalObligation, false),
            ("support", LawfulBasis::Contract, true)
        ]
    );
    assert_eq!(email.retention, None);
    assert_eq!(
        inventory.fields[1].retention,
        Some(Duration::from_millis(10 * DAY))
    );
    assert_eq!(inventory.fields[1].records, 0);
    assert_eq!(inventory.fields[1].oldest_record_day, None);
    assert!(
        inventory.fields[2].purposes.is_empty(),
        "no purpose reads shoe_size"
    );
    assert_eq!(inventory.kek_versions, [1, 2]);
    assert_eq!(inventory.active_kek_version, 2);
    assert_eq!(inventory.backups, None, "no backups configured");
    assert_eq!(inventory.pending_purges, 0);
    vault.erase("a")?;
    let inventory = vault.inventory()?;
    assert_eq!(inventory.pending_purges, 1);
    assert_eq!(inventory.erased_subjects, 1);
    Ok(())
}

/// A stored key and value, read raw.
type KeyValue = (Box<[u8]>, Box<[u8]>);

/// A subject entry as the first format stored it: version 1, then the storage
/// id, creation time and record count (postcard: varints), without the per-field
/// counts that follow in format 2.
fn first_format(entry: &[u8]) -> Vec<u8> {
    let mut at = 1 + 16;
    for _ in 0..2 {
        while entry[at] & 0x80 != 0 {
            at += 1;
        }
        at += 1;
    }
    let mut old = vec![1];
    old.extend_from_slice(&entry[1..at]);
    old
}

#[test]
fn a_vault_written_before_the_inventory_is_counted_at_its_first_open() -> TestResult {
    rocksdb_only!();
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let expected = {
        let vault: Vault = open_vault(dir.path(), &root(), opts(&clock))?;
        for s in 0..20 {
            let name = format!("s{s}");
            vault.tokenize(&name, "email", format!("{s}@x.example"))?;
            if s % 2 == 0 {
                vault.tokenize(&name, "note", "hello")?;
            }
            clock.advance_days(1);
        }
        vault.erase("s3")?;
        // More subjects than the count converts in one write.
        let names: Vec<String> = (0..4_500).map(|i| format!("bulk-{i}")).collect();
        for chunk in names.chunks(500) {
            let items: Vec<TokenizeRequest<'_>> = chunk
                .iter()
                .map(|n| TokenizeRequest::new(n, "email", b"bulk@x.example"))
                .collect();
            vault.tokenize_batch(&items)?;
        }
        vault.inventory()?
    };
    // What an older build left: no counters, no mark, subject entries of format 1.
    {
        let db = common::raw_db(dir.path());
        let counters = db.cf_handle("counters").expect("counters");
        let keys: Vec<Box<[u8]>> = db
            .iterator_cf(counters, rocksdb::IteratorMode::Start)
            .map(|kv| kv.expect("read").0)
            .filter(|k| k.starts_with(b"inv/"))
            .collect();
        assert!(!keys.is_empty());
        for key in keys {
            db.delete_cf(counters, key)?;
        }
        let meta = db.cf_handle("meta").expect("meta");
        db.delete_cf(meta, b"inventory/counted")?;
        let subjects = db.cf_handle("subjects").expect("subjects");
        let entries: Vec<KeyValue> = db
            .iterator_cf(subjects, rocksdb::IteratorMode::Start)
            .map(|kv| kv.expect("read"))
            .collect();
        for (key, value) in entries {
            assert_eq!(value[0], 2);
            db.put_cf(subjects, key, first_format(&value))?;
        }
    }
    let vault = open_vault(dir.path(), &root(), opts(&clock))?;
    let counted = vault.inventory()?;
    assert_eq!(counted.fields, expected.fields);
    assert_eq!(counted.records, 29 + 4_500);
    assert_eq!(counted.subjects, 19 + 4_500);
    assert_eq!(counted.erased_subjects, 1);
    // The counts go on from there.
    vault.erase("s0")?;
    let after = vault.inventory()?;
    assert_eq!(after.records, 27 + 4_500);
    assert_eq!(after.subjects, 18 + 4_500);
    Ok(())
}
