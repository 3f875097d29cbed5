//! `chaos`: runs workloads against a cluster of real `cairn` processes while
//! nemeses strike on a schedule drawn from the seed, checks the recorded
//! histories and prints a report whose last line is `verdict: valid`,
//! `verdict: invalid` or `verdict: unknown`. Exits 0 only for valid. See the
//! README ("Chaos runs") and docs/rfcs/006-chaos.md.

use std::path::PathBuf;
use std::time::Duration;

use cairn_tests::chaos::Verdict;
use cairn_tests::chaos::nemesis::Nemesis;
use cairn_tests::chaos::run::{RunConfig, Workload, run};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "chaos")]
struct Args {
    /// Seed of the fault schedule and the workloads' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of workload and faults (final reads and checks come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Nemeses, comma separated: kill, pause, pd-leader, partition, link
    /// (process and network faults, one at a time) and move, drain,
    /// replication (data movement, alongside them). Partition needs root
    /// (network namespaces and iptables); without root it is skipped with a
    /// message. Nodes run with fault injection on: a kill loses what the node
    /// had not synced, as a power failure would.
    #[arg(long, value_delimiter = ',', default_value = "kill,pause,pd-leader,partition,link,move,drain,replication")]
    nemesis: Vec<Nemesis>,
    /// Workloads, comma separated: register, set, scan.
    #[arg(long, value_delimiter = ',', default_value = "register,set,scan")]
    workload: Vec<Workload>,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// The server binary; default: `cairn` next to this executable, built
    /// first with `cargo build -p cairn-node --bins` unless --no-build.
    #[arg(long)]
    server_bin: Option<PathBuf>,
    #[arg(long)]
    no_build: bool,
    /// Keep the run's directory (histories, logs) even when it is valid.
    #[arg(long)]
    keep_dir: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let server_bin = match args.server_bin {
        Some(bin) => bin,
        None => cairn_tests::acceptance::procs::Binaries::locate(!args.no_build)?.cairn,
    };
    anyhow::ensure!(args.nodes >= 3, "--nodes must be at least 3 (the PD has 3 members)");
    anyhow::ensure!(args.time_limit >= 5, "--time-limit must be at least 5 s");
    let config = RunConfig {
        seed: args.seed,
        time_limit: Duration::from_secs(args.time_limit),
        nemeses: args.nemesis,
        workloads: args.workload,
        nodes: args.nodes,
        shards: args.shards,
        server_bin,
        keep_dir: args.keep_dir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build()?;
    // On SIGINT or SIGTERM the run is dropped: its nodes are killed, its
    // network namespaces deleted and its directory kept.
    let result = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(&config) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (SIGINT); nodes stopped")),
            _ = term.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM); nodes stopped")),
        }
    })?;
    print!("{}", result.report);
    std::process::exit(if result.verdict == Verdict::Valid { 0 } else { 1 });
}
