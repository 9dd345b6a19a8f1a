//! The header file `VAULT`: what identifies a vault directory and opens its keys.
//!
//! It holds the format version, the vault id, the KDF record, the root-key commitment
//! and the sealed keyring. It lives outside RocksDB so that a wrong root key, a foreign
//! directory or a newer format is refused before the storage engine touches a file.
//! It is replaced atomically (write, fsync, rename, fsync the directory).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::keys::KdfRecord;

/// The file name of the header inside a vault directory.
pub(crate) const HEADER_FILE: &str = "VAULT";
const MAGIC: &[u8; 8] = b"PIIVAULT";
/// The newest on-disk format this build reads and writes.
pub(crate) const FORMAT_VERSION: u16 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Header {
    pub vault_id: [u8; 16],
    pub created_at: u64,
    pub kdf: KdfRecord,
    pub commitment: [u8; 32],
    /// The keyring, sealed under the root secret.
    pub keyring: Vec<u8>,
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
        if found != FORMAT_VERSION {
            return Err(not_a_vault());
        }
        match postcard::take_from_bytes(&rest[2..]) {
            Ok((header, [])) => Ok(header),
            _ => Err(Error::Integrity),
        }
    }

    /// Replaces the header atomically and durably.
    pub(crate) fn write(&self, dir: &Path) -> Result<(), Error> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        let bytes = postcard::to_extend(self, bytes)
            .map_err(|_| Error::InvalidOption("header does not serialise"))?;
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
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
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
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(Header::path(dir.path()))?.permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        let mut bytes = fs::read(Header::path(dir.path()))?;
        bytes[8] = 2; // a newer format version
        fs::write(Header::path(dir.path()), &bytes)?;
        assert!(matches!(
            Header::read(dir.path()),
            Err(Error::UnsupportedFormat {
                found: 2,
                supported: 1
            })
        ));
        fs::write(Header::path(dir.path()), b"something else entirely")?;
        assert!(matches!(
            Header::read(dir.path()),
            Err(Error::NotAVault { .. })
        ));
        Ok(())
    }
}
