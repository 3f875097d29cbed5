//! Crashes in the middle of a replica move (issue 4's acceptance): the target
//! dies mid-snapshot, the PD leader dies mid-operator, the shard leader dies
//! between the joint and the final configuration. Each time the shard ends at
//! the replication factor with all its data, and no replica is left where the
//! PD does not list one.
//!
//! The shard holds a few MB and the snapshot bandwidth is set to 1 MiB/s, so a
//! transfer lasts seconds and the crash lands inside it; the Raft log is
//! compacted early so a new replica must be filled by a snapshot.

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_client::{Client, ClientConfig, PdClient};
use cairn_proto::{KeyRange, NodeId, OperatorKind, ReplicaRole, ShardDescriptor, ShardId};
use cairn_tests::{TestCluster, wait_until};

const SHARD: ShardId = ShardId(1);
const DOCS: usize = 3_000;

async fn descriptor(pd: &PdClient) -> Option<ShardDescriptor> {
    let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await.ok()?;
    routes.into_iter().map(|r| r.descriptor).find(|d| d.id == SHARD)
}

fn voters(d: &ShardDescriptor) -> BTreeSet<NodeId> {
    d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node).collect()
}

/// Four nodes, one shard on three of them; logs compacted after 50 entries.
async fn start() -> anyhow::Result<(TestCluster, PdClient, Client)> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cluster = TestCluster::start_with(4, 1, |c| {
        c.raft.snapshot_logs_since_last = 50;
        c.raft.logs_to_keep = 10;
    })
    .await?;
    let pd = cluster.pd_client()?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    let value = format!(r#"{{"pad":"{}"}}"#, "x".repeat(1000));
    for batch in 0..DOCS / 100 {
        let items: Vec<(String, String)> =
            (0..100).map(|i| (format!("doc-{:05}", batch * 100 + i), value.clone())).collect();
        client.batch_put(items).await?;
    }
    // More entries than the snapshot threshold: the log before them is purged.
    for i in 0..120 {
        client.put(format!("tail-{i:03}"), r#"{"tail":true}"#).await?;
    }
    // Snapshots are built by the node's once-a-second task: wait for the
    // leader's, taken after the load, so a new replica must be sent it.
    wait_until("the leader to snapshot the loaded shard", Duration::from_secs(30), || async {
        let leader = *cluster.leaders().get(&SHARD)?;
        let replica = cluster.running().find(|n| n.id() == leader)?.shared.registry.get(SHARD)?;
        let applied = replica.group.status().applied_index;
        (replica.group.snapshot_index() + 50 >= applied).then_some(())
    })
    .await?;
    pd.set_setting("snapshot-bytes-per-sec", "1MiB").await?;
    Ok((cluster, pd, client))
}

async fn assert_all_data(client: &Client) -> anyhow::Result<()> {
    for i in 0..DOCS {
        anyhow::ensure!(client.get(format!("doc-{i:05}")).await?.is_some(), "doc-{i:05} lost");
    }
    for i in 0..120 {
        anyhow::ensure!(client.get(format!("tail-{i:03}")).await?.is_some(), "tail-{i:03} lost");
    }
    Ok(())
}

/// Waits until the operator's snapshot to the target has started flowing.
async fn wait_snapshot_flowing(pd: &PdClient) -> anyhow::Result<()> {
    wait_until("the snapshot to start flowing", Duration::from_secs(60), || async {
        let ops = pd.list_operators().await.ok()?;
        let op = ops.iter().find(|o| o.shard == SHARD)?;
        (op.snapshot_sent_bytes > 0 && op.snapshot_sent_bytes < op.snapshot_total_bytes).then_some(())
    })
    .await
}

/// Every running node hosts shard 1 exactly when the PD lists it there.
async fn wait_no_strays(cluster: &TestCluster, pd: &PdClient) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new(String::new());
    let r = wait_until("every replica to be where the PD lists it", Duration::from_secs(60), || async {
        let d = descriptor(pd).await?;
        let mut ok = true;
        let mut seen = format!("PD: {d:?}");
        for n in cluster.running() {
            let listed = d.replicas.iter().any(|r| r.node == n.id());
            let hosted = n.shared.registry.get(SHARD).map(|r| r.descriptor());
            let stored = n.shared.storage.shard_record(SHARD).ok().flatten().is_some();
            seen.push_str(&format!("\nnode {}: listed {listed} hosted {hosted:?} stored {stored}", n.id()));
            ok &= listed == hosted.is_some() && listed == stored;
        }
        *last.lock().unwrap() = seen;
        ok.then_some(())
    })
    .await;
    r.map_err(|e| e.context(last.into_inner().unwrap()))
}

fn index_of(cluster: &TestCluster, id: NodeId) -> usize {
    (0..cluster.len()).find(|i| cluster.node(*i).is_some_and(|n| n.id() == id)).expect("node running")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_crash_mid_snapshot_rolls_back() -> anyhow::Result<()> {
    let (mut cluster, pd, client) = start().await?;
    let before = descriptor(&pd).await.expect("shard 1");
    let leader = *cluster.leaders().get(&SHARD).expect("leader");
    let from = *voters(&before).iter().find(|n| **n != leader).expect("a follower");
    let to = cluster.running().map(|n| n.id()).find(|n| !voters(&before).contains(n)).expect("the empty node");
    pd.create_operator(SHARD, OperatorKind::MoveReplica { from, to }).await?;
    wait_snapshot_flowing(&pd).await?;
    let target = index_of(&cluster, to);
    cluster.crash(target).await;

    let after = wait_until("the operator to roll back", Duration::from_secs(60), || async {
        let d = descriptor(&pd).await?;
        let ops = pd.list_operators().await.ok()?;
        (ops.is_empty() && !d.replicas.iter().any(|r| r.node == to)).then_some(d)
    })
    .await?;
    assert_eq!(voters(&after), voters(&before), "the voters never changed");
    let events = pd.cluster(256).await?.events;
    assert!(events.iter().any(|e| e.message.contains("rolled back")), "{events:?}");
    assert_all_data(&client).await?;
    // The target comes back: whatever it kept of the shard is destroyed.
    cluster.restart(target).await?;
    wait_no_strays(&cluster, &pd).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_leader_crash_mid_operator_is_resumed_by_the_next() -> anyhow::Result<()> {
    let (mut cluster, pd, client) = start().await?;
    let before = descriptor(&pd).await.expect("shard 1");
    let pd_leader =
        (0..cluster.len()).find(|i| cluster.node(*i).is_some_and(|n| n.shared.pd.is_leader())).expect("a PD leader");
    let pd_leader_id = cluster.node(pd_leader).unwrap().id();
    let to = cluster.running().map(|n| n.id()).find(|n| !voters(&before).contains(n)).expect("the empty node");
    // Move a voter that is not the PD leader's node, so the move's own nodes survive.
    let from = *voters(&before).iter().find(|n| **n != pd_leader_id).expect("another voter");
    let op = pd.create_operator(SHARD, OperatorKind::MoveReplica { from, to }).await?;
    wait_snapshot_flowing(&pd).await?;
    cluster.crash(pd_leader).await;

    let after = wait_until("the next PD leader to finish the move", Duration::from_secs(90), || async {
        let d = descriptor(&pd).await?;
        let ops = pd.list_operators().await.ok()?;
        (ops.is_empty() && voters(&d).contains(&to) && !d.replicas.iter().any(|r| r.node == from)).then_some(d)
    })
    .await?;
    assert_eq!(voters(&after).len(), 3);
    let events = pd.cluster(256).await?.events;
    let done = format!("operator {} on shard {SHARD} (move-replica {from}->{to}) done", op.id);
    assert!(events.iter().any(|e| e.message == done), "{events:?}");
    assert_all_data(&client).await?;
    cluster.restart(pd_leader).await?;
    wait_no_strays(&cluster, &pd).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_crash_in_the_joint_configuration_completes_the_change() -> anyhow::Result<()> {
    let (mut cluster, pd, client) = start().await?;
    pd.set_setting("snapshot-bytes-per-sec", "0").await?;
    let before = descriptor(&pd).await.expect("shard 1");
    let leader = *cluster.leaders().get(&SHARD).expect("leader");
    let from = *voters(&before).iter().find(|n| **n != leader).expect("a follower");
    let to = cluster.running().map(|n| n.id()).find(|n| !voters(&before).contains(n)).expect("the empty node");
    let mut target = voters(&before);
    target.remove(&from);
    target.insert(to);
    // The leader will stop before applying the joint entry (so it cannot
    // propose the final configuration), and dies there.
    let li = index_of(&cluster, leader);
    let db = cluster.node(li).unwrap().shared.storage.path().to_path_buf();
    let reached = cairn_node::test_hooks::pause_before_joint_apply(&db, SHARD, Duration::from_secs(3));
    let op = pd.create_operator(SHARD, OperatorKind::MoveReplica { from, to }).await?;
    tokio::time::timeout(Duration::from_secs(60), reached).await??;
    cluster.crash(li).await;

    let after = wait_until("the others to leave the joint configuration", Duration::from_secs(90), || async {
        let d = descriptor(&pd).await?;
        let ops = pd.list_operators().await.ok()?;
        (ops.is_empty() && voters(&d) == target && d.replicas.len() == target.len()).then_some(d)
    })
    .await?;
    assert!(after.epoch.conf_ver >= before.epoch.conf_ver + 3, "learner, joint, final: {after:?}");
    let events = pd.cluster(256).await?.events;
    let done = format!("operator {} on shard {SHARD} (move-replica {from}->{to}) done", op.id);
    assert!(events.iter().any(|e| e.message == done), "{events:?}");
    assert_all_data(&client).await?;
    // The old leader comes back as a voter of the final configuration.
    cluster.restart(li).await?;
    wait_no_strays(&cluster, &pd).await?;
    cluster.shutdown().await;
    Ok(())
}
