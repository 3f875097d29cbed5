//! A replica moved by hand with the group's membership calls (the mechanism the
//! rebalancing operators of RFC 003 will drive): T1, a new learner is filled
//! without clients noticing; T2, it replaces a voter, the PD adopts the new
//! membership from the leader's report, and a client following the PD's watch
//! stream sees it.
//!
//! Three nodes host every shard; the PD's scheduler is then paused
//! (`max-operators` 0) and a fourth, empty node joins to receive the replica.
//! (With four nodes from the start this test failed about 1 run in 6 under
//! load: the PD's own balancing raced the change made by hand, moving the
//! same shard, or had just moved it off the chosen node, whose tombstone then
//! refused a replica created at that configuration.)

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_proto::{KeyRange, NodeId, ReplicaRole, Route, ShardId};
use cairn_tests::{TestCluster, wait_until};

fn voters(replicas: &[cairn_proto::ReplicaDescriptor]) -> BTreeSet<NodeId> {
    replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_moved_replica_reaches_the_pd_and_the_clients() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 2).await?;
    let pd = cluster.pd_client()?;
    pd.set_setting("max-operators", "0").await?;
    let newcomer = cluster.add_node().await?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    // Keys starting with 'k' (0x6b) live in shard 1, [start, 0x8000).
    let shard = ShardId(1);
    for i in 0..50 {
        client.put(format!("k{i:03}"), format!(r#"{{"i":{i}}}"#)).await?;
    }
    let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await?;
    let before = routes.into_iter().find(|r| r.descriptor.id == shard).expect("shard 1").descriptor;
    let new_node = cluster.node(newcomer).unwrap().clone();

    // T1: an empty replica on the newcomer, added as a learner and filled by the leader.
    new_node.shared.create_replica(before.clone(), None, &cluster.configs[newcomer]).await?;
    let leader_id = *cluster.leaders().get(&shard).expect("a leader");
    let leader = cluster.running().find(|n| n.id() == leader_id).unwrap().shared.registry.get(shard).unwrap();
    leader.group.add_learner(new_node.id(), new_node.addr()).await?;
    let target = leader.group.status().last_log_index;
    wait_until("the learner to catch up", Duration::from_secs(30), || async {
        (leader.group.replication_progress().get(&new_node.id()).copied().unwrap_or(0) >= target).then_some(())
    })
    .await?;

    // T2: the learner replaces a follower voter.
    let leaving = before.replicas.iter().map(|r| r.node).find(|n| *n != leader_id).expect("a follower");
    let mut wanted = voters(&before.replicas);
    wanted.remove(&leaving);
    wanted.insert(new_node.id());
    leader.group.change_voters(&wanted.iter().copied().collect::<Vec<_>>()).await?;

    let adopted = wait_until("the PD to adopt the new membership", Duration::from_secs(30), || async {
        let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await.ok()?;
        let d = routes.into_iter().find(|r| r.descriptor.id == shard)?.descriptor;
        (voters(&d.replicas) == wanted).then_some(d)
    })
    .await?;
    assert!(adopted.epoch.conf_ver > before.epoch.conf_ver, "{:?} -> {:?}", before.epoch, adopted.epoch);
    assert_eq!(adopted.range, before.range);
    let status = pd.cluster(20).await?;
    assert!(status.events.iter().any(|e| e.message.contains("membership")), "{:?}", status.events);

    wait_until("the client's cached map to follow", Duration::from_secs(30), || async {
        let cached = client.cached_shards().into_iter().find(|r| r.descriptor.id == shard)?;
        (cached.descriptor.epoch == adopted.epoch).then_some(())
    })
    .await?;
    for i in 0..50 {
        let doc = client.get(format!("k{i:03}")).await?.expect("still there");
        assert_eq!(doc.value, format!(r#"{{"i":{i}}}"#).into_bytes());
    }
    client.put("k999", r#"{"after":"move"}"#).await?;
    // The newcomer holds the data itself.
    let route = Route { shard, epoch: adopted.epoch };
    let on_newcomer = wait_until("the newcomer to apply the last write", Duration::from_secs(30), || async {
        cluster.node_client(newcomer).ok()?.get(route, b"k999", true).await.ok()?
    })
    .await?;
    assert_eq!(on_newcomer.value, br#"{"after":"move"}"#.to_vec());
    client.shutdown().await;
    cluster.shutdown().await;
    Ok(())
}
