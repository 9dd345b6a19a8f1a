//! Tokens: what the rest of the company stores instead of personal data.
//!
//! A token is a 128-bit identifier followed by a 32-bit tag keyed by the vault, in a
//! fixed-length text form: `tok_` and 32 lowercase base32 characters. The tag tells
//! the vault's own tokens from typos and other vaults' tokens (which name none of
//! its records: not found); the token says nothing about the subject or the value.
//!
//! Text without a token's shape is refused ([`Error::InvalidToken`]): the shapes are
//! fixed, so a client can check them. Whether this vault issued a token of the right
//! shape is for the vault to find out, and one it did not issue is answered like
//! any missing record.
//!
//! The identifier is the record's storage key encrypted with a block cipher under a
//! vault key ([`TokenCodec`]). The storage key starts with 64 bits derived from the
//! subject's key (its record group: the same for all its records), then 64 random
//! bits, or 64 derived from the value for deterministic tokens. So a subject's
//! records are one key range, which a purge compacts alone; encrypted, two tokens of
//! one subject look unrelated; and once the subject's key is destroyed, nothing
//! links the group to the subject. Vaults of the first format
//! ([`Layout::Scattered`]) keep 128 random bits as both.

use std::fmt;
use std::str::FromStr;

use aes::Aes256;
use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use subtle::ConstantTimeEq;

use crate::crypto::Key;
use crate::error::{Argument, Error, InputError, Problem};

/// Bytes of the random (or derived) identifier, the storage key of a record.
pub(crate) const ID_LEN: usize = 16;
const TAG_LEN: usize = 4;
const RAW_LEN: usize = ID_LEN + TAG_LEN;
const PREFIX: &str = "tok_";
/// Length of a token's text form.
pub const TOKEN_TEXT_LEN: usize = PREFIX.len() + RAW_LEN * 8 / 5;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A record's storage key, which its token encrypts.
pub(crate) type TokenId = [u8; ID_LEN];

/// Bytes of a record's storage key that group a subject's records.
pub(crate) const RECORD_GROUP_LEN: usize = 8;
/// The first bytes of the storage keys of one subject's records, derived from its
/// key (the subject's DEK).
pub(crate) type RecordGroup = [u8; RECORD_GROUP_LEN];

/// Where a vault stores records, as its format says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Format 1: under random keys, the same as the tokens' identifiers.
    Scattered,
    /// Under keys that start with the subject's storage id: one range per subject.
    BySubject,
}

/// Turns storage keys into tokens and back, for one vault.
pub(crate) struct TokenCodec {
    tag_key: Key,
    /// `None` in the scattered layout, where a token's identifier is the key.
    cipher: Option<Aes256>,
}

impl TokenCodec {
    pub(crate) fn new(layout: Layout, tag_key: Key, cipher_key: &Key) -> TokenCodec {
        // From the slice: no copy of the key on the stack (the cipher wipes its own).
        let cipher = (layout == Layout::BySubject).then(|| {
            Aes256::new_from_slice(cipher_key.expose()).expect("a 256-bit key is AES-256's")
        });
        TokenCodec { tag_key, cipher }
    }

    /// The storage key of a new record of the subject whose records are `group`;
    /// `unique` is random, or derived from the value for a deterministic token.
    pub(crate) fn record_key(&self, group: &RecordGroup, unique: &[u8; ID_LEN]) -> TokenId {
        if self.cipher.is_none() {
            return *unique;
        }
        let mut key = [0u8; ID_LEN];
        key[..RECORD_GROUP_LEN].copy_from_slice(group);
        key[RECORD_GROUP_LEN..].copy_from_slice(&unique[..ID_LEN - RECORD_GROUP_LEN]);
        key
    }

    /// Whether a subject's records are one key range (its group's).
    pub(crate) fn grouped(&self) -> bool {
        self.cipher.is_some()
    }

    /// The token of the record stored under `key`.
    pub(crate) fn token(&self, key: &TokenId) -> Token {
        let mut id = *key;
        if let Some(cipher) = &self.cipher {
            cipher.encrypt_block((&mut id).into());
        }
        Token::new(id, &self.tag_key)
    }

    /// The storage key a token names, once its tag shows it is this vault's;
    /// `None` for a token whose tag does not verify, and for one the vault looks
    /// up (digits).
    pub(crate) fn key(&self, token: &Token) -> Option<TokenId> {
        token.verify(&self.tag_key).map(|id| self.decrypt(id))
    }

    /// The storage key an opaque token (`tok_…`, not in e-mail form) decodes to,
    /// tag unchecked: for a position to seek from (an export's cursor), where a
    /// token this vault did not issue names a place among the subject's own
    /// records, never a record to read.
    pub(crate) fn position(&self, token: &Token) -> Option<TokenId> {
        let Form::Id { email: false, .. } = &token.form else {
            return None;
        };
        Some(self.decrypt(token.id()))
    }

    /// The storage key a token's identifier stands for.
    fn decrypt(&self, mut id: TokenId) -> TokenId {
        if let Some(cipher) = &self.cipher {
            cipher.decrypt_block((&mut id).into());
        }
        id
    }
}

/// The domain of e-mail-shaped tokens (reserved by RFC 2606: mail to it goes nowhere).
pub const EMAIL_TOKEN_DOMAIN: &str = "example.net";
/// The most digits a digits-only token has.
pub const MAX_DIGIT_TOKEN_LEN: usize = 32;

/// The shape a token takes, for columns that validate what they hold. Ask for one
/// with [`TokenizeRequest::format`](crate::TokenizeRequest::format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenFormat {
    /// As many digits as the value (which must be digits only), random.
    Digits,
    /// As many digits as the value (a card number: 8 to 19 digits), keeping its
    /// last four, and Luhn-valid.
    Luhn,
    /// An e-mail address: the token's text as the local part, at
    /// [`EMAIL_TOKEN_DOMAIN`].
    Email,
}

impl TokenFormat {
    /// The word used on the wire: `digits`, `luhn` or `email`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenFormat::Digits => "digits",
            TokenFormat::Luhn => "luhn",
            TokenFormat::Email => "email",
        }
    }
}

impl FromStr for TokenFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<TokenFormat, Error> {
        match s {
            "digits" => Ok(TokenFormat::Digits),
            "luhn" => Ok(TokenFormat::Luhn),
            "email" => Ok(TokenFormat::Email),
            _ => Err(Error::from(InputError::new(
                Argument::Format,
                Problem::Unknown,
            ))),
        }
    }
}

/// A token, as issued by [`Vault::tokenize`](crate::Vault::tokenize): opaque, or
/// in the [format](TokenFormat) asked for.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token {
    form: Form,
}

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Form {
    /// `tok_` and the identifier with its tag; `email`: at [`EMAIL_TOKEN_DOMAIN`].
    Id { raw: [u8; RAW_LEN], email: bool },
    /// Digits only (the `digits` and `luhn` formats): the vault looks these up.
    Digits(Box<str>),
}

impl Token {
    pub(crate) fn new(id: TokenId, tag_key: &Key) -> Token {
        let mut raw = [0u8; RAW_LEN];
        raw[..ID_LEN].copy_from_slice(&id);
        raw[ID_LEN..].copy_from_slice(&tag(&id, tag_key));
        Token {
            form: Form::Id { raw, email: false },
        }
    }

    /// A digits-only token (checked by the caller).
    pub(crate) fn digits(text: String) -> Token {
        Token {
            form: Form::Digits(text.into_boxed_str()),
        }
    }

    /// This token in e-mail form (an opaque token; digits stay as they are).
    pub(crate) fn into_email(mut self) -> Token {
        if let Form::Id { email, .. } = &mut self.form {
            *email = true;
        }
        self
    }

    /// Checks the vault tag: `None` for a well-formed token of another vault (or
    /// an altered one), and for a token the vault must look up (digits).
    pub(crate) fn verify(&self, tag_key: &Key) -> Option<TokenId> {
        let Form::Id { raw, .. } = &self.form else {
            return None;
        };
        let id = self.id();
        let expected = tag(&id, tag_key);
        bool::from(expected.ct_eq(&raw[ID_LEN..])).then_some(id)
    }

    pub(crate) fn id(&self) -> TokenId {
        let mut id = [0u8; ID_LEN];
        if let Form::Id { raw, .. } = &self.form {
            id.copy_from_slice(&raw[..ID_LEN]);
        }
        id
    }

    /// The text a lookup of this token goes by: the token without its e-mail
    /// domain.
    pub(crate) fn lookup_text(&self) -> String {
        match &self.form {
            Form::Id { raw, .. } => opaque_text(raw),
            Form::Digits(text) => text.to_string(),
        }
    }
}

fn tag(id: &TokenId, tag_key: &Key) -> [u8; TAG_LEN] {
    let mac = tag_key.mac(id);
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&mac[..TAG_LEN]);
    out
}

/// `tok_` and the identifier with its tag in base32.
fn opaque_text(raw: &[u8; RAW_LEN]) -> String {
    let mut text = String::with_capacity(TOKEN_TEXT_LEN);
    text.push_str(PREFIX);
    // 20 bytes = 160 bits = exactly 32 groups of 5 bits.
    let mut acc: u64 = 0;
    let mut bits = 0;
    for &b in raw {
        acc = (acc << 8) | u64::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            text.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
        }
    }
    text
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.form {
            Form::Id { raw, email } => {
                f.write_str(&opaque_text(raw))?;
                if *email {
                    write!(f, "@{EMAIL_TOKEN_DOMAIN}")?;
                }
                Ok(())
            }
            Form::Digits(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({self})")
    }
}

impl FromStr for Token {
    type Err = Error;

    /// Parses the text form. This checks the shape only ([`Error::InvalidToken`]
    /// when it is not a token's); the vault checks the tag, or looks the token up.
    fn from_str(s: &str) -> Result<Token, Error> {
        if !s.is_empty() && s.len() <= MAX_DIGIT_TOKEN_LEN && s.bytes().all(|b| b.is_ascii_digit())
        {
            return Ok(Token::digits(s.to_owned()));
        }
        let (s, email) = match s.split_once('@') {
            Some((local, EMAIL_TOKEN_DOMAIN)) => (local, true),
            Some(_) => return Err(Error::InvalidToken),
            None => (s, false),
        };
        let body = s.strip_prefix(PREFIX).ok_or(Error::InvalidToken)?;
        if s.len() != TOKEN_TEXT_LEN {
            return Err(Error::InvalidToken);
        }
        let mut raw = [0u8; RAW_LEN];
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut pos = 0;
        for c in body.bytes() {
            let v = match c {
                b'a'..=b'z' => c - b'a',
                b'2'..=b'7' => c - b'2' + 26,
                _ => return Err(Error::InvalidToken),
            };
            acc = (acc << 5) | u64::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                raw[pos] = (acc >> bits) as u8;
                pos += 1;
            }
        }
        Ok(Token {
            form: Form::Id { raw, email },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> Key {
        Key::fill_with(|k| *k = [b; 32])
    }

    #[test]
    fn text_form_is_fixed_length_and_round_trips() -> Result<(), Error> {
        let k = key(1);
        let t = Token::new([0xab; ID_LEN], &k);
        let s = t.to_string();
        assert_eq!(s.len(), TOKEN_TEXT_LEN);
        assert_eq!(TOKEN_TEXT_LEN, 36);
        assert!(s.starts_with("tok_"));
        let back: Token = s.parse()?;
        assert_eq!(back, t);
        assert_eq!(back.verify(&k), Some([0xab; ID_LEN]));
        Ok(())
    }

    #[test]
    fn foreign_and_malformed_tokens_are_refused() {
        let t = Token::new([7; ID_LEN], &key(1));
        assert_eq!(t.verify(&key(2)), None);
        for bad in [
            "",
            "tok_",
            "tok_aaaa",
            "xyz_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "tok_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "tok_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa1",
            "tok_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "tok_ééééééééééééééé",
        ] {
            assert!(
                matches!(bad.parse::<Token>(), Err(Error::InvalidToken)),
                "{bad:?}"
            );
        }
        // One changed character breaks the tag.
        let mut s = t.to_string().into_bytes();
        s[10] = if s[10] == b'a' { b'b' } else { b'a' };
        let changed: Token = String::from_utf8(s).expect("ascii").parse().expect("shape");
        assert_eq!(changed.verify(&key(1)), None);
    }

    proptest! {
        #[test]
        fn round_trip(id in proptest::array::uniform16(any::<u8>())) {
            let k = key(3);
            let t = Token::new(id, &k);
            let parsed: Token = t.to_string().parse().expect("parse");
            prop_assert_eq!(parsed.verify(&k).expect("tag"), id);
        }
    }
}
