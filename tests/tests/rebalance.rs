//! Rebalancing in a real (in-process) cluster: the PD's scheduler and
//! operators moving replicas while clients work (scale out), re-creating the
//! replicas of a dead node (repair), emptying a node (drain, remove), and
//! spreading leaders. Every test checks that no acknowledged write is lost and
//! that a moved replica is gone from its old node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_client::{Client, ClientConfig, PdClient};
use cairn_node::pd::PD_SHARD;
use cairn_proto::{AdminRequest, KeyRange, NodeId, OperatorKind, ReplicaRole, ShardDescriptor, ShardId};
use cairn_tests::{TestCluster, wait_until};

/// The PD's descriptors of every data shard.
async fn descriptors(pd: &PdClient) -> Option<Vec<ShardDescriptor>> {
    let (routes, _) = pd.list_shards(&KeyRange::full(), 0).await.ok()?;
    Some(routes.into_iter().map(|r| r.descriptor).collect())
}

fn voters(d: &ShardDescriptor) -> BTreeSet<NodeId> {
    d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node).collect()
}

/// Writers that put unique keys until stopped; every acknowledged key is kept.
struct Writers {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Writers {
    fn start(client: &Client, n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let tasks = (0..n)
            .map(|w| {
                let (client, stop, failures) = (client.clone(), stop.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        // Keys spread over the whole key space (every shard).
                        let key = format!("{:02x}-w{w}-{i}", (i * 37 + w as u64 * 11) % 256);
                        match client.put(key.clone(), format!(r#"{{"w":{w},"i":{i}}}"#)).await {
                            Ok(_) => acked.push(key),
                            Err(e) => {
                                tracing::warn!(error = %e, "write failed");
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        i += 1;
                    }
                    acked
                })
            })
            .collect();
        Writers { stop, failures, tasks }
    }

    async fn stop(self) -> anyhow::Result<(Vec<String>, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for t in self.tasks {
            acked.extend(t.await?);
        }
        Ok((acked, self.failures.load(Ordering::Relaxed)))
    }
}

async fn assert_readable(client: &Client, keys: &[String]) -> anyhow::Result<()> {
    for key in keys {
        let doc = client.get(key.clone()).await?;
        anyhow::ensure!(doc.is_some(), "acknowledged write {key} lost");
    }
    Ok(())
}

/// Every running node hosts exactly the replicas the PD lists for it, and a
/// node the PD no longer lists for a shard has no record of it left.
async fn wait_placement_matches(cluster: &TestCluster, pd: &PdClient) -> anyhow::Result<()> {
    wait_until("every node to host exactly what the PD lists", Duration::from_secs(60), || async {
        let ds = descriptors(pd).await?;
        for node in cluster.running() {
            let listed: BTreeSet<ShardId> =
                ds.iter().filter(|d| d.replicas.iter().any(|r| r.node == node.id())).map(|d| d.id).collect();
            let hosted: BTreeSet<ShardId> = node.shared.shard_statuses().iter().map(|s| s.descriptor.id).collect();
            if listed != hosted {
                return None;
            }
            for d in &ds {
                let record = node.shared.storage.shard_record(d.id).ok()?;
                if record.is_some() != listed.contains(&d.id) {
                    return None;
                }
            }
        }
        Some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scale_out_moves_replicas_while_clients_write() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, 8).await?;
    let pd = cluster.pd_client()?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    for i in 0..200 {
        client.put(format!("{:02x}-seed-{i}", i % 256), r#"{"seed":true}"#).await?;
    }
    let writers = Writers::start(&client, 4);
    let a = cluster.add_node().await?;
    let b = cluster.add_node().await?;
    let new_ids = [cluster.node(a).unwrap().id(), cluster.node(b).unwrap().id()];

    let status = wait_until("the PD to balance 24 replicas over 5 nodes", Duration::from_secs(120), || async {
        let s = pd.rebalance_status().await.ok()?;
        (s.balanced && s.nodes.len() == 5).then_some(s)
    })
    .await?;
    let (acked, failures) = writers.stop().await?;
    assert_eq!(failures, 0, "no client call may fail during rebalancing");
    assert!(acked.len() > 100, "the writers made progress: {}", acked.len());
    assert!(status.replica_spread <= 1, "{status:?}");
    for id in new_ids {
        let n = status.nodes.iter().find(|n| n.node == id).expect("new node listed");
        assert!(n.replicas >= 4, "node {id} got its share: {status:?}");
    }
    assert_readable(&client, &acked).await?;
    wait_placement_matches(&cluster, &pd).await?;
    let events = pd.cluster(256).await?.events;
    assert!(events.iter().any(|e| e.message.contains("move-replica") && e.message.contains("done")), "{events:?}");
    // Leaders spread too: nobody leads more than ceil(8 / 5) + 1.
    wait_until("leaders spread", Duration::from_secs(60), || async {
        let s = pd.rebalance_status().await.ok()?;
        (s.balanced && s.nodes.iter().all(|n| n.leaders <= 3)).then_some(())
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_replaced_after_max_node_down_time() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(5, 6).await?;
    let pd = cluster.pd_client()?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    wait_until("initial balance", Duration::from_secs(120), || async {
        pd.rebalance_status().await.ok()?.balanced.then_some(())
    })
    .await?;
    pd.set_setting("max-node-down-time", "3s").await?;
    let settings = pd.set_setting("max-node-down-time", "3s").await?;
    assert_eq!(settings.max_node_down_time_ms, 3_000, "setting the same value twice is harmless");
    for i in 0..100 {
        client.put(format!("{:02x}-k{i}", (i * 7) % 256), format!(r#"{{"i":{i}}}"#)).await?;
    }
    // Node 5 (not a PD member) holds replicas: kill it.
    let victim = cluster.node(4).unwrap().id();
    let ds = descriptors(&pd).await.unwrap();
    assert!(ds.iter().any(|d| voters(d).contains(&victim)), "node 5 holds replicas");
    let writers = Writers::start(&client, 2);
    cluster.crash(4).await;
    wait_until("every shard back at 3 voters on live nodes", Duration::from_secs(120), || async {
        let ds = descriptors(&pd).await?;
        let ok = ds.iter().all(|d| {
            let v = voters(d);
            v.len() == 3 && !v.contains(&victim) && d.replicas.len() == 3
        });
        let ops = pd.list_operators().await.ok()?;
        (ok && ops.is_empty()).then_some(())
    })
    .await?;
    let (acked, failures) = writers.stop().await?;
    assert_eq!(failures, 0);
    assert_readable(&client, &acked).await?;
    for i in 0..100 {
        let doc = client.get(format!("{:02x}-k{i}", (i * 7) % 256)).await?.expect("kept");
        assert_eq!(doc.value, format!(r#"{{"i":{i}}}"#).into_bytes());
    }
    let events = pd.cluster(256).await?.events;
    assert!(events.iter().any(|e| e.message.contains("(repair)")), "{events:?}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drain_empties_a_node_and_remove_needs_it() -> anyhow::Result<()> {
    let cluster = TestCluster::start(4, 6).await?;
    let pd = cluster.pd_client()?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    for i in 0..100 {
        client.put(format!("{:02x}-d{i}", (i * 13) % 256), r#"{"d":1}"#).await?;
    }
    wait_until("initial balance", Duration::from_secs(120), || async {
        pd.rebalance_status().await.ok()?.balanced.then_some(())
    })
    .await?;
    let node = cluster.node(3).unwrap().id();
    let err = pd.set_node_state(node, AdminRequest::Removed).await.unwrap_err();
    assert!(err.to_string().contains("drain it first"), "{err}");
    let err = pd.set_node_state(NodeId(2), AdminRequest::Removed).await.unwrap_err();
    assert!(err.to_string().contains("drain it first") || err.to_string().contains("placement driver"), "{err}");

    let writers = Writers::start(&client, 2);
    pd.set_node_state(node, AdminRequest::Draining).await?;
    wait_until("the drained node to hold nothing", Duration::from_secs(120), || async {
        let ds = descriptors(&pd).await?;
        let listed = ds.iter().any(|d| d.replicas.iter().any(|r| r.node == node));
        let hosted = cluster.node(3)?.shared.shard_statuses().len();
        (!listed && hosted == 0 && pd.list_operators().await.ok()?.is_empty()).then_some(())
    })
    .await?;
    let (acked, failures) = writers.stop().await?;
    assert_eq!(failures, 0);
    assert_readable(&client, &acked).await?;
    let info = pd.set_node_state(node, AdminRequest::Removed).await?;
    assert_eq!(info.state, cairn_proto::NodeState::Removed);
    let ds = descriptors(&pd).await.unwrap();
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for d in &ds {
        assert_eq!(voters(d).len(), 3);
        for r in &d.replicas {
            *per_node.entry(r.node).or_default() += 1;
        }
    }
    assert!(!per_node.contains_key(&node));
    cluster.shutdown().await;
    Ok(())
}

/// The PD members as the PD reports them.
async fn pd_members(pd: &PdClient) -> Option<BTreeSet<NodeId>> {
    Some(pd.cluster(0).await.ok()?.pd_members.iter().map(|n| n.id).collect())
}

/// RFC 004: draining a PD member moves shard 0 too (here while that member
/// leads the PD, so leadership moves first), after which it can be removed;
/// the PD answers throughout and the new member serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_a_pd_member_moves_the_placement_driver() -> anyhow::Result<()> {
    let cluster = TestCluster::start(4, 4).await?;
    let pd = cluster.pd_client()?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    for i in 0..40 {
        client.put(format!("{:02x}-p{i}", (i * 29) % 256), r#"{"p":1}"#).await?;
    }
    let (member, newcomer) = (NodeId(2), NodeId(4));
    wait_until("the PD to record its own shard", Duration::from_secs(60), || async {
        (pd_members(&pd).await? == BTreeSet::from([NodeId(1), NodeId(2), NodeId(3)])).then_some(())
    })
    .await?;
    // Node 2 leads the PD: the move must hand the leadership over first.
    wait_until("node 2 to lead the PD", Duration::from_secs(60), || async {
        if cluster.node(1)?.shared.pd.is_leader() {
            return Some(());
        }
        // Asked again until it happens: "busy" while the last one runs, and a
        // transfer to a node not heard from lately is abandoned.
        let _ = pd.create_operator(PD_SHARD, OperatorKind::TransferLeader { to: member }).await;
        None
    })
    .await?;

    let writers = Writers::start(&client, 2);
    pd.set_node_state(member, AdminRequest::Draining).await?;
    wait_until("node 2 to leave the PD and hold nothing", Duration::from_secs(120), || async {
        let node = cluster.node(1)?;
        let gone = node.shared.registry.get(PD_SHARD).is_none()
            && node.shared.storage.shard_record(PD_SHARD).ok()?.is_none()
            && node.shared.shard_statuses().is_empty();
        let members = pd_members(&pd).await?;
        let done = gone
            && members == BTreeSet::from([NodeId(1), NodeId(3), newcomer])
            && pd.list_operators().await.ok()?.is_empty();
        done.then_some(())
    })
    .await?;
    assert!(cluster.node(3).unwrap().shared.pd.is_member(), "node 4 hosts the PD now");
    let (acked, failures) = writers.stop().await?;
    assert_eq!(failures, 0, "client calls failed while the PD moved");
    assert_readable(&client, &acked).await?;

    let info = pd.set_node_state(member, AdminRequest::Removed).await?;
    assert_eq!(info.state, cairn_proto::NodeState::Removed);
    // A tombstone keeps stale PD messages from re-creating shard 0 on node 2.
    let tombstone = cluster.node(1).unwrap().shared.storage.tombstone(PD_SHARD)?;
    assert!(tombstone.is_some(), "no tombstone for shard 0 on node 2");
    // The PD keeps working on its new members: a write and a status read.
    client.put("after-pd-move", r#"{"ok":true}"#).await?;
    assert!(pd.cluster(0).await?.pd_leader.is_some_and(|(id, _)| id != member));
    cluster.shutdown().await;
    Ok(())
}

/// RFC 004: the PD leader's node dies for good; after `max-node-down-time` its
/// replica of the PD's shard 0 is re-created on the node that was not a member,
/// like its data replicas, while clients keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_pd_leader_is_replaced_as_a_pd_member() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(4, 4).await?;
    let pd = cluster.pd_client()?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    wait_until("initial balance, the PD recording its own shard", Duration::from_secs(120), || async {
        (pd.rebalance_status().await.ok()?.balanced && pd_members(&pd).await?.len() == 3).then_some(())
    })
    .await?;
    pd.set_setting("max-node-down-time", "3s").await?;
    let victim = wait_until("a PD leader", Duration::from_secs(30), || async {
        (0..cluster.len()).find(|i| cluster.node(*i).is_some_and(|n| n.shared.pd.is_leader()))
    })
    .await?;
    let victim_id = cluster.node(victim).unwrap().id();
    let newcomer = NodeId(4);
    assert!(!pd_members(&pd).await.unwrap().contains(&newcomer));
    let writers = Writers::start(&client, 2);
    cluster.crash(victim).await;
    let last = std::sync::Mutex::new(String::new());
    let repaired =
        wait_until("the PD and every shard back at 3 voters on live nodes", Duration::from_secs(120), || async {
            let members = pd_members(&pd).await?;
            let ds = descriptors(&pd).await?;
            let data_ok = ds.iter().all(|d| voters(d).len() == 3 && !voters(d).contains(&victim_id));
            let ops = pd.list_operators().await.ok()?;
            let status = pd.cluster(20).await.ok()?;
            *last.lock().unwrap() =
                format!("members {members:?}, data ok {data_ok}, operators {ops:?}, events {:?}", status.events);
            (members.len() == 3
                && members.contains(&newcomer)
                && !members.contains(&victim_id)
                && data_ok
                && ops.is_empty())
            .then_some(())
        })
        .await;
    repaired.map_err(|e| e.context(last.into_inner().unwrap()))?;
    assert!(cluster.node(3).unwrap().shared.pd.is_member());
    let (acked, failures) = writers.stop().await?;
    assert_eq!(failures, 0, "client calls failed while the PD was repaired");
    assert_readable(&client, &acked).await?;
    cluster.shutdown().await;
    Ok(())
}

/// A node started with `--pd` naming one node keeps reaching the PD after
/// that node is drained, removed and stopped: it widens its PD endpoints to
/// the peers it shares shards with (any node forwards PD requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_outlives_the_pd_endpoint_it_was_given() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(4, 4, |c| {
        if c.pd_member_id().is_none() {
            // Node 4 knows only node 2.
            c.pd = vec![c.initial_pd[1].1.clone()];
        }
    })
    .await?;
    let pd = cluster.pd_client()?;
    let (gone, node4) = (NodeId(2), NodeId(4));
    assert_eq!(cluster.node(3).unwrap().shared.pd_client().endpoints(), vec![cluster.addr(1)]);
    wait_until("initial balance", Duration::from_secs(120), || async {
        (pd.rebalance_status().await.ok()?.balanced && pd_members(&pd).await?.len() == 3).then_some(())
    })
    .await?;
    pd.set_node_state(gone, AdminRequest::Draining).await?;
    wait_until("node 2 drained", Duration::from_secs(120), || async {
        let members = pd_members(&pd).await?;
        let listed = descriptors(&pd).await?.iter().any(|d| d.replicas.iter().any(|r| r.node == gone));
        (!members.contains(&gone) && !listed && pd.list_operators().await.ok()?.is_empty()).then_some(())
    })
    .await?;
    pd.set_node_state(gone, AdminRequest::Removed).await?;
    cluster.stop(1).await;
    let widened = wait_until("node 4 to widen its PD endpoints", Duration::from_secs(60), || async {
        let endpoints = cluster.node(3)?.shared.pd_client().endpoints();
        (endpoints.len() > 1).then_some(endpoints)
    })
    .await?;
    assert!(!widened.contains(&cluster.addr(3)), "never itself: {widened:?}");
    // Its heartbeats get through again: the PD hears from it after the switch.
    let switched = std::time::Instant::now();
    wait_until("the PD to hear from node 4 again", Duration::from_secs(60), || async {
        let status = pd.cluster(0).await.ok()?;
        let n = status.nodes.iter().find(|n| n.id == node4)?;
        let age = n.last_heartbeat_ms_ago?;
        (age < switched.elapsed().as_millis() as u64 && age < 2_000).then_some(())
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_moves_and_leader_transfers() -> anyhow::Result<()> {
    let cluster = TestCluster::start(4, 2).await?;
    let pd = cluster.pd_client()?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    for i in 0..50 {
        client.put(format!("k{i:03}"), format!(r#"{{"i":{i}}}"#)).await?;
    }
    // Shard 1 holds keys starting with 'k'. The scheduler is busy too (4 nodes,
    // 6 replicas: it balances), so pick the move from the current state and
    // retry while the PD says "busy" (one operator per shard, or still being
    // created).
    let shard = ShardId(1);
    let (op, leader, outsider) = wait_until("the PD to take the move", Duration::from_secs(60), || async {
        let d = descriptors(&pd).await?.into_iter().find(|d| d.id == shard)?;
        let leader = *cluster.leaders().get(&shard)?;
        let outsider = cluster.running().map(|n| n.id()).find(|n| !d.replicas.iter().any(|r| r.node == *n))?;
        // Move the leader's own replica away: it hands leadership over first.
        let kind = cairn_proto::OperatorKind::MoveReplica { from: leader, to: outsider };
        match pd.create_operator(shard, kind).await {
            Ok(op) => Some((op, leader, outsider)),
            Err(e) if e.to_string().contains("busy") => None,
            Err(e) => {
                tracing::info!(error = %e, "move refused; the state moved on, trying again");
                None
            }
        }
    })
    .await?;
    assert_eq!(op.reason, "admin");
    let busy = pd.create_operator(shard, cairn_proto::OperatorKind::TransferLeader { to: outsider }).await;
    assert!(busy.is_err(), "one operator per shard");
    let done = format!("operator {} on shard {shard} (move-replica {leader}->{outsider}) done", op.id);
    wait_until("the move to finish", Duration::from_secs(60), || async {
        pd.cluster(256).await.ok()?.events.iter().any(|e| e.message == done).then_some(())
    })
    .await?;
    for i in 0..50 {
        assert!(client.get(format!("k{i:03}")).await?.is_some());
    }
    // Hand leadership to a voter that does not lead, by hand.
    let (op, to) = wait_until("the PD to take the transfer", Duration::from_secs(60), || async {
        let d = descriptors(&pd).await?.into_iter().find(|d| d.id == shard)?;
        let leader = *cluster.leaders().get(&shard)?;
        let to = voters(&d).into_iter().find(|n| *n != leader)?;
        match pd.create_operator(shard, cairn_proto::OperatorKind::TransferLeader { to }).await {
            Ok(op) => Some((op, to)),
            Err(e) => {
                tracing::info!(error = %e, "transfer refused; trying again");
                None
            }
        }
    })
    .await?;
    let done = format!("operator {} on shard {shard} (transfer-leader ->{to}) done", op.id);
    wait_until("the transfer to finish", Duration::from_secs(30), || async {
        pd.cluster(256).await.ok()?.events.iter().any(|e| e.message == done).then_some(())
    })
    .await?;
    client.put("k999", r#"{"after":"transfer"}"#).await?;
    cluster.shutdown().await;
    Ok(())
}
