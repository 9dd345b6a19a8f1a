//! The vault's live key state: the current keyring and the header that seals it,
//! the lock that orders writes of keys against a rotation, and the cache of
//! unwrapped subject keys (DEKs).
//!
//! On a shared store the header is a row of the store, which other replicas
//! rewrite when they rotate the KEK: a replica reloads it when a key names a KEK
//! version it does not hold, when a write that depended on it conflicted, and
//! before a rotation step. Every write that wraps a key under the active version
//! expects the header its keyring came from ([`Sealed::expect_header`]), so no
//! replica wraps a
//! new key under a version another has just retired.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::codec::decode;
use crate::error::Error;
use crate::header::{HEADER_KEY, Header};
use crate::keys::{DekSlot, Keyring, RootSecret};
use crate::store::{Batch, Cf, Storage, Store, WriteSet};
use crate::subjects::{Dek, DekCache, KEY_FORMAT, KeyEntry, Sid};

/// The header and the root secret that seals the keyring in it.
pub(crate) struct HeaderState {
    pub header: Header,
    pub root: RootSecret,
}

/// A keyring and the header bytes that sealed it, taken together.
#[derive(Clone)]
pub(crate) struct Sealed {
    pub ring: Arc<Keyring>,
    header: Arc<Vec<u8>>,
}

impl Sealed {
    /// Makes `batch` (on a shared store) depend on the header this keyring came
    /// from: it commits only if no other replica changed the keyring since, so a
    /// key wrapped under this keyring's active version is never written after that
    /// version was retired.
    pub(crate) fn expect_header(&self, batch: &mut Batch<'_>) {
        batch.expect(Cf::Meta, HEADER_KEY, Some(&self.header));
    }
}

pub(crate) struct KeyState {
    vault_id: [u8; 16],
    dir: PathBuf,
    store: Arc<Store>,
    /// The current keyring and the header bytes that seal it, swapped together.
    /// Readers clone the `Arc`s and let go at once.
    ring: RwLock<Sealed>,
    /// Taken (shared) by every write of the `keys` column family and exclusively by
    /// key rotation, so a rotation batch never races an erasure or a new subject.
    writes: RwLock<()>,
    header: Mutex<HeaderState>,
    deks: DekCache,
}

impl KeyState {
    pub(crate) fn new(
        dir: PathBuf,
        store: Arc<Store>,
        header: HeaderState,
        ring: Keyring,
        dek_cache_capacity: usize,
    ) -> KeyState {
        KeyState {
            vault_id: header.header.vault_id,
            dir,
            store,
            ring: RwLock::new(Sealed {
                header: Arc::new(header.header.to_bytes().unwrap_or_default()),
                ring: Arc::new(ring),
            }),
            writes: RwLock::new(()),
            header: Mutex::new(header),
            deks: DekCache::new(dek_cache_capacity),
        }
    }

    pub(crate) fn ring(&self) -> Arc<Keyring> {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .ring
            .clone()
    }

    /// The keyring with the header bytes it came from, for a write that wraps a key
    /// under it (see [`Sealed::expect_header`]).
    pub(crate) fn sealed(&self) -> Sealed {
        self.ring
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The lock every write of a key takes shared, and a rotation exclusively.
    pub(crate) fn writes(&self) -> &RwLock<()> {
        &self.writes
    }

    /// The header and root secret, for a change of the root key.
    pub(crate) fn header(&self) -> MutexGuard<'_, HeaderState> {
        self.header.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Seals `ring` into the header, writes it durably, then makes it current.
    /// Callers hold [`writes`](Self::writes) exclusively.
    pub(crate) fn persist_ring(&self, ring: Keyring) -> Result<(), Error> {
        let mut state = self.header();
        let mut header = state.header.clone();
        header.keyring = state.root.seal_keyring(&self.vault_id, &ring)?;
        self.write_header(&state, &header)?;
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Sealed {
            header: Arc::new(header.to_bytes()?),
            ring: Arc::new(ring),
        };
        state.header = header;
        Ok(())
    }

    /// Replaces the header file. A failure leaves the file old or new, which this
    /// vault cannot tell: it then refuses writes until reopened (as after a failed
    /// write of the store), and the reopened vault reads what is on disk. On a
    /// shared store, the header row, if it is still the one this replica holds
    /// (else [`Error::Conflict`]). Callers hold the header's lock.
    pub(crate) fn write_header(&self, state: &HeaderState, header: &Header) -> Result<(), Error> {
        if self.store.shared() {
            let mut batch = self.store.batch();
            batch.expect(Cf::Meta, HEADER_KEY, Some(&state.header.to_bytes()?));
            batch.put(Cf::Meta, HEADER_KEY, &header.to_bytes()?);
            return self.store.write_synced(batch);
        }
        header
            .write(&self.dir)
            .inspect_err(|e| self.store.refuse_writes(e))
    }

    /// On a shared store, reloads the header if another replica rewrote it (a KEK
    /// rotation) and makes its keyring current. A header this root key does not
    /// open (the root key was changed, which is done with every replica stopped)
    /// is [`Error::WrongRootKey`].
    pub(crate) fn refresh(&self) -> Result<(), Error> {
        if !self.store.shared() {
            return Ok(());
        }
        let Some(bytes) = self.store.get(Cf::Meta, HEADER_KEY)? else {
            return Err(Error::Integrity);
        };
        let mut state = self.header();
        if state.header.to_bytes()? == bytes {
            return Ok(());
        }
        let header = Header::parse(&bytes, &self.dir)?;
        if header.vault_id != self.vault_id {
            return Err(Error::Integrity);
        }
        state.root.check(&header.vault_id, &header.commitment)?;
        let ring = state.root.open_keyring(&header.vault_id, &header.keyring)?;
        state.header = header;
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Sealed {
            header: Arc::new(bytes),
            ring: Arc::new(ring),
        };
        Ok(())
    }

    /// The subject's DEK: from the cache, else unwrapped from the `keys` family.
    /// `None` when the key does not exist (erased, or never existed).
    pub(crate) fn dek(&self, sid: &Sid) -> Result<Option<Arc<Dek>>, Error> {
        self.deks.get_or_load(sid, || self.load(&self.ring(), sid))
    }

    /// Like [`dek`](Self::dek), with a keyring the caller already holds.
    pub(crate) fn dek_with(&self, ring: &Keyring, sid: &Sid) -> Result<Option<Arc<Dek>>, Error> {
        self.deks.get_or_load(sid, || self.load(ring, sid))
    }

    /// Caches the key of a subject just created.
    pub(crate) fn remember(&self, sid: Sid, dek: Arc<Dek>) {
        self.deks.insert(sid, dek);
    }

    /// Drops a subject's key from the cache (its stored key is being destroyed).
    pub(crate) fn forget(&self, sid: &Sid) {
        self.deks.remove(sid);
    }

    /// Keys in the cache.
    pub(crate) fn cached(&self) -> usize {
        self.deks.len()
    }

    fn load(&self, ring: &Keyring, sid: &Sid) -> Result<Option<Arc<Dek>>, Error> {
        let Some(bytes) = self.store.get(Cf::Keys, sid)? else {
            return Ok(None);
        };
        let entry: KeyEntry = decode(KEY_FORMAT, &bytes)?;
        let slot = DekSlot {
            vault_id: &self.vault_id,
            sid,
            subject_hash: &entry.subject_hash,
        };
        if !ring.holds(entry.kek_version) && self.store.shared() {
            // Wrapped by another replica under a version this one has not seen yet.
            self.refresh()?;
            let key = self
                .ring()
                .unwrap_dek(entry.kek_version, &slot, &entry.wrapped)?;
            return Ok(Some(Arc::new(Dek::new(&key, entry.subject_hash))));
        }
        let key = ring.unwrap_dek(entry.kek_version, &slot, &entry.wrapped)?;
        Ok(Some(Arc::new(Dek::new(&key, entry.subject_hash))))
    }
}
