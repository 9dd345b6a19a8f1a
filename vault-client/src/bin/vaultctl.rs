//! `vaultctl`: see `vaultctl --help` and the README.

fn main() -> std::process::ExitCode {
    vault_client::cli::main()
}
