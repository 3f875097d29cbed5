//! One replica move, started through the PD and watched from outside every 20 ms,
//! for `move-bench`: the whole move's duration as a client of the PD sees it
//! (operator created -> the PD lists no operator and its descriptor shows the new
//! voter without the source), the PD's own measure of it, and where the time went.
//!
//! Where the time goes is read from the in-process nodes without touching them:
//! - the leader's Raft view (learner in the configuration, the learner's matched
//!   index, the joint configuration, the final one);
//! - the leader's outgoing snapshot progress (first byte, last byte handed to
//!   gRPC, the receiver's reply, which comes after it staged and installed);
//! - the target's replica (created, first applied index) and the source's
//!   (destroyed);
//! - the operator's step as `ListOperators` shows it, on every change;
//! - the process-wide Prometheus counters (`cairn_snapshot_*`,
//!   `cairn_pd_operator_duration_seconds`), before and after: all nodes share
//!   this process, so a delta over one move is that move's;
//! - each node's storage counters (bytes written, fsyncs, commits), before and after.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::PdClient;
use cairn_node::Node;
use cairn_node::storage::StorageStats;
use cairn_proto::{KeyRange, NodeId, OperatorKind, ReplicaRole, ShardDescriptor, ShardId};
use serde::Serialize;
use tokio::time::Instant;

use super::cpu::{self, CpuSample, CpuUse};
use super::move_status::Status;
use crate::TestCluster;

/// How often the watcher looks.
pub const POLL_MS: u64 = 20;

/// The PD's catch-up slack (`cairn_placement::operator::CATCH_UP_SLACK`): a learner
/// whose matched index is this close to the leader's last index may be promoted.
pub const CATCH_UP_SLACK: u64 = 1_000;

/// The longest the watcher waits for a move (the PD's default operator timeout).
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(600);

/// How long refusals of the operator by a PD that has not heard from the nodes yet
/// are retried.
pub const CREATE_RETRY: Duration = Duration::from_secs(15);

/// The longest it waits, after the move, for the source to drop its replica.
pub const DESTROY_TIMEOUT: Duration = Duration::from_secs(60);

/// The Prometheus series a move is measured by: a metric name (summed over its
/// label sets) or a name with its exact label set.
const SNAPSHOTS_SENT: &str = "cairn_snapshots_sent_total";
const SNAPSHOT_SENT_BYTES: &str = "cairn_snapshot_sent_bytes_total";
const SNAPSHOT_SEND_SECONDS: &str = "cairn_snapshot_send_seconds_sum";
const SNAPSHOT_RECEIVE_SECONDS: &str = "cairn_snapshot_receive_seconds_sum";
const SNAPSHOT_SEND_FAILURES: &str = "cairn_snapshot_send_failures_total";
const MOVE_OPERATOR_SECONDS: &str = r#"cairn_pd_operator_duration_seconds_sum{kind="move-replica"}"#;
const MOVE_OPERATORS: &str = r#"cairn_pd_operator_duration_seconds_count{kind="move-replica"}"#;
const SERIES: [&str; 7] = [
    SNAPSHOTS_SENT,
    SNAPSHOT_SENT_BYTES,
    SNAPSHOT_SEND_SECONDS,
    SNAPSHOT_RECEIVE_SECONDS,
    SNAPSHOT_SEND_FAILURES,
    MOVE_OPERATOR_SECONDS,
    MOVE_OPERATORS,
];

/// The values of [`SERIES`] in the process-wide Prometheus registry. All nodes
/// share this process, so the difference over one move is that move's.
#[derive(Clone, Debug, Default, PartialEq)]
struct Counters(BTreeMap<&'static str, f64>);

impl Counters {
    /// Reads them from the text the metrics endpoint serves.
    fn read() -> Self {
        Self::parse(&cairn_node::metrics::render(&StorageStats::default(), 0, 0))
    }

    fn parse(text: &str) -> Self {
        Counters(SERIES.iter().map(|s| (*s, series_sum(text, s))).collect())
    }

    fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    fn minus(&self, before: &Counters) -> Counters {
        Counters(self.0.iter().map(|(s, v)| (*s, v - before.get(s))).collect())
    }
}

/// The sum of the samples of `series` (a metric name, or a name with its exact
/// label set), over all label sets when it has none.
fn series_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(series)?;
            let labelled = !series.ends_with('}') && rest.starts_with('{');
            let value = if labelled { rest.rsplit_once(' ')?.1 } else { rest.strip_prefix(' ')? };
            value.trim().parse::<f64>().ok()
        })
        .sum()
}

/// A moment of the move, seconds after the operator's creation was asked for.
#[derive(Clone, Debug, Serialize)]
pub struct Milestone {
    pub name: &'static str,
    pub at_s: f64,
}

/// The snapshot part of a move, from the source (the shard's leader).
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotTransfer {
    /// Snapshots sent while the move ran (1 unless one was retried).
    pub transfers: u64,
    pub failures: u64,
    /// Bytes of records streamed (as encoded on the wire, document metadata included).
    pub bytes: u64,
    /// The source's time per transfer: stream opened -> receiver's reply, which it
    /// sends after staging every chunk and installing the snapshot.
    pub send_seconds: f64,
    /// The receiver's time: first chunk -> installed.
    pub receive_seconds: f64,
    /// Each transfer as the watcher saw it: a move sends more than one when the
    /// leader has purged the log a learner needs after installing the previous one.
    pub polled: Vec<PolledTransfer>,
    /// `bytes / send_seconds` in MB/s (10^6 bytes).
    pub mb_per_sec: f64,
}

/// One snapshot transfer, polled from the leader's progress (seconds after the
/// operator's creation).
#[derive(Clone, Debug, Serialize)]
pub struct PolledTransfer {
    pub first_byte_s: f64,
    /// The last poll that saw more bytes handed to gRPC.
    pub last_byte_s: f64,
    /// The first poll that no longer saw the transfer: the receiver has staged,
    /// installed and replied (or the transfer failed).
    pub replied_s: Option<f64>,
    pub bytes: u64,
}

/// A node's storage counters across the move.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeIo {
    pub node: u64,
    pub role: &'static str,
    pub bytes_written: u64,
    pub fsyncs: u64,
    pub durable_commits: u64,
    pub nondurable_commits: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MoveResult {
    pub operator: String,
    pub operator_id: u64,
    pub shard: u64,
    /// Operator creation asked -> the PD lists no operator and the descriptor has
    /// the target as a voter and no source (polled every [`POLL_MS`]).
    pub seconds: f64,
    /// The PD's own duration of the operator (created -> marked done at its tick).
    pub pd_seconds: Option<f64>,
    /// Refusals of the operator before the PD accepted it (not counted in the move).
    pub refusals: Vec<String>,
    /// Seconds after creation when the source no longer hosted the replica.
    pub source_destroyed_s: Option<f64>,
    pub milestones: Vec<Milestone>,
    /// The operator's step on every change, as `ListOperators` showed it.
    pub steps: Vec<(f64, String)>,
    pub snapshot: SnapshotTransfer,
    pub io: Vec<NodeIo>,
    /// Process CPU over the move's parts: until the snapshot's first byte, the
    /// snapshot (to the receiver's reply), the rest, and the whole move.
    pub cpu: Vec<(String, CpuUse)>,
}

impl MoveResult {
    pub fn milestone(&self, name: &str) -> Option<f64> {
        self.milestones.iter().find(|m| m.name == name).map(|m| m.at_s)
    }
}

pub fn node_by_id(cluster: &TestCluster, id: NodeId) -> Option<&Arc<Node>> {
    cluster.running().find(|n| n.id() == id)
}

/// The node leading `shard`, as the nodes themselves claim.
pub fn leader_node(cluster: &TestCluster, shard: ShardId) -> Option<&Arc<Node>> {
    node_by_id(cluster, *cluster.leaders().get(&shard)?)
}

/// `shard`'s descriptor, as the PD has it.
pub async fn descriptor(pd: &PdClient, shard: ShardId) -> Option<ShardDescriptor> {
    let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await.ok()?;
    routes.into_iter().map(|r| r.descriptor).find(|d| d.id == shard)
}

/// Whether the PD's descriptor shows the move done: `to` a voter, `from` gone.
fn moved(d: &ShardDescriptor, from: NodeId, to: NodeId) -> bool {
    d.replicas.iter().any(|r| r.node == to && r.role == ReplicaRole::Voter)
        && !d.replicas.iter().any(|r| r.node == from)
}

/// A refusal that goes away once the nodes report to the PD (or the PD answers).
fn retryable_refusal(e: &cairn_proto::ApiError) -> bool {
    use cairn_proto::ApiError;
    match e {
        ApiError::Unavailable(_) | ApiError::NotLeader { .. } | ApiError::DeadlineExceeded(_) => true,
        other => other.to_string().contains(" is down"),
    }
}

/// Records each milestone the first time it is seen.
#[derive(Default)]
struct Seen {
    at: BTreeMap<&'static str, f64>,
    order: Vec<&'static str>,
}

impl Seen {
    fn mark(&mut self, name: &'static str, t: f64) {
        if !self.at.contains_key(name) {
            self.at.insert(name, t);
            self.order.push(name);
        }
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.at.get(name).copied()
    }
}

/// Moves `shard`'s replica from `from` to `to` through the PD and watches it to
/// the end (the source's replica destroyed, or [`DESTROY_TIMEOUT`]).
pub async fn run_move(
    cluster: &TestCluster,
    pd: &PdClient,
    shard: ShardId,
    from: NodeId,
    to: NodeId,
    status: &Status,
) -> anyhow::Result<MoveResult> {
    let counters_before = Counters::read();
    let io_before: Vec<(NodeId, StorageStats)> =
        cluster.running().map(|n| (n.id(), n.shared.storage.stats())).collect();
    let leader_at_start = cluster.leaders().get(&shard).copied();
    let kind = OperatorKind::MoveReplica { from, to };
    // A PD leader that has just (re)loaded its state has heard from no node yet
    // and refuses operators on "down" nodes until their next heartbeat: retry
    // those refusals (and an unavailable PD) for a while. The move starts with
    // the call that is accepted.
    let first_try = Instant::now();
    let mut refusals = Vec::new();
    let (created, cpu_at_start, op) = loop {
        let created = Instant::now();
        let cpu_at_start = cpu::sample();
        match pd.create_operator(shard, kind.clone()).await {
            Ok(op) => break (created, cpu_at_start, op),
            Err(e) if first_try.elapsed() < CREATE_RETRY && retryable_refusal(&e) => {
                if refusals.is_empty() {
                    tracing::info!(error = %e, "operator refused; retrying");
                }
                refusals.push(e.to_string());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) if !refusals.is_empty() && e.to_string().contains("already has operator") => {
                // An earlier attempt went through but its answer was lost: adopt it.
                let ops = pd.list_operators().await?;
                match ops.into_iter().find(|o| o.shard == shard && o.kind == kind) {
                    Some(op) => break (created, cpu_at_start, op),
                    None => anyhow::bail!("creating {kind} on shard {shard}: {e}"),
                }
            }
            Err(e) => anyhow::bail!("creating {kind} on shard {shard}: {e}"),
        }
    };
    let mut cpu_marks: BTreeMap<&'static str, (f64, Option<CpuSample>)> = BTreeMap::new();
    let mut seen = Seen::default();
    seen.mark("operator-created", created.elapsed().as_secs_f64());
    let mut steps: Vec<(f64, String)> = Vec::new();
    let mut transfers: Vec<PolledTransfer> = Vec::new();
    let mut last_line = String::new();
    let deadline = created + MOVE_TIMEOUT;
    let done_at = loop {
        let t = created.elapsed().as_secs_f64();
        if Instant::now() > deadline {
            anyhow::bail!("the move {kind} of shard {shard} did not finish in {MOVE_TIMEOUT:?}; steps {steps:?}");
        }
        // The leader's view of the group.
        let leader = leader_node(cluster, shard);
        if let Some(view) = leader.and_then(|n| n.shared.registry.get(shard)).and_then(|r| r.group.leader_view()) {
            let m = &view.membership;
            if m.learners.contains(&to) {
                seen.mark("learner-in-config", t);
            }
            let matched = view.matched.iter().find(|(n, _)| *n == to).map(|(_, i)| *i).unwrap_or(0);
            if matched > 0 {
                seen.mark("learner-matched", t);
                if matched + CATCH_UP_SLACK >= view.last_log_index {
                    seen.mark("learner-caught-up", t);
                }
            }
            if m.joint && m.voters.contains(&to) {
                seen.mark("joint-config", t);
            }
            if !m.joint && m.voters.contains(&to) && !m.contains(from) {
                seen.mark("final-config", t);
            }
        }
        // The leader's outgoing snapshot. A transfer that replaces another
        // between two polls shows as its byte count going down.
        let progress = leader.and_then(|n| n.shared.transport.snapshot_progress(shard.0, to.0));
        let current = transfers.last_mut().filter(|x| x.replied_s.is_none());
        match (progress, current) {
            (Some(p), Some(x)) if p.sent_bytes >= x.bytes => {
                if p.sent_bytes > x.bytes {
                    (x.bytes, x.last_byte_s) = (p.sent_bytes, t);
                }
            }
            (Some(p), current) => {
                if let Some(x) = current {
                    x.replied_s = Some(t);
                }
                if transfers.is_empty() {
                    cpu_marks.insert("snapshot-first-byte", (t, cpu::sample()));
                }
                transfers.push(PolledTransfer {
                    first_byte_s: t,
                    last_byte_s: t,
                    replied_s: None,
                    bytes: p.sent_bytes,
                });
            }
            (None, Some(x)) => {
                x.replied_s = Some(t);
                cpu_marks.insert("snapshot-replied", (t, cpu::sample()));
            }
            (None, None) => {}
        }
        // The target's replica.
        if let Some(r) = node_by_id(cluster, to).and_then(|n| n.shared.registry.get(shard)) {
            seen.mark("target-replica-created", t);
            if r.group.status().applied_index > 0 {
                seen.mark("target-applied", t);
            }
        }
        if node_by_id(cluster, from).is_none_or(|n| n.shared.registry.get(shard).is_none()) {
            seen.mark("source-destroyed", t);
        }
        // The PD.
        let ops = pd.list_operators().await.unwrap_or_default();
        match ops.iter().find(|o| o.id == op.id) {
            Some(o) => {
                if steps.last().map(|(_, s)| s != &o.step).unwrap_or(true) {
                    steps.push((t, o.step.clone()));
                }
                let line = format!(
                    "op {} {} step {}  snapshot {:.1} of {:.1} MB",
                    o.id,
                    o.kind,
                    o.step,
                    o.snapshot_sent_bytes as f64 / 1e6,
                    o.snapshot_total_bytes as f64 / 1e6
                );
                if line != last_line {
                    status.set_operator(line.clone());
                    last_line = line;
                }
                if let Some(why) = &o.rollback {
                    anyhow::bail!("the move {kind} of shard {shard} is being rolled back: {why}");
                }
            }
            None => {
                if let Some(d) = descriptor(pd, shard).await
                    && moved(&d, from, to)
                {
                    let t = created.elapsed().as_secs_f64();
                    cpu_marks.insert("pd-done", (t, cpu::sample()));
                    seen.mark("pd-done", t);
                    break t;
                }
                // The operator is gone but the move is not: it was rolled back.
                let events = pd.cluster(64).await.map(|c| c.events).unwrap_or_default();
                let mine = format!("operator {} on shard {shard} ", op.id);
                if let Some(e) = events.iter().rev().find(|e| e.message.starts_with(&mine)) {
                    anyhow::bail!("the move did not complete: {}", e.message);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    };
    status.set_operator(format!("op {} done in {done_at:.2} s; waiting for the source to drop its replica", op.id));
    // T3: the source drops its replica when the PD's next heartbeat answer says so.
    let destroy_deadline = Instant::now() + DESTROY_TIMEOUT;
    let source_destroyed_s = loop {
        if let Some(t) = seen.get("source-destroyed") {
            break Some(t);
        }
        let gone = node_by_id(cluster, from).is_none_or(|n| n.shared.registry.get(shard).is_none());
        if gone {
            break Some(created.elapsed().as_secs_f64());
        }
        if Instant::now() > destroy_deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    };
    if let Some(t) = source_destroyed_s {
        seen.mark("source-destroyed", t);
    }
    let delta = Counters::read().minus(&counters_before);
    let io = cluster
        .running()
        .filter_map(|n| {
            let (_, before) = io_before.iter().find(|(id, _)| *id == n.id())?;
            let after = n.shared.storage.stats();
            let role = if n.id() == from {
                "source"
            } else if n.id() == to {
                "target"
            } else if Some(n.id()) == leader_at_start {
                "leader"
            } else {
                "other"
            };
            Some(NodeIo {
                node: n.id().0,
                role,
                bytes_written: after.bytes_written - before.bytes_written,
                fsyncs: after.fsyncs - before.fsyncs,
                durable_commits: after.durable_commits - before.durable_commits,
                nondurable_commits: after.nondurable_commits - before.nondurable_commits,
            })
        })
        .collect();
    let bytes = delta.get(SNAPSHOT_SENT_BYTES) as u64;
    let snapshot = SnapshotTransfer {
        transfers: delta.get(SNAPSHOTS_SENT) as u64,
        failures: delta.get(SNAPSHOT_SEND_FAILURES) as u64,
        bytes,
        send_seconds: delta.get(SNAPSHOT_SEND_SECONDS),
        receive_seconds: delta.get(SNAPSHOT_RECEIVE_SECONDS),
        polled: transfers.clone(),
        mb_per_sec: if delta.get(SNAPSHOT_SEND_SECONDS) > 0.0 {
            bytes as f64 / 1e6 / delta.get(SNAPSHOT_SEND_SECONDS)
        } else {
            0.0
        },
    };
    // The timeline: the first transfer's first byte, the last one's end.
    if let (Some(first), Some(last)) = (transfers.first(), transfers.last()) {
        seen.mark("snapshot-first-byte", first.first_byte_s);
        seen.mark("snapshot-last-byte", last.last_byte_s);
        if let Some(t) = last.replied_s {
            seen.mark("snapshot-replied", t);
        }
    }
    let cpu = cpu_parts(cpu_at_start, &cpu_marks);
    let mut milestones: Vec<Milestone> =
        seen.order.iter().map(|name| Milestone { name, at_s: seen.at[name] }).collect();
    milestones.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    Ok(MoveResult {
        operator: kind.to_string(),
        operator_id: op.id,
        shard: shard.0,
        seconds: done_at,
        pd_seconds: (delta.get(MOVE_OPERATORS) >= 1.0).then_some(delta.get(MOVE_OPERATOR_SECONDS)),
        refusals,
        source_destroyed_s,
        milestones,
        steps,
        snapshot,
        io,
        cpu,
    })
}

/// CPU use between the marks the move passed (creation is at 0 s).
fn cpu_parts(
    start: Option<CpuSample>,
    marks: &BTreeMap<&'static str, (f64, Option<CpuSample>)>,
) -> Vec<(String, CpuUse)> {
    let Some(start) = start else { return Vec::new() };
    let at = |name: &str| marks.get(name).and_then(|(t, s)| s.as_ref().map(|s| (*t, s)));
    let origin = (0.0, &start);
    let mut out = Vec::new();
    let mut part = |name: &str, a: Option<(f64, &CpuSample)>, b: Option<(f64, &CpuSample)>| {
        if let (Some((ta, sa)), Some((tb, sb))) = (a, b) {
            out.push((name.to_string(), sb.since(sa, tb - ta)));
        }
    };
    part("until snapshot starts", Some(origin), at("snapshot-first-byte"));
    part("snapshot streaming", at("snapshot-first-byte"), at("snapshot-replied"));
    part("install -> removed", at("snapshot-replied"), at("pd-done"));
    part("whole move", Some(origin), at("pd-done"));
    out
}

/// Waits until `node` has no unreferenced data left to delete (its `data_gc`
/// table holds no garbage), so a destroyed replica's documents are gone; returns
/// the seconds waited, or `None` after `timeout`.
pub async fn wait_data_gc(node: &Node, timeout: Duration) -> anyhow::Result<Option<f64>> {
    use cairn_node::storage::tables::{DATA_GC, GC_GARBAGE};
    use redb::ReadableTable;
    let started = Instant::now();
    loop {
        let pending = {
            let txn = node.shared.storage.begin_read()?;
            let table = txn.open_table(DATA_GC)?;
            let mut pending = false;
            for item in table.iter()? {
                if item?.1.value() == GC_GARBAGE {
                    pending = true;
                    break;
                }
            }
            pending
        };
        if !pending {
            return Ok(Some(started.elapsed().as_secs_f64()));
        }
        if started.elapsed() > timeout {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_summed_over_label_sets() {
        let text = "# HELP x\n\
            cairn_snapshot_sent_bytes_total 1200\n\
            cairn_snapshot_send_seconds_sum 2.5\n\
            cairn_snapshot_send_seconds_count 1\n\
            cairn_snapshot_send_failures_total{reason=\"error\"} 1\n\
            cairn_snapshot_send_failures_total{reason=\"cancelled\"} 2\n\
            cairn_pd_operator_duration_seconds_sum{kind=\"move-replica\"} 3.25\n\
            cairn_pd_operator_duration_seconds_sum{kind=\"transfer-leader\"} 0.5\n";
        let c = Counters::parse(text);
        assert_eq!(c.get(SNAPSHOT_SENT_BYTES), 1200.0);
        assert_eq!(c.get(SNAPSHOT_SEND_SECONDS), 2.5);
        assert_eq!(c.get(SNAPSHOT_SEND_FAILURES), 3.0);
        assert_eq!(c.get(MOVE_OPERATOR_SECONDS), 3.25);
        assert_eq!(c.get(SNAPSHOTS_SENT), 0.0);
    }
}
