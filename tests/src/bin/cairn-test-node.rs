//! The `cairn` binary, built inside this package for process-level tests.

fn main() -> anyhow::Result<()> {
    cairn_node::cli::main()
}
