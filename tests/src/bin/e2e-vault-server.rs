//! The server under test: the shipped `vault-server` command line, built in this
//! package so that end-to-end tests can start it as a process.

fn main() -> std::process::ExitCode {
    vault_server::cli::main()
}
