//! The header file `VAULT`: what identifies a vault directory and opens its keys.
//!
//! It holds the format version, the vault id, the KDF record, the root-key commitment
//! and the sealed keyring. It lives outside the storage engine so that a wrong root key, a foreign
//! directory or a newer format is refused before the storage engine touches a file.
//! It is replaced atomically (write, fsync, rename, fsync the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keys::KdfRecord;
use crate::token::Layout;

/// The key of the header in [`Cf::Meta`](crate::store::Cf::Meta) on a shared
/// store, where there is no directory: the same bytes as the file.
pub(crate) const HEADER_KEY: &[u8] = b"vault/header";
/// The file name of the header inside a vault directory.
pub(crate) const HEADER_FILE: &str = "VAULT";
const MAGIC: &[u8; 8] = b"PIIVAULT";
/// The on-disk format of new vaults, the newest this build reads: 2 stores a
/// subject's records as one key range ([`Layout::BySubject`]).
pub(crate) const FORMAT_VERSION: u16 = 2;
/// The oldest format this build reads: 1, records under random keys.
const OLDEST_FORMAT: u16 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    pub vault_id: [u8; 16],
    pub created_at: u64,
    pub kdf: KdfRecord,
    pub commitment: [u8; 32],
    /// The keyring, sealed under the root secret.
    pub keyring: Vec<u8>,
    /// The format the vault was created in (the version in front of the fields).
    #[serde(skip)]
    pub format: u16,
}

impl Header {
    pub(crate) fn path(dir: &Path) -> PathBuf {
        dir.join(HEADER_FILE)
    }

    /// Reads the header; `NotAVault` if it is missing or not ours.
    pub(crate) fn read(dir: &Path) -> Result<Header, Error> {
        let path = Header::path(dir);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NotAVault { path: dir.into() });
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        Header::parse(&bytes, dir)
    }

    /// The header from the bytes of the file in `dir` (named in errors).
    pub(crate) fn parse(bytes: &[u8], dir: &Path) -> Result<Header, Error> {
        let not_a_vault = || Error::NotAVault { path: dir.into() };
        let rest = bytes.strip_prefix(MAGIC).ok_or_else(not_a_vault)?;
        if rest.len() < 2 {
            return Err(not_a_vault());
        }
        let found = u16::from_le_bytes([rest[0], rest[1]]);
        if found > FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                found,
                supported: FORMAT_VERSION,
            });
        }
        if found < OLDEST_FORMAT {
            return Err(not_a_vault());
        }
        match postcard::take_from_bytes::<Header>(&rest[2..]) {
            Ok((header, [])) => Ok(Header {
                format: found,
                ..header
            }),
            _ => Err(Error::Integrity),
        }
    }

    /// Where the vault's records live, as its format says. (Formats differ in
    /// nothing else, so a vault keeps its format for life.)
    pub(crate) fn layout(&self) -> Layout {
        if self.format >= 2 {
            Layout::BySubject
        } else {
            Layout::Scattered
        }
    }

    /// The file's bytes: what [`Header::parse`] reads.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, Error> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&self.format.to_le_bytes());
        postcard::to_extend(self, bytes)
            .map_err(|_| Error::InvalidOption("header does not serialise"))
    }

    /// Replaces the header atomically and durably.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), Error> {
        let bytes = self.to_bytes()?;
        let tmp = dir.join(format!("{HEADER_FILE}.tmp"));
        let path = Header::path(dir);
        // A leftover temporary file would keep its mode; start from none.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(&tmp, e)),
            _ => {}
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        file.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(file);
        crate::failpoints::hit(dir, "header.written")?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        crate::failpoints::hit(dir, "header.renamed")?;
        sync_dir(dir)
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            vault_id: [1; 16],
            created_at: 5,
            kdf: KdfRecord::Raw,
            commitment: [2; 32],
            keyring: vec![3; 40],
            format: FORMAT_VERSION,
        }
    }

    #[test]
    fn round_trip_and_refusals() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        assert!(matches!(
            Header::read(dir.path()),
            Err(Error::NotAVault { .. })
        ));
        header().write(dir.path())?;
        assert_eq!(Header::read(dir.path())?.keyring, vec![3; 40]);
        assert_eq!(Header::read(dir.path())?.layout(), Layout::BySubject);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(Header::path(dir.path()))?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        // A vault of the first format keeps its layout when its header is rewritten.
        let first = Header {
            format: 1,
            ..header()
        };
        first.write(dir.path())?;
        assert_eq!(Header::read(dir.path())?.layout(), Layout::Scattered);
        Header::read(dir.path())?.write(dir.path())?;
        assert_eq!(Header::read(dir.path())?.format, 1);

        let mut bytes = fs::read(Header::path(dir.path()))?;
        bytes[8] = 3; // a newer format version
        fs::write(Header::path(dir.path()), &bytes)?;
        assert!(matches!(
            Header::read(dir.path()),
            Err(Error::UnsupportedFormat {
                found: 3,
                supported: 2
            })
        ));
        bytes[8] = 0;
        fs::write(Header::path(dir.path()), &bytes)?;
        assert!(matches!(
            Header::read(dir.path()),
            Err(Error::NotAVault { .. })
        ));
        fs::write(Header::path(dir.path()), b"something else entirely")?;
        assert!(matches!(
            Header::read(dir.path()),
            Err(Error::NotAVault { .. })
        ));
        Ok(())
    }
}
