//! The clients that work while the cluster changes: each its own
//! `cairn_client::Client` (its own shard-map watch), putting fresh keys and
//! reading back one of its own acknowledged keys after every put, paced at a
//! fixed rate so the data written stays bounded however long a scenario runs.
//!
//! A failed call is counted and printed to stderr at once; a read that finds an
//! acknowledged key missing or with another value is counted separately (that is
//! a lost write, not an unavailable cluster). Acknowledged keys are kept as
//! sequence numbers: the key and value follow from them ([`super::data`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::Client;

use super::data::{client_key, value_for};
use crate::bench::latency::{LatencySummary, summarize};

/// Errors each client keeps as examples for the report (all are printed live).
const ERROR_EXAMPLES_PER_CLIENT: usize = 5;

#[derive(Clone, Debug)]
pub struct ClientsConfig {
    pub pd: String,
    pub clients: u32,
    /// Put-then-get iterations per second of each client.
    pub rate_per_client: f64,
    pub value_bytes: usize,
    pub run: u64,
}

#[derive(Debug, Default)]
struct Counters {
    puts_ok: AtomicU64,
    puts_failed: AtomicU64,
    gets_ok: AtomicU64,
    gets_failed: AtomicU64,
    /// Reads of an acknowledged key that found it missing or different.
    gets_lost: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> ClientCounts {
        ClientCounts {
            puts_ok: self.puts_ok.load(Ordering::Relaxed),
            puts_failed: self.puts_failed.load(Ordering::Relaxed),
            gets_ok: self.gets_ok.load(Ordering::Relaxed),
            gets_failed: self.gets_failed.load(Ordering::Relaxed),
            gets_lost: self.gets_lost.load(Ordering::Relaxed),
        }
    }
}

/// The counters at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientCounts {
    pub puts_ok: u64,
    pub puts_failed: u64,
    pub gets_ok: u64,
    pub gets_failed: u64,
    pub gets_lost: u64,
}

impl ClientCounts {
    pub fn failed(&self) -> u64 {
        self.puts_failed + self.gets_failed
    }

    /// `put 1520/0 get 1510/0 lost 0` (ok/failed), for progress lines.
    pub fn brief(&self) -> String {
        format!(
            "put {}/{} get {}/{} lost {}",
            self.puts_ok, self.puts_failed, self.gets_ok, self.gets_failed, self.gets_lost
        )
    }
}

struct ClientLog {
    client: u32,
    acked: Vec<u64>,
    put_nanos: Vec<u64>,
    get_nanos: Vec<u64>,
    errors: Vec<String>,
}

/// What the clients did, once stopped.
#[derive(Clone, Debug)]
pub struct ClientsReport {
    pub counts: ClientCounts,
    pub elapsed: Duration,
    /// Per client, the sequence numbers of its acknowledged puts.
    pub acked: Vec<(u32, Vec<u64>)>,
    pub put_latency: Option<LatencySummary>,
    pub get_latency: Option<LatencySummary>,
    pub errors: Vec<String>,
}

impl ClientsReport {
    pub fn acked_keys(&self, run: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
        self.acked.iter().flat_map(move |(c, seqs)| seqs.iter().map(move |s| client_key(run, *c, *s)))
    }

    pub fn acked_count(&self) -> u64 {
        self.acked.iter().map(|(_, s)| s.len() as u64).sum()
    }
}

/// The running clients.
pub struct Clients {
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    tasks: Vec<tokio::task::JoinHandle<ClientLog>>,
    started: Instant,
}

impl Clients {
    /// Connects every client, then starts them.
    pub async fn start(config: ClientsConfig) -> anyhow::Result<Clients> {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let mut tasks = Vec::new();
        for c in 0..config.clients {
            let client = Client::connect(config.pd.as_str()).await.with_context(|| format!("connecting client {c}"))?;
            let (stop, counters, config) = (stop.clone(), counters.clone(), config.clone());
            tasks.push(tokio::spawn(run_client(client, c, config, stop, counters, started)));
        }
        Ok(Clients { stop, counters, tasks, started })
    }

    pub fn counts(&self) -> ClientCounts {
        self.counters.snapshot()
    }

    /// Waits until the clients have acknowledged `puts` writes in all.
    pub async fn warm_up(&self, puts: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.counts().puts_ok < puts {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the clients acknowledged {} of {puts} warm-up writes in {timeout:?} ({})",
                self.counts().puts_ok,
                self.counts().brief()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Stops every client after its current call and collects what they did.
    pub async fn stop(self) -> anyhow::Result<ClientsReport> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        let (mut puts, mut gets, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for task in self.tasks {
            let log = task.await.context("a client task panicked")?;
            acked.push((log.client, log.acked));
            puts.extend(log.put_nanos);
            gets.extend(log.get_nanos);
            errors.extend(log.errors);
        }
        Ok(ClientsReport {
            counts: self.counters.snapshot(),
            elapsed: self.started.elapsed(),
            acked,
            put_latency: summarize(puts),
            get_latency: summarize(gets),
            errors,
        })
    }
}

async fn run_client(
    client: Client,
    c: u32,
    config: ClientsConfig,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    started: Instant,
) -> ClientLog {
    let mut log =
        ClientLog { client: c, acked: Vec::new(), put_nanos: Vec::new(), get_nanos: Vec::new(), errors: Vec::new() };
    let note = |log: &mut ClientLog, message: String| {
        let line = format!("[{:>6.1}s] client {c}: {message}", started.elapsed().as_secs_f64());
        eprintln!("{line}");
        if log.errors.len() < ERROR_EXAMPLES_PER_CLIENT {
            log.errors.push(line);
        }
    };
    let period = Duration::from_secs_f64(1.0 / config.rate_per_client.max(0.01));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        seq += 1;
        let key = client_key(config.run, c, seq);
        let value = value_for(&key, config.value_bytes);
        let at = Instant::now();
        match client.put(&key, &value).await {
            Ok(_) => {
                log.put_nanos.push(at.elapsed().as_nanos() as u64);
                log.acked.push(seq);
                counters.puts_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.puts_failed.fetch_add(1, Ordering::Relaxed);
                note(&mut log, format!("put #{seq} failed after {:.1?}: {e}", at.elapsed()));
            }
        }
        let Some(&pick) = log.acked.get(rand::random_range(0..log.acked.len().max(1))) else {
            continue;
        };
        let key = client_key(config.run, c, pick);
        let at = Instant::now();
        match client.get(&key).await {
            Ok(Some(doc)) if doc.value == value_for(&key, config.value_bytes) => {
                log.get_nanos.push(at.elapsed().as_nanos() as u64);
                counters.gets_ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(found) => {
                counters.gets_lost.fetch_add(1, Ordering::Relaxed);
                let what = if found.is_some() { "another value" } else { "nothing" };
                note(&mut log, format!("get of acknowledged #{pick} found {what}"));
            }
            Err(e) => {
                counters.gets_failed.fetch_add(1, Ordering::Relaxed);
                note(&mut log, format!("get #{pick} failed after {:.1?}: {e}", at.elapsed()));
            }
        }
    }
    client.shutdown().await;
    log
}
