//! What ops and the server read about an open vault: storage counters, cache
//! sizes, whether a read may wait, its directory. (Key status is in `rotate`.)

use std::path::Path;

use crate::store::{Storage, StorageCounters};
use crate::vault::Vault;

impl Vault {
    /// Whether a read may have to wait now: for the disk when each read's audit
    /// event is synced ([`VaultOptions::sync_read_events`](crate::VaultOptions::sync_read_events) with synced durability),
    /// or for a commit of the staged read events when the background worker has
    /// fallen behind. Otherwise a short read does a few point reads, decryption and
    /// a copy into a mapped file (or one `write`), and can run where blocking is not
    /// allowed for long (an async executor's thread).
    pub fn reads_may_wait(&self) -> bool {
        self.inner.journal.reads_may_wait()
    }

    /// Whether every write waits for another process (a vault on PostgreSQL: the
    /// database): then [`try_tokenize_batch_unsynced`](Self::try_tokenize_batch_unsynced)
    /// always answers `None`, and trying it is wasted work.
    pub fn writes_always_wait(&self) -> bool {
        self.inner.store.shared()
    }

    /// Storage-engine counters (zero unless [`VaultOptions::statistics`](crate::VaultOptions::statistics) is on), and
    /// the block cache's capacity and use.
    pub fn storage_counters(&self) -> StorageCounters {
        self.inner.store.counters()
    }

    /// Number of subject keys in the DEK cache: at most its capacity rounded up to a
    /// multiple of 16 (it has 16 shards).
    pub fn cached_keys(&self) -> usize {
        self.inner.keys.cached()
    }

    /// Number of recently written subjects kept in memory with their keys, for
    /// tokenizations that then read neither: at most the DEK cache's capacity rounded
    /// up to a multiple of 16. Unwrapped keys in memory are at most
    /// `cached_keys() + cached_subjects()` (a key in both caches counts twice), plus
    /// those of calls under way.
    pub fn cached_subjects(&self) -> usize {
        self.inner.subjects.len()
    }

    /// The vault's directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }
}
