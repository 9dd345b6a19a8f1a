//! The vault's main job on its embedded default: a local directory, no other service.
//!
//! Tokenizes a few records of two customers, detokenizes them, exports one customer,
//! erases them (with an immediate, verified purge) and shows that their tokens then
//! answer "erased" while the other customer's still work.
//!
//! Usage: `cargo run -p vault-core --example demo -- [DATA_DIR]` (default `./vault-data`).
//! The root key is the passphrase in `VAULT_PASSPHRASE`; without it a fixed demo
//! passphrase is used, which is fine for a demo and never for real data.

use std::time::Instant;

use vault_core::{Error, PurgePolicy, RootKey, TokenizeRequest, Vault, VaultOptions};

const DEMO_PASSPHRASE: &str = "demo passphrase - not for production";

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            eprintln!("  caused by: {s}");
            source = s.source();
        }
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "vault-data".into());
    let root = match std::env::var("VAULT_PASSPHRASE") {
        Ok(p) if !p.is_empty() => RootKey::passphrase(p),
        _ => {
            eprintln!("WARNING: VAULT_PASSPHRASE is not set; using the fixed demo passphrase.");
            eprintln!("WARNING: this is a demo setup, not for production data.");
            RootKey::passphrase(DEMO_PASSPHRASE)
        }
    };
    let opts = VaultOptions::default().purge_policy(PurgePolicy::Immediate);
    let started = Instant::now();
    let vault = Vault::open(&dir, &root, opts)?;
    println!(
        "opened vault in {dir} ({} ms, Argon2id included)",
        started.elapsed().as_millis()
    );

    let ada = "customer-ada";
    let alan = "customer-alan";
    let tokens = vault.tokenize_batch(&[
        TokenizeRequest::new(ada, "email", b"ada@example.com"),
        TokenizeRequest::new(ada, "phone", b"+44 20 7946 0018"),
        TokenizeRequest::new(ada, "name", b"Ada Lovelace"),
        TokenizeRequest::new(alan, "email", b"alan@example.com"),
    ])?;
    let email_lookup = vault.tokenize_deterministic(ada, "email_lookup", "ada@example.com")?;
    println!("\ntokenized 4 values in one atomic batch; the application stores only these:");
    for t in &tokens {
        println!("  {t}");
    }
    println!("deterministic token for ada's e-mail (same input, same token): {email_lookup}");

    println!("\ndetokenize:");
    for t in &tokens {
        let d = vault.detokenize(&t.to_string())?;
        println!(
            "  {t} -> {} = {}",
            d.field,
            d.value.as_str().unwrap_or("<binary>")
        );
    }

    let rectified = tokens[1].to_string();
    vault.rectify(&rectified, "+44 20 7946 0999")?;
    println!(
        "\nrectified ada's phone; same token now reads {}",
        shown(&vault, &rectified)
    );

    let export = vault.export(ada)?;
    println!("\nexport of {ada} ({} records):", export.records.len());
    for r in &export.records {
        println!(
            "  {} {} = {}",
            r.token,
            r.field,
            r.value.as_str().unwrap_or("<binary>")
        );
    }

    let receipt = vault.erase(ada)?;
    println!(
        "\nerased {ada}: subject ref {}, {} records shredded, purge {:?}",
        receipt
            .subject_ref
            .map(|r| r.to_string())
            .unwrap_or_default(),
        receipt.records,
        receipt.purge
    );
    println!("after erasure:");
    for t in &tokens {
        println!("  {t} -> {}", shown(&vault, &t.to_string()));
    }
    println!(
        "  export of {ada}: {} records",
        vault.export(ada)?.records.len()
    );

    let status = vault.key_status()?;
    println!(
        "\nkeys: active KEK version {}, {} erasures awaiting purge",
        status.active_version, status.pending_purges
    );
    vault.close()?;
    println!("closed. Run again: the vault reopens from {dir}.");
    Ok(())
}

fn shown(vault: &Vault, token: &str) -> String {
    match vault.detokenize(token) {
        Ok(d) => d.value.as_str().unwrap_or("<binary>").to_string(),
        Err(e) => format!("<{e}>"),
    }
}
