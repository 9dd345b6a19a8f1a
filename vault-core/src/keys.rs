//! The key hierarchy: root key → KEK keyring → one DEK per subject.
//!
//! - The root key comes from a passphrase (Argon2id, parameters and salt in the
//!   header) or from 32 bytes supplied by ops. The vault never writes it to disk; it
//!   stores a key commitment (keyed BLAKE3 under a derived subkey) so that a wrong
//!   root key is detected before anything is decrypted.
//! - The keyring holds the versioned KEKs and the index key (from which the subject-id
//!   hash key and the token-tag key are derived). It is sealed under a subkey of the
//!   root key and kept in the header file, so changing the root key is O(1).
//! - Each subject's DEK is random, sealed under one KEK version with AAD binding it to
//!   the vault, the subject's storage id and the KEK version.

use std::collections::BTreeMap;
use std::fmt;

use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use unicode_normalization::UnicodeNormalization;
use zeroize::Zeroizing;

use crate::crypto::{Aead256, KEY_LEN, Key, aad, domain, label, random_bytes};
use crate::error::Error;
use crate::options::KdfParams;
use crate::token::{Layout, TokenCodec};

/// The key that opens a vault. Never stored by the vault; wiped on drop.
pub struct RootKey(RootKeyInner);

enum RootKeyInner {
    Passphrase(SecretString),
    Raw(Key),
}

impl RootKey {
    /// The fewest characters a passphrase may have to create a vault or become its
    /// new root key. (Vaults made before this minimum still open with theirs.)
    pub const MIN_PASSPHRASE_CHARS: usize = 12;

    /// A passphrase, stretched with Argon2id. The string is wiped on drop. A new
    /// vault refuses one shorter than [`MIN_PASSPHRASE_CHARS`](Self::MIN_PASSPHRASE_CHARS)
    /// ([`Error::InvalidOption`]).
    pub fn passphrase(passphrase: impl Into<String>) -> RootKey {
        RootKey(RootKeyInner::Passphrase(SecretString::from(
            passphrase.into(),
        )))
    }

    /// A 32-byte key supplied by ops (from a file or the environment). The bytes are
    /// copied; wipe your own copy.
    pub fn from_bytes(bytes: &[u8]) -> Result<RootKey, Error> {
        Key::from_slice(bytes)
            .map(|k| RootKey(RootKeyInner::Raw(k)))
            .ok_or(Error::InvalidOption("a root key must be exactly 32 bytes"))
    }

    /// A new random 32-byte root key, e.g. for a development key file. Read it out with
    /// [`RootKey::expose_bytes`] to store it.
    pub fn generate() -> Result<RootKey, Error> {
        Ok(RootKey(RootKeyInner::Raw(Key::random()?)))
    }

    /// The raw key bytes, for a root key made with [`RootKey::from_bytes`] or
    /// [`RootKey::generate`]; `None` for a passphrase.
    pub fn expose_bytes(&self) -> Option<&[u8; 32]> {
        match &self.0 {
            RootKeyInner::Raw(k) => Some(k.expose()),
            RootKeyInner::Passphrase(_) => None,
        }
    }

    fn is_passphrase(&self) -> bool {
        matches!(self.0, RootKeyInner::Passphrase(_))
    }

    /// Derives the 32-byte root secret according to the vault's KDF record.
    fn derive(&self, kdf: &KdfRecord) -> Result<Key, Error> {
        match (&self.0, kdf) {
            (RootKeyInner::Raw(k), KdfRecord::Raw) => Ok(Key::fill_with(|out| {
                out.copy_from_slice(k.expose());
            })),
            (
                RootKeyInner::Passphrase(p),
                KdfRecord::Argon2id {
                    memory_kib,
                    iterations,
                    parallelism,
                    salt,
                },
            ) => {
                // The header is not authenticated before this runs: refuse parameters
                // no honest vault has, rather than allocate or loop without bound.
                let stored = KdfParams {
                    memory_kib: *memory_kib,
                    iterations: *iterations,
                    parallelism: *parallelism,
                };
                stored.validate().map_err(|_| Error::Integrity)?;
                let params = Params::new(*memory_kib, *iterations, *parallelism, Some(KEY_LEN))
                    .map_err(|_| Error::Kdf)?;
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
                let mut result = Ok(());
                let key = Key::fill_with(|out| {
                    result = argon.hash_password_into(p.expose_secret().as_bytes(), salt, out);
                });
                result.map_err(|_| Error::Kdf)?;
                Ok(key)
            }
            // A passphrase for a raw-key vault or the reverse: simply the wrong key.
            _ => Err(Error::WrongRootKey),
        }
    }
}

impl fmt::Debug for RootKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            RootKeyInner::Passphrase(_) => f.write_str("RootKey::Passphrase([REDACTED])"),
            RootKeyInner::Raw(_) => f.write_str("RootKey::Raw([REDACTED])"),
        }
    }
}

/// How the root secret is derived, as stored in the header.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) enum KdfRecord {
    Raw,
    Argon2id {
        memory_kib: u32,
        iterations: u32,
        parallelism: u32,
        salt: [u8; 16],
    },
}

impl KdfRecord {
    /// Whether `root` may become the key of a new vault (or a vault's new key):
    /// a passphrase must be long enough and its Argon2id parameters strong enough.
    pub(crate) fn check_new(root: &RootKey, params: &KdfParams) -> Result<(), Error> {
        if let RootKeyInner::Passphrase(p) = &root.0 {
            if p.expose_secret().chars().count() < RootKey::MIN_PASSPHRASE_CHARS {
                return Err(Error::InvalidOption(
                    "a new passphrase must be at least 12 characters (RootKey::MIN_PASSPHRASE_CHARS)",
                ));
            }
            params.validate()?;
        }
        Ok(())
    }

    pub(crate) fn for_key(root: &RootKey, params: &KdfParams) -> Result<KdfRecord, Error> {
        KdfRecord::check_new(root, params)?;
        if root.is_passphrase() {
            Ok(KdfRecord::Argon2id {
                memory_kib: params.memory_kib,
                iterations: params.iterations,
                parallelism: params.parallelism,
                salt: random_bytes()?,
            })
        } else {
            Ok(KdfRecord::Raw)
        }
    }
}

// `check_new`'s message names the minimum.
const _: () = assert!(RootKey::MIN_PASSPHRASE_CHARS == 12);

/// The root secret, ready to check the commitment and open the keyring.
pub(crate) struct RootSecret {
    commit_key: Key,
    wrap: Aead256,
}

impl RootSecret {
    pub(crate) fn derive(root: &RootKey, kdf: &KdfRecord) -> Result<RootSecret, Error> {
        let secret = root.derive(kdf)?;
        Ok(RootSecret {
            commit_key: secret.derive(label::ROOT_COMMIT),
            wrap: secret.derive(label::KEYRING_WRAP).aead(),
        })
    }

    pub(crate) fn commitment(&self, vault_id: &[u8; 16]) -> [u8; 32] {
        self.commit_key.mac(vault_id)
    }

    /// Constant-time check of the stored commitment.
    pub(crate) fn check(&self, vault_id: &[u8; 16], stored: &[u8; 32]) -> Result<(), Error> {
        if bool::from(self.commitment(vault_id).ct_eq(stored)) {
            Ok(())
        } else {
            Err(Error::WrongRootKey)
        }
    }

    pub(crate) fn seal_keyring(
        &self,
        vault_id: &[u8; 16],
        ring: &Keyring,
    ) -> Result<Vec<u8>, Error> {
        self.wrap
            .seal(&aad(domain::KEYRING, &[vault_id]), &ring.to_bytes())
    }

    pub(crate) fn open_keyring(
        &self,
        vault_id: &[u8; 16],
        sealed: &[u8],
    ) -> Result<Keyring, Error> {
        let bytes = self.wrap.open(&aad(domain::KEYRING, &[vault_id]), sealed)?;
        Keyring::from_bytes(&bytes)
    }
}

/// One key-encryption key version.
pub(crate) struct Kek {
    key: Key,
    aead: Aead256,
}

impl Kek {
    fn new(key: Key) -> Kek {
        let aead = key.aead();
        Kek { key, aead }
    }
}

/// The KEK versions, the active one, and the index key.
pub(crate) struct Keyring {
    index_key: Key,
    keks: BTreeMap<u32, Kek>,
    active: u32,
}

const KEYRING_FORMAT: u8 = 1;

impl Keyring {
    pub(crate) fn generate() -> Result<Keyring, Error> {
        let mut keks = BTreeMap::new();
        keks.insert(1, Kek::new(Key::random()?));
        Ok(Keyring::assemble(Key::random()?, keks, 1))
    }

    fn assemble(index_key: Key, keks: BTreeMap<u32, Kek>, active: u32) -> Keyring {
        Keyring {
            index_key,
            keks,
            active,
        }
    }

    /// Fixed layout, written into a zeroizing buffer so no copy of a key outlives it:
    /// format (1) | index key (32) | active (4) | count (4) | (version (4) | key (32))*.
    fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(41 + self.keks.len() * 36));
        out.push(KEYRING_FORMAT);
        out.extend_from_slice(self.index_key.expose());
        out.extend_from_slice(&self.active.to_le_bytes());
        out.extend_from_slice(&(self.keks.len() as u32).to_le_bytes());
        for (version, kek) in &self.keks {
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(kek.key.expose());
        }
        out
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Keyring, Error> {
        let mut r = Reader(bytes);
        if r.take(1)? != [KEYRING_FORMAT] {
            return Err(Error::Integrity);
        }
        let index_key = Key::from_slice(r.take(KEY_LEN)?).ok_or(Error::Integrity)?;
        let active = r.u32()?;
        let count = r.u32()?;
        let mut keks = BTreeMap::new();
        for _ in 0..count {
            let version = r.u32()?;
            let key = Key::from_slice(r.take(KEY_LEN)?).ok_or(Error::Integrity)?;
            keks.insert(version, Kek::new(key));
        }
        if !r.0.is_empty() || !keks.contains_key(&active) {
            return Err(Error::Integrity);
        }
        Ok(Keyring::assemble(index_key, keks, active))
    }

    pub(crate) fn active(&self) -> u32 {
        self.active
    }

    /// Whether the keyring holds KEK `version`.
    pub(crate) fn holds(&self, version: u32) -> bool {
        self.keks.contains_key(&version)
    }

    pub(crate) fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.keks.keys().copied()
    }

    /// The keys derived from the index key; they never change for a vault.
    pub(crate) fn index_keys(&self, layout: Layout) -> IndexKeys {
        IndexKeys {
            subject_hash_key: self.index_key.derive(label::SUBJECT_HASH),
            tokens: TokenCodec::new(
                layout,
                self.index_key.derive(label::TOKEN_TAG),
                &self.index_key.derive(label::TOKEN_CIPHER),
            ),
            tombstone_key: self.index_key.derive(label::TOMBSTONE_MAC),
            field_names: self.index_key.derive(label::FIELD_NAMES).aead(),
        }
    }

    /// The key that chains and authenticates the audit trail, derived from the index
    /// key like [`IndexKeys`]. Made once, for the journal, which holds the only copy.
    pub(crate) fn audit_key(&self) -> Key {
        self.index_key.derive(label::AUDIT_MAC)
    }

    /// The key a staging vault derives its synthetic values and subject ids under
    /// (never the production vault's: each vault has its own index key).
    pub(crate) fn synthetic_key(&self) -> Key {
        self.index_key.derive(label::SYNTHETIC)
    }

    /// The key that authenticates backup manifests and the erasure journal. Derived
    /// from the index key, which no rotation or root-key change alters, so a journal
    /// stays one chain across both.
    pub(crate) fn backup_key(&self) -> Key {
        self.index_key.derive(label::BACKUP_MAC)
    }

    /// A deep copy, made through the zeroizing serialised form (keys are not `Clone`).
    pub(crate) fn duplicate(&self) -> Result<Keyring, Error> {
        Keyring::from_bytes(&self.to_bytes())
    }

    /// Adds a fresh KEK version and makes it active; returns its number.
    pub(crate) fn add_active(&mut self) -> Result<u32, Error> {
        let version = self.keks.keys().next_back().copied().unwrap_or(0) + 1;
        self.keks.insert(version, Kek::new(Key::random()?));
        self.active = version;
        Ok(version)
    }

    /// Destroys every version but the active one.
    pub(crate) fn retain_active_only(&mut self) -> Vec<u32> {
        let active = self.active;
        let retired: Vec<u32> = self.versions().filter(|v| *v != active).collect();
        self.keks.retain(|v, _| *v == active);
        retired
    }

    /// Seals `dek` under the active KEK for the subject instance `slot`.
    pub(crate) fn wrap_dek(&self, slot: &DekSlot<'_>, dek: &Key) -> Result<(u32, Vec<u8>), Error> {
        self.wrap_dek_with(self.active, slot, dek)
    }

    pub(crate) fn wrap_dek_with(
        &self,
        version: u32,
        slot: &DekSlot<'_>,
        dek: &Key,
    ) -> Result<(u32, Vec<u8>), Error> {
        let kek = self.keks.get(&version).ok_or(Error::Integrity)?;
        let sealed = kek.aead.seal(&slot.aad(version), dek.expose())?;
        Ok((version, sealed))
    }

    pub(crate) fn unwrap_dek(
        &self,
        version: u32,
        slot: &DekSlot<'_>,
        sealed: &[u8],
    ) -> Result<Key, Error> {
        let kek = self.keks.get(&version).ok_or(Error::Integrity)?;
        let bytes = kek.aead.open(&slot.aad(version), sealed)?;
        Key::from_slice(&bytes).ok_or(Error::Integrity)
    }
}

/// Where a wrapped DEK belongs: the vault, the subject instance's storage id and the
/// subject-id hash. All three are bound into the AAD, so a wrapped key moved to
/// another subject, or a subject entry pointed at another subject's key, fails.
pub(crate) struct DekSlot<'a> {
    pub vault_id: &'a [u8; 16],
    pub sid: &'a [u8; 16],
    pub subject_hash: &'a [u8; 32],
}

impl DekSlot<'_> {
    fn aad(&self, version: u32) -> Vec<u8> {
        aad(
            domain::DEK,
            &[
                self.vault_id,
                self.sid,
                self.subject_hash,
                &version.to_le_bytes(),
            ],
        )
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("versions", &self.keks.keys().collect::<Vec<_>>())
            .field("active", &self.active)
            .finish_non_exhaustive()
    }
}

/// Keys derived from the permanent index key (but the audit trail's, which is the
/// journal's: see [`Keyring::audit_key`]).
pub(crate) struct IndexKeys {
    /// Hashes subject ids into storage keys.
    subject_hash_key: Key,
    /// Turns storage keys into this vault's tokens and back.
    pub(crate) tokens: TokenCodec,
    /// Authenticates what an erasure leaves behind (record stubs, erasure entries),
    /// so that tampering cannot make live data look erased.
    pub(crate) tombstone_key: Key,
    /// Seals the field names the inventory lists, so that no file holds a field
    /// name in clear once no record of it is left.
    pub(crate) field_names: Aead256,
}

impl IndexKeys {
    /// The storage key of a subject id: keyed BLAKE3, so ids are never stored in
    /// clear. Of the id's NFC form: spellings that differ only in composition (`é`
    /// or `e` and a combining accent) name one subject. This is the one place a
    /// subject id becomes bytes the vault keeps or compares.
    pub(crate) fn subject_hash(&self, subject: &str) -> [u8; 32] {
        // Nearly every id is NFC already (ASCII always is): hashed without a copy.
        if unicode_normalization::is_nfc(subject) {
            self.subject_hash_key.mac(subject.as_bytes())
        } else {
            let nfc: String = subject.nfc().collect();
            self.subject_hash_key.mac(nfc.as_bytes())
        }
    }

    /// A 128-bit tag over `parts` under the tombstone key, for `domain`.
    pub(crate) fn tombstone_tag(&self, domain: &[u8], parts: &[&[u8]]) -> [u8; 16] {
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(domain);
        all.extend_from_slice(parts);
        let mac = self.tombstone_key.mac_parts(&all);
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&mac[..16]);
        tag
    }
}

impl fmt::Debug for IndexKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexKeys([REDACTED])")
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.0.len() < n {
            return Err(Error::Integrity);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_is_redacted() -> Result<(), Error> {
        let root = RootKey::from_bytes(&[0x41; 32])?;
        let shown = format!("{root:?}");
        assert!(!shown.contains("65") && !shown.contains("41") && shown.contains("REDACTED"));
        let pass = RootKey::passphrase("correct horse battery staple");
        assert!(!format!("{pass:?}").contains("horse"));
        let key = Key::fill_with(|k| *k = [0x41; 32]);
        assert!(!format!("{key:?}").contains("65"));
        let ring = Keyring::generate()?;
        assert!(!format!("{ring:?}").contains("Key("));
        Ok(())
    }

    #[test]
    fn a_subject_id_is_known_by_its_nfc_form() -> Result<(), Error> {
        let index = Keyring::generate()?.index_keys(Layout::BySubject);
        // "é" composed, and as e + combining acute.
        assert_eq!(
            index.subject_hash("jos\u{e9}"),
            index.subject_hash("jose\u{301}")
        );
        // Two combining marks in either order, and the letter that composes with both.
        assert_eq!(
            index.subject_hash("\u{1e69}"),
            index.subject_hash("s\u{307}\u{323}")
        );
        assert_ne!(index.subject_hash("jos\u{e9}"), index.subject_hash("jose"));
        // An id in NFC (every id accepted before) hashes as its bytes did: stored
        // subjects are found as before.
        for id in ["alice@example.com", "jos\u{e9}", "\u{5c71}\u{7530}"] {
            assert_eq!(
                index.subject_hash(id),
                index.subject_hash_key.mac(id.as_bytes())
            );
        }
        Ok(())
    }

    #[test]
    fn keyring_round_trip_and_commitment() -> Result<(), Error> {
        let root = RootKey::from_bytes(&[9; 32])?;
        let secret = RootSecret::derive(&root, &KdfRecord::Raw)?;
        let id = [1u8; 16];
        let mut ring = Keyring::generate()?;
        ring.add_active()?;
        let sealed = secret.seal_keyring(&id, &ring)?;
        let back = secret.open_keyring(&id, &sealed)?;
        assert_eq!(back.active(), 2);
        assert_eq!(back.versions().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(
            back.index_keys(Layout::BySubject).subject_hash("a"),
            ring.index_keys(Layout::BySubject).subject_hash("a")
        );
        assert_ne!(
            ring.index_keys(Layout::BySubject).subject_hash("a"),
            ring.index_keys(Layout::BySubject).subject_hash("b")
        );
        assert!(secret.open_keyring(&[2u8; 16], &sealed).is_err());

        let commitment = secret.commitment(&id);
        secret.check(&id, &commitment)?;
        let wrong = RootSecret::derive(&RootKey::from_bytes(&[8; 32])?, &KdfRecord::Raw)?;
        assert!(matches!(
            wrong.check(&id, &commitment),
            Err(Error::WrongRootKey)
        ));
        // A passphrase does not open a raw-key vault.
        assert!(matches!(
            RootSecret::derive(&RootKey::passphrase("x"), &KdfRecord::Raw),
            Err(Error::WrongRootKey)
        ));
        Ok(())
    }

    #[test]
    fn dek_wrapping_is_bound_to_subject_and_version() -> Result<(), Error> {
        let mut ring = Keyring::generate()?;
        let slot = |sid: &'static [u8; 16], hash: &'static [u8; 32]| DekSlot {
            vault_id: &[0u8; 16],
            sid,
            subject_hash: hash,
        };
        let dek = Key::random()?;
        let (v, sealed) = ring.wrap_dek(&slot(&[1; 16], &[5; 32]), &dek)?;
        assert_eq!(
            ring.unwrap_dek(v, &slot(&[1; 16], &[5; 32]), &sealed)?
                .expose(),
            dek.expose()
        );
        assert!(
            ring.unwrap_dek(v, &slot(&[2; 16], &[5; 32]), &sealed)
                .is_err()
        );
        assert!(
            ring.unwrap_dek(v, &slot(&[1; 16], &[6; 32]), &sealed)
                .is_err()
        );
        ring.add_active()?;
        assert!(
            ring.unwrap_dek(2, &slot(&[1; 16], &[5; 32]), &sealed)
                .is_err()
        );
        assert_eq!(ring.retain_active_only(), vec![1]);
        assert!(
            ring.unwrap_dek(1, &slot(&[1; 16], &[5; 32]), &sealed)
                .is_err()
        );
        Ok(())
    }

    #[test]
    fn argon2id_passphrase() -> Result<(), Error> {
        let kdf = KdfRecord::for_key(&RootKey::passphrase("pass phrase p"), &KdfParams::MINIMUM)?;
        let a = RootSecret::derive(&RootKey::passphrase("pass phrase p"), &kdf)?;
        let b = RootSecret::derive(&RootKey::passphrase("pass phrase q"), &kdf)?;
        let id = [3u8; 16];
        assert!(b.check(&id, &a.commitment(&id)).is_err());
        a.check(&id, &a.commitment(&id))?;
        Ok(())
    }

    #[test]
    fn a_new_passphrase_needs_the_minimum_length() -> Result<(), Error> {
        for short in ["", "eleven char"] {
            let refused = KdfRecord::for_key(&RootKey::passphrase(short), &KdfParams::MINIMUM);
            assert!(
                matches!(refused, Err(Error::InvalidOption(m)) if m.contains("at least 12")),
                "{refused:?}"
            );
        }
        // Counted in characters, not bytes: twelve of them, 24 bytes.
        KdfRecord::for_key(&RootKey::passphrase("éééééééééééé"), &KdfParams::MINIMUM)?;
        KdfRecord::for_key(&RootKey::passphrase("twelve chars"), &KdfParams::MINIMUM)?;
        // A vault made before the minimum existed still opens with its passphrase:
        // deriving for an existing record checks no length.
        let old = KdfRecord::Argon2id {
            memory_kib: KdfParams::MINIMUM.memory_kib,
            iterations: KdfParams::MINIMUM.iterations,
            parallelism: KdfParams::MINIMUM.parallelism,
            salt: [4; 16],
        };
        RootSecret::derive(&RootKey::passphrase("p"), &old)?;
        // A raw key has no length to check beyond its 32 bytes.
        KdfRecord::check_new(&RootKey::from_bytes(&[1; 32])?, &KdfParams::MINIMUM)?;
        Ok(())
    }
}
