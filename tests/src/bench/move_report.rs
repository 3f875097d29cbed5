//! The result of `move-bench`: one serializable [`MoveReport`], printed as a table
//! for people or as one JSON object for scripts, with the same figures.
//!
//! Every figure is measured in the run, etcd's included when its binary is found
//! ([`super::etcd_move`]); otherwise the verdict falls back on [`ETCD`], the etcd
//! results quoted by issue 4, printed as a labelled reference.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::cpu::CpuUse;
use super::etcd_move::EtcdRun;
use super::latency::columns;
use super::move_load::{FillStats, LoadStats, WindowStats};
use super::move_watch::{MoveResult, POLL_MS};
use super::seqwrite::SeqWrite;

/// etcd's figures for the same operation (a learner member added, caught up,
/// promoted, and an old member removed), as issue 4 states them.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EtcdReference {
    pub source: &'static str,
    pub idle_seconds: f64,
    pub idle_mb: f64,
    pub loaded_seconds_min: f64,
    pub loaded_seconds_max: f64,
    pub loaded_throughput_loss_percent_min: f64,
    pub loaded_throughput_loss_percent_max: f64,
    /// etcd's clients' p99 during the move ÷ before ("doubled").
    pub loaded_p99_factor: f64,
}

pub const ETCD: EtcdReference = EtcdReference {
    source: "issue 4 (etcd on the issue author's run of this machine; not measured by this bench)",
    idle_seconds: 2.45,
    idle_mb: 386.0,
    loaded_seconds_min: 3.5,
    loaded_seconds_max: 3.8,
    loaded_throughput_loss_percent_min: 24.0,
    loaded_throughput_loss_percent_max: 30.0,
    loaded_p99_factor: 2.0,
};

/// The target: clients lose at most this share of their throughput.
pub const THROUGHPUT_LOSS_TARGET_PERCENT: f64 = 15.0;

#[derive(Clone, Debug, Serialize)]
pub struct MoveBenchConfig {
    pub nodes: usize,
    pub shard_mb: f64,
    /// Outgoing snapshot bandwidth per node in MB/s; 0: unlimited.
    pub snapshot_limit_mb: f64,
    pub writers: usize,
    pub value_bytes: usize,
    pub load_tasks: usize,
    pub warmup_s: f64,
    pub before_s: f64,
    pub after_s: f64,
    /// Cores this process may use (every node, the clients and the bench share them).
    pub cores: usize,
    /// The directory holding the disk baseline and the cluster's data.
    pub data_dir: String,
}

/// The shard before the first move.
#[derive(Clone, Debug, Serialize)]
pub struct ShardState {
    pub shard: u64,
    pub load: LoadStats,
    pub fill: FillStats,
    /// The leader's record: documents and their key plus value bytes.
    pub key_count: u64,
    pub size_bytes: u64,
    pub leader_db_file_bytes: u64,
    pub leader_last_log_index: u64,
    /// Database bytes all nodes wrote for the load and the log fill.
    pub load_bytes_written: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleMove {
    pub result: MoveResult,
    /// After the move: until the source's deleted documents were collected.
    pub source_gc_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadedMove {
    pub result: MoveResult,
    pub before: WindowStats,
    /// The writes that started while the move ran (created -> PD done).
    pub during: WindowStats,
    /// `during` cut at the snapshot's first byte and the receiver's reply.
    pub during_parts: Vec<(String, WindowStats)>,
    pub after: WindowStats,
    /// `(1 - during ops/s ÷ before ops/s) × 100`; negative when it went up.
    pub throughput_loss_percent: f64,
    /// p99 during ÷ p99 before.
    pub p99_factor: Option<f64>,
    /// Process and machine CPU over the "before" window.
    pub before_cpu: Option<CpuUse>,
    pub error_examples: BTreeMap<String, String>,
}

/// Every replica's record after the writers stopped and the replicas caught up.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaCheck {
    pub node: u64,
    pub applied_index: u64,
    pub key_count: u64,
    pub size_bytes: u64,
    pub db_file_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    /// Where etcd's figures come from: "measured in this run" or the quote.
    pub etcd_source: String,
    /// Seconds per 100 MB moved: this run's idle move and etcd's.
    pub idle_seconds_per_100mb: f64,
    pub etcd_idle_seconds_per_100mb: f64,
    pub idle_faster_than_etcd: bool,
    pub loaded_seconds_per_100mb: f64,
    /// etcd's best loaded time, per 100 MB of its shard.
    pub etcd_loaded_seconds_per_100mb: f64,
    pub loaded_faster_than_etcd: bool,
    pub throughput_loss_within_target: bool,
    /// etcd's clients' loss over its loaded move (the quote's lower bound when not measured).
    pub etcd_throughput_loss_percent: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MoveReport {
    pub config: MoveBenchConfig,
    /// The disk's sequential write rate, the snapshot throughput's yardstick.
    pub disk: SeqWrite,
    pub shard: ShardState,
    pub idle: IdleMove,
    pub loaded: LoadedMove,
    pub replicas: Vec<ReplicaCheck>,
    /// etcd doing the same moves on this machine in this run, if it ran.
    pub etcd_measured: Option<EtcdRun>,
    /// Why etcd was not measured, if it was not.
    pub etcd_skipped: Option<String>,
    pub etcd: EtcdReference,
    pub verdict: Verdict,
}

impl Verdict {
    pub fn of(shard_bytes: u64, idle: &MoveResult, loaded: &LoadedMove, etcd: Option<&EtcdRun>) -> Verdict {
        let per_100mb = |s: f64, bytes: f64| s / (bytes / 1e8);
        let bytes = shard_bytes as f64;
        let (etcd_source, etcd_idle, etcd_loaded, etcd_loss) = match etcd {
            Some(e) => {
                let b = e.load.bytes as f64;
                (
                    "measured in this run".to_string(),
                    per_100mb(e.idle.seconds, b),
                    per_100mb(e.loaded.result.seconds, b),
                    e.loaded.throughput_loss_percent,
                )
            }
            None => {
                let b = ETCD.idle_mb * 1e6;
                (
                    "quoted from issue 4".to_string(),
                    per_100mb(ETCD.idle_seconds, b),
                    per_100mb(ETCD.loaded_seconds_min, b),
                    ETCD.loaded_throughput_loss_percent_min,
                )
            }
        };
        let idle_s = per_100mb(idle.seconds, bytes);
        let loaded_s = per_100mb(loaded.result.seconds, bytes);
        Verdict {
            etcd_source,
            idle_seconds_per_100mb: idle_s,
            etcd_idle_seconds_per_100mb: etcd_idle,
            idle_faster_than_etcd: idle_s < etcd_idle,
            loaded_seconds_per_100mb: loaded_s,
            etcd_loaded_seconds_per_100mb: etcd_loaded,
            loaded_faster_than_etcd: loaded_s < etcd_loaded,
            throughput_loss_within_target: loaded.throughput_loss_percent <= THROUGHPUT_LOSS_TARGET_PERCENT,
            etcd_throughput_loss_percent: etcd_loss,
        }
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "NO" }
}

/// The names of the milestones in the order a move passes them.
const MILESTONES: &[(&str, &str)] = &[
    ("operator-created", "CreateOperator answered"),
    ("learner-in-config", "leader's config lists the learner"),
    ("target-replica-created", "target hosts an empty replica"),
    ("snapshot-first-byte", "leader streams the snapshot"),
    ("snapshot-last-byte", "last chunk handed to gRPC"),
    ("snapshot-replied", "receiver staged + installed, replied"),
    ("target-applied", "target's applied index > 0"),
    ("learner-matched", "leader sees the learner's log match"),
    ("learner-caught-up", "within the PD's catch-up slack"),
    ("joint-config", "joint configuration (promote)"),
    ("final-config", "source out of the leader's config"),
    ("pd-done", "PD: no operator, descriptor moved"),
    ("source-destroyed", "source dropped its replica"),
];

impl MoveReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report is plain data")
    }

    pub fn to_table(&self) -> String {
        let c = &self.config;
        let d = &self.disk;
        let s = &self.shard;
        let (idle, loaded) = (&self.idle.result, &self.loaded.result);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "Cairn move bench: {} in-process nodes, shard {} of {:.1} MB ({} docs, {}-byte values), {} writers",
            c.nodes,
            s.shard,
            mb(s.size_bytes),
            s.key_count,
            c.value_bytes,
            c.writers
        );
        let _ = writeln!(t, "data dir: {} (disk baseline and cluster on the same file system)", c.data_dir);
        let limit = if c.snapshot_limit_mb > 0.0 {
            format!("{:.1} MB/s per node", c.snapshot_limit_mb)
        } else {
            "unlimited".to_string()
        };
        let _ =
            writeln!(t, "snapshot bandwidth: {limit}; MB = 10^6 bytes; times in seconds from the operator's creation");
        let _ = writeln!(t);
        let _ = writeln!(t, "disk, measured in this run");
        let _ = writeln!(
            t,
            "  sequential write   {:>8.1} MB/s   ({:.0} MB, 1 MiB buffered writes + one fsync: {:.2} s, fsync {:.2} s)",
            d.mb_per_sec,
            mb(d.bytes),
            d.seconds,
            d.fsync_seconds
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "load");
        let _ = writeln!(
            t,
            "  {:.1} MB ({} docs) in {:.1} s = {:.1} MB/s, {} batches of {} docs by {} tasks",
            mb(s.load.bytes),
            s.load.docs,
            s.load.seconds,
            s.load.mb_per_sec,
            s.load.batches,
            s.load.items_per_batch,
            c.load_tasks
        );
        let _ = writeln!(
            t,
            "  then {} tiny overwrites in {:.1} s, until the leader snapshotted and purged its log (so a move needs a snapshot)",
            s.fill.puts, s.fill.seconds
        );
        let _ = writeln!(
            t,
            "  leader: last log index {}, database file {:.1} MB; all nodes wrote {:.1} MB to their databases",
            s.leader_last_log_index,
            mb(s.leader_db_file_bytes),
            mb(s.load_bytes_written)
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "{:<62} {:>12} {:>12}",
            "move",
            format!("idle {}", arrow(idle)),
            format!("loaded {}", arrow(loaded))
        );
        // One row per figure: its value for the idle move, then for the loaded one.
        let row = |t: &mut String, name: &str, value: &dyn Fn(&MoveResult) -> String| {
            let _ = writeln!(t, "  {name:<60} {:>12} {:>12}", value(idle), value(loaded));
        };
        let seq_mb_per_sec = d.mb_per_sec;
        row(&mut t, "whole move: created -> old replica removed", &|m| format!("{:.2}", m.seconds));
        row(&mut t, "  the PD's own measure", &|m| opt(m.pd_seconds, 2));
        row(&mut t, "snapshot bytes sent (MB)", &|m| format!("{:.1}", mb(m.snapshot.bytes)));
        row(&mut t, "snapshots sent / failed", &|m| format!("{} / {}", m.snapshot.transfers, m.snapshot.failures));
        row(&mut t, "snapshot send time (s), leader", &|m| format!("{:.2}", m.snapshot.send_seconds));
        let last = |m: &MoveResult| m.snapshot.polled.last().cloned();
        row(&mut t, "  last transfer: first -> last byte", &|m| {
            opt(last(m).map(|x| x.last_byte_s - x.first_byte_s), 2)
        });
        row(&mut t, "  last transfer: last byte -> reply", &|m| {
            opt(last(m).and_then(|x| Some(x.replied_s? - x.last_byte_s)), 2)
        });
        row(&mut t, "snapshot receive time (s), target", &|m| format!("{:.2}", m.snapshot.receive_seconds));
        row(&mut t, "snapshot throughput (MB/s)", &|m| format!("{:.1}", m.snapshot.mb_per_sec));
        row(&mut t, "  / disk sequential write", &|m| {
            opt((seq_mb_per_sec > 0.0).then(|| m.snapshot.mb_per_sec / seq_mb_per_sec), 2)
        });
        let _ = writeln!(t, "  source's data collected {} s after the idle move", opt(self.idle.source_gc_seconds, 2));
        let _ = writeln!(t);
        let _ = writeln!(t, "  timeline (s after creation; - = not seen, shorter than one {POLL_MS} ms poll)");
        for (name, what) in MILESTONES {
            row(&mut t, &format!("  {name:<22} {what}"), &|m| opt(m.milestone(name), 2));
        }
        let _ = writeln!(t);
        for (label, m) in [("idle", idle), ("loaded", loaded)] {
            if let Some(first) = m.refusals.first() {
                let _ = writeln!(
                    t,
                    "  note: the PD refused the {label} move {} time(s) before accepting it (not timed), first: {first}",
                    m.refusals.len()
                );
            }
        }
        for (label, m) in [("idle", idle), ("loaded", loaded)] {
            if m.snapshot.polled.len() > 1 {
                let _ = writeln!(t, "  snapshot transfers, {label} (first byte -> last byte -> reply, MB):");
                for x in &m.snapshot.polled {
                    let _ = writeln!(
                        t,
                        "    {:>7.2} -> {:>7.2} -> {:>7} {:>8.1} MB",
                        x.first_byte_s,
                        x.last_byte_s,
                        opt(x.replied_s, 2),
                        mb(x.bytes)
                    );
                }
            }
        }
        for (label, m) in [("idle", idle), ("loaded", loaded)] {
            let steps: Vec<String> = m.steps.iter().map(|(at, s)| format!("{at:.2} {s}")).collect();
            let _ = writeln!(t, "  operator steps, {label}: {}", steps.join(", "));
        }
        for (label, m) in [("idle", idle), ("loaded", loaded)] {
            let _ =
                writeln!(t, "  database writes during the {label} move (MB written, fsyncs, durable + other commits)");
            for n in &m.io {
                let _ = writeln!(
                    t,
                    "    node {} {:<8} {:>9.1} MB {:>7} fsyncs {:>7} + {} commits",
                    n.node,
                    n.role,
                    mb(n.bytes_written),
                    n.fsyncs,
                    n.durable_commits,
                    n.nondurable_commits
                );
            }
        }
        for (label, m) in [("idle", idle), ("loaded", loaded)] {
            let _ = writeln!(t, "  process CPU during the {label} move ({} cores available)", c.cores);
            for (part, cpu) in &m.cpu {
                let _ = writeln!(t, "    {part:<22} {:>6.2} s  {}", cpu.wall_s, cpu.describe());
            }
        }
        let _ = writeln!(t);
        let l = &self.loaded;
        let _ = writeln!(
            t,
            "clients during the loaded move: {} writers, each its own routed client, put of fresh keys, {}-byte values",
            c.writers, c.value_bytes
        );
        let _ =
            writeln!(t, "  window                    s        ops      ops/s    p50 ms    p99 ms    max ms  errors");
        let mut windows: Vec<(String, &WindowStats)> =
            vec![("before".into(), &l.before), ("during move".into(), &l.during)];
        windows.extend(l.during_parts.iter().map(|(name, w)| (format!("  {name}"), w)));
        windows.push(("after".into(), &l.after));
        for (name, w) in windows {
            window_row(&mut t, &name, w);
        }
        for (code, m) in &l.error_examples {
            let _ = writeln!(t, "    e.g. {code}: {m}");
        }
        let _ = writeln!(
            t,
            "  throughput lost during the move: {:.1} %   p99 during / before: {}x",
            l.throughput_loss_percent,
            opt(l.p99_factor, 2)
        );
        if let Some(cpu) = &l.before_cpu {
            let _ = writeln!(t, "  process CPU over \"before\": {}", cpu.describe());
        }
        let _ = writeln!(t);
        let agree =
            self.replicas.windows(2).all(|w| w[0].key_count == w[1].key_count && w[0].size_bytes == w[1].size_bytes);
        let _ = writeln!(t, "replicas at the end: {}", if agree { "agree" } else { "DIFFER" });
        for r in &self.replicas {
            let _ = writeln!(
                t,
                "  node {}: {} docs, {:.1} MB, applied index {}, database file {:.0} MB",
                r.node,
                r.key_count,
                mb(r.size_bytes),
                r.applied_index,
                mb(r.db_file_bytes)
            );
        }
        let _ = writeln!(t);
        match (&self.etcd_measured, &self.etcd_skipped) {
            (Some(e), _) => self.etcd_table(&mut t, e),
            (None, why) => {
                let e = &self.etcd;
                let why = why.as_deref().unwrap_or("not asked for");
                let _ = writeln!(t, "etcd not measured ({why}); reference quoted from {}", e.source);
                let _ = writeln!(
                    t,
                    "  idle:   {:.2} s for {:.0} MB; loaded: {:.1}-{:.1} s, clients lost {:.0}-{:.0} % throughput, p99 x{:.0}",
                    e.idle_seconds,
                    e.idle_mb,
                    e.loaded_seconds_min,
                    e.loaded_seconds_max,
                    e.loaded_throughput_loss_percent_min,
                    e.loaded_throughput_loss_percent_max,
                    e.loaded_p99_factor
                );
            }
        }
        let v = &self.verdict;
        let _ = writeln!(t, "target (issue 4; etcd {})", v.etcd_source);
        let _ = writeln!(
            t,
            "  idle move faster than etcd:     {:>6.2} s per 100 MB vs etcd {:.2}  -> {}",
            v.idle_seconds_per_100mb,
            v.etcd_idle_seconds_per_100mb,
            yes(v.idle_faster_than_etcd)
        );
        let _ = writeln!(
            t,
            "  loaded move faster than etcd:   {:>6.2} s per 100 MB vs etcd {:.2}  -> {}",
            v.loaded_seconds_per_100mb,
            v.etcd_loaded_seconds_per_100mb,
            yes(v.loaded_faster_than_etcd)
        );
        let _ = writeln!(
            t,
            "  clients lose at most {:.0} %:      {:>6.1} % (etcd's clients {:.1} %)   -> {}",
            THROUGHPUT_LOSS_TARGET_PERCENT,
            l.throughput_loss_percent,
            v.etcd_throughput_loss_percent,
            yes(v.throughput_loss_within_target)
        );
        t
    }

    /// etcd's side, measured in this run.
    fn etcd_table(&self, t: &mut String, e: &EtcdRun) {
        let _ = writeln!(
            t,
            "etcd {}, measured in this run: 3 members + 1 learner per move, same documents, same writers",
            e.version
        );
        let _ = writeln!(
            t,
            "  load {:.1} MB ({} docs) in {:.1} s = {:.1} MB/s, {} transactions of {} docs; then {} tiny puts until the leader wrote a snapshot; leader's db {:.1} MB",
            mb(e.load.bytes),
            e.load.docs,
            e.load.seconds,
            e.load.mb_per_sec,
            e.load.batches,
            e.load.items_per_batch,
            e.fill_puts,
            mb(e.leader_db_bytes)
        );
        let _ = writeln!(t, "  {:<60} {:>12} {:>12}", "move (s after MemberAdd sent)", "idle", "loaded");
        let moves = [&e.idle, &e.loaded.result];
        type Row<'a> = (&'a str, &'a dyn Fn(&super::etcd_move::EtcdMove) -> String);
        let rows: [Row<'_>; 6] = [
            ("learner added (MemberAdd returned)", &|m| format!("{:.2}", m.learner_added_s)),
            ("learner's process started", &|m| format!("{:.2}", m.learner_started_s)),
            ("promoted (MemberPromote accepted)", &|m| format!("{:.2}", m.promoted_s)),
            ("  promotions refused while catching up", &|m| m.promote_refusals.to_string()),
            ("whole move: old member removed", &|m| format!("{:.2}", m.removed_s)),
            ("snapshots sent by the leader", &|m| m.snapshots_sent.to_string()),
        ];
        for (name, value) in rows {
            let _ = writeln!(t, "  {name:<60} {:>12} {:>12}", value(moves[0]), value(moves[1]));
        }
        let _ = writeln!(t, "  etcd's clients during its loaded move");
        for (name, w) in [("before", &e.loaded.before), ("during move", &e.loaded.during), ("after", &e.loaded.after)] {
            window_row(t, name, w);
        }
        let _ = writeln!(
            t,
            "  throughput lost during the move: {:.1} %   p99 during / before: {}x",
            e.loaded.throughput_loss_percent,
            opt(e.loaded.p99_factor, 2)
        );
        let _ = writeln!(t);
    }
}

/// One line of a clients' window: seconds, operations, ops/s, latencies, errors.
fn window_row(t: &mut String, name: &str, w: &WindowStats) {
    let [p50, p99, max] = columns(w.latency.as_ref());
    let errors: Vec<String> = w.errors.iter().map(|(code, n)| format!("{code} x{n}")).collect();
    let errors = if errors.is_empty() { "none".to_string() } else { errors.join(", ") };
    let _ = writeln!(
        t,
        "  {name:<22} {:>5.1} {:>10} {:>10.1} {p50:>9} {p99:>9} {max:>9}  {errors}",
        w.seconds, w.ops, w.ops_per_sec
    );
}

fn arrow(m: &MoveResult) -> String {
    m.operator.trim_start_matches("move-replica ").to_string()
}
