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

/// Serde of a byte vector as one byte string, where serde's default is a sequence
/// of single bytes: postcard encodes both alike (a length, then the bytes), and
/// reads and writes the string in one copy rather than byte by byte. For
/// `#[serde(with = "crate::codec::bytes")]`.
pub(crate) mod bytes {
    use std::fmt;

    use serde::{Deserializer, Serializer, de};

    pub(crate) fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct Bytes;
        impl de::Visitor<'_> for Bytes {
            type Value = Vec<u8>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }

            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(Bytes)
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

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBytes {
        a: u64,
        #[serde(with = "bytes")]
        b: Vec<u8>,
    }

    #[test]
    fn a_byte_string_encodes_as_the_sequence_it_replaces() -> Result<(), Error> {
        for b in [
            Vec::new(),
            vec![7],
            (0..=255).collect::<Vec<u8>>().repeat(3),
        ] {
            let seq = S { a: 9, b: b.clone() };
            let bytes = encode(1, &AsBytes { a: 9, b });
            assert_eq!(bytes, encode(1, &seq));
            assert_eq!(decode::<AsBytes>(1, &bytes)?.b, seq.b);
            assert_eq!(decode::<S>(1, &bytes)?, seq);
        }
        Ok(())
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
