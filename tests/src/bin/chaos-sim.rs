//! `chaos-sim`: the simulated-network tier (RFC 006, tier 3) from the command
//! line. Runs a fault schedule against five real nodes on turmoil's simulated
//! network for each of a range of seeds, checks every register history and
//! prints one line per seed; the last line is `verdict: valid`, `verdict:
//! invalid` or `verdict: unknown`, and it exits 0 only for valid. A seed that
//! is not valid keeps its history and faults in `chaos-sim-SEED/` and prints
//! the command that replays it. The same seed replays the same run (the
//! printed `run` digest: operations, results, their order, faults, simulated
//! time).

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_tests::chaos::Verdict;
use cairn_tests::chaos::linear::{self, Limits};
use cairn_tests::chaos::register::RegisterWorkload;
use cairn_tests::sim::{self, SimConfig, SimNemesis};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "chaos-sim")]
struct Args {
    /// The first seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How many seeds to run, from --seed on.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Faults per run, one after another.
    #[arg(long, default_value_t = 20)]
    faults: usize,
    /// Simulated milliseconds each fault lasts.
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// Simulated milliseconds between two faults.
    #[arg(long, default_value_t = 1500)]
    gap_ms: u64,
    /// Nemeses, comma separated: isolate, majority, one-way, hold, flaky, slow,
    /// crash (faults, one at a time) and move (data movement during them).
    #[arg(long, value_delimiter = ',', default_value = "isolate,majority,one-way,hold,flaky,slow,crash,move")]
    nemesis: Vec<SimNemesis>,
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    #[arg(long, default_value_t = 2)]
    shards: u32,
    /// Where failing seeds keep their history.
    #[arg(long, default_value = ".")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()))
        .with_writer(std::io::stderr)
        .init();
    anyhow::ensure!(args.seeds >= 1, "--seeds must be at least 1");
    let mut verdict = Verdict::Valid;
    let mut bad = Vec::new();
    for seed in args.seed..args.seed + args.seeds {
        let config = SimConfig {
            seed,
            nodes: args.nodes,
            shards: args.shards,
            nemeses: args.nemesis.clone(),
            faults: args.faults,
            hold: Duration::from_millis(args.hold_ms),
            gap: Duration::from_millis(args.gap_ms),
            workload: RegisterWorkload { keys: 4, processes: 6, seed, ops_per_key: 500 },
        };
        let started = Instant::now();
        let run = sim::run(&config)?;
        let report = linear::check(&run.history, &Limits::default());
        let ok = run.history.iter().filter(|o| o.outcome == cairn_tests::chaos::Outcome::Ok).count();
        println!(
            "seed {seed}: {:.1} s simulated in {:.1} s ({} steps); {} operations ({ok} ok) on {} keys; faults {:?}; run {:016x}; {}",
            run.sim_elapsed.as_secs_f64(),
            started.elapsed().as_secs_f64(),
            run.steps,
            run.history.len(),
            report.keys.len(),
            run.faults_by_type,
            run.fingerprint(),
            report.verdict
        );
        if report.verdict != Verdict::Valid {
            let dir = args.out.join(format!("chaos-sim-{seed}"));
            std::fs::create_dir_all(&dir)?;
            let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
            for op in &run.history {
                serde_json::to_writer(&mut f, op)?;
                f.write_all(b"\n")?;
            }
            std::fs::write(dir.join("faults.txt"), run.faults.join("\n") + "\n")?;
            for k in report.failures() {
                println!("  key {}: {} ({:?})", k.key, k.verdict, k.reason);
            }
            println!(
                "  kept in {}; replay: cargo run --release -p cairn-tests --bin chaos-sim -- --seed {seed} --faults {} --nemesis {}",
                dir.display(),
                args.faults,
                args.nemesis.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
            );
            bad.push(seed);
        }
        verdict = verdict.and(report.verdict);
    }
    if !bad.is_empty() {
        println!("seeds not valid: {bad:?}");
    }
    println!("verdict: {verdict}");
    std::process::exit(if verdict == Verdict::Valid { 0 } else { 1 });
}
