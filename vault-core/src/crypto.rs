//! Cryptographic primitives and the one place where derivation labels and AAD
//! domain tags live.
//!
//! Every ciphertext the vault stores is `nonce (24 bytes) || XChaCha20-Poly1305
//! ciphertext`, sealed with associated data built by [`aad`] from a domain tag and
//! the identifiers of the place the ciphertext lives in. Any failure to open one is
//! reported as [`Error::Integrity`], never as a reason.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::{ExposeSecret, SecretBox};
use zeroize::{Zeroize, Zeroizing};

use crate::error::Error;

/// Length of every symmetric key in the vault.
pub(crate) const KEY_LEN: usize = 32;
/// Length of an XChaCha20 nonce.
pub(crate) const NONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub(crate) const TAG_LEN: usize = 16;

/// BLAKE3 `derive_key` contexts. Changing one makes existing vaults unreadable.
pub(crate) mod label {
    pub const KEYRING_WRAP: &str = "pii-vault 2026-11 root key -> keyring wrapping key";
    pub const ROOT_COMMIT: &str = "pii-vault 2026-11 root key -> key commitment";
    pub const SUBJECT_HASH: &str = "pii-vault 2026-11 index key -> subject id hash";
    pub const TOKEN_TAG: &str = "pii-vault 2026-11 index key -> token tag";
    pub const TOKEN_CIPHER: &str = "pii-vault 2026-12 index key -> token id cipher";
    pub const RECORD_GROUP: &str = "pii-vault 2026-12 DEK -> record key group";
    pub const DETERMINISTIC_TOKEN: &str = "pii-vault 2026-11 DEK -> deterministic token";
    pub const TOMBSTONE_MAC: &str =
        "pii-vault 2026-11 index key -> shredded records and erasure entries";
    pub const AUDIT_MAC: &str = "pii-vault 2026-11 index key -> audit trail chain";
    pub const AUDIT_SUBJECT: &str = "pii-vault 2026-11 DEK -> audit subject reference";
    pub const SYNTHETIC: &str =
        "pii-vault 2026-12 index key -> synthetic values of a staging vault";
    pub const FIELD_NAMES: &str = "pii-vault 2026-12 index key -> inventory field names";
    pub const BACKUP_MAC: &str =
        "pii-vault 2026-12 index key -> backup manifests and the erasure journal";
}

/// AAD domain tags: one per kind of ciphertext.
pub(crate) mod domain {
    pub const KEYRING: &[u8] = b"pii-vault/keyring/v1";
    pub const DEK: &[u8] = b"pii-vault/dek/v1";
    pub const RECORD: &[u8] = b"pii-vault/record/v1";
    pub const SHREDDED: &[u8] = b"pii-vault/shredded/v1";
    pub const ERASURE: &[u8] = b"pii-vault/erasure/v1";
    pub const PURGE_SCOPE: &[u8] = b"pii-vault/purge-scope/v1";
    pub const LINK: &[u8] = b"pii-vault/record-link/v1";
    pub const PURPOSE_ID: &[u8] = b"pii-vault/purpose-id/v1";
    pub const CONSENT: &[u8] = b"pii-vault/consent/v1";
    pub const EXPIRED: &[u8] = b"pii-vault/expired/v1";
    pub const AUDIT_EVENT: &[u8] = b"pii-vault/audit-event/v1";
    pub const AUDIT_HEAD: &[u8] = b"pii-vault/audit-head/v1";
    pub const AUDIT_BASE: &[u8] = b"pii-vault/audit-base/v1";
    pub const AUDIT_STAGED: &[u8] = b"pii-vault/audit-staged/v1";
    pub const AUDIT_STAGED_MARK: &[u8] = b"pii-vault/audit-staged-mark/v1";
    pub const BACKUP_MANIFEST: &[u8] = b"pii-vault/backup-manifest/v1";
    pub const ERASURE_JOURNAL: &[u8] = b"pii-vault/erasure-journal/v1";
    pub const TOKEN_ALIAS: &[u8] = b"pii-vault/token-alias/v1";
    pub const INVENTORY_FIELD: &[u8] = b"pii-vault/inventory-field/v1";
}

/// A 256-bit secret key on the heap, wiped on drop, never `Clone`, `Copy` or `Debug`-printed.
pub(crate) struct Key(SecretBox<[u8; KEY_LEN]>);

impl Key {
    /// A fresh key from the operating system's generator.
    pub(crate) fn random() -> Result<Key, Error> {
        let mut failed = false;
        let key = SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| {
            failed = getrandom::fill(k).is_err();
        });
        if failed {
            return Err(Error::Random);
        }
        Ok(Key(key))
    }

    /// Copies `bytes` (exactly 32) into a new key. The caller wipes its own copy.
    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Key> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        Some(Key(SecretBox::init_with_mut(|k: &mut [u8; KEY_LEN]| {
            k.copy_from_slice(bytes)
        })))
    }

    /// A key filled in place by `f`, so that the secret is never moved by value.
    pub(crate) fn fill_with(f: impl FnOnce(&mut [u8; KEY_LEN])) -> Key {
        Key(SecretBox::init_with_mut(f))
    }

    /// A subkey for `context`, derived with BLAKE3's KDF mode.
    pub(crate) fn derive(&self, context: &str) -> Key {
        Key::fill_with(|out| {
            let mut hasher = blake3::Hasher::new_derive_key(context);
            hasher.update(self.expose());
            let mut reader = hasher.finalize_xof();
            reader.fill(out);
            // blake3's state holds key material and has no Drop: wipe it.
            reader.zeroize();
            hasher.zeroize();
        })
    }

    pub(crate) fn expose(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }

    /// An AEAD instance keyed with this key (its state is wiped on drop).
    pub(crate) fn aead(&self) -> Aead256 {
        Aead256(XChaCha20Poly1305::new(self.expose().into()))
    }

    /// Keyed BLAKE3 of `data` under this key.
    pub(crate) fn mac(&self, data: &[u8]) -> [u8; 32] {
        self.mac_parts_raw(|h| {
            h.update(data);
        })
    }

    /// Keyed BLAKE3 of several length-prefixed parts, so that part boundaries count.
    pub(crate) fn mac_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        self.mac_parts_raw(|h| {
            for part in parts {
                h.update(&(part.len() as u64).to_le_bytes());
                h.update(part);
            }
        })
    }

    fn mac_parts_raw(&self, feed: impl FnOnce(&mut blake3::Hasher)) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(self.expose());
        feed(&mut hasher);
        let out = *hasher.finalize().as_bytes();
        // The keyed state is key material; blake3's Hasher has no Drop.
        hasher.zeroize();
        out
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key([REDACTED])")
    }
}

/// XChaCha20-Poly1305 keyed once; `seal`/`open` add and check the random nonce.
pub(crate) struct Aead256(XChaCha20Poly1305);

impl std::fmt::Debug for Aead256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Aead256([REDACTED])")
    }
}

impl Aead256 {
    /// Encrypts `msg` bound to `aad`; returns `nonce || ciphertext || tag`.
    pub(crate) fn seal(&self, aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| Error::Random)?;
        let ct = self
            .0
            .encrypt(&XNonce::from(nonce), Payload { msg, aad })
            .map_err(|_| Error::Integrity)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`seal`](Self::seal) produced. Any failure is [`Error::Integrity`].
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(Error::Integrity);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| Error::Integrity)?;
        self.0
            .decrypt(&nonce, Payload { msg: ct, aad })
            .map(Zeroizing::new)
            .map_err(|_| Error::Integrity)
    }
}

/// Associated data: the domain tag, then each part length-prefixed.
pub(crate) fn aad(domain: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = domain.len() + parts.iter().map(|p| p.len() + 2).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(domain);
    for part in parts {
        // Parts are identifiers and field names, all far below 64 KiB.
        out.extend_from_slice(&(part.len() as u16).to_le_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// `N` random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| Error::Random)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::fill_with(|k| *k = [byte; KEY_LEN])
    }

    #[test]
    fn seal_open_round_trip_and_aad_binding() -> Result<(), Error> {
        let aead = key(7).aead();
        let a = aad(domain::RECORD, &[b"subject", b"token"]);
        let sealed = aead.seal(&a, b"alice@example.com")?;
        assert_eq!(&aead.open(&a, &sealed)?[..], b"alice@example.com");

        let other = aad(domain::RECORD, &[b"subject", b"other"]);
        assert!(matches!(aead.open(&other, &sealed), Err(Error::Integrity)));
        assert!(matches!(
            key(8).aead().open(&a, &sealed),
            Err(Error::Integrity)
        ));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(aead.open(&a, &bad), Err(Error::Integrity)),
                "byte {i}"
            );
        }
        assert!(matches!(
            aead.open(&a, &sealed[..30]),
            Err(Error::Integrity)
        ));
        Ok(())
    }

    #[test]
    fn aad_parts_are_unambiguous() {
        assert_ne!(aad(b"d", &[b"ab", b"c"]), aad(b"d", &[b"a", b"bc"]));
    }

    #[test]
    fn nonces_differ() -> Result<(), Error> {
        let aead = key(1).aead();
        let a = aead.seal(b"", b"x")?;
        let b = aead.seal(b"", b"x")?;
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        Ok(())
    }

    /// Known answers pin the derivation and the AEAD to their specifications, so that
    /// a dependency upgrade cannot silently change what existing vaults decrypt to.
    #[test]
    fn known_answers() {
        // BLAKE3 derive_key of a zero key (computed with the reference implementation).
        let derived = key(0).derive("BLAKE3 2019-12-27 16:29:52 test vectors context");
        let expected = blake3::derive_key(
            "BLAKE3 2019-12-27 16:29:52 test vectors context",
            &[0u8; KEY_LEN],
        );
        assert_eq!(derived.expose(), &expected);

        // draft-irtf-cfrg-xchacha-03, appendix A.3.1 (AEAD_XChaCha20_Poly1305).
        let key = Key::fill_with(|k| {
            for (i, b) in k.iter_mut().enumerate() {
                *b = 0x80 + i as u8;
            }
        });
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let aad = hex("50515253c0c1c2c3c4c5c6c7");
        let nonce: [u8; 24] = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .expect("24 bytes");
        let ct = XChaCha20Poly1305::new(key.expose().into())
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .expect("encrypt");
        let tag = &ct[ct.len() - TAG_LEN..];
        assert_eq!(tag, &hex("c0875924c1c7987947deafd8780acf49")[..]);
        assert_eq!(&ct[..8], &hex("bd6d179d3e83d43b")[..]);

        // The vault's own stored layout, nonce || ciphertext || tag, opens to it.
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&ct);
        assert_eq!(
            &key.aead().open(&aad, &stored).expect("open")[..],
            plaintext
        );
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }
}
