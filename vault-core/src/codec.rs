//! Stored structures: serde + postcard, each value prefixed with a format version byte.
//!
//! A value that does not decode is treated as altered data ([`Error::Integrity`]):
//! the vault never guesses at what a damaged value meant.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Encodes `value` as `version || postcard(value)`.
pub(crate) fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    // Room for a sealed 100-byte value and its record: postcard extends the vector
    // a few bytes at a time, and growing it from nothing reallocates it five times.
    let mut out = Vec::with_capacity(256);
    encode_into(version, value, &mut out);
    out
}

/// [`encode`], appended to `out` (no allocation of its own).
pub(crate) fn encode_into<T: Serialize>(version: u8, value: &T, out: &mut Vec<u8>) {
    /// Lets postcard extend a vector it does not own.
    struct Tail<'a>(&'a mut Vec<u8>);
    impl Extend<u8> for Tail<'_> {
        fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
            self.0.extend(bytes);
        }
    }
    let start = out.len();
    out.push(version);
    // Serialising plain structs cannot fail; should it, nothing is left of the
    // value, and an empty value is rejected on decode, never silently accepted.
    if postcard::to_extend(value, Tail(out)).is_err() {
        out.truncate(start);
    }
}

/// Decodes what [`encode`] wrote, refusing any other version and trailing bytes.
pub(crate) fn decode<T: DeserializeOwned>(version: u8, bytes: &[u8]) -> Result<T, Error> {
    match bytes.split_first() {
        Some((&v, rest)) if v == version => match postcard::take_from_bytes(rest) {
            Ok((value, [])) => Ok(value),
            _ => Err(Error::Integrity),
        },
        _ => Err(Error::Integrity),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct S {
        a: u64,
        b: Vec<u8>,
    }

    #[test]
    fn versioned_round_trip() -> Result<(), Error> {
        let s = S {
            a: 5,
            b: vec![1, 2],
        };
        let bytes = encode(1, &s);
        assert_eq!(bytes[0], 1);
        assert_eq!(decode::<S>(1, &bytes)?, s);
        assert!(decode::<S>(2, &bytes).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode::<S>(1, &trailing).is_err());
        assert!(decode::<S>(1, &[]).is_err());
        Ok(())
    }
}
