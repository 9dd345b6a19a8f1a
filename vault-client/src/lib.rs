//! `vault-client`: a typed async client for the vault's HTTPS API, and the `vaultctl`
//! CLI.
//!
//! ```no_run
//! use vault_client::{Client, api::TokenizeItem};
//!
//! # async fn demo() -> Result<(), vault_client::Error> {
//! let client = Client::builder("https://127.0.0.1:8200")
//!     .api_key(std::env::var("VAULT_API_KEY").unwrap_or_default())
//!     .ca_cert_pem(&std::fs::read("vault-data/dev/tls-cert.pem").unwrap_or_default())?
//!     .build()?;
//! let tokens = client
//!     .tokenize(vec![TokenizeItem::new("customer-42", "email", "alice@example.com")])
//!     .await?;
//! let values = client.detokenize(&tokens, "support").await?;
//! # let _ = values; Ok(()) }
//! ```
//!
//! [`api`] holds the wire types; it is all there is without the default `http`
//! feature (the server uses it that way).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;

#[cfg(feature = "http")]
pub mod cli;
#[cfg(feature = "http")]
mod client;
#[cfg(feature = "http")]
mod inventory;

#[cfg(feature = "http")]
pub use client::{Client, ClientBuilder, Error, RetryPolicy};
