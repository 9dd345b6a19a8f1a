//! Options for opening a vault, with their documented defaults, and the clock.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Argument, Error, InputError, Problem};
use crate::purposes::{Mask, Policy, Purpose};

/// How an acknowledged write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// Every write syncs the write-ahead log before it returns; concurrent writers
    /// share syncs (group commit). An acknowledged write survives a crash of the
    /// process and of the machine. The default.
    #[default]
    Synced,
    /// Writes return once they are in the write-ahead log's OS buffer: they survive a
    /// crash of the process but not of the machine. Never the default.
    Relaxed,
}

/// The longest purge delay accepted.
pub const MAX_PURGE_DELAY: Duration = Duration::from_secs(30 * 24 * 3600);

/// When the bytes of an erased subject are purged from the vault's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PurgePolicy {
    /// Purge inside [`Vault::erase`](crate::Vault::erase), before it returns. Each
    /// erasure then pays a flush and a full compaction of the subject data.
    Immediate,
    /// Batch erasures: a background worker purges every pending erasure no later than
    /// this delay after the oldest one. Many erasures share one compaction. At most
    /// [`MAX_PURGE_DELAY`].
    Within(Duration),
}

impl Default for PurgePolicy {
    /// Batched, within 15 minutes.
    fn default() -> Self {
        PurgePolicy::Within(Duration::from_secs(15 * 60))
    }
}

/// Size limits on what callers may store. Inputs over a limit are rejected with an
/// [`InputError`] before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest subject id, in characters (Unicode scalar values, as JSON Schema's
    /// `maxLength` counts them). Default 256.
    pub max_subject_len: usize,
    /// Longest field name, in bytes. Default 64.
    pub max_field_len: usize,
    /// Largest value, in bytes. Default 64 KiB.
    pub max_value_len: usize,
    /// Most items in one batch call. Default 10 000.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_subject_len: 256,
            max_field_len: 64,
            max_value_len: 64 * 1024,
            max_batch: 10_000,
        }
    }
}

impl Limits {
    /// A subject id must look like one text only: ids that differ in what does not
    /// show (a trailing space, a zero-width joiner) would name different subjects,
    /// and erasing the visible spelling would miss the data. Those are refused;
    /// spellings that differ only in composition (a decomposed accent) are accepted
    /// and name one subject, since the vault knows an id by its NFC form
    /// (`IndexKeys::subject_hash`). Every rule here is checked on the id as given,
    /// so a JSON Schema can state them all.
    pub(crate) fn check_subject(&self, subject: &str) -> Result<(), InputError> {
        check_len(
            Argument::Subject,
            subject.chars().count(),
            self.max_subject_len,
        )?;
        let refuse = |problem| Err(InputError::new(Argument::Subject, problem));
        if subject.chars().any(char::is_control) {
            return refuse(Problem::BadCharacter);
        }
        if subject.starts_with(char::is_whitespace) || subject.ends_with(char::is_whitespace) {
            return refuse(Problem::SurroundingWhitespace);
        }
        if subject.chars().any(invisible) {
            return refuse(Problem::Invisible);
        }
        Ok(())
    }

    pub(crate) fn check_field(&self, field: &str) -> Result<(), InputError> {
        check_len(Argument::Field, field.len(), self.max_field_len)?;
        let ok = field
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !ok {
            return Err(InputError::new(Argument::Field, Problem::BadCharacter));
        }
        Ok(())
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<(), InputError> {
        check_len(Argument::Value, value.len(), self.max_value_len)
    }

    pub(crate) fn check_batch(&self, len: usize) -> Result<(), InputError> {
        check_len(Argument::Batch, len, self.max_batch)
    }
}

fn check_len(argument: Argument, len: usize, limit: usize) -> Result<(), InputError> {
    if len == 0 {
        Err(InputError::new(argument, Problem::Empty))
    } else if len > limit {
        Err(InputError::new(argument, Problem::TooLong { limit }))
    } else {
        Ok(())
    }
}

/// Argon2id cost parameters for a passphrase root key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB. Default 65 536 (64 MiB, RFC 9106's second recommendation).
    pub memory_kib: u32,
    /// Passes. Default 3.
    pub iterations: u32,
    /// Lanes. Default 1 (one thread).
    pub parallelism: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        KdfParams {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        }
    }
}

impl KdfParams {
    /// The OWASP minimum (19 MiB, 2 passes, 1 lane); lower settings are refused.
    pub const MINIMUM: KdfParams = KdfParams {
        memory_kib: 19 * 1024,
        iterations: 2,
        parallelism: 1,
    };

    /// The most memory accepted: 1 GiB.
    pub const MAXIMUM_MEMORY_KIB: u32 = 1024 * 1024;
    /// The most passes accepted.
    pub const MAXIMUM_ITERATIONS: u32 = 64;

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.memory_kib < Self::MINIMUM.memory_kib || self.iterations < Self::MINIMUM.iterations
        {
            return Err(Error::InvalidOption(
                "Argon2id parameters below the OWASP minimum (19 MiB, 2 passes)",
            ));
        }
        if self.parallelism == 0
            || self.parallelism > 16
            || self.memory_kib > Self::MAXIMUM_MEMORY_KIB
            || self.iterations > Self::MAXIMUM_ITERATIONS
        {
            return Err(Error::InvalidOption("Argon2id parameters out of range"));
        }
        Ok(())
    }
}

/// The source of "now" for timestamps and purge deadlines, in milliseconds since the
/// Unix epoch. Injectable so that tests need no sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Milliseconds since 1970-01-01T00:00:00Z.
    fn now_millis(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Options for [`Vault::open`](crate::Vault::open). Every field has a documented
/// default; build with [`VaultOptions::default`] and the setters.
///
/// The options are not stored in the vault: give the same purposes, masks and
/// retention periods at every open.
///
/// ```
/// use std::time::Duration;
/// use vault_core::{LawfulBasis, Mask, Purpose, PurgePolicy, VaultOptions};
///
/// let options = VaultOptions::default()
///     // Erasures purge their bytes from disk within an hour (default: 15 minutes).
///     .purge_policy(PurgePolicy::Within(Duration::from_secs(3600)))
///     // Reads name one of these purposes (`Vault::detokenize_for`).
///     .purpose(Purpose::new("billing", LawfulBasis::Contract).fields(["email", "iban"]))
///     .purpose(Purpose::new("analytics", LawfulBasis::LegitimateInterests).masked(true))
///     .field_mask("email", Mask::Email)
///     // IP addresses expire after 30 days, then are purged.
///     .retention("ip_address", Duration::from_secs(30 * 86_400))
///     // The audit trail names this service as the actor of direct calls.
///     .actor("checkout-service");
/// # let _ = options;
/// ```
#[derive(Debug, Clone)]
pub struct VaultOptions {
    pub(crate) create_if_missing: bool,
    pub(crate) durability: Durability,
    pub(crate) purge: PurgePolicy,
    pub(crate) limits: Limits,
    pub(crate) kdf: KdfParams,
    pub(crate) dek_cache_capacity: usize,
    pub(crate) compression: bool,
    pub(crate) background_worker: bool,
    pub(crate) rotation_batch: usize,
    pub(crate) statistics: bool,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) policy: Policy,
    pub(crate) actor: String,
    pub(crate) audit_retention: Option<Duration>,
    pub(crate) sync_read_events: bool,
    pub(crate) sync_gather: Duration,
    pub(crate) block_cache_bytes: usize,
    pub(crate) backups: Option<BackupOptions>,
    /// Opened by a restore to replay erasures: no journal attached, no worker.
    pub(crate) restoring: bool,
}

impl Default for VaultOptions {
    fn default() -> Self {
        VaultOptions {
            create_if_missing: true,
            durability: Durability::default(),
            purge: PurgePolicy::default(),
            limits: Limits::default(),
            kdf: KdfParams::default(),
            dek_cache_capacity: 100_000,
            compression: true,
            background_worker: true,
            rotation_batch: 1_000,
            statistics: false,
            clock: Arc::new(SystemClock),
            policy: Policy::default(),
            actor: DEFAULT_ACTOR.to_owned(),
            audit_retention: None,
            sync_read_events: false,
            sync_gather: Duration::ZERO,
            block_cache_bytes: DEFAULT_BLOCK_CACHE,
            backups: None,
            restoring: false,
        }
    }
}

impl VaultOptions {
    /// Create a new vault when the directory is missing or empty. Default `true`.
    pub fn create_if_missing(mut self, yes: bool) -> Self {
        self.create_if_missing = yes;
        self
    }

    /// Durability of acknowledged writes. Default [`Durability::Synced`].
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// When erased subjects are purged from disk. Default: within 15 minutes.
    pub fn purge_policy(mut self, policy: PurgePolicy) -> Self {
        self.purge = policy;
        self
    }

    /// Input size limits. Default [`Limits::default`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Argon2id parameters used when a vault is created, or its passphrase changed.
    /// Default [`KdfParams::default`]; below [`KdfParams::MINIMUM`] is refused.
    pub fn kdf_params(mut self, params: KdfParams) -> Self {
        self.kdf = params;
        self
    }

    /// How many unwrapped subject keys are kept in memory. Default 100 000.
    pub fn dek_cache_capacity(mut self, capacity: usize) -> Self {
        self.dek_cache_capacity = capacity;
        self
    }

    /// LZ4-compress stored files. Default `true`. Tests that scan files for plaintext
    /// turn it off, or the scan would prove nothing.
    pub fn compression(mut self, yes: bool) -> Self {
        self.compression = yes;
        self
    }

    /// Run a background thread that purges due erasures and resumes an interrupted
    /// key rotation. Default `true`. Without it, call [`Vault::purge_due`](crate::Vault::purge_due)
    /// and [`Vault::resume_kek_rotation`](crate::Vault::resume_kek_rotation) yourself.
    pub fn background_worker(mut self, yes: bool) -> Self {
        self.background_worker = yes;
        self
    }

    /// Subject keys rewrapped per checkpointed batch of a KEK rotation. Default 1 000.
    pub fn rotation_batch(mut self, size: usize) -> Self {
        self.rotation_batch = size;
        self
    }

    /// Collect storage-engine statistics, read with
    /// [`Vault::storage_counters`](crate::Vault::storage_counters). Default `false`
    /// (they cost a few percent).
    pub fn statistics(mut self, yes: bool) -> Self {
        self.statistics = yes;
        self
    }

    /// The clock used for timestamps and purge deadlines. Default [`SystemClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Declares a purpose of processing (a later one with the same name replaces it).
    /// Purpose-bound detokenization names one; undeclared purposes are refused
    /// ([`Error::UnknownPurpose`]). Purposes are not
    /// stored in the vault: declare them at every open, or every
    /// `detokenize_for` after a reopen without them is refused.
    pub fn purpose(mut self, purpose: Purpose) -> Self {
        self.policy.add_purpose(purpose);
        self
    }

    /// How masked views show `field`. Fields without a mask show `***` (see
    /// [`default_mask`](Self::default_mask)).
    pub fn field_mask(mut self, field: impl Into<String>, mask: Mask) -> Self {
        self.policy.set_mask(field.into(), mask);
        self
    }

    /// Keeps values of `field` for `period` after they are stored: after it, their
    /// tokens answer [`Error::Expired`](crate::Error::Expired) and the values are purged
    /// from disk like erased ones (by the background worker, or
    /// [`Vault::purge_expired`](crate::Vault::purge_expired)). Applies to records
    /// stored while the period is configured; a shortened period is also enforced at
    /// read time for older records.
    pub fn retention(mut self, field: impl Into<String>, period: Duration) -> Self {
        let millis = u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.policy.set_retention(field.into(), millis);
        self
    }

    /// How masked views show fields that have no mask of their own. Default
    /// [`Mask::Hidden`].
    pub fn default_mask(mut self, mask: Mask) -> Self {
        self.policy.set_default_mask(mask);
        self
    }

    /// The actor the audit trail names for calls made directly on the
    /// [`Vault`](crate::Vault) (default `embedded`); [`Vault::as_actor`](crate::Vault::as_actor)
    /// names another per call. 1-64 of ASCII letters, digits, `_`, `-`, `.`, `:`:
    /// a service or key name, never personal data.
    pub fn actor(mut self, name: impl Into<String>) -> Self {
        self.actor = name.into();
        self
    }

    /// Keeps audit events for `period`, then prunes them (background worker, or
    /// [`Vault::prune_audit`](crate::Vault::prune_audit)); the trail still verifies
    /// from the first kept event, and the pruning is itself an event. Default: kept
    /// forever. At least one day.
    pub fn audit_retention(mut self, period: Duration) -> Self {
        self.audit_retention = Some(period);
        self
    }

    /// Sync the WAL for every read's audit event (detokenize, export) before the
    /// value is returned. Default `false`: a read's event is written to the WAL
    /// before the value is returned, so it survives a crash of the process, and is
    /// synced by the next synced write or by the background worker within 100 ms, so
    /// a power loss can lose the events of at most the last 100 ms of reads. Writes,
    /// erasures and consent changes are synced with their events as
    /// [`durability`](Self::durability) says. Syncing every read costs an fsync per
    /// read call (shared by concurrent callers).
    pub fn sync_read_events(mut self, yes: bool) -> Self {
        self.sync_read_events = yes;
        self
    }

    /// How long the thread that syncs the WAL for awaited writes
    /// ([`Vault::tokenize_batch_unsynced`](crate::Vault::tokenize_batch_unsynced))
    /// waits for more writes to share a sync, when writes come from more than one
    /// caller at a time. Default zero: sync at once. Worth it when many callers
    /// write at once and CPU is what limits them (the server, whose default is
    /// [`DEFAULT_SYNC_GATHER`]): fewer syncs and rounds of wake-ups, for up to this
    /// much more latency per write; with a few callers on a fast disk it costs
    /// throughput. A lone caller waits at most once, with its first write after
    /// concurrent ones. At most 100 ms ([`MAX_SYNC_GATHER`]). Writes synced as they
    /// are made ([`tokenize_batch`](crate::Vault::tokenize_batch)) do not use it.
    pub fn sync_gather(mut self, wait: Duration) -> Self {
        self.sync_gather = wait;
        self
    }

    /// Take backups into a directory ([`Vault::backup`](crate::Vault::backup)) and
    /// record every erasure and expired record in the erasure journal there, which
    /// a restore (`vault_core::restore`) replays. Once a vault has journaled an
    /// erasure, it refuses to open without its backup directory (erasures made then
    /// would come back with a restore). Default: no backups.
    pub fn backups(mut self, backups: BackupOptions) -> Self {
        self.backups = Some(backups);
        self
    }

    /// These options, for the vault a restore opens to replay erasures in.
    pub(crate) fn restoring(mut self) -> Self {
        self.restoring = true;
        self.background_worker = false;
        self.create_if_missing = false;
        self
    }

    /// Memory for the storage engine's cache of table-file blocks (data, index and
    /// filter blocks), shared by every column family, in bytes. Default 64 MiB
    /// ([`DEFAULT_BLOCK_CACHE`]); at least 1 MiB ([`MIN_BLOCK_CACHE`]); the server's
    /// default is 256 MiB. A read whose block is not cached reads it from its file
    /// (from the OS page cache at best) and caches it, evicting another; once the
    /// blocks read are many times the cache, most reads miss it. The vault's memory
    /// is this cache plus a fixed allowance, whatever the number of records:
    /// memtables (64 MiB each; 16 MiB for records and 4 MiB for the three small
    /// families written at scattered keys; up to two per family while one is
    /// flushed), the key caches and the staging files' pages.
    pub fn block_cache_bytes(mut self, bytes: usize) -> Self {
        self.block_cache_bytes = bytes;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        self.policy.validate()?;
        if !valid_actor(&self.actor) {
            return Err(Error::InvalidOption(
                "the actor must be 1-64 of ASCII letters, digits, '_', '-', '.', ':'",
            ));
        }
        if self
            .audit_retention
            .is_some_and(|p| p < Duration::from_secs(86_400))
        {
            return Err(Error::InvalidOption(
                "audit events must be kept at least one day",
            ));
        }
        if self.dek_cache_capacity == 0 {
            return Err(Error::InvalidOption(
                "the DEK cache capacity must be at least 1",
            ));
        }
        if self.rotation_batch == 0 {
            return Err(Error::InvalidOption(
                "the rotation batch must be at least 1",
            ));
        }
        if let PurgePolicy::Within(delay) = self.purge
            && delay > MAX_PURGE_DELAY
        {
            return Err(Error::InvalidOption(
                "the purge delay must be at most 30 days (GDPR: without undue delay)",
            ));
        }
        if self.sync_gather > MAX_SYNC_GATHER {
            return Err(Error::InvalidOption(
                "sync_gather must be at most 100 ms: every awaited write can wait that long",
            ));
        }
        if self.block_cache_bytes < MIN_BLOCK_CACHE {
            return Err(Error::InvalidOption(
                "the block cache must be at least 1 MiB",
            ));
        }
        let l = &self.limits;
        if l.max_subject_len == 0
            || l.max_field_len == 0
            || l.max_value_len == 0
            || l.max_batch == 0
        {
            return Err(Error::InvalidOption("limits must be at least 1"));
        }
        if l.max_field_len > 1024 || l.max_subject_len > 4096 || l.max_value_len > 16 << 20 {
            return Err(Error::InvalidOption(
                "limits above 1 KiB (field), 4096 characters (subject) or 16 MiB (value)",
            ));
        }
        Ok(())
    }
}

/// The actor named for calls made directly on a [`Vault`](crate::Vault), unless
/// [`VaultOptions::actor`] names another.
pub const DEFAULT_ACTOR: &str = "embedded";

/// The server's default for [`VaultOptions::sync_gather`]: 500 µs.
pub const DEFAULT_SYNC_GATHER: Duration = Duration::from_micros(500);
/// The longest [`VaultOptions::sync_gather`]: every awaited write can wait that long.
pub const MAX_SYNC_GATHER: Duration = Duration::from_millis(100);

/// The default of [`VaultOptions::block_cache_bytes`]: 64 MiB, modest next to the
/// process a library is embedded in.
pub const DEFAULT_BLOCK_CACHE: usize = 64 << 20;
/// The server's default for [`VaultOptions::block_cache_bytes`]: 256 MiB. A server
/// has its machine to itself, and with a million records (about 230 MiB of files)
/// nearly every block read is then in memory (BENCHMARKS.md has the measurement).
pub const SERVER_BLOCK_CACHE: usize = 256 << 20;
/// The smallest [`VaultOptions::block_cache_bytes`].
pub const MIN_BLOCK_CACHE: usize = 1 << 20;

/// The memtable (write buffer) size of `records`, which every tokenization writes
/// at a scattered key. Each such insert searches its memtable's skip list from the
/// top, and in the engine's default 64 MiB list nearly every step is a cache miss;
/// in a quarter of that, fewer are. The families no tokenization writes at scattered
/// keys keep the default 64 MiB (BENCHMARKS.md has the measurements).
pub const SCATTERED_WRITE_BUFFER: usize = 16 << 20;

/// The memtable size of the families every tokenization also writes at scattered
/// keys, whose entries are tens of bytes: `index`, `subjects` and `audit_index`.
/// Their memtables and those of `records` together are what each tokenization
/// searches, so these are kept small: 4 MiB each. Flushing and compacting them more
/// often costs little, since all they hold is small (a million records' index is
/// about 32 MB, against `records`' 230 MB, which keeps
/// [`SCATTERED_WRITE_BUFFER`]).
pub const SMALL_ENTRY_WRITE_BUFFER: usize = 4 << 20;

/// Whether `name` can name an actor in the audit trail: 1-64 of ASCII letters,
/// digits, `_`, `-`, `.`, `:`.
pub fn valid_actor(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:".contains(&b))
}

/// Characters that show nothing: format characters (zero-width spaces and joiners,
/// direction marks and embeddings, the word joiner, the byte-order mark, the soft
/// hyphen), variation selectors, fillers and tags.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

/// Backups kept when the options do not say.
pub const DEFAULT_BACKUPS_KEPT: usize = 7;

/// Where a vault's backups go and how many are kept
/// ([`VaultOptions::backups`](crate::VaultOptions::backups)).
///
/// With backups configured, every erasure and every expired record is first
/// recorded in the erasure journal in this directory (synced), which a
/// restore (`vault_core::restore`) replays.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    pub(crate) dir: PathBuf,
    pub(crate) keep: usize,
    pub(crate) every: Option<Duration>,
}

impl BackupOptions {
    /// Backups in `dir` (created if missing), keeping [`DEFAULT_BACKUPS_KEPT`].
    pub fn new(dir: impl Into<PathBuf>) -> BackupOptions {
        BackupOptions {
            dir: dir.into(),
            keep: DEFAULT_BACKUPS_KEPT,
            every: None,
        }
    }

    /// Keep the `n` newest backups (at least 1); a new backup deletes the older ones.
    pub fn keep(mut self, n: usize) -> BackupOptions {
        self.keep = n.max(1);
        self
    }

    /// How often backups are taken (by whatever schedules them), so that the time a
    /// backup is deleted can be told ([`BackupList::erasures_in_backups_until`](crate::BackupList::erasures_in_backups_until)).
    pub fn every(mut self, interval: Duration) -> BackupOptions {
        self.every = Some(interval);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_ids_that_look_alike_are_refused() {
        let l = Limits::default();
        let problem = |id: &str| l.check_subject(id).err().map(|e| e.problem);
        for (id, expected) in [
            ("alice@x.com ", Problem::SurroundingWhitespace),
            (" alice@x.com", Problem::SurroundingWhitespace),
            ("\u{00A0}alice", Problem::SurroundingWhitespace),
            ("ali\u{200B}ce", Problem::Invisible),
            ("ali\u{200D}ce", Problem::Invisible),
            ("\u{FEFF}alice", Problem::Invisible),
            ("ali\u{00AD}ce", Problem::Invisible),
            ("ali\u{202E}ce", Problem::Invisible),
        ] {
            assert_eq!(
                problem(id),
                Some(expected),
                "{:?}",
                id.escape_unicode().to_string()
            );
        }
        // "é" as e + combining acute (NFD) is accepted: it names the subject
        // "josé" does (see below).
        for id in [
            "josé",
            "jose\u{0301}",
            "Zoë Ann",
            "山田太郎",
            "alice@x.com",
            "+49 30 1234",
        ] {
            assert_eq!(problem(id), None, "{id}");
        }
    }

    #[test]
    fn spellings_that_differ_in_composition_name_one_subject() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
        let opts = VaultOptions::default()
            .background_worker(false)
            .kdf_params(KdfParams::MINIMUM);
        let vault = crate::Vault::open(dir.path(), &crate::RootKey::from_bytes(&[7; 32])?, opts)?;
        let decomposed = "jose\u{0301}";
        let composed = "jos\u{e9}";
        let token = vault.tokenize(decomposed, "email", "jose@example.com")?;
        let second = vault.tokenize(composed, "phone", "+34 600 000 000")?;
        let export = vault.export(composed)?;
        let tokens: Vec<_> = export.records.iter().map(|r| r.token.clone()).collect();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.contains(&token) && tokens.contains(&second));
        assert_eq!(vault.export(decomposed)?.subject_ref, export.subject_ref);
        // Erased under the other spelling: both records go.
        assert_eq!(vault.erase(composed)?.records, 2);
        assert!(matches!(
            vault.detokenize(&token.to_string()),
            Err(Error::Erased)
        ));
        assert!(vault.export(decomposed)?.records.is_empty());
        vault.close()
    }

    #[test]
    fn subject_ids_are_measured_in_characters() {
        let l = Limits::default();
        // A 4-byte character (a CJK ideograph of family names): 256 of them are
        // 1 KiB, and one id of 256 characters.
        let wide = "\u{20BB7}";
        assert_eq!(wide.len(), 4);
        assert!(l.check_subject(&wide.repeat(256)).is_ok());
        assert_eq!(
            l.check_subject(&wide.repeat(257))
                .expect_err("refused")
                .problem,
            Problem::TooLong { limit: 256 }
        );
        // Combining marks count as characters of their own, as given.
        assert!(l.check_subject(&"e\u{0301}".repeat(128)).is_ok());
        assert!(l.check_subject(&"e\u{0301}".repeat(129)).is_err());
    }

    #[test]
    fn limits_reject_without_content() {
        let l = Limits::default();
        assert_eq!(
            l.check_subject("").expect_err("refused").problem,
            Problem::Empty
        );
        let long = "x".repeat(257);
        let err = l.check_subject(&long).expect_err("refused");
        assert_eq!(err.problem, Problem::TooLong { limit: 256 });
        assert!(!err.to_string().contains("xxx"));
        assert_eq!(
            l.check_subject("a\u{0}b").expect_err("refused").problem,
            Problem::BadCharacter
        );
        assert!(l.check_subject("alice@example.com").is_ok());
        assert!(l.check_field("email").is_ok());
        assert!(l.check_field("e mail").is_err());
        assert!(l.check_field("émail").is_err());
        assert!(l.check_value(b"").is_err());
        assert!(l.check_value(&vec![1; 64 * 1024]).is_ok());
        assert!(l.check_value(&vec![1; 64 * 1024 + 1]).is_err());
        assert!(l.check_batch(0).is_err());
        assert!(l.check_batch(10_001).is_err());
    }

    #[test]
    fn kdf_minimum_enforced() {
        assert!(KdfParams::MINIMUM.validate().is_ok());
        assert!(KdfParams::default().validate().is_ok());
        let weak = KdfParams {
            memory_kib: 1024,
            ..KdfParams::MINIMUM
        };
        assert!(weak.validate().is_err());
    }

    #[test]
    fn block_cache_has_a_floor() {
        assert!(VaultOptions::default().validate().is_ok());
        let least = VaultOptions::default().block_cache_bytes(MIN_BLOCK_CACHE);
        assert!(least.validate().is_ok());
        let less = VaultOptions::default().block_cache_bytes(MIN_BLOCK_CACHE - 1);
        assert!(matches!(less.validate(), Err(Error::InvalidOption(_))));
    }

    #[test]
    fn sync_gather_is_bounded() {
        let within = VaultOptions::default().sync_gather(MAX_SYNC_GATHER);
        assert!(within.validate().is_ok());
        let beyond =
            VaultOptions::default().sync_gather(MAX_SYNC_GATHER + Duration::from_micros(1));
        assert!(matches!(beyond.validate(), Err(Error::InvalidOption(_))));
    }
}
