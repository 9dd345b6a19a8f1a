//! The background worker: purges erasures when they fall due and resumes an
//! interrupted KEK rotation, one checkpointed batch at a time.
//!
//! It keeps the schedule (how often, what first, the backoff) and nothing else: the
//! chores themselves are the vault's ([`Chores`]), so this module knows nothing of
//! the vault.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::Error;

/// How often the worker looks for due purges when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);
/// How often read audit events written without a sync are synced.
const SYNC_EVERY: Duration = Duration::from_millis(100);
/// The longest wait between two attempts of a failing purge.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often audit events past their retention are looked for.
const AUDIT_PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What the worker does on its schedule, as the vault provides it.
pub(crate) trait Chores: Send + Sync + 'static {
    /// Commits the staged read events to the audit trail and syncs them.
    fn flush_read_events(&self) -> Result<(), Error>;
    /// Purges the pending erasures if any is due; whether the file check passed
    /// (if not, they stay pending).
    fn purge_erasures_due(&self) -> Result<bool, Error>;
    /// Purges the records past their retention period if any is due (or a file
    /// check is owed); whether the file check passed.
    fn purge_expired_due(&self) -> Result<bool, Error>;
    /// Empties the staging file whose events are all in the trail, and prunes the
    /// audit events past their retention period.
    fn prune_audit_trail(&self) -> Result<(), Error>;
    /// Runs one batch of an interrupted KEK rotation; whether there is more to do.
    fn resume_rotation(&self) -> Result<bool, Error>;
    /// Records what the last pass failed with (`None`: nothing), for `key_status`.
    fn report(&self, error: Option<Error>);
}

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
    pub(crate) fn start(chores: Arc<impl Chores>) -> Result<Worker, Error> {
        let signal = Arc::new(Signal::default());
        let thread_signal = signal.clone();
        let handle = std::thread::Builder::new()
            .name("vault-worker".into())
            .spawn(move || run(&*chores, &thread_signal))
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

fn run(chores: &impl Chores, signal: &Signal) {
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
        if let Err(e) = chores.flush_read_events() {
            chores.report(Some(e));
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
                let verified = |verified: bool| {
                    if verified {
                        Ok(())
                    } else {
                        Err(Error::PurgeUnverified)
                    }
                };
                // Erasures first, then records past their retention period.
                let purge = chores
                    .purge_erasures_due()
                    .and_then(verified)
                    .and_then(|()| chores.purge_expired_due().and_then(verified));
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
                if let Err(e) = chores.prune_audit_trail() {
                    errors.push(e);
                }
            }
            let more = match chores.resume_rotation() {
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
                chores.report(errors.pop());
            }
            if !more || stopped(signal) {
                break;
            }
        }
    }
}
