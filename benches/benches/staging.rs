//! A staging vault built from a loaded vault, next to the vault's own export of
//! the same records, in one run: `VAULT_STAGING_RECORDS` records (default
//! 1 000 000; 10 per subject over five fields: e-mail, name, phone, date of birth,
//! a note), loaded and settled.
//!
//! 1. The export of every subject (`Vault::export`), one after the other: what it
//!    costs to read and decrypt every record (the ceiling of a copy).
//! 2. `pseudonymize` of the same vault into a new directory: read, decrypt, fake,
//!    encrypt under new keys and write every record, with its aliases.
//!
//! Prints records per second of each and their ratio. Run with
//! `cargo bench -p vault-benches --bench staging`.

use std::time::{Duration, Instant};

use vault_core::{
    Durability, FakeFields, PurgePolicy, RootKey, TokenizeRequest, Vault, VaultOptions,
};

const PER_SUBJECT: usize = 10;

fn records() -> usize {
    std::env::var("VAULT_STAGING_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn options() -> VaultOptions {
    VaultOptions::default()
        .background_worker(false)
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)))
        .block_cache_bytes(vault_core::internal::SERVER_BLOCK_CACHE)
}

fn subject(i: usize) -> String {
    format!("customer-{i:08}")
}

/// The `n`th record of a subject: (field, value), values of realistic shapes.
fn record(subject: usize, n: usize) -> (&'static str, String) {
    match n % 5 {
        0 => ("email", format!("person{subject}.{n}@mail.example")),
        1 => ("full_name", format!("Given{subject} Family{n}")),
        2 => (
            "phone",
            format!("+44 20 {:04} {:04}", subject % 10_000, n * 97 % 10_000),
        ),
        3 => (
            "date_of_birth",
            format!(
                "19{:02}-{:02}-{:02}",
                40 + subject % 60,
                1 + n % 12,
                1 + subject % 28
            ),
        ),
        _ => (
            "note",
            format!("Called on {n}: asked about invoice {subject} and delivery."),
        ),
    }
}

fn main() {
    let total = records();
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let prod = tmp.path().join("prod");
    let started = Instant::now();
    {
        let vault = Vault::open(
            &prod,
            &RootKey::from_bytes(&[1; 32]).expect("key"),
            options().durability(Durability::Relaxed),
        )
        .expect("open");
        let rows: Vec<(String, &'static str, String)> = (0..total)
            .map(|i| {
                let (field, value) = record(i / PER_SUBJECT, i % PER_SUBJECT);
                (subject(i / PER_SUBJECT), field, value)
            })
            .collect();
        for chunk in rows.chunks(1000) {
            let items: Vec<TokenizeRequest<'_>> = chunk
                .iter()
                .map(|(s, f, v)| TokenizeRequest::new(s, f, v.as_bytes()))
                .collect();
            vault.tokenize_batch(&items).expect("load");
        }
        vault_core::internal::compact(&vault).expect("settle");
        vault.close().expect("close");
    }
    println!(
        "loaded {total} records in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let vault = Vault::open(
        &prod,
        &RootKey::from_bytes(&[1; 32]).expect("key"),
        options(),
    )
    .expect("open");
    let subjects = total.div_ceil(PER_SUBJECT);
    let started = Instant::now();
    let mut exported = 0;
    for s in 0..subjects {
        exported += vault.export(&subject(s)).expect("export").records.len();
    }
    let export_took = started.elapsed();
    assert_eq!(exported, total);

    let staging = tmp.path().join("staging");
    let started = Instant::now();
    let report = vault_core::pseudonymize(
        &vault,
        &staging,
        &RootKey::from_bytes(&[2; 32]).expect("key"),
        options().durability(Durability::Relaxed),
        &FakeFields::default(),
        None,
        |_, _| {},
    )
    .expect("pseudonymize");
    let took = started.elapsed();
    assert_eq!(report.records as usize, total);

    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!();
    println!("| {total} records | time | records/s |");
    println!("|---|---|---|");
    println!(
        "| export of every subject (the ceiling) | {:.1} s | {:.0} |",
        export_took.as_secs_f64(),
        rate(export_took)
    );
    println!(
        "| pseudonymize into a staging vault | {:.1} s | {:.0} |",
        took.as_secs_f64(),
        rate(took)
    );
    println!(
        "| ratio (export time / pseudonymize time) | {:.2} | |",
        export_took.as_secs_f64() / took.as_secs_f64()
    );
}
