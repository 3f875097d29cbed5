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
    /// Address for the gRPC services (KV, Raft, Admin, Pd).
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
    /// PD endpoints to register and heartbeat with: `HOST:PORT,HOST:PORT`
    /// (default: the addresses in --initial-pd).
    #[arg(long)]
    pub pd: Option<String>,
    /// The placement driver's members: `1=127.0.0.1:7700,2=127.0.0.1:7701,3=127.0.0.1:7702`.
    /// A node whose address is listed is a PD member with that id; every member
    /// gets the same list. They bootstrap the cluster once.
    #[arg(long)]
    pub initial_pd: Option<String>,
    /// Bootstrap: shards to create, cutting the key space evenly (default 1).
    #[arg(long)]
    pub initial_shards: Option<u32>,
    /// Bootstrap: replication factor (default: the number of PD members, at most 3).
    #[arg(long)]
    pub replication_factor: Option<u32>,
    /// Bootstrap: how long a node may be down before its replicas are
    /// re-created elsewhere, e.g. `30s`, `30m` (default 30m). Change it later
    /// with `cairnctl config set max-node-down-time`.
    #[arg(long)]
    pub max_node_down_time: Option<String>,
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
        if let Some(v) = &self.initial_pd {
            config.initial_pd = parse_members(v).map_err(anyhow::Error::msg).context("--initial-pd")?;
        }
        if let Some(v) = &self.pd {
            config.pd = v.split(',').map(|a| a.trim().to_string()).filter(|a| !a.is_empty()).collect();
        }
        if let Some(v) = self.replication_factor {
            config.replication_factor = Some(v);
        }
        if let Some(v) = self.initial_shards {
            config.initial_shards = v;
        }
        if let Some(v) = &self.max_node_down_time {
            config.max_node_down_time_ms = cairn_placement::admin::parse_duration_ms(v)
                .with_context(|| format!("--max-node-down-time: {v:?} is not a duration like 30s or 30m"))?;
        }
        config.validate().map_err(anyhow::Error::msg).context("invalid configuration")?;
        Ok(config)
    }
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=error,h2=warn,tower=warn,hyper=warn"));
    // Colours only on a terminal: playground and test logs go to files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_ansi(ansi).try_init();
}

/// Runs a node until SIGTERM or SIGINT, then shuts it down cleanly.
pub async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let config = args.to_config()?;
    let span = tracing::info_span!("node", addr = %config.advertise_addr());
    let _enter = span.enter();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // Starting may wait for the placement driver; a signal stops the wait.
    let node = tokio::select! {
        node = Node::start(config) => node?,
        _ = tokio::signal::ctrl_c() => return Ok(()),
        _ = term.recv() => return Ok(()),
    };
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
