//! Key management: KEK rotation, root-key change and key status.
//!
//! Rotation makes a new KEK version active at once (new subjects get it immediately),
//! then rewraps every DEK in checkpointed batches: each batch's rewrapped keys, the
//! per-version counters and the cursor are one atomic write, so a crash loses at most
//! the batch in flight and the rotation resumes after the cursor. "A rotation is in
//! progress" is simply "the keyring holds more than one version". Old versions are
//! destroyed (removed from the keyring, which is rewritten atomically) only after a
//! full pass found no DEK left under them.

use std::sync::PoisonError;

use crate::codec::{decode, encode};
use crate::error::Error;
use crate::keys::{DekSlot, KdfRecord, RootKey, RootSecret};
use crate::store::{Cf, Storage, WriteSet};
use crate::subjects::{KEY_FORMAT, KeyEntry, Sid, dek_counter};
use crate::vault::{Inner, Vault};

const ROTATION_CURSOR: &[u8] = b"rotation/cursor";

/// One KEK version and the DEKs it wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KekVersionStatus {
    /// The version number.
    pub version: u32,
    /// Whether new subject keys are wrapped with it.
    pub active: bool,
    /// How many subject keys it wraps.
    pub deks: u64,
}

/// The state of the vault's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStatus {
    /// The version new subject keys are wrapped with.
    pub active_version: u32,
    /// Every KEK version that still exists.
    pub versions: Vec<KekVersionStatus>,
    /// Whether a rotation is under way (more than one version exists).
    pub rotation_in_progress: bool,
    /// Erasures whose bytes are not purged yet.
    pub pending_purges: usize,
    /// The error the background worker's last run ended with (purge or rotation),
    /// if it failed; `None` when it succeeded or there is no worker.
    pub background_error: Option<String>,
}

impl Vault {
    /// Starts a KEK rotation: a new version is active when this returns. Rewrapping
    /// is done by [`resume_kek_rotation`](Self::resume_kek_rotation) (or the background
    /// worker). If a rotation is already under way this only reports its status.
    pub fn start_kek_rotation(&self) -> Result<KeyStatus, Error> {
        let inner = &*self.inner;
        // A replica that started one at the same time wins; this one then sees it.
        inner.retrying(|| {
            let _keys = inner
                .keys
                .writes()
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            inner.keys.refresh()?;
            let ring = inner.keys.ring();
            if ring.versions().count() == 1 {
                // A cursor left by a rotation that finished just before a crash.
                let mut batch = inner.store.batch();
                batch.delete(Cf::Meta, ROTATION_CURSOR);
                // Synced before the new keyring is: a stale cursor surviving a
                // machine crash would skip DEKs in the next rotation.
                inner.store.write_synced(batch)?;
                let mut next = ring.duplicate()?;
                next.add_active()?;
                inner.keys.persist_ring(next)?;
            }
            Ok(())
        })?;
        self.key_status()
    }

    /// Rewraps DEKs batch by batch until the rotation is complete, then destroys the
    /// old versions. Returns at once when no rotation is under way.
    pub fn resume_kek_rotation(&self) -> Result<KeyStatus, Error> {
        while self.inner.rotation_step()? {}
        self.key_status()
    }

    /// Starts a rotation and runs it to completion.
    pub fn rotate_kek(&self) -> Result<KeyStatus, Error> {
        self.start_kek_rotation()?;
        self.resume_kek_rotation()
    }

    /// Finishes the rotation under way, if any, and returns the KEK versions it
    /// retired with the key status after. A retired version is gone from the
    /// keyring and the current header: a subject key wrapped under it (bytes
    /// recovered from the disk, say) unwraps with nothing this vault holds. Old
    /// headers (an old copy, a backup, freed blocks) still hold it and open with
    /// the same root key: changing the root key and destroying the old one is what
    /// makes them unreadable.
    pub fn retire_old_keks(&self) -> Result<(Vec<u32>, KeyStatus), Error> {
        let before: Vec<u32> = self.inner.keys.ring().versions().collect();
        let status = self.resume_kek_rotation()?;
        let retired = before
            .into_iter()
            .filter(|v| status.versions.iter().all(|s| s.version != *v))
            .collect();
        Ok((retired, status))
    }

    /// Runs one checkpointed batch of the rotation in progress; `false` when there
    /// is nothing (left) to do.
    pub fn kek_rotation_step(&self) -> Result<bool, Error> {
        self.inner.rotation_step()
    }

    /// Versions, DEKs per version, rotation and purge progress.
    pub fn key_status(&self) -> Result<KeyStatus, Error> {
        let inner = &*self.inner;
        let ring = inner.keys.ring();
        let mut versions = Vec::new();
        for version in ring.versions() {
            let deks = inner.store.counter(&dek_counter(version))?.max(0) as u64;
            versions.push(KekVersionStatus {
                version,
                active: version == ring.active(),
                deks,
            });
        }
        Ok(KeyStatus {
            active_version: ring.active(),
            rotation_in_progress: versions.len() > 1,
            versions,
            pending_purges: inner.pending()?.len(),
            background_error: inner.background_error(),
        })
    }

    /// Replaces the root key (a new passphrase or key): the keyring is resealed and
    /// the header rewritten atomically. O(1): no subject key is touched.
    pub fn change_root_key(&self, new_root: &RootKey) -> Result<(), Error> {
        let inner = &*self.inner;
        // Argon2id runs before the lock, so writers are not held up by it.
        let kdf = KdfRecord::for_key(new_root, &inner.opts.kdf)?;
        let secret = RootSecret::derive(new_root, &kdf)?;
        let _keys = inner
            .keys
            .writes()
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let ring = inner.keys.ring();
        let mut state = inner.keys.header();
        let mut header = state.header.clone();
        header.kdf = kdf;
        header.commitment = secret.commitment(&inner.vault_id);
        header.keyring = secret.seal_keyring(&inner.vault_id, &ring)?;
        inner.keys.write_header(&state, &header)?;
        state.header = header;
        state.root = secret;
        Ok(())
    }
}

impl Inner {
    pub(crate) fn rotation_step(&self) -> Result<bool, Error> {
        self.retrying(|| self.rotation_step_once())
    }

    fn rotation_step_once(&self) -> Result<bool, Error> {
        // On a shared store another replica may have started (or finished) one.
        self.keys.refresh()?;
        // The common case, no rotation, without taking the writers' lock.
        if self.keys.ring().versions().count() <= 1 {
            return Ok(false);
        }
        let _keys = self
            .keys
            .writes()
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let sealed = self.keys.sealed();
        let ring = &*sealed.ring;
        if ring.versions().count() <= 1 {
            return Ok(false);
        }
        let target = ring.active();
        let cursor = self.store.get(Cf::Meta, ROTATION_CURSOR)?;
        let page = self
            .store
            .scan_after(Cf::Keys, cursor.as_deref(), self.opts.rotation_batch)?;
        let mut batch = self.store.batch();
        // On a shared store, replicas' steps take turns on the cursor, and a key
        // erased or rewrapped by another meanwhile is not written back.
        batch.expect(Cf::Meta, ROTATION_CURSOR, cursor.as_deref());
        sealed.expect_header(&mut batch);
        // DEKs moved off each old version, counted once per batch (one merge per
        // version, not two per DEK).
        let mut moved: std::collections::BTreeMap<u32, i64> = std::collections::BTreeMap::new();
        for (sid, value) in &page {
            let sid: Sid = sid.as_slice().try_into().map_err(|_| Error::Integrity)?;
            let mut entry: KeyEntry = decode(KEY_FORMAT, value)?;
            if entry.kek_version == target {
                continue;
            }
            let slot = DekSlot {
                vault_id: &self.vault_id,
                sid: &sid,
                subject_hash: &entry.subject_hash,
            };
            let dek = ring.unwrap_dek(entry.kek_version, &slot, &entry.wrapped)?;
            let (version, wrapped) = ring.wrap_dek_with(target, &slot, &dek)?;
            batch.expect(Cf::Keys, &sid, Some(value));
            *moved.entry(entry.kek_version).or_default() += 1;
            entry.kek_version = version;
            entry.wrapped = wrapped;
            batch.put(Cf::Keys, &sid, &encode(KEY_FORMAT, &entry));
        }
        let total: i64 = moved.values().sum();
        for (version, count) in moved {
            batch.add(&dek_counter(version), -count);
        }
        if total > 0 {
            batch.add(&dek_counter(target), total);
        }
        if let Some((last, _)) = page.last() {
            batch.put(Cf::Meta, ROTATION_CURSOR, last);
        }
        // Synced whatever the durability: the old KEK is destroyed (in the header,
        // fsynced) only after every rewrap is on disk.
        self.store.write_synced(batch)?;
        if page.len() == self.opts.rotation_batch {
            return Ok(true);
        }
        // A full pass is done, and no DEK under an old version can have been written
        // meanwhile (new subjects use the active version; writers hold `key_writes`).
        // Before destroying anything, check the whole keys family once more: a DEK
        // left under an old version (a lost cursor reset, say) restarts the pass.
        let mut leftover = false;
        self.store.scan_prefix(Cf::Keys, &[], |_, value| {
            let entry: KeyEntry = decode(KEY_FORMAT, value)?;
            leftover = entry.kek_version != target;
            Ok(!leftover)
        })?;
        if leftover {
            let mut batch = self.store.batch();
            batch.delete(Cf::Meta, ROTATION_CURSOR);
            self.store.write_synced(batch)?;
            return Ok(true);
        }
        let mut next = ring.duplicate()?;
        let retired = next.retain_active_only();
        self.keys.persist_ring(next)?;
        let mut batch = self.store.batch();
        batch.delete(Cf::Meta, ROTATION_CURSOR);
        for version in retired {
            batch.delete(Cf::Counters, &dek_counter(version));
        }
        self.store.write_synced(batch)?;
        Ok(false)
    }
}
