//! The vault call of a request, and where it runs: on the blocking pool, so the storage engine
//! and the crypto do not hold up the async runtime, except short calls that wait for
//! nobody, which run on the async worker. The policy for short writes (how often one
//! is tried there before it goes to the blocking pool) lives here, beside the calls.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use vault_client::api::{TokenFormat, TokenizeItem};
use vault_core::{Actor, Token, TokenizeRequest, Vault};

use crate::auth::ApiKey;
use crate::error::ApiError;
use crate::request_id::{self, request_id};

/// A request's concurrency slot, held by its vault call until the call has ended
/// (also when the request timed out first).
#[derive(Debug, Clone)]
pub(crate) struct Permit(#[allow(dead_code)] pub(crate) Arc<OwnedSemaphorePermit>);

/// The vault, for a request's call: on the blocking pool, so the storage engine and the crypto
/// do not hold up the async runtime, except for short calls that wait for nobody
/// ([`Work::run_short`]). The call holds the request's concurrency slot and knows
/// the request's id ([`request_id`]).
pub(crate) struct Work {
    pub(crate) vault: Arc<Vault>,
    pub(crate) permit: Option<Permit>,
    /// The API key that authenticated the request (none on public routes).
    pub(crate) key: Option<Arc<ApiKey>>,
}

/// A vault call's answer, or a generic error when it did not complete (`Err(true)`:
/// it panicked; the panic's message may not be shown to anyone).
fn vault_answer<T>(finished: Result<Result<T, vault_core::Error>, bool>) -> Result<T, ApiError> {
    match finished {
        Ok(result) => result.map_err(ApiError::from_vault),
        Err(panicked) => {
            tracing::error!(request_id = %request_id(), panicked, "a vault call did not complete");
            Err(ApiError::internal())
        }
    }
}

/// Detokenizations of at most this many tokens run on the async worker (see
/// [`Work::read`]).
const SHORT_READ_TOKENS: usize = 16;
/// Tokenizations of at most this many values, and bytes of values, are tried on the
/// async worker (a value costs about as much as a few reads).
const SHORT_WRITE_ITEMS: usize = 4;
const SHORT_WRITE_BYTES: usize = 4 << 10;
/// How often a short tokenization is tried on the async worker before it goes to the
/// blocking pool. What is in its way is most often the other worker's write, a few
/// tens of microseconds; every yield serves other tasks meanwhile. With 4 tries a
/// quarter of the server's CPU under the tokenize load was on blocking-pool threads,
/// whose callers park in the journal and make the next ones wait too (2.5 futex
/// calls a request, against 0.8 with 64 tries).
const SHORT_WRITE_TRIES: usize = 64;

impl Work {
    /// A short call that waits for nobody (a few point reads, decryption, one
    /// `write` of staged audit events; or a small write without a sync, made only if
    /// no other write is in its way): run on the async worker. The hop to the
    /// blocking pool and back (a thread wake-up each way, a shared queue) costs more
    /// than such a call; under load a third of the server's CPU was in the kernel's
    /// scheduler and futexes. Anything that can wait for a sync, a lock or the disk
    /// for long stays on the blocking pool ([`run`](Self::run)).
    fn run_short<T, F>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(&Vault) -> Result<T, vault_core::Error>,
    {
        let finished = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(&self.vault)));
        vault_answer(finished.map_err(|_| true))
    }

    pub(crate) async fn run<T, F>(self, call: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Vault) -> Result<T, vault_core::Error> + Send + 'static,
    {
        let Work { vault, permit, .. } = self;
        let request_id = request_id();
        let joined = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            request_id::sync_scope(request_id, || call(&vault))
        })
        .await;
        vault_answer(joined.map_err(|join| join.is_panic()))
    }
}

impl Work {
    /// The request's API key, which audited calls act as: the audit trail names it.
    pub(crate) fn actor_key(&self) -> Result<Arc<ApiKey>, ApiError> {
        self.key.clone().ok_or_else(|| {
            tracing::error!(request_id = %request_id(), "an audited route ran without an API key");
            ApiError::internal()
        })
    }

    /// Like [`run`](Self::run), acting as the request's API key.
    pub(crate) async fn run_as<T, F>(self, call: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(Actor<'_>) -> Result<T, vault_core::Error> + Send + 'static,
    {
        let key = self.actor_key()?;
        self.run(move |vault| call(vault.as_actor(&key.name)?))
            .await
    }

    /// Like [`run_short`](Self::run_short), acting as the request's API key.
    fn run_short_as<T, F>(&self, call: F) -> Result<T, ApiError>
    where
        F: FnOnce(Actor<'_>) -> Result<T, vault_core::Error>,
    {
        let key = self.actor_key()?;
        self.run_short(move |vault| call(vault.as_actor(&key.name)?))
    }
}

impl Work {
    /// A read of `tokens` tokens: on the async worker when short and no read may
    /// wait now ([`Vault::reads_may_wait`]), else on the blocking pool.
    pub(crate) async fn read<T, F>(self, tokens: usize, call: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Vault) -> Result<T, vault_core::Error> + Send + 'static,
    {
        if tokens <= SHORT_READ_TOKENS && !self.vault.reads_may_wait() {
            self.run_short(call)
        } else {
            self.run(call).await
        }
    }

    /// Tokenizes `items` as the request's API key, written without a sync, then
    /// awaits the WAL sync that covers the write with no thread held for it. A short
    /// batch is tried on the async worker, where it is written only if nobody else's
    /// write is in the way; that write (most often the other async worker's) ends
    /// within tens of microseconds, so the worker serves other tasks and tries again
    /// rather than hop to the blocking pool and back. A long one, or a short one
    /// still in the way after its tries, goes to the blocking pool.
    pub(crate) async fn tokenize(self, items: Vec<TokenizeItem>) -> Result<Vec<Token>, ApiError> {
        let bytes: usize = items.iter().map(|i| i.value.expose().len()).sum();
        let mut written = None;
        if items.len() <= SHORT_WRITE_ITEMS
            && bytes <= SHORT_WRITE_BYTES
            && !self.vault.writes_always_wait()
        {
            let requests = requests(&items);
            for _ in 0..SHORT_WRITE_TRIES {
                written =
                    self.run_short_as(|actor| actor.try_tokenize_batch_unsynced(&requests))?;
                if written.is_some() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        let unsynced = match written {
            Some(unsynced) => unsynced,
            None => {
                self.run_as(move |actor| actor.tokenize_batch_unsynced(&requests(&items)))
                    .await?
            }
        };
        unsynced.await.map_err(ApiError::from_vault)
    }
}

/// The vault's requests for the wire's items (borrowing them).
fn requests(items: &[TokenizeItem]) -> Vec<TokenizeRequest<'_>> {
    items
        .iter()
        .map(|item| {
            let request = TokenizeRequest::new(
                item.subject.expose(),
                &item.field,
                item.value.expose().as_bytes(),
            );
            let request = match item.format {
                Some(TokenFormat::Digits) => request.format(vault_core::TokenFormat::Digits),
                Some(TokenFormat::Luhn) => request.format(vault_core::TokenFormat::Luhn),
                Some(TokenFormat::Email) => request.format(vault_core::TokenFormat::Email),
                None => request,
            };
            if item.deterministic {
                request.deterministic()
            } else {
                request
            }
        })
        .collect()
}
