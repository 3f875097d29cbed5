//! Replicas are created and destroyed at run time: a new shard group forms on
//! three nodes, serves writes, and when destroyed its log, record and documents
//! are deleted from every node while the other shards keep working.

use std::time::Duration;

use cairn_node::storage::tables::DOCS;
use cairn_proto::{
    Epoch, KeyRange, NodeId, RaftRole, ReplicaDescriptor, ReplicaRole, Route, Session, ShardDescriptor, ShardId,
};
use cairn_tests::{TestCluster, wait_until};
use redb::ReadableTable;

fn rows_of(node: &cairn_node::Node, data_id: u64) -> usize {
    let txn = node.shared.storage.begin_read().unwrap();
    let docs = txn.open_table(DOCS).unwrap();
    docs.range((data_id, &[][..])..(data_id + 1, &[][..])).unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_are_created_and_destroyed_at_run_time() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("cairn_node=info,openraft=error").with_test_writer().try_init();
    let cluster = TestCluster::start(3, 1).await?;
    let shard = ShardId(100);
    let members: Vec<(NodeId, String)> = (0..3).map(|i| (NodeId(i as u64 + 1), cluster.addr(i))).collect();
    let descriptor = ShardDescriptor {
        id: shard,
        range: KeyRange::full(),
        epoch: Epoch { conf_ver: 0, version: 1 },
        replicas: members
            .iter()
            .map(|(n, a)| ReplicaDescriptor { node: *n, addr: a.clone(), role: ReplicaRole::Voter })
            .collect(),
    };
    for (i, node) in cluster.running().enumerate() {
        node.shared.create_replica(descriptor.clone(), Some(&members), &cluster.configs[i]).await?;
    }
    let leader = wait_until("a leader for the new shard", Duration::from_secs(20), || async {
        cluster
            .running()
            .find(|n| n.shared.shard_statuses().iter().any(|s| s.descriptor.id == shard && s.role == RaftRole::Leader))
    })
    .await?
    .id();
    let client = cluster.node_client(leader.0 as usize - 1)?;
    let (_, shards) = client.list_shards().await?;
    let epoch = shards.iter().find(|s| s.descriptor.id == shard).expect("new shard listed").descriptor.epoch;
    let route = Route { shard, epoch };
    // Through whoever leads when each write goes out: a new group's first
    // leader can lose its term while the others' timers settle.
    for i in 0..50u64 {
        let s = Session { client_id: 5, seq: i + 1, acked_below: i + 1 };
        cluster.put_via_leader(shard, s, format!("doc/{i}").as_bytes(), b"{\"x\":1}").await?;
    }
    // Every replica applies the writes.
    let data_ids: Vec<u64> = wait_until("every replica to hold the documents", Duration::from_secs(20), || async {
        let ids: Vec<u64> = cluster
            .running()
            .filter_map(|n| n.shared.storage.shard_record(shard).ok().flatten().map(|r| (n, r.data_id)))
            .filter(|(n, id)| rows_of(n, *id) == 50)
            .map(|(_, id)| id)
            .collect();
        (ids.len() == 3).then_some(ids)
    })
    .await?;

    for node in cluster.running() {
        node.shared.destroy_replica(shard).await?;
        assert!(node.shared.registry.get(shard).is_none());
        assert!(node.shared.storage.shard_record(shard)?.is_none());
    }
    wait_until("the documents to be deleted", Duration::from_secs(20), || async {
        cluster.running().zip(&data_ids).all(|(n, id)| rows_of(n, *id) == 0).then_some(())
    })
    .await?;
    let e = client.get(route, b"doc/1", true).await.unwrap_err();
    assert_eq!(e, cairn_proto::ApiError::ShardNotFound { shard });

    // The statically bootstrapped shard is untouched.
    let c = cluster.client()?;
    let v = c.put(b"still/here", b"{}", None).await?;
    assert_eq!(c.get(b"still/here").await?.expect("document").version, v);
    cluster.shutdown().await;
    Ok(())
}
