//! Prometheus metrics of the node, served as text on the metrics endpoint.
//! Counters live in one process-wide registry; storage counters are read from
//! the node's storage at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::storage::StorageStats;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub op: &'static str,
    pub code: &'static str,
}

struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram>,
    snapshots_sent: Counter,
    snapshot_bytes_sent: Counter,
    snapshots_received: Counter,
    snapshot_bytes_received: Counter,
    snapshot_seconds: Histogram,
    snapshot_send_seconds: Histogram,
    snapshot_receive_seconds: Histogram,
    snapshot_send_failures: Family<ReasonLabels, Counter>,
    snapshot_bandwidth_waits: Counter,
    snapshot_bandwidth_wait_seconds: Histogram,
    snapshot_rate_limit: Gauge,
    node_commands: Family<CommandLabels, Counter>,
    node_commands_in_flight: Gauge,
    replicas_destroyed: Counter,
    tombstone_refusals: Counter,
    pd_operators: Family<OperatorLabels, Counter>,
    pd_operator_seconds: Family<OperatorKindLabels, Histogram>,
    pd_operators_in_flight: Gauge,
    pd_requests: Family<PdLabels, Counter>,
    pd_commits: Family<PdLabels, Counter>,
    heartbeats_sent: Family<PdLabels, Counter>,
    pd_nudges: Family<PdLabels, Counter>,
}

/// `op`: a PD method (or commit kind); `result`: `ok` or an error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PdLabels {
    pub op: &'static str,
    pub result: &'static str,
}

/// `kind`: a PD command (`add-learner`, ...); `result`: `done`, `already-done`,
/// the reason it was skipped (`not-leader`, `stale-conf-ver`, `tombstoned`,
/// ...), `busy` (dropped: one in flight for the shard or too many) or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

/// A finished operator: its kind (`move-replica`, ...), outcome (`done`,
/// `rolled-back`, `abandoned`) and why it was created (`repair`, ...; an
/// unknown reason is `other`, to keep the label set bounded).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperatorLabels {
    pub kind: &'static str,
    pub outcome: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperatorKindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| {
        let mut registry = Registry::with_prefix("cairn");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let snapshots_sent = Counter::default();
        let snapshot_bytes_sent = Counter::default();
        let snapshots_received = Counter::default();
        let snapshot_bytes_received = Counter::default();
        let snapshot_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let snapshot_send_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let snapshot_receive_seconds = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        let snapshot_send_failures = Family::<ReasonLabels, Counter>::default();
        let snapshot_bandwidth_waits = Counter::default();
        let snapshot_bandwidth_wait_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let snapshot_rate_limit = Gauge::default();
        let node_commands = Family::<CommandLabels, Counter>::default();
        let node_commands_in_flight = Gauge::default();
        let replicas_destroyed = Counter::default();
        let tombstone_refusals = Counter::default();
        let pd_operators = Family::<OperatorLabels, Counter>::default();
        let pd_operator_seconds = Family::<OperatorKindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.1, 2.0, 16))
        });
        let pd_operators_in_flight = Gauge::default();
        let pd_requests = Family::<PdLabels, Counter>::default();
        let pd_commits = Family::<PdLabels, Counter>::default();
        let heartbeats_sent = Family::<PdLabels, Counter>::default();
        let pd_nudges = Family::<PdLabels, Counter>::default();
        registry.register("pd_requests", "PD requests answered by this node as PD leader", pd_requests.clone());
        registry.register("pd_commits", "PD state transactions by result", pd_commits.clone());
        registry.register(
            "pd_heartbeats_sent",
            "Heartbeats this node sent to the PD, by result",
            heartbeats_sent.clone(),
        );
        registry.register(
            "pd_nudges",
            "Nudges this node sent as PD leader (a node told to heartbeat for new commands), by result",
            pd_nudges.clone(),
        );
        registry.register("kv_requests", "KV requests by operation and result code", requests.clone());
        registry.register("kv_request_seconds", "KV request latency", request_seconds.clone());
        registry.register("snapshots_sent", "Snapshots streamed to peers", snapshots_sent.clone());
        registry.register("snapshot_sent_bytes", "Snapshot bytes streamed to peers", snapshot_bytes_sent.clone());
        registry.register("snapshots_received", "Snapshots received from peers", snapshots_received.clone());
        registry.register("snapshot_received_bytes", "Snapshot bytes received", snapshot_bytes_received.clone());
        registry.register("snapshot_transfer_seconds", "Duration of snapshot transfers", snapshot_seconds.clone());
        registry.register(
            "snapshot_send_seconds",
            "Duration of snapshots sent to peers, bandwidth waits included",
            snapshot_send_seconds.clone(),
        );
        registry.register(
            "snapshot_receive_seconds",
            "Duration of snapshots received, staging and install included",
            snapshot_receive_seconds.clone(),
        );
        registry.register(
            "snapshot_send_failures",
            "Snapshot transfers to peers that did not complete, by reason",
            snapshot_send_failures.clone(),
        );
        registry.register(
            "snapshot_bandwidth_waits",
            "Snapshot chunks that waited for the node's snapshot bandwidth limit",
            snapshot_bandwidth_waits.clone(),
        );
        registry.register(
            "snapshot_bandwidth_wait_seconds",
            "Time snapshot chunks waited for the bandwidth limit",
            snapshot_bandwidth_wait_seconds.clone(),
        );
        registry.register(
            "snapshot_rate_limit_bytes_per_sec",
            "Outgoing snapshot bandwidth limit of this node (0: unlimited)",
            snapshot_rate_limit.clone(),
        );
        registry.register("node_commands", "PD commands this node executed, by kind and result", node_commands.clone());
        registry.register(
            "node_commands_in_flight",
            "PD commands this node is executing now",
            node_commands_in_flight.clone(),
        );
        registry.register(
            "replicas_destroyed",
            "Replicas this node destroyed (documents, log and record)",
            replicas_destroyed.clone(),
        );
        registry.register(
            "tombstone_refusals",
            "Replica creations refused because the shard was destroyed here at a configuration not older",
            tombstone_refusals.clone(),
        );
        registry.register(
            "pd_operators",
            "Operators the PD finished, by kind, outcome and reason",
            pd_operators.clone(),
        );
        registry.register(
            "pd_operator_duration_seconds",
            "Time from an operator's creation to its end",
            pd_operator_seconds.clone(),
        );
        registry.register(
            "pd_operators_in_flight",
            "Operators in flight, as the PD leader last saw them",
            pd_operators_in_flight.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            snapshots_sent,
            snapshot_bytes_sent,
            snapshots_received,
            snapshot_bytes_received,
            snapshot_seconds,
            snapshot_send_seconds,
            snapshot_receive_seconds,
            snapshot_send_failures,
            snapshot_bandwidth_waits,
            snapshot_bandwidth_wait_seconds,
            snapshot_rate_limit,
            node_commands,
            node_commands_in_flight,
            replicas_destroyed,
            tombstone_refusals,
            pd_operators,
            pd_operator_seconds,
            pd_operators_in_flight,
            pd_requests,
            pd_commits,
            heartbeats_sent,
            pd_nudges,
        }
    })
}

fn result_label<T>(r: &Result<T, cairn_proto::ApiError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    }
}

pub fn pd_request<T>(op: &'static str, r: &Result<T, cairn_proto::ApiError>) {
    metrics().pd_requests.get_or_create(&PdLabels { op, result: result_label(r) }).inc();
}

pub fn pd_commit<T>(r: &Result<T, cairn_proto::ApiError>) {
    metrics().pd_commits.get_or_create(&PdLabels { op: "txn", result: result_label(r) }).inc();
}

pub fn heartbeat_sent<T>(r: &Result<T, cairn_proto::ApiError>) {
    metrics().heartbeats_sent.get_or_create(&PdLabels { op: "heartbeat", result: result_label(r) }).inc();
}

pub fn pd_nudge(r: &Result<(), cairn_proto::ApiError>) {
    metrics().pd_nudges.get_or_create(&PdLabels { op: "nudge", result: result_label(r) }).inc();
}

pub fn request(op: &'static str, code: &'static str, elapsed: Duration) {
    let m = metrics();
    let labels = RequestLabels { op, code };
    m.requests.get_or_create(&labels).inc();
    m.request_seconds.get_or_create(&labels).observe(elapsed.as_secs_f64());
}

pub fn snapshot_sent(bytes: u64, elapsed: Duration) {
    let m = metrics();
    m.snapshots_sent.inc();
    m.snapshot_bytes_sent.inc_by(bytes);
    m.snapshot_seconds.observe(elapsed.as_secs_f64());
    m.snapshot_send_seconds.observe(elapsed.as_secs_f64());
}

pub fn snapshot_received(bytes: u64, elapsed: Duration) {
    let m = metrics();
    m.snapshots_received.inc();
    m.snapshot_bytes_received.inc_by(bytes);
    m.snapshot_seconds.observe(elapsed.as_secs_f64());
    m.snapshot_receive_seconds.observe(elapsed.as_secs_f64());
}

/// `reason`: `cancelled` (openraft stopped the transfer) or `error`.
pub fn snapshot_send_failed(reason: &'static str) {
    metrics().snapshot_send_failures.get_or_create(&ReasonLabels { reason }).inc();
}

pub fn snapshot_bandwidth_wait(waited: Duration) {
    let m = metrics();
    m.snapshot_bandwidth_waits.inc();
    m.snapshot_bandwidth_wait_seconds.observe(waited.as_secs_f64());
}

pub fn snapshot_rate_limit(bytes_per_sec: u64) {
    metrics().snapshot_rate_limit.set(i64::try_from(bytes_per_sec).unwrap_or(i64::MAX));
}

pub fn node_command(kind: &'static str, result: &'static str) {
    metrics().node_commands.get_or_create(&CommandLabels { kind, result }).inc();
}

pub fn node_commands_in_flight(n: usize) {
    metrics().node_commands_in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
}

pub fn replica_destroyed() {
    metrics().replicas_destroyed.inc();
}

/// The operator reasons the PD uses, as static labels.
const OPERATOR_REASONS: &[&str] =
    &["admin", "repair", "drain", "balance-replicas", "balance-leaders", "replication-factor"];

pub fn pd_operator_finished(kind: &'static str, outcome: &'static str, reason: &str, duration_ms: u64) {
    let m = metrics();
    let reason = OPERATOR_REASONS.iter().find(|r| **r == reason).copied().unwrap_or("other");
    m.pd_operators.get_or_create(&OperatorLabels { kind, outcome, reason }).inc();
    m.pd_operator_seconds.get_or_create(&OperatorKindLabels { kind }).observe(duration_ms as f64 / 1000.0);
}

pub fn pd_operators_in_flight(n: usize) {
    metrics().pd_operators_in_flight.set(i64::try_from(n).unwrap_or(i64::MAX));
}

pub fn tombstone_refusal() {
    metrics().tombstone_refusals.inc();
}

/// The whole exposition text, with the node's storage counters appended.
pub fn render(storage: &StorageStats, shards: usize, quiescent: usize) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, &metrics().registry) {
        tracing::warn!(error = %e, "metrics encoding failed");
    }
    let counters = [
        ("cairn_storage_fsyncs_total", "fsync calls on the database file", storage.fsyncs),
        ("cairn_storage_bytes_written_total", "bytes written to the database file", storage.bytes_written),
        ("cairn_storage_durable_commits_total", "durable (fsynced) write transactions", storage.durable_commits),
        ("cairn_storage_nondurable_commits_total", "non-durable write transactions", storage.nondurable_commits),
        ("cairn_storage_log_entries_persisted_total", "Raft log entries made durable", storage.log_entries_persisted),
    ];
    for (name, help, v) in counters {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"));
    }
    out.push_str(&format!(
        "# HELP cairn_shards hosted shard replicas\n# TYPE cairn_shards gauge\ncairn_shards {shards}\n"
    ));
    out.push_str(&format!(
        "# HELP cairn_quiescent_shards hosted replicas whose group sleeps\n# TYPE cairn_quiescent_shards gauge\ncairn_quiescent_shards {quiescent}\n"
    ));
    out.push_str("# EOF\n");
    out
}
