//! Entry points for the fuzz targets in `fuzz/` that reach the server's own parsing:
//! the JSON request bodies and the audit query string. Each takes untrusted bytes and
//! runs the code a request meets; it may fail on any input, and panics only where
//! an invariant broke. Not an API: compiled for the fuzz crate (feature `fuzzing`)
//! and for the tests that replay the corpus.

use vault_client::api::{
    ConsentRequest, DetokenizeRequest, ExportRequest, RectifyRequest, SubjectRequest,
    TokenizeRequest, VerifyRequest,
};

use crate::api::{audit_query as parse_audit_query, parse_json};
use crate::auth;

/// The JSON body extractor: the first byte picks the route's request type, the rest
/// is the body.
pub fn json_body(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 7 {
        0 => {
            let _ = parse_json::<TokenizeRequest>(body);
        }
        1 => {
            if let Ok(request) = parse_json::<DetokenizeRequest>(body) {
                let _ = auth::valid_purpose(&request.purpose);
                for token in &request.tokens {
                    let _ = token.parse::<vault_core::Token>();
                }
            }
        }
        2 => {
            let _ = parse_json::<RectifyRequest>(body);
        }
        3 => {
            if let Ok(request) = parse_json::<ConsentRequest>(body) {
                let _ = auth::valid_purpose(&request.purpose);
            }
        }
        4 => {
            let _ = parse_json::<SubjectRequest>(body);
        }
        5 => {
            // As `POST /v1/audit/verify` reads a body it was given.
            if let Ok(request) = parse_json::<VerifyRequest>(body)
                && let Some(head) = request.expected_head
            {
                let _ = auth::decode_hex32(&head.mac);
            }
        }
        _ => {
            let _ = parse_json::<ExportRequest>(body);
        }
    }
}

/// The query string of `GET /v1/audit`, as the router hands it over.
pub fn audit_query(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_audit_query(Some(text));
    let Ok(uri) = axum::http::Uri::try_from(format!("/v1/audit?{text}")) else {
        return;
    };
    if let Ok((_, limit)) = parse_audit_query(uri.query()) {
        assert!((1..=1000).contains(&limit), "limit {limit} out of range");
    }
}

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, for the tests that replay the corpus.
pub const TARGETS: &[(&str, Target)] = &[("json_body", json_body), ("audit_query", audit_query)];

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed corpus and every crash input found so far
    /// (`fuzz/regressions/<target>/`) run through their targets without a panic.
    #[test]
    fn corpus_and_regressions_run_clean() -> Result<(), Box<dyn std::error::Error>> {
        let fuzz = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut ran = 0;
        for (target, run) in TARGETS {
            for dir in ["corpus", "regressions"] {
                let Ok(files) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
                    continue;
                };
                for file in files {
                    run(&std::fs::read(file?.path())?);
                    ran += 1;
                }
            }
        }
        assert!(ran > 0, "no corpus under {}", fuzz.display());
        Ok(())
    }
}
