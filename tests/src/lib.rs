//! End-to-end tests of the vault, in their own crate: see `tests/`.
