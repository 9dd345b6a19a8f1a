//! The background worker: purges erasures when they fall due and resumes an
//! interrupted KEK rotation, one checkpointed batch at a time.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::Error;
use crate::vault::Inner;

/// How often the worker looks for due purges when nothing wakes it.
const TICK: Duration = Duration::from_millis(500);

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
    loop {
        {
            let guard = signal.stop.lock().unwrap_or_else(PoisonError::into_inner);
            let (guard, _) = signal
                .cv
                .wait_timeout_while(guard, TICK, |stop| !*stop)
                .unwrap_or_else(PoisonError::into_inner);
            if *guard {
                return;
            }
        }
        // Failures are retried on the next tick; callers see purge and rotation
        // state through `pending_purges` and `key_status`.
        let _ = inner.purge_due();
        while inner.rotation_in_progress() && !stopped(signal) {
            if !matches!(inner.rotation_step(), Ok(true)) {
                break;
            }
        }
    }
}
