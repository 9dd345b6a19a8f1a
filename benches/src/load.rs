//! The closed-loop load generator of the HTTPS benchmarks and its statistics:
//! every worker (a connection) sends its next request as soon as the previous
//! answer is in, for a warm-up and then a fixed window.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Throughput and latency of one measurement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Requests answered per second in the window.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Failed requests (warm-up included).
    pub errors: u64,
    /// Requests answered in the window.
    pub requests: u64,
    /// Requests answered, warm-up included (for counters sampled around the whole
    /// measurement).
    pub completed: u64,
}

impl Stats {
    /// The figures as JSON.
    pub fn to_json(self) -> Value {
        json!({"rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors})
    }

    /// The figures as JSON, with what was measured.
    pub fn with_name(self, name: &str) -> Value {
        json!({"name": name, "rps": self.rps, "p50_ms": self.p50_ms, "p99_ms": self.p99_ms, "errors": self.errors})
    }
}

/// Closed loop: every worker sends its next request as soon as the previous answer
/// is in. Requests started in the warm-up are not counted; latency is measured from
/// just before sending (the body is built before) to the end of the answer's body.
pub async fn drive<W, R, M, C, Fut>(
    warmup: Duration,
    window: Duration,
    workers: Vec<W>,
    make: M,
    call: C,
) -> Stats
where
    W: Clone + Send + 'static,
    R: Send + 'static,
    M: Fn(&mut Rng) -> R + Send + Sync + 'static,
    C: Fn(W, R) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    let make = Arc::new(make);
    let call = Arc::new(call);
    let start = Instant::now();
    let t0 = start + warmup;
    let end = t0 + window;
    let seed = SEED.fetch_add(1_000, Ordering::Relaxed);
    let mut handles = Vec::with_capacity(workers.len());
    for (i, worker) in workers.into_iter().enumerate() {
        let make = make.clone();
        let call = call.clone();
        handles.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed + i as u64);
            let mut latencies: Vec<u32> = Vec::with_capacity(16 * 1024);
            let mut errors = 0u64;
            let mut completed = 0u64;
            let mut last = t0;
            loop {
                if Instant::now() >= end {
                    break;
                }
                let request = make(&mut rng);
                let sent = Instant::now();
                let ok = call(worker.clone(), request).await;
                let done = Instant::now();
                if !ok {
                    errors += 1;
                } else {
                    completed += 1;
                    if sent >= t0 {
                        let micros = done.duration_since(sent).as_micros();
                        latencies.push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                }
                if sent >= t0 {
                    last = last.max(done);
                }
            }
            (latencies, errors, completed, last)
        }));
    }
    let mut all: Vec<u32> = Vec::new();
    let mut errors = 0;
    let mut completed = 0;
    let mut last = t0;
    for handle in handles {
        match handle.await {
            Ok((latencies, e, c, l)) => {
                all.extend(latencies);
                errors += e;
                completed += c;
                last = last.max(l);
            }
            Err(_) => errors += 1,
        }
    }
    all.sort_unstable();
    let elapsed = last.duration_since(t0).as_secs_f64().max(1e-9);
    Stats {
        rps: all.len() as f64 / elapsed,
        p50_ms: percentile_ms(&all, 0.50),
        p99_ms: percentile_ms(&all, 0.99),
        errors,
        requests: all.len() as u64,
        completed,
    }
}

static SEED: AtomicU64 = AtomicU64::new(1);

fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    f64::from(sorted[index]) / 1000.0
}

/// The median of some figures (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Now, as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Workload randomness (not cryptographic: choices and test values only), seeded
/// from the clock and a stream number.
#[derive(Debug)]
pub struct Rng(u64);

impl Rng {
    /// A stream distinct from the others started at the same time.
    pub fn new(stream: u64) -> Rng {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut rng = Rng(nanos ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next_u64();
        rng
    }

    /// The next number (splitmix64).
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An index below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// `len` random ASCII letters and digits.
    pub fn alnum(&mut self, len: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        (0..len)
            .map(|_| char::from(CHARS[self.below(CHARS.len())]))
            .collect()
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    /// A client-side token for the PostgreSQL baseline (128 random bits).
    pub fn token(&mut self) -> String {
        format!("tok_{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}
