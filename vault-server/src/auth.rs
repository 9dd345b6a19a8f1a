//! API keys: who may call which route, and for detokenize, for which purposes.
//!
//! A key is 32 random bytes shown once as `pvk_` + 64 hex digits. The configuration
//! stores only its hash (keyed BLAKE3 under a fixed derivation context), so a leaked
//! config file does not leak keys. A presented key is hashed and compared with every
//! configured hash in constant time, without stopping at the first match.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::throttle::RateLimit;
use zeroize::Zeroizing;

const KEY_PREFIX: &str = "pvk_";
const HASH_PREFIX: &str = "blake3:";
const HASH_CONTEXT: &str = "pii-vault 2026-11 api key hash v1";

/// What an API key may do. One scope per kind of route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// `POST /v1/tokenize`.
    Tokenize,
    /// Deterministic items in `POST /v1/tokenize` (with `tokenize`): a deterministic
    /// token confirms whether a guessed value is stored, so it is granted apart.
    TokenizeDeterministic,
    /// `POST /v1/detokenize`, for the key's purposes.
    Detokenize,
    /// `PUT /v1/tokens/{token}`.
    Rectify,
    /// `DELETE /v1/tokens/{token}`.
    Delete,
    /// `POST /v1/subjects/erase`.
    Erase,
    /// `POST /v1/subjects/export`.
    Export,
    /// `POST /v1/subjects/consent` and `/v1/subjects/consents`: record and read consent.
    Consent,
    /// `/v1/audit` and `/v1/audit/verify`: read and check the audit trail.
    Audit,
    /// `/v1/admin/*`: key rotation and key status.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 10] = [
        Scope::Tokenize,
        Scope::TokenizeDeterministic,
        Scope::Detokenize,
        Scope::Rectify,
        Scope::Delete,
        Scope::Erase,
        Scope::Export,
        Scope::Consent,
        Scope::Audit,
        Scope::Admin,
    ];

    /// The scope's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Tokenize => "tokenize",
            Scope::TokenizeDeterministic => "tokenize_deterministic",
            Scope::Detokenize => "detokenize",
            Scope::Rectify => "rectify",
            Scope::Delete => "delete",
            Scope::Erase => "erase",
            Scope::Export => "export",
            Scope::Consent => "consent",
            Scope::Audit => "audit",
            Scope::Admin => "admin",
        }
    }

    /// Parses a scope name.
    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Which purposes a key may detokenize for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purposes {
    /// Any purpose (`purposes = ["*"]`).
    Any,
    /// Only these.
    Only(BTreeSet<String>),
}

impl Purposes {
    pub(crate) fn allows(&self, purpose: &str) -> bool {
        match self {
            Purposes::Any => true,
            Purposes::Only(set) => set.contains(purpose),
        }
    }
}

/// Whether a purpose name is well formed: 1–64 of `a-z 0-9 _ - .`. Purposes go to
/// logs and metrics, so they must not be free text.
pub fn valid_purpose(purpose: &str) -> bool {
    (1..=64).contains(&purpose.len())
        && purpose.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

/// The hash of an API key, as stored in the configuration.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

impl KeyHash {
    /// Hashes a presented key.
    pub fn of(key: &str) -> KeyHash {
        let mut hasher = blake3::Hasher::new_derive_key(HASH_CONTEXT);
        hasher.update(key.as_bytes());
        KeyHash(*hasher.finalize().as_bytes())
    }

    /// Parses the configuration form, `blake3:` + 64 hex digits.
    pub fn parse(text: &str) -> Option<KeyHash> {
        let hex = text.strip_prefix(HASH_PREFIX)?;
        decode_hex32(hex).map(KeyHash)
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(HASH_PREFIX)?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHash(..)")
    }
}

/// A new random API key and its hash, for `vault-server new-api-key` and `--dev`.
pub fn generate_key() -> std::io::Result<(Zeroizing<String>, KeyHash)> {
    let mut raw = Zeroizing::new([0u8; 32]);
    getrandom::fill(raw.as_mut_slice()).map_err(std::io::Error::other)?;
    let mut key = Zeroizing::new(String::with_capacity(KEY_PREFIX.len() + 64));
    key.push_str(KEY_PREFIX);
    for b in raw.iter() {
        key.push(char::from(HEX[usize::from(b >> 4)]));
        key.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    let hash = KeyHash::of(&key);
    Ok((key, hash))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Whether `key` has the form of a generated key (`pvk_` + 64 hex digits).
pub fn is_well_formed_key(key: &str) -> bool {
    key.strip_prefix(KEY_PREFIX)
        .is_some_and(|hex| decode_hex32(hex).is_some())
}

/// Decodes exactly 64 hex digits.
pub(crate) fn decode_hex32(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let hi = (hex[2 * i] as char).to_digit(16)?;
        let lo = (hex[2 * i + 1] as char).to_digit(16)?;
        *byte = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// One configured API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Its name, for logs and metrics (e.g. the service that holds it).
    pub name: String,
    /// The hash of the key.
    pub hash: KeyHash,
    /// What it may do.
    pub scopes: BTreeSet<Scope>,
    /// For detokenize: which purposes.
    pub purposes: Purposes,
    /// Masked values only, whatever the purpose allows.
    pub masked: bool,
    /// Items per second it may ask for (a batch of n costs n); `None`: unlimited.
    pub limit: Option<Arc<RateLimit>>,
}

impl ApiKey {
    pub(crate) fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    /// Shared: every request holds its key while it is served (a reference count,
    /// not a copy of the name, scopes and purposes per request).
    keys: Vec<Arc<ApiKey>>,
}

impl ApiKeys {
    /// The keys; names must be unique (checked when the configuration is read).
    pub fn new(keys: Vec<ApiKey>) -> ApiKeys {
        ApiKeys {
            keys: keys.into_iter().map(Arc::new).collect(),
        }
    }

    /// The key whose hash matches `presented`, found in time independent of which key
    /// (if any) matches.
    pub fn find(&self, presented: &str) -> Option<&Arc<ApiKey>> {
        let hash = KeyHash::of(presented);
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let hit = key.hash.0.ct_eq(&hash.0);
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            index = u32::conditional_select(&index, &i, hit & !found);
            found |= hit;
        }
        if bool::from(found) {
            self.keys.get(index as usize)
        } else {
            None
        }
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, hash: KeyHash) -> ApiKey {
        ApiKey {
            name: name.into(),
            hash,
            scopes: BTreeSet::from([Scope::Tokenize]),
            purposes: Purposes::Only(BTreeSet::new()),
            masked: false,
            limit: None,
        }
    }

    #[test]
    fn generated_keys_are_found_by_their_hash_only() -> std::io::Result<()> {
        let (k1, h1) = generate_key()?;
        let (k2, h2) = generate_key()?;
        assert_ne!(*k1, *k2);
        assert!(k1.starts_with("pvk_") && k1.len() == 68);
        let keys = ApiKeys::new(vec![key("one", h1), key("two", h2)]);
        assert_eq!(keys.find(&k1).map(|k| k.name.as_str()), Some("one"));
        assert_eq!(keys.find(&k2).map(|k| k.name.as_str()), Some("two"));
        assert!(keys.find("pvk_wrong").is_none());
        assert!(keys.find(&h1.to_string()).is_none(), "a hash is not a key");
        Ok(())
    }

    #[test]
    fn hash_text_round_trips() -> std::io::Result<()> {
        let (_, hash) = generate_key()?;
        assert_eq!(KeyHash::parse(&hash.to_string()), Some(hash));
        assert_eq!(KeyHash::parse("blake3:zz"), None);
        assert_eq!(
            KeyHash::parse(&hash.to_string().replace("blake3:", "sha256:")),
            None
        );
        Ok(())
    }

    #[test]
    fn purposes_are_checked() {
        let only = Purposes::Only(BTreeSet::from(["billing".to_owned()]));
        assert!(only.allows("billing"));
        assert!(!only.allows("marketing"));
        assert!(Purposes::Any.allows("marketing"));
        assert!(valid_purpose("fraud-check.v2"));
        assert!(!valid_purpose("Alice Martin"));
        assert!(!valid_purpose(""));
    }
}
