//! The placement driver in a real (in-process) cluster: bootstrap exactly once,
//! registration of a joining node, routing answered by every node, the shard-map
//! stream, PD leader failover, and refusals of bad input.

use std::time::Duration;

use cairn_client::{ClientConfig, PdClient};
use cairn_node::pd::PD_SHARD;
use cairn_proto::{ApiError, Heartbeat, KeyRange, NodeId, NodeState, NodeStats, RegisterNode, Route, ShardId};
use cairn_tests::{TestCluster, wait_until};
use tokio_stream::StreamExt;

fn pd_at(addr: &str) -> PdClient {
    PdClient::new([addr], ClientConfig::default()).expect("valid address")
}

/// The index of the node leading the PD group.
fn pd_leader(cluster: &TestCluster) -> Option<usize> {
    (0..cluster.len()).find(|i| cluster.node(*i).is_some_and(|n| n.shared.pd.is_leader()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bootstrap_once_join_and_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(4, 4).await?;
    let pd = cluster.pd_client()?;
    // Every event kept: the bootstrap event must be among them.
    let status = wait_until("4 nodes up", Duration::from_secs(30), || async {
        let s = pd.cluster(256).await.ok()?;
        (s.nodes.iter().filter(|n| n.state == NodeState::Up).count() == 4).then_some(s)
    })
    .await?;
    assert_eq!(status.shards.len(), 4);
    assert_eq!(status.under_replicated(), 0);
    assert_eq!(status.pd_members.len(), 3);
    let joined = status.nodes.iter().find(|n| n.addr == cluster.addr(3)).expect("node 4 registered");
    assert_eq!(joined.id, NodeId(4), "ids after the PD members' are allocated in order");
    assert!(!joined.pd_member);
    // The shards cover the key space in order without gaps.
    let ranges: Vec<KeyRange> = status.shards.iter().map(|s| s.route.descriptor.range.clone()).collect();
    assert_eq!(ranges, KeyRange::split_evenly(4));
    // The PD's epochs are the ones the replicas use, once each replica has
    // applied its group's first membership entry (a replica created a moment
    // ago may not have yet: it shows conf_ver 0 until then).
    let pd_epochs: Vec<_> = status.shards.iter().map(|s| (s.route.descriptor.id, s.route.descriptor.epoch)).collect();
    let cluster_ref = &cluster;
    wait_until("every replica at the PD's epoch", Duration::from_secs(30), || async {
        let mut listed = Vec::new();
        for i in 0..4 {
            listed.extend(cluster_ref.node_client(i).ok()?.list_shards().await.ok()?.1);
        }
        pd_epochs
            .iter()
            .all(|(id, epoch)| {
                let replicas: Vec<_> = listed.iter().filter(|l| l.descriptor.id == *id).collect();
                replicas.len() == 3 && replicas.iter().all(|r| r.descriptor.epoch == *epoch)
            })
            .then_some(())
    })
    .await?;
    let bootstraps = status.events.iter().filter(|e| e.message.contains("bootstrapped")).count();
    assert_eq!(bootstraps, 1);

    // Restart everything: the same cluster, no second bootstrap, no new shards,
    // node 4 keeps its id.
    for i in 0..4 {
        cluster.stop(i).await;
    }
    for i in 0..4 {
        cluster.restart(i).await?;
    }
    let again = wait_until("the PD after a full restart", Duration::from_secs(60), || async {
        let s = pd.cluster(256).await.ok()?;
        (s.nodes.iter().filter(|n| n.state == NodeState::Up && n.last_heartbeat_ms_ago.is_some()).count() == 4)
            .then_some(s)
    })
    .await?;
    assert_eq!(again.cluster_id, status.cluster_id);
    assert_eq!(again.shards.len(), 4);
    assert_eq!(again.nodes.len(), 4);
    assert_eq!(again.events.iter().filter(|e| e.message.contains("bootstrapped")).count(), 1);
    assert_eq!(cluster.node(3).unwrap().id(), NodeId(4));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_answers_and_the_map_streams_leader_changes() -> anyhow::Result<()> {
    let cluster = TestCluster::start(4, 2).await?;
    let leader = wait_until("a PD leader", Duration::from_secs(20), || async { pd_leader(&cluster) }).await?;
    // A PD follower forwards; a node that is not a PD member forwards too.
    let follower = (0..3).find(|i| *i != leader).unwrap();
    for i in [leader, follower, 3] {
        let (route, revision) = pd_at(&cluster.addr(i)).locate(b"user:1").await?;
        assert!(route.descriptor.range.contains(b"user:1"), "node {i}: {route:?}");
        assert!(revision > 0);
    }

    // Watch through the non-member node, then move a shard's leader.
    let mut stream = pd_at(&cluster.addr(3)).watch_shards(0).await?;
    let first = stream.next().await.expect("a first event")?;
    assert!(first.full);
    assert_eq!(first.shards.len(), 2);
    let shard = ShardId(1);
    // The PD balances replicas and leaders over the 4 nodes after start; a
    // transfer made meanwhile could be undone before the PD ever saw it (a CI
    // run timed out so). Move the leader once the PD is done, through the PD.
    let pd = cluster.pd_client()?;
    wait_until("the PD to finish balancing", Duration::from_secs(60), || async {
        pd.rebalance_status().await.ok()?.balanced.then_some(())
    })
    .await?;
    let route = wait_until("shard 1's leader in the map", Duration::from_secs(20), || async {
        let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await.ok()?;
        routes.into_iter().find(|r| r.descriptor.id == shard && r.leader.is_some())
    })
    .await?;
    let current = route.leader.expect("a leader").0;
    let target = route.descriptor.replicas.iter().map(|r| r.node).find(|id| *id != current).expect("another voter");
    pd.create_operator(shard, cairn_proto::OperatorKind::TransferLeader { to: target }).await?;
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = stream.next().await {
            let event = event?;
            if event.shards.iter().any(|r| r.descriptor.id == shard && r.leader.as_ref().map(|l| l.0) == Some(target)) {
                return anyhow::Ok(event);
            }
        }
        anyhow::bail!("the stream ended")
    })
    .await??;
    assert!(seen.revision > first.revision);
    assert!(!seen.full);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pd_leader_crash_fails_over_with_the_same_state() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 2).await?;
    let pd = cluster.pd_client()?;
    let before = pd.cluster(0).await?;
    let leader = wait_until("a PD leader", Duration::from_secs(20), || async { pd_leader(&cluster) }).await?;
    cluster.crash(leader).await;
    let after = wait_until("a new PD leader", Duration::from_secs(30), || async {
        let s = pd.cluster(0).await.ok()?;
        s.pd_leader.as_ref().is_some_and(|(id, _)| *id != before.pd_leader.as_ref().unwrap().0).then_some(s)
    })
    .await?;
    assert_eq!(after.cluster_id, before.cluster_id);
    let ids = |s: &cairn_proto::ClusterStatus| s.shards.iter().map(|s| s.route.descriptor.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before));
    assert!(pd.locate(b"k").await.is_ok());
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 1).await?;
    let pd = cluster.pd_client()?;
    let cluster_id = pd.cluster(0).await?.cluster_id;
    let register = |node: Option<u64>, addr: &str, cluster_id: u64| RegisterNode {
        node: node.map(NodeId),
        addr: addr.into(),
        capacity_bytes: 0,
        labels: Default::default(),
        cluster_id,
    };
    let err = pd.register_node(&register(None, "127.0.0.1:1", cluster_id ^ 1)).await.unwrap_err();
    assert!(matches!(err, ApiError::InvalidArgument(ref m) if m.contains("cluster")), "{err}");
    let err = pd.register_node(&register(None, &cluster.addr(1), 0)).await.unwrap_err();
    assert!(matches!(err, ApiError::InvalidArgument(ref m) if m.contains("already registered")), "{err}");
    let err = pd.register_node(&register(Some(77), "127.0.0.1:1", 0)).await.unwrap_err();
    assert!(matches!(err, ApiError::InvalidArgument(_)), "{err}");
    let err = pd.register_node(&register(None, "", 0)).await.unwrap_err();
    assert!(matches!(err, ApiError::InvalidArgument(_)), "{err}");
    let hb = Heartbeat {
        node: NodeId(77),
        cluster_id,
        addr: "127.0.0.1:1".into(),
        stats: NodeStats::default(),
        replicas: vec![],
        full: true,
        removed: vec![],
    };
    let err = pd.heartbeat(&hb).await.unwrap_err();
    assert!(matches!(err, ApiError::InvalidArgument(_)), "{err}");
    let status = pd.cluster(0).await?;
    assert_eq!(status.nodes.len(), 3, "nothing registered");

    // The PD's own shard is not reachable through the KV API.
    let node = cluster.node_client(0)?;
    let route = Route { shard: PD_SHARD, epoch: Default::default() };
    let err = node.get(route, b"pd/cluster", true).await.unwrap_err();
    assert!(matches!(err, ApiError::ShardNotFound { .. }), "{err}");
    let (_, listed) = node.list_shards().await?;
    assert!(listed.iter().all(|s| s.descriptor.id != PD_SHARD));
    cluster.shutdown().await;
    Ok(())
}
