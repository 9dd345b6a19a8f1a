//! The vault's live key state: the current keyring and the header that seals it,
//! the lock that orders writes of keys against a rotation, and the cache of
//! unwrapped subject keys (DEKs).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::codec::decode;
use crate::error::Error;
use crate::header::Header;
use crate::keys::{DekSlot, Keyring, RootSecret};
use crate::store::{Cf, Storage, Store};
use crate::subjects::{Dek, DekCache, KEY_FORMAT, KeyEntry, Sid};

/// The header and the root secret that seals the keyring in it.
pub(crate) struct HeaderState {
    pub header: Header,
    pub root: RootSecret,
}

pub(crate) struct KeyState {
    vault_id: [u8; 16],
    dir: PathBuf,
    store: Arc<Store>,
    /// The current keyring. Readers clone the `Arc` and let go at once.
    ring: RwLock<Arc<Keyring>>,
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
            ring: RwLock::new(Arc::new(ring)),
            writes: RwLock::new(()),
            header: Mutex::new(header),
            deks: DekCache::new(dek_cache_capacity),
        }
    }

    pub(crate) fn ring(&self) -> Arc<Keyring> {
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
        self.write_header(&header)?;
        state.header = header;
        *self.ring.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ring);
        Ok(())
    }

    /// Replaces the header file. A failure leaves the file old or new, which this
    /// vault cannot tell: it then refuses writes until reopened (as after a failed
    /// write of the store), and the reopened vault reads what is on disk.
    pub(crate) fn write_header(&self, header: &Header) -> Result<(), Error> {
        header
            .write(&self.dir)
            .inspect_err(|e| self.store.refuse_writes(e))
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
        let key = ring.unwrap_dek(entry.kek_version, &slot, &entry.wrapped)?;
        Ok(Some(Arc::new(Dek::new(&key, entry.subject_hash))))
    }
}
