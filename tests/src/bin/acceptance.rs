//! `acceptance`: issue 4's acceptance steps against real processes, as a user
//! runs them: `cairn playground`, `cairn server --pd` joins, `cairnctl` for the
//! admin verbs, `cairn_client::Client` for the workload. Long (minutes), so a
//! command of its own rather than a CI test.
//!
//! ```text
//! cargo run --release -p cairn-tests --bin acceptance -- scale-out|repair|drain
//!     [--data-mb 200] [--clients 16] [--shards 24] [--keep-dir]
//! ```
//!
//! Progress goes to stderr (once a second), the summary to stdout; the exit code
//! is 0 when every required check passed, 1 when one failed, 2 when the run
//! could not be completed. See [`cairn_tests::acceptance`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cairn_tests::acceptance::procs::Binaries;
use cairn_tests::acceptance::report::Summary;
use cairn_tests::acceptance::setup::Options;
use cairn_tests::acceptance::{drain, repair, scale_out};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 3 nodes with data; 2 join; the PD balances while clients work.
    ScaleOut,
    /// 5 nodes; SIGKILL one; the PD re-creates its replicas after max-node-down-time.
    Repair,
    /// 5 nodes; drain and remove node 2 (a PD member), then node 4.
    Drain,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::ScaleOut => "scale-out",
            Scenario::Repair => "repair",
            Scenario::Drain => "drain",
        }
    }
}

/// Issue 4's acceptance steps (scale out, repair, drain) against real
/// processes: a `cairn playground`, `cairn server` nodes joining it, `cairnctl`
/// and client workloads.
///
/// Uses the `cairn` and `cairnctl` binaries next to this one (same target
/// directory and profile); it builds them first with `cargo build -p cairn-node
/// --bins` unless --no-build is given (then build them yourself with `cargo
/// build --release -p cairn-node --bins`).
#[derive(Debug, Parser)]
#[command(name = "acceptance")]
struct Args {
    scenario: Scenario,
    /// Documents loaded before the scenario's action, in MB (10^6 bytes of keys
    /// plus values). Default: 200 for scale-out, 64 for repair and drain.
    #[arg(long)]
    data_mb: Option<f64>,
    /// Concurrent clients writing and reading during the scenario.
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Shards the playground creates.
    #[arg(long, default_value_t = 24)]
    shards: u32,
    /// Size of each document's JSON text.
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// Put-then-get iterations per second of each client (bounds the data written).
    #[arg(long, default_value_t = 10.0)]
    client_rate: f64,
    /// Concurrent batch writers of the bulk load.
    #[arg(long, default_value_t = 8)]
    load_tasks: usize,
    /// Deadline of the scenario's main wait (balance, repair, each drain): `900s`, `15m`.
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the data directory (node logs and databases) after a passed run; a
    /// failed run always keeps it.
    #[arg(long)]
    keep_dir: bool,
    /// Where to create the run's directory (default: the system temp directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Do not build cairn and cairnctl first.
    #[arg(long)]
    no_build: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 90s or 15m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "ms" => n / 1000.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    if std::env::var_os("ACCEPTANCE_LOG").is_some() {
        let filter = tracing_subscriber::EnvFilter::from_env("ACCEPTANCE_LOG");
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    }
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let bins = Binaries::locate(!args.no_build)?;
    let parent = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!("cairn-acceptance-{}-", args.scenario.name()))
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let dir = tmp.path().to_path_buf();
    eprintln!("acceptance {}: directory {}", args.scenario.name(), dir.display());
    let default_mb = if args.scenario == Scenario::ScaleOut { 200.0 } else { 64.0 };
    let opts = Options {
        data_mb: args.data_mb.unwrap_or(default_mb),
        clients: args.clients,
        shards: args.shards,
        value_bytes: args.value_bytes,
        client_rate: args.client_rate,
        load_tasks: args.load_tasks,
        timeout: args.timeout,
    };
    let mut summary_settings = vec![
        ("data".to_string(), format!("{} MB of {} B documents", opts.data_mb, opts.value_bytes)),
        ("binaries".to_string(), bins.cairn.display().to_string()),
    ];
    let scenario = async {
        match args.scenario {
            Scenario::ScaleOut => scale_out::run(opts, bins, dir.clone()).await,
            Scenario::Repair => repair::run(opts, bins, dir.clone()).await,
            Scenario::Drain => drain::run(opts, bins, dir.clone()).await,
        }
    };
    // Ctrl-C drops the scenario, and with it every process it started.
    let outcome: anyhow::Result<Summary> = tokio::select! {
        outcome = scenario => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let keep = args.keep_dir || !matches!(&outcome, Ok(s) if s.passed());
    if keep {
        let kept = tmp.keep();
        eprintln!("kept {} (node logs in node-*/node.log)", kept.display());
    }
    let mut summary = outcome?;
    summary_settings.append(&mut summary.settings);
    summary.settings = summary_settings;
    print!("{}", summary.render());
    Ok(summary.passed())
}
