//! A model test: random sequences of operations on a real vault (RocksDB on disk)
//! and on a plain in-memory model, which must agree after every step, and again
//! after the vault is closed and reopened. The sequences mix random and
//! deterministic tokens, rectification, deletion, erasure and its purge, time
//! passing a field's retention period and the purge of expired records, KEK
//! rotations (whole, or left half-way across reopens) and reopening.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{DAY, ManualClock};
use proptest::prelude::*;
use vault_core::{Durability, Error, Vault};

/// The field with a retention period, of this many days.
const RETAINED: &str = "f2";
const RETENTION_DAYS: u64 = 30;

#[derive(Debug, Clone)]
enum Op {
    Tokenize {
        subject: u8,
        field: u8,
        value: u8,
        deterministic: bool,
    },
    /// A deterministic tokenization made before, made again.
    Retokenize {
        pick: usize,
    },
    Detokenize {
        pick: usize,
    },
    Rectify {
        pick: usize,
        value: u8,
    },
    Delete {
        pick: usize,
    },
    Erase {
        subject: u8,
    },
    Export {
        subject: u8,
    },
    Purge,
    /// Time passes.
    Advance {
        days: u64,
    },
    PurgeExpired,
    /// A whole KEK rotation.
    Rotate,
    /// A rotation started and one batch of it done (it may already be under way).
    RotateStep,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        // Few values, so that deterministic tokens repeat (and meet their expiry).
        5 => (0..4u8, 0..3u8, 0..3u8, any::<bool>()).prop_map(|(subject, field, value, deterministic)| Op::Tokenize { subject, field, value, deterministic }),
        2 => any::<usize>().prop_map(|pick| Op::Retokenize { pick }),
        3 => any::<usize>().prop_map(|pick| Op::Detokenize { pick }),
        1 => (any::<usize>(), 0..6u8).prop_map(|(pick, value)| Op::Rectify { pick, value }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => (0..4u8).prop_map(|subject| Op::Erase { subject }),
        1 => (0..4u8).prop_map(|subject| Op::Export { subject }),
        1 => Just(Op::Purge),
        // Often to either side of the retention period.
        2 => prop_oneof![1..20u64, Just(RETENTION_DAYS - 1), Just(RETENTION_DAYS), Just(RETENTION_DAYS + 1)].prop_map(|days| Op::Advance { days }),
        1 => Just(Op::PurgeExpired),
        1 => Just(Op::Rotate),
        1 => Just(Op::RotateStep),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// Stored; past its retention period (answering *expired*) once `now` reaches
    /// `created_at` plus the period, if its field has one.
    Live {
        subject: u8,
        field: String,
        value: String,
        deterministic: bool,
        created_at: u64,
    },
    Deleted,
    Erased,
    /// Past its period and purged: a stub.
    Expired,
}

impl State {
    /// Live and not past its retention period at `now`.
    fn readable(&self, now: u64) -> bool {
        match self {
            State::Live {
                field, created_at, ..
            } => field != RETAINED || now < created_at + RETENTION_DAYS * DAY,
            _ => false,
        }
    }
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Vault {
    let opts = common::options()
        .durability(Durability::Relaxed)
        .clock(clock.clone())
        .retention(RETAINED, Duration::from_secs(RETENTION_DAYS * 86_400))
        .rotation_batch(2);
    common::open_vault(dir, &common::root(), opts).expect("open")
}

fn check(vault: &Vault, model: &BTreeMap<String, State>, now: u64) {
    for (token, state) in model {
        let got = vault.detokenize(token);
        match (state, got) {
            (State::Live { field, value, .. }, Ok(d)) if state.readable(now) => {
                assert_eq!(&d.field, field);
                assert_eq!(d.value.as_str(), Some(value.as_str()));
            }
            (State::Live { .. } | State::Expired, Err(Error::Expired)) if !state.readable(now) => {}
            (State::Deleted, Err(Error::NotFound)) | (State::Erased, Err(Error::Erased)) => {}
            (state, got) => panic!("model says {state:?} at {now}, vault says {got:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 32,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn vault_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = Arc::new(ManualClock::starting());
        let now = || clock.0.load(std::sync::atomic::Ordering::SeqCst);
        let mut vault = open(dir.path(), &clock);
        let mut model: BTreeMap<String, State> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let mut repeatable: Vec<(u8, u8, u8)> = Vec::new();
        let pick = |order: &Vec<String>, i: usize| (!order.is_empty()).then(|| order[i % order.len()].clone());
        for op in ops {
            let op = match op {
                Op::Retokenize { pick: i } if !repeatable.is_empty() => {
                    let (subject, field, value) = repeatable[i % repeatable.len()];
                    Op::Tokenize { subject, field, value, deterministic: true }
                }
                Op::Retokenize { .. } => continue,
                op => op,
            };
            match op {
                Op::Tokenize { subject, field, value, deterministic } => {
                    let (s, f, v) = (format!("subject-{subject}"), format!("f{field}"), format!("value-{value}"));
                    if deterministic {
                        repeatable.push((subject, field, value));
                    }
                    let token = if deterministic {
                        vault.tokenize_deterministic(&s, &f, &v)
                    } else {
                        vault.tokenize(&s, &f, &v)
                    }.expect("tokenize").to_string();
                    let live = State::Live { subject, field: f.clone(), value: v.clone(), deterministic, created_at: now() };
                    match model.get(&token) {
                        // A deterministic token repeats while its record is readable
                        // (it is never rectified); past its period, deleted or
                        // expired, the value is stored afresh.
                        Some(state) if state.readable(now()) => prop_assert!(deterministic),
                        Some(_) => {
                            prop_assert!(deterministic);
                            model.insert(token, live);
                        }
                        None => {
                            model.insert(token.clone(), live);
                            order.push(token);
                        }
                    }
                }
                Op::Retokenize { .. } => unreachable!("made a tokenization above"),
                Op::Detokenize { pick: i } => {
                    if let Some(t) = pick(&order, i) {
                        let single = BTreeMap::from([(t.clone(), model[&t].clone())]);
                        check(&vault, &single, now());
                    }
                }
                Op::Rectify { pick: i, value } => {
                    if let Some(t) = pick(&order, i) {
                        let v = format!("rectified-{value}");
                        let result = vault.rectify(&t, &v);
                        let readable = model[&t].readable(now());
                        match model.get_mut(&t) {
                            Some(State::Live { .. } | State::Expired) if !readable => prop_assert!(matches!(result, Err(Error::Expired)), "{result:?}"),
                            Some(State::Live { deterministic: true, .. }) => prop_assert!(matches!(result, Err(Error::DeterministicToken))),
                            Some(State::Live { value: mv, .. }) => { result.expect("rectify live"); *mv = v; }
                            Some(State::Deleted) => prop_assert!(matches!(result, Err(Error::NotFound))),
                            Some(State::Erased) => prop_assert!(matches!(result, Err(Error::Erased))),
                            Some(State::Expired) | None => unreachable!("not readable, and picked from the model"),
                        }
                    }
                }
                Op::Delete { pick: i } => {
                    if let Some(t) = pick(&order, i) {
                        let result = vault.delete(&t);
                        match model.get(&t) {
                            // Past its period but not yet purged: still deletable.
                            Some(State::Live { .. }) => { result.expect("delete live"); model.insert(t, State::Deleted); }
                            Some(State::Deleted) => prop_assert!(matches!(result, Err(Error::NotFound))),
                            Some(State::Erased) => prop_assert!(matches!(result, Err(Error::Erased))),
                            Some(State::Expired) => prop_assert!(matches!(result, Err(Error::Expired))),
                            None => unreachable!("picked from the model"),
                        }
                    }
                }
                Op::Erase { subject } => {
                    let receipt = vault.erase(&format!("subject-{subject}")).expect("erase");
                    let mut records = 0;
                    for state in model.values_mut() {
                        if matches!(state, State::Live { subject: s, .. } if *s == subject) {
                            *state = State::Erased;
                            records += 1;
                        }
                    }
                    prop_assert_eq!(receipt.records, records);
                    // A deleted record of an erased subject: still not found; an
                    // expired one: still expired.
                }
                Op::Export { subject } => {
                    let export = vault.export(&format!("subject-{subject}")).expect("export");
                    let mut expected: Vec<(String, String, String)> = model.iter().filter_map(|(t, s)| match s {
                        State::Live { subject: ms, field, value, .. } if *ms == subject && s.readable(now()) => Some((t.clone(), field.clone(), value.clone())),
                        _ => None,
                    }).collect();
                    expected.sort();
                    let mut got: Vec<(String, String, String)> = export.records.iter()
                        .map(|r| (r.token.to_string(), r.field.clone(), r.value.as_str().unwrap_or("").to_string()))
                        .collect();
                    got.sort();
                    prop_assert_eq!(got, expected);
                }
                Op::Purge => {
                    prop_assert!(vault.purge_now().expect("purge").verified);
                }
                Op::Advance { days } => clock.advance_days(days),
                Op::PurgeExpired => {
                    let report = vault.purge_expired().expect("purge expired");
                    prop_assert!(report.verified);
                    let mut records = 0;
                    for state in model.values_mut() {
                        if matches!(state, State::Live { .. }) && !state.readable(now()) {
                            *state = State::Expired;
                            records += 1;
                        }
                    }
                    prop_assert_eq!(report.records, records);
                }
                Op::Rotate => {
                    let status = vault.rotate_kek().expect("rotate");
                    prop_assert!(!status.rotation_in_progress);
                    prop_assert_eq!(status.versions.len(), 1);
                }
                Op::RotateStep => {
                    vault.start_kek_rotation().expect("start rotation");
                    vault.kek_rotation_step().expect("rotation step");
                }
                Op::Reopen => {
                    vault.close().expect("close");
                    vault = open(dir.path(), &clock);
                }
            }
        }
        check(&vault, &model, now());
        vault.close().expect("close");
        let vault = open(dir.path(), &clock);
        check(&vault, &model, now());
        // A rotation left half-way finishes, and changes no answer.
        prop_assert!(!vault.resume_kek_rotation().expect("resume").rotation_in_progress);
        check(&vault, &model, now());
    }
}

/// Found by the model: a deterministic tokenization that stores its value afresh
/// over a record past its period (not yet purged) replaces that record, and the
/// subject's count of records (which the erasure receipt reports) stays the same.
#[test]
fn a_value_stored_again_over_an_expired_record_is_counted_once() -> common::TestResult {
    let dir = tempfile::tempdir()?;
    let clock = Arc::new(ManualClock::starting());
    let vault = open(dir.path(), &clock);
    let token = vault.tokenize_deterministic("s", RETAINED, "v")?;
    clock.advance_days(RETENTION_DAYS);
    assert!(matches!(
        vault.detokenize(&token.to_string()),
        Err(Error::Expired)
    ));
    assert_eq!(vault.tokenize_deterministic("s", RETAINED, "v")?, token);
    assert_eq!(vault.erase("s")?.records, 1);
    Ok(())
}
