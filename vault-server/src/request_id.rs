//! Request ids: one per request, in its `x-request-id` header and access log line,
//! and in every event logged while it is served, also on the blocking pool. Its own
//! module, so that the layers that log (errors, metrics, the vault calls) need not
//! import the router.

/// A request's id: 16 random hex digits (`-` if the system's randomness failed). It
/// is in the request's `x-request-id` header and access log line, and in every event
/// logged while the request is served ([`request_id`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestId(Option<[u8; 16]>);

impl RequestId {
    pub(crate) fn new() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut raw = [0u8; 8];
        if getrandom::fill(&mut raw).is_err() {
            return RequestId(None);
        }
        let mut hex = [0u8; 16];
        for (pair, b) in hex.chunks_exact_mut(2).zip(raw) {
            pair[0] = HEX[usize::from(b >> 4)];
            pair[1] = HEX[usize::from(b & 0xf)];
        }
        RequestId(Some(hex))
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0
            .as_ref()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .unwrap_or("-")
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

tokio::task_local! {
    /// The id of the request being served. A task-local instead of a `tracing`
    /// span: entering and leaving a span on every poll, and formatting its fields
    /// at creation, cost 4 % of the server's CPU under load, for a field only the
    /// rare events logged inside a request need.
    static REQUEST_ID: RequestId;
}

/// Runs `work` as the serving of request `id`: events logged in it carry the id.
pub(crate) async fn scope<F: Future>(id: RequestId, work: F) -> F::Output {
    REQUEST_ID.scope(id, work).await
}

/// [`scope`] for a call on another thread (the blocking pool).
pub(crate) fn sync_scope<T>(id: RequestId, call: impl FnOnce() -> T) -> T {
    REQUEST_ID.sync_scope(id, call)
}

/// The id of the request being served, for the events logged while serving it
/// (`-` outside a request).
pub(crate) fn request_id() -> RequestId {
    REQUEST_ID.try_with(|id| *id).unwrap_or(RequestId(None))
}
