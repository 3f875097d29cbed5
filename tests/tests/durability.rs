//! Acceptance: 3 in-process nodes hosting 8 shards; 32 tasks write 10 000
//! documents spread over every shard; the node leading most shards is dropped
//! without shutdown; writing goes on; the node is restarted from its data
//! directory; every acknowledged document reads back at its last acknowledged
//! version from every replica once caught up.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_proto::{Route, ShardId};
use cairn_tests::{TestCluster, wait_until};
use rand::Rng;

const DOCS: usize = 10_000;
const TASKS: usize = 32;
const CRASH_AFTER_ACKS: u64 = 3_000;

/// What the writers know of one key: the last acknowledged write and the
/// writes after it whose outcome is unknown (they may or may not have applied).
#[derive(Default, Clone, Debug)]
struct KeyHistory {
    acked: Option<(String, u64)>,
    unknown_after: Vec<String>,
}

fn doc_key(i: usize) -> Vec<u8> {
    // Two random leading bytes spread the documents over all shards, whose
    // ranges cut the key space evenly on the first two bytes.
    let mut rng = rand::rng();
    let mut key = vec![rng.random::<u8>(), rng.random::<u8>()];
    key.extend_from_slice(format!("/doc-{i}").as_bytes());
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_crash_and_restart_lose_no_acknowledged_write() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let mut cluster = TestCluster::start(3, 8).await?;
    let client = Arc::new(cluster.client()?);
    let history: Arc<Mutex<HashMap<Vec<u8>, KeyHistory>>> = Arc::default();
    let acks = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));

    let keys: Arc<Vec<Vec<u8>>> = Arc::new((0..DOCS).map(doc_key).collect());
    let shards_hit: std::collections::BTreeSet<ShardId> = {
        let shards = client.shards().await?;
        keys.iter()
            .filter_map(|k| shards.iter().find(|s| s.descriptor.range.contains(k)).map(|s| s.descriptor.id))
            .collect()
    };
    assert_eq!(shards_hit.len(), 8, "the documents must cover every shard");

    let mut writers = Vec::new();
    for t in 0..TASKS {
        let (client, history, acks, failures, keys) =
            (client.clone(), history.clone(), acks.clone(), failures.clone(), keys.clone());
        writers.push(tokio::spawn(async move {
            for i in (t..DOCS).step_by(TASKS) {
                let key = &keys[i];
                for round in 0..=(i % 3) {
                    let value = format!("{{\"i\":{i},\"round\":{round}}}");
                    let result = client.put(key, value.as_bytes(), None).await;
                    let mut h = history.lock().unwrap();
                    let entry = h.entry(key.clone()).or_default();
                    match result {
                        Ok(version) => {
                            entry.acked = Some((value, version));
                            entry.unknown_after.clear();
                            acks.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "write failed; outcome unknown");
                            entry.unknown_after.push(value);
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }));
    }

    wait_until("the first acknowledged writes", Duration::from_secs(120), || async {
        (acks.load(Ordering::Relaxed) >= CRASH_AFTER_ACKS).then_some(())
    })
    .await?;
    let victim = cluster.busiest_leader().expect("a leader");
    let led = cluster.leaders().values().filter(|n| n.0 == victim as u64 + 1).count();
    let acks_at_crash = acks.load(Ordering::Relaxed);
    eprintln!("crashing node {} (leads {led} of 8 shards) after {acks_at_crash} acknowledged writes", victim + 1);
    cluster.crash(victim).await;

    // Writing goes on without the crashed node.
    wait_until("writes to continue after the crash", Duration::from_secs(60), || async {
        (acks.load(Ordering::Relaxed) >= acks_at_crash + 1_000).then_some(())
    })
    .await?;
    for w in writers {
        w.await?;
    }
    let total_acks = acks.load(Ordering::Relaxed);
    eprintln!("{total_acks} writes acknowledged, {} failed", failures.load(Ordering::Relaxed));

    cluster.restart(victim).await?;
    cluster.wait_for_leaders(Duration::from_secs(30)).await?;

    // Every replica catches up with what its leader had applied.
    let targets: BTreeMap<ShardId, u64> = {
        let mut t = BTreeMap::new();
        for n in cluster.running() {
            for s in n.shared.shard_statuses() {
                let e = t.entry(s.descriptor.id).or_insert(0);
                *e = (*e).max(s.applied_index);
            }
        }
        t
    };
    wait_until("every replica to catch up", Duration::from_secs(60), || async {
        cluster
            .running()
            .all(|n| n.shared.shard_statuses().iter().all(|s| s.applied_index >= targets[&s.descriptor.id]))
            .then_some(())
    })
    .await?;

    let history = history.lock().unwrap().clone();
    assert_eq!(history.len(), DOCS);
    let mut checked = 0;
    for i in 0..cluster.len() {
        let node = cluster.node_client(i)?;
        let (_, shards) = node.list_shards().await?;
        for (key, h) in &history {
            let shard = shards.iter().find(|s| s.descriptor.range.contains(key)).expect("every shard on every node");
            let route = Route { shard: shard.descriptor.id, epoch: shard.descriptor.epoch };
            let doc = node.get(route, key, true).await?;
            match (&h.acked, doc) {
                (Some((value, version)), Some(doc)) => {
                    let got = String::from_utf8(doc.value.clone())?;
                    if doc.version == *version {
                        assert_eq!(&got, value, "node {} key {key:?}: same version, other value", i + 1);
                    } else {
                        assert!(
                            doc.version > *version && h.unknown_after.contains(&got),
                            "node {} key {key:?}: acknowledged {value} at version {version}, found {got} at version {}",
                            i + 1,
                            doc.version
                        );
                    }
                }
                (Some((value, version)), None) => {
                    panic!("node {} lost key {key:?}: acknowledged {value} at version {version}", i + 1)
                }
                (None, Some(doc)) => {
                    let got = String::from_utf8(doc.value)?;
                    assert!(h.unknown_after.contains(&got), "node {} key {key:?}: {got} was never written", i + 1);
                }
                (None, None) => {}
            }
            checked += 1;
        }
    }
    eprintln!("checked {checked} (key, replica) pairs");
    cluster.shutdown().await;
    Ok(())
}
