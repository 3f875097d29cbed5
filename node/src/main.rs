//! The `cairn` binary: `cairn server` runs a storage node, `cairn playground`
//! runs a local cluster of them as child processes.

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: a sharded, replicated JSON document store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a storage node.
    Server(cairn_node::cli::ServerArgs),
    /// Run a local cluster as child processes of this command.
    Playground(cairn_node::playground::PlaygroundArgs),
    /// Print the default configuration as TOML.
    DefaultConfig,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        Command::Server(args) => runtime.block_on(cairn_node::cli::run_server(args)),
        Command::Playground(args) => runtime.block_on(cairn_node::playground::run(args)),
        Command::DefaultConfig => {
            print!("{}", toml::to_string(&cairn_node::NodeConfig::default())?);
            Ok(())
        }
    }
}

