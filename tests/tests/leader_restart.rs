//! Regression test for the first 30-minute soak's finding (RFC 006): a shard
//! leader that crashed with log entries its followers had stored but its own
//! disk had not, and came back before any follower's election timeout, must
//! not lead again in the same term. If it does (openraft's leader restore),
//! its next entries take the log ids of the entries it lost; the followers
//! already hold entries with those ids, keep theirs, and acknowledge; the
//! leader commits and acknowledges writes that no follower stored. The soak
//! saw it as acknowledged set elements missing from every later scan once
//! leadership had moved on.
//!
//! Here the leader's durable commits are held back while writes are in
//! flight, so its followers store entries its disk does not have; it crashes,
//! losing them, and restarts at once. Writes acknowledged after the restart must then be on
//! every replica, and the replicas must agree.

use std::collections::BTreeSet;
use std::time::Duration;

use cairn_node::node::DB_FILE;
use cairn_proto::{KeyRange, ShardId};
use cairn_tests::{TestCluster, wait_until};

const SHARD: ShardId = ShardId(1);

/// The documents of `SHARD` on node `i`, read from its database.
fn keys_on(cluster: &TestCluster, i: usize) -> anyhow::Result<BTreeSet<String>> {
    let node = cluster.node(i).expect("running");
    let docs = node.shared.storage.read_docs(SHARD, |_, r| r.scan(&KeyRange::full(), usize::MAX))?;
    Ok(docs.0.into_iter().map(|(k, _)| String::from_utf8_lossy(&k).into_owned()).collect())
}

/// The replica of `SHARD` on node `i`, if it runs.
fn status(cluster: &TestCluster, i: usize) -> Option<cairn_proto::ShardStatus> {
    cluster.node(i)?.shared.shard_statuses().into_iter().find(|s| s.descriptor.id == SHARD)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_back_before_an_election_keeps_the_log_its_followers_hold() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("warn").with_test_writer().try_init();
    let mut cluster = TestCluster::start_with(3, 1, |c| {
        cairn_node::test_hooks::lose_unsynced_writes(&c.data_dir.join(DB_FILE));
        // Followers wait long enough for the leader to be back first, as in
        // the soak (its leader was down 1.5 s).
        c.raft.election_timeout_min_ms = 4_000;
        c.raft.election_timeout_max_ms = 5_000;
    })
    .await?;
    let client = cluster.client()?;
    client.put(b"before", b"{}", None).await?;

    let leader = cluster.leaders()[&SHARD].0 as usize - 1;
    let leader_db = cluster.configs[leader].data_dir.join(DB_FILE);
    let before = status(&cluster, leader).expect("leader's replica").last_log_index;

    // The leader's log appends wait in its writer; the entries go out to the
    // followers, who store them.
    let hold = cairn_node::test_hooks::hold_durable_commits(&leader_db);
    let mut in_flight = Vec::new();
    for i in 0..5 {
        let client = cluster.client()?;
        in_flight.push(tokio::spawn(async move {
            tokio::time::timeout(Duration::from_secs(2), client.put(format!("unsynced-{i}").as_bytes(), b"{}", None))
                .await
        }));
    }
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    wait_until("the followers to store the writes", Duration::from_secs(20), || async {
        let last = status(&cluster, leader)?.last_log_index;
        (last >= before + 5 && followers.iter().all(|f| status(&cluster, *f).is_some_and(|s| s.last_log_index == last)))
            .then_some(())
    })
    .await?;
    cluster.crash(leader).await;
    drop(hold);
    for w in in_flight {
        // Their outcome is unknown to the writers; whatever it is, the replicas must agree.
        let _ = w.await?;
    }
    cluster.restart(leader).await?;
    // Without restored leadership the shard elects again (after the
    // followers' timeout); writes go to whoever wins.
    cluster.wait_for_leaders(Duration::from_secs(30)).await?;

    let mut acknowledged = vec!["before".to_string()];
    for i in 0..5 {
        let key = format!("after-{i}");
        client.put(key.as_bytes(), b"{}", None).await?;
        acknowledged.push(key);
    }
    // Every replica applies everything its leader has.
    wait_until("the replicas to catch up", Duration::from_secs(30), || async {
        let statuses: Vec<_> = (0..3).map(|i| status(&cluster, i)).collect::<Option<Vec<_>>>()?;
        let last = statuses.iter().map(|s| s.last_log_index).max()?;
        statuses.iter().all(|s| s.applied_index == last).then_some(())
    })
    .await?;
    let replicas: Vec<BTreeSet<String>> = (0..3).map(|i| keys_on(&cluster, i)).collect::<Result<_, _>>()?;
    for (i, keys) in replicas.iter().enumerate() {
        for key in &acknowledged {
            assert!(keys.contains(key), "node {}: acknowledged {key} is missing; it holds {keys:?}", i + 1);
        }
        assert_eq!(keys, &replicas[0], "node {} and node 1 disagree", i + 1);
    }
    cluster.shutdown().await;
    Ok(())
}
