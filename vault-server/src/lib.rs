//! `vault-server`: the vault over HTTPS (axum + tokio), with API keys and scopes.
//!
//! This crate is empty until the server is built (issue 3); it is a workspace member
//! so that the layout of the repository matches the design from the start.
