//! The register workload: processes read, write and compare-and-set a few
//! keys through a routed [`Client`], every write a value unique in the run,
//! and record each operation in a [`Recorder`] for [`super::linear::check`].
//! A compare-and-set is a read followed by `put_if_version` with the version
//! read (version <-> value is a bijection, every write being a new version).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cairn_client::{Client, Error};
use rand::{Rng, SeedableRng};

use super::history::{Outcome, Recorder};
use super::linear::{RegIn, RegOut};

/// The outcome of a write that returned `err`: `fail` only where the client
/// guarantees nothing was applied (a refusal before proposing, or a failed
/// condition, which is itself the result of applying); anything else may have
/// been applied.
pub fn write_outcome(err: &Error) -> Outcome {
    match err {
        Error::ConditionFailed { .. } | Error::InvalidArgument(_) | Error::TooLarge(_) | Error::Json { .. } => {
            Outcome::Fail
        }
        _ => Outcome::Unknown,
    }
}

/// The key `k` of window `window`: processes work on `keys` keys at a time
/// and move to fresh ones after about `ops_per_key` operations each, so a
/// long run keeps every key's history small enough to check (Jepsen's
/// independent keys).
fn key_name(window: u64, k: usize) -> String {
    format!("r/{window:06}/{k:03}")
}

fn encode(value: u64) -> String {
    format!(r#"{{"v":{value}}}"#)
}

/// The value a register document holds.
pub fn decode_value(bytes: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(bytes).ok()?.get("v")?.as_u64()
}

#[derive(Clone, Debug)]
pub struct RegisterWorkload {
    /// Keys worked on at a time.
    pub keys: usize,
    pub processes: usize,
    pub seed: u64,
    /// Operations per key before the processes move to fresh keys.
    pub ops_per_key: u64,
}

/// Runs the workload until `stop`; returns when every process has finished
/// its operation in hand.
pub async fn run(
    client: Client,
    workload: RegisterWorkload,
    recorder: Arc<Recorder<RegIn, RegOut>>,
    stop: Arc<AtomicBool>,
) {
    let values = Arc::new(AtomicU64::new(1));
    let ops = Arc::new(AtomicU64::new(0));
    let window_ops = (workload.keys as u64 * workload.ops_per_key).max(1);
    let mut tasks = Vec::new();
    for p in 0..workload.processes {
        let (client, recorder, stop, values, ops) =
            (client.clone(), recorder.clone(), stop.clone(), values.clone(), ops.clone());
        let keys = workload.keys;
        let mut rng = rand::rngs::StdRng::seed_from_u64(workload.seed.wrapping_mul(1_000_003).wrapping_add(p as u64));
        tasks.push(tokio::spawn(async move {
            // A process whose operation ended unknown is retired: the next one
            // takes a new id, so a process never has two operations open.
            let mut generation = 0u64;
            let process = |generation: u64| (p as u64) << 32 | generation;
            while !stop.load(Ordering::Relaxed) {
                let window = ops.fetch_add(1, Ordering::Relaxed) / window_ops;
                let key = key_name(window, rng.random_range(0..keys));
                match rng.random_range(0..3) {
                    0 => {
                        read(&client, &recorder, process(generation), &key).await;
                    }
                    1 => {
                        let value = values.fetch_add(1, Ordering::Relaxed);
                        let id = recorder.invoke(process(generation), &key, RegIn::Write { value });
                        match client.put(&key, encode(value)).await {
                            Ok(version) => recorder.complete(id, Outcome::Ok, Some(RegOut::Written { version })),
                            Err(e) => {
                                let outcome = write_outcome(&e);
                                recorder.complete(id, outcome, None);
                                if outcome == Outcome::Unknown {
                                    generation += 1;
                                }
                            }
                        }
                    }
                    _ => {
                        // Read, then replace what was read.
                        let Some((Some(from), version)) = read(&client, &recorder, process(generation), &key).await
                        else {
                            continue;
                        };
                        let to = values.fetch_add(1, Ordering::Relaxed);
                        let id = recorder.invoke(process(generation), &key, RegIn::Cas { from, to });
                        match client.put_if_version(&key, encode(to), version).await {
                            Ok(version) => recorder.complete(id, Outcome::Ok, Some(RegOut::Written { version })),
                            Err(e) => {
                                let outcome = write_outcome(&e);
                                recorder.complete(id, outcome, None);
                                if outcome == Outcome::Unknown {
                                    generation += 1;
                                }
                            }
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A recorded read; its value (none: absent) and version when it succeeded.
async fn read(
    client: &Client,
    recorder: &Recorder<RegIn, RegOut>,
    process: u64,
    key: &str,
) -> Option<(Option<u64>, u64)> {
    let id = recorder.invoke(process, key, RegIn::Read);
    match client.get(key).await {
        Ok(doc) => {
            let (value, version) = match doc {
                Some(d) => (decode_value(&d.value), d.version),
                None => (None, 0),
            };
            recorder.complete(id, Outcome::Ok, Some(RegOut::Read { value, version }));
            Some((value, version))
        }
        Err(_) => {
            // A read has no effect: a failed one is simply not counted.
            recorder.complete(id, Outcome::Fail, None);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_failed_conditions_are_certain_failures() {
        assert_eq!(write_outcome(&Error::ConditionFailed { current_version: 3 }), Outcome::Fail);
        assert_eq!(write_outcome(&Error::InvalidArgument("x".into())), Outcome::Fail);
        assert_eq!(write_outcome(&Error::TooLarge("x".into())), Outcome::Fail);
        assert_eq!(write_outcome(&Error::Unavailable("x".into())), Outcome::Unknown);
        assert_eq!(write_outcome(&Error::DeadlineExceeded("x".into())), Outcome::Unknown);
        assert_eq!(write_outcome(&Error::Internal("x".into())), Outcome::Unknown);
    }

    #[test]
    fn values_round_trip() {
        assert_eq!(decode_value(encode(42).as_bytes()), Some(42));
        assert_eq!(decode_value(b"{}"), None);
    }
}
