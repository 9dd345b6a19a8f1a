//! Migration of a vault from its directory (RocksDB) into PostgreSQL, keys still
//! sealed: every stored row is copied as it is (the header with its sealed keyring,
//! the wrapped keys, the sealed records, the audit trail and its checkpoint), so
//! the vault in PostgreSQL is the same vault: same id, same root key, same tokens.
//!
//! The target schema is marked unfinished from the first row to the last check, and
//! a vault is not opened from a schema so marked: a migration cut short is run
//! again (it copies everything again, over what it copied before), never served
//! half-copied. Then every family is counted on both sides, and a sample of records
//! is decrypted through both vaults and compared.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::Error;
use crate::header::{HEADER_KEY, Header};
use crate::keys::RootKey;
use crate::options::VaultOptions;
use crate::records::{RECORD_FORMAT, StoredRecord};
use crate::store::{Cf, PgStore, PostgresConfig, Storage, WriteSet};
use crate::vault::Vault;

/// The mark of a migration under way in the target schema's `meta`.
pub(crate) const MIGRATING: &[u8] = b"migration/unfinished";
/// The backups' erasure-journal position, left behind: the backups stay with the
/// directory (a vault on PostgreSQL is backed up with the cluster).
const LEFT_BEHIND: [&[u8]; 1] = [crate::backup::JOURNAL_SEQ];
/// Rows copied per transaction.
const CHUNK: usize = 2000;
/// Records decrypted through both vaults and compared, at most.
const SAMPLE: usize = 200;

/// What a migration copied and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MigrationReport {
    /// Rows copied, per family (RocksDB column family, PostgreSQL table), each
    /// counted again in PostgreSQL after the copy.
    pub rows: BTreeMap<&'static str, u64>,
    /// Live records decrypted through both vaults and found equal.
    pub records_compared: u64,
    /// The schema the vault now lives in.
    pub schema: String,
}

/// Copies the vault in `from` (closed: this opens it) into the PostgreSQL schema
/// `to` names, which must hold no vault (or the marked remains of a migration of
/// this same vault that did not finish). The directory is left as it was, apart
/// from read events a killed process had staged, which opening it commits first.
/// Everything is checked before the mark comes off; then the vault opens with
/// [`Vault::open_postgres`] and the same root key.
pub fn migrate_to_postgres(
    from: &Path,
    to: &PostgresConfig,
    root: &RootKey,
    opts: VaultOptions,
) -> Result<MigrationReport, Error> {
    let source = Vault::open(
        from,
        root,
        opts.clone()
            .create_if_missing(false)
            .background_worker(false),
    )?;
    let header = Header::read(from)?;
    let (target, _) = PgStore::open(to, opts.durability, true)?;
    let header_bytes = header.to_bytes()?;
    let found = target.get(Cf::Meta, HEADER_KEY)?;
    match &found {
        None => {}
        // Resumed: the same vault's header, and the mark still there. What the
        // earlier run copied goes (the directory may have changed since).
        Some(found) if *found == header_bytes && target.get(Cf::Meta, MIGRATING)?.is_some() => {}
        Some(_) => {
            return Err(Error::InvalidOption(
                "the PostgreSQL schema already holds a vault: migrate into an empty schema",
            ));
        }
    }
    // Emptied, marked and given the header in one transaction, and only if no
    // vault was created there meanwhile: a crash leaves the schema as it was or
    // marked, never half-cleared and unmarked.
    target
        .reset(
            HEADER_KEY,
            found.as_deref(),
            &[(MIGRATING, b""), (HEADER_KEY, &header_bytes)],
        )
        .map_err(|e| match e {
            Error::Conflict => Error::InvalidOption(
                "the PostgreSQL schema changed while the migration began: run it again",
            ),
            e => e,
        })?;

    let store = &source.inner.store;
    let mut rows = BTreeMap::new();
    let mut records = Vec::new();
    for cf in Cf::ALL {
        let mut copied = 0u64;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.scan_after(cf, after.as_deref(), CHUNK)?;
            let mut batch = target.batch();
            for (key, value) in &page {
                if cf == Cf::Meta && (LEFT_BEHIND.contains(&key.as_slice()) || key == HEADER_KEY) {
                    continue;
                }
                if cf == Cf::Counters {
                    let n = value
                        .as_slice()
                        .try_into()
                        .map(i64::from_le_bytes)
                        .map_err(|_| Error::Integrity)?;
                    // Numbers there: added to none.
                    batch.add(key, n);
                } else {
                    batch.put(cf, key, value);
                }
                if cf == Cf::Records && records.len() < SAMPLE * 8 {
                    records.push(key.clone());
                }
                copied += 1;
            }
            target.write_synced(batch)?;
            match page.last() {
                Some((key, _)) if page.len() == CHUNK => after = Some(key.clone()),
                _ => break,
            }
        }
        rows.insert(cf.name(), copied);
    }

    // Counted again on the far side.
    for cf in Cf::ALL {
        let mut expected = rows[cf.name()];
        if cf == Cf::Meta {
            // The header and the mark, written first.
            expected += 2;
        }
        let found = target.count(cf)?;
        if found != expected {
            return Err(Error::Storage(crate::error::StorageError(format!(
                "migration check: {} holds {found} rows in PostgreSQL, {expected} were copied",
                cf.name()
            ))));
        }
    }
    drop(target);

    // The vault opens there, and a sample of its records reads the same.
    // The backups stay with the directory.
    let mut there = opts.background_worker(false);
    there.backups = None;
    let migrated = Vault::open_postgres_as(to, root, there, true)?;
    let mut compared = 0u64;
    let step = (records.len() / SAMPLE).max(1);
    for key in records.iter().step_by(step) {
        let id: crate::token::TokenId = key.as_slice().try_into().map_err(|_| Error::Integrity)?;
        let here = plaintext(&source, &id)?;
        let there = plaintext(&migrated, &id)?;
        if here != there {
            return Err(Error::Integrity);
        }
        if here.is_some() {
            compared += 1;
        }
    }
    let mut done = migrated.inner.store.batch();
    done.delete(Cf::Meta, MIGRATING);
    migrated.inner.store.write_synced(done)?;
    migrated.close()?;
    source.close()?;
    Ok(MigrationReport {
        rows,
        records_compared: compared,
        schema: to.schema_name().to_owned(),
    })
}

/// A live record's value as `vault` decrypts it, `None` for a stub; unaudited (a
/// check of the copy, not a read of personal data for anyone).
fn plaintext(
    vault: &Vault,
    id: &crate::token::TokenId,
) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, Error> {
    let inner = &vault.inner;
    let Some(bytes) = inner.store.get(Cf::Records, id)? else {
        return Ok(None);
    };
    if !matches!(
        crate::codec::decode(RECORD_FORMAT, &bytes)?,
        StoredRecord::Live(_)
    ) {
        return Ok(None);
    }
    match inner.live_record(id, &bytes) {
        Ok((record, dek)) => Ok(Some(record.open(&inner.vault_id, id, &dek.aead)?)),
        // A record of a subject erased and not purged yet.
        Err(Error::Erased) => Ok(None),
        Err(e) => Err(e),
    }
}
