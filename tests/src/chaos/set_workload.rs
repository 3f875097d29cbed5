//! The set-full workload: processes add unique elements, each its own key
//! under `s/<window>/`, and one reader scans the current and the previous
//! window now and then; checked per window by [`super::set_full::check_all`].
//! Windows of [`WINDOW`] elements keep every read, and a long run's memory,
//! bounded. The final reads ([`final_read`]) cover every window once the
//! faults have healed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_client::Client;
use futures::TryStreamExt;

use super::history::{Outcome, Recorder};
use super::register::write_outcome;
use super::set_full::{SetIn, SetOut};

const PREFIX: &str = "s/";
/// Elements per window (set).
pub const WINDOW: u64 = 2_000;
/// Time between two of the reader's scans.
const READ_EVERY: Duration = Duration::from_millis(500);

fn window_prefix(window: u64) -> String {
    format!("{PREFIX}{window:06}/")
}

fn key_of(element: u64) -> String {
    format!("{}{element:010}", window_prefix(element / WINDOW))
}

fn element_of(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key).ok()?.rsplit('/').next()?.parse().ok()
}

/// Runs `adders` adding processes and one reader until `stop`.
pub async fn run(client: Client, adders: usize, recorder: Arc<Recorder<SetIn, SetOut>>, stop: Arc<AtomicBool>) {
    let next = Arc::new(AtomicU64::new(1));
    let mut tasks = Vec::new();
    for p in 0..adders {
        let (client, recorder, stop, next) = (client.clone(), recorder.clone(), stop.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut generation = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let element = next.fetch_add(1, Ordering::Relaxed);
                let process = (p as u64) << 32 | generation;
                let id = recorder.invoke(process, window_prefix(element / WINDOW), SetIn::Add { element });
                match client.put(key_of(element), "{}").await {
                    Ok(version) => recorder.complete(id, Outcome::Ok, Some(SetOut::AddedAt { version })),
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
    let (reader_client, reader_recorder, reader_stop) = (client.clone(), recorder.clone(), stop.clone());
    tasks.push(tokio::spawn(async move {
        while !reader_stop.load(Ordering::Relaxed) {
            let current = next.load(Ordering::Relaxed) / WINDOW;
            for window in current.saturating_sub(1)..=current {
                read(&reader_client, &reader_recorder, u64::MAX >> 1, window).await;
            }
            tokio::time::sleep(READ_EVERY).await;
        }
    }));
    for t in tasks {
        let _ = t.await;
    }
}

/// One recorded read of one window of the set; whether it succeeded.
pub async fn read(client: &Client, recorder: &Recorder<SetIn, SetOut>, process: u64, window: u64) -> bool {
    let prefix = window_prefix(window);
    let id = recorder.invoke(process, &prefix, SetIn::Read);
    let scanned: Result<Vec<u64>, _> =
        client.scan_prefix(&prefix).map_ok(|d| element_of(&d.key).unwrap_or(u64::MAX)).try_collect().await;
    match scanned {
        Ok(elements) => {
            recorder.complete(id, Outcome::Ok, Some(SetOut::Read { elements }));
            true
        }
        Err(_) => {
            recorder.complete(id, Outcome::Fail, None);
            false
        }
    }
}

/// The final reads after healing: every window the history names, each
/// retried until it succeeds, at most `attempts` times.
pub async fn final_read(client: &Client, recorder: &Recorder<SetIn, SetOut>, attempts: usize) -> bool {
    let windows: std::collections::BTreeSet<String> = recorder.history().into_iter().map(|o| o.key).collect();
    let mut all = true;
    for prefix in windows {
        let Some(window) = prefix.trim_end_matches('/').rsplit('/').next().and_then(|w| w.parse().ok()) else {
            continue;
        };
        let mut done = false;
        for _ in 0..attempts {
            if read(client, recorder, u64::MAX, window).await {
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        all &= done;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_elements_round_trip() {
        assert_eq!(element_of(key_of(42).as_bytes()), Some(42));
        assert_eq!(element_of(key_of(4_000_123).as_bytes()), Some(4_000_123));
        assert!(key_of(4_000_123).starts_with(&window_prefix(2_000)));
        assert_eq!(element_of(b"s/x"), None);
        // Keys sort like their elements, so a scan returns them in order.
        assert!(key_of(9) < key_of(10));
    }
}
