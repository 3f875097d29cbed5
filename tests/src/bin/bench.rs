//! `bench`: the write and read throughput of an in-process Cairn cluster, reported as a
//! ratio against what the same disk gives one durable writer, both measured in this run.
//!
//! ```text
//! cargo run --release -p cairn-tests --bin bench -- [--writers 32] [--readers 0]
//!     [--duration 20s] [--shards 8] [--value-bytes 256] [--nodes 3] [--output table|json]
//! ```
//!
//! What it does, in order:
//! 1. **Baseline.** In a fresh temp directory (the one that will hold the cluster's data,
//!    so the same file system and disk), it commits one-row redb transactions with
//!    `Durability::Immediate`, one after another, for `--baseline-duration` (3 s). Each
//!    commit waits for its fsync, so commits/s is the disk's fsync-bound rate for one
//!    writer that does not batch.
//! 2. **Cluster.** It starts `--nodes` real nodes in this process (real gRPC on loopback,
//!    real redb files, every shard replicated on every node), all sharing one
//!    `DirectClient`. Writers loop `put` of fresh keys spread over all shards; readers
//!    loop linearizable `get` of acknowledged keys (if there are readers, 1000 keys are
//!    written first). After `--warmup` (2 s) it records every operation that starts and
//!    completes within `--duration`, and the nodes' storage counters across that window.
//! 3. **Report.** Write and read ops/s, latency percentiles, errors by code, fsyncs summed
//!    over all nodes, fsyncs per acknowledged write, log entries per fsync, and the ratio.
//!    Progress goes to stderr every second; the report goes to stdout.
//!
//! How to read the ratio *write ops/s ÷ baseline commits/s*: every write is appended to
//! the Raft log of each of its replicas, all of which here share the baseline's disk, so
//! without batching a write costs about 3 fsyncs and the ratio could not exceed about
//! 1/3. A ratio above 1/3 means group commit is sharing fsyncs between writes (look at
//! fsyncs per write and log entries per fsync); a ratio above 1 means the replicated
//! cluster commits more durable writes per second than a lone local writer on the same
//! disk. With `--writers 1` there is nothing to batch and each write waits for a leader
//! fsync, a network round trip, a follower fsync and the apply, so expect well under 1.
//!
//! Caveats: clients, nodes and their disks share one machine and its cores, so the
//! figures are for comparing runs on the same machine, not for quoting alone. The ratio
//! cancels out the disk, not the CPU.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use std::collections::BTreeMap;

use cairn_proto::{NodeId, NodeStats, ShardId};
use cairn_tests::TestCluster;
use cairn_tests::bench::baseline::{self, Baseline};
use cairn_tests::bench::cli::{self, Output, parse_duration};
use cairn_tests::bench::latency::summarize;
use cairn_tests::bench::report::{Errors, OpStats, RaftDelta, Ratios, Report, RunConfig, StorageDelta};
use cairn_tests::bench::workload::{self, KeyPool, Progress, Recorded, Window};
use clap::Parser;
use tokio::time::Instant;

/// Keys written before the run when there are readers, so they have something to read.
const PRELOAD_KEYS: usize = 1000;
const PRELOAD_CONCURRENCY: usize = 32;

/// Throughput and latency of an in-process Cairn cluster, as a ratio to this disk's
/// single-writer durable commit rate measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Args {
    /// Concurrent writer tasks, each putting fresh keys in a loop.
    #[arg(long, default_value_t = 32)]
    writers: usize,
    /// Concurrent reader tasks, each getting acknowledged keys in a loop (linearizable).
    #[arg(long, default_value_t = 0)]
    readers: usize,
    /// How long the measured run lasts (e.g. 20s, 500ms, 1m).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured load before the measured run.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// How long the redb baseline runs.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    baseline_duration: Duration,
    /// Shards, each replicated on every node.
    #[arg(long, default_value_t = 8)]
    shards: u32,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Size of each written JSON document.
    #[arg(long, default_value_t = 256)]
    value_bytes: usize,
    /// Seed of the key generator; random when absent (the report prints it).
    #[arg(long)]
    seed: Option<u64>,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.nodes >= 1 && args.shards >= 1, "need at least one node and one shard");
    anyhow::ensure!(args.writers + args.readers >= 1, "need at least one writer or reader");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be positive");
    cli::init_tracing();
    let seed = args.seed.unwrap_or_else(rand::random);

    // One directory for everything, in the same temp root the cluster's nodes use.
    let dir = tempfile::Builder::new().prefix("cairn-bench-").tempdir()?;
    eprintln!(
        "[baseline] redb single-writer durable commits in {} for {:?}",
        dir.path().display(),
        args.baseline_duration
    );
    let baseline = baseline::measure(&dir.path().join("baseline"), args.baseline_duration).context("baseline")?;
    eprintln!(
        "[baseline] {:.1} commits/s, {:.2} fsyncs per commit",
        baseline.commits_per_sec, baseline.fsyncs_per_commit
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run_cluster(&args, seed, baseline, dir.path()))?;
    args.output.print(|| report.to_table(), || report.to_json());
    Ok(())
}

async fn run_cluster(args: &Args, seed: u64, baseline: Baseline, dir: &std::path::Path) -> anyhow::Result<Report> {
    eprintln!("[cluster] starting {} nodes with {} shards", args.nodes, args.shards);
    let cluster_dir = dir.join("cluster");
    let cluster = TestCluster::start_with(args.nodes, args.shards, |c| {
        // TestCluster makes its own temp dir in the same temp root; put the data under
        // the bench's directory instead, next to the baseline, to be sure of the disk.
        c.data_dir = cluster_dir.join(format!("node-{}", c.listen.port()));
    })
    .await
    .context("starting the cluster")?;
    let client = Arc::new(cluster.client()?);
    let pool = Arc::new(KeyPool::default());
    if args.readers > 0 {
        eprintln!("[preload] writing {PRELOAD_KEYS} keys for the readers");
        workload::preload(
            client.clone(),
            pool.clone(),
            PRELOAD_KEYS,
            PRELOAD_CONCURRENCY,
            args.value_bytes,
            seed ^ 0x9e37,
        )
        .await
        .context("preloading keys")?;
    }

    let begin = Instant::now();
    let window = Window { measure_start: begin + args.warmup, end: begin + args.warmup + args.duration };
    let progress = Arc::new(Progress::default());
    let mut tasks = Vec::new();
    for w in 0..args.writers {
        tasks.push(tokio::spawn(workload::writer(
            client.clone(),
            w,
            args.value_bytes,
            window,
            pool.clone(),
            progress.clone(),
            seed.wrapping_add(w as u64),
        )));
    }
    for r in 0..args.readers {
        tasks.push(tokio::spawn(workload::reader(
            client.clone(),
            window,
            pool.clone(),
            progress.clone(),
            seed.wrapping_add((args.writers + r) as u64),
        )));
    }
    let printer = tokio::spawn(print_progress(progress.clone(), begin, window));

    tokio::time::sleep_until(window.measure_start).await;
    let before = (stats(&cluster), raft_view(&cluster));
    tokio::time::sleep_until(window.end).await;
    let after = (stats(&cluster), raft_view(&cluster));
    let mut recorded = Recorded::default();
    for t in tasks {
        recorded.merge(t.await.context("a bench task panicked")?);
    }
    printer.abort();
    eprintln!("[cluster] shutting down");
    // The tasks are done, so this is the last handle: no connection outlives its server.
    drop(client);
    cluster.shutdown().await;

    Ok(build_report(args, seed, dir, baseline, recorded, &before, &after))
}

/// Storage counters summed over the running nodes.
fn stats(cluster: &TestCluster) -> NodeStats {
    cluster.running().map(|n| n.shared.stats()).fold(NodeStats::default(), |mut sum, s| {
        sum.fsyncs += s.fsyncs;
        sum.log_entries_persisted += s.log_entries_persisted;
        sum.write_batches += s.write_batches;
        sum
    })
}

/// Per shard: the highest term any replica reports, and the leader the nodes claim.
struct RaftView {
    terms: BTreeMap<ShardId, u64>,
    leaders: BTreeMap<ShardId, NodeId>,
}

fn raft_view(cluster: &TestCluster) -> RaftView {
    let mut terms = BTreeMap::new();
    for n in cluster.running() {
        for s in n.shared.shard_statuses() {
            let t = terms.entry(s.descriptor.id).or_insert(0);
            *t = s.term.max(*t);
        }
    }
    RaftView { terms, leaders: cluster.leaders() }
}

fn raft_delta(before: &RaftView, after: &RaftView) -> RaftDelta {
    let term_increases =
        after.terms.iter().map(|(shard, t)| t.saturating_sub(before.terms.get(shard).copied().unwrap_or(*t))).sum();
    let leaders_changed = after.leaders.iter().filter(|(shard, l)| before.leaders.get(shard) != Some(l)).count() as u64;
    RaftDelta { term_increases, leaders_changed }
}

/// One stderr line per second: phase, time in phase, ops in phase and the last second's
/// rate.
async fn print_progress(progress: Arc<Progress>, begin: Instant, window: Window) {
    let mut tick = tokio::time::interval_at(begin + Duration::from_secs(1), Duration::from_secs(1));
    let totals = |p: &Progress| {
        (p.writes.load(Ordering::Relaxed), p.reads.load(Ordering::Relaxed), p.errors.load(Ordering::Relaxed))
    };
    let mut last = ((0, 0, 0), begin);
    let mut phase_base = (0, 0, 0);
    let mut measuring = false;
    loop {
        let now = tick.tick().await;
        let cur = totals(&progress);
        // The first tick after the warm-up ends starts the run's counts from the tick
        // before it, which is within a second of the true start.
        if !measuring && now > window.measure_start {
            measuring = true;
            phase_base = last.0;
        }
        let (phase, since) = if measuring { ("run", window.measure_start) } else { ("warmup", begin) };
        let secs = (now - last.1).as_secs_f64();
        eprintln!(
            "[{phase:>6}] {:>5.1}s  writes {:>8} ({:>7.0}/s)  reads {:>8} ({:>7.0}/s)  errors {}",
            (now - since).as_secs_f64(),
            cur.0 - phase_base.0,
            (cur.0 - last.0.0) as f64 / secs,
            cur.1 - phase_base.1,
            (cur.1 - last.0.1) as f64 / secs,
            cur.2 - phase_base.2,
        );
        last = (cur, now);
    }
}

fn build_report(
    args: &Args,
    seed: u64,
    dir: &std::path::Path,
    baseline: Baseline,
    recorded: Recorded,
    (before, raft_before): &(NodeStats, RaftView),
    (after, raft_after): &(NodeStats, RaftView),
) -> Report {
    let secs = args.duration.as_secs_f64();
    let writes = recorded.write_nanos.len() as u64;
    let reads = recorded.read_nanos.len() as u64;
    let fsyncs = after.fsyncs - before.fsyncs;
    let entries = after.log_entries_persisted - before.log_entries_persisted;
    let ratio = |a: f64, b: f64| if b > 0.0 { Some(a / b) } else { None };
    let write_ops_per_sec = writes as f64 / secs;
    let fsyncs_per_sec = fsyncs as f64 / secs;
    let mut examples = recorded.write_errors.examples.clone();
    for (code, m) in &recorded.read_errors.examples {
        examples.entry(code.clone()).or_insert_with(|| m.clone());
    }
    Report {
        config: RunConfig {
            nodes: args.nodes,
            shards: args.shards,
            writers: args.writers,
            readers: args.readers,
            value_bytes: args.value_bytes,
            warmup_s: args.warmup.as_secs_f64(),
            duration_s: secs,
            seed,
            data_dir: dir.display().to_string(),
        },
        writes: OpStats { ops: writes, ops_per_sec: write_ops_per_sec, latency: summarize(recorded.write_nanos) },
        reads: OpStats { ops: reads, ops_per_sec: reads as f64 / secs, latency: summarize(recorded.read_nanos) },
        errors: Errors { write: recorded.write_errors.counts, read: recorded.read_errors.counts, examples },
        storage: StorageDelta {
            fsyncs,
            fsyncs_per_sec,
            fsyncs_per_write: ratio(fsyncs as f64, writes as f64),
            log_entries_persisted: entries,
            log_entries_per_fsync: ratio(entries as f64, fsyncs as f64),
            write_batches: after.write_batches - before.write_batches,
        },
        raft: raft_delta(raft_before, raft_after),
        ratios: Ratios {
            write_ops_vs_baseline_commits: ratio(write_ops_per_sec, baseline.commits_per_sec).unwrap_or(0.0),
            fsync_rate_vs_baseline: ratio(fsyncs_per_sec, baseline.commits_per_sec * baseline.fsyncs_per_commit)
                .unwrap_or(0.0),
        },
        baseline,
    }
}
