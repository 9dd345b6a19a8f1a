//! The access log: one JSON line per request on stderr, written off the request's path.
//!
//! A request's line used to go through `tracing`'s JSON layer, formatted and written
//! to stderr by the request's own task: under HTTPS detokenize load that was a tenth
//! of the server's CPU (benches/NOTES.md). Its fields are few and fixed, so the line
//! is written by hand here, in the shape the JSON layer gives every other event
//! (`timestamp`, `level`, `fields`, `target`), into a shared buffer. A thread of its
//! own writes the buffer out [`INTERVAL`] after its first line, or as soon as it
//! holds [`EAGER`] bytes: a request pays for formatting into memory, the `write`s
//! are few and large, and an idle server's writer sleeps. A buffer that reaches [`CAP`] (stderr blocked) is written out by the
//! request that filled it, so a stuck reader slows requests down, as a direct write
//! did, instead of growing memory.
//!
//! The line is enabled and filtered like any `tracing` event of the target
//! `vault_server::api` at level INFO (`RUST_LOG`). At shutdown [`flush`] writes what
//! is left; a process killed with SIGKILL loses what is buffered: the last
//! [`INTERVAL`] of lines, or up to [`CAP`] bytes of them while stderr is slow.
//! The line holds no personal data: route templates, never paths; the API key's
//! configured name, never the key.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a line may wait in the buffer.
pub(crate) const INTERVAL: Duration = Duration::from_millis(20);
/// A buffer this full is written out at once.
const EAGER: usize = 64 << 10;
/// A buffer this full is written out by the request that filled it.
const CAP: usize = 4 << 20;

/// One request, as the access log gives it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLine<'a> {
    pub request_id: &'a str,
    /// The client's address (`-` when unknown, e.g. in tests without a socket).
    pub client: Option<std::net::IpAddr>,
    pub method: &'static str,
    pub route: &'static str,
    pub status: u16,
    /// The name of the API key (`-` when there was none).
    pub key: &'a str,
    /// The purpose of a detokenization (`-` otherwise).
    pub purpose: &'a str,
    /// The error code (`-` when none).
    pub error: &'a str,
    pub latency_us: u64,
}

/// Lines waiting for the writer, and where they go.
pub(crate) struct AccessLog {
    pending: Mutex<Vec<u8>>,
    /// Wakes the writer: the buffer has its first line, or [`EAGER`] bytes.
    wake: Condvar,
    /// Held while writing, so lines leave in the order they were logged.
    out: Mutex<Out>,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AccessLog {
    /// A log writing to `sink`, with its writer thread running.
    pub(crate) fn start(sink: Box<dyn Write + Send>) -> std::io::Result<&'static AccessLog> {
        let log: &'static AccessLog = Box::leak(Box::new(AccessLog {
            pending: Mutex::new(Vec::with_capacity(EAGER)),
            wake: Condvar::new(),
            out: Mutex::new(Out {
                sink,
                batch: Vec::with_capacity(EAGER),
                cut: false,
            }),
        }));
        std::thread::Builder::new()
            .name("vault-access-log".into())
            .spawn(move || {
                loop {
                    {
                        // Asleep while there is nothing to write; then the lines of
                        // an interval, or fewer if they fill the buffer first.
                        let pending = lock(&log.pending);
                        let pending = log
                            .wake
                            .wait_while(pending, |p| p.is_empty())
                            .unwrap_or_else(PoisonError::into_inner);
                        let _woken = log
                            .wake
                            .wait_timeout_while(pending, INTERVAL, |p| p.len() < EAGER)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                    log.flush();
                }
            })?;
        Ok(log)
    }

    /// Appends one request's line.
    pub(crate) fn log(&self, line: &RequestLine<'_>) {
        let mut pending = lock(&self.pending);
        let before = pending.len();
        write_line(&mut pending, SystemTime::now(), line);
        let after = pending.len();
        drop(pending);
        if after >= CAP {
            self.flush();
        } else if before == 0 || (before < EAGER && after >= EAGER) {
            self.wake.notify_one();
        }
    }

    /// Writes out every line logged so far.
    pub(crate) fn flush(&self) {
        let mut out = lock(&self.out);
        let Out { sink, batch, cut } = &mut *out;
        std::mem::swap(&mut *lock(&self.pending), batch);
        if batch.is_empty() {
            return;
        }
        // A write that failed part-way left a line cut short: end it, so that the
        // next line starts on a line of its own.
        if *cut {
            batch.insert(0, b'\n');
        }
        // Nowhere to report a failed write of the log itself: its lines are lost,
        // and the next batch is tried.
        *cut = sink.write_all(batch).and_then(|()| sink.flush()).is_err();
        batch.clear();
    }
}

/// Where the lines go.
struct Out {
    sink: Box<dyn Write + Send>,
    /// The buffer swapped with `pending` on each write.
    batch: Vec<u8>,
    /// The last write failed, maybe in the middle of a line.
    cut: bool,
}

/// The server's access log, on stderr: started at its first line.
static LOG: OnceLock<Option<&'static AccessLog>> = OnceLock::new();

fn global() -> Option<&'static AccessLog> {
    *LOG.get_or_init(|| match AccessLog::start(Box::new(std::io::stderr())) {
        Ok(log) => Some(log),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the access log's writer; requests are not logged");
            None
        }
    })
}

/// Logs one request, if the filter (`RUST_LOG`) lets INFO events of the API through.
pub(crate) fn request(line: &RequestLine<'_>) {
    if tracing::enabled!(target: "vault_server::api", tracing::Level::INFO)
        && let Some(log) = global()
    {
        log.log(line);
    }
}

/// Writes out the lines still buffered (at shutdown). A log nobody wrote to is not
/// started by it.
pub fn flush() {
    if let Some(Some(log)) = LOG.get() {
        log.flush();
    }
}

/// Appends `line` as one JSON line, in the shape of the `tracing` JSON layer's events.
fn write_line(out: &mut Vec<u8>, now: SystemTime, line: &RequestLine<'_>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    write_timestamp(out, now);
    out.extend_from_slice(
        b"\",\"level\":\"INFO\",\"fields\":{\"message\":\"request\",\"request_id\":",
    );
    write_str(out, line.request_id);
    write_name(out, "client");
    match line.client {
        Some(ip) => {
            use std::io::Write as _;
            out.push(b'"');
            let _ = write!(out, "{ip}");
            out.push(b'"');
        }
        None => write_str(out, "-"),
    }
    for (name, value) in [("method", line.method), ("route", line.route)] {
        write_name(out, name);
        write_str(out, value);
    }
    write_name(out, "status");
    write_u64(out, u64::from(line.status));
    for (name, value) in [
        ("key", line.key),
        ("purpose", line.purpose),
        ("error", line.error),
    ] {
        write_name(out, name);
        write_str(out, value);
    }
    write_name(out, "latency_us");
    write_u64(out, line.latency_us);
    out.extend_from_slice(b"},\"target\":\"vault_server::api\"}\n");
}

/// `,"name":` before a field's value (names are plain ASCII, never escaped).
fn write_name(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string: quotes, backslashes and control characters escaped.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => &[],
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_u64(out: &mut Vec<u8>, n: u64) {
    write_padded(out, n, 1);
}

/// Appends `n` with at least `width` digits (at most 20).
fn write_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut n = n;
    while n > 0 {
        i -= 1;
        // n % 10 < 10: the cast keeps every bit.
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&digits[i.min(digits.len() - width.min(digits.len()))..]);
}

/// RFC 3339 in UTC with microseconds, `2026-11-27T18:04:31.212955Z`, as the JSON
/// layer writes it.
fn write_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let in_day = secs % 86_400;
    write_padded(out, year, 4);
    out.push(b'-');
    write_padded(out, month, 2);
    out.push(b'-');
    write_padded(out, day, 2);
    out.push(b'T');
    write_padded(out, in_day / 3600, 2);
    out.push(b':');
    write_padded(out, in_day / 60 % 60, 2);
    out.push(b':');
    write_padded(out, in_day % 60, 2);
    out.push(b'.');
    write_padded(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
}

/// The proleptic Gregorian date (year, month, day) of a day counted from 1970-01-01,
/// by eras of 400 years (146 097 days), each starting on 1 March so that the leap
/// day ends its year.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // 1970-01-01 is day 719 468 from 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A sink the test can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(lock(&self.0).clone()).expect("UTF-8");
            text.lines()
                .map(|l| serde_json::from_str(l).expect("every line is JSON"))
                .collect()
        }
    }

    fn line<'a>(request_id: &'a str, key: &'a str, purpose: &'a str) -> RequestLine<'a> {
        RequestLine {
            request_id,
            client: Some(std::net::IpAddr::from([192, 0, 2, 7])),
            method: "POST",
            route: "/v1/detokenize",
            status: 403,
            key,
            purpose,
            error: "purpose_not_allowed",
            latency_us: 1234,
        }
    }

    #[test]
    fn a_line_is_the_json_layers_shape_with_its_strings_escaped() -> TestResult {
        let key = "ops \"blue\" \\ team\n\t\u{1}é";
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::new(1_795_889_071, 212_955_123);
        write_line(&mut out, at, &line("2257cb3e22a035d5", key, "support"));
        let text = String::from_utf8(out)?;
        assert!(
            text.ends_with("}\n") && text.matches('\n').count() == 1,
            "{text}"
        );
        let value: serde_json::Value = serde_json::from_str(&text)?;
        assert_eq!(
            value,
            serde_json::json!({
                "timestamp": "2026-11-28T18:04:31.212955Z",
                "level": "INFO",
                "fields": {
                    "message": "request",
                    "request_id": "2257cb3e22a035d5",
                    "client": "192.0.2.7",
                    "method": "POST",
                    "route": "/v1/detokenize",
                    "status": 403,
                    "key": key,
                    "purpose": "support",
                    "error": "purpose_not_allowed",
                    "latency_us": 1234,
                },
                "target": "vault_server::api",
            })
        );
        let mut out = Vec::new();
        write_line(
            &mut out,
            at,
            &RequestLine {
                latency_us: u64::MAX,
                status: 0,
                ..line("-", "-", "-")
            },
        );
        let value: serde_json::Value = serde_json::from_slice(&out)?;
        assert_eq!(value["fields"]["latency_us"], u64::MAX);
        assert_eq!(value["fields"]["status"], 0);
        Ok(())
    }

    #[test]
    fn dates_agree_with_counting_days_one_by_one() {
        let (mut year, mut month, mut day) = (1970, 1, 1);
        // Through 2500: leap years by 4, not by 100, again by 400 (2000, 2400).
        for days in 0..193_000 {
            assert_eq!(civil_from_days(days), (year, month, day), "day {days}");
            let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
            let length = match month {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            day += 1;
            if day > length {
                day = 1;
                month += 1;
                if month > 12 {
                    month = 1;
                    year += 1;
                }
            }
        }
        let mut out = Vec::new();
        write_timestamp(&mut out, UNIX_EPOCH);
        assert_eq!(out, b"1970-01-01T00:00:00.000000Z");
        out.clear();
        write_timestamp(
            &mut out,
            UNIX_EPOCH + Duration::new(951_868_799, 999_999_000),
        );
        assert_eq!(out, b"2000-02-29T23:59:59.999999Z");
    }

    #[test]
    fn the_writer_writes_every_line_in_order_without_a_flush() -> TestResult {
        let sink = Shared::default();
        let log = AccessLog::start(Box::new(sink.clone()))?;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..500 {
                        log.log(&line(&format!("{t}-{i}"), "k", "-"));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().map_err(|_| "a logging thread panicked")?;
        }
        // No flush: the writer thread writes within its interval.
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.lines().len() < 2000 && Instant::now() < deadline {
            std::thread::sleep(INTERVAL);
        }
        let lines = sink.lines();
        assert_eq!(lines.len(), 2000);
        let mut next = [0; 4];
        for value in &lines {
            let id = value["fields"]["request_id"]
                .as_str()
                .ok_or("no request id")?;
            let (t, i) = id.split_once('-').ok_or("not t-i")?;
            let t: usize = t.parse()?;
            assert_eq!(i.parse::<usize>()?, next[t], "thread {t}'s lines in order");
            next[t] += 1;
        }
        Ok(())
    }

    #[test]
    fn a_flush_writes_what_is_buffered_at_once() -> TestResult {
        let sink = Shared::default();
        let log = AccessLog::start(Box::new(sink.clone()))?;
        // Let the writer start its wait, so the lines below sit in the buffer.
        std::thread::sleep(INTERVAL / 4);
        log.log(&line("a", "k", "-"));
        log.log(&line("b", "k", "-"));
        log.flush();
        let ids: Vec<_> = sink
            .lines()
            .iter()
            .map(|v| v["fields"]["request_id"].clone())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        Ok(())
    }

    /// Writes part of its first batch, then fails; takes everything after.
    struct FailsOnce {
        written: Shared,
        failed: bool,
    }

    impl Write for FailsOnce {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.failed {
                self.failed = true;
                self.written.write(&buf[..buf.len() / 2])?;
                return Err(std::io::Error::other("disk full"));
            }
            self.written.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_line_cut_by_a_failed_write_does_not_swallow_the_next() -> TestResult {
        let written = Shared::default();
        let log = AccessLog::start(Box::new(FailsOnce {
            written: written.clone(),
            failed: false,
        }))?;
        log.log(&line("lost", "k", "-"));
        log.flush();
        log.log(&line("kept", "k", "-"));
        log.flush();
        let text = String::from_utf8(lock(&written.0).clone())?;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(serde_json::from_str::<serde_json::Value>(lines[0]).is_err());
        let kept: serde_json::Value = serde_json::from_str(lines[1])?;
        assert_eq!(kept["fields"]["request_id"], "kept");
        Ok(())
    }

    #[test]
    fn a_full_buffer_is_written_by_the_request_that_filled_it() -> TestResult {
        let sink = Shared::default();
        let log = AccessLog::start(Box::new(sink.clone()))?;
        // Hold the sink: the writer thread's next write waits, and the buffer fills.
        let waiting = lock(&sink.0);
        // Once the writer thread has taken this line it is stuck writing it, holding
        // the output: the lines below stay pending. (Filling first could let it take
        // the full buffer late, under load, and the lines past the cap find it empty.)
        log.log(&line("first", "k", "-"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !lock(&log.pending).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer thread never took the first line"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut before = 1;
        let filler = "x".repeat(1000);
        while lock(&log.pending).len() + 2000 < CAP {
            log.log(&line("f", &filler, "-"));
            before += 1;
        }
        let writer = std::thread::spawn(move || {
            // This line takes the buffer past CAP: its request writes it out itself,
            // and so waits for the sink.
            for _ in 0..4 {
                log.log(&line("f", &"x".repeat(1000), "-"));
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !writer.is_finished(),
            "a request past the cap waits for the sink"
        );
        drop(waiting);
        writer.join().map_err(|_| "the logging thread panicked")?;
        log.flush();
        assert_eq!(sink.lines().len(), before + 4);
        Ok(())
    }
}
