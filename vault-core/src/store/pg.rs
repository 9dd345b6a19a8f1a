//! The storage seam on PostgreSQL (feature `postgres`): one table per [`Cf`],
//! `(k bytea primary key, v bytea)`, in a schema of the vault's own, so that any
//! number of vault replicas share one vault on one database (made highly available
//! by the cluster: a synchronous standby and failover, e.g. Patroni).
//!
//! Reads are prepared statements on a pooled connection. A batch is one transaction
//! sent as one simple query (its values as hex `bytea` literals: no text of ours is
//! ever quoted): a write costs one round trip, two when the batch carries
//! [expectations](WriteSet::expect), which are checked first under row locks
//! (`FOR UPDATE`, or `FOR SHARE` for rows the batch does not write). A key expected
//! absent is inserted without `ON CONFLICT`, so a replica that inserted it first
//! makes the insert fail. A failed expectation, a unique violation, a serialization
//! failure or a deadlock is [`Error::Conflict`]: the operation runs again. Nothing
//! relies on advisory locks or `LISTEN`/`NOTIFY` (CockroachDB has neither).
//!
//! Durability: every write commits with `synchronous_commit = on` (flushed here and,
//! where the cluster has a synchronous standby, there), whatever the vault's
//! durability says, so [`Storage::sync_wal`] has nothing left to do. An
//! asynchronous commit made durable later by a barrier would not do: after a
//! failover the barrier would run on the new primary, which never received it.
//!
//! A connection that broke (the primary failed over) is dropped from the pool, and
//! so is every idle one opened before it broke (they lead to the old primary): a
//! read on it is retried once on a new connection, which the multi-host URL with
//! `target_session_attrs=read-write` points at the new primary, and so is a write
//! whose first round trip (`BEGIN` and the row locks, no `COMMIT`) failed. A write
//! that failed later is not retried here: whether its commit happened is unknown,
//! and the caller decides. A connection never goes back to the pool inside a
//! transaction.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, NoTls, SimpleQueryMessage, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Cf, KeyValue, PurgeScope, RetireRule, Retired, Storage, StorageCounters, WriteSet};
use crate::error::{Error, StorageError};
use crate::options::Durability;

/// The schema version this build creates and reads. A database whose schema is
/// newer is refused before anything is written. Version 2 added the `aliases`
/// table and the inventory's counters: replicas of an older build must not write.
pub(crate) const SCHEMA_VERSION: u16 = 2;
/// Rows a scan fetches per round trip.
const SCAN_CHUNK: i64 = 512;
/// How long a caller waits for a pooled connection before giving up.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// Where a vault on PostgreSQL lives and how it is reached. Its `Debug` leaves out
/// the URL, which may hold a password.
#[derive(Clone)]
pub struct PostgresConfig {
    url: String,
    pool_size: usize,
    ca_file: Option<PathBuf>,
    schema: String,
    connect_timeout: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("pool_size", &self.pool_size)
            .field("ca_file", &self.ca_file)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// A vault at `url`: a libpq-style URL or key=value string, several hosts
    /// allowed (`postgresql://vault@db1,db2/vault?target_session_attrs=read-write`,
    /// so that a failover finds the new primary). TLS is used unless the URL says
    /// `sslmode=disable`, and the server's certificate is always verified, against
    /// [`ca_file`](Self::ca_file) or else the Mozilla root certificates.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pool_size: 16,
            ca_file: None,
            schema: "vault".to_owned(),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Connections the vault keeps at most (16 by default).
    pub fn pool_size(mut self, size: usize) -> PostgresConfig {
        self.pool_size = size;
        self
    }

    /// A PEM file of the certificates that sign the database's TLS certificate.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> PostgresConfig {
        self.ca_file = Some(path.into());
        self
    }

    /// The schema the vault's tables live in (`vault` by default): one vault per
    /// schema. Lowercase letters, digits and `_`, starting with a letter, at most
    /// 63 characters.
    pub fn schema(mut self, schema: impl Into<String>) -> PostgresConfig {
        self.schema = schema.into();
        self
    }

    /// How long a connection attempt to one host may take (5 s by default).
    pub fn connect_timeout(mut self, timeout: Duration) -> PostgresConfig {
        self.connect_timeout = timeout;
        self
    }

    /// The configured schema name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    fn validate(&self) -> Result<(), Error> {
        let valid_schema = self.schema.len() <= 63
            && self.schema.starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_schema {
            return Err(Error::InvalidOption(
                "the PostgreSQL schema must be lowercase letters, digits and _, starting with a letter, at most 63 characters",
            ));
        }
        if !(1..=1024).contains(&self.pool_size) {
            return Err(Error::InvalidOption(
                "the PostgreSQL pool size must be 1 to 1024",
            ));
        }
        Ok(())
    }
}

/// A PostgreSQL error as the vault's: its code and message, never its detail (a
/// unique violation's detail quotes the key).
fn engine(e: &postgres::Error) -> Error {
    if let Some(code) = e.code()
        && [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::UNIQUE_VIOLATION,
            SqlState::LOCK_NOT_AVAILABLE,
        ]
        .contains(code)
    {
        return Error::Conflict;
    }
    let message = match e.as_db_error() {
        Some(db) => format!("PostgreSQL {}: {}", db.code().code(), db.message()),
        None => format!("PostgreSQL: {e}"),
    };
    Error::Storage(StorageError(message))
}

fn storage(message: impl Into<String>) -> Error {
    Error::Storage(StorageError(message.into()))
}

/// One pooled connection and its prepared statements.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// The pool's generation when it was opened: older ones are not reused.
    generation: u64,
}

impl Conn {
    fn prepared(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

#[derive(Clone)]
enum Tls {
    Off,
    On(MakeRustlsConnect),
}

struct Pool {
    config: postgres::Config,
    tls: Tls,
    size: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Conn>,
    open: usize,
    /// Moves on when a connection breaks: the idle ones opened before lead to
    /// a server that is gone (a failover) and are dropped.
    generation: u64,
}

/// A connection lent out; back to the pool when dropped, unless it broke, is of
/// an older generation or is still inside a transaction.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    /// A transaction was begun and not yet committed or rolled back.
    in_transaction: bool,
    /// Came from the idle list (not opened for this lease).
    reused: bool,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    fn broken(&self) -> bool {
        self.conn.as_ref().is_none_or(|c| c.client.is_closed())
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self
            .pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let generation = state.generation;
        match self.conn.take() {
            Some(conn)
                if !conn.client.is_closed()
                    && !self.in_transaction
                    && conn.generation == generation =>
            {
                state.idle.push(conn);
            }
            _ => state.open -= 1,
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

impl Pool {
    fn new(config: &PostgresConfig) -> Result<Pool, Error> {
        let mut pg = postgres::Config::from_str(&config.url)
            .map_err(|_| Error::InvalidOption("the PostgreSQL URL does not parse"))?;
        pg.connect_timeout(config.connect_timeout);
        pg.application_name("vault");
        // `prefer` (the driver's default) would fall back to plaintext when the
        // server (or someone in between) declines TLS: anything but `disable`
        // requires it.
        let tls = match pg.get_ssl_mode() {
            postgres::config::SslMode::Disable => Tls::Off,
            _ => {
                pg.ssl_mode(postgres::config::SslMode::Require);
                Tls::On(tls_connector(config.ca_file.as_deref())?)
            }
        };
        // A dead peer is noticed in about 30 s rather than the kernel's 15 minutes.
        pg.keepalives(true);
        pg.keepalives_idle(Duration::from_secs(10));
        pg.keepalives_interval(Duration::from_secs(5));
        pg.keepalives_retries(3);
        Ok(Pool {
            config: pg,
            tls,
            size: config.pool_size,
            state: Mutex::new(PoolState::default()),
            freed: Condvar::new(),
        })
    }

    fn connect(&self) -> Result<Conn, Error> {
        let client = match &self.tls {
            Tls::Off => self.config.connect(NoTls),
            Tls::On(tls) => self.config.connect(tls.clone()),
        };
        let mut client = client.map_err(|e| engine(&e))?;
        // Values are sent and read as hex `bytea` literals in simple queries (so
        // connect directly or through a session pooler: these are session settings).
        // No transaction waits long for a lock or a statement, and none left open
        // by a replica that froze holds the audit trail's head for long.
        client
            .batch_execute(
                "SET bytea_output = 'hex'; SET standard_conforming_strings = on; \
                 SET lock_timeout = '10s'; SET statement_timeout = '60s'; \
                 SET idle_in_transaction_session_timeout = '30s'",
            )
            .map_err(|e| engine(&e))?;
        Ok(Conn {
            client,
            statements: HashMap::new(),
            generation: self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .generation,
        })
    }

    /// A connection broke: the idle ones opened before it go too.
    fn broke(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.generation += 1;
        let stale = state.idle.len();
        state.idle.clear();
        state.open -= stale;
        drop(state);
        self.freed.notify_all();
    }

    fn get(&self) -> Result<Lease<'_>, Error> {
        let deadline = Instant::now() + POOL_WAIT;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(conn) = state.idle.pop() {
                return Ok(Lease {
                    pool: self,
                    conn: Some(conn),
                    in_transaction: false,
                    reused: true,
                });
            }
            if state.open < self.size {
                state.open += 1;
                drop(state);
                return match self.connect() {
                    Ok(conn) => Ok(Lease {
                        pool: self,
                        conn: Some(conn),
                        in_transaction: false,
                        reused: false,
                    }),
                    Err(e) => {
                        self.state
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(storage(
                    "no PostgreSQL connection came free within 30 s (pool_size)",
                ));
            }
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

fn tls_connector(ca_file: Option<&Path>) -> Result<MakeRustlsConnect, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|_| {
                Error::InvalidOption("the PostgreSQL CA file cannot be read as PEM")
            })?;
            for cert in certs {
                let cert = cert.map_err(|_| {
                    Error::InvalidOption("the PostgreSQL CA file cannot be read as PEM")
                })?;
                roots.add(cert).map_err(|_| {
                    Error::InvalidOption("the PostgreSQL CA file holds an unusable certificate")
                })?;
            }
            if roots.is_empty() {
                return Err(Error::InvalidOption(
                    "the PostgreSQL CA file holds no certificate",
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|_| Error::InvalidOption("TLS to PostgreSQL cannot be set up"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// One write of a batch, as it ends up: the last put or delete of a key wins.
#[derive(Clone)]
enum Last {
    Put(Vec<u8>),
    Delete,
}

/// A batch for PostgreSQL: the final state of every key it writes, the counters it
/// adds to, and what it expects to find.
#[derive(Default)]
pub(crate) struct Ops {
    writes: BTreeMap<(Cf, Vec<u8>), Last>,
    adds: BTreeMap<Vec<u8>, i64>,
    expects: BTreeMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
}

impl Ops {
    /// The batch inside a detached one (an empty one for `Empty`).
    pub(crate) fn from_raw(raw: super::RawBatch) -> Ops {
        match raw {
            super::RawBatch::Postgres(ops) => ops,
            _ => Ops::default(),
        }
    }

    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.adds.is_empty()
    }

    fn append(&mut self, other: Ops) {
        self.writes.extend(other.writes);
        for (key, delta) in other.adds {
            *self.adds.entry(key).or_default() += delta;
        }
        // The first expectation of a key is what was read before any write of it.
        for (key, value) in other.expects {
            self.expects.entry(key).or_insert(value);
        }
    }
}

impl WriteSet for Ops {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.writes
            .insert((cf, key.to_vec()), Last::Put(value.to_vec()));
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.writes.insert((cf, key.to_vec()), Last::Delete);
    }

    fn add(&mut self, key: &[u8], delta: i64) {
        *self.adds.entry(key.to_vec()).or_default() += delta;
    }

    fn expect(&mut self, cf: Cf, key: &[u8], value: Option<&[u8]>) {
        self.expects
            .entry((cf, key.to_vec()))
            .or_insert_with(|| value.map(<[u8]>::to_vec));
    }
}

/// Locked rows: (family's number + 1, or 0 for the one locked first, key) → value.
type Locked = HashMap<(u8, Vec<u8>), Vec<u8>>;
/// Rows to write, by family.
type Rows<'a> = BTreeMap<Cf, Vec<(&'a [u8], &'a [u8])>>;

/// Appends `bytes` as a hex `bytea` literal (by table: formatting each byte was
/// about 3 % of a replica's CPU under load).
fn hex(sql: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    sql.reserve(bytes.len() * 2 + 4);
    sql.push_str("'\\x");
    for &b in bytes {
        sql.push(char::from(DIGITS[usize::from(b >> 4)]));
        sql.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    sql.push('\'');
}

/// The bytes of a hex `bytea` text (`\x0a1b…`), as `bytea_output = 'hex'` gives.
fn unhex(text: &str) -> Result<Vec<u8>, Error> {
    let digits = text
        .strip_prefix("\\x")
        .ok_or_else(|| storage("PostgreSQL returned bytea in an unexpected form"))?;
    let digits = digits.as_bytes();
    if digits.len() % 2 != 0 {
        return Err(storage("PostgreSQL returned bytea in an unexpected form"));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(storage("PostgreSQL returned bytea in an unexpected form")),
    };
    digits
        .chunks_exact(2)
        .map(|pair| Ok((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// Work counted for [`Storage::counters`].
#[derive(Default)]
struct Counts {
    keys_read: AtomicU64,
    keys_written: AtomicU64,
    seeks: AtomicU64,
    steps: AtomicU64,
    commits_synced: AtomicU64,
    bytes_written: AtomicU64,
    conflicts: AtomicU64,
}

pub(crate) struct PgStore {
    pool: Pool,
    schema: String,
    sync_by_default: bool,
    /// The retirement rule, known once the keyring is open (after the store).
    retire: OnceLock<RetireRule>,
    counts: Counts,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects, and creates the schema and its tables if they are missing (when
    /// `create` allows it). A schema of a newer version is refused before anything
    /// is written; `Ok(false)` alongside the store when the schema did not exist.
    pub(crate) fn open(
        config: &PostgresConfig,
        durability: Durability,
        create: bool,
    ) -> Result<(PgStore, bool), Error> {
        config.validate()?;
        let store = PgStore {
            pool: Pool::new(config)?,
            schema: config.schema.clone(),
            sync_by_default: durability == Durability::Synced,
            retire: OnceLock::new(),
            counts: Counts::default(),
        };
        let existed = store.schema_version()?.is_some();
        if !existed && !create {
            return Ok((store, false));
        }
        // Replicas started together may race to create the tables: whoever loses
        // finds them there on the next try.
        let mut tries = 0;
        loop {
            match store.create_schema() {
                Ok(()) => break,
                Err(Error::Conflict) if tries < 5 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50 * tries));
                }
                Err(Error::Storage(StorageError(m)))
                    if m.contains("42P06") || m.contains("42P07") =>
                {
                    tries += 1;
                    if tries > 5 {
                        return Err(Error::Storage(StorageError(m)));
                    }
                    std::thread::sleep(Duration::from_millis(50 * tries));
                }
                Err(e) => return Err(e),
            }
        }
        Ok((store, existed))
    }

    /// Sets the rule a purge applies to the rows of its scope.
    pub(crate) fn set_retire_rule(&self, rule: RetireRule) {
        let _ = self.retire.set(rule);
    }

    fn table(&self, cf: Cf) -> String {
        format!("\"{}\".\"{}\"", self.schema, cf.name())
    }

    /// The stored schema version, `None` when there is no schema (yet). Newer than
    /// this build: [`Error::UnsupportedFormat`].
    fn schema_version(&self) -> Result<Option<u16>, Error> {
        let sql = format!("SELECT version FROM \"{}\".schema_version", self.schema);
        let mut lease = self.pool.get()?;
        let rows = match lease.conn().client.query(&sql, &[]) {
            Ok(rows) => rows,
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_TABLE) => return Ok(None),
            Err(e) => return Err(engine(&e)),
        };
        let version: Option<i32> = rows.first().map(|r| r.get(0));
        match version {
            None => Ok(None),
            Some(v) => {
                let found = u16::try_from(v).map_err(|_| Error::Integrity)?;
                if found > SCHEMA_VERSION {
                    return Err(Error::UnsupportedFormat {
                        found,
                        supported: SCHEMA_VERSION,
                    });
                }
                Ok(Some(found))
            }
        }
    }

    fn create_schema(&self) -> Result<(), Error> {
        let s = &self.schema;
        let mut sql = format!(
            "BEGIN; CREATE SCHEMA IF NOT EXISTS \"{s}\"; \
             CREATE TABLE IF NOT EXISTS \"{s}\".schema_version (version integer NOT NULL); "
        );
        for cf in Cf::ALL {
            let column = if cf == Cf::Counters {
                "n bigint"
            } else {
                "v bytea"
            };
            let _ = write!(
                sql,
                "CREATE TABLE IF NOT EXISTS {} (k bytea PRIMARY KEY, {column} NOT NULL); ",
                self.table(cf)
            );
        }
        let _ = write!(
            sql,
            "INSERT INTO \"{s}\".schema_version SELECT {SCHEMA_VERSION} \
             WHERE NOT EXISTS (SELECT 1 FROM \"{s}\".schema_version); \
             UPDATE \"{s}\".schema_version SET version = {SCHEMA_VERSION} \
             WHERE version < {SCHEMA_VERSION}; COMMIT"
        );
        let mut lease = self.pool.get()?;
        let result = lease.conn().client.batch_execute(&sql);
        if let Err(e) = result {
            let _ = lease.conn().client.batch_execute("ROLLBACK");
            return Err(engine(&e));
        }
        // The version again, now that it is there (another replica may have written it).
        match self.schema_version()? {
            Some(_) => Ok(()),
            None => Err(storage("the vault's schema version was not recorded")),
        }
    }

    /// Runs a read on a pooled connection; once more on a new one if the first
    /// broke (a failover).
    fn read<T>(
        &self,
        mut f: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> Result<T, Error> {
        let mut retried = false;
        loop {
            let mut lease = self.pool.get()?;
            match f(lease.conn()) {
                Ok(value) => return Ok(value),
                Err(e) if lease.broken() => {
                    self.pool.broke();
                    if retried {
                        return Err(engine(&e));
                    }
                    retried = true;
                }
                Err(e) => return Err(engine(&e)),
            }
        }
    }

    fn value_column(cf: Cf) -> &'static str {
        // Counters are numbers, read as the little-endian bytes RocksDB's merge
        // operator keeps.
        if cf == Cf::Counters { "n" } else { "v" }
    }

    fn row_value(cf: Cf, row: &postgres::Row, at: usize) -> Vec<u8> {
        if cf == Cf::Counters {
            row.get::<_, i64>(at).to_le_bytes().to_vec()
        } else {
            row.get::<_, Vec<u8>>(at)
        }
    }

    /// Up to `limit` rows from `from` (inclusive or not) and below `end`, in key order.
    fn range(
        &self,
        cf: Cf,
        from: Option<(&[u8], bool)>,
        end: Option<&[u8]>,
        limit: i64,
    ) -> Result<Vec<KeyValue>, Error> {
        let mut sql = format!(
            "SELECT k, {} FROM {}",
            Self::value_column(cf),
            self.table(cf)
        );
        let mut conditions = Vec::new();
        let mut n = 0;
        if let Some((_, inclusive)) = from {
            n += 1;
            conditions.push(format!("k {} ${n}", if inclusive { ">=" } else { ">" }));
        }
        if end.is_some() {
            n += 1;
            conditions.push(format!("k < ${n}"));
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        n += 1;
        let _ = write!(sql, " ORDER BY k LIMIT ${n}");
        self.counts.seeks.fetch_add(1, Ordering::Relaxed);
        let rows = self.read(|conn| {
            let statement = conn.prepared(&sql)?;
            let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = Vec::new();
            let from_key = from.map(|(k, _)| k);
            if let Some(k) = &from_key {
                params.push(k);
            }
            if let Some(e) = &end {
                params.push(e);
            }
            params.push(&limit);
            conn.client.query(&statement, &params)
        })?;
        self.counts
            .steps
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, Vec<u8>>(0), Self::row_value(cf, row, 1)))
            .collect())
    }

    /// Sends `sql` (a transaction's statements) as one simple query; rolls back
    /// what it left open if it failed.
    fn execute(&self, lease: &mut Lease<'_>, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        lease.in_transaction = true;
        match lease.conn().client.simple_query(sql) {
            Ok(messages) => {
                // Ended by its `COMMIT`, or still open for the statements to come.
                lease.in_transaction = !sql.ends_with("COMMIT");
                Ok(messages)
            }
            Err(e) => {
                if lease.broken() {
                    self.pool.broke();
                } else {
                    Self::rollback(lease);
                }
                let error = engine(&e);
                if matches!(error, Error::Conflict) {
                    self.counts.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(error)
            }
        }
    }

    /// Ends the lease's open transaction; if that fails the connection is not
    /// reused.
    fn rollback(lease: &mut Lease<'_>) {
        if lease.conn().client.batch_execute("ROLLBACK").is_ok() {
            lease.in_transaction = false;
        }
    }

    /// A lease with `sql` (a transaction's first statements, no `COMMIT`) run on
    /// it. A pooled connection found broken (a failover since it was last used) is
    /// replaced and the statements sent again: nothing of them took effect.
    fn begin_on(&self, sql: &str) -> Result<(Lease<'_>, Vec<SimpleQueryMessage>), Error> {
        let mut lease = self.pool.get()?;
        match self.execute(&mut lease, sql) {
            Ok(messages) => Ok((lease, messages)),
            Err(_) if lease.reused && lease.broken() => {
                drop(lease);
                let mut lease = self.pool.get()?;
                let messages = self.execute(&mut lease, sql)?;
                Ok((lease, messages))
            }
            Err(e) => Err(e),
        }
    }

    /// The statements that lock and read the rows `expects` names (and `extra`,
    /// tagged 0), each row tagged with its family's number + 1.
    fn lock_sql(&self, sql: &mut String, expects: &[&Ops], extra: Option<(Cf, &[u8])>) {
        let mut by_cf: BTreeMap<Cf, BTreeMap<Vec<u8>, bool>> = BTreeMap::new();
        for ops in expects {
            for (cf, key) in ops.expects.keys() {
                let written = ops.writes.contains_key(&(*cf, key.clone()));
                let entry = by_cf
                    .entry(*cf)
                    .or_default()
                    .entry(key.clone())
                    .or_default();
                *entry |= written;
            }
        }
        if let Some((cf, key)) = extra {
            let _ = write!(sql, "SELECT 0, k, v FROM {} WHERE k = ", self.table(cf));
            hex(sql, key);
            sql.push_str(" FOR UPDATE; ");
        }
        for (cf, keys) in by_cf {
            for (strength, keys) in [
                (
                    "UPDATE",
                    keys.iter()
                        .filter(|(_, w)| **w)
                        .map(|(k, _)| k)
                        .collect::<Vec<_>>(),
                ),
                (
                    "SHARE",
                    keys.iter().filter(|(_, w)| !**w).map(|(k, _)| k).collect(),
                ),
            ] {
                if keys.is_empty() {
                    continue;
                }
                let _ = write!(
                    sql,
                    "SELECT {}, k, {} FROM {} WHERE k IN (",
                    cf as u8 + 1,
                    Self::value_column(cf),
                    self.table(cf)
                );
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    hex(sql, key);
                }
                let _ = write!(sql, ") ORDER BY k FOR {strength}; ");
            }
        }
    }

    /// The rows a lock query returned: (tag, key) → value.
    fn locked_rows(messages: &[SimpleQueryMessage]) -> Result<Locked, Error> {
        let mut rows = HashMap::new();
        for message in messages {
            if let SimpleQueryMessage::Row(row) = message {
                let tag: u8 = row
                    .get(0)
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| storage("PostgreSQL returned an unexpected row"))?;
                let key = unhex(row.get(1).unwrap_or_default())?;
                let text = row.get(2).unwrap_or_default();
                let value = if tag == Cf::Counters as u8 + 1 {
                    text.parse::<i64>()
                        .map_err(|_| storage("PostgreSQL returned an unexpected counter"))?
                        .to_le_bytes()
                        .to_vec()
                } else {
                    unhex(text)?
                };
                rows.insert((tag, key), value);
            }
        }
        Ok(rows)
    }

    /// Whether every expectation of `ops` holds in the locked `rows`.
    fn holds(ops: &Ops, rows: &Locked) -> bool {
        ops.expects.iter().all(|((cf, key), expected)| {
            let found = rows.get(&(*cf as u8 + 1, key.clone()));
            found.map(Vec::as_slice) == expected.as_deref()
        })
    }

    /// The statements that apply `ops`, ending with `COMMIT`.
    fn write_sql(&self, sql: &mut String, ops: &Ops) {
        let mut deletes: BTreeMap<Cf, Vec<&[u8]>> = BTreeMap::new();
        let mut upserts: Rows<'_> = BTreeMap::new();
        let mut inserts: Rows<'_> = BTreeMap::new();
        let mut bytes = 0;
        for ((cf, key), last) in &ops.writes {
            match last {
                Last::Delete => deletes.entry(*cf).or_default().push(key),
                Last::Put(value) => {
                    bytes += key.len() + value.len();
                    // Expected absent: a plain insert, which fails if another
                    // writer inserted the key meanwhile.
                    let fresh = matches!(ops.expects.get(&(*cf, key.clone())), Some(None));
                    let to = if fresh { &mut inserts } else { &mut upserts };
                    to.entry(*cf).or_default().push((key, value));
                }
            }
        }
        self.counts.keys_written.fetch_add(
            (ops.writes.len() + ops.adds.len()) as u64,
            Ordering::Relaxed,
        );
        self.counts
            .bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
        for (cf, keys) in deletes {
            let _ = write!(sql, "DELETE FROM {} WHERE k IN (", self.table(cf));
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                hex(sql, key);
            }
            sql.push_str("); ");
        }
        for (rows, conflict) in [
            (inserts, ""),
            (upserts, " ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v"),
        ] {
            for (cf, rows) in rows {
                let _ = write!(sql, "INSERT INTO {} (k, v) VALUES ", self.table(cf));
                for (i, (key, value)) in rows.iter().enumerate() {
                    if i > 0 {
                        sql.push(',');
                    }
                    sql.push('(');
                    hex(sql, key);
                    sql.push(',');
                    hex(sql, value);
                    sql.push(')');
                }
                let _ = write!(sql, "{conflict}; ");
            }
        }
        if !ops.adds.is_empty() {
            let table = self.table(Cf::Counters);
            let _ = write!(sql, "INSERT INTO {table} (k, n) VALUES ");
            for (i, (key, delta)) in ops.adds.iter().enumerate() {
                if i > 0 {
                    sql.push(',');
                }
                sql.push('(');
                hex(sql, key);
                let _ = write!(sql, ",{delta})");
            }
            let _ = write!(
                sql,
                " ON CONFLICT (k) DO UPDATE SET n = {table}.n + EXCLUDED.n; "
            );
        }
        sql.push_str("COMMIT");
    }

    /// Every transaction commits synchronously (see the module's documentation).
    fn begin(sql: &mut String, _sync: bool) {
        sql.push_str("BEGIN; SET LOCAL synchronous_commit = on; ");
    }

    /// Writes `ops` as one transaction: its expectations first, under locks.
    fn commit(&self, ops: Ops, sync: bool) -> Result<(), Error> {
        if ops.is_empty() && ops.expects.is_empty() {
            return Ok(());
        }
        let mut sql = String::new();
        Self::begin(&mut sql, sync);
        let mut lease = if ops.expects.is_empty() {
            self.pool.get()?
        } else {
            self.lock_sql(&mut sql, &[&ops], None);
            let (mut lease, messages) = self.begin_on(&sql)?;
            let holds = Self::locked_rows(&messages).map(|rows| Self::holds(&ops, &rows));
            if holds.as_ref().is_ok_and(|h| !h) {
                self.counts.conflicts.fetch_add(1, Ordering::Relaxed);
            }
            if !holds.as_ref().is_ok_and(|h| *h) {
                Self::rollback(&mut lease);
                return Err(holds.err().unwrap_or(Error::Conflict));
            }
            sql.clear();
            lease
        };
        self.write_sql(&mut sql, &ops);
        self.execute(&mut lease, &sql)?;
        // Every commit is synchronous (see the module's documentation).
        self.counts.commits_synced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// See [`Store::write_locked`](super::Store::write_locked).
    pub(crate) fn write_locked(
        &self,
        cf: Cf,
        key: &[u8],
        batches: Vec<Ops>,
        sync: bool,
        build: impl FnOnce(Option<Vec<u8>>, Vec<(Ops, bool)>) -> Result<Ops, Error>,
    ) -> Result<(), Error> {
        let mut sql = String::new();
        Self::begin(&mut sql, sync);
        let refs: Vec<&Ops> = batches.iter().collect();
        self.lock_sql(&mut sql, &refs, Some((cf, key)));
        let (mut lease, messages) = self.begin_on(&sql)?;
        let rows = match Self::locked_rows(&messages) {
            Ok(rows) => rows,
            Err(e) => {
                Self::rollback(&mut lease);
                return Err(e);
            }
        };
        let current = rows.get(&(0, key.to_vec())).cloned();
        let checked = batches
            .into_iter()
            .map(|ops| {
                let holds = Self::holds(&ops, &rows);
                if !holds {
                    self.counts.conflicts.fetch_add(1, Ordering::Relaxed);
                }
                (ops, holds)
            })
            .collect();
        let ops = match build(current, checked) {
            Ok(ops) => ops,
            Err(e) => {
                Self::rollback(&mut lease);
                return Err(e);
            }
        };
        sql.clear();
        self.write_sql(&mut sql, &ops);
        self.execute(&mut lease, &sql)?;
        // Every commit is synchronous (see the module's documentation).
        self.counts.commits_synced.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The rows of a family (a full count: for checks, not for serving).
    pub(crate) fn count(&self, cf: Cf) -> Result<u64, Error> {
        let sql = format!("SELECT count(*) FROM {}", self.table(cf));
        let row = self.read(|conn| conn.client.query_one(&sql, &[]))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    /// Empties every table and writes `rows` into `meta`, in one transaction, if
    /// `meta` holds `expected` under `key` (else [`Error::Conflict`]).
    pub(crate) fn reset(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        rows: &[(&[u8], &[u8])],
    ) -> Result<(), Error> {
        let mut sql = String::new();
        Self::begin(&mut sql, true);
        let mut check = Ops::default();
        check.expect(Cf::Meta, key, expected);
        self.lock_sql(&mut sql, &[&check], None);
        let (mut lease, messages) = self.begin_on(&sql)?;
        let holds = Self::locked_rows(&messages).map(|rows| Self::holds(&check, &rows));
        if !holds.as_ref().is_ok_and(|h| *h) {
            Self::rollback(&mut lease);
            return Err(holds.err().unwrap_or(Error::Conflict));
        }
        let tables: Vec<String> = Cf::ALL.iter().map(|&cf| self.table(cf)).collect();
        let mut sql = format!("TRUNCATE {}; ", tables.join(", "));
        let mut ops = Ops::default();
        for (k, v) in rows {
            ops.put(Cf::Meta, k, v);
        }
        self.write_sql(&mut sql, &ops);
        self.execute(&mut lease, &sql)?;
        Ok(())
    }

    /// The tables' statistics, for a check that a VACUUM ran: vacuum counts by table.
    fn vacuum_counts(&self) -> Result<HashMap<String, i64>, Error> {
        let rows = self.read(|conn| {
            conn.client.query(
                "SELECT relname::text, vacuum_count FROM pg_stat_user_tables WHERE schemaname = $1",
                &[&self.schema],
            )
        })?;
        Ok(rows
            .iter()
            .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
            .collect())
    }

    /// Applies the retirement rule to the rows of `cf` from `first` to `last`
    /// (everything if `None`), a chunk per transaction.
    fn retire_rows(
        &self,
        cf: Cf,
        range: Option<(&[u8], &[u8])>,
        rule: &RetireRule,
    ) -> Result<(), Error> {
        let mut from: Option<Vec<u8>> = range.map(|(first, _)| first.to_vec());
        let mut inclusive = true;
        loop {
            let rows = self.range(
                cf,
                from.as_deref().map(|k| (k, inclusive)),
                None,
                SCAN_CHUNK,
            )?;
            let mut ops = Ops::default();
            let mut done = rows.len() < SCAN_CHUNK as usize;
            for (key, value) in &rows {
                if range.is_some_and(|(_, last)| key.as_slice() > last) {
                    done = true;
                    break;
                }
                match rule(cf, key, value) {
                    Retired::Keep => {}
                    Retired::Remove => ops.delete(cf, key),
                    Retired::Replace(stub) => ops.put(cf, key, &stub),
                }
            }
            if !ops.is_empty() {
                self.commit(ops, true)?;
            }
            match rows.last() {
                Some((key, _)) if !done => {
                    from = Some(key.clone());
                    inclusive = false;
                }
                _ => return Ok(()),
            }
        }
    }
}

impl Storage for PgStore {
    type Batch<'a> = Ops;
    type Detached = Ops;

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let sql = format!(
            "SELECT {} FROM {} WHERE k = $1",
            Self::value_column(cf),
            self.table(cf)
        );
        self.counts.keys_read.fetch_add(1, Ordering::Relaxed);
        let row = self.read(|conn| {
            let statement = conn.prepared(&sql)?;
            conn.client.query_opt(&statement, &[&key])
        })?;
        Ok(row.map(|row| Self::row_value(cf, &row, 0)))
    }

    fn with_value<T>(
        &self,
        cf: Cf,
        key: &[u8],
        f: impl FnOnce(Option<&[u8]>) -> T,
    ) -> Result<T, Error> {
        Ok(f(self.get(cf, key)?.as_deref()))
    }

    fn multi_get<K: AsRef<[u8]>>(&self, cf: Cf, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        if let [key] = keys {
            return Ok(vec![self.get(cf, key.as_ref())?]);
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT k, {} FROM {} WHERE k = ANY($1)",
            Self::value_column(cf),
            self.table(cf)
        );
        let wanted: Vec<&[u8]> = keys.iter().map(AsRef::as_ref).collect();
        self.counts
            .keys_read
            .fetch_add(wanted.len() as u64, Ordering::Relaxed);
        let rows = self.read(|conn| {
            let statement = conn.prepared(&sql)?;
            conn.client.query(&statement, &[&wanted])
        })?;
        let found: HashMap<Vec<u8>, Vec<u8>> = rows
            .iter()
            .map(|row| (row.get::<_, Vec<u8>>(0), Self::row_value(cf, row, 1)))
            .collect();
        Ok(wanted.iter().map(|k| found.get(*k).cloned()).collect())
    }

    fn scan_prefix_from(
        &self,
        cf: Cf,
        prefix: &[u8],
        from: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let end = super::prefix_upper_bound(prefix);
        let mut start = if from.is_empty() && prefix.is_empty() {
            None
        } else {
            Some((from.to_vec(), true))
        };
        loop {
            let rows = self.range(
                cf,
                start
                    .as_ref()
                    .map(|(k, inclusive)| (k.as_slice(), *inclusive)),
                end.as_deref(),
                SCAN_CHUNK,
            )?;
            for (key, value) in &rows {
                if !f(key, value)? {
                    return Ok(());
                }
            }
            match rows.last() {
                Some((key, _)) if rows.len() == SCAN_CHUNK as usize => {
                    start = Some((key.clone(), false));
                }
                _ => return Ok(()),
            }
        }
    }

    fn scan_after(
        &self,
        cf: Cf,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, Error> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.range(cf, after.map(|k| (k, false)), None, limit)
    }

    fn last_key(&self, cf: Cf) -> Result<Option<Vec<u8>>, Error> {
        let sql = format!("SELECT k FROM {} ORDER BY k DESC LIMIT 1", self.table(cf));
        let row = self.read(|conn| {
            let statement = conn.prepared(&sql)?;
            conn.client.query_opt(&statement, &[])
        })?;
        Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
    }

    fn counter(&self, key: &[u8]) -> Result<i64, Error> {
        Ok(self
            .get(Cf::Counters, key)?
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, i64::from_le_bytes))
    }

    fn batch(&self) -> Ops {
        Ops::default()
    }

    fn shared(&self) -> bool {
        true
    }

    fn write(&self, batch: Ops) -> Result<(), Error> {
        self.commit(batch, self.sync_by_default)
    }

    fn write_synced(&self, batch: Ops) -> Result<(), Error> {
        self.commit(batch, true)
    }

    /// Nothing to refuse: a failed transaction changed nothing, and the next one
    /// starts from what the database holds.
    fn refuse_writes(&self, _cause: &Error) {}

    /// Each commit waits for its own flush; PostgreSQL groups them itself.
    fn syncing(&self) -> bool {
        false
    }

    /// Every commit was synchronous: nothing to make durable.
    fn sync_wal(&self) -> Result<(), Error> {
        Ok(())
    }

    fn detach(batch: Ops) -> Ops {
        batch
    }

    fn put_detached(&self, batch: &mut Ops, cf: Cf, key: &[u8], value: &[u8]) {
        batch.put(cf, key, value);
    }

    fn join(batches: Vec<Ops>) -> Ops {
        let mut joined = Ops::default();
        for batch in batches {
            joined.append(batch);
        }
        joined
    }

    fn write_detached(&self, batch: Ops, sync: bool) -> Result<(), Error> {
        self.commit(batch, sync)
    }

    fn estimate_keys(&self, cf: Cf) -> u64 {
        let name = self.table(cf);
        self.read(|conn| {
            conn.client.query_opt(
                "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass($1)",
                &[&name],
            )
        })
        .ok()
        .flatten()
        .map_or(0, |row| u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn counters(&self) -> StorageCounters {
        let c = &self.counts;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StorageCounters {
            keys_read: load(&c.keys_read),
            keys_written: load(&c.keys_written),
            seeks: load(&c.seeks),
            iterator_steps: load(&c.steps),
            wal_syncs: load(&c.commits_synced),
            bytes_written: load(&c.bytes_written),
            conflicts: load(&c.conflicts),
            ..StorageCounters::default()
        }
    }

    /// Copies of a vault on PostgreSQL are the cluster's own (`pg_basebackup`,
    /// WAL archiving).
    fn checkpoint(&self, _dir: &Path) -> Result<(), Error> {
        Err(Error::Unsupported(
            "backups of a vault on PostgreSQL are the cluster's own (pg_basebackup, WAL archiving)",
        ))
    }

    /// Applies the retirement rule to the rows of the scope (stubs for the doomed
    /// subjects' records, their other rows deleted), then runs `VACUUM` on the
    /// scope's tables and checks that it ran. Unlike RocksDB's check, this cannot
    /// prove the old row versions' bytes gone from every file: VACUUM frees the dead
    /// rows' space for reuse, and the WAL, its archives and the standbys keep them
    /// for a while. There the erasure rests on the destroyed key (README).
    fn purge_files(&self, scope: &PurgeScope, timeout: Duration) -> Result<bool, Error> {
        let rule = self
            .retire
            .get()
            .cloned()
            .ok_or_else(|| storage("the purge ran before the store knew its rule"))?;
        let mut tables = Vec::new();
        for span in &scope.spans {
            let range = span
                .range
                .as_ref()
                .map(|(a, b)| (a.as_slice(), b.as_slice()));
            if !scope.nothing_doomed {
                self.retire_rows(span.cf, range, &rule)?;
            }
            if !tables.contains(&span.cf) {
                tables.push(span.cf);
            }
        }
        if tables.is_empty() {
            return Ok(true);
        }
        // Every row the purge (and the erasures before it) deleted is older than
        // this transaction id: a VACUUM removes them only if no snapshot that could
        // still see them (a long transaction, a replication slot) is left.
        let horizon: i64 = self
            .read(|conn| {
                conn.client
                    .query_one("SELECT pg_current_xact_id()::text::bigint", &[])
            })?
            .get(0);
        // Other sessions' transactions that began before `horizon` are usually
        // short: wait a little for them. A long one leaves the purge pending, and
        // the worker tries again later.
        let deadline = Instant::now() + timeout.min(Duration::from_secs(5));
        while self.snapshots_older_than(horizon)? {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let before = self.vacuum_counts()?;
        let list: Vec<String> = tables.iter().map(|&cf| self.table(cf)).collect();
        let sql = format!("VACUUM {}", list.join(", "));
        {
            let mut lease = self.pool.get()?;
            lease
                .conn()
                .client
                .batch_execute(&sql)
                .map_err(|e| engine(&e))?;
        }
        // The statistics are written when the VACUUM ends; another replica's
        // VACUUM of the same table counts as well.
        let after = self.vacuum_counts()?;
        let ran = tables.iter().all(|cf| {
            let name = cf.name();
            after.get(name).copied().unwrap_or(0) > before.get(name).copied().unwrap_or(0)
        });
        Ok(ran && !self.snapshots_older_than(horizon)?)
    }
}

impl PgStore {
    /// Whether any session or replication slot of the cluster holds a snapshot
    /// that may still see rows deleted before transaction `horizon` (a 64-bit id):
    /// then a VACUUM leaves them. Sessions running a VACUUM do not count: the
    /// server leaves their snapshots out of every other VACUUM's horizon.
    fn snapshots_older_than(&self, horizon: i64) -> Result<bool, Error> {
        let row = self.read(|conn| {
            conn.client.query_one(
                "WITH h AS (SELECT age((($1::bigint) % 4294967296)::text::xid) AS age) \
                 SELECT (SELECT count(*) FROM pg_stat_activity, h \
                         WHERE pid <> pg_backend_pid() AND backend_xmin IS NOT NULL \
                         AND pid NOT IN (SELECT pid FROM pg_stat_progress_vacuum) \
                         AND age(backend_xmin) >= h.age) \
                      + (SELECT count(*) FROM pg_replication_slots, h \
                         WHERE xmin IS NOT NULL AND age(xmin) >= h.age)",
                &[&horizon],
            )
        })?;
        Ok(row.get::<_, i64>(0) > 0)
    }
}
