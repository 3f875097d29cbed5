//! The bench's result: one serializable [`Report`], printed either as a table for people
//! or as one JSON object for scripts. Both carry the same figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::baseline::Baseline;
use super::latency::{LatencySummary, columns};

#[derive(Clone, Debug, Serialize)]
pub struct RunConfig {
    pub nodes: usize,
    pub shards: u32,
    pub writers: usize,
    pub readers: usize,
    pub value_bytes: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub seed: u64,
    /// The directory holding the baseline database and the cluster's data directories.
    pub data_dir: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct OpStats {
    /// Operations acknowledged inside the measurement window.
    pub ops: u64,
    pub ops_per_sec: f64,
    /// Latency of the acknowledged operations; absent when there were none.
    pub latency: Option<LatencySummary>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Errors {
    /// Failed writes by error code.
    pub write: BTreeMap<String, u64>,
    /// Failed reads by error code (`MISSING`: an acknowledged key read as absent).
    pub read: BTreeMap<String, u64>,
    /// The first message seen for each code.
    pub examples: BTreeMap<String, String>,
}

/// Storage counters summed over all nodes: the change across the measurement window.
#[derive(Clone, Debug, Serialize)]
pub struct StorageDelta {
    pub fsyncs: u64,
    pub fsyncs_per_sec: f64,
    /// fsyncs ÷ acknowledged writes. Without batching, a write costs one fsync per replica
    /// for its log append (plus a few for votes and applies): about 3 with 3 replicas.
    pub fsyncs_per_write: Option<f64>,
    pub log_entries_persisted: u64,
    pub log_entries_per_fsync: Option<f64>,
    /// redb transactions, durable or not.
    pub write_batches: u64,
}

/// Raft churn across the measurement window, to explain stalls in the progress lines.
#[derive(Clone, Debug, Serialize)]
pub struct RaftDelta {
    /// Sum over shards of how far the highest term any replica reports moved: each
    /// increase is at least one election.
    pub term_increases: u64,
    /// Shards whose leader at the end differs from the one at the start.
    pub leaders_changed: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratios {
    /// Cluster write ops/s ÷ baseline single-writer commits/s.
    pub write_ops_vs_baseline_commits: f64,
    /// Cluster fsyncs/s (all nodes) ÷ baseline fsyncs/s: how much of the disk's
    /// single-writer fsync rate the cluster used. Parallel fsyncs of three files can
    /// exceed 1 on a disk that serves them concurrently.
    pub fsync_rate_vs_baseline: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub config: RunConfig,
    pub baseline: Baseline,
    pub writes: OpStats,
    pub reads: OpStats,
    pub errors: Errors,
    pub storage: StorageDelta,
    pub raft: RaftDelta,
    pub ratios: Ratios,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report is plain data")
    }

    pub fn to_table(&self) -> String {
        let c = &self.config;
        let b = &self.baseline;
        let s = &self.storage;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "Cairn bench: {} nodes, {} shards, {} writers, {} readers, {}-byte values, {:.0} s measured after {:.0} s warm-up, seed {}",
            c.nodes, c.shards, c.writers, c.readers, c.value_bytes, c.duration_s, c.warmup_s, c.seed
        );
        let _ = writeln!(t, "data dir: {} (baseline and cluster on the same file system)", c.data_dir);
        let _ = writeln!(t);
        let _ = writeln!(t, "baseline: redb, one writer, one-row transactions, Durability::Immediate");
        let _ = writeln!(
            t,
            "  commits/s            {:>10.1}   ({} commits in {:.2} s, {:.2} fsyncs per commit)",
            b.commits_per_sec, b.commits, b.seconds, b.fsyncs_per_commit
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "cluster                  ops      ops/s    p50 ms    p99 ms    max ms");
        for (name, op) in [("writes", &self.writes), ("reads", &self.reads)] {
            let [p50, p99, max] = columns(op.latency.as_ref());
            let _ = writeln!(t, "  {name:<12} {:>10} {:>10.1} {p50:>9} {p99:>9} {max:>9}", op.ops, op.ops_per_sec);
        }
        let errors: Vec<String> = [("write", &self.errors.write), ("read", &self.errors.read)]
            .iter()
            .flat_map(|(kind, m)| m.iter().map(move |(code, n)| format!("{kind} {code} x{n}")))
            .collect();
        let _ =
            writeln!(t, "  errors       {}", if errors.is_empty() { "none".to_string() } else { errors.join(", ") });
        for (code, msg) in &self.errors.examples {
            let _ = writeln!(t, "    e.g. {code}: {msg}");
        }
        let _ = writeln!(t);
        let _ = writeln!(t, "storage and raft, all nodes, during the measured window");
        let _ = writeln!(t, "  fsyncs               {:>10}   ({:.1}/s)", s.fsyncs, s.fsyncs_per_sec);
        let _ = writeln!(
            t,
            "  fsyncs per write     {:>10}   (no batching: about 3, one log append per replica)",
            opt(s.fsyncs_per_write, 3)
        );
        let _ = writeln!(
            t,
            "  log entries / fsync  {:>10}   ({} entries persisted)",
            opt(s.log_entries_per_fsync, 2),
            s.log_entries_persisted
        );
        let _ = writeln!(t, "  write batches        {:>10}   (redb transactions, durable or not)", s.write_batches);
        let _ = writeln!(
            t,
            "  raft                 {:>10}   term increases, {} shards changed leader",
            self.raft.term_increases, self.raft.leaders_changed
        );
        let _ = writeln!(t);
        let _ = writeln!(
            t,
            "write ops/s / baseline commits/s = {:.2}   (cluster fsyncs/s / baseline fsyncs/s = {:.2})",
            self.ratios.write_ops_vs_baseline_commits, self.ratios.fsync_rate_vs_baseline
        );
        t
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map(|v| format!("{v:.decimals$}")).unwrap_or_else(|| "-".into())
}
