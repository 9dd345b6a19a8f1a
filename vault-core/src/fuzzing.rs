//! Entry points for the fuzz targets in `fuzz/`: each takes untrusted bytes and runs
//! the real decoder on them, the way the vault meets them on disk or from a caller.
//!
//! A target may return early on any error; it panics only where the decoder broke an
//! invariant (a value that decodes must encode and decode again to itself, a token
//! that parses must print as it was read). Not an API: compiled for the fuzz
//! crate (feature `fuzzing`) and for the tests that replay the corpus.

use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backup::Manifest;
use crate::backup::journal::Entry;
use crate::codec::{decode, encode};
use crate::consent::{CONSENT_FORMAT, ConsentEvent, Current};
use crate::crypto::Key;
use crate::erase::{
    ERASURE_FORMAT, ErasureEntry, QUEUE_FORMAT, QUEUE_FORMAT_1, QueueEntry, SubjectRef,
};
use crate::events::{AUDIT_FORMAT, AuditEvent, Base, HEAD_FORMAT, Head, HeadV1, StoredEvent};
use crate::header::Header;
use crate::keys::{DekSlot, KdfRecord, Keyring, RootSecret};
use crate::records::{RECORD_FORMAT, StoredRecord};
use crate::restore::{Done, REPORT_FORMAT};
use crate::staged::{EVENT_FORMAT, HEADER, entry_mac, read_entries};
use crate::subjects::{KEY_FORMAT, KeyEntry, SUBJECT_FORMAT, SubjectEntry};
use crate::token::{Layout, Token, TokenCodec};
use crate::{RootKey, backup, events};

/// The fixed key every keyed check uses: seeds made with it reach past the MACs.
fn key(byte: u8) -> Key {
    Key::fill_with(|k| *k = [byte; 32])
}

/// The root key of the seed header.
const ROOT_KEY: [u8; 32] = [7; 32];
const VAULT_ID: [u8; 16] = [9; 16];

/// Token parsing: the text form, then the tag and the storage key in both layouts.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(token) = text.parse::<Token>() else {
        return;
    };
    assert_eq!(token.to_string(), text, "a parsed token prints differently");
    for layout in [Layout::Scattered, Layout::BySubject] {
        let codec = TokenCodec::new(layout, key(1), &key(2));
        // An e-mail-shaped token names the same key as its opaque form.
        if let Some(id) = codec.key(&token) {
            assert_eq!(
                codec.token(&id).to_string(),
                token.lookup_text(),
                "a token's key names another token"
            );
        }
    }
}

/// The stored structures: the first byte picks one, the rest is its stored value.
pub fn stored(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 17 {
        0 => {
            if let Some(StoredRecord::Live(record)) =
                round_trip::<StoredRecord>(RECORD_FORMAT, bytes)
            {
                let _ = record.open(&VAULT_ID, &[3; 16], &key(4).aead());
            }
        }
        1 => {
            let _ = round_trip::<SubjectEntry>(SUBJECT_FORMAT, bytes);
            // Either format, as the vault reads subject entries.
            let _ = SubjectEntry::decode(bytes);
        }
        2 => {
            if let Some(entry) = round_trip::<KeyEntry>(KEY_FORMAT, bytes) {
                let slot = DekSlot {
                    vault_id: &VAULT_ID,
                    sid: &[3; 16],
                    subject_hash: &entry.subject_hash,
                };
                if let Ok(ring) = Keyring::from_bytes(&keyring_bytes()) {
                    let _ = ring.unwrap_dek(entry.kek_version, &slot, &entry.wrapped);
                }
            }
        }
        3 => {
            let _ = round_trip::<StoredEvent>(AUDIT_FORMAT, bytes);
        }
        4 => {
            let _ = round_trip::<Head>(HEAD_FORMAT, bytes);
        }
        5 => {
            let _ = decode::<HeadV1>(AUDIT_FORMAT, bytes);
        }
        6 => {
            let _ = round_trip::<Base>(AUDIT_FORMAT, bytes);
        }
        7 => {
            let _ = events::parse_mark(&key(5), Some(bytes));
        }
        8 => {
            let _ = round_trip::<AuditEvent>(EVENT_FORMAT, bytes);
        }
        9 => {
            if let Ok(entry) = QueueEntry::decode(bytes) {
                // Either format reads as the newest, which must read back.
                let again = encode_decode::<QueueEntry>(QUEUE_FORMAT, &entry);
                assert_eq!(again.due_by, entry.due_by);
            }
        }
        10 => {
            let _ = round_trip::<ErasureEntry>(ERASURE_FORMAT, bytes);
        }
        11 => {
            let _ = round_trip::<Vec<u8>>(CONSENT_FORMAT, bytes);
        }
        // Consent values are sealed: these are the plain forms inside.
        12 => {
            let _ = postcard::from_bytes::<ConsentEvent>(bytes);
        }
        13 => {
            let _ = postcard::from_bytes::<Current>(bytes);
        }
        14 => {
            let _ = round_trip::<Manifest>(backup::MANIFEST_FORMAT, bytes);
        }
        15 => {
            let _ = round_trip::<Done>(REPORT_FORMAT, bytes);
        }
        _ => {
            let _ = Entry::parse(bytes);
            if let Ok(text) = std::str::from_utf8(bytes) {
                if let Some(r) = SubjectRef::parse(text) {
                    assert_eq!(r.to_string(), text.to_ascii_lowercase());
                }
                if let Some(hash) = backup::parse_table_name(text) {
                    assert_eq!(backup::table_name(&hash), text.to_ascii_lowercase());
                }
            }
        }
    }
}

/// Decodes `bytes`; when that works, the value encodes to what decodes to itself.
/// (Not to `bytes` itself: postcard reads a varint written with more bytes than it
/// needs.)
fn round_trip<T: Serialize + DeserializeOwned>(version: u8, bytes: &[u8]) -> Option<T> {
    let value = decode::<T>(version, bytes).ok()?;
    let once = encode(version, &value);
    let again = encode_decode::<T>(version, &value);
    assert_eq!(
        encode(version, &again),
        once,
        "a decoded value changes when re-encoded"
    );
    Some(value)
}

fn encode_decode<T: Serialize + DeserializeOwned>(version: u8, value: &T) -> T {
    match decode(version, &encode(version, value)) {
        Ok(value) => value,
        Err(_) => panic!("an encoded value does not decode"),
    }
}

/// The staged read-event file reader. The first byte's low bit picks the input's
/// form: the file as is (its MACs almost never authenticate), or the file without
/// its MACs, each added here, so that the entries' bodies reach the decoder.
pub fn staged(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = key(6);
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        with_macs(rest, &key)
    };
    let entries = read_entries(&file, &key);
    assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "staged entries out of order"
    );
}

/// `bytes` as entries without MACs (length, number, body), each given its MAC; a
/// last entry cut short stays cut short.
fn with_macs(bytes: &[u8], key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 4);
    let mut at = 0;
    while let Some(head) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[4..]);
        out.extend_from_slice(head);
        let Some(body) = bytes.get(at + HEADER..at + HEADER + len) else {
            out.extend_from_slice(&bytes[at + HEADER..]);
            return out;
        };
        out.extend_from_slice(body);
        out.extend_from_slice(&entry_mac(key, u64::from_le_bytes(seq), body));
        at += HEADER + len;
    }
    out.extend_from_slice(&bytes[at..]);
    out
}

/// The header file, then what opening a vault does with it: derive the root secret
/// (with a raw key, never Argon2id: it costs seconds), check the commitment, open
/// the keyring.
pub fn header(data: &[u8]) {
    let Ok(header) = Header::parse(data, Path::new("fuzz")) else {
        return;
    };
    let _ = header.layout();
    let Ok(bytes) = header.to_bytes() else {
        panic!("a parsed header does not serialise");
    };
    match Header::parse(&bytes, Path::new("fuzz")) {
        Ok(again) => assert_eq!(again.to_bytes().ok(), Some(bytes), "header changes"),
        Err(_) => panic!("a re-encoded header does not parse"),
    }
    let Ok(root) = RootKey::from_bytes(&ROOT_KEY) else {
        return;
    };
    if let Ok(secret) = RootSecret::derive(&root, &header.kdf) {
        let _ = secret.check(&header.vault_id, &header.commitment);
        if let Ok(ring) = secret.open_keyring(&header.vault_id, &header.keyring) {
            let _ = ring.index_keys(header.layout());
        }
    }
}

/// The keyring's fixed layout, then the keys it yields.
pub fn keyring(data: &[u8]) {
    let Ok(ring) = Keyring::from_bytes(data) else {
        return;
    };
    let Ok(copy) = ring.duplicate() else {
        panic!("a decoded keyring does not copy");
    };
    assert_eq!(copy.active(), ring.active());
    assert!(copy.versions().eq(ring.versions()));
    let slot = DekSlot {
        vault_id: &VAULT_ID,
        sid: &[3; 16],
        subject_hash: &[4; 32],
    };
    let dek = key(8);
    if let Ok((version, wrapped)) = ring.wrap_dek(&slot, &dek) {
        match copy.unwrap_dek(version, &slot, &wrapped) {
            Ok(back) => assert_eq!(back.expose(), dek.expose()),
            Err(_) => panic!("a wrapped key does not unwrap with the keyring's copy"),
        }
    }
    let _ = ring.index_keys(Layout::BySubject);
}

/// A keyring in its documented layout, with versions 1 and 2, 2 active.
fn keyring_bytes() -> Vec<u8> {
    let mut out = vec![1];
    out.extend_from_slice(&[11; 32]);
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&2u32.to_le_bytes());
    for version in [1u32, 2] {
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&[version as u8 + 20; 32]);
    }
    out
}

/// Real encoded values to start each target from, by target and name: what
/// `fuzz/corpus/` holds (written by the ignored test `write_seed_corpus`).
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
        out.push((target, name.to_owned(), bytes));
    };

    for layout in [Layout::Scattered, Layout::BySubject] {
        let codec = TokenCodec::new(layout, key(1), &key(2));
        let text = codec.token(&[0x5a; 16]).to_string();
        add(
            "token",
            &format!("{layout:?}").to_lowercase(),
            text.into_bytes(),
        );
    }
    // The other forms: e-mail-shaped, and digits (looked up, never decoded).
    let codec = TokenCodec::new(Layout::BySubject, key(1), &key(2));
    let email = codec.token(&[0x5a; 16]).into_email().to_string();
    add("token", "email", email.into_bytes());
    add("token", "digits", b"4000001234561111".to_vec());

    let stored = |which: u8, bytes: Vec<u8>| [vec![which], bytes].concat();
    let event = AuditEvent {
        at: 1_700_000_000_000,
        records: 1,
        subject: Some([3; 16]),
        ..AuditEvent::new(
            "support-app",
            crate::AuditAction::Detokenize,
            crate::AuditOutcome::Ok,
        )
    }
    .purpose("support");
    let mark = events::mark_value(&key(5), 42);
    let ring = Keyring::from_bytes(&keyring_bytes()).ok();
    let record = ring.as_ref().and_then(|ring| {
        let index = ring.index_keys(Layout::BySubject);
        let place = crate::records::RecordPlace {
            vault_id: &VAULT_ID,
            sid: &[3; 16],
            id: &[3; 16],
        };
        crate::records::LiveRecord::seal(
            &index,
            &place,
            "email",
            1_700_000_000_000,
            false,
            &key(4).aead(),
            b"alice@example.com",
        )
        .ok()
    });
    if let Some(record) = record {
        add(
            "stored",
            "record-live",
            stored(0, encode(RECORD_FORMAT, &StoredRecord::Live(record))),
        );
    }
    let stub = StoredRecord::Shredded { tag: [6; 16] };
    add(
        "stored",
        "record-shredded",
        stored(0, encode(RECORD_FORMAT, &stub)),
    );
    let subject = SubjectEntry {
        sid: [3; 16],
        created_at: 1_700_000_000_000,
        records: 2,
        fields: vec![crate::subjects::FieldDays {
            field: "email".to_owned(),
            days: vec![(20_000, 2)],
        }],
    };
    add(
        "stored",
        "subject",
        stored(1, encode(SUBJECT_FORMAT, &subject)),
    );
    let slot = DekSlot {
        vault_id: &VAULT_ID,
        sid: &[3; 16],
        subject_hash: &[4; 32],
    };
    if let Some(Ok((kek_version, wrapped))) = ring.as_ref().map(|r| r.wrap_dek(&slot, &key(8))) {
        let entry = KeyEntry {
            subject_hash: [4; 32],
            kek_version,
            wrapped,
        };
        add("stored", "key", stored(2, encode(KEY_FORMAT, &entry)));
    }
    let stored_event = StoredEvent {
        event: event.clone(),
        mac: [8; 32],
    };
    add(
        "stored",
        "audit-event",
        stored(3, encode(AUDIT_FORMAT, &stored_event)),
    );
    let head = Head {
        seq: 9,
        mac: [8; 32],
        staged: 42,
        tag: [9; 32],
    };
    add(
        "stored",
        "audit-head",
        stored(4, encode(HEAD_FORMAT, &head)),
    );
    add(
        "stored",
        "audit-head-v1",
        stored(5, encode(AUDIT_FORMAT, &(9u64, [8u8; 32], [9u8; 32]))),
    );
    let base = Base {
        first: 5,
        mac: [8; 32],
        tag: [9; 32],
    };
    add(
        "stored",
        "audit-base",
        stored(6, encode(AUDIT_FORMAT, &base)),
    );
    add("stored", "staged-mark", stored(7, mark));
    add(
        "stored",
        "staged-event",
        stored(8, encode(EVENT_FORMAT, &event)),
    );
    let queued = QueueEntry {
        due_by: 1_700_000_600_000,
        subject: Some(([4; 32], [5; 8])),
        tag: [6; 16],
    };
    add(
        "stored",
        "purge-queue",
        stored(9, encode(QUEUE_FORMAT, &queued)),
    );
    add(
        "stored",
        "purge-queue-v1",
        stored(9, encode(QUEUE_FORMAT_1, &1_700_000_600_000u64)),
    );
    let erasure = (
        1_700_000_000_000u64,
        3u64,
        Some(1_700_000_100_000u64),
        [6u8; 16],
    );
    add(
        "stored",
        "erasure",
        stored(10, encode(ERASURE_FORMAT, &erasure)),
    );
    add(
        "stored",
        "consent-sealed",
        stored(11, encode(CONSENT_FORMAT, &vec![7u8; 60])),
    );
    let consent = ConsentEvent {
        purpose: "marketing".to_owned(),
        granted: true,
        at: 1_700_000_000_000,
        source: Some("web form".to_owned()),
    };
    add(
        "stored",
        "consent-event",
        stored(12, postcard_bytes(&consent)),
    );
    let current = ("marketing", true, 1_700_000_000_000u64, 3u64);
    add(
        "stored",
        "consent-current",
        stored(13, postcard_bytes(&current)),
    );
    let manifest = Manifest {
        vault_id: VAULT_ID,
        id: "20240101T000000Z".to_owned(),
        created_at: 1_700_000_000_000,
        journal_seq: 4,
        unpurged: 0,
        records: 12,
        files: vec![backup::FileEntry {
            name: "000012.sst".to_owned(),
            size: 4096,
            hash: [1; 32],
            shared: true,
        }],
    };
    add(
        "stored",
        "backup-manifest",
        stored(14, encode(backup::MANIFEST_FORMAT, &manifest)),
    );
    let report = crate::RestoreReport {
        backup: "20240101T000000Z".to_owned(),
        backup_created_at: 1_700_000_000_000,
        erasures_replayed: 1,
        journal_entries: 4,
        journal_entries_skipped: 0,
        journal_unverified: false,
        data_dir: "/var/lib/pii-vault".into(),
    };
    let done = (report, Some(std::path::PathBuf::from("backups")));
    add(
        "stored",
        "restore-done",
        stored(15, encode(REPORT_FORMAT, &done)),
    );
    let mut journal_entry = vec![0u8; 49];
    journal_entry[7] = 1;
    journal_entry[16] = 2;
    add("stored", "erasure-journal-entry", stored(16, journal_entry));
    add(
        "stored",
        "subject-ref",
        stored(16, b"0303030303030303030303030303030a".to_vec()),
    );

    let staged_key = key(6);
    let mut file = Vec::new();
    let mut bare = vec![1];
    for (seq, event) in [
        (1u64, &event),
        (
            2,
            &AuditEvent::new(
                "ops",
                crate::AuditAction::Export,
                crate::AuditOutcome::NotFound,
            ),
        ),
    ] {
        let body = encode(EVENT_FORMAT, event);
        let head = [&(body.len() as u32).to_le_bytes()[..], &seq.to_le_bytes()].concat();
        file.extend_from_slice(&head);
        file.extend_from_slice(&body);
        file.extend_from_slice(&entry_mac(&staged_key, seq, &body));
        bare.extend_from_slice(&head);
        bare.extend_from_slice(&body);
    }
    add("staged", "file", [vec![0], file].concat());
    add("staged", "entries", bare);

    if let Some(ring) = &ring {
        for (name, bytes) in header_seeds(ring).unwrap_or_default() {
            add("header", name, bytes);
        }
    }
    add("keyring", "two-versions", keyring_bytes());
    out
}

/// A header that opens with [`ROOT_KEY`] and holds `ring`, and a passphrase vault's
/// of the first format.
fn header_seeds(ring: &Keyring) -> Result<Vec<(&'static str, Vec<u8>)>, crate::Error> {
    let secret = RootSecret::derive(&RootKey::from_bytes(&ROOT_KEY)?, &KdfRecord::Raw)?;
    let header = Header {
        vault_id: VAULT_ID,
        created_at: 1_700_000_000_000,
        kdf: KdfRecord::Raw,
        commitment: secret.commitment(&VAULT_ID),
        keyring: secret.seal_keyring(&VAULT_ID, ring)?,
        format: crate::header::FORMAT_VERSION,
    };
    let raw = header.to_bytes()?;
    let passphrase = Header {
        kdf: KdfRecord::Argon2id {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            salt: [5; 16],
        },
        format: 1,
        ..header
    };
    Ok(vec![
        ("raw-key", raw),
        ("passphrase-format-1", passphrase.to_bytes()?),
    ])
}

fn postcard_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value).unwrap_or_default()
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the tests that replay the corpus.
pub const TARGETS: &[(&str, Target)] = &[
    ("token", token),
    ("stored", stored),
    ("staged", staged),
    ("header", header),
    ("keyring", keyring),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn fuzz_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
    }

    /// The seeds, the committed corpus and every crash input found so far
    /// (`fuzz/regressions/<target>/`) run through their targets without a panic.
    #[test]
    fn corpus_and_regressions_run_clean() -> Result<(), Box<dyn std::error::Error>> {
        for (target, _, bytes) in seeds() {
            let (_, run) = TARGETS
                .iter()
                .find(|(t, _)| *t == target)
                .ok_or("no target")?;
            run(&bytes);
        }
        for (target, run) in TARGETS {
            for dir in ["corpus", "regressions"] {
                let Ok(files) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
                    continue;
                };
                for file in files {
                    run(&std::fs::read(file?.path())?);
                }
            }
        }
        Ok(())
    }

    /// Each seed reaches past its checks: the parsers accept it.
    #[test]
    fn seeds_decode() {
        let seeds = seeds();
        for target in ["token", "stored", "staged", "header", "keyring"] {
            assert!(seeds.iter().any(|(t, _, _)| *t == target), "{target}");
        }
        let key = key(6);
        for (target, name, bytes) in &seeds {
            let ok = match *target {
                "token" => std::str::from_utf8(bytes).is_ok_and(|t| t.parse::<Token>().is_ok()),
                "header" => Header::parse(bytes, Path::new("x")).is_ok(),
                "keyring" => Keyring::from_bytes(bytes).is_ok(),
                "staged" if name == "file" => read_entries(&bytes[1..], &key).len() == 2,
                "staged" => read_entries(&with_macs(&bytes[1..], &key), &key).len() == 2,
                _ => true,
            };
            assert!(ok, "{target}/{name}");
        }
    }

    /// Writes the seeds into `fuzz/corpus/<target>/seed-<name>`. Run by hand after a
    /// stored format changes: `cargo test -p vault-core --lib write_seed_corpus -- --ignored`.
    #[test]
    #[ignore]
    fn write_seed_corpus() -> Result<(), Box<dyn std::error::Error>> {
        for (target, name, bytes) in seeds() {
            let dir = fuzz_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(format!("seed-{name}")), bytes)?;
        }
        Ok(())
    }
}
