//! `vault-server`: see `vault-server --help` and the README.

fn main() -> std::process::ExitCode {
    vault_server::cli::main()
}
