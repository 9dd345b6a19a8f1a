//! Stored structures: serde + postcard, each value prefixed with a format version byte.
//!
//! A value that does not decode is treated as altered data ([`Error::Integrity`]):
//! the vault never guesses at what a damaged value meant.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Encodes `value` as `version || postcard(value)`.
pub(crate) fn encode<T: Serialize>(version: u8, value: &T) -> Vec<u8> {
    // Serialising plain structs into a Vec cannot fail; an empty value would be
    // rejected on decode, never silently accepted.
    postcard::to_extend(value, vec![version]).unwrap_or_default()
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
