//! Prometheus metrics of the node, served as text on the metrics endpoint.
//! Counters live in one process-wide registry; storage counters are read from
//! the node's storage at scrape time.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    pd_requests: Family<PdLabels, Counter>,
    pd_commits: Family<PdLabels, Counter>,
    heartbeats_sent: Family<PdLabels, Counter>,
}

/// `op`: a PD method (or commit kind); `result`: `ok` or an error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PdLabels {
    pub op: &'static str,
    pub result: &'static str,
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
        let pd_requests = Family::<PdLabels, Counter>::default();
        let pd_commits = Family::<PdLabels, Counter>::default();
        let heartbeats_sent = Family::<PdLabels, Counter>::default();
        registry.register("pd_requests", "PD requests answered by this node as PD leader", pd_requests.clone());
        registry.register("pd_commits", "PD state transactions by result", pd_commits.clone());
        registry.register(
            "pd_heartbeats_sent",
            "Heartbeats this node sent to the PD, by result",
            heartbeats_sent.clone(),
        );
        registry.register("kv_requests", "KV requests by operation and result code", requests.clone());
        registry.register("kv_request_seconds", "KV request latency", request_seconds.clone());
        registry.register("snapshots_sent", "Snapshots streamed to peers", snapshots_sent.clone());
        registry.register("snapshot_sent_bytes", "Snapshot bytes streamed to peers", snapshot_bytes_sent.clone());
        registry.register("snapshots_received", "Snapshots received from peers", snapshots_received.clone());
        registry.register("snapshot_received_bytes", "Snapshot bytes received", snapshot_bytes_received.clone());
        registry.register("snapshot_transfer_seconds", "Duration of snapshot transfers", snapshot_seconds.clone());
        Metrics {
            registry,
            requests,
            request_seconds,
            snapshots_sent,
            snapshot_bytes_sent,
            snapshots_received,
            snapshot_bytes_received,
            snapshot_seconds,
            pd_requests,
            pd_commits,
            heartbeats_sent,
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
}

pub fn snapshot_received(bytes: u64, elapsed: Duration) {
    let m = metrics();
    m.snapshots_received.inc();
    m.snapshot_bytes_received.inc_by(bytes);
    m.snapshot_seconds.observe(elapsed.as_secs_f64());
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
