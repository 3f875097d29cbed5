//! `cairn server`: configuration from a TOML file and flags, logging, signals.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{NodeConfig, parse_members};
use crate::node::Node;

#[derive(Args, Debug, Clone, Default)]
pub struct ServerArgs {
    /// TOML configuration file; flags override its values.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub node_id: Option<u64>,
    /// Address for the gRPC services (KV, Raft, Admin).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address peers and clients use for this node (default: --listen).
    #[arg(long)]
    pub advertise: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the Prometheus endpoint (GET /metrics).
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Static bootstrap: `1=127.0.0.1:7701,2=127.0.0.1:7702,3=127.0.0.1:7703`.
    #[arg(long)]
    pub initial_members: Option<String>,
    /// Static bootstrap: number of shards cutting the key space evenly.
    #[arg(long)]
    pub initial_shards: Option<u32>,
}

impl ServerArgs {
    pub fn to_config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => NodeConfig::default(),
        };
        if let Some(v) = self.node_id {
            config.node_id = v;
        }
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = &self.advertise {
            config.advertise = Some(v.clone());
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = Some(v);
        }
        if let Some(v) = &self.initial_members {
            config.initial_members = parse_members(v).map_err(anyhow::Error::msg).context("--initial-members")?;
        }
        if let Some(v) = self.initial_shards {
            config.initial_shards = v;
        }
        config.validate().map_err(anyhow::Error::msg).context("invalid configuration")?;
        Ok(config)
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error,h2=warn,tower=warn,hyper=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).try_init();
}

/// Runs a node until SIGTERM or SIGINT, then shuts it down cleanly.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let config = args.to_config()?;
    let span = tracing::info_span!("node", node_id = config.node_id);
    let _enter = span.enter();
    let node = Node::start(config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    node.shutdown().await;
    Ok(())
}

#[derive(Parser)]
#[command(name = "cairn", version, about = "Cairn: a sharded, replicated JSON document store")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a storage node.
    Server(ServerArgs),
    /// Run a local cluster as child processes of this command.
    Playground(crate::playground::PlaygroundArgs),
    /// Print the default configuration as TOML.
    DefaultConfig,
}

/// Entry point of the `cairn` binary.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    match cli.command {
        Command::Server(args) => runtime.block_on(run_server(args)),
        Command::Playground(args) => runtime.block_on(crate::playground::run(args)),
        Command::DefaultConfig => {
            print!("{}", toml::to_string(&NodeConfig::default())?);
            Ok(())
        }
    }
}
