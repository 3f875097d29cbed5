//! The PD leader pushes operator steps (`node/src/pd/nudge.rs`): commands still
//! travel only in heartbeat replies, but when the PD has new commands for a node
//! it calls the node's `Admin.Nudge` and the node heartbeats at once.
//!
//! A cluster whose nodes heartbeat only every 2 s moves a replica by hand. The
//! test asserts what the mechanism does, not how fast the move is: the nodes
//! were nudged and answered, a handful of times for the whole move (a nudge is
//! sent only for commands a node has not been given, so nudges and the
//! heartbeats they cause cannot feed each other), the move completed and the
//! documents are all there. Its own test binary: the counters are process-wide.

use std::time::Duration;

use cairn_client::{Client, ClientConfig, PdClient};
use cairn_proto::{KeyRange, NodeId, OperatorKind, ReplicaRole, ShardDescriptor, ShardId};
use cairn_tests::{TestCluster, wait_until};

/// Nudges answered "ok", summed over the nodes of this process.
fn nudges_ok() -> u64 {
    let text = cairn_node::metrics::render(&Default::default(), 0, 0);
    text.lines()
        .filter(|l| l.starts_with("cairn_pd_nudges_total{") && l.contains(r#"result="ok""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn descriptor(pd: &PdClient, shard: ShardId) -> Option<ShardDescriptor> {
    let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await.ok()?;
    routes.into_iter().map(|r| r.descriptor).find(|d| d.id == shard)
}

/// Upper bound on the nudges one move may cost: a few per step and node. A
/// nudge loop would send them as fast as heartbeats answer (thousands).
const NUDGES_PER_MOVE_MAX: u64 = 40;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operator_steps_are_pushed_to_slow_heartbeating_nodes() -> anyhow::Result<()> {
    let cluster = TestCluster::start_with(4, 1, |c| c.heartbeat_interval_ms = 2_000).await?;
    let pd = cluster.pd_client()?;
    // Only this test's operator runs.
    pd.set_setting("max-operators", "0").await?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    for i in 0..20 {
        client.put(format!("k{i:02}"), format!(r#"{{"i":{i}}}"#)).await?;
    }
    let shard = ShardId(1);
    let before = nudges_ok();
    let (op, from, to) = wait_until("the PD to take the move", Duration::from_secs(60), || async {
        let d = descriptor(&pd, shard).await?;
        let leader = *cluster.leaders().get(&shard)?;
        let from = d.replicas.iter().find(|r| r.role == ReplicaRole::Voter && r.node != leader).map(|r| r.node)?;
        let to: NodeId = cluster.running().map(|n| n.id()).find(|n| !d.replicas.iter().any(|r| r.node == *n))?;
        match pd.create_operator(shard, OperatorKind::MoveReplica { from, to }).await {
            Ok(op) => Some((op, from, to)),
            Err(e) => {
                tracing::info!(error = %e, "move refused; trying again");
                None
            }
        }
    })
    .await?;
    let done = format!("operator {} on shard {shard} (move-replica {from}->{to}) done", op.id);
    wait_until("the move to finish", Duration::from_secs(60), || async {
        pd.cluster(256).await.ok()?.events.iter().any(|e| e.message == done).then_some(())
    })
    .await?;
    let nudged = nudges_ok() - before;
    assert!(nudged >= 1, "the nodes were never nudged");
    assert!(nudged <= NUDGES_PER_MOVE_MAX, "{nudged} nudges for one move: they feed each other");
    let d = descriptor(&pd, shard).await.expect("the shard");
    assert!(d.replicas.iter().any(|r| r.node == to && r.role == ReplicaRole::Voter), "{d:?}");
    assert!(!d.replicas.iter().any(|r| r.node == from), "{d:?}");
    for i in 0..20 {
        assert!(client.get(format!("k{i:02}")).await?.is_some(), "k{i:02} lost");
    }
    client.shutdown().await;
    cluster.shutdown().await;
    Ok(())
}
