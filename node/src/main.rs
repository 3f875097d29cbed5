//! The `cairn` binary: `cairn server` runs a storage node, `cairn playground`
//! runs a local cluster of them as child processes.

fn main() -> anyhow::Result<()> {
    cairn_node::cli::main()
}
