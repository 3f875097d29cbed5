//! The PD's node commands, driven through the function the agent runs for each
//! (`agent::execute_command`), on a shard the PD does not know (so its own
//! operators stay out of the way): a replica is moved from one node to
//! another (CreateReplica, AddLearner + JoinReplica filled by a snapshot,
//! ChangeVoters, DestroyReplica), the destroyed replica's documents and record
//! leave that node's storage and a tombstone stays, and stale commands are
//! refused: creations at or below the tombstone, a destroy for an older
//! configuration, leader commands on a follower or for another `conf_ver`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_node::Node;
use cairn_node::pd::agent::{Outcome, Skip, execute_command};
use cairn_node::storage::tables::{DOCS, META_PURGED};
use cairn_proto::{
    Epoch, KeyRange, NodeCommand, NodeId, ReplicaDescriptor, ReplicaRole, Route, Session, ShardDescriptor, ShardId,
};
use cairn_tests::{TestCluster, wait_until};
use redb::ReadableTable;

const SHARD: ShardId = ShardId(100);
const DOCS_WRITTEN: u64 = 60;

fn rows_of(node: &Node, data_id: u64) -> usize {
    let txn = node.shared.storage.begin_read().expect("read txn");
    let docs = txn.open_table(DOCS).expect("docs table");
    docs.range((data_id, &[][..])..(data_id + 1, &[][..])).expect("range").count()
}

/// Documents of `SHARD` on `node` (0 when it has no replica).
fn docs_on(node: &Node) -> usize {
    match node.shared.storage.shard_record(SHARD).ok().flatten() {
        Some(record) => rows_of(node, record.data_id),
        None => 0,
    }
}

fn conf_ver_on(node: &Node) -> Option<u64> {
    node.shared.registry.get(SHARD).map(|r| r.conf_ver())
}

async fn exec(cluster: &TestCluster, i: usize, command: NodeCommand) -> anyhow::Result<Outcome> {
    let node = cluster.node(i).expect("running");
    Ok(execute_command(&node.shared, &cluster.configs[i], command).await?)
}

/// The index of the node leading `SHARD`, with its applied `conf_ver`.
async fn leader(cluster: &TestCluster) -> anyhow::Result<(usize, u64)> {
    wait_until("a leader of the shard", Duration::from_secs(30), || async {
        (0..cluster.len()).find_map(|i| {
            let replica = cluster.node(i)?.shared.registry.get(SHARD)?;
            replica.group.is_leader().then(|| (i, replica.conf_ver()))
        })
    })
    .await
}

/// Writes one document through the shard's current leader (CI saw a leader
/// found by [`leader`] answer NOT_LEADER on its first write).
async fn put_doc(cluster: &TestCluster, seq: u64, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
    let s = Session { client_id: 9, seq, acked_below: seq };
    cluster.put_via_leader(SHARD, s, key, value).await.map(|_| ())
}

/// Sends a leader command built from the leader's current `conf_ver` until
/// it is carried out, as the PD re-sends one until the reports show it.
async fn drive(cluster: &TestCluster, make: impl Fn(u64) -> NodeCommand) -> anyhow::Result<Outcome> {
    wait_until("the leader to carry out the command", Duration::from_secs(30), || async {
        let (i, conf_ver) = leader(cluster).await.ok()?;
        match exec(cluster, i, make(conf_ver)).await {
            Ok(o @ (Outcome::Done | Outcome::AlreadyDone)) => Some(o),
            Ok(other) => {
                tracing::info!(?other, "command not carried out yet");
                None
            }
            Err(e) => {
                tracing::info!(error = %e, "command failed; sending it again");
                None
            }
        }
    })
    .await
}

fn descriptor(replicas: Vec<ReplicaDescriptor>, conf_ver: u64) -> ShardDescriptor {
    ShardDescriptor { id: SHARD, range: KeyRange::full(), epoch: Epoch { conf_ver, version: 1 }, replicas }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moves_by_node_commands_and_stale_commands_are_refused() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("cairn_node=info,openraft=error").with_test_writer().try_init();
    // A short log: the newcomer can only be filled by a snapshot.
    let cluster = TestCluster::start_with(4, 1, |c| {
        c.raft.snapshot_logs_since_last = 20;
        c.raft.logs_to_keep = 5;
    })
    .await?;
    let ids: Vec<NodeId> = (0..4).map(|i| cluster.node(i).expect("running").id()).collect();
    let voter = |i: usize| ReplicaDescriptor { node: ids[i], addr: cluster.addr(i), role: ReplicaRole::Voter };
    let original = descriptor((0..3).map(voter).collect(), 1);

    // CreateReplica on the three members; idempotent; refused where not a member.
    for i in 0..3 {
        assert_eq!(
            exec(&cluster, i, NodeCommand::CreateReplica { descriptor: original.clone() }).await?,
            Outcome::Done
        );
    }
    assert_eq!(
        exec(&cluster, 0, NodeCommand::CreateReplica { descriptor: original.clone() }).await?,
        Outcome::AlreadyDone
    );
    assert_eq!(
        exec(&cluster, 3, NodeCommand::CreateReplica { descriptor: original.clone() }).await?,
        Outcome::Skipped(Skip::NotAMember)
    );
    assert!(cluster.node(3).expect("running").shared.registry.get(SHARD).is_none());

    // Documents, enough entries for the log to be purged behind a snapshot.
    for i in 0..DOCS_WRITTEN {
        put_doc(&cluster, i + 1, format!("doc/{i:03}").as_bytes(), format!(r#"{{"i":{i}}}"#).as_bytes()).await?;
    }
    let (l, _) = leader(&cluster).await?;
    let leader_node = cluster.node(l).expect("running").clone();
    wait_until("the leader to purge its log", Duration::from_secs(30), || async {
        leader_node.shared.storage.raft_meta(SHARD, META_PURGED).ok().flatten().map(|_| ())
    })
    .await?;

    // Leader commands: a follower and a wrong conf_ver are ignored.
    let (l, c0) = leader(&cluster).await?;
    let follower = (0..3).find(|i| *i != l).expect("a follower");
    let add = |conf_ver| NodeCommand::AddLearner { shard: SHARD, conf_ver, node: ids[3], addr: cluster.addr(3) };
    assert_eq!(exec(&cluster, follower, add(c0)).await?, Outcome::Skipped(Skip::NotLeader));
    assert_eq!(
        exec(&cluster, l, add(c0 + 7)).await?,
        Outcome::Skipped(Skip::StaleConfVer { local: c0, command: c0 + 7 })
    );
    let destroy_leader = NodeCommand::DestroyReplica { shard: SHARD, conf_ver: c0 };
    assert_eq!(exec(&cluster, l, destroy_leader).await?, Outcome::Skipped(Skip::Leader));

    // T1: the newcomer becomes a learner and joins; the leader fills it by snapshot.
    assert!(matches!(drive(&cluster, add).await?, Outcome::Done | Outcome::AlreadyDone));
    let mut with_learner = original.clone();
    with_learner.replicas.push(ReplicaDescriptor { role: ReplicaRole::Learner, ..voter(3) });
    with_learner.epoch.conf_ver = c0 + 1;
    assert_eq!(exec(&cluster, 3, NodeCommand::JoinReplica { descriptor: with_learner.clone() }).await?, Outcome::Done);
    assert_eq!(
        exec(&cluster, 3, NodeCommand::JoinReplica { descriptor: with_learner.clone() }).await?,
        Outcome::AlreadyDone
    );
    let newcomer = cluster.node(3).expect("running").clone();
    wait_until("the learner to hold every document", Duration::from_secs(30), || async {
        (docs_on(&newcomer) == DOCS_WRITTEN as usize && conf_ver_on(&newcomer) == Some(c0 + 1)).then_some(())
    })
    .await?;
    let (l, _) = leader(&cluster).await?;
    let view = cluster.node(l).expect("running").shared.registry.get(SHARD).expect("hosted").group.leader_view();
    let view = view.expect("the leader's view");
    assert!(view.membership.learners.contains(&ids[3]), "{view:?}");
    assert!(!view.membership.joint);

    // A destroy computed before the learner was added must not touch it.
    assert_eq!(
        exec(&cluster, 3, NodeCommand::DestroyReplica { shard: SHARD, conf_ver: c0 }).await?,
        Outcome::Skipped(Skip::ReplicaNewer { local: c0 + 1, command: c0 })
    );
    assert_eq!(docs_on(&newcomer), DOCS_WRITTEN as usize);

    // T2: the learner replaces a voter that does not lead.
    let (l, _) = leader(&cluster).await?;
    let leaving = (0..3).find(|i| *i != l).expect("a follower");
    let target: BTreeSet<NodeId> = (0..4).filter(|i| *i != leaving).map(|i| ids[i]).collect();
    let voters: Vec<NodeId> = target.iter().copied().collect();
    let change = |conf_ver| NodeCommand::ChangeVoters { shard: SHARD, conf_ver, voters: voters.clone() };
    assert!(matches!(drive(&cluster, change).await?, Outcome::Done | Outcome::AlreadyDone));
    let c2 = wait_until("the uniform target configuration to apply", Duration::from_secs(30), || async {
        let (l, conf_ver) = leader(&cluster).await.ok()?;
        let m = cluster.node(l)?.shared.registry.get(SHARD)?.group.membership();
        (!m.joint && m.voters == target && m.learners.is_empty()).then_some(conf_ver)
    })
    .await?;
    // Re-sent: nothing left to do; computed from an older configuration: ignored.
    let (l, now) = leader(&cluster).await?;
    assert_eq!(now, c2);
    assert_eq!(exec(&cluster, l, change(c2)).await?, Outcome::AlreadyDone);
    assert_eq!(
        exec(&cluster, l, change(c0 + 1)).await?,
        Outcome::Skipped(Skip::StaleConfVer { local: c2, command: c0 + 1 })
    );
    // The newcomer, now a voter, takes new writes.
    put_doc(&cluster, DOCS_WRITTEN + 1, b"doc/after-move", br#"{"moved":true}"#).await?;
    wait_until("the newcomer to apply the write", Duration::from_secs(30), || async {
        (docs_on(&newcomer) == DOCS_WRITTEN as usize + 1).then_some(())
    })
    .await?;

    // T3: the old replica is destroyed; documents and record go, a tombstone stays.
    let old = cluster.node(leaving).expect("running").clone();
    let old_data_id = old.shared.storage.shard_record(SHARD)?.expect("old replica still there").data_id;
    let destroy = NodeCommand::DestroyReplica { shard: SHARD, conf_ver: c2 };
    let outcome = wait_until("the old replica to be destroyed", Duration::from_secs(30), || async {
        match exec(&cluster, leaving, destroy.clone()).await.ok()? {
            // It may still think it leads a group it was removed from, briefly.
            Outcome::Skipped(Skip::Leader) => None,
            other => Some(other),
        }
    })
    .await?;
    assert_eq!(outcome, Outcome::Done);
    assert!(old.shared.registry.get(SHARD).is_none());
    assert!(old.shared.storage.shard_record(SHARD)?.is_none());
    assert_eq!(old.shared.storage.tombstone(SHARD)?.map(|t| t.conf_ver), Some(c2));
    wait_until("the old replica's documents to be deleted", Duration::from_secs(30), || async {
        (rows_of(&old, old_data_id) == 0).then_some(())
    })
    .await?;
    assert_eq!(exec(&cluster, leaving, destroy.clone()).await?, Outcome::AlreadyDone);

    // Stale creations are refused by the tombstone; the PD shard is never destroyed.
    let mut stale = original.clone();
    for conf_ver in [1, c2 - 1, c2] {
        stale.epoch.conf_ver = conf_ver;
        assert_eq!(
            exec(&cluster, leaving, NodeCommand::JoinReplica { descriptor: stale.clone() }).await?,
            Outcome::Skipped(Skip::Tombstoned { tombstone: c2, requested: conf_ver })
        );
        assert_eq!(
            exec(&cluster, leaving, NodeCommand::CreateReplica { descriptor: stale.clone() }).await?,
            Outcome::Skipped(Skip::Tombstoned { tombstone: c2, requested: conf_ver })
        );
    }
    assert!(old.shared.registry.get(SHARD).is_none());
    assert!(old.shared.storage.shard_record(SHARD)?.is_none());
    // The PD's shard moves too (RFC 004), by the same rules: a destroy computed
    // from an older configuration than the replica's is refused; only
    // bootstrap creates it.
    let pd_conf_ver = old.shared.registry.get(ShardId(0)).expect("a PD member").conf_ver();
    assert_eq!(
        exec(&cluster, leaving, NodeCommand::DestroyReplica { shard: ShardId(0), conf_ver: pd_conf_ver - 1 }).await?,
        Outcome::Skipped(Skip::ReplicaNewer { local: pd_conf_ver, command: pd_conf_ver - 1 })
    );
    let mut pd_descriptor = old.shared.registry.get(ShardId(0)).expect("a PD member").descriptor();
    pd_descriptor.epoch.conf_ver += 1;
    assert_eq!(
        exec(&cluster, leaving, NodeCommand::CreateReplica { descriptor: pd_descriptor }).await?,
        Outcome::Skipped(Skip::PdShard)
    );
    assert!(old.shared.registry.get(ShardId(0)).is_some(), "the PD replica is intact");
    // A later configuration that adds the node back is accepted.
    stale.epoch.conf_ver = c2 + 1;
    assert_eq!(exec(&cluster, leaving, NodeCommand::JoinReplica { descriptor: stale }).await?, Outcome::Done);
    assert_eq!(conf_ver_on(&old), Some(0));

    // The moved shard still has every document on its new voters, the newcomer included.
    let newcomer_client = cluster.node_client(3)?;
    let epoch = newcomer.shared.registry.get(SHARD).expect("hosted").descriptor().epoch;
    let doc = newcomer_client.get(Route { shard: SHARD, epoch }, b"doc/007", true).await?.expect("document");
    assert_eq!(doc.value, br#"{"i":7}"#.to_vec());
    // No snapshot transfer is left registered anywhere.
    let nodes: Vec<Arc<Node>> = cluster.running().cloned().collect();
    wait_until("no snapshot in flight", Duration::from_secs(30), || async {
        nodes.iter().all(|n| n.shared.transport.snapshots_in_flight() == 0).then_some(())
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}
