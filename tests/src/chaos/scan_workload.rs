//! The scan workload: processes insert unique keys spread over a key range of
//! their own that crosses shard boundaries, and delete some of their own keys
//! again (each keeps at most [`LIVE_MAX`] alive, so scans stay bounded in a
//! long run), while a scanner scans the whole range; checked by
//! [`super::scan::check`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_client::Client;
use cairn_proto::KeyRange;
use futures::TryStreamExt;
use rand::{Rng, SeedableRng};

use super::history::{Outcome, Recorder};
use super::register::write_outcome;
use super::scan::{ScanIn, ScanOut};

/// Marks the workload's keys.
const MARK: &str = "/c/";
const SCAN_EVERY: Duration = Duration::from_millis(300);
/// First characters of the keys: digits (below 0x40) and capitals from 'A'
/// (above it), so the range crosses the boundary of the first two initial
/// shards; nothing else in a chaos run has keys in `["0", "K")`.
const SPREAD: &[u8; 20] = b"0123456789ABCDEFGHIJ";
const RANGE_START: &[u8] = b"0";
const RANGE_END: &[u8] = b"K";
/// Keys a process keeps alive at most; past it, it deletes.
pub const LIVE_MAX: usize = 250;

/// Key `n`: a spread first character, then the mark and the number.
fn key_of(n: u64) -> String {
    let spread = SPREAD[(n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 59) as usize % SPREAD.len()] as char;
    format!("{spread}{MARK}{n:010}")
}

pub async fn run(
    client: Client,
    processes: usize,
    seed: u64,
    recorder: Arc<Recorder<ScanIn, ScanOut>>,
    stop: Arc<AtomicBool>,
) {
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for p in 0..processes {
        let (client, recorder, stop, next) = (client.clone(), recorder.clone(), stop.clone(), next.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(7_919).wrapping_add(p as u64));
        tasks.push(tokio::spawn(async move {
            let mut generation = 0u64;
            // This process's acknowledged keys not deleted yet.
            let mut live: Vec<String> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let process = (p as u64) << 32 | generation;
                let delete = live.len() >= LIVE_MAX || (!live.is_empty() && rng.random_bool(0.3));
                let (key, input) = if delete {
                    (live.swap_remove(rng.random_range(0..live.len())), ScanIn::Delete)
                } else {
                    (key_of(next.fetch_add(1, Ordering::Relaxed)), ScanIn::Insert)
                };
                let id = recorder.invoke(process, &key, input);
                let result = match input {
                    ScanIn::Delete => client.delete(&key).await.map(|_| ()),
                    _ => client.put(&key, "{}").await.map(|_| ()),
                };
                match result {
                    Ok(()) => {
                        recorder.complete(id, Outcome::Ok, Some(ScanOut::Done));
                        if input == ScanIn::Insert {
                            live.push(key);
                        }
                    }
                    Err(e) => {
                        let outcome = write_outcome(&e);
                        recorder.complete(id, outcome, None);
                        if outcome == Outcome::Unknown {
                            generation += 1;
                        }
                    }
                }
            }
        }));
    }
    let (scan_client, scan_recorder, scan_stop) = (client.clone(), recorder.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        while !scan_stop.load(Ordering::Relaxed) {
            scan(&scan_client, &scan_recorder).await;
            tokio::time::sleep(SCAN_EVERY).await;
        }
    }));
    for t in tasks {
        let _ = t.await;
    }
}

/// One recorded scan of the workload's whole range; whether it succeeded.
pub async fn scan(client: &Client, recorder: &Recorder<ScanIn, ScanOut>) -> bool {
    let id = recorder.invoke(u64::MAX >> 1, MARK, ScanIn::Scan);
    let scanned: Result<Vec<String>, _> = client
        .scan(KeyRange { start: RANGE_START.to_vec(), end: RANGE_END.to_vec() })
        .try_filter_map(|d| async move {
            let key = String::from_utf8_lossy(&d.key).into_owned();
            Ok(key.contains(MARK).then_some(key))
        })
        .try_collect()
        .await;
    match scanned {
        Ok(keys) => {
            recorder.complete(id, Outcome::Ok, Some(ScanOut::Keys { keys }));
            true
        }
        Err(_) => {
            recorder.complete(id, Outcome::Fail, None);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spread_and_stay_unique() {
        let keys: std::collections::BTreeSet<String> = (0..1000).map(key_of).collect();
        assert_eq!(keys.len(), 1000);
        let firsts: std::collections::BTreeSet<u8> = keys.iter().map(|k| k.as_bytes()[0]).collect();
        assert_eq!(firsts.len(), SPREAD.len(), "every first character used");
        assert!(firsts.iter().any(|b| *b < 0x40) && firsts.iter().any(|b| *b > 0x40), "both sides of 0x40");
        assert!(keys.iter().all(|k| k.contains(MARK) && k.as_bytes() >= RANGE_START && k.as_bytes() < RANGE_END));
    }
}
