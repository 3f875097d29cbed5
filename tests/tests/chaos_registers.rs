//! Registers under data movement (RFC 006, the first in-process mix): 8
//! processes read, write and compare-and-set 6 keys through routed clients
//! while a seeded schedule transfers leaders and moves replicas between 4
//! nodes through the PD. The recorded history must be linearizable; the
//! checker's own tests (`cairn_tests::chaos::linear`) show it rejects stale
//! reads, lost writes and duplicate applies.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_proto::{NodeId, OperatorKind, ShardId};
use cairn_tests::chaos::linear::{self, Limits};
use cairn_tests::chaos::register::{self, RegisterWorkload};
use cairn_tests::chaos::{Recorder, Verdict};
use cairn_tests::{TestCluster, wait_until};
use rand::{Rng, SeedableRng};

const SEED: u64 = 5;
const MOVES: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registers_stay_linearizable_while_leaders_and_replicas_move() -> anyhow::Result<()> {
    let cluster = TestCluster::start(4, 2).await?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let workload = RegisterWorkload { keys: 6, processes: 8, seed: SEED, ops_per_key: 1_000 };
    let running = tokio::spawn(register::run(client.clone(), workload, recorder.clone(), stop.clone()));

    // The nemesis: a seeded sequence of leader transfers and replica moves.
    let pd = cluster.pd_client()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let nodes: Vec<NodeId> = cluster.running().map(|n| n.id()).collect();
    let mut done = Vec::new();
    for _ in 0..MOVES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        let shard = ShardId(rng.random_range(1..=2));
        let replicas = wait_until("the shard's replicas", Duration::from_secs(20), || async {
            let status = pd.cluster(0).await.ok()?;
            let d = &status.shards.iter().find(|s| s.route.descriptor.id == shard)?.route.descriptor;
            Some(d.replicas.iter().map(|r| r.node).collect::<Vec<_>>())
        })
        .await?;
        let kind = if rng.random_bool(0.5) {
            let to = replicas[rng.random_range(0..replicas.len())];
            OperatorKind::TransferLeader { to }
        } else {
            let from = replicas[rng.random_range(0..replicas.len())];
            let outside: Vec<NodeId> = nodes.iter().copied().filter(|n| !replicas.contains(n)).collect();
            let to = outside[rng.random_range(0..outside.len())];
            OperatorKind::MoveReplica { from, to }
        };
        let op = wait_until("the PD to take the operator", Duration::from_secs(20), || async {
            match pd.create_operator(shard, kind.clone()).await {
                Ok(op) => Some(op),
                // Its own balancing may hold the shard, or the leader is already there.
                Err(e) if e.to_string().contains("busy") || e.to_string().contains("already") => None,
                Err(e) => panic!("operator {kind} on shard {shard} refused: {e}"),
            }
        })
        .await;
        let Ok(op) = op else { continue };
        let finished = format!("operator {} on shard {shard} ({kind})", op.id);
        wait_until("the operator to finish", Duration::from_secs(30), || async {
            pd.cluster(64).await.ok()?.events.iter().any(|e| e.message.starts_with(&finished)).then_some(())
        })
        .await?;
        done.push(kind.to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    running.await?;

    let history = recorder.history();
    let (report, ok) = linear::check_and_print(SEED, &history, &done.join(", "));
    assert!(done.len() >= MOVES / 2, "the nemesis acted: {done:?}");
    assert!(ok >= 200, "the workload made progress");
    assert_eq!(report.verdict, Verdict::Valid);

    // The broken variant: the same history with one stale read added (a read
    // after everything else, returning a value overwritten since) must be
    // rejected.
    let stale = linear::with_stale_read(&history).expect("a key written twice");
    let broken = linear::check(&stale, &Limits::default());
    assert_eq!(broken.verdict, Verdict::Invalid, "a stale read injected into a real history is found");
    Ok(())
}
