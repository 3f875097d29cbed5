//! The client side of the bench: writer and reader tasks sharing one [`DirectClient`].
//!
//! - A writer loops `put` of a fresh key (2 random bytes, so the static bootstrap's
//!   even cut on the first two key bytes spreads writes over every shard, then a unique
//!   suffix) with a JSON value of a fixed size. Every acknowledged key joins the
//!   [`KeyPool`].
//! - A reader loops a linearizable `get` of a key drawn from the pool. A key in the pool
//!   was acknowledged, so a read that finds nothing is a lost write and is counted as the
//!   error `MISSING`.
//!
//! Every task runs from the start of the warm-up to the end of the [`Window`]. Only an
//! operation that starts at or after `measure_start` is recorded, and one still in flight
//! at `end` is abandoned and not recorded, so recorded operations lie inside the window.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use cairn_client::DirectClient;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The most keys the pool keeps for readers; past it, new keys replace random old ones.
const KEY_POOL_KEYS_MAX: usize = 1 << 20;

/// How long a reader waits when no key has been written yet.
const EMPTY_POOL_WAIT_MS: u64 = 10;

/// The error name of a read that found no document for an acknowledged key.
pub const MISSING: &str = "MISSING";

/// When recording starts and when every task stops.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub measure_start: Instant,
    pub end: Instant,
}

/// Running totals over warm-up and measurement, for the progress line only.
#[derive(Debug, Default)]
pub struct Progress {
    pub writes: AtomicU64,
    pub reads: AtomicU64,
    pub errors: AtomicU64,
}

/// Keys whose writes were acknowledged, for readers to draw from.
#[derive(Debug, Default)]
pub struct KeyPool {
    keys: Mutex<Vec<Vec<u8>>>,
}

impl KeyPool {
    pub fn add(&self, key: Vec<u8>, rng: &mut impl Rng) {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() < KEY_POOL_KEYS_MAX {
            keys.push(key);
        } else {
            let i = rng.random_range(0..keys.len());
            keys[i] = key;
        }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Option<Vec<u8>> {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.is_empty() {
            return None;
        }
        Some(keys[rng.random_range(0..keys.len())].clone())
    }

    pub fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Errors of one kind of operation: count and first message per error code.
#[derive(Clone, Debug, Default)]
pub struct ErrorTally {
    pub counts: BTreeMap<String, u64>,
    pub examples: BTreeMap<String, String>,
}

impl ErrorTally {
    fn note(&mut self, code: &str, message: impl FnOnce() -> String) {
        *self.counts.entry(code.to_string()).or_default() += 1;
        self.examples.entry(code.to_string()).or_insert_with(message);
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    fn merge(&mut self, other: ErrorTally) {
        for (code, n) in other.counts {
            *self.counts.entry(code).or_default() += n;
        }
        for (code, m) in other.examples {
            self.examples.entry(code).or_insert(m);
        }
    }
}

/// What the tasks recorded inside the measurement window.
#[derive(Debug, Default)]
pub struct Recorded {
    pub write_nanos: Vec<u64>,
    pub read_nanos: Vec<u64>,
    pub write_errors: ErrorTally,
    pub read_errors: ErrorTally,
}

impl Recorded {
    pub fn merge(&mut self, other: Recorded) {
        self.write_nanos.extend(other.write_nanos);
        self.read_nanos.extend(other.read_nanos);
        self.write_errors.merge(other.write_errors);
        self.read_errors.merge(other.read_errors);
    }
}

/// A fresh key: 2 random bytes spread it over the shards; `tag`, `task` and `seq` make
/// it unique within the run.
pub fn bench_key(rng: &mut impl Rng, tag: &str, task: usize, seq: u64) -> Vec<u8> {
    let mut key = rng.random::<u16>().to_be_bytes().to_vec();
    key.extend_from_slice(format!("/bench/{tag}{task}/{seq}").as_bytes());
    key
}

/// A JSON object of exactly `bytes` bytes when `bytes` leaves room for its fields,
/// else the smallest such object.
pub fn json_value(task: usize, seq: u64, bytes: usize) -> Vec<u8> {
    let head = format!(r#"{{"task":{task},"seq":{seq},"pad":""#);
    let tail = "\"}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let mut v = String::with_capacity(head.len() + pad + tail.len());
    v.push_str(&head);
    v.extend(std::iter::repeat_n('x', pad));
    v.push_str(tail);
    v.into_bytes()
}

/// One writer: puts fresh keys until the window ends.
pub async fn writer(
    client: Arc<DirectClient>,
    task: usize,
    value_bytes: usize,
    window: Window,
    pool: Arc<KeyPool>,
    progress: Arc<Progress>,
    seed: u64,
) -> Recorded {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Recorded::default();
    for seq in 0.. {
        let key = bench_key(&mut rng, "w", task, seq);
        let value = json_value(task, seq, value_bytes);
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        let result = tokio::select! {
            r = client.put(&key, &value, None) => r,
            _ = tokio::time::sleep_until(window.end) => break,
        };
        let recorded = started >= window.measure_start;
        match result {
            Ok(_) => {
                progress.writes.fetch_add(1, Ordering::Relaxed);
                if recorded {
                    out.write_nanos.push(started.elapsed().as_nanos() as u64);
                }
                pool.add(key, &mut rng);
            }
            Err(e) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if recorded {
                    out.write_errors.note(e.code().as_str(), || e.to_string());
                }
            }
        }
    }
    out
}

/// One reader: linearizable gets of acknowledged keys until the window ends.
pub async fn reader(
    client: Arc<DirectClient>,
    window: Window,
    pool: Arc<KeyPool>,
    progress: Arc<Progress>,
    seed: u64,
) -> Recorded {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Recorded::default();
    loop {
        let Some(key) = pool.pick(&mut rng) else {
            if Instant::now() + Duration::from_millis(EMPTY_POOL_WAIT_MS) >= window.end {
                break;
            }
            tokio::time::sleep(Duration::from_millis(EMPTY_POOL_WAIT_MS)).await;
            continue;
        };
        let started = Instant::now();
        if started >= window.end {
            break;
        }
        let result = tokio::select! {
            r = client.get(&key) => r,
            _ = tokio::time::sleep_until(window.end) => break,
        };
        let recorded = started >= window.measure_start;
        match result {
            Ok(Some(_)) => {
                progress.reads.fetch_add(1, Ordering::Relaxed);
                if recorded {
                    out.read_nanos.push(started.elapsed().as_nanos() as u64);
                }
            }
            Ok(None) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if recorded {
                    out.read_errors.note(MISSING, || {
                        format!("no document at acknowledged key {}", cairn_proto::display_key(&key))
                    });
                }
            }
            Err(e) => {
                progress.errors.fetch_add(1, Ordering::Relaxed);
                if recorded {
                    out.read_errors.note(e.code().as_str(), || e.to_string());
                }
            }
        }
    }
    out
}

/// Writes `keys` keys with `concurrency` tasks and adds them to the pool, so readers
/// have keys even when the run has no writers. Fails on the first failed write.
pub async fn preload(
    client: Arc<DirectClient>,
    pool: Arc<KeyPool>,
    keys: usize,
    concurrency: usize,
    value_bytes: usize,
    seed: u64,
) -> anyhow::Result<()> {
    let concurrency = concurrency.clamp(1, keys.max(1));
    let tasks = (0..concurrency).map(|task| {
        let (client, pool) = (client.clone(), pool.clone());
        let mine = keys / concurrency + usize::from(task < keys % concurrency);
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_add(task as u64));
            for seq in 0..mine as u64 {
                let key = bench_key(&mut rng, "p", task, seq);
                client.put(&key, &json_value(task, seq, value_bytes), None).await?;
                pool.add(key, &mut rng);
            }
            anyhow::Ok(())
        })
    });
    for joined in futures::future::join_all(tasks).await {
        joined??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_is_json_of_the_asked_size() {
        for bytes in [0, 10, 64, 256, 4096] {
            let v = json_value(3, 17, bytes);
            let parsed: serde_json::Value = serde_json::from_slice(&v).expect("valid JSON");
            assert_eq!(parsed["seq"], 17);
            if bytes >= 40 {
                assert_eq!(v.len(), bytes);
            }
        }
    }

    #[test]
    fn keys_are_unique_and_start_with_two_random_bytes() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = bench_key(&mut rng, "w", 1, 1);
        let b = bench_key(&mut rng, "w", 1, 2);
        assert_ne!(a[2..], b[2..]);
        assert!(a[2..].starts_with(b"/bench/w1/"));
    }
}
