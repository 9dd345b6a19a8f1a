//! Tokens the vault looks up instead of decoding: format-preserving tokens of
//! digits (too short to carry a token id), and, in a staging vault, production's
//! tokens. Each is an *alias* of a record's token id, stored under the keyed hash
//! of its text, with the text, so that a copy of the vault can carry it over. An
//! alias outlives its record's value: once the subject is erased it still leads to
//! the stub that answers *erased*, and it is never given to another value.

use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::codec::{decode, encode};
use crate::crypto::{domain, random_bytes};
use crate::error::{Error, Problem};
use crate::keys::IndexKeys;
use crate::store::{Batch, Cf, Storage, WriteSet};
use crate::token::{MAX_DIGIT_TOKEN_LEN, TokenFormat, TokenId};
use crate::vault::Inner;

pub(crate) const ALIAS_FORMAT: u8 = 1;

/// Random draws before a small token space is searched in order (a space of more
/// than `SEARCHABLE` 90 % full still finds a free token 999 999 times in a million).
const RANDOM_TRIES: usize = 128;
/// Token spaces up to this size are searched in order once random draws failed,
/// so that a full space is told apart from an unlucky one.
const SEARCHABLE: u64 = 1_000_000;

/// The stored alias: the record it names and its own text.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Alias {
    pub id: TokenId,
    pub text: String,
}

/// The `aliases` key of a token's text.
pub(crate) fn forward_key(index: &IndexKeys, text: &str) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = b'f';
    key[1..].copy_from_slice(&index.tombstone_tag(domain::TOKEN_ALIAS, &[text.as_bytes()]));
    key
}

/// The `aliases` key of the text issued for the record `id`.
pub(crate) fn reverse_key(id: &TokenId) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = b'r';
    key[1..].copy_from_slice(id);
    key
}

/// The token id an alias names, if `text` is one.
pub(crate) fn lookup(
    store: &impl Storage,
    index: &IndexKeys,
    text: &str,
) -> Result<Option<TokenId>, Error> {
    match store.get(Cf::Aliases, &forward_key(index, text))? {
        Some(bytes) => {
            let alias: Alias = decode(ALIAS_FORMAT, &bytes)?;
            // Issued after the backup a restore went back to: taken, and no record.
            if alias.text.is_empty() {
                return Err(Error::NotFound);
            }
            // The text is stored beside its hash: a row moved under another key is damage.
            if alias.text != text {
                return Err(Error::Integrity);
            }
            Ok(Some(alias.id))
        }
        None => Ok(None),
    }
}

/// Set once a record's token was issued in a form its id does not give: until
/// then an export reads no alias.
const ISSUED: &[u8] = b"aliases/issued";

/// Whether any record of the vault has an issued text: as `seen` says (read at
/// open, set by this process's writes), and on a shared store, where another
/// replica may write one, read again until there is.
pub(crate) fn any_issued(store: &impl Storage, seen: &AtomicBool) -> Result<bool, Error> {
    if seen.load(Ordering::Relaxed) || !store.shared() {
        return Ok(seen.load(Ordering::Relaxed));
    }
    let found = store.get(Cf::Meta, ISSUED)?.is_some();
    seen.store(found, Ordering::Relaxed);
    Ok(found)
}

/// The issued texts of the records `ids` (in order), reading none while the
/// vault has issued none (`any_issued`).
pub(crate) fn issued_if_any(
    store: &impl Storage,
    seen: &AtomicBool,
    ids: &[TokenId],
) -> Result<Vec<Option<String>>, Error> {
    if any_issued(store, seen)? {
        issued_texts(store, ids)
    } else {
        Ok(vec![None; ids.len()])
    }
}

/// The issued texts of the records `ids` that have one (in order).
pub(crate) fn issued_texts(
    store: &impl Storage,
    ids: &[TokenId],
) -> Result<Vec<Option<String>>, Error> {
    let keys: Vec<[u8; 17]> = ids.iter().map(reverse_key).collect();
    store
        .multi_get(Cf::Aliases, &keys)?
        .into_iter()
        .map(|found| {
            found
                .map(|bytes| decode::<String>(ALIAS_FORMAT, &bytes))
                .transpose()
        })
        .collect()
}

/// Adds to `batch` the alias `text` of the record `id`: found by its text
/// (`lookup`, written only if absent, on a shared store too) and, if `issued`,
/// shown for the record (`issued_texts`).
pub(crate) fn put(
    batch: &mut Batch<'_>,
    index: &IndexKeys,
    text: &str,
    id: &TokenId,
    issued: bool,
) {
    let key = forward_key(index, text);
    batch.expect(Cf::Aliases, &key, None);
    let alias = Alias {
        id: *id,
        text: text.to_owned(),
    };
    batch.put(Cf::Aliases, &key, &encode(ALIAS_FORMAT, &alias));
    if issued {
        put_issued(batch, id, text);
    }
}

/// Set in a staging vault, whose aliases include another vault's opaque tokens:
/// those are looked up before they are decoded, since one may carry a tag that
/// happens to check under this vault's key (one in 2³²).
const FOREIGN: &[u8] = b"aliases/foreign";

/// Whether the vault holds another vault's tokens as aliases.
pub(crate) fn foreign_at_open(store: &impl Storage) -> Result<bool, Error> {
    Ok(store.get(Cf::Meta, FOREIGN)?.is_some())
}

/// Marks the vault as holding another vault's tokens (`foreign_at_open`).
pub(crate) fn mark_foreign(batch: &mut Batch<'_>) {
    batch.put(Cf::Meta, FOREIGN, &[1]);
}

/// Whether the store says a record has an issued text, for `any_issued`'s flag.
pub(crate) fn issued_at_open(store: &impl Storage) -> Result<bool, Error> {
    Ok(store.get(Cf::Meta, ISSUED)?.is_some())
}

/// Adds to `batch` the text issued for the record `id`, shown for it by exports
/// (the caller sets its `any_issued` flag).
pub(crate) fn put_issued(batch: &mut Batch<'_>, id: &TokenId, text: &str) {
    batch.put(Cf::Aliases, &reverse_key(id), &encode(ALIAS_FORMAT, &text));
    batch.put(Cf::Meta, ISSUED, &[1]);
}

/// The journal's name of an alias: its keyed hash, without the family's tag.
pub(crate) fn journal_hash(key: &[u8; 17]) -> [u8; 16] {
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&key[1..]);
    hash
}

/// The counters of the spaces an alias `text` fills: every token of digits of its
/// length, and, Luhn-valid, those of its length and last four digits. Counted so
/// that a full space is known without a search.
pub(crate) fn space_counters(text: &str) -> Vec<Vec<u8>> {
    let mut keys = vec![format!("alias/len/{}", text.len()).into_bytes()];
    if (8..=19).contains(&text.len()) && luhn_valid(text) {
        let last4 = &text[text.len() - 4..];
        keys.push(format!("alias/luhn/{}/{last4}", text.len()).into_bytes());
    }
    keys
}

/// Whether the counters say every token of `format` for `value` is taken (then
/// no search is needed to answer [`Error::TokenSpaceExhausted`]).
pub(crate) fn known_full(
    store: &impl Storage,
    format: TokenFormat,
    value: &[u8],
) -> Result<bool, Error> {
    let n = value.len();
    let (key, free) = match format {
        TokenFormat::Digits => (format!("alias/len/{n}"), n),
        TokenFormat::Luhn => {
            let last4 = String::from_utf8_lossy(&value[n - 4..]).into_owned();
            (format!("alias/luhn/{n}/{last4}"), n - 5)
        }
        TokenFormat::Email => return Ok(false),
    };
    let Some(space) = u32::try_from(free).ok().and_then(|f| 10i64.checked_pow(f)) else {
        return Ok(false);
    };
    Ok(store.counter(key.as_bytes())? >= space)
}

/// Whether `value` has the shape `format` keeps.
pub(crate) fn check_shape(format: TokenFormat, value: &[u8]) -> Result<(), Problem> {
    let digits = value.iter().all(u8::is_ascii_digit);
    let fits = match format {
        TokenFormat::Digits => digits && (1..=MAX_DIGIT_TOKEN_LEN).contains(&value.len()),
        TokenFormat::Luhn => digits && (8..=19).contains(&value.len()),
        TokenFormat::Email => true,
    };
    if fits {
        Ok(())
    } else {
        Err(Problem::WrongShape)
    }
}

/// Candidate texts for a token of `format` for `value` (whose shape was checked):
/// random draws, then, in a small space, every candidate in order from a random
/// start. Never the value itself.
pub(crate) fn candidates(
    format: TokenFormat,
    value: &[u8],
) -> Result<impl Iterator<Item = Result<String, Error>> + '_, Error> {
    // Luhn tokens keep the last four digits and fix one more (the check digit).
    let free = match format {
        TokenFormat::Digits => value.len(),
        TokenFormat::Luhn => value.len() - 5,
        TokenFormat::Email => 0,
    };
    let space = u32::try_from(free)
        .ok()
        .and_then(|free| 10u64.checked_pow(free));
    // Drawn as they are asked for: the first is nearly always free.
    let draws = std::iter::repeat_with(move || random_digits(free)).take(RANDOM_TRIES);
    let start = u64::from_le_bytes(random_bytes()?);
    let ordered = space
        .filter(|&space| space <= SEARCHABLE)
        .into_iter()
        .flat_map(move |space| (0..space).map(move |i| (start.wrapping_add(i)) % space))
        .map(move |n| Ok(format!("{n:0free$}")));
    Ok(draws
        .chain(ordered)
        .map(move |free_digits| free_digits.map(|f| shape(format, value, &f)))
        .filter(move |text| text.as_ref().map_or(true, |t| t.as_bytes() != value)))
}

/// `free` random decimal digits.
fn random_digits(free: usize) -> Result<String, Error> {
    let mut out = String::with_capacity(free);
    while out.len() < free {
        // Bytes below 250 are uniform over 0..10 (250 = 25 × 10).
        for b in random_bytes::<32>()? {
            if b < 250 && out.len() < free {
                out.push(char::from(b'0' + b % 10));
            }
        }
    }
    Ok(out)
}

/// The token text of `format` for `value`, with `free` as its free digits.
fn shape(format: TokenFormat, value: &[u8], free: &str) -> String {
    match format {
        TokenFormat::Luhn => {
            // The check digit's place is the fifth from the right.
            let mut digits = free.as_bytes().to_vec();
            digits.push(b'0');
            digits.extend_from_slice(&value[value.len() - 4..]);
            let check_at = digits.len() - 5;
            luhn_complete(&mut digits, check_at);
            String::from_utf8(digits).unwrap_or_default()
        }
        TokenFormat::Digits | TokenFormat::Email => free.to_owned(),
    }
}

/// The Luhn sum of ASCII digits, every second from the right doubled.
fn luhn_sum(digits: &[u8]) -> u32 {
    digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &b)| {
            let d = u32::from(b.wrapping_sub(b'0'));
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum()
}

/// Sets the ASCII digit at `at` so that `digits` pass the Luhn check. `at` must be
/// a place Luhn does not double (the first, third… from the right): the digit then
/// adds itself to the sum.
pub(crate) fn luhn_complete(digits: &mut [u8], at: usize) {
    digits[at] = b'0';
    let sum = luhn_sum(digits);
    digits[at] = b'0' + u8::try_from((10 - sum % 10) % 10).unwrap_or(0);
}

/// Whether a string of ASCII digits passes the Luhn check.
pub(crate) fn luhn_valid(text: &str) -> bool {
    let digits = text.as_bytes();
    !digits.is_empty()
        && digits.iter().all(u8::is_ascii_digit)
        && luhn_sum(digits).is_multiple_of(10)
}

impl Inner {
    /// Keeps an alias the erasure journal says was issued from being issued
    /// again (a restore to before it): stored as taken, naming no record, unless
    /// the store has it. Whether it wrote.
    pub(crate) fn replay_alias(&self, hash: &[u8; 16]) -> Result<bool, Error> {
        let mut key = [0u8; 17];
        key[0] = b'f';
        key[1..].copy_from_slice(hash);
        if self.store.get(Cf::Aliases, &key)?.is_some() {
            return Ok(false);
        }
        let burnt = Alias {
            id: [0; 16],
            text: String::new(),
        };
        let mut batch = self.store.batch();
        batch.expect(Cf::Aliases, &key, None);
        batch.put(Cf::Aliases, &key, &encode(ALIAS_FORMAT, &burnt));
        self.store.write(batch)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_tokens_keep_the_last_four_and_check() -> Result<(), Error> {
        let value = b"4111111111111111";
        for text in candidates(TokenFormat::Luhn, value)?.take(200) {
            let text = text?;
            assert_eq!(text.len(), 16);
            assert!(text.ends_with("1111"));
            assert!(luhn_valid(&text), "{text}");
            assert_ne!(text.as_bytes(), value);
        }
        assert!(luhn_valid("4111111111111111"));
        assert!(!luhn_valid("4111111111111112"));
        Ok(())
    }

    #[test]
    fn a_small_space_is_searched_whole() -> Result<(), Error> {
        // 2 digits: 100 texts, less the value itself.
        let all: std::collections::HashSet<String> =
            candidates(TokenFormat::Digits, b"42")?.collect::<Result<_, _>>()?;
        assert_eq!(all.len(), 99);
        assert!(!all.contains("42"));
        assert!(all.iter().all(|t| t.len() == 2));
        Ok(())
    }

    #[test]
    fn shapes_are_checked() {
        assert!(check_shape(TokenFormat::Digits, b"0123").is_ok());
        assert!(check_shape(TokenFormat::Digits, b"").is_err());
        assert!(check_shape(TokenFormat::Digits, b"12a").is_err());
        assert!(check_shape(TokenFormat::Digits, &[b'1'; 33]).is_err());
        assert!(check_shape(TokenFormat::Luhn, b"1234567").is_err());
        assert!(check_shape(TokenFormat::Luhn, b"12345678").is_ok());
        assert!(check_shape(TokenFormat::Luhn, &[b'1'; 20]).is_err());
        assert!(check_shape(TokenFormat::Email, "anything at all".as_bytes()).is_ok());
    }
}
