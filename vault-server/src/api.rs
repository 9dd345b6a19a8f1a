//! The HTTP API (v1): routes, the middleware around them, and the handlers.
//!
//! Every request passes, outermost first:
//! 1. `observe`: request id, access log line, metrics. It sees only the route
//!    template, method, status, key name and error code, never a body or a path
//!    parameter.
//! 2. `guard`: API key and scope (401/403), the concurrency limit (429) and the
//!    request timeout (503).
//! 3. the handler: parses the body (413 over the body limit, 400 when malformed),
//!    makes the vault call (where it runs is the `work` module's to decide) and maps
//!    the outcome.
//!
//! Subject ids and values travel only in bodies; tokens (opaque) may be in paths.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use vault_client::api::{
    self, AuditCheck, AuditEventInfo, AuditEvents, Consent, ConsentChange, ConsentRequest,
    DetokenizeRequest, DetokenizeResponse, DetokenizeResult, ErasureReceipt, ExportRequest,
    ExportedRecord, ItemError, KekVersion, KeyStatus, Purge, PurposeInfo, Purposes, RectifyRequest,
    Sensitive, SubjectConsents, SubjectExport, SubjectRequest, TokenizeRequest, TokenizeResponse,
};
use vault_core::Vault;

use crate::access_log;
use crate::auth::{self, ApiKey, ApiKeys, Scope};
use crate::config::LimitsConfig;
use crate::error::{ApiError, Cause, ErrorCode};
use crate::metrics::{self, Metrics};
use crate::request_id::{self, RequestId, request_id};
use crate::throttle::FailedAuth;
use crate::work::{Permit, Work};

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    vault: Arc<Vault>,
    keys: ApiKeys,
    limits: LimitsConfig,
    permits: Arc<Semaphore>,
    metrics: Metrics,
    ready: AtomicBool,
    failed_auth: FailedAuth,
    /// The key gauges of the last scrape, and when they were rendered.
    key_gauges: tokio::sync::Mutex<Option<(Instant, String)>>,
    /// `/openapi.json`, for a key holder (the purposes named) and for anyone:
    /// this server's limits and purposes do not change while it runs.
    openapi: Bytes,
    openapi_public: Bytes,
}

impl AppState {
    /// State over an open vault.
    pub fn new(vault: Arc<Vault>, keys: ApiKeys, limits: LimitsConfig) -> Arc<AppState> {
        let bytes = |document: serde_json::Value| Bytes::from(document.to_string());
        let openapi = bytes(crate::openapi::for_key_holders(&limits, &vault.purposes()));
        let openapi_public = bytes(crate::openapi::public(&limits));
        Arc::new(AppState {
            openapi,
            openapi_public,
            vault,
            keys,
            limits,
            permits: Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            metrics: Metrics::default(),
            ready: AtomicBool::new(true),
            failed_auth: FailedAuth::new(limits.failed_auth_per_sec, limits.failed_auth_burst),
            key_gauges: tokio::sync::Mutex::new(None),
        })
    }

    /// Marks the server as shutting down: `/readyz` answers 503 from now on.
    pub fn stop_accepting(&self) {
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// Every route, as its template: the only route names that reach logs and metrics.
pub const ROUTES: [&str; 20] = [
    "/v1/tokenize",
    "/v1/detokenize",
    "/v1/tokens/{token}",
    "/v1/subjects/erase",
    "/v1/subjects/export",
    "/v1/subjects/consent",
    "/v1/subjects/consents",
    "/v1/subjects/lookup",
    "/v1/whoami",
    "/v1/purposes",
    "/v1/audit",
    "/v1/audit/verify",
    "/v1/audit/head",
    "/v1/inventory",
    "/v1/admin/rotate",
    "/v1/admin/keys",
    "/v1/admin/keys/retire",
    "/v1/admin/backups",
    "/healthz",
    "/readyz",
];
const OPENAPI_ROUTE: &str = "/openapi.json";
/// The privacy desk's page and its files: public (they hold no data; the page asks
/// for an API key and keeps it in memory).
const DESK_ROUTES: [&str; 3] = ["/desk", "/desk/", "/desk/{file}"];

/// The application: routes, middleware and state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/tokenize", post(tokenize))
        .route("/v1/detokenize", post(detokenize))
        .route("/v1/tokens/{token}", put(rectify).delete(delete_token))
        .route("/v1/subjects/erase", post(erase))
        .route("/v1/subjects/export", post(export))
        .route("/v1/subjects/consent", post(record_consent))
        .route("/v1/subjects/consents", post(consents))
        .route("/v1/subjects/lookup", post(lookup))
        .route("/v1/whoami", get(whoami))
        .route("/v1/purposes", get(purposes))
        .route("/desk", get(crate::desk::redirect))
        .route("/desk/", get(crate::desk::index))
        .route("/desk/{file}", get(crate::desk::file))
        .route("/v1/audit", get(audit_events))
        .route("/v1/audit/verify", post(verify_audit))
        .route("/v1/audit/head", get(audit_head))
        .route("/v1/inventory", get(inventory))
        .route("/v1/admin/rotate", post(rotate))
        .route("/v1/admin/keys", get(keys))
        .route("/v1/admin/keys/retire", post(retire_keys))
        .route("/v1/admin/backups", post(create_backup).get(list_backups))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route(OPENAPI_ROUTE, get(openapi))
        .fallback(|| async { ApiError::not_found_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

// ---------------------------------------------------------------------------------
// Middleware

/// The route template of a request, from the fixed list, or `unmatched`.
fn route_of(req: &Request) -> &'static str {
    let Some(path) = req.extensions().get::<MatchedPath>() else {
        return "unmatched";
    };
    ROUTES
        .into_iter()
        .chain([OPENAPI_ROUTE])
        .chain(DESK_ROUTES)
        .find(|r| *r == path.as_str())
        .unwrap_or("unmatched")
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

/// The API key that made the request, whose name goes in the access log.
#[derive(Debug, Clone)]
struct Caller(Arc<ApiKey>);

/// The purpose of a detokenize call, for the access log.
#[derive(Debug, Clone)]
struct PurposeNote(String);

async fn observe(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(&req);
    let method = method_label(req.method());
    let request_id = RequestId::new();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let _in_flight = state.metrics.in_flight();
    // Every event logged while serving the request, also on the blocking pool,
    // carries its id.
    // The guard is called here rather than as a layer of its own: each layer costs
    // every request a boxed service and a boxed future.
    let mut response = request_id::scope(request_id, guard(&state, route, client, req, next)).await;
    let took = started.elapsed();
    let status = response.status().as_u16();
    state.metrics.record(route, method, status, took);

    let extensions = response.extensions();
    if let Some(cause) = extensions.get::<Cause>() {
        tracing::error!(
            target: "vault_server::error",
            request_id = %request_id,
            error = %cause.error,
            "{}",
            cause.what
        );
    }
    let key = extensions.get::<Caller>();
    let purpose = extensions.get::<PurposeNote>();
    access_log::request(&access_log::RequestLine {
        request_id: request_id.as_str(),
        client,
        method,
        route,
        status,
        key: key.map_or("-", |c| c.0.name.as_str()),
        purpose: purpose.map_or("-", |p| p.0.as_str()),
        error: extensions.get::<ErrorCode>().map_or("-", |c| c.0),
        latency_us: u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
    });
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(request_id.as_str()) {
        headers.insert("x-request-id", value);
    }
    // Answers carry personal data: no cache may keep them.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a route needs from its caller.
enum Access {
    /// Health, readiness, API description: no key, no concurrency permit.
    Public,
    /// A valid key, with this scope when the method is one the route serves.
    Key(Option<Scope>),
}

fn access(route: &str, method: &Method) -> Access {
    let scope = match (route, method) {
        ("/v1/tokenize", &Method::POST) => Scope::Tokenize,
        ("/v1/detokenize", &Method::POST) => Scope::Detokenize,
        ("/v1/tokens/{token}", &Method::PUT) => Scope::Rectify,
        ("/v1/tokens/{token}", &Method::DELETE) => Scope::Delete,
        ("/v1/subjects/erase", &Method::POST) => Scope::Erase,
        ("/v1/subjects/export" | "/v1/subjects/lookup", &Method::POST) => Scope::Export,
        ("/v1/subjects/consent" | "/v1/subjects/consents", &Method::POST) => Scope::Consent,
        ("/v1/audit" | "/v1/audit/head" | "/v1/inventory", &Method::GET)
        | ("/v1/audit/verify", &Method::POST) => Scope::Audit,
        (
            "/v1/admin/rotate" | "/v1/admin/keys" | "/v1/admin/keys/retire" | "/v1/admin/backups",
            _,
        ) => Scope::Admin,
        ("/healthz" | "/readyz" | OPENAPI_ROUTE | "/desk" | "/desk/" | "/desk/{file}", _) => {
            return Access::Public;
        }
        _ => return Access::Key(None),
    };
    Access::Key(Some(scope))
}

fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// Authentication (throttled per client address when it fails), scope, the key's
/// rate limit, the concurrency permit and the request timeout, inside [`observe`].
async fn guard(
    state: &AppState,
    route: &str,
    client: Option<IpAddr>,
    mut req: Request,
    next: Next,
) -> Response {
    let scope = match access(route, req.method()) {
        // The document is public; a caller who presents a key has it checked like
        // on any route, and gets this deployment's own (its purposes named).
        Access::Public
            if route == OPENAPI_ROUTE && req.headers().contains_key(header::AUTHORIZATION) =>
        {
            None
        }
        Access::Public => return next.run(req).await,
        Access::Key(scope) => scope,
    };
    let Some(key) = bearer(&req).and_then(|presented| state.keys.find(presented)) else {
        // Only failures are throttled: a good key behind the same address (a
        // proxy, a NAT) is served while another caller there keeps failing. A
        // request that presents no credential guesses nothing and costs no hash:
        // it is refused without being counted.
        let presented = req.headers().contains_key(header::AUTHORIZATION);
        if let Some(ip) = client.filter(|_| presented) {
            if let Some(wait) = state.failed_auth.blocked(ip) {
                return ApiError::rate_limited(
                    wait,
                    "too many failed authentications from this address",
                )
                .into_response();
            }
            state.failed_auth.failed(ip);
        }
        return ApiError::unauthenticated().into_response();
    };
    let key = Arc::clone(key);
    let caller = Caller(Arc::clone(&key));
    let refused = match scope {
        Some(scope) if !key.allows(scope) => Some(ApiError::forbidden(scope.name())),
        // A batch route charges its items once, in its handler (a batch above
        // the burst then waits for a full bucket rather than failing forever).
        Some(Scope::Tokenize | Scope::Detokenize) => None,
        _ => charge(&key, 1).err(),
    };
    let mut response = match refused {
        Some(error) => error.into_response(),
        None => match state.permits.clone().try_acquire_owned() {
            Err(_) => ApiError::overloaded().into_response(),
            Ok(permit) => {
                // The vault call holds a clone: a request that times out keeps its
                // slot until its call on the blocking pool has really ended.
                let permit = Permit(Arc::new(permit));
                req.extensions_mut().insert(permit.clone());
                req.extensions_mut().insert(key);
                let timeout = Duration::from_millis(state.limits.request_timeout_ms);
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => ApiError::timeout().into_response(),
                }
            }
        },
    };
    response.extensions_mut().insert(caller);
    response
}

/// Takes `cost` from the key's rate limit, if it has one.
fn charge(key: &ApiKey, cost: usize) -> Result<(), ApiError> {
    match &key.limit {
        Some(limit) => limit
            .take(cost as u64)
            .map_err(|wait| ApiError::rate_limited(wait, "this API key is over its rate limit")),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------
// Body parsing

/// A request body's bytes, or the API's error for a body over the limit or cut off.
struct BodyBytes(Bytes);

impl FromRequest<Arc<AppState>> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large(state.limits.max_body_bytes)
            } else {
                ApiError::malformed("the request body could not be read")
            }
        })?;
        Ok(BodyBytes(bytes))
    }
}

/// A JSON request body, with errors in the API's format and no input quoted back.
struct JsonBody<T>(T);

/// Bodies above this many bytes are parsed on the blocking pool.
const LARGE_BODY: usize = 64 * 1024;

impl<T: DeserializeOwned + ItemsProbe + Send + 'static> FromRequest<Arc<AppState>> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let BodyBytes(bytes) = BodyBytes::from_request(req, state).await?;
        let bytes_len = bytes.len();
        let parse = move || parse_json::<T>(&bytes).map(JsonBody);
        // Parsing megabytes takes milliseconds: not on an async worker.
        if bytes_len > LARGE_BODY {
            tokio::task::spawn_blocking(parse)
                .await
                .unwrap_or_else(|_| Err(ApiError::internal()))
        } else {
            parse()
        }
    }
}

/// A request body as `T`, or the API's error for it.
pub(crate) fn parse_json<T: DeserializeOwned + ItemsProbe>(bytes: &[u8]) -> Result<T, ApiError> {
    object_body(bytes)?;
    serde_json::from_slice::<T>(bytes).map_err(|e| describe_json_error(&e, T::failing_item(bytes)))
}

/// Every body is a JSON object: serde would also fill a struct from an array
/// (`["alice"]` as `{"subject": "alice"}`), which the document does not allow.
fn object_body(bytes: &[u8]) -> Result<(), ApiError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::malformed(
            "the body must be a JSON object of the route's shape",
        )),
    }
}

/// serde's messages quote the input ("invalid type: string \"alice@…\""): only the
/// error's category and position go back to the client.
fn describe_json_error(e: &serde_json::Error, item: Option<usize>) -> ApiError {
    let at = format!("line {}, column {}", e.line(), e.column());
    match e.classify() {
        serde_json::error::Category::Data => match item {
            Some(i) => ApiError::malformed(format!(
                "item {i}: does not match the expected shape (unknown or missing fields, or wrong types) at {at}"
            ))
            .at(Some(i)),
            None => ApiError::malformed(format!(
                "the body does not match the expected shape for this route (unknown or missing fields, or wrong types) at {at}"
            )),
        },
        _ => ApiError::malformed(format!("the body is not valid JSON ({at})")),
    }
}

/// For batch bodies: which item of a body that failed to parse is at fault.
pub(crate) trait ItemsProbe {
    fn failing_item(_body: &[u8]) -> Option<usize> {
        None
    }
}

/// The index of the first element of the array under `key` that does not parse as `I`.
fn first_bad_item<I: DeserializeOwned>(body: &[u8], key: &str) -> Option<usize> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let items = value.get(key)?.as_array()?;
    items
        .iter()
        .position(|item| serde_json::from_value::<I>(item.clone()).is_err())
}

impl ItemsProbe for TokenizeRequest {
    fn failing_item(body: &[u8]) -> Option<usize> {
        first_bad_item::<vault_client::api::TokenizeItem>(body, "items")
    }
}

impl ItemsProbe for DetokenizeRequest {
    fn failing_item(body: &[u8]) -> Option<usize> {
        first_bad_item::<String>(body, "tokens")
    }
}

impl ItemsProbe for RectifyRequest {}
impl ItemsProbe for ConsentRequest {}
impl ItemsProbe for SubjectRequest {}
impl ItemsProbe for ExportRequest {}
impl ItemsProbe for api::VerifyRequest {}

/// A request's vault call: the vault, the request's concurrency slot and API key.
impl FromRequestParts<Arc<AppState>> for Work {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        Ok(Work {
            vault: state.vault.clone(),
            permit: parts.extensions.get::<Permit>().cloned(),
            key: parts.extensions.get::<Arc<ApiKey>>().cloned(),
        })
    }
}

/// The `{token}` of a path; a path that does not decode is an invalid token.
struct TokenPath(String);

impl FromRequestParts<Arc<AppState>> for TokenPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(token)) => Ok(TokenPath(token)),
            Err(_) => Err(ApiError::invalid_token()),
        }
    }
}

// ---------------------------------------------------------------------------------
// Handlers

async fn tokenize(
    work: Work,
    axum::Extension(key): axum::Extension<Arc<ApiKey>>,
    JsonBody(body): JsonBody<TokenizeRequest>,
) -> Result<Json<TokenizeResponse>, ApiError> {
    if body.items.iter().any(|item| item.deterministic) && !key.allows(Scope::TokenizeDeterministic)
    {
        return Err(ApiError::forbidden(Scope::TokenizeDeterministic.name()));
    }
    // A batch costs its items (the door charged nothing for this route).
    charge(&key, body.items.len().max(1))?;
    let tokens = work.tokenize(body.items).await?;
    Ok(Json(TokenizeResponse {
        tokens: tokens.iter().map(ToString::to_string).collect(),
    }))
}

/// A well-formed purpose the key may use (400 `invalid_purpose`, 403
/// `purpose_not_allowed`); whether it is declared is the vault's to say.
fn check_purpose(key: &ApiKey, purpose: &str) -> Result<(), ApiError> {
    if !auth::valid_purpose(purpose) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_purpose",
            "purpose must be 1-64 of a-z, 0-9, '_', '-', '.'",
        ));
    }
    if !key.purposes.allows(purpose) {
        return Err(ApiError::purpose_not_allowed());
    }
    Ok(())
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    work: Work,
    axum::Extension(key): axum::Extension<Arc<ApiKey>>,
    JsonBody(body): JsonBody<DetokenizeRequest>,
) -> Result<Response, ApiError> {
    let state_limits = state.limits;
    check_purpose(&key, &body.purpose)?;
    // A batch costs its items (the door charged nothing for this route).
    charge(&key, body.tokens.len().max(1))?;
    let DetokenizeRequest { tokens, purpose } = body;
    let body_tokens = tokens.len();
    // The batch limit counts what was asked, repeats included.
    if body_tokens > state_limits.max_batch {
        return Err(ApiError::from_vault(vault_core::Error::InvalidInput(
            vault_core::InputError {
                item: None,
                argument: vault_core::Argument::Batch,
                problem: vault_core::Problem::TooLong {
                    limit: state_limits.max_batch,
                },
            },
        )));
    }
    // A token asked for more than once is read, and audited, once; every position
    // is answered.
    // `slot[i]`: which distinct token position `i` asks for; `unique_at`: where
    // each distinct token first appears.
    let mut first_at = std::collections::HashMap::with_capacity(tokens.len());
    let mut unique_at: Vec<usize> = Vec::with_capacity(tokens.len());
    let slot: Vec<usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            *first_at.entry(token.as_str()).or_insert_with(|| {
                unique_at.push(i);
                unique_at.len() - 1
            })
        })
        .collect();
    drop(first_at);
    let unique: Vec<String> = if unique_at.len() == tokens.len() {
        tokens
    } else {
        unique_at.iter().map(|&i| tokens[i].clone()).collect()
    };
    let actor = key.clone();
    let call = move |vault: &Vault| {
        let mut access = vault_core::Access::new(&purpose, &actor.name);
        if actor.masked {
            access = access.masked();
        }
        let outcomes = vault.detokenize_for(&unique, &access)?;
        Ok((unique, purpose, outcomes))
    };
    // An error naming an item names it as the request does, repeats included.
    let (unique, purpose, outcomes) = work
        .read(body_tokens, call)
        .await
        .map_err(|e| e.at_position(&unique_at))?;
    // Each distinct token's answer, before it is repeated at its positions.
    let mut answers: Vec<DetokenizeResult> = Vec::with_capacity(unique.len());
    for ((token, outcome), &i) in unique.into_iter().zip(outcomes).zip(&unique_at) {
        let result = match outcome {
            Ok(record) => {
                match String::from_utf8(std::mem::take(&mut *record.value.into_bytes())) {
                    Ok(value) => DetokenizeResult::Value {
                        token,
                        field: record.field,
                        value: Sensitive::new(value),
                        masked: record.masked,
                    },
                    Err(_) => item_error(token, ItemError::NotText),
                }
            }
            Err(vault_core::Error::NotFound) => item_error(token, ItemError::NotFound),
            Err(vault_core::Error::Erased) => item_error(token, ItemError::Erased),
            Err(vault_core::Error::Forbidden) => item_error(token, ItemError::Forbidden),
            Err(vault_core::Error::NoConsent) => item_error(token, ItemError::NoConsent),
            Err(vault_core::Error::Expired) => item_error(token, ItemError::Expired),
            Err(vault_core::Error::Integrity) => {
                tracing::error!(request_id = %request_id(), item = i, "a detokenized record failed authentication");
                item_error(token, ItemError::Integrity)
            }
            Err(other) => return Err(ApiError::from_vault(other)),
        };
        answers.push(result);
    }
    // The answer's size, before it is built: tokens, fields and values, and a
    // little for the JSON around each.
    let size: usize = slot
        .iter()
        .map(|&at| {
            128 + match &answers[at] {
                DetokenizeResult::Value {
                    token,
                    field,
                    value,
                    ..
                } => token.len() + field.len() + value.expose().len() * 2,
                DetokenizeResult::Error { token, .. } => token.len(),
            }
        })
        .sum();
    if size > state_limits.max_response_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "response_too_large",
            format!(
                "the answer would exceed {} bytes (limits.max_response_bytes): ask for fewer tokens at a time",
                state_limits.max_response_bytes
            ),
        ));
    }
    // Without repeats (the usual call), the answers are the results, uncopied.
    let results: Vec<DetokenizeResult> = if answers.len() == slot.len() {
        answers
    } else {
        slot.iter().map(|&at| answers[at].clone()).collect()
    };
    let mut response = Json(DetokenizeResponse { results }).into_response();
    // The vault accepted it, so it is a declared purpose: vocabulary, not caller text.
    response.extensions_mut().insert(PurposeNote(purpose));
    Ok(response)
}

async fn record_consent(
    work: Work,
    axum::Extension(key): axum::Extension<Arc<ApiKey>>,
    JsonBody(body): JsonBody<ConsentRequest>,
) -> Result<StatusCode, ApiError> {
    // A key records consent only for its own purposes.
    check_purpose(&key, &body.purpose)?;
    work.run_as(move |actor| {
        actor.record_consent(
            body.subject.expose(),
            &body.purpose,
            body.granted,
            body.source.as_ref().map(Sensitive::expose),
        )
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

fn consent_answer(status: vault_core::ConsentStatus) -> Consent {
    Consent {
        purpose: status.purpose,
        granted: status.granted,
        since: status.since,
        history: status
            .history
            .into_iter()
            .map(|e| ConsentChange {
                granted: e.granted,
                at: e.at,
                source: e.source.map(Sensitive::new),
            })
            .collect(),
    }
}

async fn consents(
    work: Work,
    JsonBody(body): JsonBody<SubjectRequest>,
) -> Result<Json<SubjectConsents>, ApiError> {
    let subject = body.subject;
    let (subject, consents) = work
        .run_as(move |actor| {
            let consents = actor.consents(subject.expose())?;
            Ok((subject, consents))
        })
        .await?;
    Ok(Json(SubjectConsents {
        subject,
        consents: consents.into_iter().map(consent_answer).collect(),
    }))
}

/// `after` and `limit` from the query string (`/v1/audit?after=SEQ&limit=N`).
pub(crate) fn audit_query(query: Option<&str>) -> Result<(Option<u64>, usize), ApiError> {
    let bad = || ApiError::malformed("the query takes after=SEQ and limit=1..1000");
    let (mut after, mut limit) = (None, 100);
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("after", v)) => after = Some(v.parse::<u64>().map_err(|_| bad())?),
            Some(("limit", v)) => {
                limit = v.parse::<usize>().map_err(|_| bad())?;
                if !(1..=1000).contains(&limit) {
                    return Err(bad());
                }
            }
            _ => return Err(bad()),
        }
    }
    Ok((after, limit))
}

async fn audit_events(work: Work, uri: axum::http::Uri) -> Result<Json<AuditEvents>, ApiError> {
    let (after, limit) = audit_query(uri.query())?;
    let events = work
        .run(move |vault| vault.audit_events(after, limit))
        .await?;
    Ok(Json(AuditEvents {
        events: events.into_iter().map(audit_event_info).collect(),
    }))
}

fn audit_event_info(e: vault_core::AuditEvent) -> AuditEventInfo {
    AuditEventInfo {
        seq: e.seq,
        at: e.at,
        actor: e.actor,
        action: e.action.name().to_owned(),
        purpose: e.purpose,
        outcome: e.outcome.name().to_owned(),
        records: e.records,
        subject: e
            .subject
            .map(|r| r.iter().map(|b| format!("{b:02x}")).collect()),
    }
}

async fn verify_audit(
    work: Work,
    BodyBytes(body): BodyBytes,
) -> Result<Json<AuditCheck>, ApiError> {
    // No body: the trail alone. A body may name a head taken earlier.
    let request: api::VerifyRequest = if body.is_empty() {
        api::VerifyRequest::default()
    } else {
        parse_json(&body)?
    };
    let expected = match request.expected_head {
        None => None,
        Some(head) => Some(vault_core::AuditHead {
            seq: head.seq,
            mac: auth::decode_hex32(&head.mac)
                .ok_or_else(|| ApiError::malformed("expected_head.mac must be 64 hex digits"))?,
        }),
    };
    let check = work
        .run(move |vault| match &expected {
            Some(head) => vault.verify_audit_against(head),
            None => vault.verify_audit(),
        })
        .await?;
    if !check.ok {
        tracing::error!(request_id = %request_id(), first_bad = ?check.first_bad, "the audit trail failed verification");
    }
    Ok(Json(AuditCheck {
        ok: check.ok,
        events: check.events,
        first_bad: check.first_bad,
        problem: check.problem,
        anchor: check.anchor.map(|a| {
            match a {
                vault_core::AnchorCheck::Contained => "contained",
                vault_core::AnchorCheck::Truncated => "truncated",
                vault_core::AnchorCheck::RolledBack => "rolled_back",
                _ => "pruned",
            }
            .to_owned()
        }),
    }))
}

async fn audit_head(work: Work) -> Result<Json<api::AuditHead>, ApiError> {
    let head = work.run(|vault| vault.audit_head()).await?;
    Ok(Json(api::AuditHead {
        seq: head.map(|h| h.seq),
        mac: head.map(|h| h.mac.iter().map(|b| format!("{b:02x}")).collect()),
    }))
}

async fn inventory(work: Work) -> Result<Json<api::Inventory>, ApiError> {
    let inventory = work.run(|vault| vault.inventory()).await?;
    Ok(Json(api::Inventory {
        taken_at: inventory.taken_at,
        records: inventory.records,
        subjects: inventory.subjects,
        erased_subjects: inventory.erased_subjects,
        pending_purges: inventory.pending_purges,
        active_kek_version: inventory.active_kek_version,
        kek_versions: inventory.kek_versions,
        backups: inventory.backups.map(|b| api::InventoryBackups {
            kept: b.kept,
            latest_at: b.latest_at,
            holding_erased: b.holding_erased,
            erasures_in_backups_until: b.erasures_in_backups_until,
        }),
        fields: inventory
            .fields
            .into_iter()
            .map(|f| api::FieldInventory {
                records: f.records,
                subjects: f.subjects,
                oldest_record_day: f.oldest_record_day,
                retention_seconds: f.retention.map(|d| d.as_secs()),
                purposes: f
                    .purposes
                    .into_iter()
                    .map(|p| api::FieldPurpose {
                        purpose: p.purpose,
                        basis: p.basis.name().to_owned(),
                        masked: p.masked,
                    })
                    .collect(),
                field: f.field,
            })
            .collect(),
    }))
}

async fn whoami(work: Work) -> Result<Json<api::WhoAmI>, ApiError> {
    let key = work.key.ok_or_else(ApiError::unauthenticated)?;
    Ok(Json(api::WhoAmI {
        name: key.name.clone(),
        scopes: key.scopes.iter().map(|s| s.name().to_owned()).collect(),
        purposes: match &key.purposes {
            auth::Purposes::Any => None,
            auth::Purposes::Only(set) => Some(set.iter().cloned().collect()),
        },
        masked: key.masked,
    }))
}

async fn lookup(
    State(state): State<Arc<AppState>>,
    work: Work,
    JsonBody(body): JsonBody<SubjectRequest>,
) -> Result<Json<api::SubjectOverview>, ApiError> {
    let limit = state.limits.export_page;
    let subject = body.subject;
    let (subject, overview) = work
        .run_as(move |actor| {
            let overview = actor.overview(subject.expose(), limit)?;
            Ok((subject, overview))
        })
        .await?;
    Ok(Json(api::SubjectOverview {
        subject,
        subject_ref: overview.subject_ref.map(|r| r.to_string()),
        records: overview
            .records
            .into_iter()
            .map(|r| api::RecordInfo {
                token: r.token.to_string(),
                field: r.field,
                created_at: r.created_at,
            })
            .collect(),
        more_records: overview.more_records,
        consents: overview.consents.into_iter().map(consent_answer).collect(),
        access_log: overview
            .access_log
            .into_iter()
            .map(audit_event_info)
            .collect(),
        more_events: overview.more_events,
        backups: overview.backups,
    }))
}

async fn purposes(work: Work) -> Result<Json<Purposes>, ApiError> {
    let purposes = work.run(|vault| Ok(vault.purposes())).await?;
    Ok(Json(Purposes {
        purposes: purposes
            .iter()
            .map(|p| PurposeInfo {
                name: p.name().to_owned(),
                basis: p.basis().name().to_owned(),
                fields: p.field_names().map(|f| f.iter().cloned().collect()),
                masked: p.is_masked(),
            })
            .collect(),
    }))
}

fn item_error(token: String, error: ItemError) -> DetokenizeResult {
    DetokenizeResult::Error { token, error }
}

async fn rectify(
    work: Work,
    TokenPath(token): TokenPath,
    JsonBody(body): JsonBody<RectifyRequest>,
) -> Result<StatusCode, ApiError> {
    work.run_as(move |actor| actor.rectify(&token, body.value.expose().as_bytes()))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_token(work: Work, TokenPath(token): TokenPath) -> Result<StatusCode, ApiError> {
    work.run_as(move |actor| actor.delete(&token)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn erase(
    work: Work,
    JsonBody(body): JsonBody<SubjectRequest>,
) -> Result<Json<ErasureReceipt>, ApiError> {
    let receipt = work
        .run_as(move |actor| actor.erase(body.subject.expose()))
        .await?;
    let purge = match receipt.purge {
        vault_core::PurgeState::Done { at } => Purge::Done { at },
        vault_core::PurgeState::Pending { due_by } => Purge::Pending { due_by },
        vault_core::PurgeState::NotNeeded => Purge::NotNeeded,
        other => {
            // The key is destroyed either way; only the receipt cannot say how.
            tracing::error!(request_id = %request_id(), state = ?other, "an erasure's purge state has no API form");
            return Err(ApiError::internal());
        }
    };
    Ok(Json(ErasureReceipt {
        subject_ref: receipt.subject_ref.map(|r| r.to_string()),
        erased_at: receipt.erased_at,
        records: receipt.records,
        purge,
        audit_event: receipt.audit_event,
        backups: receipt.backups,
        in_backups_until: receipt.in_backups_until,
    }))
}

async fn export(
    State(state): State<Arc<AppState>>,
    work: Work,
    JsonBody(body): JsonBody<ExportRequest>,
) -> Result<Json<SubjectExport>, ApiError> {
    let ExportRequest {
        subject,
        cursor,
        limit,
    } = body;
    let page = state.limits.export_page;
    let limit = match limit {
        None => page,
        Some(n) if (1..=page).contains(&(n as usize)) => n as usize,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_item",
                format!("limit must be between 1 and {page} (limits.export_page)"),
            ));
        }
    };
    let (subject, export) = work
        .run_as(move |actor| {
            let export = actor.export_page(subject.expose(), cursor.as_deref(), limit)?;
            Ok((subject, export))
        })
        .await?;
    // Records are the page's bulk; the events and consents are small and bounded
    // by the same page size.
    let size: usize = export
        .records
        .iter()
        .map(|r| 128 + r.field.len() + r.value.as_bytes().len() * 2)
        .sum();
    if size > state.limits.max_response_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "response_too_large",
            format!(
                "the page would exceed {} bytes (limits.max_response_bytes): ask for a smaller limit",
                state.limits.max_response_bytes
            ),
        ));
    }
    let records = export
        .records
        .into_iter()
        .map(|r| ExportedRecord {
            token: r.token.to_string(),
            field: r.field,
            value: r.value.as_str().map(Sensitive::from),
            created_at: r.created_at,
        })
        .collect();
    Ok(Json(SubjectExport {
        subject,
        exported_at: export.exported_at,
        records,
        consents: export.consents.into_iter().map(consent_answer).collect(),
        access_log: export
            .access_log
            .into_iter()
            .map(audit_event_info)
            .collect(),
        subject_ref: export.subject_ref.map(|r| r.to_string()),
        next_cursor: export.next,
    }))
}

fn key_status(status: vault_core::KeyStatus) -> KeyStatus {
    KeyStatus {
        active_version: status.active_version,
        versions: status
            .versions
            .iter()
            .map(|v| KekVersion {
                version: v.version,
                active: v.active,
                deks: v.deks,
            })
            .collect(),
        rotation_in_progress: status.rotation_in_progress,
        pending_purges: status.pending_purges,
        background_error: status.background_error,
    }
}

async fn rotate(work: Work) -> Result<Json<KeyStatus>, ApiError> {
    let status = work.run(|vault| vault.start_kek_rotation()).await?;
    tracing::info!(
        request_id = %request_id(),
        active_version = status.active_version,
        "KEK rotation started"
    );
    Ok(Json(key_status(status)))
}

async fn keys(work: Work) -> Result<Json<KeyStatus>, ApiError> {
    let status = work.run(|vault| vault.key_status()).await?;
    Ok(Json(key_status(status)))
}

fn backup(info: vault_core::BackupInfo) -> api::Backup {
    api::Backup {
        id: info.id,
        created_at: info.created_at,
        path: info.path.display().to_string(),
        records: info.records,
        bytes: info.bytes,
    }
}

async fn create_backup(work: Work) -> Result<(StatusCode, Json<api::BackupCreated>), ApiError> {
    let info = work.run(|vault| vault.backup()).await?;
    tracing::info!(
        request_id = %request_id(),
        backup = %info.id,
        bytes = info.bytes,
        "backup taken"
    );
    let created = api::BackupCreated {
        backup: backup(info),
    };
    Ok((StatusCode::CREATED, Json(created)))
}

async fn list_backups(work: Work) -> Result<Json<api::Backups>, ApiError> {
    let list = work.run(|vault| vault.backups()).await?;
    Ok(Json(api::Backups {
        backups: list.backups.into_iter().map(backup).collect(),
        erasures_in_backups_until: list.erasures_in_backups_until,
        holding_erased: list.holding_erased,
        backups_until_clean: list.backups_until_clean,
    }))
}

async fn retire_keys(work: Work) -> Result<Json<api::KeyRetirement>, ApiError> {
    let (retired, status) = work.run(|vault| vault.retire_old_keks()).await?;
    tracing::info!(
        request_id = %request_id(),
        retired = ?retired,
        "old KEK versions retired"
    );
    Ok(Json(api::KeyRetirement {
        retired,
        keys: key_status(status),
    }))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        Json(serde_json::json!({ "status": "ready" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "status": "shutting_down" })),
        )
            .into_response()
    }
}

/// The metrics listener's application: `GET /metrics` only. It is served apart
/// from the API (loopback by default) because the counts it gives (subjects per key
/// version, erasures pending) are for operators, not for API clients.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::not_found_route() })
        .with_state(state)
}

/// A scrape reads the counters kept in memory on the async thread, without a
/// concurrency permit, so scrapes neither wait behind requests nor take their
/// place. The key gauges read the store: one blocking-pool task renders them at
/// most once a second, however many scrapes come.
async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    let mut out = String::new();
    state.metrics.render(&mut out);
    metrics::render_vault(&state.vault, &mut out);
    {
        let mut cached = state.key_gauges.lock().await;
        let fresh = cached
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < metrics::KEY_GAUGES_TTL);
        if !fresh {
            let vault = Arc::clone(&state.vault);
            let rendered = tokio::task::spawn_blocking(move || {
                let mut keys = String::new();
                metrics::render_keys(&vault, &mut keys);
                keys
            })
            .await
            .unwrap_or_default();
            *cached = Some((Instant::now(), rendered));
        }
        if let Some((_, keys)) = cached.as_ref() {
            out.push_str(keys);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        out,
    )
        .into_response()
}

async fn openapi(State(state): State<Arc<AppState>>, work: Work) -> Response {
    let document = match work.key {
        Some(_) => state.openapi.clone(),
        None => state.openapi_public.clone(),
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        document,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use tower::ServiceExt;
    use vault_core::{RootKey, VaultOptions};

    use super::*;
    use crate::auth::{KeyHash, Purposes};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A route missing from `ROUTES` is served as "unmatched", where no scope is
    /// checked: every route the API describes must be listed.
    #[test]
    fn every_described_route_is_listed_for_its_scope() {
        let document = crate::openapi::public(&LimitsConfig::default());
        let paths = document["paths"].as_object().expect("paths");
        for path in paths.keys() {
            assert!(
                ROUTES.contains(&path.as_str()) || path == OPENAPI_ROUTE,
                "{path} is not in ROUTES"
            );
        }
        assert_eq!(paths.len(), ROUTES.len() + 1);
    }

    const KEY: &str = "pvk_router-test-key";

    fn state(dir: &std::path::Path, scopes: &[Scope]) -> Result<Arc<AppState>, vault_core::Error> {
        state_with(dir, scopes, LimitsConfig::default())
    }

    fn state_with(
        dir: &std::path::Path,
        scopes: &[Scope],
        limits: LimitsConfig,
    ) -> Result<Arc<AppState>, vault_core::Error> {
        let vault = Vault::open(
            dir,
            &RootKey::from_bytes(&[7; 32])?,
            VaultOptions::default()
                .statistics(true)
                .purpose(vault_core::Purpose::new(
                    "support",
                    vault_core::LawfulBasis::Contract,
                )),
        )?;
        let key = ApiKey {
            name: "test".into(),
            hash: KeyHash::of(KEY),
            scopes: scopes.iter().copied().collect(),
            purposes: Purposes::Only(BTreeSet::from(["support".to_owned()])),
            masked: false,
            limit: None,
        };
        Ok(AppState::new(
            Arc::new(vault),
            ApiKeys::new(vec![key]),
            limits,
        ))
    }

    fn app(dir: &std::path::Path, scopes: &[Scope]) -> Result<Router, vault_core::Error> {
        Ok(router(state(dir, scopes)?))
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> Result<(StatusCode, axum::http::HeaderMap, serde_json::Value), Box<dyn std::error::Error>>
    {
        let mut request = HttpRequest::builder().method(method).uri(path);
        if let Some(key) = key {
            request = request.header("authorization", format!("Bearer {key}"));
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::from(body.to_owned()))?)
            .await?;
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        let json = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            // Metrics are text.
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        };
        Ok((status, headers, json))
    }

    /// The purposes are named to a key holder only, as `GET /v1/purposes` names
    /// them; anyone gets the rest of the document.
    #[tokio::test]
    async fn the_document_names_purposes_to_key_holders_only() -> TestResult {
        let dir = tempfile::tempdir()?;
        let app = app(dir.path(), &[Scope::Tokenize])?;
        let purpose = |doc: &serde_json::Value| {
            doc["components"]["schemas"]["DetokenizeRequest"]["properties"]["purpose"].clone()
        };
        let (status, _, public) = call(&app, "GET", "/openapi.json", None, "").await?;
        assert_eq!(status, StatusCode::OK);
        assert!(purpose(&public)["enum"].is_null());
        assert!(purpose(&public)["pattern"].is_string());
        // Built without the purposes: nothing in it depends on them.
        assert_eq!(public, crate::openapi::public(&LimitsConfig::default()));
        let (status, _, named) = call(&app, "GET", "/openapi.json", Some(KEY), "").await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(purpose(&named)["enum"], serde_json::json!(["support"]));
        // A wrong key is refused, as on any route.
        let (status, _, answer) = call(&app, "GET", "/openapi.json", Some("pvk_wrong"), "").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer["error"]["code"], "unauthenticated");
        Ok(())
    }

    #[tokio::test]
    async fn tokenize_then_detokenize_through_the_router() -> TestResult {
        let dir = tempfile::tempdir()?;
        let app = app(dir.path(), &[Scope::Tokenize, Scope::Detokenize])?;
        let body = r#"{"items":[{"subject":"c-1","field":"email","value":"a@example.com"}]}"#;
        let (status, headers, answer) = call(&app, "POST", "/v1/tokenize", Some(KEY), body).await?;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["x-request-id"].len(), 16);
        let token = answer["tokens"][0].as_str().ok_or("no token")?;
        let body = format!(r#"{{"tokens":["{token}"],"purpose":"support"}}"#);
        let (status, _, answer) = call(&app, "POST", "/v1/detokenize", Some(KEY), &body).await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["results"][0]["value"], "a@example.com");
        assert_eq!(answer["results"][0]["field"], "email");
        Ok(())
    }

    #[tokio::test]
    async fn authentication_comes_before_the_body_and_scope_before_work() -> TestResult {
        let dir = tempfile::tempdir()?;
        let app = app(dir.path(), &[Scope::Tokenize])?;
        // A malformed body from someone without a key is a 401, not a 400.
        let (status, _, answer) = call(&app, "POST", "/v1/tokenize", None, "{").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(answer["error"]["code"], "unauthenticated");
        // And from a key without the scope, a 403.
        let (status, _, _) = call(&app, "POST", "/v1/detokenize", Some(KEY), "{").await?;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Unknown routes answer in the API's error format, to callers with a key
        // (without one, a 401 says nothing about which routes exist).
        let (status, _, _) = call(&app, "GET", "/nope", None, "").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, answer) = call(&app, "GET", "/nope", Some(KEY), "").await?;
        assert_eq!(
            (status, &answer["error"]["code"]),
            (StatusCode::NOT_FOUND, &"no_route".into())
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_token_asked_for_many_times_is_read_once_and_the_answer_is_capped() -> TestResult {
        let dir = tempfile::tempdir()?;
        let limits = LimitsConfig {
            max_response_bytes: 8 * 1024,
            ..LimitsConfig::default()
        };
        let app = router(state_with(
            dir.path(),
            &[Scope::Tokenize, Scope::Detokenize, Scope::Audit],
            limits,
        )?);
        let value = "v".repeat(1000);
        let body =
            format!(r#"{{"items":[{{"subject":"c-1","field":"email","value":"{value}"}}]}}"#);
        let (_, _, answer) = call(&app, "POST", "/v1/tokenize", Some(KEY), &body).await?;
        let token = answer["tokens"][0].as_str().ok_or("no token")?.to_owned();
        let ask = |copies: usize| {
            let tokens = vec![format!("\"{token}\""); copies].join(",");
            format!(r#"{{"tokens":[{tokens}],"purpose":"support"}}"#)
        };
        let (status, _, answer) = call(&app, "POST", "/v1/detokenize", Some(KEY), &ask(3)).await?;
        assert_eq!(status, StatusCode::OK, "{answer}");
        let results = answer["results"].as_array().ok_or("results")?;
        assert_eq!(results.len(), 3);
        assert!(results.iter().all(|r| r["value"] == value.as_str()));
        // One read, so one audit event (with the tokenization's).
        let (_, _, events) = call(&app, "GET", "/v1/audit", Some(KEY), "").await?;
        let reads = events["events"]
            .as_array()
            .ok_or("events")?
            .iter()
            .filter(|e| e["action"] == "detokenize")
            .count();
        assert_eq!(reads, 1);
        // Twenty copies of a 1 000-byte value pass 8 KiB.
        let (status, _, answer) = call(&app, "POST", "/v1/detokenize", Some(KEY), &ask(20)).await?;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(answer["error"]["code"], "response_too_large");
        Ok(())
    }

    #[tokio::test]
    async fn deterministic_tokens_need_their_own_scope() -> TestResult {
        let body = |deterministic: bool| {
            format!(
                r#"{{"items":[{{"subject":"s","field":"email","value":"v@example.com","deterministic":{deterministic}}}]}}"#
            )
        };
        let dir = tempfile::tempdir()?;
        let app = app(dir.path(), &[Scope::Tokenize])?;
        let (status, _, _) = call(&app, "POST", "/v1/tokenize", Some(KEY), &body(false)).await?;
        assert_eq!(status, StatusCode::OK);
        let (status, _, answer) =
            call(&app, "POST", "/v1/tokenize", Some(KEY), &body(true)).await?;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("tokenize_deterministic"), "{message}");
        drop(app);
        let dir = tempfile::tempdir()?;
        let both = super::tests::app(dir.path(), &[Scope::Tokenize, Scope::TokenizeDeterministic])?;
        let (status, _, _) = call(&both, "POST", "/v1/tokenize", Some(KEY), &body(true)).await?;
        assert_eq!(status, StatusCode::OK);
        Ok(())
    }

    /// Captures what a `tracing` JSON subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// Captures this thread's events (the tests' runtime runs every task on
        /// it) until the guard is dropped.
        fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
            let captured = Captured::default();
            let sink = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_writer(move || sink.clone())
                .finish();
            (captured, tracing::subscriber::set_default(subscriber))
        }

        fn text(&self) -> Result<String, Box<dyn std::error::Error>> {
            Ok(String::from_utf8(
                self.0.lock().map_err(|_| "poisoned")?.clone(),
            )?)
        }
    }

    #[tokio::test]
    async fn a_server_side_failure_is_logged_by_the_middleware_not_the_conversion() -> TestResult {
        let (captured, _default) = Captured::start();
        let log = || captured.text();

        // The conversion alone logs nothing: it only carries the cause.
        let response = ApiError::from_vault(vault_core::Error::Integrity).into_response();
        assert_eq!(log()?, "");
        let cause = response.extensions().get::<Cause>().ok_or("no cause")?;
        assert_eq!(cause.error, "integrity");
        let quiet = ApiError::from_vault(vault_core::Error::NotFound).into_response();
        assert!(quiet.extensions().get::<Cause>().is_none());

        // Through the middleware: one line, with the request's id and the cause, and
        // the client gets the generic message only.
        let dir = tempfile::tempdir()?;
        let state = state(dir.path(), &Scope::ALL)?;
        let failing = || async { Err::<(), _>(ApiError::from_vault(vault_core::Error::Random)) };
        let app = Router::new()
            .route("/v1/admin/keys", get(failing))
            .layer(middleware::from_fn_with_state(state.clone(), observe))
            .with_state(state);
        let (status, headers, body) = call(&app, "GET", "/v1/admin/keys", Some(KEY), "").await?;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("random"), "{body}");
        let id = headers["x-request-id"].to_str()?;
        let text = log()?;
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("vault error")).collect();
        assert_eq!(lines.len(), 1, "{text}");
        let event: serde_json::Value = serde_json::from_str(lines[0])?;
        assert_eq!(event["fields"]["request_id"], id);
        assert_eq!(
            event["fields"]["error"],
            "the operating system's random generator failed"
        );
        Ok(())
    }

    #[tokio::test]
    async fn events_logged_while_serving_a_request_carry_its_id() -> TestResult {
        let (captured, _default) = Captured::start();
        let dir = tempfile::tempdir()?;
        let app = app(dir.path(), &Scope::ALL)?;
        // A rotation is logged in the request's task, after its call on the
        // blocking pool.
        let (status, headers, _) = call(&app, "POST", "/v1/admin/rotate", Some(KEY), "").await?;
        assert_eq!(status, StatusCode::OK);
        let id = headers
            .get("x-request-id")
            .ok_or("no x-request-id")?
            .to_str()?
            .to_owned();
        assert_eq!(id.len(), 16);
        let log = captured.text()?;
        let line = log
            .lines()
            .find(|l| l.contains("KEK rotation started"))
            .ok_or(format!("no rotation event in {log}"))?;
        let event: serde_json::Value = serde_json::from_str(line)?;
        assert_eq!(event["fields"]["request_id"], id.as_str());

        // A call on the blocking pool knows the id too; outside a request it is `-`.
        let (status, headers, _) = call(&app, "GET", "/v1/admin/keys", Some(KEY), "").await?;
        assert_eq!(status, StatusCode::OK);
        let vault = Arc::new(Vault::open(
            dir.path().join("other"),
            &RootKey::from_bytes(&[7; 32])?,
            VaultOptions::default(),
        )?);
        let work = Work {
            vault,
            permit: None,
            key: None,
        };
        let id = RequestId::new();
        let seen = request_id::scope(id, work.run(|_| Ok(request_id().to_string())))
            .await
            .map_err(|_| "the call failed")?;
        assert_eq!(seen, id.as_str());
        assert_ne!(id.as_str(), headers["x-request-id"].to_str()?);
        assert_eq!(request_id().as_str(), "-");
        Ok(())
    }

    #[tokio::test]
    async fn every_described_route_and_method_is_served() -> TestResult {
        let dir = tempfile::tempdir()?;
        let state = state(dir.path(), &Scope::ALL)?;
        let doc: serde_json::Value = serde_json::from_slice(&state.openapi)?;
        let app = router(state);
        let paths = doc["paths"].as_object().ok_or("no paths")?;
        let mut described = 0;
        for (path, item) in paths {
            let path = path.replace("{token}", "tok_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
            for method in ["get", "put", "post", "delete"] {
                if item.get(method).is_none() {
                    continue;
                }
                described += 1;
                let (status, _, answer) =
                    call(&app, &method.to_uppercase(), &path, Some(KEY), "{}").await?;
                assert!(
                    status != StatusCode::NOT_FOUND || answer["error"]["code"] != "no_route",
                    "{method} {path} is described but not served"
                );
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            }
        }
        assert_eq!(described, 23, "every route and method");
        Ok(())
    }

    #[tokio::test]
    async fn metrics_count_requests_by_route_template() -> TestResult {
        let dir = tempfile::tempdir()?;
        let state = state(dir.path(), &Scope::ALL)?;
        let app = router(state.clone());
        let path = "/v1/tokens/tok_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        // A token's shape, not issued by this vault: not found.
        let (status, _, _) = call(&app, "DELETE", path, Some(KEY), "").await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // Not on the API's listener (an unknown path: 401 without a key, 404 with
        // one), but on the metrics listener's.
        let (status, _, _) = call(&app, "GET", "/metrics", None, "").await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = call(&app, "GET", "/metrics", Some(KEY), "").await?;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let response = metrics_router(state)
            .oneshot(HttpRequest::builder().uri("/metrics").body(Body::empty())?)
            .await?;
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        let page = String::from_utf8(bytes.to_vec())?;
        assert!(page.contains(
            "vault_http_requests_total{route=\"/v1/tokens/{token}\",method=\"DELETE\",status=\"404\"} 1"
        ), "{page}");
        assert!(!page.contains("tok_"), "no token in the metrics");
        assert!(page.contains("vault_up 1"));
        let capacity = vault_core::DEFAULT_BLOCK_CACHE;
        assert!(page.contains(&format!("vault_block_cache_capacity_bytes {capacity}\n")));
        Ok(())
    }
}
