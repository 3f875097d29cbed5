//! A follower that missed more than the retained log catches up by a streamed
//! snapshot larger than gRPC's default 4 MiB message limit, and ends with
//! exactly the leader's documents.

use std::time::Duration;

use cairn_node::storage::tables::{DOC_TAILS, META_PURGED};
use cairn_proto::{Route, ShardId};
use cairn_tests::{TestCluster, wait_until};
use redb::ReadableTable;

const BIG_DOCS: usize = 60;
const BIG_DOC_BYTES: usize = 100 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_follower_catches_up_by_streamed_snapshot() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("cairn_node=info,openraft=error").with_test_writer().try_init();
    let mut cluster = TestCluster::start_with(3, 1, |c| {
        c.raft.snapshot_logs_since_last = 50;
        c.raft.logs_to_keep = 5;
        // Small chunks: the 6 MiB snapshot travels in dozens of them.
        c.transport.snapshot_chunk_bytes = 256 * 1024;
    })
    .await?;
    let shard = ShardId(1);
    let leader = cluster.leaders()[&shard];
    let follower = (0..3).find(|i| *i as u64 + 1 != leader.0).expect("a follower");
    cluster.crash(follower).await;

    let client = cluster.client()?;
    let mut expected = Vec::new();
    for i in 0..BIG_DOCS {
        let key = format!("big/{i:03}").into_bytes();
        let value = format!("{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(BIG_DOC_BYTES));
        let version = client.put(&key, value.as_bytes(), None).await?;
        expected.push((key, value, version));
    }
    // A leader defers its snapshot (and purge) while a member lacks the entries
    // it would purge, here the crashed follower, until SNAPSHOT_DEFER_FACTOR
    // times snapshot-logs-since-last entries have piled up: write past that.
    let small = 50 * cairn_node::raft::SNAPSHOT_DEFER_FACTOR + 100;
    for i in 0..small {
        client.put(format!("small/{i:04}").as_bytes(), b"{}", None).await?;
    }
    let leader_node = cluster.node(leader.0 as usize - 1).expect("leader running").clone();
    wait_until("the leader to purge its log", Duration::from_secs(30), || async {
        leader_node.shared.storage.raft_meta(shard, META_PURGED).ok().flatten().map(|_| ())
    })
    .await?;

    cluster.restart(follower).await?;
    let target = leader_node.shared.shard_statuses()[0].applied_index;
    let restarted = cluster.node(follower).expect("restarted").clone();
    wait_until("the follower to catch up", Duration::from_secs(60), || async {
        (restarted.shared.shard_statuses()[0].applied_index >= target).then_some(())
    })
    .await?;

    let node = cluster.node_client(follower)?;
    let (_, shards) = node.list_shards().await?;
    let route = Route { shard, epoch: shards[0].descriptor.epoch };
    for (key, value, version) in &expected {
        let doc = node.get(route, key, true).await?.expect("document on the follower");
        assert_eq!(doc.version, *version);
        assert_eq!(doc.value, value.as_bytes());
    }
    let total: usize = expected.iter().map(|(_, v, _)| v.len()).sum();
    assert!(total > 4 << 20, "the snapshot must exceed gRPC's default message size");

    // The follower stored the received documents in pages (RFC 007); client
    // writes over them (stored whole) leave none of their old parts behind.
    let tails_of = |key: &[u8]| -> usize {
        let storage = &restarted.shared.storage;
        let data_id = storage.shard_record(shard).unwrap().expect("a record").data_id;
        let txn = storage.begin_read().unwrap();
        let tails = txn.open_table(DOC_TAILS).unwrap();
        tails.range((data_id, key, 0)..=(data_id, key, u32::MAX)).unwrap().count()
    };
    assert!(tails_of(&expected[0].0) > 0, "a 100 KiB document received by snapshot is paged");
    let smaller = br#"{"small":true}"#.to_vec();
    let larger = format!("{{\"pad\":\"{}\"}}", "q".repeat(2 * BIG_DOC_BYTES)).into_bytes();
    let v0 = client.put(&expected[0].0, &smaller, None).await?;
    assert!(client.delete(&expected[1].0, None).await?.0, "the document existed");
    let v2 = client.put(&expected[2].0, &larger, None).await?;
    let target = leader_node.shared.shard_statuses()[0].applied_index;
    wait_until("the follower to apply the overwrites", Duration::from_secs(30), || async {
        (restarted.shared.shard_statuses()[0].applied_index >= target).then_some(())
    })
    .await?;
    let doc = node.get(route, &expected[0].0, true).await?.expect("overwritten");
    assert_eq!((doc.version, doc.value.as_slice()), (v0, smaller.as_slice()));
    assert!(node.get(route, &expected[1].0, true).await?.is_none(), "deleted");
    let doc = node.get(route, &expected[2].0, true).await?.expect("overwritten");
    assert_eq!((doc.version, doc.value), (v2, larger));
    assert_eq!((tails_of(&expected[0].0), tails_of(&expected[1].0), tails_of(&expected[2].0)), (0, 0, 0));
    assert!(tails_of(&expected[3].0) > 0, "untouched documents keep their pages");
    cluster.shutdown().await;
    Ok(())
}
