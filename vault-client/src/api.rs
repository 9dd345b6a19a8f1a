//! The wire format of the vault's HTTP API (v1): every request and response body.
//!
//! The server serves these very types, so the client cannot drift from it. Request
//! bodies refuse unknown fields; response bodies ignore them, so that a newer server
//! can add fields without breaking older clients.
//!
//! Subject ids and values are [`Sensitive`]: their `Debug` is redacted and they are
//! wiped on drop, so that a stray `{:?}` or a panic message cannot leak them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Personal data in transit (a subject id or a value): redacted in `Debug`, wiped when
/// dropped. Serialises as a plain JSON string.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sensitive(String);

impl Sensitive {
    /// Wraps a string.
    pub fn new(text: impl Into<String>) -> Sensitive {
        Sensitive(text.into())
    }

    /// The text.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Sensitive {
    fn from(text: &str) -> Sensitive {
        Sensitive(text.to_owned())
    }
}

impl From<String> for Sensitive {
    fn from(text: String) -> Sensitive {
        Sensitive(text)
    }
}

impl fmt::Debug for Sensitive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[REDACTED; {} bytes]", self.0.len())
    }
}

impl Drop for Sensitive {
    fn drop(&mut self) {
        zeroize_string(&mut self.0);
    }
}

/// Overwrites a string's bytes before its buffer is freed.
fn zeroize_string(text: &mut String) {
    let mut bytes = std::mem::take(text).into_bytes();
    bytes.iter_mut().for_each(|b| *b = 0);
    // Keep the writes from being optimised away.
    std::hint::black_box(&bytes);
}

/// `POST /v1/tokenize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeRequest {
    /// The values to tokenize, stored all-or-nothing.
    pub items: Vec<TokenizeItem>,
}

/// One value to tokenize.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizeItem {
    /// The data subject the value belongs to (e.g. a customer id).
    pub subject: Sensitive,
    /// The field name (ASCII letters, digits, `_`, `-`, `.`).
    pub field: String,
    /// The value.
    pub value: Sensitive,
    /// Issue the deterministic token of (subject, field, value) instead of a random one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deterministic: bool,
    /// The shape of the token, for columns that validate what they hold; absent:
    /// the opaque `tok_…` form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<TokenFormat>,
}

/// The shape of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenFormat {
    /// As many digits as the value (digits only, 1 to 32), random.
    Digits,
    /// As many digits as the card number (8 to 19), keeping its last four, Luhn-valid.
    Luhn,
    /// An e-mail address at `example.net` (reserved: mail to it goes nowhere).
    Email,
}

impl TokenizeItem {
    /// A value for a random token.
    pub fn new(
        subject: impl Into<Sensitive>,
        field: impl Into<String>,
        value: impl Into<Sensitive>,
    ) -> TokenizeItem {
        TokenizeItem {
            subject: subject.into(),
            field: field.into(),
            value: value.into(),
            deterministic: false,
            format: None,
        }
    }

    /// Asks for a token of `format` (deterministic only as `email`).
    pub fn format(mut self, format: TokenFormat) -> TokenizeItem {
        self.format = Some(format);
        self
    }

    /// Asks for the deterministic token instead.
    pub fn deterministic(mut self) -> TokenizeItem {
        self.deterministic = true;
        self
    }
}

/// Answer to `POST /v1/tokenize`: one token per item, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizeResponse {
    /// The tokens.
    pub tokens: Vec<String>,
}

/// `POST /v1/detokenize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetokenizeRequest {
    /// The tokens to turn back into values.
    pub tokens: Vec<String>,
    /// Why the values are needed; the API key must be allowed this purpose.
    pub purpose: String,
}

/// Answer to `POST /v1/detokenize`: one result per token, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DetokenizeResponse {
    /// The results.
    pub results: Vec<DetokenizeResult>,
}

/// The outcome for one token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DetokenizeResult {
    /// The token's field and value.
    Value {
        /// The token.
        token: String,
        /// The field name given at tokenization.
        field: String,
        /// The value, or its masked view when `masked`.
        value: Sensitive,
        /// Whether `value` is a masked view (the purpose or the API key is limited to
        /// masked values).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        masked: bool,
    },
    /// Why there is no value.
    Error {
        /// The token.
        token: String,
        /// What happened.
        error: ItemError,
    },
}

/// Why a token has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemError {
    /// No record exists for the token (never issued, or deleted).
    NotFound,
    /// The token's subject was erased.
    Erased,
    /// The stored record failed authentication (altered or misplaced).
    Integrity,
    /// The value is binary (stored through the embedded crate) and has no JSON string
    /// form.
    NotText,
    /// The purpose does not cover the record's field.
    Forbidden,
    /// The purpose's basis is consent, and the subject's consent is not granted.
    NoConsent,
    /// The record is past its field's retention period.
    Expired,
    /// An outcome this client does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

/// `PUT /v1/tokens/{token}` (rectification).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RectifyRequest {
    /// The new value.
    pub value: Sensitive,
}

/// `POST /v1/subjects/erase`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectRequest {
    /// The data subject.
    pub subject: Sensitive,
}

/// `POST /v1/subjects/export`: one page of a subject's export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// The data subject.
    pub subject: Sensitive,
    /// Where the page starts: the previous page's `next_cursor`; absent for the
    /// first page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// At most this many records and audit events in the page (the server's
    /// `[limits] export_page` when absent, and never more).
    #[serde(
        default,
        deserialize_with = "whole::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit: Option<u32>,
}

/// Answer to `POST /v1/subjects/erase`. Carries no personal data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErasureReceipt {
    /// A reference to the erased subject instance that says nothing about who it was,
    /// or `None` when the vault held no subject with this id.
    pub subject_ref: Option<String>,
    /// When the key was destroyed, in milliseconds since the Unix epoch.
    pub erased_at: u64,
    /// How many records were shredded.
    pub records: u64,
    /// Whether the bytes have left the disk yet.
    pub purge: Purge,
    /// The audit event that records the erasure (proof of it that names nobody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_event: Option<u64>,
    /// The kept backups that may still hold the subject (a restore of one erases it
    /// again); empty without backups.
    #[serde(default)]
    pub backups: Vec<String>,
    /// When the last of them is deleted by `keep`, in milliseconds since the Unix
    /// epoch (with `[backup] every_hours`); `null` otherwise.
    #[serde(default)]
    pub in_backups_until: Option<u64>,
}

/// Where the physical removal of an erased subject's bytes stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Purge {
    /// Gone from every live file of the vault (verified).
    Done {
        /// When, in milliseconds since the Unix epoch.
        at: u64,
    },
    /// The key is destroyed; the bytes will be removed by this deadline.
    Pending {
        /// The deadline, in milliseconds since the Unix epoch.
        due_by: u64,
    },
    /// Nothing to erase: no subject had this id.
    NotNeeded,
    /// A state this client does not know (sent by a newer server).
    #[serde(other)]
    Unknown,
}

/// Answer to `POST /v1/subjects/export`: everything the vault holds about a subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectExport {
    /// The subject, as asked.
    pub subject: Sensitive,
    /// When the export was made, in milliseconds since the Unix epoch.
    pub exported_at: u64,
    /// The subject's records.
    pub records: Vec<ExportedRecord>,
    /// The subject's consents, per purpose.
    #[serde(default)]
    pub consents: Vec<Consent>,
    /// Who did what with the subject's data, when, for which purpose (GDPR Art.
    /// 15(1)(c)): the audit events about the subject still kept, oldest first.
    #[serde(default)]
    pub access_log: Vec<AuditEventInfo>,
    /// The subject instance (as in an erasure receipt), `None` when the vault holds
    /// nothing under this id. Every page of one export names the same instance.
    #[serde(default)]
    pub subject_ref: Option<String>,
    /// Where the next page starts (send it as `cursor`); `None` on the last page.
    /// Records come first, then the access log; consents are on the first page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Answer to `POST /v1/subjects/lookup`: what the vault holds about a subject,
/// without the values (reveal one with `POST /v1/detokenize`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectOverview {
    /// The subject, as asked.
    pub subject: Sensitive,
    /// The subject instance (as in exports and erasure receipts); `None` when the
    /// vault holds nothing under this id.
    pub subject_ref: Option<String>,
    /// The first records (at most `[limits] export_page`).
    pub records: Vec<RecordInfo>,
    /// Whether there are more records than listed (an export lists every one).
    pub more_records: bool,
    /// The consents, per purpose, with their history.
    pub consents: Vec<Consent>,
    /// The latest audit events about the subject, oldest first.
    pub access_log: Vec<AuditEventInfo>,
    /// Whether there are older events than listed (an export lists every one).
    pub more_events: bool,
    /// The kept backups taken since the subject was stored (they hold its data).
    pub backups: Vec<String>,
}

/// A record of a [`SubjectOverview`]: no value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordInfo {
    /// Its token, as issued.
    pub token: String,
    /// The field name.
    pub field: String,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_at: u64,
}

/// Answer to `GET /v1/whoami`: the calling key's name and what it may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// The key's name in the configuration.
    pub name: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The purposes it may detokenize for; `None`: any.
    pub purposes: Option<Vec<String>>,
    /// Whether it sees masked values only.
    pub masked: bool,
}

/// `POST /v1/subjects/consent`: a grant or withdrawal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// The data subject.
    pub subject: Sensitive,
    /// A declared purpose.
    pub purpose: String,
    /// Granted (`true`) or withdrawn (`false`).
    pub granted: bool,
    /// Where it was given or withdrawn (e.g. which form); at most 256 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Sensitive>,
}

/// The consent of a subject to one purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// The purpose.
    pub purpose: String,
    /// Whether consent is currently granted.
    pub granted: bool,
    /// When the current state began, in milliseconds since the Unix epoch.
    pub since: u64,
    /// Every grant and withdrawal, oldest first.
    pub history: Vec<ConsentChange>,
}

/// One grant or withdrawal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentChange {
    /// Granted or withdrawn.
    pub granted: bool,
    /// When, in milliseconds since the Unix epoch.
    pub at: u64,
    /// Where, as the caller said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Sensitive>,
}

/// Answer to `POST /v1/subjects/consents`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubjectConsents {
    /// The subject, as asked.
    pub subject: Sensitive,
    /// Per purpose.
    pub consents: Vec<Consent>,
}

/// Answer to `GET /v1/purposes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purposes {
    /// The declared purposes.
    pub purposes: Vec<PurposeInfo>,
}

/// A declared purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurposeInfo {
    /// Its name.
    pub name: String,
    /// Its lawful basis (GDPR Art. 6(1)): `consent`, `contract`, `legal_obligation`,
    /// `vital_interests`, `public_task` or `legitimate_interests`.
    pub basis: String,
    /// The fields it may reveal; `None` for all.
    pub fields: Option<Vec<String>>,
    /// Whether it sees masked values only.
    pub masked: bool,
}

/// One record of a [`SubjectExport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedRecord {
    /// The record's token.
    pub token: String,
    /// The field name.
    pub field: String,
    /// The value (`None` for a binary value stored through the embedded crate).
    pub value: Option<Sensitive>,
    /// When the record was created, in milliseconds since the Unix epoch.
    pub created_at: u64,
}

/// One backup, as `POST /v1/admin/backups` and `GET /v1/admin/backups` describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// Its name in the backup directory.
    pub id: String,
    /// When it was taken, in milliseconds since the Unix epoch.
    pub created_at: u64,
    /// Its directory on the server (what `vault-server restore --from` takes).
    pub path: String,
    /// Records stored when it was taken, stubs included (the engine's estimate).
    pub records: u64,
    /// The size of its files, shared table files included.
    pub bytes: u64,
}

/// Answer to `POST /v1/admin/backups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupCreated {
    /// The backup just taken.
    pub backup: Backup,
}

/// Answer to `GET /v1/admin/backups`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backups {
    /// The kept backups, oldest first.
    pub backups: Vec<Backup>,
    /// When the last kept backup that may hold a subject erased since it was taken
    /// is deleted, in milliseconds since the Unix epoch (with `[backup] every_hours`
    /// configured); `null` when none holds one, or without a schedule.
    pub erasures_in_backups_until: Option<u64>,
    /// How many kept backups may hold subjects erased since they were taken (a
    /// restore replays those erasures).
    pub holding_erased: usize,
    /// How many more backups must be taken before none does.
    pub backups_until_clean: usize,
}

/// Answer to `POST /v1/admin/keys/retire`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRetirement {
    /// The KEK versions retired now (gone from the keyring and the header).
    pub retired: Vec<u32>,
    /// The key status after.
    pub keys: KeyStatus,
}

/// Answer to `POST /v1/admin/rotate` and `GET /v1/admin/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// The key-encryption-key version new subject keys are wrapped with.
    pub active_version: u32,
    /// Every KEK version that still exists, with the subject keys it wraps.
    pub versions: Vec<KekVersion>,
    /// Whether a rotation is under way (old versions still wrap subject keys).
    pub rotation_in_progress: bool,
    /// Erasures whose bytes are not purged yet.
    pub pending_purges: usize,
    /// The last error of the background purge/rotation worker, if its last run failed.
    pub background_error: Option<String>,
}

/// One KEK version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KekVersion {
    /// The version number.
    pub version: u32,
    /// Whether new subject keys are wrapped with it.
    pub active: bool,
    /// How many subject keys it wraps.
    pub deks: u64,
}

/// Answer to `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvents {
    /// Events in sequence order.
    pub events: Vec<AuditEventInfo>,
}

/// One audit event. No personal data: the subject is a reference derived from its
/// key, which nothing can link to the subject once it is erased.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEventInfo {
    /// Position in the trail.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at: u64,
    /// The API key's name (or the embedding service's caller id).
    pub actor: String,
    /// `detokenize`, `erase`, …
    pub action: String,
    /// The purpose, if any.
    pub purpose: Option<String>,
    /// `ok`, `forbidden`, `no_consent`, `not_found`, `erased`, `expired`, `integrity`.
    pub outcome: String,
    /// How many records it concerned.
    pub records: u64,
    /// The subject's reference (hex), if it concerned one.
    pub subject: Option<String>,
}

/// Answer to `GET /v1/inventory`: the record of processing (GDPR Art. 30), as
/// of `taken_at`. Counts only: no value, no subject id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// When it was read, in milliseconds since the Unix epoch.
    pub taken_at: u64,
    /// Every field with live records, or named by a purpose or a retention period.
    pub fields: Vec<FieldInventory>,
    /// Live records of every field.
    pub records: u64,
    /// Subjects with at least one live record.
    pub subjects: u64,
    /// Subjects erased, ever.
    pub erased_subjects: u64,
    /// Erasures whose bytes are not purged yet.
    pub pending_purges: usize,
    /// The KEK version new subject keys are wrapped with.
    pub active_kek_version: u32,
    /// Every KEK version that still exists.
    pub kek_versions: Vec<u32>,
    /// The backups; `null` when the vault takes none.
    pub backups: Option<InventoryBackups>,
}

/// One field of an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldInventory {
    /// The field name.
    pub field: String,
    /// Live records.
    pub records: u64,
    /// Subjects with at least one live record of the field.
    pub subjects: u64,
    /// The start (UTC) of the day the oldest live record was created, in
    /// milliseconds since the Unix epoch; `null` without records.
    pub oldest_record_day: Option<u64>,
    /// How long values are kept, in seconds; `null`: until deleted or erased.
    pub retention_seconds: Option<u64>,
    /// The purposes that may read it.
    pub purposes: Vec<FieldPurpose>,
}

/// A purpose that may read a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldPurpose {
    /// The purpose's name.
    pub purpose: String,
    /// Its lawful basis, as in [`PurposeInfo::basis`].
    pub basis: String,
    /// Whether it sees masked values only.
    pub masked: bool,
}

/// The backups of an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryBackups {
    /// Backups kept.
    pub kept: usize,
    /// When the newest was taken, in milliseconds since the Unix epoch.
    pub latest_at: Option<u64>,
    /// How many may hold data of a subject erased (or a record expired) since.
    pub holding_erased: usize,
    /// When the last of those will be deleted, if backups are taken on a schedule.
    pub erasures_in_backups_until: Option<u64>,
}

/// The audit trail's end (`GET /v1/audit/head`): keep it outside the vault, and
/// give it to `POST /v1/audit/verify` later. Both `null` while the trail is empty.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    /// The last event's sequence number.
    pub seq: Option<u64>,
    /// Its chained MAC, 64 hex digits.
    pub mac: Option<String>,
}

/// Body of `POST /v1/audit/verify` (optional: no body checks the trail alone).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// A head taken earlier: the answer says whether the trail still holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_head: Option<ExpectedHead>,
}

/// A head taken earlier with `GET /v1/audit/head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedHead {
    /// Its sequence number.
    #[serde(deserialize_with = "whole::required")]
    pub seq: u64,
    /// Its MAC, 64 hex digits.
    pub mac: String,
}

/// Whole numbers in request bodies. JSON (and the JSON Schema of `/openapi.json`)
/// calls `7.0`, `7e0` and `70e-1` the integer 7, and some encoders write whole
/// numbers that way: they are taken, read from their text exactly (a float would
/// round large ones), while a fraction, a negative number or one out of range is
/// not.
mod whole {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};
    use serde_json::value::RawValue;

    /// The whole number a JSON number's text denotes, if it is one and fits.
    fn parse(text: &str) -> Option<u64> {
        let text = text.trim();
        let (negative, text) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match text.find(['e', 'E']) {
            Some(at) => (&text[..at], text[at + 1..].parse::<i64>().ok()?),
            None => (text, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        // The digits as one integer, times ten to `exponent`.
        let digits = format!("{int}{frac}");
        let exponent = exponent.checked_sub(i64::try_from(frac.len()).ok()?)?;
        let significant = digits.trim_start_matches('0');
        let trimmed = significant.trim_end_matches('0');
        if trimmed.is_empty() {
            return Some(0); // zero, -0 included
        }
        if negative {
            return None;
        }
        let exponent =
            exponent.checked_add(i64::try_from(significant.len() - trimmed.len()).ok()?)?;
        if exponent < 0 || trimmed.len() > 20 {
            return None; // a fraction, or more than any u64
        }
        let mut value: u64 = trimmed.parse().ok()?;
        for _ in 0..exponent {
            value = value.checked_mul(10)?;
        }
        Some(value)
    }

    fn of<'de, D: Deserializer<'de>, T: TryFrom<u64>>(raw: &RawValue) -> Result<T, D::Error> {
        let text = raw.get();
        if !text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
            return Err(D::Error::custom("not a number"));
        }
        parse(text)
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| D::Error::custom("not a whole number in range"))
    }

    pub(super) fn required<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<T, D::Error> {
        of::<D, T>(&Box::<RawValue>::deserialize(d)?)
    }

    pub(super) fn optional<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<Box<RawValue>>::deserialize(d)?
            .map(|raw| of::<D, T>(&raw))
            .transpose()
    }

    #[cfg(test)]
    mod tests {
        use super::super::{ExpectedHead, ExportRequest};

        #[test]
        fn whole_numbers_written_as_floats_are_taken_and_fractions_are_not() {
            let limit = |json: &str| {
                serde_json::from_str::<ExportRequest>(&format!(
                    r#"{{"subject":"s","limit":{json}}}"#
                ))
                .map(|r| r.limit)
                .ok()
            };
            assert_eq!(limit("7"), Some(Some(7)));
            assert_eq!(limit("7.0"), Some(Some(7)));
            assert_eq!(limit("7e0"), Some(Some(7)));
            assert_eq!(limit("null"), Some(None));
            assert_eq!(limit("7.5"), None);
            assert_eq!(limit("-1"), None);
            assert_eq!(limit("4294967296"), None);
            assert_eq!(
                serde_json::from_str::<ExportRequest>(r#"{"subject":"s"}"#)
                    .map(|r| r.limit)
                    .ok(),
                Some(None)
            );
            let seq = |json: &str| {
                serde_json::from_str::<ExpectedHead>(&format!(r#"{{"seq":{json},"mac":""}}"#))
                    .map(|h| h.seq)
                    .ok()
            };
            assert_eq!(seq("18446744073709551615"), Some(u64::MAX));
            assert_eq!(seq("18446744073709551615.000"), Some(u64::MAX));
            assert_eq!(seq("1.8446744073709551615e19"), Some(u64::MAX));
            assert_eq!(seq("18446744073709551616"), None);
            assert_eq!(seq("1.8446744073709552e19"), None);
            assert_eq!(seq("6434034183.0"), Some(6_434_034_183));
            assert_eq!(seq("9007199254740993.0"), Some(9_007_199_254_740_993));
            assert_eq!(seq("1e3"), Some(1000));
            assert_eq!(seq("15E-1"), None);
            assert_eq!(seq("150e-1"), Some(15));
            assert_eq!(seq("0.0e5"), Some(0));
            assert_eq!(seq("-0.0"), Some(0));
            assert_eq!(seq("-1"), None);
            assert_eq!(seq("-0.5"), None);
            assert_eq!(seq("1e999999999999999999999"), None);
            // Trailing zeros moved into an exponent already at its largest.
            assert_eq!(seq("10e9223372036854775807"), None);
            assert_eq!(seq("1.0e-9223372036854775808"), None);
            assert_eq!(seq("\"7\""), None);
            assert_eq!(seq("null"), None);
            assert_eq!(seq("true"), None);
        }
    }
}

/// Answer to `POST /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheck {
    /// Whether the whole trail is intact.
    pub ok: bool,
    /// Events checked.
    pub events: u64,
    /// The first event found altered, removed, inserted or out of order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad: Option<u64>,
    /// What is wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// With an expected head: `contained`, `truncated` (the trail ends before it),
    /// `rolled_back` (the trail holds another event there) or `pruned` (older than
    /// the first event kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
}

/// Every error response: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error: a stable code to branch on and a message for people. Never personal data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: see the README's API section.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The index of the offending item in a batch, when one item was at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_debug_is_redacted() {
        let item = TokenizeItem::new("customer-42", "email", "alice@example.com");
        let debug = format!("{item:?}");
        assert!(!debug.contains("alice"), "{debug}");
        assert!(!debug.contains("customer-42"), "{debug}");
    }

    #[test]
    fn request_bodies_refuse_unknown_fields() {
        let body = r#"{"items":[{"subject":"s","field":"f","value":"v","extra":1}]}"#;
        assert!(serde_json::from_str::<TokenizeRequest>(body).is_err());
        let body = r#"{"tokens":[],"purpose":"p","more":true}"#;
        assert!(serde_json::from_str::<DetokenizeRequest>(body).is_err());
    }

    #[test]
    fn detokenize_results_round_trip() -> Result<(), serde_json::Error> {
        let body = r#"{"results":[{"token":"t1","field":"email","value":"a@b"},{"token":"t2","error":"erased"},{"token":"t3","error":"from_the_future"}]}"#;
        let parsed: DetokenizeResponse = serde_json::from_str(body)?;
        assert!(
            matches!(&parsed.results[0], DetokenizeResult::Value { value, .. } if value.expose() == "a@b")
        );
        assert!(matches!(
            parsed.results[1],
            DetokenizeResult::Error {
                error: ItemError::Erased,
                ..
            }
        ));
        assert!(matches!(
            parsed.results[2],
            DetokenizeResult::Error {
                error: ItemError::Unknown,
                ..
            }
        ));
        Ok(())
    }

    #[test]
    fn purge_states_are_tagged() -> Result<(), serde_json::Error> {
        let text = serde_json::to_string(&Purge::Pending { due_by: 7 })?;
        assert_eq!(text, r#"{"state":"pending","due_by":7}"#);
        let text = serde_json::to_string(&Purge::NotNeeded)?;
        assert_eq!(text, r#"{"state":"not_needed"}"#);
        Ok(())
    }
}
