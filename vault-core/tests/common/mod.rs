//! Helpers shared by the integration tests: opening test vaults, reading the raw
//! RocksDB data the way an attacker with the disk would, and scanning files.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use vault_core::{Clock, Durability, KdfParams, PurgePolicy, RootKey, Vault, VaultOptions};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub const ROOT: [u8; 32] = [7; 32];

pub fn root() -> RootKey {
    RootKey::from_bytes(&ROOT).expect("32 bytes")
}

/// Options for tests: no background worker (tests drive purges), no compression
/// (so file scans are meaningful), statistics on, cheapest allowed Argon2id.
pub fn options() -> VaultOptions {
    VaultOptions::default()
        .background_worker(false)
        .compression(false)
        .statistics(true)
        .kdf_params(KdfParams::MINIMUM)
        .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)))
}

pub const DAY: u64 = 86_400_000;
pub const START: u64 = 1_800_000_000_000;

/// A clock tests move by hand.
#[derive(Debug)]
pub struct ManualClock(pub AtomicU64);

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ManualClock {
    pub fn starting() -> ManualClock {
        ManualClock(AtomicU64::new(START))
    }

    pub fn advance_days(&self, days: u64) {
        self.0.fetch_add(days * DAY, Ordering::SeqCst);
    }
}

pub fn relaxed() -> VaultOptions {
    options().durability(Durability::Relaxed)
}

pub fn open(dir: &Path) -> Vault {
    open_vault(dir, &root(), options()).expect("open vault")
}

/// One token of each kind a read can meet.
pub struct TokenKinds {
    /// Live: field "email", value "a@x.io".
    pub live: String,
    /// Of a subject since erased.
    pub erased: String,
    /// Deleted.
    pub deleted: String,
    /// Issued by another vault.
    pub foreign: String,
}

/// [`TokenKinds`] issued by `vault` (the foreign one by `other`).
pub fn token_kinds(vault: &Vault, other: &Vault) -> Result<TokenKinds, vault_core::Error> {
    let live = vault.tokenize("alice", "email", "a@x.io")?.to_string();
    let erased = vault.tokenize("bob", "email", "b@x.io")?.to_string();
    vault.erase("bob")?;
    let deleted = vault.tokenize("alice", "phone", "123")?.to_string();
    vault.delete(&deleted)?;
    let foreign = other.tokenize("carol", "email", "c@x.io")?.to_string();
    Ok(TokenKinds {
        live,
        erased,
        deleted,
        foreign,
    })
}

/// The subject reference (hex storage id) of an existing subject.
pub fn subject_ref(vault: &Vault, subject: &str) -> String {
    vault
        .export(subject)
        .expect("export")
        .subject_ref
        .expect("the subject exists")
        .to_string()
}

/// The storage key of the record `token` names, read from the vault in `dir`
/// (opened for the purpose: a token encrypts its record's key).
pub fn token_id(dir: &Path, token: &str) -> Vec<u8> {
    let vault = Vault::open(dir, &root(), options().background_worker(false)).expect("open");
    let key = vault_core::internal::record_key(&vault, token).expect("this vault's token");
    vault.close().expect("close");
    key.to_vec()
}

pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

pub const COLUMN_FAMILIES: [&str; 13] = [
    "meta",
    "subjects",
    "keys",
    "records",
    "index",
    "erasures",
    "purge_queue",
    "counters",
    "consents",
    "expiry",
    "audit",
    "audit_index",
    "aliases",
];

/// The column families as the vault declares them: `counters` needs its merge
/// operator, or replaying a WAL that holds merges stops short.
fn descriptors() -> Vec<rocksdb::ColumnFamilyDescriptor> {
    COLUMN_FAMILIES
        .iter()
        .map(|name| {
            let mut o = rocksdb::Options::default();
            if *name == "counters" {
                o.set_merge_operator_associative("add_i64", |_, existing, ops| {
                    let mut total =
                        existing.map_or(0, |b| i64::from_le_bytes(b.try_into().expect("8 bytes")));
                    for op in ops {
                        total += i64::from_le_bytes(op.try_into().expect("8 bytes"));
                    }
                    Some(total.to_le_bytes().to_vec())
                });
            }
            rocksdb::ColumnFamilyDescriptor::new(*name, o)
        })
        .collect()
}

/// Opens the vault's RocksDB directly (the vault must be closed), as someone holding
/// the disk would.
pub fn raw_db(dir: &Path) -> rocksdb::DB {
    let opts = rocksdb::Options::default();
    rocksdb::DB::open_cf_descriptors(&opts, dir, descriptors()).expect("open raw db")
}

/// Reads one value without writing anything to the directory.
/// Flips a bit of the stored audit checkpoint (its tag then fails).
pub fn alter_checkpoint(dir: &Path) {
    let db = raw_db(dir);
    let meta = db.cf_handle("meta").expect("meta family");
    let mut head = db
        .get_cf(meta, b"audit/head")
        .expect("read")
        .expect("a checkpoint");
    let last = head.len() - 1;
    head[last] ^= 1;
    db.put_cf(meta, b"audit/head", &head).expect("write");
    db.flush_wal(true).expect("flush");
}

pub fn raw_get(dir: &Path, cf: &str, key: &[u8]) -> Option<Vec<u8>> {
    let opts = rocksdb::Options::default();
    let db = rocksdb::DB::open_cf_descriptors_read_only(&opts, dir, descriptors(), false)
        .expect("open raw db read-only");
    let handle = db.cf_handle(cf).expect("cf");
    db.get_cf(handle, key).expect("get")
}

pub fn raw_put(dir: &Path, cf: &str, key: &[u8], value: &[u8]) {
    let db = raw_db(dir);
    let handle = db.cf_handle(cf).expect("cf");
    db.put_cf(handle, key, value).expect("put");
    db.flush_cf(handle).expect("flush");
}

/// Every regular file under `dir`, recursively.
pub fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// 16-byte windows of `needle` (RocksDB splits WAL records at 32 KiB block
/// boundaries, so a long needle may not appear whole). Short needles are kept whole.
pub fn windows(needle: &[u8]) -> Vec<Vec<u8>> {
    if needle.len() <= 16 {
        return vec![needle.to_vec()];
    }
    let mut out: Vec<Vec<u8>> = needle.chunks_exact(16).map(<[u8]>::to_vec).collect();
    out.push(needle[needle.len() - 16..].to_vec());
    out
}

/// The files under `dir` that contain any 16-byte window of `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let pieces = windows(needle);
    all_files(dir)
        .into_iter()
        .filter(|path| {
            let bytes = std::fs::read(path).unwrap_or_default();
            pieces
                .iter()
                .any(|p| bytes.windows(p.len()).any(|w| w == p.as_slice()))
        })
        .collect()
}

/// For each needle, the files under `dir` that contain any 16-byte window of it:
/// one pass over each file, for scans of large directories.
pub fn holders_of_each(dir: &Path, needles: &[Vec<u8>]) -> Vec<Vec<PathBuf>> {
    let mut pieces: std::collections::HashMap<Vec<u8>, Vec<usize>> = Default::default();
    for (i, needle) in needles.iter().enumerate() {
        assert!(needle.len() >= 16, "needles of 16 bytes or more");
        for piece in windows(needle) {
            pieces.entry(piece).or_default().push(i);
        }
    }
    let mut out = vec![Vec::new(); needles.len()];
    for path in all_files(dir) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        let mut found = vec![false; needles.len()];
        for w in bytes.windows(16) {
            if let Some(owners) = pieces.get(w) {
                for &i in owners {
                    found[i] = true;
                }
            }
        }
        for (i, hit) in found.into_iter().enumerate() {
            if hit {
                out[i].push(path.clone());
            }
        }
    }
    out
}

/// (name, full content) of every file, to prove an operation changed nothing.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    all_files(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect()
}

/// This test binary again, as a child process that runs only the ignored test
/// `test`. Its stdout is piped for the parent to read what it acknowledges; its
/// stdin is piped and kept open by the parent: a child that waits for its kill
/// reads it to the end, which comes if the parent goes away instead.
pub fn child_test(test: &str) -> std::io::Result<Command> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args([
            "--ignored",
            "--exact",
            test,
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(command)
}

/// A copy of a directory tree, as `cp -r` makes it (a disk snapshot, say).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// A small tmpfs (a disk that fills up for real), unmounted when dropped. Mounting
/// needs root, as the CI runs the tests.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> std::io::Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!("mount failed: {status}")));
        }
        Ok(Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

mod cluster;
pub use cluster::{postgres, schema_for};

/// Whether the suite runs against PostgreSQL (`VAULT_TEST_BACKEND=postgres`): the
/// tests that open vaults through [`open_vault`] then open each in a schema of its
/// own, named after its directory, in the cluster that `scripts/postgres` runs.
pub fn on_postgres() -> bool {
    std::env::var("VAULT_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// The PostgreSQL configuration of the test vault in `dir`.
pub fn postgres_config(dir: &Path) -> vault_core::PostgresConfig {
    let (url, ca) = postgres();
    vault_core::PostgresConfig::new(url.clone())
        .ca_file(ca)
        .schema(schema_for(dir))
        .pool_size(8)
}

/// Opens the test vault of `dir`: in the directory, or in PostgreSQL when the suite
/// runs there ([`on_postgres`]).
pub fn open_vault(
    dir: &Path,
    root: &RootKey,
    opts: VaultOptions,
) -> Result<Vault, vault_core::Error> {
    if on_postgres() {
        Vault::open_postgres(&postgres_config(dir), root, opts)
    } else {
        Vault::open(dir, root, opts)
    }
}

/// Ends a test that reads or alters RocksDB's files (or the vault directory) when
/// the suite runs on PostgreSQL, where there are none; says so on stderr.
#[macro_export]
macro_rules! rocksdb_only {
    () => {
        if $crate::common::on_postgres() {
            eprintln!("not run on PostgreSQL: this test reads RocksDB's files");
            return Ok(());
        }
    };
    (unit) => {
        if $crate::common::on_postgres() {
            eprintln!("not run on PostgreSQL: this test reads RocksDB's files");
            return;
        }
    };
}

/// Whether a string of digits passes the Luhn check (card numbers), computed here
/// apart from the vault's own.
pub fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}
