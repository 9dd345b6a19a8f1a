//! Prometheus metrics: request counts and latency histograms per route, method and
//! status, plus the vault's own counters.
//!
//! Labels are route *templates* (`/v1/tokens/{token}`), methods from a fixed list and
//! status codes: no token, subject, purpose or key material can reach a label.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// The server's request metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(&'static str, &'static str, u16), Series>>,
    in_flight: AtomicUsize,
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, route: &'static str, method: &'static str, status: u16, took: Duration) {
        let seconds = took.as_secs_f64();
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = series.entry((route, method, status)).or_default();
        s.count += 1;
        s.sum += seconds;
        for (bound, bucket) in BUCKETS.iter().zip(s.buckets.iter_mut()) {
            if seconds <= *bound {
                *bucket += 1;
            }
        }
    }

    /// Counts a request in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Renders the request metrics in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        out.push_str("# HELP vault_http_requests_total HTTP requests answered.\n");
        out.push_str("# TYPE vault_http_requests_total counter\n");
        for ((route, method, status), s) in &series {
            let _ = writeln!(
                out,
                "vault_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP vault_http_request_duration_seconds Time to answer a request.\n");
        out.push_str("# TYPE vault_http_request_duration_seconds histogram\n");
        for ((route, method, status), s) in &series {
            let labels = format!("route=\"{route}\",method=\"{method}\",status=\"{status}\"");
            for (bound, n) in BUCKETS.iter().zip(s.buckets) {
                let _ = writeln!(
                    out,
                    "vault_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "vault_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "vault_http_request_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "vault_http_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        gauge(
            out,
            "vault_http_requests_in_flight",
            "Requests being served.",
            self.in_flight.load(Ordering::Relaxed) as u64,
        );
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Appends one gauge or counter without labels.
pub(crate) fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let kind = if name.ends_with("_total") {
        "counter"
    } else {
        "gauge"
    };
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

/// The vault's own metrics: storage counters, key versions, pending purges.
/// The engine's counters and the caches' sizes: read from memory.
pub(crate) fn render_vault(vault: &vault_core::Vault, out: &mut String) {
    let c = vault.storage_counters();
    gauge(
        out,
        "vault_storage_keys_read_total",
        "Keys read by point lookups.",
        c.keys_read,
    );
    gauge(
        out,
        "vault_storage_keys_written_total",
        "Keys written (puts, deletes, merges).",
        c.keys_written,
    );
    gauge(
        out,
        "vault_storage_bytes_written_total",
        "Bytes written in write batches (keys, values and their framing).",
        c.bytes_written,
    );
    gauge(out, "vault_storage_seeks_total", "Iterator seeks.", c.seeks);
    gauge(
        out,
        "vault_storage_iterator_steps_total",
        "Iterator steps.",
        c.iterator_steps,
    );
    gauge(
        out,
        "vault_storage_wal_syncs_total",
        "Write-ahead-log syncs.",
        c.wal_syncs,
    );
    gauge(
        out,
        "vault_storage_conflicts_total",
        "Writes run again because another replica changed what they read (PostgreSQL).",
        c.conflicts,
    );
    gauge(
        out,
        "vault_block_cache_capacity_bytes",
        "Capacity of the storage engine's block cache.",
        c.block_cache_capacity,
    );
    gauge(
        out,
        "vault_block_cache_usage_bytes",
        "Bytes in the storage engine's block cache.",
        c.block_cache_usage,
    );
    gauge(
        out,
        "vault_dek_cache_entries",
        "Unwrapped subject keys in the cache.",
        vault.cached_keys() as u64,
    );
    gauge(
        out,
        "vault_subject_cache_entries",
        "Recently written subjects kept in memory with their keys.",
        vault.cached_subjects() as u64,
    );
}

/// Keys per KEK version, rotation and pending purges: read from the store (the
/// purge queue is scanned), so rendered on the blocking pool, at most once a
/// [`KEY_GAUGES_TTL`].
pub(crate) fn render_keys(vault: &vault_core::Vault, out: &mut String) {
    match vault.key_status() {
        Ok(status) => {
            gauge(
                out,
                "vault_kek_active_version",
                "The active key-encryption-key version.",
                u64::from(status.active_version),
            );
            gauge(
                out,
                "vault_kek_versions",
                "Key-encryption-key versions that exist.",
                status.versions.len() as u64,
            );
            out.push_str("# HELP vault_deks Subject keys wrapped by each KEK version.\n# TYPE vault_deks gauge\n");
            for v in &status.versions {
                let _ = writeln!(
                    out,
                    "vault_deks{{kek_version=\"{}\"}} {}",
                    v.version, v.deks
                );
            }
            gauge(
                out,
                "vault_rotation_in_progress",
                "1 while a KEK rotation is under way.",
                u64::from(status.rotation_in_progress),
            );
            gauge(
                out,
                "vault_pending_purges",
                "Erasures whose bytes are not purged yet.",
                status.pending_purges as u64,
            );
            gauge(
                out,
                "vault_background_error",
                "1 if the background worker's last run failed.",
                u64::from(status.background_error.is_some()),
            );
            gauge(out, "vault_up", "1 when the vault answered this scrape.", 1);
        }
        Err(e) => {
            tracing::error!(request_id = %crate::request_id::request_id(), error = %e, "key status for metrics failed");
            gauge(out, "vault_up", "1 when the vault answered this scrape.", 0);
        }
    }
}

/// How long the key gauges are served from the last rendering.
pub(crate) const KEY_GAUGES_TTL: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let m = Metrics::default();
        m.record("/v1/tokenize", "POST", 200, Duration::from_micros(700));
        m.record("/v1/tokenize", "POST", 200, Duration::from_millis(30));
        let mut out = String::new();
        m.render(&mut out);
        assert!(out.contains(
            "vault_http_requests_total{route=\"/v1/tokenize\",method=\"POST\",status=\"200\"} 2"
        ));
        assert!(out.contains("status=\"200\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("status=\"200\",le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("status=\"200\",le=\"+Inf\"} 2\n"), "{out}");
    }
}
