//! Keys and values of an acceptance run, the bulk load and the final check that
//! every acknowledged write reads back.
//!
//! A key starts with two bytes derived from its name, because the bootstrap cuts
//! the key space evenly on the first two bytes: so the documents spread over every
//! shard. A value is a JSON document of a given size that is a pure function of its
//! key ([`value_for`]), so checking a read needs only the key.
//!
//! Bulk load: every batch's keys share their two leading bytes, so a batch lies in
//! one shard and is written by one request (one Raft entry) of about 1 MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::Client;
use futures::StreamExt;

/// Documents per bulk-load batch (at ~4 KiB each, ~1 MiB per request; the node
/// takes at most 1000 items and 4 MiB per request).
pub const LOAD_BATCH_DOCS: usize = 240;
/// Keys per `batch_get` when verifying.
const VERIFY_BATCH_KEYS: usize = 200;
/// `batch_get`s in flight when verifying.
const VERIFY_IN_FLIGHT: usize = 8;
/// Attempts of one load batch (a batch rewrites the same values, so a retry is harmless).
const LOAD_ATTEMPTS_MAX: u32 = 3;

/// A 64-bit mix (splitmix64's finaliser).
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `[hi, lo]` then `name`: two leading bytes from `spread`.
fn key_with(spread: u64, name: String) -> Vec<u8> {
    let lead = (mix(spread) >> 48) as u16;
    let mut key = lead.to_be_bytes().to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// Key `i` of bulk-load batch `batch` (every key of a batch in one shard).
pub fn load_key(run: u64, batch: u64, i: usize) -> Vec<u8> {
    key_with(run ^ batch.wrapping_mul(0x51), format!("/load/{batch:06}/{i:03}"))
}

/// The key of client `client`'s write number `seq`.
pub fn client_key(run: u64, client: u32, seq: u64) -> Vec<u8> {
    key_with(run ^ (u64::from(client) << 40) ^ seq.wrapping_mul(0x9e37), format!("/c{client:02}/{seq:08}"))
}

/// The JSON document stored at `key`: `{"key":"<hex>","pad":"<letters>"}`,
/// `bytes` long (or just the key part if that is longer).
pub fn value_for(key: &[u8], bytes: usize) -> Vec<u8> {
    let mut out = String::with_capacity(bytes + 64);
    out.push_str(r#"{"key":""#);
    for b in key {
        out.push_str(&format!("{b:02x}"));
    }
    out.push_str(r#"","pad":""#);
    let tail = "\"}";
    let pad = bytes.saturating_sub(out.len() + tail.len());
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut state = fnv1a(key);
    for _ in 0..pad {
        state = mix(state);
        out.push(ALPHABET[(state % ALPHABET.len() as u64) as usize] as char);
    }
    out.push_str(tail);
    out.into_bytes()
}

/// What to load: `batches` batches of [`LOAD_BATCH_DOCS`] documents.
#[derive(Clone, Copy, Debug)]
pub struct LoadPlan {
    pub run: u64,
    pub batches: u64,
    pub value_bytes: usize,
}

impl LoadPlan {
    /// Enough batches for `mb` MB (10^6 bytes) of keys plus values.
    pub fn for_mb(run: u64, mb: f64, value_bytes: usize) -> LoadPlan {
        let doc_bytes = (value_bytes + load_key(run, 0, 0).len()) as f64;
        let docs = (mb * 1e6 / doc_bytes).ceil() as u64;
        LoadPlan { run, batches: docs.div_ceil(LOAD_BATCH_DOCS as u64).max(1), value_bytes }
    }

    pub fn docs(&self) -> u64 {
        self.batches * LOAD_BATCH_DOCS as u64
    }

    fn batch(&self, batch: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..LOAD_BATCH_DOCS)
            .map(|i| {
                let key = load_key(self.run, batch, i);
                let value = value_for(&key, self.value_bytes);
                (key, value)
            })
            .collect()
    }
}

/// How the bulk load went.
#[derive(Clone, Debug)]
pub struct LoadStats {
    pub docs: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// Batch attempts that failed and were retried.
    pub retried: u64,
}

/// Loads `plan` with `tasks` concurrent `batch_put`s through `client`, printing
/// the MB loaded to stderr every second.
pub async fn load(client: &Client, plan: LoadPlan, tasks: usize) -> anyhow::Result<LoadStats> {
    let started = Instant::now();
    let bytes = Arc::new(AtomicU64::new(0));
    let retried = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let total_mb = plan.docs() as f64 * (plan.value_bytes + load_key(plan.run, 0, 0).len()) as f64 / 1e6;
    let ticker = {
        let (bytes, done) = (bytes.clone(), done.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                let mb = bytes.load(Ordering::Relaxed) as f64 / 1e6;
                let secs = started.elapsed().as_secs_f64();
                eprintln!("load: {mb:7.1} / {total_mb:.1} MB  ({:.1} MB/s)", mb / secs);
            }
        })
    };
    let workers: Vec<_> = (0..tasks.max(1))
        .map(|_| {
            let (client, bytes, retried, next) = (client.clone(), bytes.clone(), retried.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let batch = next.fetch_add(1, Ordering::Relaxed);
                    if batch >= plan.batches {
                        return anyhow::Ok(());
                    }
                    let items = plan.batch(batch);
                    let size: u64 = items.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
                    let mut attempt = 1;
                    loop {
                        match client.batch_put(items.iter().map(|(k, v)| (k, v))).await {
                            Ok(_) => break,
                            Err(e) if attempt < LOAD_ATTEMPTS_MAX => {
                                eprintln!("load: batch {batch} failed (attempt {attempt}), retrying: {e}");
                                retried.fetch_add(1, Ordering::Relaxed);
                                attempt += 1;
                            }
                            Err(e) => return Err(e).with_context(|| format!("loading batch {batch}")),
                        }
                    }
                    bytes.fetch_add(size, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let mut result = Ok(());
    for worker in workers {
        let outcome = worker.await.context("a load task panicked").and_then(|r| r);
        if result.is_ok() {
            result = outcome;
        }
    }
    done.store(true, Ordering::Relaxed);
    ticker.abort();
    result?;
    Ok(LoadStats {
        docs: plan.docs(),
        bytes: bytes.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        retried: retried.load(Ordering::Relaxed),
    })
}

/// The outcome of reading back acknowledged writes.
#[derive(Clone, Debug, Default)]
pub struct VerifyStats {
    pub checked: u64,
    pub missing: u64,
    pub wrong: u64,
    /// Up to a few examples of missing or wrong keys, and failed reads.
    pub examples: Vec<String>,
    pub read_errors: u64,
}

impl VerifyStats {
    pub fn ok(&self) -> bool {
        self.missing == 0 && self.wrong == 0 && self.read_errors == 0
    }

    fn merge(&mut self, other: VerifyStats) {
        self.checked += other.checked;
        self.missing += other.missing;
        self.wrong += other.wrong;
        self.read_errors += other.read_errors;
        let room = 10usize.saturating_sub(self.examples.len());
        self.examples.extend(other.examples.into_iter().take(room));
    }
}

/// Reads every key of `keys` (grouped in batches) and compares it with
/// [`value_for`]; `VERIFY_IN_FLIGHT` batches at a time.
pub async fn verify(client: &Client, keys: impl Iterator<Item = Vec<u8>>, value_bytes: usize) -> VerifyStats {
    let keys: Vec<Vec<u8>> = keys.collect();
    let chunks: Vec<Vec<Vec<u8>>> = keys.chunks(VERIFY_BATCH_KEYS).map(|c| c.to_vec()).collect();
    let results: Vec<VerifyStats> = futures::stream::iter(chunks)
        .map(|chunk| async move {
            let mut stats = VerifyStats::default();
            match client.batch_get(&chunk).await {
                Ok(docs) => {
                    for (key, doc) in chunk.iter().zip(docs) {
                        stats.checked += 1;
                        match doc {
                            None => {
                                stats.missing += 1;
                                stats.examples.push(format!("missing {}", cairn_proto::display_key(key)));
                            }
                            Some(d) if d.value != value_for(key, value_bytes) => {
                                stats.wrong += 1;
                                stats.examples.push(format!("wrong value at {}", cairn_proto::display_key(key)));
                            }
                            Some(_) => {}
                        }
                    }
                }
                Err(e) => {
                    stats.read_errors += 1;
                    stats.examples.push(format!("batch_get of {} keys failed: {e}", chunk.len()));
                }
            }
            stats
        })
        .buffer_unordered(VERIFY_IN_FLIGHT)
        .collect()
        .await;
    let mut total = VerifyStats::default();
    for r in results {
        total.merge(r);
    }
    total
}

/// Every key of a bulk load.
pub fn load_keys(plan: LoadPlan) -> impl Iterator<Item = Vec<u8>> {
    (0..plan.batches).flat_map(move |b| (0..LOAD_BATCH_DOCS).map(move |i| load_key(plan.run, b, i)))
}
