//! Registers under link faults (RFC 006, the in-process tier): the transport's
//! fault rules drop, delay and cut Raft traffic between 5 in-process nodes
//! (lossy links, slow links, an isolated node, one-way cuts, one shard's
//! traffic cut while it moves, snapshots cut while a replica moves to the
//! node), one fault at a time from a seeded schedule, while 8 processes read,
//! write and compare-and-set through routed clients. The history must be
//! linearizable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_node::transport::faults::LinkRule;
use cairn_proto::{NodeId, OperatorKind, ShardId};
use cairn_tests::TestCluster;
use cairn_tests::chaos::linear;
use cairn_tests::chaos::register::{self, RegisterWorkload};
use cairn_tests::chaos::{Recorder, Verdict};
use rand::{Rng, SeedableRng};

const SEED: u64 = 21;
const FAULTS: usize = 8;
const HOLD: Duration = Duration::from_millis(1500);

fn heal(cluster: &TestCluster) {
    for node in cluster.running() {
        node.shared.transport.faults().clear();
    }
}

/// Applies `rule` to the messages `from` sends to `to`.
fn link(cluster: &TestCluster, from: usize, to: NodeId, rule: LinkRule) {
    cluster.node(from).expect("running").shared.transport.faults().set_link(to.0, rule);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registers_stay_linearizable_over_lossy_slow_and_cut_links() -> anyhow::Result<()> {
    let cluster = TestCluster::start(5, 2).await?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let workload = RegisterWorkload { keys: 6, processes: 8, seed: SEED, ops_per_key: 1_000 };
    let running = tokio::spawn(register::run(client.clone(), workload, recorder.clone(), stop.clone()));

    let pd = cluster.pd_client()?;
    let ids: Vec<NodeId> = (0..5).map(|i| cluster.node(i).expect("running").id()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    for (i, node) in cluster.running().enumerate() {
        node.shared.transport.faults().seed(SEED + i as u64);
    }
    let mut done = Vec::new();
    for _ in 0..FAULTS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..600))).await;
        let (a, b) = (rng.random_range(0..5), rng.random_range(0..5));
        let b = if a == b { (b + 1) % 5 } else { b };
        let what = match rng.random_range(0..6) {
            0 => {
                let lossy = LinkRule { drop_probability: 0.3, ..LinkRule::default() };
                link(&cluster, a, ids[b], lossy.clone());
                link(&cluster, b, ids[a], lossy);
                format!("lossy link {}<->{}", ids[a], ids[b])
            }
            1 => {
                for (to, id) in ids.iter().enumerate() {
                    if to != a {
                        link(&cluster, a, *id, LinkRule { delay_ms: Some((20, 80)), ..LinkRule::default() });
                    }
                }
                format!("slow links out of node {}", ids[a])
            }
            2 => {
                for (other, id) in ids.iter().enumerate() {
                    if other != a {
                        link(&cluster, a, *id, LinkRule { cut: true, ..LinkRule::default() });
                        link(&cluster, other, ids[a], LinkRule { cut: true, ..LinkRule::default() });
                    }
                }
                format!("node {} isolated", ids[a])
            }
            3 => {
                link(&cluster, a, ids[b], LinkRule { cut: true, ..LinkRule::default() });
                format!("one-way cut {}->{}", ids[a], ids[b])
            }
            4 => {
                let shard = ShardId(rng.random_range(1..=2));
                cluster.node(a).expect("running").shared.transport.faults().cut_shard(ids[b].0, shard.0);
                cluster.node(b).expect("running").shared.transport.faults().cut_shard(ids[a].0, shard.0);
                let moved = move_replica(&cluster, &pd, shard, None, &mut rng).await;
                format!("shard {shard} cut {}<->{}; {moved}", ids[a], ids[b])
            }
            _ => {
                for node in cluster.running() {
                    node.shared
                        .transport
                        .faults()
                        .set_link(ids[a].0, LinkRule { snapshots_cut: true, ..LinkRule::default() });
                }
                let shard = ShardId(rng.random_range(1..=2));
                let moved = move_replica(&cluster, &pd, shard, Some(ids[a]), &mut rng).await;
                format!("snapshots to node {} cut; {moved}", ids[a])
            }
        };
        tokio::time::sleep(HOLD).await;
        heal(&cluster);
        done.push(what);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    running.await?;

    let history = recorder.history();
    let (report, ok) = linear::check_and_print(SEED, &history, &done.join("; "));
    assert!(ok >= 200, "the workload made progress");
    assert_eq!(report.verdict, Verdict::Valid);
    Ok(())
}

/// Asks the PD to move a replica of `shard` (to `to` when given and free);
/// returns what was asked, for the log. Refusals are fine: the fault is the point.
async fn move_replica(
    cluster: &TestCluster,
    pd: &cairn_client::PdClient,
    shard: ShardId,
    to: Option<NodeId>,
    rng: &mut rand::rngs::StdRng,
) -> String {
    let Ok(status) = pd.cluster(0).await else { return "no move (PD busy)".into() };
    let Some(info) = status.shards.iter().find(|s| s.route.descriptor.id == shard) else {
        return "no move (shard unknown)".into();
    };
    let on: Vec<NodeId> = info.route.descriptor.replicas.iter().map(|r| r.node).collect();
    let free: Vec<NodeId> = cluster.running().map(|n| n.id()).filter(|id| !on.contains(id)).collect();
    let to = match to {
        Some(t) if !on.contains(&t) => t,
        _ if free.is_empty() => return "no move (no free node)".into(),
        _ => free[rng.random_range(0..free.len())],
    };
    let from = on[rng.random_range(0..on.len())];
    let kind = OperatorKind::MoveReplica { from, to };
    match pd.create_operator(shard, kind.clone()).await {
        Ok(op) => format!("operator {} {kind} on shard {shard}", op.id),
        Err(e) => format!("{kind} on shard {shard} refused: {e}"),
    }
}
