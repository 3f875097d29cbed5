//! Process-level tests: three real `cairn-test-node` processes on loopback.
//!
//! - `sigkill_leader_loses_no_acknowledged_write`: many concurrent writers go on
//!   while the node leading the most shards is SIGKILLed; after it restarts and
//!   catches up, every replica on every node holds each key's last acknowledged
//!   write (or a later write whose outcome the client never learned).
//! - `sigterm_restart_all_keeps_data`: SIGTERM stops every node cleanly (exit
//!   status 0), and a full restart on the same data directories keeps every
//!   document at its version.
//!
//! Keys start with two random bytes, because the static bootstrap cuts the key
//! space evenly on the first two bytes: so the writes spread over every shard.
//! The randomness comes from a seed printed at the start; set
//! `CAIRN_TEST_SEED` to replay the same keys and write plan.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::{ClientConfig, NodeClient};
use cairn_proto::{ApiError, Document, NodeId, Route, ShardId, ShardStatus, display_key};
use cairn_tests::wait_until;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const NODES: usize = 3;
const SHARDS: u32 = 8;

/// Deadline of each node's exit after SIGTERM.
const SIGTERM_EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Logs of this test process (the client's retries, for one) go to stderr when
/// `CAIRN_TEST_LOG` holds a filter, e.g. `CAIRN_TEST_LOG=cairn_client=debug`.
fn init_test_logging() {
    if let Ok(filter) = std::env::var("CAIRN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn test_seed() -> u64 {
    init_test_logging();
    let seed = match std::env::var("CAIRN_TEST_SEED") {
        Ok(s) => s.parse().expect("CAIRN_TEST_SEED must be a u64"),
        Err(_) => rand::random(),
    };
    println!("seed: {seed} (replay with CAIRN_TEST_SEED={seed})");
    seed
}

/// Two uniformly random bytes, then `/doc-{i}`: unique, and spread over every shard.
fn doc_key(rng: &mut StdRng, i: usize) -> Vec<u8> {
    let mut key = vec![rng.random::<u8>(), rng.random::<u8>()];
    key.extend_from_slice(format!("/doc-{i}").as_bytes());
    key
}

fn doc_value(i: usize, round: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({ "i": i, "round": round })).expect("a JSON literal serialises")
}

/// The `(i, round)` a stored value was written as, if it is one of ours.
fn parse_value(value: &[u8]) -> Option<(usize, u32)> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let i = usize::try_from(v.get("i")?.as_u64()?).ok()?;
    let round = u32::try_from(v.get("round")?.as_u64()?).ok()?;
    Some((i, round))
}

/// The route of `key` by one node's own shard list.
fn route_for(shards: &[ShardStatus], key: &[u8]) -> Option<Route> {
    shards
        .iter()
        .find(|s| s.descriptor.range.contains(key))
        .map(|s| Route { shard: s.descriptor.id, epoch: s.descriptor.epoch })
}

/// One put of a document, in the order its writer issued them.
#[derive(Clone, Debug)]
struct Attempt {
    round: u32,
    /// The acknowledged version, or the error after which the outcome is unknown.
    outcome: Result<u64, ApiError>,
}

/// What the writers did to one document.
#[derive(Clone, Debug, Default)]
struct History {
    attempts: Vec<Attempt>,
}

impl History {
    /// Position and version of the last acknowledged write.
    fn last_ack(&self) -> Option<(usize, u64)> {
        self.attempts.iter().enumerate().rev().find_map(|(p, a)| a.outcome.as_ref().ok().map(|v| (p, *v)))
    }
}

/// Why a replica's copy of a document is not acceptable.
// The fields are read through `Debug`, in the failure report.
#[allow(dead_code)]
#[derive(Debug)]
enum Violation {
    /// No copy, though a write of it was acknowledged.
    Lost { acked_round: u32, acked_version: u64 },
    /// A copy that is not a value the writers wrote to this key.
    Foreign { value: String, version: u64 },
    /// The acknowledged value, but at another version than the acknowledgement said.
    WrongVersion { round: u32, acked_version: u64, version: u64 },
    /// An older value than the last acknowledged one: an acknowledged write was
    /// lost or overwritten by an earlier one.
    Older { round: u32, version: u64, acked_round: u32, acked_version: u64 },
    /// The value of a write whose outcome is unknown, at a version not after the
    /// last acknowledged write.
    UnknownNotAfterAck { round: u32, version: u64, acked_version: u64 },
}

/// How an acceptable copy came to be.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    LastAck,
    /// Nothing acknowledged and nothing stored.
    NeverWritten,
    /// A write after the last acknowledged one (or, with none acknowledged, any
    /// write) whose outcome the client never learned took effect.
    UnknownTookEffect,
}

/// Checks one replica's copy of document `i` against its history.
fn check_doc(i: usize, history: &History, found: Option<&Document>) -> Result<Verdict, Violation> {
    let ack = history.last_ack();
    let Some(doc) = found else {
        return match ack {
            None => Ok(Verdict::NeverWritten),
            Some((p, v)) => Err(Violation::Lost { acked_round: history.attempts[p].round, acked_version: v }),
        };
    };
    let foreign =
        || Violation::Foreign { value: String::from_utf8_lossy(&doc.value).into_owned(), version: doc.version };
    let Some((di, round)) = parse_value(&doc.value) else {
        return Err(foreign());
    };
    let Some(pos) = history.attempts.iter().position(|a| a.round == round) else {
        return Err(foreign());
    };
    if di != i {
        return Err(foreign());
    }
    match (ack, &history.attempts[pos].outcome) {
        (Some((p, acked_version)), _) if p == pos => {
            if doc.version == acked_version {
                Ok(Verdict::LastAck)
            } else {
                Err(Violation::WrongVersion { round, acked_version, version: doc.version })
            }
        }
        (Some((p, acked_version)), _) if pos < p => Err(if history.attempts[pos].outcome.is_ok() {
            Violation::Older { round, version: doc.version, acked_round: history.attempts[p].round, acked_version }
        } else {
            // An abandoned write that took effect after a later write was acknowledged.
            Violation::UnknownNotAfterAck { round, version: doc.version, acked_version }
        }),
        (Some((_, acked_version)), Err(_)) => {
            if doc.version > acked_version {
                Ok(Verdict::UnknownTookEffect)
            } else {
                Err(Violation::UnknownNotAfterAck { round, version: doc.version, acked_version })
            }
        }
        (None, Err(_)) => Ok(Verdict::UnknownTookEffect),
        // An acknowledged write after the last acknowledged one cannot exist.
        (_, Ok(_)) => unreachable!("the last acknowledged write is the last Ok attempt"),
    }
}

/// A one-word name of an error, for counting.
fn error_kind(e: &ApiError) -> &'static str {
    e.code().as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_leader_loses_no_acknowledged_write() -> anyhow::Result<()> {
    const DOCS: usize = 10_000;
    const WRITERS: usize = 32;
    const KILL_AFTER_ACKED: usize = 3_000;
    let test_started = Instant::now();
    let seed = test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let plan: Arc<Vec<(Vec<u8>, u32)>> =
        Arc::new((0..DOCS).map(|i| (doc_key(&mut rng, i), rng.random_range(1..=3))).collect());
    let writes_planned: u32 = plan.iter().map(|(_, rounds)| rounds).sum();

    let mut cluster = common::start(NODES, SHARDS).await?;
    println!("cluster up in {:?}; data in {}", test_started.elapsed(), cluster.dir().display());

    // Writers: each takes the next document and writes all its rounds in order.
    let client = Arc::new(cluster.client(ClientConfig::default())?);
    let next_doc = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(AtomicUsize::new(0));
    let max_latency_ms = Arc::new(AtomicU64::new(0));
    let writing_started = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let (client, plan, next_doc, acked, max_latency_ms) =
                (client.clone(), plan.clone(), next_doc.clone(), acked.clone(), max_latency_ms.clone());
            tokio::spawn(async move {
                let mut done: Vec<(usize, History)> = Vec::new();
                loop {
                    let i = next_doc.fetch_add(1, Ordering::Relaxed);
                    let Some((key, rounds)) = plan.get(i) else {
                        break;
                    };
                    let mut history = History::default();
                    for round in 1..=*rounds {
                        let started = Instant::now();
                        let outcome = client.put(key, &doc_value(i, round), None).await;
                        max_latency_ms.fetch_max(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                        if outcome.is_ok() {
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        history.attempts.push(Attempt { round, outcome });
                    }
                    done.push((i, history));
                }
                done
            })
        })
        .collect();

    // Part-way through, SIGKILL the node that leads the most shards.
    wait_until("3000 acknowledged writes", Duration::from_secs(60), || {
        let n = acked.load(Ordering::Relaxed);
        async move { (n >= KILL_AFTER_ACKED).then_some(()) }
    })
    .await?;
    let (victim, led) = cluster.busiest_leader().await?;
    let victim_id = cluster.nodes[victim].id;
    let acked_at_kill = acked.load(Ordering::Relaxed);
    cluster.kill(victim)?;
    let killed_at = Instant::now();
    println!(
        "SIGKILLed node {victim_id} (leader of {led}/{SHARDS} shards) after {acked_at_kill} acknowledged writes, {:?} into writing",
        writing_started.elapsed()
    );

    // The writers go on through the failover until every document is done.
    let mut histories: BTreeMap<usize, History> = BTreeMap::new();
    let joined = tokio::time::timeout(Duration::from_secs(90), futures::future::join_all(writers))
        .await
        .context("the writers did not finish within 90 s")?;
    for done in joined {
        histories.extend(done.context("a writer task panicked")?);
    }
    let writing_took = writing_started.elapsed();
    anyhow::ensure!(histories.len() == DOCS, "{} of {DOCS} documents have a history", histories.len());
    let attempts: Vec<&Attempt> = histories.values().flat_map(|h| &h.attempts).collect();
    let acked_total = attempts.iter().filter(|a| a.outcome.is_ok()).count();
    let mut errors_by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, h) in &histories {
        for a in &h.attempts {
            if let Err(e) = &a.outcome {
                let n = errors_by_kind.entry(error_kind(e)).or_default();
                *n += 1;
                if *n <= 5 {
                    println!("unknown outcome: document {i} ({}) round {}: {e}", display_key(&plan[*i].0), a.round);
                }
            }
        }
    }
    println!(
        "writing done in {writing_took:?} ({:?} after the kill): {} writes, {acked_total} acknowledged ({} after the kill), \
         unknown outcomes {errors_by_kind:?}, slowest write {} ms",
        killed_at.elapsed(),
        attempts.len(),
        acked_total - acked_at_kill.min(acked_total),
        max_latency_ms.load(Ordering::Relaxed)
    );
    anyhow::ensure!(attempts.len() == writes_planned as usize);
    anyhow::ensure!(acked_total > acked_at_kill, "no write was acknowledged after the kill");
    // A later acknowledged write of a key must have a later version (log index).
    for (i, h) in &histories {
        let versions: Vec<u64> = h.attempts.iter().filter_map(|a| a.outcome.as_ref().ok().copied()).collect();
        anyhow::ensure!(
            versions.windows(2).all(|w| w[0] < w[1]),
            "document {i} ({}): acknowledged versions do not increase: {:?}",
            display_key(&plan[*i].0),
            h.attempts
        );
    }

    // The leaders' applied indexes once writing finished: every replica must reach them.
    // A new leader may not have applied all it committed yet, so the highest
    // acknowledged version (a log index) of each shard is a floor as well.
    let ids = cluster.ids();
    let (leaders, lists) = cluster
        .wait_for_listing("a leader of every shard after writing", Duration::from_secs(30), |lists| {
            common::agreed_leaders(SHARDS, &ids, lists).map(|leaders| (leaders, lists.clone()))
        })
        .await?;
    let mut target: BTreeMap<ShardId, u64> = leaders
        .iter()
        .map(|(shard, &l)| {
            let status = lists[&l].iter().find(|s| s.descriptor.id == *shard).expect("the leader lists its shard");
            (*shard, status.applied_index)
        })
        .collect();
    println!("leaders' applied indexes after writing: {target:?}");
    let any_list = lists.values().next().expect("a node is running");
    for (i, h) in &histories {
        let Some((_, version)) = h.last_ack() else { continue };
        let route = route_for(any_list, &plan[*i].0).context("a shard for every key")?;
        let t = target.entry(route.shard).or_default();
        *t = (*t).max(version);
    }

    cluster.spawn(victim)?;
    let restarted_at = Instant::now();
    let caught_up = cluster
        .wait_for_listing("every replica on every node to catch up", Duration::from_secs(60), |lists| {
            let all = lists.len() == NODES
                && lists.values().all(|shards| {
                    shards.len() == SHARDS as usize
                        && shards.iter().all(|s| target.get(&s.descriptor.id).is_some_and(|&t| s.applied_index >= t))
                });
            all.then(|| lists.clone())
        })
        .await?;
    println!("node {victim_id} restarted; all replicas caught up {:?} after the restart", restarted_at.elapsed());

    // Read every key from every node's own replica, without a leader check.
    let reading_started = Instant::now();
    let read_config = ClientConfig { request_timeout: Duration::from_secs(10), ..ClientConfig::default() };
    let mut reads = Vec::new();
    for (&n, shards) in &caught_up {
        let node = NodeClient::new(&cluster.addr(n), &read_config)?;
        for (i, (key, _)) in plan.iter().enumerate() {
            let route =
                route_for(shards, key).with_context(|| format!("node {n} lists no shard for {}", display_key(key)))?;
            reads.push((n, i, route, key.clone(), node.clone()));
        }
    }
    let observed: Vec<(usize, usize, Result<Option<Document>, ApiError>)> = futures::stream::iter(reads)
        .map(|(n, i, route, key, node)| async move { (n, i, node.get(route, &key, true).await) })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut per_doc: BTreeMap<usize, BTreeMap<NodeId, Option<Document>>> = BTreeMap::new();
    let mut read_errors = Vec::new();
    for (n, i, result) in observed {
        match result {
            Ok(doc) => {
                per_doc.entry(i).or_default().insert(cluster.nodes[n].id, doc);
            }
            Err(e) => read_errors.push(format!("node {} key {}: {e}", cluster.nodes[n].id, display_key(&plan[i].0))),
        }
    }
    println!("read {} copies in {:?}", NODES * DOCS, reading_started.elapsed());

    let mut violations = Vec::new();
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    let mut diverged = Vec::new();
    for (i, copies) in &per_doc {
        let history = &histories[i];
        for (node, doc) in copies {
            match check_doc(*i, history, doc.as_ref()) {
                Ok(v) => *verdicts.entry(format!("{v:?}")).or_default() += 1,
                Err(v) => violations.push(format!(
                    "document {i} key {} on node {node}: {v:?}; history {:?}",
                    display_key(&plan[*i].0),
                    history.attempts
                )),
            }
        }
        let first = copies.values().next();
        if copies.values().any(|d| Some(d) != first) {
            diverged.push(format!("document {i} key {}: replicas differ: {copies:?}", display_key(&plan[*i].0)));
        }
    }
    println!("copies checked per verdict: {verdicts:?}");
    for list in [&read_errors, &violations, &diverged] {
        for line in list.iter().take(20) {
            println!("  {line}");
        }
    }
    anyhow::ensure!(read_errors.is_empty(), "{} stale reads failed", read_errors.len());
    anyhow::ensure!(violations.is_empty(), "{} copies violate the acknowledged history", violations.len());
    anyhow::ensure!(diverged.is_empty(), "{} documents differ between replicas", diverged.len());

    let stopping = Instant::now();
    for (node, status) in cluster.terminate_all(SIGTERM_EXIT_TIMEOUT).await? {
        anyhow::ensure!(status.success(), "node {node} exited with {status} after SIGTERM");
    }
    println!("all nodes exited 0 after SIGTERM in {:?}; test took {:?}", stopping.elapsed(), test_started.elapsed());
    cluster.finish();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_restart_all_keeps_data() -> anyhow::Result<()> {
    const DOCS: usize = 500;
    let test_started = Instant::now();
    let seed = test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let keys: Vec<Vec<u8>> = (0..DOCS).map(|i| doc_key(&mut rng, i)).collect();

    let mut cluster = common::start(NODES, SHARDS).await?;
    let client = cluster.client(ClientConfig::default())?;
    let written: Vec<Result<u64, ApiError>> = futures::stream::iter(keys.iter().enumerate())
        .map(|(i, key)| {
            let client = &client;
            async move { client.put(key, &doc_value(i, 1), None).await }
        })
        .buffered(16)
        .collect()
        .await;
    // Nothing fails in this test, so every write must be acknowledged.
    let versions: Vec<u64> = written
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.with_context(|| format!("writing document {i} ({})", display_key(&keys[i]))))
        .collect::<anyhow::Result<_>>()?;
    drop(client);
    println!("wrote {DOCS} documents {:?} into the test", test_started.elapsed());

    let stopping = Instant::now();
    for (node, status) in cluster.terminate_all(SIGTERM_EXIT_TIMEOUT).await? {
        anyhow::ensure!(status.success(), "node {node} exited with {status} after SIGTERM");
    }
    println!("all nodes exited 0 after SIGTERM in {:?}", stopping.elapsed());

    let restarting = Instant::now();
    for i in 0..NODES {
        cluster.spawn(i)?;
    }
    cluster.wait_for_leaders(Duration::from_secs(30)).await?;
    println!("restarted; every shard has a leader after {:?}", restarting.elapsed());

    let client = cluster.client(ClientConfig::default())?;
    let read: Vec<Result<Option<Document>, ApiError>> =
        futures::stream::iter(keys.iter()).map(|key| client.get(key)).buffered(16).collect().await;
    let mut wrong = Vec::new();
    for (i, r) in read.into_iter().enumerate() {
        let key = display_key(&keys[i]);
        match r {
            Ok(Some(doc)) if parse_value(&doc.value) == Some((i, 1)) && doc.version == versions[i] => {}
            Ok(Some(doc)) => wrong.push(format!(
                "document {i} ({key}): {} at version {}, written at version {}",
                String::from_utf8_lossy(&doc.value),
                doc.version,
                versions[i]
            )),
            Ok(None) => wrong.push(format!("document {i} ({key}): lost (written at version {})", versions[i])),
            Err(e) => wrong.push(format!("document {i} ({key}): read failed: {e}")),
        }
    }
    for line in wrong.iter().take(20) {
        println!("  {line}");
    }
    anyhow::ensure!(wrong.is_empty(), "{} of {DOCS} documents did not survive the restart", wrong.len());
    println!("all {DOCS} documents read back at their versions");

    drop(client);
    for (node, status) in cluster.terminate_all(SIGTERM_EXIT_TIMEOUT).await? {
        anyhow::ensure!(status.success(), "node {node} exited with {status} after the second SIGTERM");
    }
    println!("test took {:?}", test_started.elapsed());
    cluster.finish();
    Ok(())
}

/// The history checker itself: it must reject every way a copy can be wrong,
/// since the cluster tests above rarely produce unknown outcomes.
#[test]
fn history_checker_accepts_only_allowed_copies() {
    let ok = |round, v| Attempt { round, outcome: Ok(v) };
    let unknown = |round| Attempt { round, outcome: Err(ApiError::Unavailable("killed".into())) };
    let doc = |round, version| Document {
        key: b"k".to_vec(),
        value: doc_value(7, round),
        version,
        created_at_ms: 0,
        updated_at_ms: 0,
    };
    let history = |attempts| History { attempts };

    // The last acknowledged write, at its version.
    let h = history(vec![ok(1, 10), ok(2, 20)]);
    assert_eq!(check_doc(7, &h, Some(&doc(2, 20))).unwrap(), Verdict::LastAck);
    assert!(matches!(check_doc(7, &h, Some(&doc(2, 21))), Err(Violation::WrongVersion { .. })));
    assert!(matches!(check_doc(7, &h, Some(&doc(1, 10))), Err(Violation::Older { .. })));
    assert!(matches!(check_doc(7, &h, None), Err(Violation::Lost { .. })));
    // Another document's value, or a round never written.
    assert!(matches!(check_doc(8, &h, Some(&doc(2, 20))), Err(Violation::Foreign { .. })));
    assert!(matches!(check_doc(7, &h, Some(&doc(3, 30))), Err(Violation::Foreign { .. })));

    // A later write with an unknown outcome may or may not have taken effect.
    let h = history(vec![ok(1, 10), unknown(2), unknown(3)]);
    assert_eq!(check_doc(7, &h, Some(&doc(1, 10))).unwrap(), Verdict::LastAck);
    assert_eq!(check_doc(7, &h, Some(&doc(3, 30))).unwrap(), Verdict::UnknownTookEffect);
    assert!(matches!(check_doc(7, &h, Some(&doc(2, 9))), Err(Violation::UnknownNotAfterAck { .. })));

    // An abandoned write must not take effect after a later acknowledged one.
    let h = history(vec![unknown(1), ok(2, 20)]);
    assert!(matches!(check_doc(7, &h, Some(&doc(1, 25))), Err(Violation::UnknownNotAfterAck { .. })));

    // Nothing acknowledged: absent, or any of the unknown writes.
    let h = history(vec![unknown(1)]);
    assert_eq!(check_doc(7, &h, None).unwrap(), Verdict::NeverWritten);
    assert_eq!(check_doc(7, &h, Some(&doc(1, 5))).unwrap(), Verdict::UnknownTookEffect);
}
