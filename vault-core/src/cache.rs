//! A bounded cache in 16 shards with second-chance (CLOCK) eviction, for keys whose
//! first byte is random (storage ids and subject hashes).
//!
//! A hit sets one flag in the entry it finds. An LRU list would also unlink the entry
//! and relink it at the head, touching its neighbours: with a million subjects those
//! are cache misses on every read (a read of a random token paid about 0.7 µs for them).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::Error;

const SHARDS: usize = 16;

pub(crate) struct ShardedCache<K, V> {
    shards: Vec<Mutex<Shard<K, V>>>,
    /// Capacity 0: nothing is kept (a shared store, where another replica may
    /// change what a cached value came from).
    off: bool,
}

/// One shard: the entries, and their keys in a ring that the clock hand sweeps.
struct Shard<K, V> {
    entries: HashMap<K, Entry<V>>,
    ring: Vec<K>,
    hand: usize,
    capacity: usize,
}

struct Entry<V> {
    value: V,
    /// Where the key is in the ring.
    at: usize,
    /// Read since the hand last passed: spared once.
    referenced: bool,
}

impl<K, V> std::fmt::Debug for ShardedCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedCache").finish_non_exhaustive()
    }
}

impl<K: AsRef<[u8]> + Hash + Eq + Copy, V> Shard<K, V> {
    fn get(&mut self, key: &K) -> Option<&V> {
        let entry = self.entries.get_mut(key)?;
        entry.referenced = true;
        Some(&entry.value)
    }

    fn insert(&mut self, key: K, value: V) {
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.value = value;
            entry.referenced = true;
            return;
        }
        if self.ring.len() >= self.capacity {
            self.evict();
        }
        let at = self.ring.len();
        self.ring.push(key);
        self.entries.insert(
            key,
            Entry {
                value,
                at,
                referenced: false,
            },
        );
    }

    fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.unring(entry.at);
        Some(entry.value)
    }

    /// Removes the first entry the hand finds unread since its last pass.
    fn evict(&mut self) {
        // Each entry is spared at most once, so two sweeps find one.
        for _ in 0..2 * self.ring.len() {
            if self.hand >= self.ring.len() {
                self.hand = 0;
            }
            let key = self.ring[self.hand];
            match self.entries.get_mut(&key) {
                Some(entry) if entry.referenced => {
                    entry.referenced = false;
                    self.hand += 1;
                }
                _ => {
                    self.entries.remove(&key);
                    self.unring(self.hand);
                    return;
                }
            }
        }
    }

    /// Takes the key at `at` out of the ring; the last key moves into its place.
    fn unring(&mut self, at: usize) {
        self.ring.swap_remove(at);
        if let Some(moved) = self.ring.get(at)
            && let Some(entry) = self.entries.get_mut(moved)
        {
            entry.at = at;
        }
    }
}

impl<K: AsRef<[u8]> + Hash + Eq + Copy, V> ShardedCache<K, V> {
    pub(crate) fn new(capacity: usize) -> ShardedCache<K, V> {
        let per_shard = capacity.div_ceil(SHARDS).max(1);
        ShardedCache {
            off: capacity == 0,
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        entries: HashMap::new(),
                        ring: Vec::new(),
                        hand: 0,
                        capacity: per_shard,
                    })
                })
                .collect(),
        }
    }

    fn shard(&self, key: &K) -> MutexGuard<'_, Shard<K, V>> {
        let first = key.as_ref().first().copied().unwrap_or(0);
        self.shards[usize::from(first) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, key: K, value: V) {
        if self.off {
            return;
        }
        self.shard(&key).insert(key, value);
    }

    /// Removes and returns the cached value.
    pub(crate) fn remove(&self, key: &K) -> Option<V> {
        self.shard(key).remove(key)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).ring.len())
            .sum()
    }
}

impl<K: AsRef<[u8]> + Hash + Eq + Copy, V: Clone> ShardedCache<K, V> {
    /// The cached value, or the result of `load` (cached when `Some`). `load` runs
    /// under the shard's lock, so a [`remove`](Self::remove) after a write cannot be
    /// overtaken by a load that read before it.
    pub(crate) fn get_or_load(
        &self,
        key: &K,
        load: impl FnOnce() -> Result<Option<V>, Error>,
    ) -> Result<Option<V>, Error> {
        if self.off {
            return load();
        }
        let mut shard = self.shard(key);
        if let Some(value) = shard.get(key) {
            return Ok(Some(value.clone()));
        }
        let Some(value) = load()? else {
            return Ok(None);
        };
        shard.insert(*key, value.clone());
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_removal_sticks() -> Result<(), Error> {
        let cache = ShardedCache::<[u8; 16], u32>::new(32);
        for i in 0..=255u8 {
            cache.insert([i; 16], u32::from(i));
        }
        assert!(cache.len() <= 32, "{}", cache.len());
        assert_eq!(cache.get_or_load(&[1; 16], || Ok(Some(7)))?, Some(7));
        assert_eq!(cache.remove(&[1; 16]), Some(7));
        assert_eq!(cache.get_or_load(&[1; 16], || Ok(None))?, None);
        Ok(())
    }

    #[test]
    fn read_entries_outlive_unread_ones() -> Result<(), Error> {
        // All keys in one shard (same first byte), four per shard.
        let cache = ShardedCache::<[u8; 2], u32>::new(4 * SHARDS);
        for i in 0..4u8 {
            cache.insert([0, i], u32::from(i));
        }
        let hot = |cache: &ShardedCache<[u8; 2], u32>| {
            cache.get_or_load(&[0, 2], || panic!("evicted: the read entry"))
        };
        hot(&cache)?;
        for i in 4..40u8 {
            cache.insert([0, i], u32::from(i));
            hot(&cache)?;
        }
        assert_eq!(cache.len(), 4);
        // Every key is still found through its ring position after the swaps.
        let shard = cache.shard(&[0, 0]);
        for (at, key) in shard.ring.iter().enumerate() {
            assert_eq!(shard.entries.get(key).map(|e| e.at), Some(at));
        }
        assert_eq!(shard.entries.len(), shard.ring.len());
        Ok(())
    }
}
