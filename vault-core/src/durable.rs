//! Durability for callers that must not block: writes that are awaited, not waited
//! for.
//!
//! A synced write ([`Vault::tokenize_batch`](crate::Vault::tokenize_batch)) holds its
//! thread until the group's WAL sync. An async server cannot give each request a
//! thread for that: it hops to a blocking pool, and the hand-offs (a thread wake-up
//! each way, a park in the journal) cost more CPU than the write. Instead the write
//! goes into the vault without a sync, the caller gets an [`Unsynced`] value, and
//! awaits it: one thread, the syncer, syncs the WAL for everyone waiting, and wakes
//! them. Writes that finish while a sync is under way are covered by the next one,
//! so the syncs group themselves as the journal's groups do. When writes come from
//! several callers at a time, the syncer first waits
//! [`sync_gather`](crate::VaultOptions::sync_gather) for more of them, so that
//! fewer syncs and rounds of wake-ups cover them (off by default; the server turns
//! it on).
//!
//! The value is not to be acknowledged until the await returns `Ok`. Until then the
//! write is readable (an export of its subject lists the record) though a machine
//! crash could still lose it; nothing acknowledged is ever lost. A failed sync fails
//! every write it was to cover, and the vault takes no audited write after it (a
//! later sync would not prove the earlier data reached the disk): reopen the vault.
//!
//! An async executor's thread must not wait for another caller's sync either:
//! [`Vault::try_tokenize_batch_unsynced`](crate::Vault::try_tokenize_batch_unsynced)
//! writes only if no lock it needs is held, no journal group is being written or
//! waiting, and no synced write outside the journal (a purge, a rotation batch) is
//! under way; otherwise it writes nothing and says so. (The storage engine itself can still
//! delay a write when flushes and compactions fall behind.)

use std::collections::BTreeMap;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::Duration;

use crate::error::{Error, StorageError};

/// What the syncer and the writers share.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    state: Mutex<State>,
    cv: Condvar,
    /// A sync has failed (`State::failed` says why): checked on every audited
    /// write without taking the lock the syncer holds.
    broken: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Unsynced writes finished so far; a write's ticket is the count after it.
    written: u64,
    /// Writes covered by the last successful sync.
    synced: u64,
    /// Why a sync failed: no later write is synced.
    failed: Option<String>,
    /// Whoever awaits a write beyond `synced`, by ticket.
    waiters: BTreeMap<u64, Waker>,
    /// The syncer is waiting for work (a finished write must wake it).
    idle: bool,
    stop: bool,
    /// The syncer has exited: nothing more will be synced.
    exited: bool,
    /// Times the syncer waited for more writes before a sync.
    gathered: u64,
}

impl SyncState {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An error if a sync has failed: no later write is synced, so none is made.
    pub(crate) fn healthy(&self) -> Result<(), Error> {
        if !self.broken.load(Ordering::Acquire) {
            return Ok(());
        }
        let failed = self.lock().failed.clone().unwrap_or_default();
        Err(Error::Storage(StorageError(failed)))
    }

    /// Records an unsynced write that has just returned: the ticket to await its
    /// sync.
    pub(crate) fn written(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        state.written += 1;
        let ticket = state.written;
        if state.idle {
            state.idle = false;
            self.cv.notify_one();
        }
        Ticket {
            shared: self.clone(),
            ticket,
        }
    }
}

/// The syncer thread.
#[derive(Debug)]
pub(crate) struct Syncer {
    shared: Arc<SyncState>,
    handle: Option<JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread that syncs, with `sync`, the writes counted in `shared`;
    /// `gather` is how long it waits for concurrent writers to share a sync.
    pub(crate) fn start(
        shared: Arc<SyncState>,
        gather: Duration,
        sync: impl FnMut() -> Result<(), Error> + Send + 'static,
    ) -> Result<Syncer, Error> {
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("vault-sync".into())
            .spawn(move || run(&thread_shared, gather, sync))
            .map_err(|e| Error::io("vault-sync thread", e))?;
        Ok(Syncer {
            shared,
            handle: Some(handle),
        })
    }

    /// Syncs what is written and not yet synced, then stops the thread (as
    /// dropping it does).
    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            state.idle = false;
        }
        self.shared.cv.notify_all();
        if let Some(handle) = self.handle.take() {
            // A panic in the syncer has already been reported by the panic hook, and
            // its exit guard has failed the waiters.
            let _ = handle.join();
        }
    }
}

fn wake_all(state: &mut State) {
    for (_, waker) in std::mem::take(&mut state.waiters) {
        waker.wake();
    }
}

/// Marks the syncer gone however it ends (a panic included), so that nobody waits
/// for it.
struct Exit<'a>(&'a SyncState);

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.exited = true;
        wake_all(&mut state);
    }
}

/// Whether the syncer waits for more writes before syncing: only when writes come
/// from more than one caller at a time (more than one is waiting now, or the last
/// sync covered more than one). A lone caller's writes would wait for nobody: it
/// waits at most once, with its first write after concurrent ones.
fn gathers(pending: u64, last_covered: u64) -> bool {
    pending > 1 || last_covered > 1
}

fn run(shared: &SyncState, gather: Duration, mut sync: impl FnMut() -> Result<(), Error>) {
    let _exit = Exit(shared);
    // Writes the last sync covered.
    let mut last_covered = 0;
    let mut state = shared.lock();
    loop {
        if state.failed.is_some() || state.synced == state.written {
            if state.stop {
                break;
            }
            state.idle = true;
            state = shared
                .cv
                .wait_while(state, |s| s.idle && !s.stop)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        if !gather.is_zero() && !state.stop && gathers(state.written - state.synced, last_covered) {
            // Concurrent writers: let more of them finish their writes, so that one
            // sync (and one round of wake-ups) covers them all.
            state.gathered += 1;
            drop(state);
            thread::sleep(gather);
            state = shared.lock();
        }
        // Every write counted in `written` has returned, so it is in the WAL file
        // and this sync covers it.
        let target = state.written;
        drop(state);
        let outcome = sync();
        state = shared.lock();
        match outcome {
            Ok(()) => {
                last_covered = target - state.synced;
                state.synced = target;
                let later = state.waiters.split_off(&(target + 1));
                for (_, waker) in std::mem::replace(&mut state.waiters, later) {
                    waker.wake();
                }
            }
            Err(e) => {
                state.failed = Some(e.to_string());
                shared.broken.store(true, Ordering::Release);
                wake_all(&mut state);
            }
        }
    }
}

/// One unsynced write's place in line for a sync.
#[derive(Debug)]
pub(crate) struct Ticket {
    shared: Arc<SyncState>,
    ticket: u64,
}

impl Ticket {
    /// Ready once a sync covers the write (or none ever will).
    fn poll(&self, waker: impl FnOnce() -> Waker) -> Poll<Result<(), Error>> {
        let mut state = self.shared.lock();
        if state.synced >= self.ticket {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = &state.failed {
            return Poll::Ready(Err(Error::Storage(StorageError(e.clone()))));
        }
        if state.exited {
            return Poll::Ready(Err(Error::Storage(StorageError(
                "the vault closed before the write was synced".into(),
            ))));
        }
        state.waiters.insert(self.ticket, waker());
        Poll::Pending
    }
}

/// A write that is in the vault but may not be durable yet: await it (or
/// [`wait`](Self::wait) on a thread that may block) before acknowledging its result.
/// With [`Durability::Relaxed`](crate::Durability::Relaxed) it is ready at once.
#[must_use = "the write is not durable until this is awaited"]
pub struct Unsynced<T> {
    value: T,
    ticket: Option<Ticket>,
}

impl<T> Unsynced<T> {
    pub(crate) fn new(value: T, ticket: Option<Ticket>) -> Unsynced<T> {
        Unsynced { value, ticket }
    }

    /// Blocks the thread until the write is durable; the result.
    pub fn wait(self) -> Result<T, Error> {
        let Some(ticket) = self.ticket else {
            return Ok(self.value);
        };
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        loop {
            match ticket.poll(|| waker.clone()) {
                Poll::Ready(result) => return result.map(|()| self.value),
                // Parking tolerates an unpark that comes first.
                Poll::Pending => std::thread::park(),
            }
        }
    }
}

// The value (tokens) stays out of debug output.
impl<T> std::fmt::Debug for Unsynced<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsynced").finish_non_exhaustive()
    }
}

impl<T> std::fmt::Debug for Synced<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synced").finish_non_exhaustive()
    }
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

impl<T> IntoFuture for Unsynced<T> {
    type Output = Result<T, Error>;
    type IntoFuture = Synced<T>;

    fn into_future(self) -> Synced<T> {
        Synced {
            value: Some(self.value),
            ticket: self.ticket,
        }
    }
}

/// The future of an [`Unsynced`] write: its result, once durable.
#[must_use = "futures do nothing unless awaited"]
pub struct Synced<T> {
    value: Option<T>,
    ticket: Option<Ticket>,
}

// The value is never pinned: it is only moved out.
impl<T> Unpin for Synced<T> {}

impl<T> Future for Synced<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        let this = self.get_mut();
        if let Some(ticket) = &this.ticket {
            match ticket.poll(|| cx.waker().clone()) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
        match this.value.take() {
            Some(value) => Poll::Ready(Ok(value)),
            None => panic!("`Synced` polled after it returned its value"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::PoisonError;
    use std::time::Duration;

    use crate::error::Error;
    use crate::store::Storage;
    use crate::{KdfParams, RootKey, TokenizeRequest, Vault, VaultOptions};

    #[test]
    fn a_try_that_would_wait_writes_nothing() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
        let opts = VaultOptions::default()
            .background_worker(false)
            .statistics(true)
            .kdf_params(KdfParams::MINIMUM);
        let vault = Vault::open(dir.path(), &RootKey::from_bytes(&[7; 32])?, opts)?;
        let inner = &vault.inner;
        let request = [TokenizeRequest::new("customer-1", "email", b"a@x")];
        let written = || inner.store.counters().keys_written;
        let before = written();

        // The subject's lock, held by another write of it.
        let hash = inner.index.subject_hash("customer-1");
        {
            let _held = inner.stripes.lock(&hash);
            assert!(vault.try_tokenize_batch_unsynced(&request)?.is_none());
        }
        // The key lock, held by a KEK rotation batch.
        {
            let _held = inner
                .keys
                .writes()
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            assert!(vault.try_tokenize_batch_unsynced(&request)?.is_none());
        }
        // The journal, with a group being written.
        inner.journal.set_leader(true);
        assert!(vault.try_tokenize_batch_unsynced(&request)?.is_none());
        inner.journal.set_leader(false);
        // A synced write outside the journal (a purge), whose sync a write could
        // join.
        {
            let _syncing = inner.store.rocks().pretend_syncing();
            assert!(vault.try_tokenize_batch_unsynced(&request)?.is_none());
        }
        assert_eq!(written(), before, "a refused try wrote something");

        // Free: written, durable once waited for, readable.
        let Some(unsynced) = vault.try_tokenize_batch_unsynced(&request)? else {
            panic!("nothing was in the way, and the try was refused");
        };
        let tokens = unsynced.wait()?;
        assert!(written() > before);
        let got = vault.detokenize(&tokens[0].to_string())?;
        assert_eq!(got.value.as_str(), Some("a@x"));
        Ok(())
    }

    #[test]
    fn the_syncer_gathers_only_when_writers_overlap() {
        // One write waiting and the last sync covering one: a lone caller.
        assert!(!super::gathers(1, 0));
        assert!(!super::gathers(1, 1));
        // Several waiting now, or the last sync covered several.
        assert!(super::gathers(2, 0));
        assert!(super::gathers(1, 2));
    }

    fn gathering_vault(dir: &std::path::Path) -> Result<Vault, Error> {
        let opts = VaultOptions::default()
            .background_worker(false)
            .kdf_params(KdfParams::MINIMUM)
            .sync_gather(Duration::from_millis(5));
        Vault::open(dir, &RootKey::from_bytes(&[7; 32])?, opts)
    }

    fn gathered(vault: &Vault) -> u64 {
        vault.inner.journal.wal_sync.lock().gathered
    }

    #[test]
    fn a_lone_writer_is_not_made_to_wait() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
        let vault = gathering_vault(dir.path())?;
        for i in 0..10 {
            let subject = format!("customer-{i}");
            let request = [TokenizeRequest::new(&subject, "email", b"a@x")];
            vault.tokenize_batch_unsynced(&request)?.wait()?;
        }
        assert_eq!(
            gathered(&vault),
            0,
            "a lone writer's syncs waited for others"
        );
        Ok(())
    }

    #[test]
    fn writes_made_during_a_sync_wait_to_share_the_next() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("temporary directory", e))?;
        let vault = gathering_vault(dir.path())?;
        let write = |i: usize| {
            let subject = format!("customer-{i}");
            vault.tokenize_batch_unsynced(&[TokenizeRequest::new(&subject, "email", b"a@x")])
        };
        // A slow disk: whichever of the writes the syncer's first sync covers, it
        // cannot finish before all four are written. The next sync then finds
        // several waiting, or the first found several before it began; either way
        // the syncer waits for more before syncing.
        let disk = vault.inner.store.rocks().hold_wal_syncs();
        let unsynced = (0..4).map(write).collect::<Result<Vec<_>, _>>()?;
        drop(disk);
        let mut tokens = Vec::new();
        for write in unsynced {
            tokens.push(write.wait()?[0].to_string());
        }
        for token in &tokens {
            assert_eq!(vault.detokenize(token)?.value.as_str(), Some("a@x"));
        }
        assert!(
            gathered(&vault) > 0,
            "writes made during a sync never waited to share the next"
        );
        Ok(())
    }
}
