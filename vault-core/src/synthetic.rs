//! Synthetic values for a staging vault: every real value is replaced by a fake of
//! the same shape, made under the staging vault's own key. Pure: no storage, no I/O.
//!
//! Invariants: a fake is a function of (key, kind, value) alone, so joins and
//! de-duplication survive, except a date, which also moves by an offset fixed per
//! subject; a fake never equals its input (the one exception: an empty value stays
//! empty, having nothing to hide); no input makes the generator panic.

use std::fmt;
use std::str::FromStr;

use zeroize::Zeroize;

use crate::crypto::Key;

/// `derive_key` contexts of the faker's sub-keys. Changing one changes every fake.
mod label {
    pub const VALUE: &str = "synthetic value v1";
    pub const SUBJECT: &str = "synthetic subject v1";
    pub const DATE_OFFSET: &str = "synthetic date offset v1";
}

/// Domain tag of the keyed stream a value's fake is drawn from.
const VALUE_STREAM: &[u8] = b"pii-vault/synthetic-value/v1";

/// Tries of a generator before falling back to a plainer one. A generator repeats
/// its input only by chance (about 10^-16 after this many tries for one free digit)
/// or when nothing in the input may vary.
const ATTEMPTS: u32 = 16;

/// What kind of fake a field gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FakeKind {
    /// `first.last1234@example.com`, whatever the input's shape.
    Email,
    /// As many words as the input, from embedded name lists, in its letter case.
    Name,
    /// The same digit layout, separators and country code kept.
    Phone,
    /// Same country and spacing, a new BBAN and valid check digits.
    Iban,
    /// The same date format, moved by an offset fixed per subject.
    Date,
    /// A Luhn-valid test card number (`400000…`) of as many digits.
    Card,
    /// Lorem ipsum of the same number of characters.
    Text,
    /// Each letter and digit replaced by a random one of its class.
    Shape,
}

const KINDS: [FakeKind; 8] = [
    FakeKind::Email,
    FakeKind::Name,
    FakeKind::Phone,
    FakeKind::Iban,
    FakeKind::Date,
    FakeKind::Card,
    FakeKind::Text,
    FakeKind::Shape,
];

impl FakeKind {
    /// The kind a field gets by default, by its name (ASCII case-insensitive).
    ///
    /// In this order: `email`/`mail` → Email; `iban` → Iban; `phone`, `mobile`,
    /// `fax`, or a word starting with `tel` → Phone; the word `card` or `pan` →
    /// Card; `birth`, `dob`, `date` → Date; `name` → Name; `note`, `comment`,
    /// `text`, `description`, `message`, `bio` → Text; anything else → Shape.
    /// Words are the parts between `_`, `-`, `.` and camelCase humps.
    pub fn for_field(field: &str) -> FakeKind {
        let lower = field.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
        let words = field_words(field);
        let word = |pred: &dyn Fn(&str) -> bool| words.iter().any(|w| pred(w));
        if has(&["email", "mail"]) {
            FakeKind::Email
        } else if has(&["iban"]) {
            FakeKind::Iban
        } else if has(&["phone", "mobile", "fax"]) || word(&|w| w.starts_with("tel")) {
            // `tel` as a word start: a bare substring would make "hotel" a phone.
            FakeKind::Phone
        } else if word(&|w| w == "card" || w == "pan") {
            FakeKind::Card
        } else if has(&["birth", "dob", "date"]) {
            FakeKind::Date
        } else if has(&["name"]) {
            FakeKind::Name
        } else if has(&["note", "comment", "text", "description", "message", "bio"]) {
            FakeKind::Text
        } else {
            FakeKind::Shape
        }
    }

    /// The lowercase word used in configuration files: `email`, `name`, `phone`,
    /// `iban`, `date`, `card`, `text` or `shape`.
    pub fn as_str(self) -> &'static str {
        match self {
            FakeKind::Email => "email",
            FakeKind::Name => "name",
            FakeKind::Phone => "phone",
            FakeKind::Iban => "iban",
            FakeKind::Date => "date",
            FakeKind::Card => "card",
            FakeKind::Text => "text",
            FakeKind::Shape => "shape",
        }
    }
}

impl FromStr for FakeKind {
    type Err = String;

    /// Exactly one of the words of [`FakeKind::as_str`].
    fn from_str(s: &str) -> Result<FakeKind, String> {
        if let Some(kind) = KINDS.into_iter().find(|k| k.as_str() == s) {
            return Ok(kind);
        }
        // Echo a bounded prefix: the text may come from anywhere.
        let mut shown: String = s.chars().take(40).collect();
        if shown.len() < s.len() {
            shown.push('…');
        }
        let words: Vec<&str> = KINDS.iter().map(|k| k.as_str()).collect();
        Err(format!(
            "unknown fake kind {shown:?}: expected one of {}",
            words.join(", ")
        ))
    }
}

impl fmt::Display for FakeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The lowercase words of a field name: split on `_`, `-`, `.` and before an
/// uppercase letter that follows a lowercase one or a digit.
fn field_words(field: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in field.chars() {
        if matches!(c, '_' | '-' | '.') {
            words.push(std::mem::take(&mut word));
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            words.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_lowercase());
    }
    words.push(word);
    words.retain(|w| !w.is_empty());
    words
}

/// Makes fakes under one secret key (the staging vault's; production never sees it).
pub(crate) struct Faker {
    value_key: Key,
    subject_key: Key,
    date_key: Key,
}

impl fmt::Debug for Faker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Faker([REDACTED])")
    }
}

impl Faker {
    /// A faker whose sub-keys are derived from `key`, one per purpose.
    pub(crate) fn new(key: Key) -> Faker {
        Faker {
            value_key: key.derive(label::VALUE),
            subject_key: key.derive(label::SUBJECT),
            date_key: key.derive(label::DATE_OFFSET),
        }
    }

    /// The fake of `value` for a field of `kind`.
    ///
    /// The same (kind, value) gives the same fake for every subject and call, except
    /// a date, which moves by an offset fixed per `subject` (an opaque per-subject
    /// seed, used for nothing else). Never the input itself, except that an empty
    /// value gives an empty fake. Bytes that are not UTF-8 give random bytes of the
    /// same length.
    pub(crate) fn fake(&self, kind: FakeKind, value: &[u8], subject: &[u8]) -> Vec<u8> {
        if value.is_empty() {
            return Vec::new();
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return self.fake_bytes(kind, value);
        };
        for attempt in 0..ATTEMPTS {
            let mut stream = self.stream(kind, attempt, value);
            let out = match kind {
                FakeKind::Email => email(&mut stream),
                FakeKind::Name => name(&mut stream, text),
                FakeKind::Phone => phone(&mut stream, text),
                FakeKind::Iban => {
                    iban(&mut stream, text).unwrap_or_else(|| shape(&mut stream, text))
                }
                FakeKind::Date => self
                    .date(text, subject)
                    .unwrap_or_else(|| shape(&mut stream, text)),
                FakeKind::Card => {
                    card(&mut stream, text).unwrap_or_else(|| shape(&mut stream, text))
                }
                FakeKind::Text => lorem(&mut stream, text),
                FakeKind::Shape => shape(&mut stream, text),
            };
            if out != text {
                return out.into_bytes();
            }
        }
        // The kind kept everything (a phone that is all country code, say): vary
        // every letter and digit; if nothing varies either, only letters are left.
        for attempt in ATTEMPTS..2 * ATTEMPTS {
            let out = shape(&mut self.stream(kind, attempt, value), text);
            if out != text {
                return out.into_bytes();
            }
        }
        unlike(&mut self.stream(kind, 2 * ATTEMPTS, value), text).into_bytes()
    }

    /// An opaque pseudonymous subject id for the staging vault: `psn_` and 26
    /// lowercase base32 characters of a keyed hash of `seed`.
    pub(crate) fn subject_id(&self, seed: &[u8]) -> String {
        let mac = self.subject_key.mac_parts(&[seed]);
        let mut id = String::with_capacity(4 + SUBJECT_ID_CHARS);
        id.push_str("psn_");
        id.push_str(&base32(&mac, SUBJECT_ID_CHARS));
        id
    }

    fn stream(&self, kind: FakeKind, attempt: u32, value: &[u8]) -> Stream {
        Stream::new(
            &self.value_key,
            &[
                VALUE_STREAM,
                kind.as_str().as_bytes(),
                &attempt.to_le_bytes(),
                value,
            ],
        )
    }

    fn fake_bytes(&self, kind: FakeKind, value: &[u8]) -> Vec<u8> {
        for attempt in 0..ATTEMPTS {
            let mut stream = self.stream(kind, attempt, value);
            let out: Vec<u8> = value.iter().map(|_| stream.byte()).collect();
            if out != value {
                return out;
            }
        }
        // Unreachable in practice; a changed first byte makes sure of it.
        let mut out = value.to_vec();
        if let Some(first) = out.first_mut() {
            *first ^= 1;
        }
        out
    }

    /// The date moved by the subject's offset, in its own format; `None` if `text`
    /// is not a date this recognises.
    fn date(&self, text: &str, subject: &[u8]) -> Option<String> {
        let date = parse_date(text)?;
        let day = days_from_civil(date.year, date.month, date.day) + self.date_offset(subject);
        let (y, m, d) = civil_from_days(day);
        Some(match date.format {
            DateFormat::Iso => format!("{y:04}-{m:02}-{d:02}{}", date.rest),
            DateFormat::Slash => format!("{d:02}/{m:02}/{y:04}"),
            DateFormat::Dot => format!("{d:02}.{m:02}.{y:04}"),
            DateFormat::Compact => format!("{y:04}{m:02}{d:02}"),
        })
    }

    /// Days to move every date of a subject: ±(1..=365), never 0.
    fn date_offset(&self, subject: &[u8]) -> i64 {
        let [b0, b1, b2, b3, sign, ..] = self.date_key.mac_parts(&[subject]);
        let magnitude = i64::from(u32::from_le_bytes([b0, b1, b2, b3]) % 365) + 1;
        if sign & 1 == 0 { magnitude } else { -magnitude }
    }
}

/// A keyed BLAKE3 output stream, read a byte at a time.
struct Stream {
    reader: blake3::OutputReader,
    buf: [u8; 64],
    pos: usize,
}

impl Stream {
    fn new(key: &Key, parts: &[&[u8]]) -> Stream {
        let mut hasher = blake3::Hasher::new_keyed(key.expose());
        for part in parts {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        let reader = hasher.finalize_xof();
        // The keyed state is key material; blake3's Hasher has no Drop.
        hasher.zeroize();
        Stream {
            reader,
            buf: [0; 64],
            pos: 64,
        }
    }

    fn byte(&mut self) -> u8 {
        if self.pos >= self.buf.len() {
            self.reader.fill(&mut self.buf);
            self.pos = 0;
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        b
    }

    /// Uniform in `0..n` (`n` at most 256), by rejection so that no value is favoured.
    fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let n = n.min(256);
        let limit = 256 - 256 % n;
        loop {
            let b = usize::from(self.byte());
            if b < limit {
                return b % n;
            }
        }
    }

    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        list.get(self.below(list.len()))
            .copied()
            .unwrap_or_default()
    }

    fn char_in(&mut self, first: u8, count: u8) -> char {
        let offset = u8::try_from(self.below(usize::from(count))).unwrap_or(0);
        char::from(first + offset)
    }

    fn digit(&mut self) -> char {
        self.char_in(b'0', 10)
    }

    fn lower(&mut self) -> char {
        self.char_in(b'a', 26)
    }

    fn upper(&mut self) -> char {
        self.char_in(b'A', 26)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.reader.zeroize();
        self.buf.zeroize();
    }
}

// --- Email and names ---

#[rustfmt::skip]
const FIRST_NAMES: [&str; 60] = [
    "Alice", "Amara", "Ana", "Aiko", "Ahmed", "Arjun", "Beatriz", "Bjorn", "Carlos", "Chen",
    "Chiara", "Daniel", "Dmitri", "Elena", "Emeka", "Fatima", "Freya", "Gabriel", "Hana", "Hugo",
    "Ines", "Ingrid", "Isaac", "Jamal", "Javier", "Jonas", "Kamala", "Kenji", "Lars", "Leila",
    "Liam", "Lucia", "Malik", "Maria", "Mateo", "Mei", "Nadia", "Nikolai", "Noah", "Olga", "Omar",
    "Priya", "Rafael", "Ravi", "Rosa", "Sakura", "Samir", "Sofia", "Soren", "Tariq", "Thandiwe",
    "Tomas", "Umar", "Valentina", "Wei", "Xavier", "Yara", "Yusuf", "Zainab", "Zoe",
];

#[rustfmt::skip]
const LAST_NAMES: [&str; 60] = [
    "Abara", "Andersen", "Banda", "Bauer", "Bianchi", "Brown", "Costa", "Dlamini", "Dubois",
    "Eriksson", "Fernandez", "Fischer", "Garcia", "Haddad", "Hansen", "Herrera", "Hoffmann",
    "Ibrahim", "Ivanova", "Jansen", "Kaya", "Kim", "Kowalski", "Kumar", "Laine", "Lindqvist",
    "Lopez", "Mensah", "Moreau", "Muller", "Murphy", "Mwangi", "Nakamura", "Nguyen", "Novak",
    "Okafor", "Olsen", "Ortiz", "Patel", "Petrov", "Quispe", "Rahman", "Rossi", "Santos", "Sato",
    "Schmidt", "Silva", "Singh", "Tanaka", "Torres", "Usman", "Varga", "Wagner", "Wang", "Williams",
    "Yamamoto", "Yilmaz", "Zhang", "Zielinski", "Liu",
];

/// Both reserved for documentation (RFC 2606): mail sent to them goes nowhere.
const EMAIL_DOMAINS: [&str; 2] = ["example.com", "example.net"];

fn email(s: &mut Stream) -> String {
    let first = s.pick(&FIRST_NAMES).to_ascii_lowercase();
    let last = s.pick(&LAST_NAMES).to_ascii_lowercase();
    // Six digits: about 7 × 10⁹ addresses, so a million real ones give a handful
    // of fakes in common, not thousands.
    let digits: String = (0..6).map(|_| s.digit()).collect();
    let domain = s.pick(&EMAIL_DOMAINS);
    format!("{first}.{last}{digits}@{domain}")
}

fn name(s: &mut Stream, text: &str) -> String {
    let count = text.split_whitespace().count();
    if count == 0 {
        return shape(s, text);
    }
    let mut words: Vec<&str> = (0..count.saturating_sub(1).max(1))
        .map(|_| s.pick(&FIRST_NAMES))
        .collect();
    if count > 1 {
        words.push(s.pick(&LAST_NAMES));
    }
    let joined = words.join(" ");
    let letters = || text.chars().filter(|c| c.is_alphabetic());
    let has_letters = letters().next().is_some();
    if has_letters && letters().all(char::is_lowercase) {
        joined.to_ascii_lowercase()
    } else if has_letters && letters().all(char::is_uppercase) {
        joined.to_ascii_uppercase()
    } else {
        joined
    }
}

// --- Phone numbers ---

/// E.164 country codes of two digits; "1" and "7" have one, all others three.
const TWO_DIGIT_CODES: &[u16] = &[
    20, 27, 30, 31, 32, 33, 34, 36, 39, 40, 41, 43, 44, 45, 46, 47, 48, 49, 51, 52, 53, 54, 55, 56,
    57, 58, 60, 61, 62, 63, 64, 65, 66, 81, 82, 84, 86, 90, 91, 92, 93, 94, 95, 98,
];

/// The value of an ASCII digit (anything else gives a value above 9).
fn decimal(b: u8) -> u16 {
    u16::from(b.wrapping_sub(b'0'))
}

/// Digits of the country code at the start of `digits`.
fn country_code_len(digits: &[u8]) -> usize {
    match digits {
        [b'1' | b'7', ..] => 1,
        [a, b, ..] if TWO_DIGIT_CODES.contains(&(decimal(*a) * 10 + decimal(*b))) => 2,
        _ => 3,
    }
}

fn phone(s: &mut Stream, text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let start = chars.iter().take_while(|c| c.is_whitespace()).count();
    let rest = chars.get(start..).unwrap_or_default();
    // How many chars, from the start, stay as they are.
    let keep = match rest {
        ['+', ..] => start + 1 + prefix_code_len(&rest[1..]),
        ['0', '0', ..] => start + 2 + prefix_code_len(&rest[2..]),
        ['0', ..] => start + 1,
        _ => 0,
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if i < keep {
                c
            } else if c.is_ascii_digit() {
                s.digit()
            } else if c.is_alphabetic() {
                // Letters in a phone field are free text: they may name someone.
                shape_char(s, c)
            } else {
                c
            }
        })
        .collect()
}

/// The country code's length at the start of `chars`, at most its leading digits.
fn prefix_code_len(chars: &[char]) -> usize {
    let digits: Vec<u8> = chars
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .take(3)
        .filter_map(|&c| u8::try_from(c).ok())
        .collect();
    country_code_len(&digits).min(digits.len())
}

// --- IBANs ---

/// The IBAN without its spaces, if it has the shape: 2 letters, 2 digits, 11 to 30
/// letters and digits.
fn iban_compact(text: &str) -> Option<Vec<u8>> {
    let compact: Vec<u8> = text.bytes().filter(|&b| b != b' ').collect();
    let shaped = (15..=34).contains(&compact.len())
        && compact[..2].iter().all(u8::is_ascii_alphabetic)
        && compact[2..4].iter().all(u8::is_ascii_digit)
        && compact[4..].iter().all(u8::is_ascii_alphanumeric);
    shaped.then_some(compact)
}

/// ISO 7064 mod 97 of the rearranged IBAN (BBAN, then country and check digits),
/// a digit or letter at a time so that no bignum is needed.
fn iban_remainder(compact: &[u8]) -> u32 {
    let (head, bban) = compact.split_at(compact.len().min(4));
    bban.iter().chain(head).fold(0, |r, &b| {
        if b.is_ascii_digit() {
            (r * 10 + u32::from(b - b'0')) % 97
        } else {
            // Letters count A = 10 … Z = 35, two decimal digits.
            let v = u32::from(b.to_ascii_uppercase().wrapping_sub(b'A')) + 10;
            (r * 100 + v) % 97
        }
    })
}

#[cfg(test)]
fn iban_valid(s: &str) -> bool {
    iban_compact(s).is_some_and(|c| iban_remainder(&c) == 1)
}

fn iban(s: &mut Stream, text: &str) -> Option<String> {
    let compact = iban_compact(text)?;
    let mut out: Vec<u8> = Vec::with_capacity(compact.len());
    out.extend_from_slice(&compact[..2]);
    out.extend_from_slice(b"00");
    for &b in &compact[4..] {
        let c = match b {
            b'0'..=b'9' => s.digit(),
            b'a'..=b'z' => s.lower(),
            _ => s.upper(),
        };
        out.push(u8::try_from(c).unwrap_or(b'0'));
    }
    let check = 98 - iban_remainder(&out);
    let [tens, ones] = [check / 10, check % 10].map(|d| b'0' + u8::try_from(d).unwrap_or(0));
    out[2] = tens;
    out[3] = ones;
    let mut next = out.into_iter();
    Some(
        text.bytes()
            .map(|b| {
                if b == b' ' {
                    ' '
                } else {
                    char::from(next.next().unwrap_or(b'0'))
                }
            })
            .collect(),
    )
}

// --- Dates ---

#[derive(Debug, Clone, Copy)]
enum DateFormat {
    /// `YYYY-MM-DD`, maybe followed by `T` and a time.
    Iso,
    /// `DD/MM/YYYY`
    Slash,
    /// `DD.MM.YYYY`
    Dot,
    /// `YYYYMMDD`
    Compact,
}

#[derive(Debug)]
struct ParsedDate<'a> {
    format: DateFormat,
    year: i64,
    month: i64,
    day: i64,
    /// What follows an ISO date (`T…`), kept as it is.
    rest: &'a str,
}

fn parse_date(text: &str) -> Option<ParsedDate<'_>> {
    let b = text.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = b.get(range)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(digits.iter().fold(0, |n, &d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |i: usize, c: u8| b.get(i) == Some(&c);
    // Years whose dates stay four digits after a shift of up to a year.
    let mut years = 1..=9998;
    let (format, year, month, day, rest) = if sep(4, b'-') && sep(7, b'-') {
        let rest = text.get(10..)?;
        if !(rest.is_empty() || rest.starts_with('T')) {
            return None;
        }
        (DateFormat::Iso, num(0..4)?, num(5..7)?, num(8..10)?, rest)
    } else if b.len() == 10 && ((sep(2, b'/') && sep(5, b'/')) || (sep(2, b'.') && sep(5, b'.'))) {
        let format = if b[2] == b'/' {
            DateFormat::Slash
        } else {
            DateFormat::Dot
        };
        (format, num(6..10)?, num(3..5)?, num(0..2)?, "")
    } else if b.len() == 8 {
        // Eight bare digits are a date only if plausibly one.
        years = 1800..=2200;
        (DateFormat::Compact, num(0..4)?, num(4..6)?, num(6..8)?, "")
    } else {
        return None;
    };
    let valid = years.contains(&year)
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day);
    valid.then_some(ParsedDate {
        format,
        year,
        month,
        day,
        rest,
    })
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number, the inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// --- Card numbers ---

/// Visa's test range: no real card starts with it.
const TEST_CARD_PREFIX: &[u8] = b"400000";

fn card(s: &mut Stream, text: &str) -> Option<String> {
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b' ' || b == b'-')
    {
        return None;
    }
    let count = text.bytes().filter(u8::is_ascii_digit).count();
    if !(12..=19).contains(&count) {
        return None;
    }
    let mut digits = TEST_CARD_PREFIX.to_vec();
    while digits.len() < count - 1 {
        digits.push(u8::try_from(s.digit()).unwrap_or(b'0'));
    }
    digits.push(luhn_check_digit(&digits));
    let mut next = digits.into_iter();
    Some(
        text.bytes()
            .map(|b| {
                if b.is_ascii_digit() {
                    char::from(next.next().unwrap_or(b'0'))
                } else {
                    char::from(b)
                }
            })
            .collect(),
    )
}

/// The digit that, appended to `payload`, makes it Luhn-valid.
fn luhn_check_digit(payload: &[u8]) -> u8 {
    let mut digits = payload.to_vec();
    digits.push(b'0');
    crate::alias::luhn_complete(&mut digits, payload.len());
    digits[payload.len()]
}

// --- Free text ---

#[rustfmt::skip]
const LOREM: [&str; 61] = [
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim",
    "ad", "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi",
    "aliquip", "ex", "ea", "commodo", "consequat", "duis", "aute", "irure", "in", "reprehenderit",
    "voluptate", "velit", "esse", "cillum", "eu", "fugiat", "nulla", "pariatur", "excepteur",
    "sint", "occaecat", "cupidatat", "non", "proident", "sunt", "culpa", "qui", "officia",
    "deserunt", "mollit", "anim", "laborum",
];

/// Lorem ipsum of exactly as many chars as `text`: a capital first, a full stop last.
fn lorem(s: &mut Stream, text: &str) -> String {
    let len = text.chars().count();
    if len <= 1 {
        return (0..len).map(|_| s.upper()).collect();
    }
    let body_len = len - 1;
    let mut body = String::with_capacity(len);
    while body.len() < body_len {
        let room = body_len - body.len();
        if body.is_empty() {
            let word = s.pick(&LOREM);
            body.push_str(word.get(..room).unwrap_or(word));
        } else if room == 1 {
            // No room for a space and a word: lengthen the last word instead.
            body.push(s.lower());
        } else {
            let word = s.pick(&LOREM);
            body.push(' ');
            body.push_str(word.get(..room - 1).unwrap_or(word));
        }
    }
    let mut out = String::with_capacity(len);
    let mut chars = body.chars();
    out.extend(chars.next().map(|c| c.to_ascii_uppercase()));
    out.extend(chars);
    out.push('.');
    out
}

// --- Shape ---

fn shape(s: &mut Stream, text: &str) -> String {
    text.chars().map(|c| shape_char(s, c)).collect()
}

/// A random char of `c`'s class; whitespace and ASCII punctuation stay.
fn shape_char(s: &mut Stream, c: char) -> char {
    if c.is_whitespace() || c.is_ascii_punctuation() {
        c
    } else if c.is_ascii_digit() || c.is_numeric() {
        s.digit()
    } else if c.is_uppercase() {
        s.upper()
    } else {
        s.lower()
    }
}

/// Random lowercase letters, the first unlike the input's: the last resort for a
/// value in which nothing may vary.
fn unlike(s: &mut Stream, text: &str) -> String {
    let mut out: Vec<char> = text.chars().map(|_| s.lower()).collect();
    if let (Some(first), Some(orig)) = (out.first_mut(), text.chars().next())
        && *first == orig
    {
        *first = if orig == 'z' {
            'a'
        } else {
            char::from(u8::try_from(orig).unwrap_or(b'a') + 1)
        };
    }
    out.into_iter().collect()
}

// --- Subject ids ---

const SUBJECT_ID_CHARS: usize = 26;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// The first `chars` base32 characters of `bytes` (zero bits past the end).
fn base32(bytes: &[u8], chars: usize) -> String {
    (0..chars)
        .map(|i| {
            let bit = i * 5;
            let hi = bytes.get(bit / 8).copied().unwrap_or(0);
            let lo = bytes.get(bit / 8 + 1).copied().unwrap_or(0);
            let pair = (u16::from(hi) << 8) | u16::from(lo);
            let index = (pair >> (11 - bit % 8)) & 31;
            char::from(BASE32[usize::from(index)])
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn faker(b: u8) -> Faker {
        Faker::new(Key::fill_with(|k| *k = [b; 32]))
    }

    fn fake(f: &Faker, kind: FakeKind, value: &str) -> String {
        String::from_utf8(f.fake(kind, value.as_bytes(), b"subject-1"))
            .expect("utf-8 out of utf-8 in")
    }

    /// Days between two ISO dates.
    fn days_between(a: &str, b: &str) -> i64 {
        let day = |s: &str| {
            let d = parse_date(s).expect("a date");
            days_from_civil(d.year, d.month, d.day)
        };
        day(b) - day(a)
    }

    const SAMPLES: [(FakeKind, &str); 8] = [
        (FakeKind::Email, "alice@corp.example"),
        (FakeKind::Name, "Alice Smith"),
        (FakeKind::Phone, "+44 20 7946 0958"),
        (FakeKind::Iban, "GB82 WEST 1234 5698 7654 32"),
        (FakeKind::Date, "1984-06-01"),
        (FakeKind::Card, "4111 1111 1111 1111"),
        (FakeKind::Text, "Call back after the holidays."),
        (FakeKind::Shape, "AB-123 cd"),
    ];

    #[test]
    fn every_kind_is_deterministic_keyed_and_never_the_input() {
        let (a, b) = (faker(1), faker(2));
        for (kind, value) in SAMPLES {
            let first = fake(&a, kind, value);
            assert_eq!(first, fake(&a, kind, value), "{kind}");
            assert_ne!(first, value, "{kind}");
            assert_ne!(first, fake(&b, kind, value), "{kind} under another key");
            // Only dates depend on the subject.
            let other_subject = a.fake(kind, value.as_bytes(), b"subject-2");
            assert_eq!(
                first.as_bytes() == other_subject,
                kind != FakeKind::Date,
                "{kind}"
            );
        }
    }

    #[test]
    fn empty_stays_empty_and_bare_punctuation_still_changes() {
        let f = faker(1);
        for kind in KINDS {
            assert!(f.fake(kind, b"", b"s").is_empty());
            for value in ["-", " ", "+44", "00", "()-.", "0"] {
                let out = fake(&f, kind, value);
                assert_ne!(out, value, "{kind} {value:?}");
                if !matches!(kind, FakeKind::Email | FakeKind::Name) {
                    assert_eq!(out.chars().count(), value.chars().count(), "{kind}");
                }
            }
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_give_random_bytes_of_the_same_length() {
        let f = faker(1);
        for kind in KINDS {
            let value = [0xff, 0xfe, b'a', 0x80];
            let out = f.fake(kind, &value, b"s");
            assert_eq!(out.len(), value.len());
            assert_ne!(out, value);
            assert_eq!(out, f.fake(kind, &value, b"t"));
        }
    }

    #[test]
    fn email_has_the_documented_shape() {
        let f = faker(3);
        for i in 0..200 {
            let out = fake(&f, FakeKind::Email, &format!("user{i}@corp.example"));
            let (local, domain) = out.split_once('@').expect("an @");
            assert!(domain == "example.com" || domain == "example.net", "{out}");
            let (first, rest) = local.split_once('.').expect("a dot");
            assert!(
                !first.is_empty() && first.bytes().all(|b| b.is_ascii_lowercase()),
                "{out}"
            );
            let (last, digits) = rest.split_at(rest.len() - 6);
            assert!(
                !last.is_empty() && last.bytes().all(|b| b.is_ascii_lowercase()),
                "{out}"
            );
            assert!(digits.bytes().all(|b| b.is_ascii_digit()), "{out}");
        }
    }

    #[test]
    fn names_keep_word_count_and_case() {
        let f = faker(1);
        let upper = fake(&f, FakeKind::Name, "ALICE SMITH");
        assert_eq!(upper.split_whitespace().count(), 2);
        assert_eq!(upper, upper.to_ascii_uppercase());
        let lower = fake(&f, FakeKind::Name, "alice van der berg");
        assert_eq!(lower.split_whitespace().count(), 4);
        assert_eq!(lower, lower.to_ascii_lowercase());
        let title = fake(&f, FakeKind::Name, "mcDonald");
        assert_eq!(title.split_whitespace().count(), 1);
        assert!(FIRST_NAMES.contains(&title.as_str()), "{title}");
        let two = fake(&f, FakeKind::Name, "Jean-Luc Picard");
        let words: Vec<&str> = two.split_whitespace().collect();
        assert!(
            FIRST_NAMES.contains(&words[0]) && LAST_NAMES.contains(&words[1]),
            "{two}"
        );
    }

    #[test]
    fn name_lists_are_plain_ascii_letters() {
        for n in FIRST_NAMES.iter().chain(&LAST_NAMES) {
            assert!(n.bytes().all(|b| b.is_ascii_alphabetic()), "{n}");
        }
        assert!(
            LOREM
                .iter()
                .all(|w| w.bytes().all(|b| b.is_ascii_lowercase()))
        );
    }

    fn assert_phone(out: &str, input: &str, kept: &str) {
        assert_eq!(out.len(), input.len(), "{input} -> {out}");
        assert!(out.starts_with(kept), "{input} -> {out}");
        for (o, i) in out.chars().zip(input.chars()) {
            assert_eq!(o.is_ascii_digit(), i.is_ascii_digit(), "{input} -> {out}");
            if !i.is_ascii_digit() {
                assert_eq!(o, i, "{input} -> {out}");
            }
        }
    }

    #[test]
    fn phones_keep_layout_and_country_code() {
        let f = faker(1);
        for (input, kept) in [
            ("+44 20 7946 0958", "+44 "),
            ("+1 (555) 010-0199", "+1 ("),
            ("+7 495 123-45-67", "+7 "),
            ("+358 40 123 4567", "+358 "),
            ("0044 20 7946 0958", "0044 "),
            ("00358401234567", "00358"),
            ("020 7946 0958", "0"),
            ("555.010.0199", ""),
        ] {
            assert_phone(&fake(&f, FakeKind::Phone, input), input, kept);
        }
        assert_eq!(country_code_len(b"4420"), 2);
        assert_eq!(country_code_len(b"3584"), 3);
        assert_eq!(country_code_len(b"12"), 1);
        assert_eq!(country_code_len(b"x"), 3);
    }

    #[test]
    fn ibans_get_valid_check_digits_and_keep_country_and_spacing() {
        let f = faker(1);
        for input in [
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
            "NL91 ABNA 0417 1643 00",
            "CH9300762011623852957",
        ] {
            assert!(iban_valid(input), "{input} is a valid example");
            let out = fake(&f, FakeKind::Iban, input);
            assert!(iban_valid(&out), "{input} -> {out}");
            assert_eq!(out.len(), input.len());
            assert_eq!(out[..2], input[..2]);
            for (o, i) in out.bytes().zip(input.bytes()).skip(4) {
                assert_eq!(o == b' ', i == b' ', "{out}");
                assert_eq!(o.is_ascii_digit(), i.is_ascii_digit(), "{input} -> {out}");
            }
        }
        assert!(!iban_valid("GB83 WEST 1234 5698 7654 32"));
        assert!(!iban_valid("GB82"));
        // Not an IBAN's shape: a shape fake.
        let out = fake(&f, FakeKind::Iban, "GB8X-123");
        assert_eq!(out.len(), 8);
        assert_eq!(&out[4..5], "-");
    }

    #[test]
    fn dates_move_by_one_offset_per_subject() {
        let f = faker(1);
        let subject = b"subject-1";
        let offset = f.date_offset(subject);
        assert!(offset != 0 && offset.abs() <= 365);
        let iso = fake(&f, FakeKind::Date, "2024-02-29");
        assert_eq!(days_between("2024-02-29", &iso), offset);
        let other = fake(&f, FakeKind::Date, "1970-01-01T12:30:00Z");
        assert!(other.ends_with("T12:30:00Z"), "{other}");
        assert_eq!(days_between("1970-01-01", &other[..10]), offset);

        let slash = fake(&f, FakeKind::Date, "29/02/2024");
        let dot = fake(&f, FakeKind::Date, "29.02.2024");
        let compact = fake(&f, FakeKind::Date, "20240229");
        let (d, m, y) = (&iso[8..10], &iso[5..7], &iso[..4]);
        assert_eq!(slash, format!("{d}/{m}/{y}"));
        assert_eq!(dot, format!("{d}.{m}.{y}"));
        assert_eq!(compact, format!("{y}{m}{d}"));
        for out in [&slash, &dot, &compact] {
            assert!(parse_date(out).is_some(), "{out}");
        }
        // Offsets differ between subjects (for these two), and never vanish.
        assert_ne!(f.date_offset(b"subject-2"), offset);
        for i in 0..500u32 {
            let o = f.date_offset(&i.to_le_bytes());
            assert!(o != 0 && (-365..=365).contains(&o));
        }
    }

    #[test]
    fn invalid_dates_get_a_shape() {
        let f = faker(1);
        for input in [
            "2024-02-30",
            "2023-02-29",
            "31/04/2024",
            "17000101",
            "2024-13-01",
            "2024-01-01 12:00",
        ] {
            assert!(parse_date(input).is_none(), "{input}");
            let out = fake(&f, FakeKind::Date, input);
            assert_eq!(out.len(), input.len());
            assert_eq!(
                out.bytes().filter(u8::is_ascii_digit).count(),
                input.bytes().filter(u8::is_ascii_digit).count()
            );
        }
    }

    #[test]
    fn civil_day_numbers_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for day in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(day);
            assert!((1..=12).contains(&m) && (1..=days_in_month(y, m)).contains(&d));
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }

    #[test]
    fn cards_are_luhn_valid_test_numbers() {
        let f = faker(1);
        for input in [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011000990139424123",
            "123456789012",
        ] {
            let out = fake(&f, FakeKind::Card, input);
            let digits: String = out.chars().filter(char::is_ascii_digit).collect();
            assert!(crate::alias::luhn_valid(&digits), "{out}");
            assert!(digits.starts_with("400000"), "{out}");
            assert_eq!(out.len(), input.len());
            for (o, i) in out.bytes().zip(input.bytes()) {
                assert_eq!(o.is_ascii_digit(), i.is_ascii_digit(), "{out}");
            }
        }
        assert!(crate::alias::luhn_valid("4111111111111111"));
        assert!(!crate::alias::luhn_valid("4111111111111112"));
        assert!(!crate::alias::luhn_valid(""));
        assert!(!crate::alias::luhn_valid("41x1"));
        // Too short for a card: a shape fake.
        assert_eq!(fake(&f, FakeKind::Card, "1234-5678").len(), 9);
    }

    #[test]
    fn text_keeps_its_length() {
        let f = faker(1);
        for input in [
            "x",
            "ok",
            "Ça va?",
            "Call back after the holidays.",
            &"é".repeat(300),
        ] {
            let out = fake(&f, FakeKind::Text, input);
            assert_eq!(out.chars().count(), input.chars().count(), "{out}");
            assert!(out.starts_with(|c: char| c.is_ascii_uppercase()), "{out}");
            assert!(!out.contains("  ") && !out.contains(" ."), "{out}");
        }
        assert!(fake(&f, FakeKind::Text, "Call back after the holidays.").ends_with('.'));
    }

    #[test]
    fn shapes_keep_classes() {
        let f = faker(1);
        let out = fake(&f, FakeKind::Shape, "Ab-12 ÉéΩ日 x");
        let classes = |s: &str| -> Vec<u8> {
            s.chars()
                .map(|c| match c {
                    'A'..='Z' => 0,
                    'a'..='z' => 1,
                    '0'..='9' => 2,
                    ' ' | '-' => 3,
                    _ => 4,
                })
                .collect()
        };
        assert_eq!(classes(&out), [0, 1, 3, 2, 2, 3, 0, 1, 0, 1, 3, 1]);
    }

    #[test]
    fn subject_ids_are_stable_and_opaque() {
        let f = faker(1);
        let id = f.subject_id(b"customer-42");
        assert_eq!(id.len(), 30);
        assert!(id.starts_with("psn_"));
        assert!(id[4..].bytes().all(|b| BASE32.contains(&b)));
        assert_eq!(id, f.subject_id(b"customer-42"));
        assert_ne!(id, f.subject_id(b"customer-43"));
        assert_ne!(id, faker(2).subject_id(b"customer-42"));
        // RFC 4648's vectors, lowercase and unpadded.
        assert_eq!(base32(b"fo", 4), "mzxq");
        assert_eq!(base32(b"foobar", 10), "mzxw6ytboi");
    }

    #[test]
    fn field_names_pick_kinds() {
        for (field, kind) in [
            ("email", FakeKind::Email),
            ("billing_email", FakeKind::Email),
            ("email_name", FakeKind::Email),
            ("full_name", FakeKind::Name),
            ("phone", FakeKind::Phone),
            ("Mobile-Number", FakeKind::Phone),
            ("tel", FakeKind::Phone),
            ("hotel_name", FakeKind::Name),
            ("iban", FakeKind::Iban),
            ("date_of_birth", FakeKind::Date),
            ("DOB", FakeKind::Date),
            ("card_number", FakeKind::Card),
            ("cardNumber", FakeKind::Card),
            ("pan", FakeKind::Card),
            ("company", FakeKind::Shape),
            ("notes", FakeKind::Text),
            ("ssn", FakeKind::Shape),
        ] {
            assert_eq!(FakeKind::for_field(field), kind, "{field}");
        }
    }

    #[test]
    fn kinds_parse_from_their_words() {
        for kind in KINDS {
            assert_eq!(kind.as_str().parse::<FakeKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let long = "x".repeat(100);
        let err = long.parse::<FakeKind>().expect_err("not a kind");
        assert!(
            err.contains("email, name, phone, iban, date, card, text, shape"),
            "{err}"
        );
        assert!(!err.contains(&"x".repeat(41)), "{err}");
        assert!("Email".parse::<FakeKind>().is_err());
    }

    #[test]
    fn debug_hides_the_key() {
        assert_eq!(format!("{:?}", faker(1)), "Faker([REDACTED])");
    }

    fn any_kind() -> impl Strategy<Value = FakeKind> {
        proptest::sample::select(KINDS.to_vec())
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_stable_different_fake(
            kind in any_kind(),
            value in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let f = faker(7);
            let out = f.fake(kind, &value, b"s");
            prop_assert_eq!(&out, &f.fake(kind, &value, b"s"));
            prop_assert_eq!(out == value, value.is_empty());
        }

        #[test]
        fn any_text_gives_a_stable_different_fake(kind in any_kind(), value in any::<String>()) {
            let f = faker(7);
            let out = f.fake(kind, value.as_bytes(), b"s");
            prop_assert_eq!(&out, &f.fake(kind, value.as_bytes(), b"s"));
            prop_assert_eq!(out == value.as_bytes(), value.is_empty());
            let out = String::from_utf8(out).expect("utf-8 in, utf-8 out");
            if kind != FakeKind::Email && kind != FakeKind::Name && kind != FakeKind::Date {
                prop_assert_eq!(out.chars().count(), value.chars().count());
            }
        }

        #[test]
        // Six digits at the end: at least three of them are not a country code.
        fn phone_like_text_keeps_its_layout(value in "[+]?[0-9 ()\\-.]{0,12}[0-9]{6}") {
            let out = fake(&faker(7), FakeKind::Phone, &value);
            assert_phone(&out, &value, "");
        }

        #[test]
        fn valid_dates_shift_within_a_year(days in -60_000i64..90_000, subject in any::<Vec<u8>>()) {
            let f = faker(7);
            let (y, m, d) = civil_from_days(days);
            let iso = format!("{y:04}-{m:02}-{d:02}");
            let out = String::from_utf8(f.fake(FakeKind::Date, iso.as_bytes(), &subject))
                .expect("ascii");
            prop_assert_eq!(days_between(&iso, &out), f.date_offset(&subject));
        }

        #[test]
        fn card_like_digits_give_valid_cards(digits in "[0-9]{12,19}") {
            let out = fake(&faker(7), FakeKind::Card, &digits);
            prop_assert!(crate::alias::luhn_valid(&out) && out.starts_with("400000") && out.len() == digits.len());
        }
    }
}
