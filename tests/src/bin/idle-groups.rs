//! Measures what idle shard groups cost: starts an in-process 3-node cluster
//! hosting `--shards` groups (every group on every node), waits until every group
//! has a leader, then samples this process's CPU time over `--idle` seconds of no
//! client traffic. The baseline is the same measurement with one group, taken
//! in the same run, so the report is a ratio on this machine.
//!
//! `cargo run --release -p cairn-tests --bin idle-groups -- --shards 1000`

use std::time::{Duration, Instant};

use cairn_tests::TestCluster;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Groups per node (each replicated on all three nodes).
    #[arg(long, default_value_t = 1000)]
    shards: u32,
    /// Seconds of idleness to sample.
    #[arg(long, default_value_t = 10)]
    idle: u64,
    /// Heartbeat interval; election timeouts are 4x and 8x it.
    #[arg(long, default_value_t = cairn_node::raft::RaftSettings::default().heartbeat_interval_ms)]
    heartbeat_ms: u64,
    /// Keep every group awake (no quiescence), to see what it saves.
    #[arg(long)]
    no_quiesce: bool,
    /// Seconds to wait after start-up before sampling (quiescence after 5 s idle).
    #[arg(long, default_value_t = 12)]
    settle: u64,
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(&stat);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the comm.
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

async fn measure(
    shards: u32,
    idle: u64,
    heartbeat_ms: u64,
    settle: u64,
    quiesce: bool,
) -> anyhow::Result<(f64, Duration)> {
    let started = Instant::now();
    let cluster = TestCluster::start_with(3, shards, |c| {
        // The production heartbeat to the PD (the test harness uses a faster one).
        c.heartbeat_interval_ms = cairn_node::NodeConfig::default().heartbeat_interval_ms;
        c.raft = cairn_node::raft::RaftSettings {
            heartbeat_interval_ms: heartbeat_ms,
            election_timeout_min_ms: 4 * heartbeat_ms,
            election_timeout_max_ms: 8 * heartbeat_ms,
            quiesce_after_ms: if quiesce { 5_000 } else { 0 },
            ..Default::default()
        };
    })
    .await?;
    let ready = started.elapsed();
    eprintln!("[{shards} groups] every group has a leader after {:.1} s; sampling {idle} s idle", ready.as_secs_f64());
    // Let the initial elections' traffic settle and idle groups go quiescent.
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let asleep: usize =
        cluster.running().map(|n| n.shared.registry.all().iter().filter(|r| r.group.is_quiescent()).count()).sum();
    eprintln!("[{shards} groups] {asleep} of {} replicas quiescent", 3 * shards);
    let cpu0 = cpu_seconds()?;
    let t0 = Instant::now();
    for s in 1..=idle {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "[{shards} groups] {s}/{idle} s  cpu {:.1}%",
            100.0 * (cpu_seconds()? - cpu0) / t0.elapsed().as_secs_f64()
        );
    }
    let cpu = (cpu_seconds()? - cpu0) / t0.elapsed().as_secs_f64();
    cluster.shutdown().await;
    Ok((cpu, ready))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt().with_env_filter("warn,openraft=error").try_init();
    let (base, _) = measure(1, args.idle, args.heartbeat_ms, args.settle, !args.no_quiesce).await?;
    let (cpu, ready) = measure(args.shards, args.idle, args.heartbeat_ms, args.settle, !args.no_quiesce).await?;
    println!(
        "idle cost of {} groups on each of 3 nodes (heartbeat {} ms, quiescence {})",
        args.shards,
        args.heartbeat_ms,
        if args.no_quiesce { "off" } else { "on" }
    );
    println!("  baseline, 1 group:     {:.1}% of one core for the 3 nodes", 100.0 * base);
    println!(
        "  {} groups:          {:.1}% of one core for the 3 nodes ({:.2} x baseline)",
        args.shards,
        100.0 * cpu,
        cpu / base.max(1e-6)
    );
    println!("  per group per node:    {:.3}% of one core", 100.0 * cpu / (3.0 * args.shards as f64));
    println!("  start-up to all leaders: {:.1} s", ready.as_secs_f64());
    Ok(())
}
