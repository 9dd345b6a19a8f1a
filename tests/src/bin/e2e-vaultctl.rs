//! The CLI under test: the shipped `vaultctl`, built in this package so that
//! end-to-end tests can run it as a process.

fn main() -> std::process::ExitCode {
    vault_client::cli::main()
}
