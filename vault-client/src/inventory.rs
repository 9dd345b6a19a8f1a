//! The inventory as a record of processing activities (GDPR Art. 30) an auditor
//! can read: one table row per category of data (field), then the totals.

use std::fmt::Write as _;

use crate::api::Inventory;

/// The inventory in Markdown.
pub(crate) fn markdown(inventory: &Inventory) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Record of processing activities (GDPR Art. 30)\n");
    let _ = writeln!(
        out,
        "Read from the personal-data vault on {} UTC.\n",
        date_time(inventory.taken_at)
    );
    out.push_str(
        "| Category of data (field) | Records | Data subjects | Oldest record | Retention | Purposes that may read it (lawful basis) |\n",
    );
    out.push_str("|---|---:|---:|---|---|---|\n");
    for f in &inventory.fields {
        let purposes = if f.purposes.is_empty() {
            "none".to_owned()
        } else {
            f.purposes
                .iter()
                .map(|p| {
                    let basis = p.basis.replace('_', " ");
                    if p.masked {
                        format!("{} ({basis}; masked)", p.purpose)
                    } else {
                        format!("{} ({basis})", p.purpose)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} |",
            f.field,
            f.records,
            f.subjects,
            f.oldest_record_day.map_or_else(|| "-".to_owned(), date),
            f.retention_seconds
                .map_or_else(|| "until deleted or erased".to_owned(), period),
            purposes
        );
    }
    let _ = writeln!(out, "\n## Totals\n");
    let _ = writeln!(out, "- Records held: {}", inventory.records);
    let _ = writeln!(out, "- Data subjects with records: {}", inventory.subjects);
    let _ = writeln!(
        out,
        "- Data subjects erased: {} (purges pending: {})",
        inventory.erased_subjects, inventory.pending_purges
    );
    let versions: Vec<String> = inventory.kek_versions.iter().map(u32::to_string).collect();
    let _ = writeln!(
        out,
        "- Key-encryption keys: version {} active; versions held: {}{}",
        inventory.active_kek_version,
        versions.join(", "),
        if inventory.kek_versions.len() > 1 {
            " (a rotation is under way)"
        } else {
            ""
        }
    );
    match &inventory.backups {
        None => {
            let _ = writeln!(out, "- Backups: none taken by the vault");
        }
        Some(b) => {
            let _ = write!(
                out,
                "- Backups: {} kept, newest {}",
                b.kept,
                b.latest_at.map_or_else(|| "-".to_owned(), date)
            );
            if b.holding_erased > 0 {
                let _ = write!(
                    out,
                    "; {} may still hold erased subjects' data{}",
                    b.holding_erased,
                    b.erasures_in_backups_until
                        .map(|at| format!(" until {}", date(at)))
                        .unwrap_or_default()
                );
            }
            out.push('\n');
        }
    }
    out
}

/// A duration in seconds, in the largest whole unit.
fn period(seconds: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400, "day"),
        (3_600, "hour"),
        (60, "minute"),
        (1, "second"),
    ];
    for (size, unit) in UNITS {
        if seconds >= size && seconds.is_multiple_of(size) {
            let n = seconds / size;
            return format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
        }
    }
    "0 seconds".to_owned()
}

/// `YYYY-MM-DD` (UTC) of a time in milliseconds since the Unix epoch.
fn date(millis: u64) -> String {
    let (y, m, d) = civil(millis / 86_400_000);
    format!("{y:04}-{m:02}-{d:02}")
}

fn date_time(millis: u64) -> String {
    let secs = millis / 1000;
    format!(
        "{} {:02}:{:02}",
        date(millis),
        secs / 3600 % 24,
        secs / 60 % 60
    )
}

/// The civil date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{FieldInventory, FieldPurpose};

    #[test]
    fn dates_and_periods_read_as_people_write_them() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(951_782_400_000), "2000-02-29");
        assert_eq!(
            date_time(1_796_515_200_000 + 3_600_000 * 13 + 60_000 * 7),
            "2026-12-06 13:07"
        );
        assert_eq!(period(30 * 86_400), "30 days");
        assert_eq!(period(86_400), "1 day");
        assert_eq!(period(7_200), "2 hours");
        assert_eq!(period(90), "90 seconds");
    }

    #[test]
    fn the_table_has_a_row_per_field_and_the_totals() {
        let inventory = Inventory {
            taken_at: 1_796_515_200_000,
            fields: vec![FieldInventory {
                field: "email".into(),
                records: 12,
                subjects: 10,
                oldest_record_day: Some(1_796_428_800_000),
                retention_seconds: Some(365 * 86_400),
                purposes: vec![FieldPurpose {
                    purpose: "support".into(),
                    basis: "legitimate_interests".into(),
                    masked: true,
                }],
            }],
            records: 12,
            subjects: 10,
            erased_subjects: 3,
            pending_purges: 1,
            active_kek_version: 2,
            kek_versions: vec![1, 2],
            backups: None,
        };
        let text = markdown(&inventory);
        assert!(text.contains(
            "| email | 12 | 10 | 2026-12-05 | 365 days | support (legitimate interests; masked) |"
        ));
        assert!(text.contains("- Data subjects erased: 3 (purges pending: 1)"));
        assert!(text.contains("(a rotation is under way)"));
    }
}
