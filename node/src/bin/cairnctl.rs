//! `cairnctl`, the CLI of `cairn-client` (see `cairn_client::cli`).

fn main() -> std::process::ExitCode {
    cairn_client::cli::main()
}
