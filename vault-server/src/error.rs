//! How failures become HTTP responses: a stable JSON code and a generic message.
//!
//! Messages are written here, from the kind of failure, never copied from a parser
//! or the storage engine: those can quote the input (a serde error quotes the value
//! it did not expect). Details of a server-side failure go to the log, as the error's
//! kind, never to the client: the conversion has no side effects; it puts the cause
//! in the response's extensions ([`Cause`]), and the request's middleware logs it
//! with the request's id.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use vault_client::api::{ErrorBody, ErrorDetail};
use vault_core::{Argument, InputError, Problem};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    item: Option<usize>,
    /// For the log, never the client.
    cause: Option<Cause>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

/// Why a request failed on the server's side, for the log line the middleware
/// writes: the error's kind (a vault error's text names files and kinds, never
/// stored values) and what it means.
#[derive(Debug, Clone)]
pub(crate) struct Cause {
    pub(crate) error: String,
    pub(crate) what: &'static str,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            item: None,
            cause: None,
            retry_after: None,
        }
    }

    /// The same answer, with a cause for the log.
    pub(crate) fn because(mut self, error: impl Into<String>, what: &'static str) -> Self {
        self.cause = Some(Cause {
            error: error.into(),
            what,
        });
        self
    }

    pub(crate) fn at(mut self, item: Option<usize>) -> Self {
        self.item = item;
        self
    }

    /// The same answer with its item renumbered: `positions[i]` is where item `i`
    /// of the call stands in the request (a batch read with its repeats removed).
    pub(crate) fn at_position(mut self, positions: &[usize]) -> Self {
        self.item = self.item.map(|i| positions.get(i).copied().unwrap_or(i));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable error code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub(crate) fn malformed(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_request", message)
    }

    pub(crate) fn unauthenticated() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "a valid API key is required (Authorization: Bearer <key>)",
        )
    }

    pub(crate) fn forbidden(scope: &str) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this API key does not have the {scope} scope"),
        )
    }

    pub(crate) fn purpose_not_allowed() -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "purpose_not_allowed",
            "this API key may not detokenize for this purpose",
        )
    }

    pub(crate) fn body_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds the limit of {limit} bytes"),
        )
    }

    pub(crate) fn overloaded() -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "overloaded",
            "the server is at its concurrency limit; retry later",
        )
    }

    /// 429 with `Retry-After`: the key's rate limit, or this address's failed
    /// authentications.
    pub(crate) fn rate_limited(wait: std::time::Duration, what: &str) -> Self {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("{what}; retry after the time in Retry-After"),
        );
        error.retry_after = Some(crate::throttle::retry_after_secs(wait));
        error
    }

    pub(crate) fn timeout() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the request did not complete in time; a write may or may not have taken effect",
        )
    }

    pub(crate) fn not_found_route() -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "no_route", "no such route")
    }

    pub(crate) fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take this method",
        )
    }

    pub(crate) fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; the server log has the details under this request's id",
        )
    }

    /// Text without a token's shape. (A token of that shape the vault did not
    /// issue is `not_found`, like a deleted one.)
    pub(crate) fn invalid_token() -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_token", "not a token")
    }

    /// A vault error, for the call that produced it.
    pub(crate) fn from_vault(err: vault_core::Error) -> Self {
        use vault_core::Error as E;
        match err {
            E::InvalidInput(input) => ApiError::from_input(&input),
            E::InvalidToken => ApiError::invalid_token(),
            E::NotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such token"),
            E::Erased => ApiError::new(
                StatusCode::GONE,
                "erased",
                "the token's subject has been erased",
            ),
            E::UnknownPurpose => ApiError::new(
                StatusCode::BAD_REQUEST,
                "unknown_purpose",
                "the purpose is not declared (GET /v1/purposes lists them)",
            ),
            E::NotConsentBased => ApiError::new(
                StatusCode::CONFLICT,
                "not_consent_based",
                "the purpose's lawful basis is not consent: there is no consent to record",
            ),
            E::TokenSpaceExhausted => ApiError::new(
                StatusCode::CONFLICT,
                "token_space_exhausted",
                "every token of this format and length is taken",
            ),
            E::Expired => ApiError::new(
                StatusCode::GONE,
                "expired",
                "the record is past its retention period",
            ),
            E::Forbidden => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the purpose does not cover this field",
            ),
            E::NoConsent => ApiError::new(
                StatusCode::FORBIDDEN,
                "no_consent",
                "the subject has not consented to this purpose",
            ),
            E::DeterministicToken => ApiError::new(
                StatusCode::CONFLICT,
                "deterministic_token",
                "a deterministic token cannot be rectified: tokenize the new value and delete this token",
            ),
            E::Integrity => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "integrity",
                "stored data failed an integrity check",
            )
            .because("integrity", "stored data failed authentication"),
            E::AuditDamaged => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_damaged",
                "the audit trail is damaged: operations on personal data are refused until it is restored",
            )
            .because(
                "audit_damaged",
                "the audit trail's checkpoint did not authenticate at start-up: audited operations are refused (POST /v1/audit/verify)",
            ),
            // Vault errors name files and kinds, never stored values (vault-core's
            // contract), so they may be logged.
            E::Backup(vault_core::BackupProblem::NotConfigured) => ApiError::new(
                StatusCode::CONFLICT,
                "backups_not_configured",
                "no backup directory is configured ([backup] dir)",
            ),
            // Another replica kept changing what the write read (a vault on
            // PostgreSQL): nothing was written, and a retry is likely to pass.
            E::Conflict => {
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "conflict",
                    "concurrent changes by other vault replicas kept this write from committing; nothing was written, retry",
                );
                error.retry_after = Some(1);
                error
            }
            // The storage failed the call (on PostgreSQL: the database unreachable
            // during a failover, say). Nothing the caller saw succeed is lost, and a
            // later call may pass.
            E::Storage(ref cause) => {
                let mut error = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the vault's storage failed this call; retry later (the server log has the details under this request's id)",
                )
                .because(format!("storage error: {cause}"), "storage error");
                error.retry_after = Some(1);
                error
            }
            E::Unsupported(what) => ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "unsupported",
                format!("not supported by this vault's storage: {what}"),
            ),
            other => ApiError::internal().because(other.to_string(), "vault error"),
        }
    }

    fn from_input(input: &InputError) -> Self {
        let (status, code) = match (input.argument, input.problem) {
            (Argument::Batch, Problem::TooLong { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large")
            }
            (Argument::Value, Problem::TooLong { .. }) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "value_too_large")
            }
            (Argument::Token, _) => (StatusCode::BAD_REQUEST, "invalid_token"),
            _ => (StatusCode::BAD_REQUEST, "invalid_item"),
        };
        // InputError's Display names the item, argument and problem, never content.
        ApiError::new(status, code, input.to_string()).at(input.item)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                item: self.item,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        // The code also as a header, for clients deciding on a retry before the body.
        response
            .headers_mut()
            .insert("x-vault-error", HeaderValue::from_static(self.code));
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(cause) = self.cause {
            response.extensions_mut().insert(cause);
        }
        response
    }
}

/// The error code of a response, for the access log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCode(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_errors_map_to_documented_statuses() {
        let e = ApiError::from_vault(vault_core::Error::InvalidInput(InputError {
            item: Some(3),
            argument: Argument::Value,
            problem: Problem::TooLong { limit: 10 },
        }));
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(e.code(), "value_too_large");
        assert_eq!(e.item, Some(3));
        assert!(e.message.contains("item 3"), "{}", e.message);

        let e = ApiError::from_vault(vault_core::Error::InvalidInput(InputError {
            item: Some(0),
            argument: Argument::Field,
            problem: Problem::BadCharacter,
        }));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_REQUEST, "invalid_item")
        );

        let e = ApiError::from_vault(vault_core::Error::Erased);
        assert_eq!(e.status(), StatusCode::GONE);
    }
}
