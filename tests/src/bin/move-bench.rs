//! `move-bench`: how long moving a large shard's replica takes (learner added ->
//! old replica removed), idle and under a write load, with the snapshot's
//! throughput beside the disk's sequential write rate measured in the same run,
//! and what the move costs the clients (issue 4).
//!
//! ```text
//! cargo run --release -p cairn-tests --bin move-bench -- [--shard-mb 400] [--writers 16]
//!     [--value-bytes 4096] [--etcd etcd|PATH|off] [--output table|json]
//! ```
//!
//! What it does, in order (progress on stderr every second, the report on stdout):
//! 1. **Disk.** In a fresh temp directory (the one that will hold the cluster, so the
//!    same file system): the sequential write rate (`--seqwrite-mb`, by default the
//!    shard's size, in 1 MiB buffered writes, one fsync at the end).
//! 2. **Cluster.** Four in-process nodes (real gRPC on loopback, real redb files): one
//!    data shard on nodes 1-3, node 4 empty. Snapshot bandwidth unlimited (the
//!    cluster setting `snapshot-bytes-per-sec` = 0) unless `--snapshot-limit-mb`.
//! 3. **Load.** `--shard-mb` of documents (`--value-bytes` values) in ~1 MiB batches
//!    by `--load-tasks` concurrent tasks through the routed client; then tiny
//!    overwrites until the leader has taken a snapshot and purged the start of its
//!    log, so a new replica must be sent the snapshot rather than replay the log;
//!    then every replica catches up.
//! 4. **Idle move.** `MoveReplica` of a follower's replica to node 4, watched every
//!    20 ms until the PD lists no operator and its descriptor has node 4 as a voter
//!    and no source, then until the source drops its replica and collects its data.
//! 5. **Loaded move.** `--writers` clients (each its own routed client) put fresh
//!    keys; after `--warmup` and a `--before` window, the replica moves back from
//!    node 4 to the node it came from while they write; then an `--after` window.
//!    Throughput and latency before, during (the move's duration) and after.
//! 6. **etcd.** Cairn's cluster is shut down and its data deleted; then etcd
//!    (`--etcd`, Debian's `etcd-server`; skipped, saying so, when absent) does the
//!    same in the same directory: three members, the same documents, a learner
//!    added, promoted and an old member removed, idle and under the same writers
//!    ([`cairn_tests::bench::etcd_move`]).
//! 7. **Report.** Both moves' durations, a timeline of each (where the time went),
//!    the snapshot's MB/s and its ratio to the disk's sequential write MB/s, the
//!    clients' windows, a check that the replicas agree, etcd's moves and clients,
//!    and the verdict against issue 4's targets (against the etcd figures the
//!    issue quotes only when etcd was not measured).
//!
//! Caveats: the nodes, their disks and the clients share one machine and its
//! cores; all three replicas and the new one write to the same disk. Compare runs on
//! the same machine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_client::{Client, ClientConfig, PdClient};
use cairn_proto::{KeyRange, ReplicaRole, ShardDescriptor, ShardId};
use cairn_tests::bench::cli::{self, Output, parse_duration};
use cairn_tests::bench::cpu;
use cairn_tests::bench::etcd_move::{self, EtcdBenchConfig};
use cairn_tests::bench::move_load::{self, Writers};
use cairn_tests::bench::move_report::{
    ETCD, IdleMove, LoadedMove, MoveBenchConfig, MoveReport, ReplicaCheck, ShardState, Verdict,
};
use cairn_tests::bench::move_status::{self, Status};
use cairn_tests::bench::move_watch::{self, leader_node, run_move};
use cairn_tests::bench::seqwrite::{self, SeqWrite};
use cairn_tests::{TestCluster, wait_until};
use clap::Parser;

/// Nodes in the cluster: three replicas and one to move to.
const NODES: usize = 4;

/// The most tiny overwrites spent pushing the leader's log past its first snapshot
/// (the default snapshot policy snapshots every 10 000 entries).
const FILL_PUTS_MAX: u64 = 60_000;
const FILL_TIMEOUT: Duration = Duration::from_secs(600);

/// How long a source's deleted documents may take to be collected.
const GC_TIMEOUT: Duration = Duration::from_secs(600);

/// Time to move a large shard's replica, idle and under load, beside this disk's
/// sequential write rate measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "move-bench")]
struct Args {
    /// Size of the shard to move: its documents' keys plus values, in MB (10^6 bytes).
    #[arg(long, default_value_t = 400.0)]
    shard_mb: f64,
    /// Concurrent writers (each its own client) during the loaded move.
    #[arg(long, default_value_t = 16)]
    writers: usize,
    /// Size of each document, loaded and written.
    #[arg(long, default_value_t = 4096)]
    value_bytes: usize,
    /// Concurrent batch writers of the load.
    #[arg(long, default_value_t = 8)]
    load_tasks: usize,
    /// Writes before the "before" window starts (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// The "before" window: writers running, no move.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    before: Duration,
    /// The "after" window, once the move is done.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    after: Duration,
    /// Outgoing snapshot bandwidth of each node, in MB/s (the cluster setting
    /// `snapshot-bytes-per-sec`); 0: unlimited. A limit trades move time for the
    /// clients' throughput.
    #[arg(long, default_value_t = 0.0)]
    snapshot_limit_mb: f64,
    /// MB written by the sequential write baseline; default: the shard's size.
    #[arg(long)]
    seqwrite_mb: Option<f64>,
    /// The etcd binary run beside Cairn as the measured peer (Debian's
    /// `etcd-server`), a path or a name on PATH; `off` skips it. Without it the
    /// verdict compares with the figures issue 4 quotes.
    #[arg(long, default_value = "etcd")]
    etcd: String,
    #[arg(long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.shard_mb > 0.0, "--shard-mb must be positive");
    anyhow::ensure!(args.writers >= 1, "need at least one writer");
    anyhow::ensure!(args.value_bytes >= 64, "--value-bytes must be at least 64");
    anyhow::ensure!(!args.before.is_zero(), "--before must be positive");
    anyhow::ensure!(
        args.snapshot_limit_mb == 0.0 || args.snapshot_limit_mb * 1e6 >= (1 << 20) as f64,
        "--snapshot-limit-mb must be 0 (unlimited) or at least 1.05 (1 MiB/s)"
    );
    // RUST_LOG=info,cairn_node=info shows the snapshot and PD command logs.
    cli::init_tracing();

    let dir = tempfile::Builder::new().prefix("cairn-move-bench-").tempdir()?;
    let seqwrite_mb = args.seqwrite_mb.unwrap_or(args.shard_mb);
    eprintln!("[seqwrite] {seqwrite_mb:.0} MB of sequential writes in {}", dir.path().display());
    let seq_write = seqwrite::measure(&dir.path().join("seqwrite"), (seqwrite_mb * 1e6) as u64).context("seqwrite")?;
    eprintln!(
        "[seqwrite] {:.1} MB/s ({:.2} s, of which fsync {:.2} s)",
        seq_write.mb_per_sec, seq_write.seconds, seq_write.fsync_seconds
    );

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run(&args, dir.path(), seq_write))?;
    args.output.print(|| report.to_table(), || report.to_json());
    Ok(())
}

async fn run(args: &Args, dir: &std::path::Path, disk: SeqWrite) -> anyhow::Result<MoveReport> {
    let status = Arc::new(Status::default());
    let printer = tokio::spawn(move_status::print_every_second(status.clone()));
    let result = run_cluster(args, dir, disk, &status).await;
    printer.abort();
    result
}

async fn run_cluster(
    args: &Args,
    dir: &std::path::Path,
    disk: SeqWrite,
    status: &Arc<Status>,
) -> anyhow::Result<MoveReport> {
    status.phase("cluster");
    let cluster_dir = dir.join("cluster");
    let cluster = TestCluster::start_with(NODES, 1, |c| {
        // Under the bench's directory, next to the disk baseline.
        c.data_dir = cluster_dir.join(format!("node-{}", c.listen.port()));
    })
    .await
    .context("starting the cluster")?;
    let pd = cluster.pd_client()?;
    let limit = ((args.snapshot_limit_mb * 1e6) as u64).to_string();
    pd.set_setting("snapshot-bytes-per-sec", &limit).await.context("setting the snapshot bandwidth")?;
    let newcomer = cluster.node(NODES - 1).context("node 4")?.id();
    wait_until("node 4 to report to the PD", Duration::from_secs(60), || async {
        pd.rebalance_status().await.ok()?.nodes.iter().any(|n| n.node == newcomer).then_some(())
    })
    .await?;
    let d = data_shard(&pd).await.context("the data shard")?;
    let shard = d.id;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;

    status.phase("load");
    let written_before: u64 = cluster.running().map(|n| n.shared.storage.stats().bytes_written).sum();
    let target = (args.shard_mb * 1e6) as u64;
    let load = move_load::load_shard(&client, target, args.value_bytes, args.load_tasks, status).await?;
    eprintln!("[load] {:.1} MB in {:.1} s ({:.1} MB/s)", load.bytes as f64 / 1e6, load.seconds, load.mb_per_sec);

    status.phase("fill-log");
    let fill = move_load::fill_log(&client, FILL_PUTS_MAX, FILL_TIMEOUT, || leader_log_purged(&cluster, shard))
        .await
        .context("pushing the leader's log past a snapshot")?;
    eprintln!("[fill-log] {} puts in {:.1} s: the leader's log starts after index 1", fill.puts, fill.seconds);

    status.phase("settle");
    wait_replicas_caught_up(&cluster, shard).await?;
    let leader = leader_node(&cluster, shard).context("a leader for the shard")?;
    let record = leader.shared.storage.shard_record(shard)?.context("the leader's shard record")?;
    let shard_state = ShardState {
        shard: shard.0,
        load,
        fill,
        key_count: record.stats.key_count,
        size_bytes: record.stats.size_bytes,
        leader_db_file_bytes: leader.shared.storage.file_bytes(),
        leader_last_log_index: leader.shared.storage.last_log(shard)?.map(|(i, _)| i).unwrap_or(0),
        load_bytes_written: cluster.running().map(|n| n.shared.storage.stats().bytes_written).sum::<u64>()
            - written_before,
    };

    // The idle move: a follower's replica to node 4.
    let leader_id = leader.id();
    let d = move_watch::descriptor(&pd, shard).await.context("the data shard")?;
    let source = d
        .replicas
        .iter()
        .filter(|r| r.role == ReplicaRole::Voter && r.node != leader_id)
        .map(|r| r.node)
        .min()
        .context("a follower voter")?;
    status.phase("idle-move");
    let idle = run_move(&cluster, &pd, shard, source, newcomer, status).await.context("the idle move")?;
    eprintln!("[idle-move] {} done in {:.2} s", idle.operator, idle.seconds);
    status.phase("source-gc");
    let source_node = cluster.running().find(|n| n.id() == source).context("the source node")?;
    let source_gc_seconds = move_watch::wait_data_gc(source_node, GC_TIMEOUT).await?;
    let idle = IdleMove { result: idle, source_gc_seconds };

    // The loaded move: node 4's replica back to where it came from, under writers.
    status.phase("writers");
    let writers = Writers::start(cluster.pd_endpoints(), args.writers, args.value_bytes, status.clone()).await?;
    let before_from = args.warmup;
    let before_to = args.warmup + args.before;
    tokio::time::sleep_until(writers.t0 + before_from).await;
    let cpu_before = cpu::sample();
    tokio::time::sleep_until(writers.t0 + before_to).await;
    let before_cpu = cpu::sample().zip(cpu_before).map(|(b, a)| b.since(&a, args.before.as_secs_f64()));
    status.phase("loaded-move");
    let move_start = writers.now();
    let moved = run_move(&cluster, &pd, shard, newcomer, source, status).await;
    let after_from = writers.now();
    status.phase("after");
    tokio::time::sleep(args.after).await;
    let after_to = writers.now();
    let log = writers.stop().await?;
    let moved = moved.context("the loaded move")?;
    let move_end = move_start + Duration::from_secs_f64(moved.seconds);
    let before = move_load::window(&log, before_from, before_to);
    let during = move_load::window(&log, move_start, move_end);
    let after = move_load::window(&log, after_from, after_to);
    // The move in three parts: until the snapshot's first byte, the snapshot, the rest.
    let at = |name: &str| moved.milestone(name).map(|s| move_start + Duration::from_secs_f64(s));
    let during_parts = match (at("snapshot-first-byte"), at("snapshot-replied")) {
        (Some(first), Some(replied)) => vec![
            ("until snapshot starts".to_string(), move_load::window(&log, move_start, first)),
            ("snapshot(s) streaming".to_string(), move_load::window(&log, first, replied)),
            ("install -> removed".to_string(), move_load::window(&log, replied, move_end)),
        ],
        _ => Vec::new(),
    };
    let (throughput_loss_percent, p99_factor) = move_load::loss(&before, &during);
    let loaded = LoadedMove {
        result: moved,
        before,
        during,
        during_parts,
        after,
        throughput_loss_percent,
        p99_factor,
        before_cpu,
        error_examples: log.examples,
    };

    status.phase("check");
    wait_replicas_caught_up(&cluster, shard).await?;
    let replicas = replica_checks(&cluster, shard)?;

    status.phase("shutdown");
    client.shutdown().await;
    drop(client);
    cluster.shutdown().await;
    // The disk is etcd's next; Cairn's data is measured and no longer needed.
    let _ = std::fs::remove_dir_all(&cluster_dir);

    let (etcd_measured, etcd_skipped) = match etcd_binary(&args.etcd) {
        Err(why) => {
            eprintln!("[etcd] not measured: {why}");
            (None, Some(why))
        }
        Ok(binary) => {
            let config = EtcdBenchConfig {
                binary,
                dir: dir.join("etcd"),
                shard_bytes: shard_state.load.bytes,
                value_bytes: args.value_bytes,
                load_tasks: args.load_tasks,
                writers: args.writers,
                warmup: args.warmup,
                before: args.before,
                after: args.after,
            };
            let run = etcd_move::run(&config, status).await;
            let outcome = match run {
                Ok(run) => (Some(run), None),
                // etcd failing is a result too (one loaded run saw its
                // MemberRemove time out after 30 s): report it, keep its logs.
                Err(e) => {
                    let kept = keep_etcd_logs(&config.dir);
                    eprintln!("[etcd] failed: {e:#}; its logs: {kept}");
                    (None, Some(format!("etcd's run failed: {e:#} (logs: {kept})")))
                }
            };
            let _ = std::fs::remove_dir_all(&config.dir);
            outcome
        }
    };
    let verdict = Verdict::of(shard_state.size_bytes, &idle.result, &loaded, etcd_measured.as_ref());
    Ok(MoveReport {
        config: MoveBenchConfig {
            nodes: NODES,
            shard_mb: args.shard_mb,
            snapshot_limit_mb: args.snapshot_limit_mb,
            writers: args.writers,
            value_bytes: args.value_bytes,
            load_tasks: args.load_tasks,
            warmup_s: args.warmup.as_secs_f64(),
            before_s: args.before.as_secs_f64(),
            after_s: args.after.as_secs_f64(),
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            data_dir: dir.display().to_string(),
        },
        disk,
        shard: shard_state,
        idle,
        loaded,
        replicas,
        etcd_measured,
        etcd_skipped,
        etcd: ETCD,
        verdict,
    })
}

/// Copies the etcd members' logs out of the bench's temporary directory;
/// returns where they went.
fn keep_etcd_logs(etcd_dir: &std::path::Path) -> String {
    let kept = std::env::temp_dir().join(format!("cairn-move-bench-etcd-logs-{}", std::process::id()));
    if std::fs::create_dir_all(&kept).is_err() {
        return "not kept".into();
    }
    for entry in std::fs::read_dir(etcd_dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|x| x == "log")
            && let Some(name) = path.file_name()
        {
            let _ = std::fs::copy(&path, kept.join(name));
        }
    }
    kept.display().to_string()
}

/// The etcd binary `--etcd` names, or why there is none.
fn etcd_binary(spec: &str) -> Result<std::path::PathBuf, String> {
    if spec == "off" {
        return Err("--etcd off".into());
    }
    etcd_move::find_binary(spec)
        .ok_or_else(|| format!("no etcd binary `{spec}` (apt-get install etcd-server, or --etcd PATH)"))
}

/// The one data shard's descriptor, as the PD has it.
async fn data_shard(pd: &PdClient) -> Option<ShardDescriptor> {
    let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await.ok()?;
    routes.into_iter().map(|r| r.descriptor).next()
}

/// Whether the leader's log no longer starts at the beginning: it has taken a
/// snapshot and purged the entries before it, so a new replica needs the snapshot.
fn leader_log_purged(cluster: &TestCluster, shard: ShardId) -> bool {
    let Some(leader) = leader_node(cluster, shard) else { return false };
    let storage = &leader.shared.storage;
    let last = storage.last_log(shard).ok().flatten().map(|(i, _)| i).unwrap_or(0);
    last > 2 && storage.log_range(shard, 0, 2).map(|e| e.is_empty()).unwrap_or(false)
}

/// Waits until every replica of `shard` has applied the leader's last log index.
async fn wait_replicas_caught_up(cluster: &TestCluster, shard: ShardId) -> anyhow::Result<()> {
    wait_until("every replica to apply the leader's log", Duration::from_secs(300), || async {
        let leader = leader_node(cluster, shard)?;
        let last = leader.shared.storage.last_log(shard).ok().flatten()?.0;
        let hosts: Vec<u64> = cluster
            .running()
            .filter_map(|n| n.shared.registry.get(shard).map(|r| r.group.status().applied_index))
            .collect();
        (hosts.len() >= 3 && hosts.iter().all(|a| *a >= last)).then_some(())
    })
    .await
}

/// Every hosting replica's record.
fn replica_checks(cluster: &TestCluster, shard: ShardId) -> anyhow::Result<Vec<ReplicaCheck>> {
    let mut out = Vec::new();
    for n in cluster.running() {
        if let Some(r) = n.shared.storage.shard_record(shard)? {
            out.push(ReplicaCheck {
                node: n.id().0,
                applied_index: r.applied_index,
                key_count: r.stats.key_count,
                size_bytes: r.stats.size_bytes,
                db_file_bytes: n.shared.storage.file_bytes(),
            });
        }
    }
    Ok(out)
}
