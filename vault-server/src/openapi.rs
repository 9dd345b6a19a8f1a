//! `/openapi.json`: an OpenAPI 3.1 description of every route, precise enough for
//! a generated client to validate what it sends: every rule the server enforces,
//! with this server's limits and (to a key holder) its purposes, and every error
//! each operation answers with.
//!
//! Written by hand next to the wire types (`vault_client::api`). Tests check that
//! every route the router serves is described; `scripts/test-api` checks the server
//! against the document with schemathesis, a tool we did not write.

use serde_json::{Map, Value, json};
use vault_core::{
    EMAIL_TOKEN_DOMAIN, LawfulBasis, MAX_DIGIT_TOKEN_LEN, MAX_SOURCE_LEN, Purpose, TOKEN_TEXT_LEN,
};

use crate::config::LimitsConfig;

/// Every error code the API answers with: its status and what it means.
const CODES: &[(&str, u16, &str)] = &[
    (
        "malformed_request",
        400,
        "the body is not JSON of the route's shape (an unknown, missing or null field, a wrong type), or the query is not one the route takes",
    ),
    (
        "invalid_item",
        400,
        "an argument breaks a rule the document states (an empty or over-long subject id, a field name, a value that does not fit its format, an export limit or cursor); `item` names the batch item",
    ),
    (
        "invalid_token",
        400,
        "text without the shape of a token (see the token pattern); `item` names it in a batch",
    ),
    (
        "invalid_purpose",
        400,
        "a purpose name that is not 1-64 of a-z, 0-9, '_', '-', '.'",
    ),
    (
        "unknown_purpose",
        400,
        "a purpose this server does not declare (GET /v1/purposes)",
    ),
    ("unauthenticated", 401, "no API key, or not a known one"),
    (
        "forbidden",
        403,
        "the API key lacks the route's scope (tokenize_deterministic for deterministic items)",
    ),
    (
        "purpose_not_allowed",
        403,
        "the API key may not use this purpose",
    ),
    (
        "not_found",
        404,
        "no record for this token in this vault (never issued here, or deleted)",
    ),
    (
        "deterministic_token",
        409,
        "a deterministic token's value cannot be rectified: tokenize the new value and delete the token",
    ),
    (
        "not_consent_based",
        409,
        "the purpose's lawful basis is not consent: there is no consent to record",
    ),
    (
        "token_space_exhausted",
        409,
        "every token of the format and length asked for is taken",
    ),
    (
        "backups_not_configured",
        409,
        "no backup directory is configured ([backup] dir)",
    ),
    (
        "erased",
        410,
        "the token's subject was erased (for an export or a look-up: erased while it was being read)",
    ),
    (
        "expired",
        410,
        "the record is past its field's retention period",
    ),
    (
        "body_too_large",
        413,
        "the body is over [limits] max_body_bytes",
    ),
    ("batch_too_large", 413, "more items than [limits] max_batch"),
    (
        "value_too_large",
        413,
        "a value over [limits] max_value_bytes bytes (UTF-8)",
    ),
    (
        "response_too_large",
        413,
        "the answer would be over [limits] max_response_bytes: ask for fewer tokens or a smaller limit",
    ),
    (
        "rate_limited",
        429,
        "the key's rate limit, or this address's failed authentications; retry after Retry-After seconds",
    ),
    (
        "overloaded",
        429,
        "the server is at its concurrency limit; retry later",
    ),
    (
        "internal",
        500,
        "internal error; the server log has the details under the x-request-id",
    ),
    ("integrity", 500, "stored data failed authentication"),
    (
        "audit_damaged",
        500,
        "the audit trail is damaged: audited operations are refused until it is restored",
    ),
    ("unsupported", 501, "not supported by this vault's storage"),
    (
        "timeout",
        503,
        "the request did not complete in time; a write may or may not have taken effect",
    ),
    (
        "conflict",
        503,
        "concurrent changes by other replicas kept the write from committing; nothing was written, retry",
    ),
    (
        "storage_unavailable",
        503,
        "the vault's storage failed the call; retry later",
    ),
];

/// Codes every route that takes an API key may answer with.
const KEYED: &[&str] = &[
    "unauthenticated",
    "rate_limited",
    "overloaded",
    "internal",
    "timeout",
];
/// Codes of a route that reads the vault's data.
const READS: &[&str] = &["integrity", "storage_unavailable"];
/// Codes of a route that writes it, or is audited (and refused while the trail is
/// damaged).
const AUDITED: &[&str] = &[
    "integrity",
    "audit_damaged",
    "conflict",
    "storage_unavailable",
];
/// Codes of an administrative write (not audited).
const WRITES: &[&str] = &["integrity", "conflict", "storage_unavailable"];
/// Codes of a route that takes a JSON body.
const BODY: &[&str] = &["malformed_request", "body_too_large"];

/// The error answers of an operation: one per status, its body's `code` one of
/// the codes given.
fn errors(groups: &[&[&str]]) -> Map<String, Value> {
    let mut by_status: std::collections::BTreeMap<u16, Vec<(&str, &str)>> = Default::default();
    for code in groups.iter().flat_map(|g| g.iter()) {
        let Some(&(name, status, meaning)) = CODES.iter().find(|(name, ..)| name == code) else {
            panic!("error code {code} is not in CODES");
        };
        let list = by_status.entry(status).or_default();
        if !list.iter().any(|(n, _)| *n == name) {
            list.push((name, meaning));
        }
    }
    let mut out = Map::new();
    for (status, codes) in by_status {
        let description = codes
            .iter()
            .map(|(name, meaning)| format!("`{name}`: {meaning}."))
            .collect::<Vec<_>>()
            .join(" ");
        let names: Vec<&str> = codes.iter().map(|(name, _)| *name).collect();
        let mut headers = json!({ "x-vault-error": {
            "description": "The error code, as in the body.",
            "schema": { "enum": names }
        }});
        if matches!(status, 429 | 503) {
            headers["Retry-After"] = json!({
                "description": "Seconds to wait before a retry (rate_limited, conflict, storage_unavailable).",
                "schema": { "type": "integer", "minimum": 0 }
            });
        }
        out.insert(
            status.to_string(),
            json!({
                "description": description,
                "headers": headers,
                "content": { "application/json": { "schema": error_body(json!({ "enum": names })) } }
            }),
        );
    }
    out
}

/// An error answer's body (`components/schemas/Error`, with `code` narrowed to
/// an operation's codes in each of its answers).
fn error_body(code: Value) -> Value {
    object(
        &["error"],
        json!({
            "error": object(&["code", "message"], json!({
                "code": code,
                "message": { "type": "string", "description": "For people; never quotes the input." },
                "item": { "type": "integer", "minimum": 0, "description": "Index of the offending batch item." }
            }))
        }),
    )
}

/// An operation's answers: the successful one and its errors.
fn answers(ok: Value, groups: &[&[&str]]) -> Value {
    let mut all = ok.as_object().cloned().unwrap_or_default();
    all.extend(errors(groups));
    Value::Object(all)
}

fn body(schema: &str, example: Value) -> Value {
    json!({
        "required": true,
        "content": { "application/json": {
            "schema": { "$ref": format!("#/components/schemas/{schema}") },
            "example": example
        } }
    })
}

fn answer(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": {
            "schema": { "$ref": format!("#/components/schemas/{schema}") },
            "example": example(schema)
        } }
    })
}

/// A successful answer of each kind, with obviously fake values.
fn example(schema: &str) -> Value {
    let at = 1_767_225_600_000_u64; // 2026-01-01T00:00:00Z
    let key_status = json!({
        "active_version": 2,
        "versions": [{ "version": 1, "active": false, "deks": 0 }, { "version": 2, "active": true, "deks": 1204 }],
        "rotation_in_progress": false, "pending_purges": 0, "background_error": null
    });
    let event = json!({
        "seq": 41, "at": at, "actor": "checkout-service", "action": "detokenize",
        "purpose": "support", "outcome": "ok", "records": 1,
        "subject": "5f0c2a9e4b7d1e3a8c6f0b2d4e6a8c0e"
    });
    let consent = json!({
        "purpose": "marketing", "granted": true, "since": at,
        "history": [{ "granted": true, "at": at, "source": "signup form v2" }]
    });
    let backup = json!({
        "id": "20260101T000000Z", "created_at": at,
        "path": "/var/lib/pii-vault/backups/20260101T000000Z", "records": 1204, "bytes": 5_242_880
    });
    match schema {
        "DetokenizeResponse" => json!({ "results": [
            { "token": EXAMPLE_TOKEN, "field": "email", "value": "ada@example.com" },
            { "token": "4000123412341111", "error": "erased" }
        ] }),
        "ErasureReceipt" => json!({
            "subject_ref": "5f0c2a9e4b7d1e3a8c6f0b2d4e6a8c0e", "erased_at": at, "records": 2,
            "purge": { "state": "done", "at": at }, "audit_event": 42,
            "backups": [], "in_backups_until": null
        }),
        "SubjectExport" => json!({
            "subject": "customer-0001", "subject_ref": "5f0c2a9e4b7d1e3a8c6f0b2d4e6a8c0e",
            "exported_at": at, "next_cursor": null,
            "records": [{ "token": EXAMPLE_TOKEN, "field": "email", "value": "ada@example.com", "created_at": at }],
            "consents": [consent], "access_log": [event]
        }),
        "SubjectConsents" => json!({ "subject": "customer-0001", "consents": [consent] }),
        "SubjectOverview" => json!({
            "subject": "customer-0001", "subject_ref": "5f0c2a9e4b7d1e3a8c6f0b2d4e6a8c0e",
            "records": [{ "token": EXAMPLE_TOKEN, "field": "email", "created_at": at }],
            "more_records": false, "consents": [consent], "access_log": [event],
            "more_events": false, "backups": []
        }),
        "WhoAmI" => {
            json!({ "name": "privacy-desk", "scopes": ["export", "erase", "consent", "audit"], "purposes": ["support"], "masked": false })
        }
        "Purposes" => json!({ "purposes": [
            { "name": "support", "basis": "legitimate_interests", "fields": null, "masked": false },
            { "name": "marketing", "basis": "consent", "fields": ["email"], "masked": false }
        ] }),
        "AuditEvents" => json!({ "events": [event] }),
        "AuditHead" => {
            json!({ "seq": 41, "mac": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" })
        }
        "AuditCheck" => json!({ "ok": true, "events": 42, "anchor": "contained" }),
        "Inventory" => json!({
            "taken_at": at,
            "fields": [{
                "field": "email", "records": 1204, "subjects": 1180, "oldest_record_day": at,
                "retention_seconds": null,
                "purposes": [{ "purpose": "support", "basis": "legitimate_interests", "masked": false }]
            }],
            "records": 1204, "subjects": 1180, "erased_subjects": 12, "pending_purges": 0,
            "active_kek_version": 2, "kek_versions": [2],
            "backups": { "kept": 1, "latest_at": at, "holding_erased": 0, "erasures_in_backups_until": null }
        }),
        "KeyStatus" => key_status,
        "KeyRetirement" => json!({ "retired": [1], "keys": key_status }),
        "BackupCreated" => json!({ "backup": backup }),
        "Backups" => json!({
            "backups": [backup], "erasures_in_backups_until": null,
            "holding_erased": 0, "backups_until_clean": 0
        }),
        other => panic!("no example for {other}"),
    }
}

/// The token's forms: digits (format-preserving), or `tok_` and 32 letters of
/// base32, optionally as an e-mail address at example.net. A text of this shape
/// that this vault did not issue is not found (404), not invalid.
fn token_pattern() -> String {
    let domain = EMAIL_TOKEN_DOMAIN.replace('.', "\\.");
    let letters = TOKEN_TEXT_LEN - "tok_".len();
    whole(&format!(
        "([0-9]{{1,{MAX_DIGIT_TOKEN_LEN}}}|tok_[a-z2-7]{{{letters}}}(@{domain})?)"
    ))
}

/// A pattern that matches the whole text. `$` alone would let Python's `re` (which
/// Python validators use) match before a final newline; the look-ahead refuses it,
/// in ECMA-262 as in Python.
fn whole(body: &str) -> String {
    format!("^{body}(?!\\n)$")
}
/// A fake token for the examples.
const EXAMPLE_TOKEN: &str = "tok_exampleexampleexampleexample2345";

/// Characters `char::is_control` and `char::is_whitespace` name, and those the
/// vault calls invisible (`vault_core`'s subject rules), as regex class members:
/// BMP characters as `\u` escapes, understood by ECMA-262 and Python alike; the
/// few above the BMP as themselves.
const CONTROLS: &str = "\\u0000-\\u001F\\u007F-\\u009F";
const WHITESPACE: &str =
    "\\u0009-\\u000D\\u0020\\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";
const INVISIBLE_BMP: &str = "\\u00AD\\u034F\\u061C\\u115F\\u1160\\u17B4\\u17B5\\u180B-\\u180F\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u206F\\u3164\\uFE00-\\uFE0F\\uFEFF\\uFFA0";

/// Above the BMP: U+1D173-U+1D17A (musical formatting) and U+E0000-U+E0FFF (tags,
/// variation selectors).
fn invisible_astral() -> String {
    ['\u{1D173}', '-', '\u{1D17A}', '\u{E0000}', '-', '\u{E0FFF}']
        .iter()
        .collect()
}

/// A subject id: no control or invisible character, no whitespace at either end.
fn subject_pattern() -> String {
    let inner = format!("{CONTROLS}{INVISIBLE_BMP}{}", invisible_astral());
    let edge = format!("{inner}{WHITESPACE}");
    whole(&format!("[^{edge}]([^{inner}]*[^{edge}])?"))
}

/// The document anyone may read: this server's limits, and a purpose stated by
/// its shape only.
pub fn public(limits: &LimitsConfig) -> Value {
    document(limits, None)
}

/// The document for key holders: also this deployment's purposes (which
/// `GET /v1/purposes` shows only to a key) as enums.
pub fn for_key_holders(limits: &LimitsConfig, purposes: &[Purpose]) -> Value {
    document(limits, Some(purposes))
}

/// The document for a server with these request limits (the vault's own follow
/// from them) and, when named, purposes.
fn document(limits: &LimitsConfig, purposes: Option<&[Purpose]>) -> Value {
    let vault = &limits.vault_limits();
    let all = purposes.unwrap_or_default();
    let declared: Vec<&str> = all.iter().map(Purpose::name).collect();
    let consent_based: Vec<&str> = all
        .iter()
        .filter(|p| p.basis() == LawfulBasis::Consent)
        .map(Purpose::name)
        .collect();
    let example_purpose = declared.first().copied().unwrap_or("support");
    let example_consent = consent_based.first().copied().unwrap_or("marketing");
    let subject = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": vault.max_subject_len,
        "pattern": subject_pattern(),
        "description": format!(
            "Data subject id (personal data): 1 to {} characters, no control or invisible character (zero-width spaces and joiners, direction marks, the byte-order mark, soft hyphens…), no whitespace at either end. Ids are compared in Unicode NFC: spellings that differ only in composition name one subject.",
            vault.max_subject_len
        ),
        "example": "customer-0001"
    });
    let field = json!({
        "type": "string",
        "pattern": whole(&format!("[A-Za-z0-9_.-]{{1,{}}}", vault.max_field_len)),
        "description": "The kind of value (email, phone…): what purposes, masks and retention periods name.",
        "example": "email"
    });
    let value_max = limits.max_value_bytes;
    let value = |description: &str| {
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": value_max,
            "description": format!("{description} Personal data: 1 to {value_max} bytes of UTF-8 (beyond, 413 value_too_large)."),
            "example": "ada@example.com"
        })
    };
    let purpose = |names: &[&str], description: &str| match purposes {
        Some(_) => json!({ "type": "string", "enum": names, "description": description }),
        None => json!({
            "type": "string",
            "pattern": whole("[a-z0-9_.-]{1,64}"),
            "description": format!("{description} This server's are named in the document served with an API key (Authorization: Bearer)."),
            "example": "support"
        }),
    };
    let token = json!({ "type": "string", "pattern": token_pattern(), "example": EXAMPLE_TOKEN });
    let token_param = json!([{
        "name": "token", "in": "path", "required": true,
        "description": "A token: its shape is checked (400 invalid_token); one of that shape this vault did not issue is not found (404).",
        "schema": token
    }]);
    let batch = limits.max_batch;
    let body_limit = format!(
        "The whole body is at most {} bytes ([limits] max_body_bytes; beyond, 413 body_too_large).",
        limits.max_body_bytes
    );
    let export_page = limits.export_page;
    let cursor_pattern = whole(&format!(
        "(e[0-9]{{0,19}}|rtok_[a-z2-7]{{{}}})\\.[0-9]{{1,19}}",
        TOKEN_TEXT_LEN - "tok_".len()
    ));
    let tokens_link = |operation: &str| {
        json!({
            "operationId": operation,
            "parameters": { "token": "$response.body#/tokens/0" }
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pii-vault",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Personal-data vault: values encrypted under a key per data subject, opaque tokens for everyone else. Subject ids and values travel only in request bodies. This document describes this server: its limits and declared purposes are those it runs with."
        },
        "security": [{ "apiKey": [] }],
        "paths": {
            "/v1/tokenize": { "post": {
                "operationId": "tokenize",
                "summary": "Tokenize values (all-or-nothing). Scope: tokenize (and tokenize_deterministic for deterministic items).",
                "requestBody": body("TokenizeRequest", json!({ "items": [
                    { "subject": "customer-0001", "field": "email", "value": "ada@example.com" },
                    { "subject": "customer-0001", "field": "card", "value": "4111111111111111", "format": "luhn" }
                ] })),
                "responses": answers(json!({ "200": {
                    "description": "One token per item, in order.",
                    "content": { "application/json": {
                        "schema": { "$ref": "#/components/schemas/TokenizeResponse" },
                        "example": { "tokens": [EXAMPLE_TOKEN, "4000123412341111"] }
                    } },
                    "links": {
                        "Detokenize": {
                            "operationId": "detokenize",
                            "requestBody": { "tokens": ["$response.body#/tokens/0"], "purpose": example_purpose }
                        },
                        "Rectify": tokens_link("rectify"),
                        "Delete": tokens_link("delete"),
                        "Export": { "operationId": "export", "requestBody": { "subject": "$request.body#/items/0/subject" } },
                        "Lookup": { "operationId": "lookup", "requestBody": { "subject": "$request.body#/items/0/subject" } },
                        "Erase": { "operationId": "erase", "requestBody": { "subject": "$request.body#/items/0/subject" } }
                    }
                } }), &[KEYED, AUDITED, BODY, &["invalid_item", "forbidden", "token_space_exhausted", "batch_too_large", "value_too_large"]])
            }},
            "/v1/detokenize": { "post": {
                "operationId": "detokenize",
                "summary": "Turn tokens back into values, for a purpose the key is allowed. Each token is answered, in order, with its value or why there is none. Scope: detokenize.",
                "requestBody": body("DetokenizeRequest", json!({ "tokens": [EXAMPLE_TOKEN], "purpose": example_purpose })),
                "responses": answers(json!({ "200": linked(answer("One result per token, in order.", "DetokenizeResponse"), json!({
                    "Rectify": { "operationId": "rectify", "parameters": { "token": "$request.body#/tokens/0" } }
                })) }),
                    &[KEYED, AUDITED, BODY, &["invalid_item", "invalid_token", "invalid_purpose", "unknown_purpose", "forbidden", "purpose_not_allowed", "batch_too_large", "response_too_large"]])
            }},
            "/v1/tokens/{token}": {
                "parameters": token_param,
                "put": {
                    "operationId": "rectify",
                    "summary": "Rectify: replace the value behind a token; the token stays. Scope: rectify.",
                    "requestBody": body("RectifyRequest", json!({ "value": "ada.lovelace@example.com" })),
                    "responses": answers(json!({ "204": {
                        "description": "Rectified.",
                        "links": {
                            "Detokenize": {
                                "operationId": "detokenize",
                                "requestBody": { "tokens": ["$request.path.token"], "purpose": example_purpose }
                            },
                            "Delete": { "operationId": "delete", "parameters": { "token": "$request.path.token" } }
                        }
                    } }), &[KEYED, AUDITED, BODY, &["invalid_item", "invalid_token", "forbidden", "not_found", "deterministic_token", "erased", "expired", "value_too_large"]])
                },
                "delete": {
                    "operationId": "delete",
                    "summary": "Delete one record. Scope: delete.",
                    "responses": answers(json!({ "204": { "description": "Deleted." } }),
                        &[KEYED, AUDITED, &["invalid_token", "forbidden", "not_found", "erased", "expired"]])
                }
            },
            "/v1/subjects/erase": { "post": {
                "operationId": "erase",
                "summary": "Erase a subject (right to be forgotten): destroys its key; idempotent. Scope: erase.",
                "requestBody": body("SubjectRequest", json!({ "subject": "customer-0001" })),
                "responses": answers(json!({ "200": answer("Erasure receipt; no personal data.", "ErasureReceipt") }),
                    &[KEYED, AUDITED, BODY, &["invalid_item", "forbidden", "erased"]])
            }},
            "/v1/subjects/export": { "post": {
                "operationId": "export",
                "summary": "Export a subject's records, consents and access log (access and portability), one page at a time: send each answer's next_cursor back as cursor until it is null. Scope: export.",
                "requestBody": body("ExportRequest", json!({ "subject": "customer-0001", "limit": export_page.min(50) })),
                "responses": answers(json!({ "200": {
                    "description": "The subject's records.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SubjectExport" }, "example": example("SubjectExport") } },
                    "links": { "NextPage": {
                        "operationId": "export",
                        "requestBody": { "subject": "$request.body#/subject", "cursor": "$response.body#/next_cursor" }
                    } }
                } }), &[KEYED, AUDITED, BODY, &["invalid_item", "forbidden", "erased", "response_too_large"]])
            }},
            "/v1/subjects/consent": { "post": {
                "operationId": "recordConsent",
                "summary": "Record a grant or withdrawal of a subject's consent to a declared, consent-based purpose of the key; it applies to the next request. Scope: consent.",
                "requestBody": body("ConsentRequest", json!({ "subject": "customer-0001", "purpose": example_consent, "granted": true, "source": "signup form v2" })),
                "responses": answers(json!({ "204": { "description": "Recorded." } }),
                    &[KEYED, AUDITED, BODY, &["invalid_item", "invalid_purpose", "unknown_purpose", "forbidden", "purpose_not_allowed", "not_consent_based"]])
            }},
            "/v1/subjects/consents": { "post": {
                "operationId": "consents",
                "summary": "A subject's consents: current state and history per purpose. Scope: consent.",
                "requestBody": body("SubjectRequest", json!({ "subject": "customer-0001" })),
                "responses": answers(json!({ "200": answer("Consents.", "SubjectConsents") }),
                    &[KEYED, AUDITED, BODY, &["invalid_item", "forbidden"]])
            }},
            "/v1/subjects/lookup": { "post": {
                "operationId": "lookup",
                "summary": "What the vault holds about a subject, without the values: the first records (token, field, time), consents, the latest audit events about it, the backups that hold it. Recorded as a lookup, also when nothing is found. Scope: export.",
                "requestBody": body("SubjectRequest", json!({ "subject": "customer-0001" })),
                "responses": answers(json!({ "200": answer("The overview.", "SubjectOverview") }),
                    &[KEYED, AUDITED, BODY, &["invalid_item", "forbidden"]])
            }},
            "/v1/whoami": { "get": {
                "operationId": "whoami",
                "summary": "The calling key's name, scopes and purposes. Any valid key.",
                "responses": answers(json!({ "200": answer("The key.", "WhoAmI") }), &[KEYED])
            }},
            "/v1/purposes": { "get": {
                "operationId": "purposes",
                "summary": "The declared purposes, their lawful bases and fields. Any valid key.",
                "responses": answers(json!({ "200": answer("Purposes.", "Purposes") }), &[KEYED])
            }},
            "/v1/audit": { "get": {
                "operationId": "auditEvents",
                "summary": "Audit events in sequence order (no personal data). Takes no other query parameter. Scope: audit.",
                "parameters": [
                    { "name": "after", "in": "query", "schema": { "type": "integer", "minimum": 0, "maximum": u64::MAX }, "description": "Events after this sequence number.", "example": 40 },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }, "example": 100 }
                ],
                "responses": answers(json!({ "200": answer("Events.", "AuditEvents") }),
                    &[KEYED, READS, &["malformed_request", "forbidden"]])
            }},
            "/v1/audit/head": { "get": {
                "operationId": "auditHead",
                "summary": "The trail's end (last sequence number and MAC), to keep outside the vault. Scope: audit.",
                "responses": answers(json!({ "200": {
                    "description": "The head.",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/AuditHead" }, "example": example("AuditHead") } }
                } }), &[KEYED, READS, &["forbidden"]])
            }},
            "/v1/inventory": { "get": {
                "operationId": "inventory",
                "summary": "The data inventory, the record of processing (GDPR Art. 30): per field, live records, subjects, the oldest record's day, retention and the purposes that may read it; totals, erasures, pending purges, KEK versions and backups. Counts only. Scope: audit.",
                "responses": answers(json!({ "200": answer("The inventory.", "Inventory") }), &[KEYED, READS, &["forbidden"]])
            }},
            "/v1/audit/verify": { "post": {
                "operationId": "verifyAudit",
                "summary": "Check the whole audit trail: chain, order and checkpoint; with expected_head, whether the trail still holds it. The body is optional. Scope: audit.",
                "requestBody": { "required": false, "content": { "application/json": {
                    "schema": { "$ref": "#/components/schemas/VerifyRequest" },
                    "example": { "expected_head": { "seq": 41, "mac": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef" } }
                } } },
                "responses": answers(json!({ "200": answer("The result, with the first bad event.", "AuditCheck") }),
                    &[KEYED, READS, BODY, &["forbidden"]])
            }},
            "/v1/admin/rotate": { "post": {
                "operationId": "rotate",
                "summary": "Start a key-encryption-key rotation; rewrapping runs in the background. Takes no body. Scope: admin.",
                "responses": answers(json!({ "200": answer("Key status.", "KeyStatus") }), &[KEYED, WRITES, &["forbidden"]])
            }},
            "/v1/admin/keys": { "get": {
                "operationId": "keys",
                "summary": "Key versions, subject keys per version, rotation and purge progress. Scope: admin.",
                "responses": answers(json!({ "200": answer("Key status.", "KeyStatus") }), &[KEYED, READS, &["forbidden"]])
            }},
            "/v1/admin/keys/retire": { "post": {
                "operationId": "retireKeys",
                "summary": "Finish the rotation under way (rewrapping every subject key) and retire the old KEK versions: removed from the keyring and the header. Takes no body. Scope: admin.",
                "responses": answers(json!({ "200": answer("The versions retired and the key status.", "KeyRetirement") }), &[KEYED, WRITES, &["forbidden"]])
            }},
            "/v1/admin/backups": {
                "post": {
                    "operationId": "createBackup",
                    "summary": "Take a backup now, while serving; older ones past `keep` are deleted. Takes no body. Scope: admin.",
                    "responses": answers(json!({ "201": answer("The backup.", "BackupCreated") }), &[KEYED, WRITES, &["forbidden", "backups_not_configured", "unsupported"]])
                },
                "get": {
                    "operationId": "backups",
                    "summary": "The kept backups, and how long erased subjects live on in them. Scope: admin.",
                    "responses": answers(json!({ "200": answer("The backups.", "Backups") }), &[KEYED, READS, &["forbidden", "backups_not_configured", "unsupported"]])
                }
            },
            "/healthz": { "get": {
                "operationId": "healthz",
                "summary": "Liveness.", "security": [],
                "responses": { "200": {
                    "description": "The process serves requests.",
                    "content": { "application/json": { "schema": object(&["status"], json!({ "status": { "const": "ok" } })) } }
                } }
            }},
            "/readyz": { "get": {
                "operationId": "readyz",
                "summary": "Readiness: 503 once shutdown has begun.", "security": [],
                "responses": {
                    "200": { "description": "Ready.", "content": { "application/json": { "schema": object(&["status"], json!({ "status": { "const": "ready" } })) } } },
                    "503": { "description": "Shutting down.", "content": { "application/json": { "schema": object(&["status"], json!({ "status": { "const": "shutting_down" } })) } } }
                }
            }},
            "/openapi.json": { "get": {
                "operationId": "openapi",
                "summary": "This document.", "security": [],
                "responses": { "200": { "description": "OpenAPI 3.1.", "content": { "application/json": { "schema": { "type": "object" } } } } }
            }}
        },
        "components": {
            "securitySchemes": { "apiKey": { "type": "http", "scheme": "bearer" } },
            "schemas": {
                "TokenizeRequest": described(closed(&["items"], json!({
                    "items": { "type": "array", "minItems": 1, "maxItems": batch, "items": { "$ref": "#/components/schemas/TokenizeItem" } }
                })), &body_limit),
                "TokenizeItem": tokenize_item(&subject, &field, value("The value.")),
                "TokenizeResponse": object(&["tokens"], json!({
                    "tokens": { "type": "array", "items": { "type": "string" } }
                })),
                "DetokenizeRequest": described(closed(&["tokens", "purpose"], json!({
                    "tokens": { "type": "array", "minItems": 1, "maxItems": batch, "items": token, "description": "A token asked for more than once is read once and answered at each position." },
                    "purpose": purpose(&declared, "Why the values are read: one of this server's declared purposes (GET /v1/purposes) that the key may use.")
                })), &body_limit),
                "DetokenizeResponse": object(&["results"], json!({
                    "results": { "type": "array", "items": { "oneOf": [
                        object(&["token", "field", "value"], json!({
                            "token": { "type": "string" }, "field": { "type": "string" }, "value": { "type": "string" },
                            "masked": { "type": "boolean", "default": false }
                        })),
                        object(&["token", "error"], json!({
                            "token": { "type": "string" },
                            "error": { "enum": ["not_found", "erased", "integrity", "not_text", "forbidden", "no_consent", "expired"] }
                        }))
                    ]}}
                })),
                "AuditEvents": object(&["events"], json!({
                    "events": { "type": "array", "items": { "$ref": "#/components/schemas/AuditEvent" } }
                })),
                "AuditEvent": object(&["seq", "at", "actor", "action", "outcome", "records"], json!({
                    "seq": { "type": "integer" }, "at": { "type": "integer" }, "actor": { "type": "string" },
                    "action": { "enum": ["tokenize", "tokenize_deterministic", "detokenize", "rectify", "delete", "erase", "export", "consent_granted", "consent_withdrawn", "consents_read", "expire", "audit_pruned", "lookup"] },
                    "purpose": { "type": ["string", "null"] },
                    "outcome": { "enum": ["ok", "forbidden", "no_consent", "not_found", "erased", "expired", "integrity"] },
                    "records": { "type": "integer" },
                    "subject": { "type": ["string", "null"], "description": "A reference derived from the subject's key; unlinkable once it is erased." }
                })),
                "AuditCheck": object(&["ok", "events"], json!({
                    "ok": { "type": "boolean" }, "events": { "type": "integer" },
                    "first_bad": { "type": "integer" }, "problem": { "type": "string" },
                    "anchor": { "enum": ["contained", "truncated", "rolled_back", "pruned"], "description": "With expected_head: whether the trail still holds it." }
                })),
                "Inventory": object(&["taken_at", "fields", "records", "subjects", "erased_subjects", "pending_purges", "active_kek_version", "kek_versions", "backups"], json!({
                    "taken_at": { "type": "integer", "description": "Milliseconds since the Unix epoch." },
                    "fields": { "type": "array", "items": object(&["field", "records", "subjects", "oldest_record_day", "retention_seconds", "purposes"], json!({
                        "field": { "type": "string" },
                        "records": { "type": "integer", "minimum": 0 },
                        "subjects": { "type": "integer", "minimum": 0 },
                        "oldest_record_day": { "type": ["integer", "null"], "description": "Start (UTC) of the day the oldest live record was created, in milliseconds since the Unix epoch." },
                        "retention_seconds": { "type": ["integer", "null"] },
                        "purposes": { "type": "array", "items": object(&["purpose", "basis", "masked"], json!({
                            "purpose": { "type": "string" },
                            "basis": { "enum": ["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"] },
                            "masked": { "type": "boolean" }
                        })) }
                    })) },
                    "records": { "type": "integer", "minimum": 0 },
                    "subjects": { "type": "integer", "minimum": 0 },
                    "erased_subjects": { "type": "integer", "minimum": 0 },
                    "pending_purges": { "type": "integer", "minimum": 0 },
                    "active_kek_version": { "type": "integer" },
                    "kek_versions": { "type": "array", "items": { "type": "integer" } },
                    "backups": { "oneOf": [ { "type": "null" }, object(&["kept", "latest_at", "holding_erased", "erasures_in_backups_until"], json!({
                        "kept": { "type": "integer", "minimum": 0 },
                        "latest_at": { "type": ["integer", "null"] },
                        "holding_erased": { "type": "integer", "minimum": 0 },
                        "erasures_in_backups_until": { "type": ["integer", "null"] }
                    })) ] }
                })),
                "AuditHead": object(&["seq", "mac"], json!({
                    "seq": { "type": ["integer", "null"] },
                    "mac": { "type": ["string", "null"], "pattern": whole("[0-9a-f]{64}") }
                })),
                "VerifyRequest": closed(&[], json!({
                    "expected_head": {
                        "type": ["object", "null"], "required": ["seq", "mac"], "additionalProperties": false,
                        "properties": {
                            "seq": { "type": "integer", "minimum": 0, "maximum": u64::MAX },
                            "mac": { "type": "string", "pattern": whole("[0-9a-fA-F]{64}") }
                        },
                        "description": "A head taken earlier (GET /v1/audit/head)."
                    }
                })),
                "RectifyRequest": closed(&["value"], json!({ "value": value("The new value.") })),
                "ConsentRequest": closed(&["subject", "purpose", "granted"], json!({
                    "subject": subject,
                    "purpose": purpose(&consent_based, "A declared purpose whose lawful basis is consent."),
                    "granted": { "type": "boolean" },
                    "source": {
                        "type": ["string", "null"], "minLength": 1, "maxLength": MAX_SOURCE_LEN,
                        "pattern": whole(&format!("[^{CONTROLS}]*")),
                        "description": format!("Where the consent was given or withdrawn (a form, a call): 1 to {MAX_SOURCE_LEN} characters, no control characters. Personal data."),
                        "example": "signup form v2"
                    }
                })),
                "Consent": object(&["purpose", "granted", "since", "history"], json!({
                    "purpose": { "type": "string" },
                    "granted": { "type": "boolean" },
                    "since": { "type": "integer" },
                    "history": { "type": "array", "items": object(&["granted", "at"], json!({
                        "granted": { "type": "boolean" }, "at": { "type": "integer" }, "source": { "type": "string" }
                    }))}
                })),
                "SubjectConsents": object(&["subject", "consents"], json!({
                    "subject": { "type": "string" },
                    "consents": { "type": "array", "items": { "$ref": "#/components/schemas/Consent" } }
                })),
                "Purposes": object(&["purposes"], json!({
                    "purposes": { "type": "array", "items": object(&["name", "basis", "fields", "masked"], json!({
                        "name": { "type": "string" },
                        "basis": { "enum": ["consent", "contract", "legal_obligation", "vital_interests", "public_task", "legitimate_interests"] },
                        "fields": { "type": ["array", "null"], "items": { "type": "string" } },
                        "masked": { "type": "boolean" }
                    }))}
                })),
                "SubjectRequest": closed(&["subject"], json!({ "subject": subject })),
                "SubjectOverview": object(&["subject", "subject_ref", "records", "more_records", "consents", "access_log", "more_events", "backups"], json!({
                    "subject": { "type": "string" },
                    "subject_ref": { "type": ["string", "null"] },
                    "records": { "type": "array", "items": object(&["token", "field", "created_at"], json!({
                        "token": { "type": "string" }, "field": { "type": "string" }, "created_at": { "type": "integer" }
                    })) },
                    "more_records": { "type": "boolean" },
                    "consents": { "type": "array", "items": { "$ref": "#/components/schemas/Consent" } },
                    "access_log": { "type": "array", "items": { "$ref": "#/components/schemas/AuditEvent" } },
                    "more_events": { "type": "boolean" },
                    "backups": { "type": "array", "items": { "type": "string" } }
                })),
                "WhoAmI": object(&["name", "scopes", "purposes", "masked"], json!({
                    "name": { "type": "string" },
                    "scopes": { "type": "array", "items": { "type": "string" } },
                    "purposes": { "type": ["array", "null"], "items": { "type": "string" } },
                    "masked": { "type": "boolean" }
                })),
                "ExportRequest": closed(&["subject"], json!({
                    "subject": subject,
                    "cursor": {
                        "type": ["string", "null"], "pattern": cursor_pattern,
                        "description": "The previous page's next_cursor; absent or null for the first page."
                    },
                    "limit": {
                        "type": ["integer", "null"], "minimum": 1, "maximum": export_page,
                        "description": format!("Most records and events in the page; at most, and by default, {export_page} ([limits] export_page).")
                    }
                })),
                "ErasureReceipt": object(&["subject_ref", "erased_at", "records", "purge", "backups", "in_backups_until"], json!({
                    "subject_ref": { "type": ["string", "null"], "description": "Says nothing about who the subject was." },
                    "erased_at": { "type": "integer", "description": "Milliseconds since the Unix epoch." },
                    "records": { "type": "integer" },
                    "audit_event": { "type": "integer", "description": "The audit event recording the erasure." },
                    "backups": { "type": "array", "items": { "type": "string" }, "description": "Kept backups that may still hold the subject; a restore of one erases it again." },
                    "in_backups_until": { "type": ["integer", "null"], "description": "When the last of them is deleted by keep (ms since the epoch; needs [backup] every_hours)." },
                    "purge": { "type": "object", "properties": {
                        "state": { "enum": ["done", "pending", "not_needed"] },
                        "at": { "type": "integer" }, "due_by": { "type": "integer" }
                    }, "required": ["state"] }
                })),
                "SubjectExport": object(&["subject", "exported_at", "records", "consents", "access_log", "subject_ref", "next_cursor"], json!({
                    "subject": { "type": "string" },
                    "subject_ref": { "type": ["string", "null"], "description": "The subject instance; every page of one export names the same one." },
                    "next_cursor": { "type": ["string", "null"], "description": "Where the next page starts; null on the last page. Records come first, then the access log; consents are on the first page." },
                    "exported_at": { "type": "integer" },
                    "consents": { "type": "array", "items": { "$ref": "#/components/schemas/Consent" } },
                    "access_log": { "type": "array", "description": "The audit events about the subject still kept (GDPR Art. 15(1)(c)).", "items": { "$ref": "#/components/schemas/AuditEvent" } },
                    "records": { "type": "array", "items": object(&["token", "field", "value", "created_at"], json!({
                        "token": { "type": "string" }, "field": { "type": "string" },
                        "value": { "type": ["string", "null"] }, "created_at": { "type": "integer" }
                    }))}
                })),
                "KeyStatus": object(&["active_version", "versions", "rotation_in_progress", "pending_purges"], json!({
                    "active_version": { "type": "integer" },
                    "versions": { "type": "array", "items": object(&["version", "active", "deks"], json!({
                        "version": { "type": "integer" }, "active": { "type": "boolean" }, "deks": { "type": "integer" }
                    }))},
                    "rotation_in_progress": { "type": "boolean" },
                    "pending_purges": { "type": "integer" },
                    "background_error": { "type": ["string", "null"] }
                })),
                "KeyRetirement": object(&["retired", "keys"], json!({
                    "retired": { "type": "array", "items": { "type": "integer" } },
                    "keys": { "$ref": "#/components/schemas/KeyStatus" }
                })),
                "Backup": object(&["id", "created_at", "path", "records", "bytes"], json!({
                    "id": { "type": "string" },
                    "created_at": { "type": "integer", "description": "Milliseconds since the Unix epoch." },
                    "path": { "type": "string", "description": "The backup's directory on the server: what `vault-server restore --from` takes." },
                    "records": { "type": "integer" },
                    "bytes": { "type": "integer" }
                })),
                "BackupCreated": object(&["backup"], json!({
                    "backup": { "$ref": "#/components/schemas/Backup" }
                })),
                "Backups": object(&["backups", "erasures_in_backups_until", "holding_erased", "backups_until_clean"], json!({
                    "backups": { "type": "array", "items": { "$ref": "#/components/schemas/Backup" } },
                    "erasures_in_backups_until": { "type": ["integer", "null"], "description": "When the last kept backup that may hold a subject erased since it was taken is deleted (ms since the epoch; needs [backup] every_hours); null when none holds one or without a schedule." },
                    "holding_erased": { "type": "integer" },
                    "backups_until_clean": { "type": "integer" }
                })),
                "Error": error_body(json!({ "type": "string" }))
            }
        }
    })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

/// An answer with links to the operations that can follow it.
fn linked(mut answer: Value, links: Value) -> Value {
    answer["links"] = links;
    answer
}

fn described(mut schema: Value, description: &str) -> Value {
    schema["description"] = json!(description);
    schema
}

/// A request object: the server refuses properties it does not know.
fn closed(required: &[&str], properties: Value) -> Value {
    let mut schema = object(required, properties);
    schema["additionalProperties"] = json!(false);
    schema
}

/// A tokenize item. `format` constrains the value (digits only for `digits`, 8 to
/// 19 digits for `luhn`) and whether the item may be deterministic (only `email`).
fn tokenize_item(subject: &Value, field: &Value, value: Value) -> Value {
    let mut item = closed(
        &["subject", "field", "value"],
        json!({
            "subject": subject,
            "field": field,
            "value": value,
            "deterministic": {
                "type": "boolean", "default": false,
                "description": "The same subject, field and value give the same token (needs the tokenize_deterministic scope)."
            },
            "format": {
                "enum": ["digits", "luhn", "email", null],
                "description": "The token's shape: digits (as many as the value, which is 1 to 32 digits), luhn (a card number's length and last four, Luhn-valid; the value is 8 to 19 digits), email (an address at example.net). Only email tokens can be deterministic."
            }
        }),
    );
    let shaped = |format: &str, pattern: &str| {
        json!({
            "if": { "required": ["format"], "properties": { "format": { "const": format } } },
            "then": { "properties": {
                "value": { "pattern": pattern },
                "deterministic": { "const": false }
            } }
        })
    };
    item["allOf"] = json!([
        shaped(
            "digits",
            &whole(&format!("[0-9]{{1,{MAX_DIGIT_TOKEN_LEN}}}"))
        ),
        shaped("luhn", &whole("[0-9]{8,19}"))
    ]);
    item
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let doc = public(&LimitsConfig::default());
        for route in crate::api::ROUTES.into_iter().chain(["/openapi.json"]) {
            assert!(
                doc["paths"].get(route).is_some(),
                "{route} is not in the OpenAPI document"
            );
        }
        let text = doc.to_string();
        // Every reference points at something defined.
        for part in text.split("\"$ref\":\"#/components/").skip(1) {
            let target = part.split('"').next().unwrap_or_default();
            let (kind, name) = target.split_once('/').unwrap_or_default();
            assert!(
                doc["components"][kind].get(name).is_some(),
                "dangling $ref {target}"
            );
        }
    }
}
