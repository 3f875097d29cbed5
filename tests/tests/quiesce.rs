//! Idle groups go quiescent (no ticks, no heartbeats), wake for requests, and
//! still fail over when the node leading them dies (docs/rfcs/001).

use std::time::Duration;

use cairn_tests::{TestCluster, wait_until};

fn all_quiescent(cluster: &TestCluster) -> Option<()> {
    cluster.running().all(|n| n.shared.registry.all().iter().all(|r| r.group.is_quiescent())).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_groups_sleep_wake_and_fail_over() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("cairn_node=info,openraft=error").with_test_writer().try_init();
    let mut cluster = TestCluster::start_with(3, 4, |c| {
        c.raft.quiesce_after_ms = 1_000;
        c.raft.peer_ping_interval_ms = 200;
        c.raft.peer_down_after_ms = 1_000;
    })
    .await?;
    let client = cluster.client()?;
    let keys: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i * 0x40 + 1, b'k']).collect();
    for k in &keys {
        client.put(k, br#"{"v":1}"#, None).await?;
    }
    wait_until("every replica to go quiescent", Duration::from_secs(30), || async { all_quiescent(&cluster) }).await?;

    // A request wakes the group it touches and is served.
    let v2 = client.put(&keys[0], br#"{"v":2}"#, None).await?;
    assert_eq!(client.get(&keys[0]).await?.expect("doc").version, v2);
    wait_until("quiescent again", Duration::from_secs(30), || async { all_quiescent(&cluster) }).await?;

    // The node leading most (sleeping) groups dies: the others notice through
    // their pings, wake those groups and elect new leaders.
    let victim = cluster.busiest_leader().expect("a leader");
    cluster.crash(victim).await;
    cluster.wait_for_leaders(Duration::from_secs(30)).await?;
    for k in &keys {
        client.put(k, br#"{"v":3}"#, None).await?;
        assert_eq!(client.get(k).await?.expect("doc").value, br#"{"v":3}"#);
    }
    cluster.shutdown().await;
    Ok(())
}
