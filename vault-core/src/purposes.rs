//! Purposes of processing (GDPR Art. 5(1)(b), 6) and masked views.
//!
//! The controller declares its purposes when opening the vault: each has a lawful
//! basis and the fields it may reveal, and may be limited to masked values. Every
//! purpose-bound detokenization ([`Vault::detokenize_for`](crate::Vault::detokenize_for))
//! names one; the vault answers only when the purpose covers the record's field and,
//! where the basis is consent, the subject's consent is currently granted. Masks are
//! applied inside the vault, so a masked caller never receives the full value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::error::Error;

/// The lawful basis of a purpose (GDPR Art. 6(1)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LawfulBasis {
    /// (a) the subject's consent: checked against the consent ledger on every access.
    Consent,
    /// (b) performance of a contract with the subject.
    Contract,
    /// (c) a legal obligation of the controller.
    LegalObligation,
    /// (d) the vital interests of the subject or another person.
    VitalInterests,
    /// (e) a task in the public interest.
    PublicTask,
    /// (f) the controller's legitimate interests.
    LegitimateInterests,
}

impl LawfulBasis {
    /// Every basis.
    pub const ALL: [LawfulBasis; 6] = [
        LawfulBasis::Consent,
        LawfulBasis::Contract,
        LawfulBasis::LegalObligation,
        LawfulBasis::VitalInterests,
        LawfulBasis::PublicTask,
        LawfulBasis::LegitimateInterests,
    ];

    /// The basis's name in configurations: `consent`, `contract`, `legal_obligation`,
    /// `vital_interests`, `public_task`, `legitimate_interests`.
    pub fn name(self) -> &'static str {
        match self {
            LawfulBasis::Consent => "consent",
            LawfulBasis::Contract => "contract",
            LawfulBasis::LegalObligation => "legal_obligation",
            LawfulBasis::VitalInterests => "vital_interests",
            LawfulBasis::PublicTask => "public_task",
            LawfulBasis::LegitimateInterests => "legitimate_interests",
        }
    }

    /// Parses a basis name.
    pub fn parse(name: &str) -> Option<LawfulBasis> {
        LawfulBasis::ALL.into_iter().find(|b| b.name() == name)
    }
}

impl fmt::Display for LawfulBasis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A declared purpose: why a value may be read, under which lawful basis (GDPR
/// Art. 6), which fields it may reveal, and whether only masked.
///
/// Purposes are declared in [`VaultOptions::purpose`](crate::VaultOptions::purpose)
/// at every open (they are not stored); [`Vault::detokenize_for`](crate::Vault::detokenize_for)
/// checks each token against the one named in its [`Access`], and for a consent
/// basis, against the subject's consent at that moment.
///
/// ```
/// use vault_core::{Access, Error, LawfulBasis, Purpose, RootKey, Vault, VaultOptions};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tmp = tempfile::tempdir()?;
/// # let dir = tmp.path().join("vault");
/// let options = VaultOptions::default()
///     .purpose(Purpose::new("newsletter", LawfulBasis::Consent).fields(["email"]));
/// let vault = Vault::open(&dir, &RootKey::generate()?, options)?;
/// let email = vault.tokenize("customer-42", "email", "alice@example.com")?.to_string();
/// let phone = vault.tokenize("customer-42", "phone", "+33 1 23 45 67 89")?.to_string();
///
/// let mailer = Access::new("newsletter", "mailer-service");
/// vault.record_consent("customer-42", "newsletter", true, Some("signup-form"))?;
/// let mut results = vault.detokenize_for(&[&email, &phone], &mailer)?;
/// assert!(matches!(results[1], Err(Error::Forbidden))); // phone is not covered
/// assert_eq!(results.remove(0)?.value.as_str(), Some("alice@example.com"));
///
/// // A withdrawal applies to the very next read.
/// vault.record_consent("customer-42", "newsletter", false, Some("unsubscribe-link"))?;
/// let results = vault.detokenize_for(&[&email], &mailer)?;
/// assert!(matches!(results[0], Err(Error::NoConsent)));
///
/// // A purpose nobody declared is refused as a whole.
/// let unknown = vault.detokenize_for(&[&email], &Access::new("profiling", "ads"));
/// assert!(matches!(unknown, Err(Error::UnknownPurpose)));
/// # vault.close()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purpose {
    name: String,
    basis: LawfulBasis,
    fields: Option<BTreeSet<String>>,
    masked: bool,
}

impl Purpose {
    /// A purpose that may reveal every field, unmasked. Names are 1–64 of
    /// `a-z 0-9 _ - .` (they appear in logs and audit events).
    pub fn new(name: impl Into<String>, basis: LawfulBasis) -> Purpose {
        Purpose {
            name: name.into(),
            basis,
            fields: None,
            masked: false,
        }
    }

    /// Limits the purpose to these fields.
    pub fn fields<I, S>(mut self, fields: I) -> Purpose
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.fields = Some(fields.into_iter().map(Into::into).collect());
        self
    }

    /// Limits the purpose to masked values (see [`Mask`]).
    pub fn masked(mut self, yes: bool) -> Purpose {
        self.masked = yes;
        self
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lawful basis.
    pub fn basis(&self) -> LawfulBasis {
        self.basis
    }

    /// The fields it may reveal; `None` for every field.
    pub fn field_names(&self) -> Option<&BTreeSet<String>> {
        self.fields.as_ref()
    }

    /// Whether it sees masked values only.
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    pub(crate) fn covers(&self, field: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(field))
    }
}

/// How a masked view shows a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mask {
    /// `jane.doe@example.com` → `j***@example.com`.
    Email,
    /// Every digit but the last `keep_last` becomes `*`; separators stay:
    /// `+33 1 23 45 67 89` with 2 → `+** * ** ** ** 89`.
    Phone {
        /// Digits kept at the end.
        keep_last: u8,
    },
    /// `***` followed by the last N characters (all hidden when the value has no
    /// more than 2·N characters).
    KeepLast(u8),
    /// `***`: nothing of the value.
    Hidden,
}

impl Mask {
    /// Parses `email`, `phone:N`, `last:N` or `hidden`.
    pub fn parse(text: &str) -> Option<Mask> {
        let n = |s: &str| s.parse::<u8>().ok().filter(|n| *n <= 16);
        match text.split_once(':') {
            None if text == "email" => Some(Mask::Email),
            None if text == "hidden" => Some(Mask::Hidden),
            Some(("phone", k)) => n(k).map(|keep_last| Mask::Phone { keep_last }),
            Some(("last", k)) => n(k).map(Mask::KeepLast),
            _ => None,
        }
    }

    /// The masked form of `value`.
    pub fn apply(self, value: &str) -> String {
        match self {
            Mask::Email => match value.rsplit_once('@') {
                // The first character of the local part, only when there is more.
                Some((local, domain)) if local.chars().count() >= 2 && !domain.is_empty() => {
                    let first = local.chars().next().map(String::from).unwrap_or_default();
                    format!("{first}***@{domain}")
                }
                Some((_, domain)) if !domain.is_empty() => format!("***@{domain}"),
                _ => "***".to_owned(),
            },
            Mask::Phone { keep_last } => {
                // Every letter or digit (any script) but the last `keep_last` is
                // hidden; a value with too few of them is hidden whole.
                let keep = usize::from(keep_last);
                let total = value.chars().filter(|c| c.is_alphanumeric()).count();
                if total <= 2 * keep {
                    return "***".to_owned();
                }
                let hide = total - keep;
                let mut seen = 0;
                value
                    .chars()
                    .map(|c| {
                        if c.is_alphanumeric() {
                            seen += 1;
                            if seen <= hide { '*' } else { c }
                        } else {
                            c
                        }
                    })
                    .collect()
            }
            Mask::KeepLast(n) => {
                let chars: Vec<char> = value.chars().collect();
                let n = usize::from(n);
                if chars.len() <= 2 * n {
                    "***".to_owned()
                } else {
                    let tail: String = chars[chars.len() - n..].iter().collect();
                    format!("***{tail}")
                }
            }
            Mask::Hidden => "***".to_owned(),
        }
    }
}

/// The declared purposes and the mask of each field.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    purposes: BTreeMap<String, Purpose>,
    masks: BTreeMap<String, Mask>,
    default_mask: Mask,
    /// Retention period per field, in milliseconds.
    retention: BTreeMap<String, u64>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            purposes: BTreeMap::new(),
            masks: BTreeMap::new(),
            default_mask: Mask::Hidden,
            retention: BTreeMap::new(),
        }
    }
}

impl Policy {
    pub(crate) fn add_purpose(&mut self, purpose: Purpose) {
        self.purposes.insert(purpose.name.clone(), purpose);
    }

    pub(crate) fn set_mask(&mut self, field: String, mask: Mask) {
        self.masks.insert(field, mask);
    }

    pub(crate) fn set_default_mask(&mut self, mask: Mask) {
        self.default_mask = mask;
    }

    pub(crate) fn set_retention(&mut self, field: String, millis: u64) {
        self.retention.insert(field, millis);
    }

    /// When a record of `field` created at `created_at` expires, if the field has a
    /// retention period.
    pub(crate) fn expires_at(&self, field: &str, created_at: u64) -> Option<u64> {
        self.retention
            .get(field)
            .map(|period| created_at.saturating_add(*period))
    }

    /// Whether a record of `field` created at `created_at` is past its period at `now`.
    pub(crate) fn expired(&self, field: &str, created_at: u64, now: u64) -> bool {
        self.expires_at(field, created_at)
            .is_some_and(|at| at <= now)
    }

    /// The fields with a retention period.
    pub(crate) fn retained_fields(&self) -> impl Iterator<Item = &str> {
        self.retention.keys().map(String::as_str)
    }

    /// The retention period of `field`, if it has one.
    pub(crate) fn retention_of(&self, field: &str) -> Option<std::time::Duration> {
        self.retention
            .get(field)
            .map(|ms| std::time::Duration::from_millis(*ms))
    }

    pub(crate) fn purpose(&self, name: &str) -> Option<&Purpose> {
        self.purposes.get(name)
    }

    pub(crate) fn purposes(&self) -> impl Iterator<Item = &Purpose> {
        self.purposes.values()
    }

    pub(crate) fn mask_for(&self, field: &str) -> Mask {
        self.masks.get(field).copied().unwrap_or(self.default_mask)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        for purpose in self.purposes.values() {
            if !valid_purpose_name(&purpose.name) {
                return Err(Error::InvalidOption(
                    "a purpose name must be 1-64 of a-z, 0-9, '_', '-', '.'",
                ));
            }
            if purpose.fields.as_ref().is_some_and(BTreeSet::is_empty) {
                return Err(Error::InvalidOption(
                    "a purpose must cover at least one field",
                ));
            }
        }
        Ok(())
    }
}

/// Whether a purpose name is well formed: 1–64 of `a-z 0-9 _ - .`.
pub fn valid_purpose_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

/// Who asks, and why: the context of a purpose-bound detokenization.
#[derive(Debug, Clone, Copy)]
pub struct Access<'a> {
    pub(crate) purpose: &'a str,
    pub(crate) actor: &'a str,
    pub(crate) masked: bool,
}

impl<'a> Access<'a> {
    /// `actor` names the caller (an API key's name, a service); it is recorded in the
    /// audit trail, so it must not be personal data.
    pub fn new(purpose: &'a str, actor: &'a str) -> Access<'a> {
        Access {
            purpose,
            actor,
            masked: false,
        }
    }

    /// The purpose.
    pub fn purpose(&self) -> &str {
        self.purpose
    }

    /// The caller.
    pub fn actor(&self) -> &str {
        self.actor
    }

    /// Masked values only, whatever the purpose allows (e.g. for an API key limited
    /// to masked views).
    pub fn masked(mut self) -> Access<'a> {
        self.masked = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_hide_what_they_should() {
        assert_eq!(
            Mask::Email.apply("jane.doe@example.com"),
            "j***@example.com"
        );
        assert_eq!(Mask::Email.apply("not-an-email"), "***");
        assert_eq!(Mask::Email.apply("@example.com"), "***@example.com");
        assert_eq!(
            Mask::Phone { keep_last: 2 }.apply("+33 1 23 45 67 89"),
            "+** * ** ** ** 89"
        );
        assert_eq!(Mask::Phone { keep_last: 4 }.apply("12"), "***");
        assert_eq!(
            Mask::Phone { keep_last: 2 }.apply("０１２３４５６７"),
            "******６７"
        );
        assert_eq!(
            Mask::Phone { keep_last: 2 }.apply("call me at home"),
            "**** ** ** **me"
        );
        assert_eq!(Mask::Email.apply("j@example.com"), "***@example.com");
        assert_eq!(
            Mask::KeepLast(4).apply("FR7630006000011234567890189"),
            "***0189"
        );
        assert_eq!(Mask::KeepLast(4).apply("1234567"), "***");
        assert_eq!(Mask::Hidden.apply("anything"), "***");
        assert_eq!(Mask::KeepLast(2).apply("Zoë Ångström"), "***öm");
    }

    #[test]
    fn masks_parse() {
        assert_eq!(Mask::parse("email"), Some(Mask::Email));
        assert_eq!(Mask::parse("phone:3"), Some(Mask::Phone { keep_last: 3 }));
        assert_eq!(Mask::parse("last:4"), Some(Mask::KeepLast(4)));
        assert_eq!(Mask::parse("hidden"), Some(Mask::Hidden));
        assert_eq!(Mask::parse("last:99"), None);
        assert_eq!(Mask::parse("last"), None);
        assert_eq!(Mask::parse("rot13"), None);
    }

    #[test]
    fn purposes_cover_their_fields() {
        let p = Purpose::new("billing", LawfulBasis::Contract).fields(["email", "iban"]);
        assert!(p.covers("email") && !p.covers("phone"));
        assert!(Purpose::new("all", LawfulBasis::Contract).covers("phone"));
        assert_eq!(
            LawfulBasis::parse("legitimate_interests"),
            Some(LawfulBasis::LegitimateInterests)
        );
        assert!(
            LawfulBasis::ALL
                .iter()
                .all(|b| LawfulBasis::parse(b.name()) == Some(*b))
        );
    }
}
