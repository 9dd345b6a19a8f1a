//! The background worker: purges erasures when they fall due and resumes an
//! interrupted KEK rotation, one checkpointed batch at a time.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::vault::Inner;

/// How often the worker looks for due purges when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);
/// How often read audit events written without a sync are synced.
const SYNC_EVERY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts of a failing purge.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often audit events past their retention are looked for.
const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Signal {
    stop: Mutex<bool>,
    cv: Condvar,
}

#[derive(Debug)]
pub(crate) struct Worker {
    signal: Arc<Signal>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    pub(crate) fn start(inner: Arc<Inner>) -> Result<Worker, Error> {
        let signal = Arc::new(Signal::default());
        let thread_signal = signal.clone();
        let handle = std::thread::Builder::new()
            .name("vault-worker".into())
            .spawn(move || run(&inner, &thread_signal))
            .map_err(|e| Error::io("vault-worker thread", e))?;
        Ok(Worker {
            signal,
            handle: Some(handle),
        })
    }

    /// Asks the worker to stop after its current step and waits for it.
    pub(crate) fn stop(mut self) {
        *self
            .signal
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.signal.cv.notify_all();
        if let Some(handle) = self.handle.take() {
            // A panic in the worker has already been reported by the panic hook.
            let _ = handle.join();
        }
    }
}

fn stopped(signal: &Signal) -> bool {
    *signal.stop.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run(inner: &Inner, signal: &Signal) {
    // After a failed or unverified purge, wait longer before the next attempt
    // (each attempt flushes and compacts), up to a minute.
    let mut purge_backoff = Duration::ZERO;
    let mut next_purge = Instant::now();
    let mut next_audit_prune = Instant::now();
    let mut next_work = Instant::now();
    loop {
        {
            let guard = signal.stop.lock().unwrap_or_else(PoisonError::into_inner);
            let (guard, _) = signal
                .cv
                .wait_timeout_while(guard, SYNC_EVERY, |stop| !*stop)
                .unwrap_or_else(PoisonError::into_inner);
            if *guard {
                return;
            }
        }
        if let Err(e) = inner.flush_staged().and_then(|()| inner.sync_read_events()) {
            inner.set_background_error(Some(e));
        }
        if Instant::now() < next_work {
            continue;
        }
        next_work = Instant::now() + TICK;
        // One rotation batch per pass at most, so due purges are never starved by a
        // long rotation, and a failing purge never stops the rotation.
        loop {
            let mut errors = Vec::new();
            let mut attempted = false;
            if Instant::now() >= next_purge {
                attempted = true;
                let verified = |report: crate::erase::PurgeReport| {
                    if report.verified {
                        Ok(())
                    } else {
                        Err(Error::PurgeUnverified)
                    }
                };
                // Erasures first, then records past their retention period.
                let purge = inner.purge_due().and_then(verified).and_then(|()| {
                    if inner.expiry_due()? {
                        inner.purge_expired().and_then(verified)
                    } else {
                        Ok(())
                    }
                });
                if let Err(e) = purge {
                    purge_backoff = (purge_backoff * 2).clamp(TICK, MAX_BACKOFF);
                    next_purge = Instant::now() + purge_backoff;
                    errors.push(e);
                } else {
                    purge_backoff = Duration::ZERO;
                }
            }
            if Instant::now() >= next_audit_prune {
                next_audit_prune = Instant::now() + AUDIT_PRUNE_EVERY;
                inner.staging.trim();
                if let Err(e) = inner.prune_audit() {
                    errors.push(e);
                }
            }
            let more = match inner.rotation_step() {
                Ok(more) => {
                    attempted |= more;
                    more
                }
                Err(e) => {
                    errors.push(e);
                    false
                }
            };
            // Failures are retried; the last one is shown by `key_status`. A pass
            // that tried nothing (backing off) leaves the last error in place.
            if attempted || !errors.is_empty() {
                inner.set_background_error(errors.pop());
            }
            if !more || stopped(signal) {
                break;
            }
        }
    }
}
