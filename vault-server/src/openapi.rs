//! `/openapi.json`: an OpenAPI 3.1 description of every route.
//!
//! Written by hand next to the wire types (`vault_client::api`); a test checks that
//! every route the router serves is described.

use serde_json::{Value, json};

fn error_responses(codes: &[u16]) -> Value {
    let mut map = serde_json::Map::new();
    for code in codes {
        map.insert(
            code.to_string(),
            json!({ "$ref": format!("#/components/responses/E{code}") }),
        );
    }
    Value::Object(map)
}

fn with_errors(mut ok: Value, codes: &[u16]) -> Value {
    if let (Some(ok), Value::Object(errors)) = (ok.as_object_mut(), error_responses(codes)) {
        ok.extend(errors);
    }
    ok
}

fn body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn answer(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

const KEYED: [u16; 8] = [400, 401, 403, 405, 413, 429, 500, 503];

/// The document.
pub fn document() -> Value {
    let token_param = json!([{
        "name": "token", "in": "path", "required": true,
        "schema": { "type": "string", "pattern": "^([0-9]{1,32}|tok_[a-z2-7]{32}(@example\\.net)?)$" }
    }]);
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "pii-vault",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Personal-data vault: values encrypted under a key per data subject, opaque tokens for everyone else. Subject ids and values travel only in request bodies."
        },
        "security": [{ "apiKey": [] }],
        "paths": {
            "/v1/tokenize": { "post": {
                "summary": "Tokenize values (all-or-nothing). Scope: tokenize.",
                "requestBody": body("TokenizeRequest"),
                "responses": with_errors(json!({ "200": answer("One token per item, in order.", "TokenizeResponse") }), &KEYED)
            }},
            "/v1/detokenize": { "post": {
                "summary": "Turn tokens back into values, for a purpose the key is allowed. Scope: detokenize.",
                "requestBody": body("DetokenizeRequest"),
                "responses": with_errors(json!({ "200": answer("One result per token, in order.", "DetokenizeResponse") }), &KEYED)
            }},
            "/v1/tokens/{token}": {
                "parameters": token_param,
                "put": {
                    "summary": "Rectify: replace the value behind a token; the token stays. Scope: rectify.",
                    "requestBody": body("RectifyRequest"),
                    "responses": with_errors(json!({ "204": { "description": "Rectified." } }), &[400, 401, 403, 404, 405, 409, 410, 413, 429, 500, 503])
                },
                "delete": {
                    "summary": "Delete one record. Scope: delete.",
                    "responses": with_errors(json!({ "204": { "description": "Deleted." } }), &[400, 401, 403, 404, 405, 410, 429, 500, 503])
                }
            },
            "/v1/subjects/erase": { "post": {
                "summary": "Erase a subject (right to be forgotten): destroys its key; idempotent. Scope: erase.",
                "requestBody": body("SubjectRequest"),
                "responses": with_errors(json!({ "200": answer("Erasure receipt; no personal data.", "ErasureReceipt") }), &KEYED)
            }},
            "/v1/subjects/export": { "post": {
                "summary": "Export a subject's records, consents and access log (access and portability), one page at a time: send each answer's next_cursor back as cursor until it is null. Scope: export.",
                "requestBody": body("ExportRequest"),
                "responses": with_errors(json!({ "200": answer("The subject's records.", "SubjectExport") }), &KEYED)
            }},
            "/v1/subjects/consent": { "post": {
                "summary": "Record a grant or withdrawal of a subject's consent to a declared, consent-based purpose of the key; it applies to the next request. Scope: consent.",
                "requestBody": body("ConsentRequest"),
                "responses": with_errors(json!({ "204": { "description": "Recorded." } }), &[400, 401, 403, 405, 409, 413, 429, 500, 503])
            }},
            "/v1/subjects/consents": { "post": {
                "summary": "A subject's consents: current state and history per purpose. Scope: consent.",
                "requestBody": body("SubjectRequest"),
                "responses": with_errors(json!({ "200": answer("Consents.", "SubjectConsents") }), &KEYED)
            }},
            "/v1/subjects/lookup": { "post": {
                "summary": "What the vault holds about a subject, without the values: the first records (token, field, time), consents, the latest audit events about it, the backups that hold it. Recorded as a lookup, also when nothing is found. Scope: export.",
                "requestBody": body("SubjectRequest"),
                "responses": with_errors(json!({ "200": answer("The overview.", "SubjectOverview") }), &KEYED)
            }},
            "/v1/whoami": { "get": {
                "summary": "The calling key's name, scopes and purposes. Any valid key.",
                "responses": with_errors(json!({ "200": answer("The key.", "WhoAmI") }), &[401, 405, 429, 500, 503])
            }},
            "/v1/purposes": { "get": {
                "summary": "The declared purposes, their lawful bases and fields. Any valid key.",
                "responses": with_errors(json!({ "200": answer("Purposes.", "Purposes") }), &[401, 405, 429, 500, 503])
            }},
            "/v1/audit": { "get": {
                "summary": "Audit events in sequence order (no personal data). Scope: audit.",
                "parameters": [
                    { "name": "after", "in": "query", "schema": { "type": "integer" }, "description": "Events after this sequence number." },
                    { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } }
                ],
                "responses": with_errors(json!({ "200": answer("Events.", "AuditEvents") }), &[400, 401, 403, 405, 429, 500, 503])
            }},
            "/v1/audit/head": { "get": {
                "summary": "The trail's end (last sequence number and MAC), to keep outside the vault. Scope: audit.",
                "responses": with_errors(json!({ "200": answer("The head.", "AuditHead") }), &[401, 403, 405, 429, 500, 503])
            }},
            "/v1/inventory": { "get": {
                "summary": "The data inventory, the record of processing (GDPR Art. 30): per field, live records, subjects, the oldest record's day, retention and the purposes that may read it; totals, erasures, pending purges, KEK versions and backups. Counts only. Scope: audit.",
                "responses": with_errors(json!({ "200": answer("The inventory.", "Inventory") }), &[401, 403, 405, 429, 500, 503])
            }},
            "/v1/audit/verify": { "post": {
                "summary": "Check the whole audit trail: chain, order and checkpoint; with expected_head, whether the trail still holds it. Scope: audit.",
                "requestBody": { "required": false, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/VerifyRequest" } } } },
                "responses": with_errors(json!({ "200": answer("The result, with the first bad event.", "AuditCheck") }), &[401, 403, 405, 429, 500, 503])
            }},
            "/v1/admin/rotate": { "post": {
                "summary": "Start a key-encryption-key rotation; rewrapping runs in the background. Scope: admin.",
                "responses": with_errors(json!({ "200": answer("Key status.", "KeyStatus") }), &[401, 403, 405, 429, 500, 503])
            }},
            "/v1/admin/keys": { "get": {
                "summary": "Key versions, subject keys per version, rotation and purge progress. Scope: admin.",
                "responses": with_errors(json!({ "200": answer("Key status.", "KeyStatus") }), &[401, 403, 405, 429, 500, 503])
            }},
            "/v1/admin/keys/retire": { "post": {
                "summary": "Finish the rotation under way (rewrapping every subject key) and retire the old KEK versions: removed from the keyring and the header. Scope: admin.",
                "responses": with_errors(json!({ "200": answer("The versions retired and the key status.", "KeyRetirement") }), &[401, 403, 405, 429, 500, 503])
            }},
            "/v1/admin/backups": {
                "post": {
                    "summary": "Take a backup now, while serving; older ones past `keep` are deleted. Scope: admin.",
                    "responses": with_errors(json!({ "201": answer("The backup.", "BackupCreated") }), &[401, 403, 405, 409, 429, 500, 503])
                },
                "get": {
                    "summary": "The kept backups, and how long erased subjects live on in them. Scope: admin.",
                    "responses": with_errors(json!({ "200": answer("The backups.", "Backups") }), &[401, 403, 405, 409, 429, 500, 503])
                }
            },
            "/healthz": { "get": {
                "summary": "Liveness.", "security": [],
                "responses": { "200": { "description": "The process serves requests." } }
            }},
            "/readyz": { "get": {
                "summary": "Readiness: 503 once shutdown has begun.", "security": [],
                "responses": { "200": { "description": "Ready." }, "503": { "description": "Shutting down." } }
            }},
            "/openapi.json": { "get": {
                "summary": "This document.", "security": [],
                "responses": { "200": { "description": "OpenAPI 3.1." } }
            }}
        },
        "components": {
            "securitySchemes": { "apiKey": { "type": "http", "scheme": "bearer" } },
            "responses": {
                "E400": error_answer("Malformed body, unknown field, invalid item (named by index), invalid token or purpose."),
                "E401": error_answer("No API key, or not a known one."),
                "E403": error_answer("The key lacks the route's scope, or the purpose."),
                "E404": error_answer("No record for this token."),
                "E405": error_answer("The route does not take this method."),
                "E409": error_answer("A deterministic token cannot be rectified; consent recorded for a purpose whose basis is not consent; no token of the format and length asked for is left."),
                "E410": error_answer("The token's subject was erased, or the record is past its retention period."),
                "E413": error_answer("Body, value or batch over its limit."),
                "E429": error_answer("Concurrency limit reached; retry later."),
                "E500": error_answer("Internal error; the log has details under the x-request-id."),
                "E503": error_answer("The request did not complete within the server's timeout; a write may or may not have taken effect.")
            },
            "schemas": {
                "TokenizeRequest": object(&["items"], json!({
                    "items": { "type": "array", "items": { "$ref": "#/components/schemas/TokenizeItem" } }
                })),
                "TokenizeItem": object(&["subject", "field", "value"], json!({
                    "subject": { "type": "string", "description": "Data subject id (personal data)." },
                    "field": { "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$" },
                    "value": { "type": "string" },
                    "deterministic": { "type": "boolean", "default": false },
                    "format": {
                        "enum": ["digits", "luhn", "email"],
                        "description": "The token's shape: digits (as many as the value, which is digits only), luhn (a card number's length and last four, Luhn-valid), email (an address at example.net). Deterministic only as email."
                    }
                })),
                "TokenizeResponse": object(&["tokens"], json!({
                    "tokens": { "type": "array", "items": { "type": "string" } }
                })),
                "DetokenizeRequest": object(&["tokens", "purpose"], json!({
                    "tokens": { "type": "array", "items": { "type": "string" } },
                    "purpose": { "type": "string", "pattern": "^[a-z0-9_.-]{1,64}$" }
                })),
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
                    "mac": { "type": ["string", "null"], "pattern": "^[0-9a-f]{64}$" }
                })),
                "VerifyRequest": { "type": "object", "additionalProperties": false, "properties": {
                    "expected_head": object(&["seq", "mac"], json!({
                        "seq": { "type": "integer", "minimum": 0 },
                        "mac": { "type": "string", "pattern": "^[0-9a-f]{64}$" }
                    }))
                }},
                "RectifyRequest": object(&["value"], json!({ "value": { "type": "string" } })),
                "ConsentRequest": object(&["subject", "purpose", "granted"], json!({
                    "subject": { "type": "string" },
                    "purpose": { "type": "string", "pattern": "^[a-z0-9_.-]{1,64}$" },
                    "granted": { "type": "boolean" },
                    "source": { "type": "string", "description": "At most 256 bytes (UTF-8), no control characters." }
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
                "SubjectRequest": object(&["subject"], json!({ "subject": { "type": "string" } })),
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
                "ExportRequest": object(&["subject"], json!({
                    "subject": { "type": "string" },
                    "cursor": { "type": "string", "description": "The previous page's next_cursor; absent for the first page." },
                    "limit": { "type": "integer", "minimum": 1, "description": "Most records and events in the page; at most, and by default, [limits] export_page." }
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
                "Error": object(&["error"], json!({
                    "error": object(&["code", "message"], json!({
                        "code": { "type": "string" },
                        "message": { "type": "string" },
                        "item": { "type": "integer", "description": "Index of the offending batch item." }
                    }))
                }))
            }
        }
    })
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({ "type": "object", "required": required, "properties": properties })
}

fn error_answer(description: &str) -> Value {
    answer(description, "Error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        let doc = document();
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
