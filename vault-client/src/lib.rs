//! `vault-client`: a typed client for the vault's HTTP API and the `vaultctl` CLI.
//!
//! This crate is empty until the server and client are built (issue 3); it is a
//! workspace member so that the layout of the repository matches the design.
