//! `vault-server`: the vault over HTTPS (axum + tokio), with API keys and scopes.
//!
//! The server adds no storage logic of its own: every route is one `vault-core` call,
//! on the blocking pool, or on the async worker when it is short and waits for
//! nobody (`work`). What it adds is the boundary: TLS, API keys with scopes
//! and purposes, request limits, load shedding, a request timeout, metrics, logs
//! without personal data, and a graceful shutdown that closes the vault.
//!
//! The binary is a thin wrapper around [`cli::main`]; the router ([`api::router`])
//! is public so that it can be tested without a socket.

// One unsafe call, in `cli`: removing the root key's variable from the process
// environment, on the main thread before any other thread exists.
#![deny(unsafe_code)]
// The OpenAPI document is one `json!` literal, deeper than the default limit.
#![recursion_limit = "256"]

mod access_log;
pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
mod desk;
pub mod dev;
mod error;
mod metrics;
mod openapi;
mod request_id;
mod serve;
pub mod staging;
pub mod throttle;
mod work;

/// The server's parsers of untrusted bytes, for the fuzz targets in `fuzz/`
/// (feature `fuzzing`) and the tests that replay their corpus. Not part of the API.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use error::ApiError;
pub use serve::serve;
