//! A model test: random sequences of operations on a real vault (RocksDB on disk)
//! and on a plain in-memory model, which must agree after every step, and again
//! after the vault is closed and reopened.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use vault_core::{Durability, Error, PurgePolicy, RootKey, Vault, VaultOptions};

#[derive(Debug, Clone)]
enum Op {
    Tokenize {
        subject: u8,
        field: u8,
        value: u8,
        deterministic: bool,
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
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..4u8, 0..3u8, 0..6u8, any::<bool>()).prop_map(|(subject, field, value, deterministic)| Op::Tokenize { subject, field, value, deterministic }),
        3 => any::<usize>().prop_map(|pick| Op::Detokenize { pick }),
        1 => (any::<usize>(), 0..6u8).prop_map(|(pick, value)| Op::Rectify { pick, value }),
        1 => any::<usize>().prop_map(|pick| Op::Delete { pick }),
        1 => (0..4u8).prop_map(|subject| Op::Erase { subject }),
        1 => (0..4u8).prop_map(|subject| Op::Export { subject }),
        1 => Just(Op::Purge),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Live {
        subject: u8,
        field: String,
        value: String,
        deterministic: bool,
    },
    Deleted,
    Erased,
}

fn open(dir: &std::path::Path) -> Vault {
    let opts = VaultOptions::default()
        .background_worker(false)
        .durability(Durability::Relaxed)
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)));
    Vault::open(dir, &RootKey::from_bytes(&[3; 32]).expect("key"), opts).expect("open")
}

fn check(vault: &Vault, model: &BTreeMap<String, State>) {
    for (token, state) in model {
        let got = vault.detokenize(token);
        match (state, got) {
            (State::Live { field, value, .. }, Ok(d)) => {
                assert_eq!(&d.field, field);
                assert_eq!(d.value.as_str(), Some(value.as_str()));
            }
            (State::Deleted, Err(Error::NotFound)) | (State::Erased, Err(Error::Erased)) => {}
            (state, got) => panic!("model says {state:?}, vault says {got:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn vault_agrees_with_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut vault = open(dir.path());
        let mut model: BTreeMap<String, State> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let pick = |order: &Vec<String>, i: usize| (!order.is_empty()).then(|| order[i % order.len()].clone());
        for op in ops {
            match op {
                Op::Tokenize { subject, field, value, deterministic } => {
                    let (s, f, v) = (format!("subject-{subject}"), format!("f{field}"), format!("value-{value}"));
                    let token = if deterministic {
                        vault.tokenize_deterministic(&s, &f, &v)
                    } else {
                        vault.tokenize(&s, &f, &v)
                    }.expect("tokenize").to_string();
                    let live = State::Live { subject, field: f.clone(), value: v.clone(), deterministic };
                    match model.get(&token) {
                        // A deterministic token repeats (and is never rectified).
                        Some(State::Live { .. }) => prop_assert!(deterministic),
                        _ => {
                            model.insert(token.clone(), live);
                            order.push(token);
                        }
                    }
                }
                Op::Detokenize { pick: i } => {
                    if let Some(t) = pick(&order, i) {
                        let single = BTreeMap::from([(t.clone(), model[&t].clone())]);
                        check(&vault, &single);
                    }
                }
                Op::Rectify { pick: i, value } => {
                    if let Some(t) = pick(&order, i) {
                        let v = format!("rectified-{value}");
                        let result = vault.rectify(&t, &v);
                        match model.get_mut(&t) {
                            Some(State::Live { deterministic: true, .. }) => prop_assert!(matches!(result, Err(Error::DeterministicToken))),
                            Some(State::Live { value: mv, .. }) => { result.expect("rectify live"); *mv = v; }
                            Some(State::Deleted) => prop_assert!(matches!(result, Err(Error::NotFound))),
                            Some(State::Erased) => prop_assert!(matches!(result, Err(Error::Erased))),
                            None => unreachable!("picked from the model"),
                        }
                    }
                }
                Op::Delete { pick: i } => {
                    if let Some(t) = pick(&order, i) {
                        let result = vault.delete(&t);
                        match model.get(&t) {
                            Some(State::Live { .. }) => { result.expect("delete live"); model.insert(t, State::Deleted); }
                            Some(State::Deleted) => prop_assert!(matches!(result, Err(Error::NotFound))),
                            Some(State::Erased) => prop_assert!(matches!(result, Err(Error::Erased))),
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
                    // A deleted record of an erased subject: still not found.
                }
                Op::Export { subject } => {
                    let export = vault.export(&format!("subject-{subject}")).expect("export");
                    let mut expected: Vec<(String, String, String)> = model.iter().filter_map(|(t, s)| match s {
                        State::Live { subject: ms, field, value, .. } if *ms == subject => Some((t.clone(), field.clone(), value.clone())),
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
                Op::Reopen => {
                    vault.close().expect("close");
                    vault = open(dir.path());
                }
            }
        }
        check(&vault, &model);
        vault.close().expect("close");
        let vault = open(dir.path());
        check(&vault, &model);
    }
}
