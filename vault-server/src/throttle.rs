//! Rate limits: per API key (`rate_per_sec` and `burst` in `[[api_keys]]`), where a
//! batch of n items costs n, and per client address for failed authentications, so
//! that a stolen key cannot read at full speed and a key-guesser gets nowhere fast.
//!
//! Both are token buckets: `burst` tokens at most, refilled at `per_sec`; a request
//! takes its cost or is refused with how long until it could be served.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, per_sec: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        self.at = now;
    }

    /// Takes `cost` tokens, or says how long until they are there (taking nothing).
    fn take(&mut self, cost: f64, per_sec: f64) -> Result<(), Duration> {
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(wait((cost - self.tokens) / per_sec))
        }
    }
}

/// `secs` as a duration, saturating (the configuration bounds the rates; this keeps
/// a wait from ever panicking).
fn wait(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One API key's limit.
pub struct RateLimit {
    per_sec: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
}

impl RateLimit {
    /// `per_sec` items a second on average, up to `burst` at once (both > 0; the
    /// configuration checks them).
    pub fn new(per_sec: f64, burst: u32) -> RateLimit {
        let burst = f64::from(burst.max(1));
        RateLimit {
            per_sec,
            burst,
            bucket: Mutex::new(Bucket::full(burst, Instant::now())),
        }
    }

    /// Takes `cost` items' worth, or refuses with the time until the bucket holds
    /// them. A cost above the burst is charged as the whole burst: a batch larger
    /// than the burst is allowed once the bucket is full, not refused forever.
    pub(crate) fn take(&self, cost: u64) -> Result<(), Duration> {
        self.take_at(cost, Instant::now())
    }

    fn take_at(&self, cost: u64, now: Instant) -> Result<(), Duration> {
        let cost = (cost as f64).min(self.burst);
        let mut bucket = lock(&self.bucket);
        bucket.refill(self.per_sec, self.burst, now);
        bucket.take(cost, self.per_sec)
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("per_sec", &self.per_sec)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

/// Client addresses tracked at most. When full, the table is cut to three quarters
/// at once (refilled buckets first, then the least recently failing), so that the
/// cost of a cut is spread over a quarter of the table's inserts.
const MAX_ADDRESSES: usize = 10_000;

/// The address a failure is counted against: an IPv6 host's /64, which one host
/// can rotate through freely; an IPv4 address as it is.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[8..].fill(0);
            IpAddr::from(octets)
        }
        v4 => v4,
    }
}

/// Failed authentications per client address.
pub(crate) struct FailedAuth {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl FailedAuth {
    pub(crate) fn new(per_sec: f64, burst: u32) -> FailedAuth {
        FailedAuth {
            per_sec,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` while `ip` has used up its failures: it is refused without its
    /// key being looked at.
    pub(crate) fn blocked(&self, ip: IpAddr) -> Option<Duration> {
        self.blocked_at(ip, Instant::now())
    }

    fn blocked_at(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let mut buckets = lock(&self.buckets);
        let bucket = buckets.get_mut(&client_key(ip))?;
        bucket.refill(self.per_sec, self.burst, now);
        (bucket.tokens < 1.0).then(|| wait((1.0 - bucket.tokens) / self.per_sec))
    }

    /// Counts a failed authentication from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now());
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        let ip = client_key(ip);
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_ADDRESSES && !buckets.contains_key(&ip) {
            let (per_sec, burst) = (self.per_sec, self.burst);
            buckets.retain(|_, b| {
                b.refill(per_sec, burst, now);
                b.tokens < burst
            });
            let keep = MAX_ADDRESSES * 3 / 4;
            if buckets.len() > keep {
                let mut by_age: Vec<(Instant, IpAddr)> =
                    buckets.iter().map(|(ip, b)| (b.at, *ip)).collect();
                let cut = by_age.len() - keep;
                by_age.select_nth_unstable_by_key(cut, |&(at, _)| at);
                for (_, oldest) in &by_age[..cut] {
                    buckets.remove(oldest);
                }
            }
        }
        let bucket = buckets
            .entry(ip)
            .or_insert_with(|| Bucket::full(self.burst, now));
        bucket.refill(self.per_sec, self.burst, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

impl fmt::Debug for FailedAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedAuth")
            .field("per_sec", &self.per_sec)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

/// Whole seconds for `Retry-After`, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_its_rate() {
        let limit = RateLimit::new(10.0, 5);
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(limit.take_at(1, t0).is_ok());
        }
        let wait = limit.take_at(1, t0).expect_err("the burst is spent");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // A tenth of a second later, one more.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limit.take_at(1, t1).is_ok());
        assert!(limit.take_at(1, t1).is_err());
        // A batch costs its items, all or nothing.
        let t2 = t1 + Duration::from_millis(300);
        assert!(limit.take_at(4, t2).is_err(), "3 tokens, 4 asked");
        assert!(limit.take_at(3, t2).is_ok(), "the refusal took nothing");
        // A batch above the burst waits for a full bucket rather than forever.
        let t3 = t2 + Duration::from_secs(10);
        assert!(limit.take_at(1000, t3).is_ok());
        assert!(limit.take_at(1, t3).is_err());
    }

    #[test]
    fn failed_authentications_block_only_their_address() {
        let auth = FailedAuth::new(1.0, 3);
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        assert_eq!(auth.blocked_at(a, t0), None);
        for _ in 0..3 {
            auth.failed_at(a, t0);
        }
        let wait = auth
            .blocked_at(a, t0)
            .expect("three failures use the burst");
        assert_eq!(retry_after_secs(wait), 1);
        assert_eq!(
            auth.blocked_at(b, t0),
            None,
            "another address is not blocked"
        );
        assert_eq!(auth.blocked_at(a, t0 + Duration::from_secs(1)), None);
    }

    #[test]
    fn the_address_table_is_bounded() {
        let auth = FailedAuth::new(1.0, 3);
        let t0 = Instant::now();
        for i in 0..(MAX_ADDRESSES as u32 + 50) {
            auth.failed_at(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(lock(&auth.buckets).len() <= MAX_ADDRESSES);
    }

    #[test]
    fn an_ipv6_host_cannot_rotate_out_of_its_budget() {
        let auth = FailedAuth::new(1.0, 3);
        let t0 = Instant::now();
        for host in 0..3u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, host + 1]);
            auth.failed_at(ip, t0);
        }
        let other = IpAddr::from([0x2001, 0xdb8, 0, 1, 0xffff, 0, 0, 9]);
        assert!(auth.blocked_at(other, t0).is_some(), "the same /64");
        let elsewhere = IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]);
        assert!(auth.blocked_at(elsewhere, t0).is_none(), "another /64");
    }

    #[test]
    fn waits_never_panic() {
        let limit = RateLimit::new(1e-300, 1);
        let t0 = Instant::now();
        assert!(limit.take_at(1, t0).is_ok());
        assert_eq!(limit.take_at(1, t0), Err(Duration::MAX));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2001)), 3);
    }
}
