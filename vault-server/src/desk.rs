//! The privacy desk: a small web page for privacy officers (look a subject up,
//! reveal a value for a purpose, export, record consent, erase, read the audit
//! trail), served from files compiled into the binary. It holds no data: it asks
//! for an API key, keeps it in the page's memory, and calls the API like any client.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// Nothing but this server's own files: no inline script or style, no other origin,
/// no framing, no form posted anywhere.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

const INDEX: &str = include_str!("../desk/index.html");
const SCRIPT: &str = include_str!("../desk/desk.js");
const STYLE: &str = include_str!("../desk/desk.css");
const ICON: &str = include_str!("../desk/favicon.svg");

pub(crate) async fn redirect() -> Redirect {
    Redirect::permanent("/desk/")
}

pub(crate) async fn index() -> Response {
    page(INDEX, "text/html; charset=utf-8")
}

pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "desk.js" => page(SCRIPT, "text/javascript; charset=utf-8"),
        "desk.css" => page(STYLE, "text/css; charset=utf-8"),
        "favicon.svg" => page(ICON, "image/svg+xml"),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn page(body: &'static str, kind: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_TYPE, kind);
    set(headers, header::CONTENT_SECURITY_POLICY, POLICY);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    // The page may show personal data: never cached.
    set(headers, header::CACHE_CONTROL, "no-store");
    response
}
