//! The client side of `move-bench`, through the routed [`Client`] (the PD's
//! shard map, kept current by its watch, so the clients follow the moves) or,
//! for the loader and the writers, any [`KvPut`] (the bench's etcd client too):
//!
//! - [`load_shard`] fills the shard with documents quickly: batches of about
//!   [`LOAD_BATCH_BYTES`] written by concurrent tasks, each task building one batch
//!   at a time, so memory stays bounded whatever the shard's size.
//! - [`fill_log`] overwrites a few tiny documents until a condition holds; the
//!   bench uses it to push the leader's log past its first snapshot and purge, so
//!   that a new replica has to be sent a snapshot (a bulk load of a few hundred
//!   large batches leaves the whole history in the log, and a learner would then
//!   catch up by replaying it).
//! - [`Writers`]: `n` clients, each with its own [`Client`], putting fresh keys in a
//!   loop until stopped, recording every acknowledged write's start and latency, so
//!   any window (before, during, after a move) can be summarised afterwards by
//!   [`window`]. An operation belongs to the window it started in.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use cairn_client::{Client, ClientConfig};
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::time::Instant;

use super::latency::{LatencySummary, summarize};
use super::move_status::Status;
use super::workload::json_value;

/// Target bytes of one load batch: large enough that a batch costs one Raft entry
/// for many documents, well under the server's 4 MiB request limit.
pub const LOAD_BATCH_BYTES: usize = 1 << 20;

/// The most documents in one load batch (the server allows 1000).
pub const LOAD_BATCH_ITEMS_MAX: usize = 500;

/// Tiny documents [`fill_log`] overwrites, one per task.
const FILL_TASKS: usize = 32;

/// Bytes of every load key: 4 hex digits of a hash (so batches land all over the
/// key space, as real keys would), then the batch and the item.
pub const LOAD_KEY_BYTES: usize = 21;

/// A deterministic key of `LOAD_KEY_BYTES` bytes for item `item` of batch `batch`.
pub fn load_key(batch: u64, item: u64) -> Vec<u8> {
    let mix = (batch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ item.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) >> 48;
    format!("{mix:04x}/load/{batch:07}/{item:03}").into_bytes()
}

/// A fresh writer key: a 4-hex-digit prefix spreads writes over the key space.
fn writer_key(writer: usize, seq: u64) -> Vec<u8> {
    let mix = (seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (writer as u64).wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) >> 48;
    format!("{mix:04x}/w{writer:02}/{seq:09}").into_bytes()
}

/// The error code a client error's text starts with (`UNAVAILABLE: ...`).
fn code_of(e: &cairn_client::Error) -> String {
    let text = e.to_string();
    text.split(':').next().unwrap_or("ERROR").to_string()
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadStats {
    pub docs: u64,
    /// Keys plus values, as the shard's size counts them.
    pub bytes: u64,
    pub batches: u64,
    pub items_per_batch: u64,
    pub seconds: f64,
    pub mb_per_sec: f64,
}

/// Writes documents of `value_bytes` until they add up to at least `target_bytes`
/// (keys plus values), with `tasks` concurrent batch writers. Fails on the first
/// failed batch.
pub async fn load_shard<C: KvPut + Clone>(
    client: &C,
    target_bytes: u64,
    value_bytes: usize,
    tasks: usize,
    status: &Arc<Status>,
) -> anyhow::Result<LoadStats> {
    let doc_bytes = (LOAD_KEY_BYTES + value_bytes) as u64;
    let docs = target_bytes.div_ceil(doc_bytes).max(1);
    let items = (LOAD_BATCH_BYTES / (LOAD_KEY_BYTES + value_bytes)).clamp(1, LOAD_BATCH_ITEMS_MAX) as u64;
    let batches = docs.div_ceil(items);
    status.load_target_bytes.store(docs * doc_bytes, Ordering::Relaxed);
    status.loaded_bytes.store(0, Ordering::Relaxed);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers = (0..tasks.max(1)).map(|task| {
        let (client, next, status) = (client.clone(), next.clone(), status.clone());
        tokio::spawn(async move {
            loop {
                let batch = next.fetch_add(1, Ordering::Relaxed);
                if batch >= batches {
                    return anyhow::Ok(());
                }
                let first = batch * items;
                let n = items.min(docs - first);
                let batch_items: Vec<(Vec<u8>, Vec<u8>)> =
                    (0..n).map(|i| (load_key(batch, i), json_value(task, first + i, value_bytes))).collect();
                client.put_batch(batch_items).await.with_context(|| format!("load batch {batch}"))?;
                status.loaded_bytes.fetch_add(n * doc_bytes, Ordering::Relaxed);
            }
        })
    });
    for joined in futures::future::join_all(workers).await {
        joined.context("a load task panicked")??;
    }
    let seconds = started.elapsed().as_secs_f64();
    status.load_target_bytes.store(0, Ordering::Relaxed);
    let bytes = docs * doc_bytes;
    Ok(LoadStats { docs, bytes, batches, items_per_batch: items, seconds, mb_per_sec: bytes as f64 / 1e6 / seconds })
}

#[derive(Clone, Debug, Serialize)]
pub struct FillStats {
    pub puts: u64,
    pub seconds: f64,
}

/// Overwrites [`FILL_TASKS`] tiny documents until `done()` holds (checked every
/// 100 ms), at most `puts_max` puts or `timeout`.
pub async fn fill_log<C: KvPut + Clone>(
    client: &C,
    puts_max: u64,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
) -> anyhow::Result<FillStats> {
    let stop = Arc::new(AtomicBool::new(false));
    let puts = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..FILL_TASKS)
        .map(|task| {
            let (client, stop, puts) = (client.clone(), stop.clone(), puts.clone());
            tokio::spawn(async move {
                let key = format!("ffff/fill/{task:02}").into_bytes();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let value = format!(r#"{{"fill":{seq}}}"#).into_bytes();
                    KvPut::put(&client, key.clone(), value)
                        .await
                        .map_err(|(code, message)| anyhow::anyhow!("fill put: {code}: {message}"))?;
                    puts.fetch_add(1, Ordering::Relaxed);
                    seq += 1;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    let outcome = loop {
        if done() {
            break Ok(());
        }
        if puts.load(Ordering::Relaxed) >= puts_max || started.elapsed() >= timeout {
            break Err(anyhow::anyhow!(
                "the condition did not hold after {} puts in {:.1} s",
                puts.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            ));
        }
        if tasks.iter().any(|t| t.is_finished()) {
            // A task only ends early on an error: stop, and surface it below.
            break Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.context("a fill task panicked")??;
    }
    outcome?;
    Ok(FillStats { puts: puts.load(Ordering::Relaxed), seconds: started.elapsed().as_secs_f64() })
}

/// One acknowledged write: when it started (since the writers' `t0`) and how long
/// it took.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub start_ns: u64,
    pub latency_ns: u64,
}

/// Everything the writers recorded.
#[derive(Debug, Default)]
pub struct WriterLog {
    pub samples: Vec<Sample>,
    /// Failed writes: start (since `t0`) and error code.
    pub errors: Vec<(u64, String)>,
    /// The first message per error code.
    pub examples: BTreeMap<String, String>,
}

/// One writer's connection to the store under test: Cairn's routed [`Client`] or,
/// for the measured peer, an etcd client ([`super::etcd`]).
pub trait KvPut: Send + Sync + 'static {
    /// Puts `value` at `key`; an error is (its code, its message).
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, Result<(), (String, String)>>;

    /// Puts every pair in one request (one Raft entry).
    fn put_batch(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> BoxFuture<'_, anyhow::Result<()>>;

    /// Closes the connection once the writer has stopped.
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl KvPut for Client {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> BoxFuture<'_, Result<(), (String, String)>> {
        Box::pin(
            async move { Client::put(self, &key, &value).await.map(drop).map_err(|e| (code_of(&e), e.to_string())) },
        )
    }

    fn put_batch(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move { Ok(self.batch_put(pairs).await.map(drop)?) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(Client::shutdown(self))
    }
}

/// `n` clients putting fresh keys until stopped.
pub struct Writers {
    /// The origin of every sample's `start_ns`.
    pub t0: Instant,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterLog>>,
    clients: Vec<Arc<dyn KvPut>>,
}

impl Writers {
    /// Connects `n` Cairn clients to the PD at `endpoints`, then starts them writing.
    pub async fn start(
        endpoints: Vec<String>,
        n: usize,
        value_bytes: usize,
        status: Arc<Status>,
    ) -> anyhow::Result<Writers> {
        let mut clients: Vec<Arc<dyn KvPut>> = Vec::with_capacity(n);
        for _ in 0..n {
            clients.push(Arc::new(Client::connect_with(endpoints.clone(), ClientConfig::default()).await?));
        }
        Ok(Writers::start_with(clients, value_bytes, status))
    }

    /// Starts one writer per client, each putting fresh keys of `value_bytes` values.
    pub fn start_with(clients: Vec<Arc<dyn KvPut>>, value_bytes: usize, status: Arc<Status>) -> Writers {
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = clients
            .iter()
            .enumerate()
            .map(|(w, client)| {
                let (client, stop, status) = (client.clone(), stop.clone(), status.clone());
                tokio::spawn(async move {
                    let mut log = WriterLog::default();
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = writer_key(w, seq);
                        let value = json_value(w, seq, value_bytes);
                        let started = Instant::now();
                        let start_ns = (started - t0).as_nanos() as u64;
                        match client.put(key, value).await {
                            Ok(()) => {
                                let latency_ns = started.elapsed().as_nanos() as u64;
                                log.samples.push(Sample { start_ns, latency_ns });
                                status.writes.fetch_add(1, Ordering::Relaxed);
                            }
                            Err((code, message)) => {
                                log.examples.entry(code.clone()).or_insert(message);
                                log.errors.push((start_ns, code));
                                status.write_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        seq += 1;
                    }
                    log
                })
            })
            .collect();
        Writers { t0, stop, tasks, clients }
    }

    /// Time since `t0`.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Stops every writer after its write in flight and returns what they recorded.
    pub async fn stop(self) -> anyhow::Result<WriterLog> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = WriterLog::default();
        for t in self.tasks {
            let log = t.await.context("a writer panicked")?;
            all.samples.extend(log.samples);
            all.errors.extend(log.errors);
            for (code, m) in log.examples {
                all.examples.entry(code).or_insert(m);
            }
        }
        for c in &self.clients {
            c.shutdown().await;
        }
        Ok(all)
    }
}

/// The writes that started in one window.
#[derive(Clone, Debug, Serialize)]
pub struct WindowStats {
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency: Option<LatencySummary>,
    /// Failed writes by error code.
    pub errors: BTreeMap<String, u64>,
}

/// What a move cost the writers: `(1 - during ops/s ÷ before ops/s) × 100`
/// (negative when throughput went up) and p99 during ÷ p99 before.
pub fn loss(before: &WindowStats, during: &WindowStats) -> (f64, Option<f64>) {
    let percent = if before.ops_per_sec > 0.0 { (1.0 - during.ops_per_sec / before.ops_per_sec) * 100.0 } else { 0.0 };
    let p99_factor = match (&before.latency, &during.latency) {
        (Some(b), Some(d)) if b.p99_ms > 0.0 => Some(d.p99_ms / b.p99_ms),
        _ => None,
    };
    (percent, p99_factor)
}

/// Summarises the writes that started in `[from, to)` (durations since `t0`).
pub fn window(log: &WriterLog, from: Duration, to: Duration) -> WindowStats {
    let (from_ns, to_ns) = (from.as_nanos() as u64, to.as_nanos() as u64);
    let inside = |start: u64| start >= from_ns && start < to_ns;
    let latencies: Vec<u64> = log.samples.iter().filter(|s| inside(s.start_ns)).map(|s| s.latency_ns).collect();
    let mut errors = BTreeMap::new();
    for (start, code) in &log.errors {
        if inside(*start) {
            *errors.entry(code.clone()).or_default() += 1;
        }
    }
    let seconds = to.saturating_sub(from).as_secs_f64();
    let ops = latencies.len() as u64;
    WindowStats {
        seconds,
        ops,
        ops_per_sec: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
        latency: summarize(latencies),
        errors,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_keys_have_a_fixed_length_and_are_unique() {
        let a = load_key(0, 0);
        assert_eq!(a.len(), LOAD_KEY_BYTES);
        assert_eq!(load_key(9_999_999, 999).len(), LOAD_KEY_BYTES);
        assert_ne!(load_key(1, 2), load_key(2, 1));
    }

    #[test]
    fn a_write_belongs_to_the_window_it_started_in() {
        let ms = |n: u64| n * 1_000_000;
        let log = WriterLog {
            samples: vec![
                Sample { start_ns: ms(100), latency_ns: ms(5) },
                Sample { start_ns: ms(999), latency_ns: ms(50) },
                Sample { start_ns: ms(1000), latency_ns: ms(7) },
            ],
            errors: vec![(ms(1500), "UNAVAILABLE".into())],
            examples: BTreeMap::new(),
        };
        let before = window(&log, Duration::ZERO, Duration::from_secs(1));
        assert_eq!(before.ops, 2);
        assert_eq!(before.ops_per_sec, 2.0);
        assert_eq!(before.latency.as_ref().map(|l| l.max_ms), Some(50.0));
        let after = window(&log, Duration::from_secs(1), Duration::from_secs(2));
        assert_eq!(after.ops, 1);
        assert_eq!(after.errors.get("UNAVAILABLE"), Some(&1));
    }
}
