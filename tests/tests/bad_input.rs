//! Bad input gets its error code and changes nothing; a retried write is
//! applied once.

use std::time::Duration;

use cairn_client::{NodeClient, ScanRange};
use cairn_proto::{ApiError, Document, Epoch, Route, Session, ShardId, ShardStatus};
use cairn_tests::{TestCluster, wait_until};

/// The leader's client and the status of the shard holding `key`.
async fn leader_of(cluster: &TestCluster, key: &[u8]) -> anyhow::Result<(NodeClient, ShardStatus)> {
    let any = cluster.node_client(0)?;
    let (_, shards) = any.list_shards().await?;
    let shard = shards.iter().find(|s| s.descriptor.range.contains(key)).expect("a shard for every key").clone();
    let leader = shard.leader.expect("a leader");
    let client = cluster.node_client(leader.0 as usize - 1)?;
    let (_, shards) = client.list_shards().await?;
    let status = shards.into_iter().find(|s| s.descriptor.id == shard.descriptor.id).expect("leader hosts the shard");
    Ok((client, status))
}

fn route_of(s: &ShardStatus) -> Route {
    Route { shard: s.descriptor.id, epoch: s.descriptor.epoch }
}

/// Every document of the cluster, read linearizably shard by shard.
async fn everything(cluster: &TestCluster) -> anyhow::Result<Vec<Document>> {
    let (_, shards) = cluster.node_client(0)?.list_shards().await?;
    let mut out = Vec::new();
    for s in shards {
        let (client, status) = leader_of(cluster, &s.descriptor.range.start).await?;
        let (docs, next) = client.scan(route_of(&status), ScanRange::default(), 10_000, false, false).await?;
        assert!(next.is_none());
        out.extend(docs);
    }
    Ok(out)
}

fn session(seq: u64) -> Session {
    Session { client_id: 42, seq, acked_below: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_returns_its_code_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 2).await?;
    let key = b"alpha".to_vec(); // first byte 0x61: in shard 1, [start, 0x8000)
    let (leader, status) = leader_of(&cluster, &key).await?;
    let route = route_of(&status);
    let v1 = leader.put(route, session(1), &key, br#"{"n":1}"#, None).await?;
    let before = everything(&cluster).await?;

    // Invalid JSON.
    let e = leader.put(route, session(2), b"beta", b"{not json", None).await.unwrap_err();
    assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
    // Empty key.
    let e = leader.put(route, session(3), b"", b"{}", None).await.unwrap_err();
    assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
    // Oversized key (limit 4 KiB).
    let big_key = vec![b'a'; 4097];
    let e = leader.put(route, session(4), &big_key, b"{}", None).await.unwrap_err();
    assert!(matches!(e, ApiError::TooLarge(_)), "{e}");
    // Oversized value (limit 1 MiB), valid JSON.
    let big_value = format!("\"{}\"", "x".repeat(1 << 20));
    let e = leader.put(route, session(5), b"beta", big_value.as_bytes(), None).await.unwrap_err();
    assert!(matches!(e, ApiError::TooLarge(_)), "{e}");
    // A key outside the shard: 0xff.. belongs to shard 2.
    let e = leader.put(route, session(6), &[0xff, 0x01], b"{}", None).await.unwrap_err();
    match e {
        ApiError::KeyNotInShard { current } => assert_eq!(current.id, route.shard),
        other => panic!("expected KEY_NOT_IN_SHARD, got {other}"),
    }
    // A stale range epoch.
    let stale =
        Route { shard: route.shard, epoch: Epoch { conf_ver: route.epoch.conf_ver, version: route.epoch.version - 1 } };
    let e = leader.put(stale, session(7), &key, b"{}", None).await.unwrap_err();
    match e {
        ApiError::EpochMismatch { current } => assert_eq!(current.epoch, route.epoch),
        other => panic!("expected EPOCH_MISMATCH, got {other}"),
    }
    let e = leader.get(stale, &key, false).await.unwrap_err();
    assert!(matches!(e, ApiError::EpochMismatch { .. }), "{e}");
    // An unknown shard.
    let unknown = Route { shard: ShardId(999), epoch: route.epoch };
    let e = leader.put(unknown, session(8), &key, b"{}", None).await.unwrap_err();
    assert_eq!(e, ApiError::ShardNotFound { shard: ShardId(999) });
    // Failed compare-and-set: must not exist / wrong version.
    let e = leader.put(route, session(9), &key, br#"{"n":2}"#, Some(0)).await.unwrap_err();
    assert_eq!(e, ApiError::ConditionFailed { current_version: v1 });
    let e = leader.put(route, session(10), &key, br#"{"n":2}"#, Some(v1 + 100)).await.unwrap_err();
    assert_eq!(e, ApiError::ConditionFailed { current_version: v1 });
    let e = leader.delete(route, session(11), &key, Some(v1 + 1)).await.unwrap_err();
    assert_eq!(e, ApiError::ConditionFailed { current_version: v1 });
    let e = leader.put(route, session(12), b"gamma", br#"{}"#, Some(5)).await.unwrap_err();
    assert_eq!(e, ApiError::ConditionFailed { current_version: 0 });
    // A batch with one bad item writes none of them.
    let items = vec![(b"delta".to_vec(), br#"{"ok":true}"#.to_vec()), (b"epsilon".to_vec(), b"nope".to_vec())];
    let e = leader.batch_put(route, session(13), items).await.unwrap_err();
    assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
    // A scan over the limit.
    let e = leader.scan(route, ScanRange::default(), 10_001, false, false).await.unwrap_err();
    assert!(matches!(e, ApiError::InvalidArgument(_)), "{e}");
    // A follower redirects to the leader.
    let leader_id = status.leader.expect("leader");
    let follower = (0..3).find(|i| *i as u64 + 1 != leader_id.0).expect("a follower");
    let e = cluster.node_client(follower)?.put(route, session(14), &key, b"{}", None).await.unwrap_err();
    match e {
        ApiError::NotLeader { shard, leader: Some((id, addr)) } => {
            assert_eq!(shard, route.shard);
            assert_eq!(id, leader_id);
            assert_eq!(addr, cluster.addr(leader_id.0 as usize - 1));
        }
        other => panic!("expected NOT_LEADER with a hint, got {other}"),
    }

    assert_eq!(everything(&cluster).await?, before, "rejected requests changed the data");

    // A conditional write at the right version succeeds.
    let v2 = leader.put(route, session(15), &key, br#"{"n":2}"#, Some(v1)).await?;
    assert!(v2 > v1);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retried_write_is_applied_once() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, 1).await?;
    let (leader, status) = leader_of(&cluster, b"k").await?;
    let route = route_of(&status);
    let s = Session { client_id: 7, seq: 1, acked_below: 1 };
    let v1 = leader.put(route, s, b"k", br#"{"a":1}"#, None).await?;
    // Another client changes the document.
    let v2 = leader.put(route, Session { client_id: 8, seq: 1, acked_below: 1 }, b"k", br#"{"b":2}"#, None).await?;
    // The first client retries its write (same session and sequence number), as
    // after a timeout: it gets the first answer, and the document is not reverted.
    let again = leader.put(route, s, b"k", br#"{"a":1}"#, None).await?;
    assert_eq!(again, v1);
    let doc = leader.get(route, b"k", false).await?.expect("document");
    assert_eq!(doc.version, v2);
    assert_eq!(doc.value, br#"{"b":2}"#);
    // Once acknowledged (acked_below moves past it), the next sequence number runs.
    let s2 = Session { client_id: 7, seq: 2, acked_below: 2 };
    let v3 = leader.put(route, s2, b"k", br#"{"a":3}"#, None).await?;
    assert!(v3 > v2);
    // Followers converge on the same document.
    for i in 0..3 {
        let c = cluster.node_client(i)?;
        wait_until("the follower to apply", Duration::from_secs(10), || {
            let c = c.clone();
            async move { (c.get(route, b"k", true).await.ok()??.version == v3).then_some(()) }
        })
        .await?;
    }
    cluster.shutdown().await;
    Ok(())
}
