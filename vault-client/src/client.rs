//! The async client: one method per route, typed results, retries on idempotent calls.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{
    AuditCheck, AuditEvents, AuditHead, BackupCreated, Backups, ConsentRequest, DetokenizeRequest,
    DetokenizeResponse, DetokenizeResult, ErasureReceipt, ErrorBody, ExpectedHead, ExportRequest,
    KeyRetirement, KeyStatus, Purposes, RectifyRequest, Sensitive, SubjectConsents, SubjectExport,
    SubjectRequest, TokenizeItem, TokenizeRequest, TokenizeResponse, VerifyRequest,
};

/// What can go wrong with a call. Carries no personal data: the server's messages
/// never contain any, and request bodies are never quoted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The stable error code (`not_found`, `erased`, `forbidden`, …).
        code: String,
        /// The server's message.
        message: String,
        /// The offending batch item, when one was at fault.
        item: Option<usize>,
    },
    /// The server could not be reached, or the connection failed.
    #[error("transport: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server's answer was not what this client expects.
    #[error("unexpected answer from the server ({status})")]
    Decode {
        /// HTTP status of the answer.
        status: u16,
    },
    /// The client was misconfigured (bad URL, unreadable CA certificate).
    #[error("client configuration: {0}")]
    Config(String),
    /// The client refused an argument before sending anything (e.g. text that is
    /// not a token where a token goes into a URL path).
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
    /// The subject was erased and stored afresh between two pages of an export:
    /// the pages do not describe one subject instance. Export again.
    #[error("the subject changed during a paged export; export again")]
    ExportChanged,
}

impl Error {
    /// The API error code, if the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status } => Some(*status),
            _ => None,
        }
    }
}

/// Retries of idempotent calls: on connection failures and on 429, 502, 503, 504,
/// with exponential backoff and jitter. A `Retry-After` the server sends is waited
/// for when it is within `max_backoff`; a longer one ends the call with the error.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub max_retries: u32,
    /// The first backoff; it doubles at each retry.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_backoff);
        // Full jitter in [base/2, base]: clients retrying together spread out.
        let mut r = [0u8; 2];
        let _ = getrandom::fill(&mut r);
        let fraction = f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX);
        base.mul_f64(0.5 + fraction / 2.0)
    }
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    base: String,
    api_key: Option<Sensitive>,
    ca_certs: Vec<reqwest::Certificate>,
    timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    allow_plain_http: bool,
}

impl ClientBuilder {
    /// Allows an `http://` address: API keys, subject ids and values then cross the
    /// network in the clear. Only for a server behind a TLS-terminating proxy on the
    /// same host.
    pub fn danger_allow_plain_http(mut self) -> Self {
        self.allow_plain_http = true;
        self
    }

    /// The API key sent as `Authorization: Bearer`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Sensitive::new(key.into()));
        self
    }

    /// Trusts this CA (or self-signed) certificate, PEM, in addition to the usual roots.
    pub fn ca_cert_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|_| Error::Config("the CA certificate is not PEM".into()))?;
        if certs.is_empty() {
            return Err(Error::Config("the CA file holds no PEM certificate".into()));
        }
        self.ca_certs.extend(certs);
        Ok(self)
    }

    /// Trusts the CA certificate(s) in this PEM file.
    pub fn ca_cert_file(self, path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let pem = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        self.ca_cert_pem(&pem)
    }

    /// Whole-call timeout (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Connection timeout (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Retries of idempotent calls (default: 3, from 100 ms up to 2 s).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The client.
    pub fn build(self) -> Result<Client, Error> {
        let base = self.base.trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&base)
            .map_err(|_| Error::Config("the vault address is not a URL".into()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_plain_http => {}
            _ => {
                return Err(Error::Config(
                    "the vault address must start with https:// (plain http only with danger_allow_plain_http)".into(),
                ));
            }
        }
        let mut http = reqwest::Client::builder()
            .use_rustls_tls()
            // A redirect would re-send bodies (subject ids, values) somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!self.allow_plain_http)
            .timeout(self.timeout)
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("vault-client/", env!("CARGO_PKG_VERSION")));
        for cert in self.ca_certs {
            http = http.add_root_certificate(cert);
        }
        let http = http
            .build()
            .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            api_key: self.api_key,
            retry: self.retry,
        })
    }
}

/// A client of one vault server. Cheap to clone; share it.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<Sensitive>,
    retry: RetryPolicy,
}

/// Whether a call may be sent again after a failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idempotent {
    Yes,
    No,
}

impl Client {
    /// Starts building a client for the server at `base` (e.g. `https://vault:8200`).
    pub fn builder(base: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: base.into(),
            api_key: None,
            ca_certs: Vec::new(),
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            allow_plain_http: false,
        }
    }

    /// A builder from `VAULT_ADDR`, `VAULT_API_KEY` and `VAULT_CACERT` (a PEM file),
    /// as other secret stores' tools read them.
    pub fn builder_from_env() -> Result<ClientBuilder, Error> {
        let addr = std::env::var("VAULT_ADDR").map_err(|_| {
            Error::Config("VAULT_ADDR is not set (e.g. https://127.0.0.1:8200)".into())
        })?;
        let mut builder = Client::builder(addr);
        if let Ok(key) = std::env::var("VAULT_API_KEY") {
            builder = builder.api_key(key);
        }
        if let Ok(path) = std::env::var("VAULT_CACERT") {
            builder = builder.ca_cert_file(path)?;
        }
        Ok(builder)
    }

    /// Tokenizes values, all-or-nothing; one token per item, in order. Retried only
    /// when every item is deterministic (sending it again gives the same tokens).
    pub async fn tokenize(&self, items: Vec<TokenizeItem>) -> Result<Vec<String>, Error> {
        let idempotent = if items.iter().all(|i| i.deterministic) {
            Idempotent::Yes
        } else {
            Idempotent::No
        };
        let body = TokenizeRequest { items };
        let answer: TokenizeResponse = self
            .call(Method::POST, "/v1/tokenize", Some(&body), idempotent)
            .await?
            .ok_or(Error::Decode { status: 204 })?;
        Ok(answer.tokens)
    }

    /// Tokenizes one value.
    pub async fn tokenize_one(
        &self,
        subject: impl Into<Sensitive>,
        field: impl Into<String>,
        value: impl Into<Sensitive>,
    ) -> Result<String, Error> {
        let mut tokens = self
            .tokenize(vec![TokenizeItem::new(subject, field, value)])
            .await?;
        tokens.pop().ok_or(Error::Decode { status: 200 })
    }

    /// Turns tokens back into values, for `purpose`; one result per token, in order.
    pub async fn detokenize(
        &self,
        tokens: &[String],
        purpose: &str,
    ) -> Result<Vec<DetokenizeResult>, Error> {
        let body = DetokenizeRequest {
            tokens: tokens.to_vec(),
            purpose: purpose.to_owned(),
        };
        let answer: DetokenizeResponse = self
            .call(Method::POST, "/v1/detokenize", Some(&body), Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })?;
        Ok(answer.results)
    }

    /// Replaces the value behind `token` (rectification); the token stays.
    pub async fn rectify(&self, token: &str, value: impl Into<Sensitive>) -> Result<(), Error> {
        let body = RectifyRequest {
            value: value.into(),
        };
        let path = token_path(token)?;
        self.call::<_, serde_json::Value>(Method::PUT, &path, Some(&body), Idempotent::Yes)
            .await?;
        Ok(())
    }

    /// Deletes the record behind `token`.
    pub async fn delete(&self, token: &str) -> Result<(), Error> {
        let path = token_path(token)?;
        self.call::<(), serde_json::Value>(Method::DELETE, &path, None, Idempotent::Yes)
            .await?;
        Ok(())
    }

    /// Erases a subject (right to be forgotten). Idempotent, and retried: if an
    /// earlier attempt's answer was lost, the subject is already gone and this
    /// receipt says `not_needed` (nothing links the id to the erased subject any more).
    pub async fn erase(&self, subject: impl Into<Sensitive>) -> Result<ErasureReceipt, Error> {
        let body = SubjectRequest {
            subject: subject.into(),
        };
        self.call(
            Method::POST,
            "/v1/subjects/erase",
            Some(&body),
            Idempotent::Yes,
        )
        .await?
        .ok_or(Error::Decode { status: 204 })
    }

    /// Exports everything the vault holds about a subject, following the pages the
    /// server answers in; the answer has no `next_cursor`.
    /// A page the server finds too large (413 `response_too_large`: large values) is
    /// asked again with half the limit, down to one item.
    pub async fn export(&self, subject: impl Into<Sensitive>) -> Result<SubjectExport, Error> {
        let subject = subject.into();
        let mut limit = None;
        let mut export = self.export_page_fitting(&subject, None, &mut limit).await?;
        while let Some(cursor) = export.next_cursor.take() {
            let page = self
                .export_page_fitting(&subject, Some(cursor.clone()), &mut limit)
                .await?;
            if page.subject_ref != export.subject_ref {
                return Err(Error::ExportChanged);
            }
            // A cursor that does not move would page forever.
            if page.next_cursor.as_ref() == Some(&cursor) {
                return Err(Error::Decode { status: 200 });
            }
            export.records.extend(page.records);
            export.access_log.extend(page.access_log);
            export.next_cursor = page.next_cursor;
        }
        Ok(export)
    }

    /// A page from `cursor`, halving `limit` (from the server's page size) while the
    /// server answers that the page is too large.
    async fn export_page_fitting(
        &self,
        subject: &Sensitive,
        cursor: Option<String>,
        limit: &mut Option<u32>,
    ) -> Result<SubjectExport, Error> {
        loop {
            match self
                .export_page(subject.clone(), cursor.clone(), *limit)
                .await
            {
                Err(e) if e.code() == Some("response_too_large") && *limit != Some(1) => {
                    *limit = Some(limit.map_or(EXPORT_PAGE_AFTER_413, |l| (l / 2).max(1)));
                }
                other => return other,
            }
        }
    }

    /// One page of a subject's export: from `cursor` (a previous page's
    /// `next_cursor`, `None` for the first), at most `limit` records and events.
    pub async fn export_page(
        &self,
        subject: impl Into<Sensitive>,
        cursor: Option<String>,
        limit: Option<u32>,
    ) -> Result<SubjectExport, Error> {
        let body = ExportRequest {
            subject: subject.into(),
            cursor,
            limit,
        };
        self.call(
            Method::POST,
            "/v1/subjects/export",
            Some(&body),
            Idempotent::Yes,
        )
        .await?
        .ok_or(Error::Decode { status: 204 })
    }

    /// Records a grant (`granted = true`) or withdrawal of a subject's consent to a
    /// declared purpose; it applies to the very next detokenization.
    pub async fn record_consent(
        &self,
        subject: impl Into<Sensitive>,
        purpose: &str,
        granted: bool,
        source: Option<&str>,
    ) -> Result<(), Error> {
        let body = ConsentRequest {
            subject: subject.into(),
            purpose: purpose.to_owned(),
            granted,
            source: source.map(Sensitive::from),
        };
        // Not retried: a repeated grant would add a second event to the history.
        self.call::<_, serde_json::Value>(
            Method::POST,
            "/v1/subjects/consent",
            Some(&body),
            Idempotent::No,
        )
        .await?;
        Ok(())
    }

    /// A subject's consents: current state and history per purpose.
    pub async fn consents(&self, subject: impl Into<Sensitive>) -> Result<SubjectConsents, Error> {
        let body = SubjectRequest {
            subject: subject.into(),
        };
        self.call(
            Method::POST,
            "/v1/subjects/consents",
            Some(&body),
            Idempotent::Yes,
        )
        .await?
        .ok_or(Error::Decode { status: 204 })
    }

    /// The declared purposes, their lawful bases and fields.
    pub async fn purposes(&self) -> Result<Purposes, Error> {
        self.call::<(), _>(Method::GET, "/v1/purposes", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// Up to `limit` (1–1000) audit events after sequence number `after`.
    pub async fn audit_events(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> Result<AuditEvents, Error> {
        let path = match after {
            Some(after) => format!("/v1/audit?after={after}&limit={limit}"),
            None => format!("/v1/audit?limit={limit}"),
        };
        self.call::<(), _>(Method::GET, &path, None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// Checks the whole audit trail; the answer names the first bad event.
    pub async fn verify_audit(&self) -> Result<AuditCheck, Error> {
        self.call::<(), _>(Method::POST, "/v1/audit/verify", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// [`verify_audit`](Self::verify_audit), and whether the trail still holds a
    /// head taken earlier (`anchor` in the answer).
    pub async fn verify_audit_against(&self, expected: ExpectedHead) -> Result<AuditCheck, Error> {
        let body = VerifyRequest {
            expected_head: Some(expected),
        };
        self.call(
            Method::POST,
            "/v1/audit/verify",
            Some(&body),
            Idempotent::Yes,
        )
        .await?
        .ok_or(Error::Decode { status: 204 })
    }

    /// The trail's end now, to keep outside the vault.
    pub async fn audit_head(&self) -> Result<AuditHead, Error> {
        self.call::<(), _>(Method::GET, "/v1/audit/head", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// What the vault holds about `subject`, without the values. Needs the
    /// `export` scope; recorded in the audit trail as a lookup.
    pub async fn lookup(
        &self,
        subject: impl Into<Sensitive>,
    ) -> Result<crate::api::SubjectOverview, Error> {
        let body = SubjectRequest {
            subject: subject.into(),
        };
        self.call(
            Method::POST,
            "/v1/subjects/lookup",
            Some(&body),
            Idempotent::Yes,
        )
        .await?
        .ok_or(Error::Decode { status: 204 })
    }

    /// The calling key's name, scopes and purposes.
    pub async fn whoami(&self) -> Result<crate::api::WhoAmI, Error> {
        self.call::<(), _>(Method::GET, "/v1/whoami", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// The data inventory (the record of processing): per field, records,
    /// subjects, the oldest record's day, retention and purposes; totals, erasures,
    /// pending purges, KEK versions and backups. Needs the `audit` scope.
    pub async fn inventory(&self) -> Result<crate::api::Inventory, Error> {
        self.call::<(), _>(Method::GET, "/v1/inventory", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// Starts a KEK rotation (or reports the one under way). Not retried: after a
    /// lost answer, a second attempt could start a second rotation.
    pub async fn rotate(&self) -> Result<KeyStatus, Error> {
        self.call::<(), _>(Method::POST, "/v1/admin/rotate", None, Idempotent::No)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// Key versions, subject keys per version, rotation and purge progress.
    pub async fn keys(&self) -> Result<KeyStatus, Error> {
        self.call::<(), _>(Method::GET, "/v1/admin/keys", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// Finishes the rotation under way and retires the old KEK versions. Retried
    /// safely: a second call retires nothing more.
    pub async fn retire_keys(&self) -> Result<KeyRetirement, Error> {
        self.call::<(), _>(Method::POST, "/v1/admin/keys/retire", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// Takes a backup now. Not retried: after a lost answer, a second attempt
    /// would take a second backup.
    pub async fn create_backup(&self) -> Result<BackupCreated, Error> {
        self.call::<(), _>(Method::POST, "/v1/admin/backups", None, Idempotent::No)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// The kept backups, and how long erased subjects live on in them.
    pub async fn backups(&self) -> Result<Backups, Error> {
        self.call::<(), _>(Method::GET, "/v1/admin/backups", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// Whether the server is up (`/healthz`) and ready (`/readyz`).
    pub async fn health(&self) -> Result<(bool, bool), Error> {
        let live = self.get_status("/healthz").await?;
        let ready = self.get_status("/readyz").await?;
        Ok((live.is_success(), ready.is_success()))
    }

    /// The OpenAPI document of the server's API.
    pub async fn openapi(&self) -> Result<serde_json::Value, Error> {
        self.call::<(), _>(Method::GET, "/openapi.json", None, Idempotent::Yes)
            .await?
            .ok_or(Error::Decode { status: 204 })
    }

    /// The Prometheus metrics text.
    pub async fn metrics(&self) -> Result<String, Error> {
        let response = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            return Err(Error::Decode {
                status: status.as_u16(),
            });
        }
        response.text().await.map_err(transport)
    }

    async fn get_status(&self, path: &str) -> Result<StatusCode, Error> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(transport)?;
        Ok(response.status())
    }

    /// Sends one call, retrying idempotent ones; `None` for an answer without body.
    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        idempotent: Idempotent,
    ) -> Result<Option<R>, Error> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0u32;
        loop {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(key) = &self.api_key {
                request = request.bearer_auth(key.expose());
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let retries_left = idempotent == Idempotent::Yes && attempt < self.retry.max_retries;
            let outcome = match request.send().await {
                Err(e) => {
                    if retries_left && (e.is_connect() || e.is_timeout() || e.is_request()) {
                        Retry::After(self.retry.backoff(attempt))
                    } else {
                        Retry::No(Err(Error::Transport(e.without_url())))
                    }
                }
                Ok(response) => {
                    let status = response.status();
                    // A 503 that is the server's request timeout would only time out
                    // again, with the first attempt's work still running.
                    let timed_out = status == StatusCode::SERVICE_UNAVAILABLE
                        && response
                            .headers()
                            .get("x-vault-error")
                            .is_some_and(|v| v == "timeout");
                    let retry_after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let retryable = matches!(status.as_u16(), 429 | 502 | 503 | 504)
                        && !timed_out
                        && retry_after.is_none_or(|wait| wait <= self.retry.max_backoff);
                    if retryable && retries_left {
                        let backoff = self.retry.backoff(attempt);
                        Retry::After(retry_after.map_or(backoff, |wait| wait.max(backoff)))
                    } else if status == StatusCode::NO_CONTENT {
                        Retry::No(Ok(None))
                    } else if status.is_success() {
                        let parsed = response.json::<R>().await.map_err(|_| Error::Decode {
                            status: status.as_u16(),
                        });
                        Retry::No(parsed.map(Some))
                    } else if status == StatusCode::NOT_FOUND
                        && method == Method::DELETE
                        && attempt > 0
                    {
                        // An earlier attempt's answer was lost after it deleted.
                        Retry::No(Ok(None))
                    } else {
                        Retry::No(Err(answer_error(response).await))
                    }
                }
            };
            match outcome {
                Retry::No(result) => return result,
                Retry::After(wait) => {
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// The page size asked for after the server's own page size was too large.
const EXPORT_PAGE_AFTER_413: u32 = 64;

enum Retry<T> {
    No(Result<T, Error>),
    After(Duration),
}

fn transport(e: reqwest::Error) -> Error {
    Error::Transport(e.without_url())
}

/// The path of a token's resource. A token is `tok_` + base32, digits, or an
/// opaque token at a domain (`tok_…@example.net`, its `@` escaped); anything else
/// is refused here rather than put into a URL.
fn token_path(token: &str) -> Result<String, Error> {
    let (local, domain) = match token.split_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (token, None),
    };
    let word = |s: &str, extra: u8| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == extra)
    };
    // Only the vault's e-mail form: an address that is not a token (a value) must
    // never go into a URL.
    let ok = token.len() <= 96
        && word(local, b'_')
        && domain.is_none_or(|d| d == "example.net" && local.starts_with("tok_"));
    match (ok, domain) {
        (true, None) => Ok(format!("/v1/tokens/{token}")),
        (true, Some(domain)) => Ok(format!("/v1/tokens/{local}%40{domain}")),
        (false, _) => Err(Error::InvalidArgument("not a token")),
    }
}

async fn answer_error(response: reqwest::Response) -> Error {
    let status = response.status().as_u16();
    match response.json::<ErrorBody>().await {
        Ok(body) => Error::Api {
            status,
            code: body.error.code,
            message: body.error.message,
            item: body.error.item,
        },
        Err(_) => Error::Decode { status },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::default();
        assert!(policy.backoff(0) <= Duration::from_millis(100));
        assert!(policy.backoff(0) >= Duration::from_millis(50));
        assert!(policy.backoff(10) <= Duration::from_secs(2));
        assert!(policy.backoff(10) >= Duration::from_secs(1));
    }

    #[test]
    fn only_token_shaped_text_goes_into_a_path() {
        assert!(token_path("tok_abcdefghijklmnopqrstuvwxyz234567").is_ok());
        assert!(token_path("alice@example.com").is_err());
        assert!(token_path("alice@example.net").is_err());
        assert!(token_path("tok_x@example.org").is_err());
        assert_eq!(
            token_path("tok_abc@example.net").ok().as_deref(),
            Some("/v1/tokens/tok_abc%40example.net")
        );
        assert!(token_path("4111000011112222").is_ok());
        assert!(token_path("../admin/keys").is_err());
        assert!(token_path("").is_err());
    }
}
