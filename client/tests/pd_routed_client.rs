//! `Client` (routed by the placement driver) against the in-process mock cluster of
//! `mock/mod.rs`: mock nodes that check every route, and mock PD members that serve the
//! shard map, stream its changes, and can go away. The tests change the map under a
//! running client and assert on what the nodes and the PD received.

mod mock;

use std::time::Duration;

use cairn_client::{Client, ClientConfig, Error, KeyRange, ScanOptions, Versioned};
use cairn_proto::{ErrorCode, NodeId, ShardId};
use futures::{StreamExt, TryStreamExt};
use mock::{Cluster, Spec, dead_addr, fast_config, start, start_cluster, wait_until};
use serde::{Deserialize, Serialize};

async fn connect(cluster: &Cluster) -> Client {
    Client::connect_with(cluster.pd_list(), fast_config()).await.expect("connect")
}

fn keys_of(docs: &[cairn_proto::Document]) -> Vec<String> {
    docs.iter().map(|d| String::from_utf8(d.key.clone()).unwrap()).collect()
}

/// Four shards `["", f)`, `[f, m)`, `[m, t)`, `[t, +inf)` on three nodes, led by nodes
/// 2, 3, 1, 2.
async fn four_shards(pd_members: usize) -> Cluster {
    start(Spec { nodes: 3, splits: vec![b"f", b"m", b"t"], pd_members }).await
}

#[tokio::test]
async fn routes_each_key_to_its_shards_leader() {
    let cluster = four_shards(1).await;
    let client = connect(&cluster).await;
    assert_eq!(client.cached_shards().len(), 4);
    assert_eq!(client.cached_shards().iter().map(|r| r.descriptor.id.0).collect::<Vec<_>>(), [1, 2, 3, 4]);

    let keys = ["apple", "fig", "grape", "mango", "pear", "tomato", "zucchini", "f"];
    for (i, key) in keys.iter().enumerate() {
        client.put(key, format!("{{\"i\":{i}}}")).await.unwrap();
    }
    for (i, key) in keys.iter().enumerate() {
        let doc = client.get(key).await.unwrap().expect("written");
        assert_eq!(doc.value, format!("{{\"i\":{i}}}").into_bytes());
    }
    // Every request went to the leader of the key's shard, first time.
    let received = cluster.received_since(0);
    assert_eq!(received.len(), keys.len() * 2);
    for (r, key) in received.iter().zip(keys.iter().chain(keys.iter())) {
        let shard = cluster.shard_of(key.as_bytes());
        assert_eq!((r.shard, r.node, r.routing_error), (shard, cluster.leader_of(shard), None), "{key}: {r:?}");
    }
    let pd = cluster.pd_calls();
    assert_eq!((pd.list_shards, pd.locate), (1, 0), "the map loaded at connect was enough");
}

#[tokio::test]
async fn follows_not_leader_hints() {
    let cluster = start_cluster().await;
    cluster.st().hide_leaders = true;
    let client = connect(&cluster).await;
    // Shard 1 is led by node 2; with no leader known the first attempt asks node 1.
    client.put("a", "1").await.unwrap();
    let received = cluster.received_since(0);
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!((received[0].node, received[0].routing_error), (NodeId(1), Some(ErrorCode::NotLeader)));
    assert_eq!((received[1].node, received[1].routing_error), (NodeId(2), None));
    // The hint is cached: the read goes straight to the leader.
    assert_eq!(client.get("a").await.unwrap().unwrap().value, b"1");
    let received = cluster.received_since(2);
    assert_eq!(received.len(), 1);
    assert_eq!((received[0].node, received[0].routing_error), (NodeId(2), None));
    let hinted = client.cached_shards().into_iter().find(|r| r.descriptor.id == ShardId(1)).unwrap();
    assert_eq!(hinted.leader.map(|l| l.0), Some(NodeId(2)));
}

#[tokio::test]
async fn an_epoch_mismatch_after_a_split_refreshes_from_the_pd() {
    let cluster = start_cluster().await;
    let client = connect(&cluster).await;
    client.put("x", "1").await.unwrap();
    // Shard 2 = [m, +inf) splits at "t"; shard 3 = [t, +inf) is led by node 2. The watch
    // is not told, so the client learns it from the node's answer and the PD.
    cluster.split(2, b"t", 3);
    cluster.move_leader(3, 2);
    let since = cluster.received_count();
    let list_before = cluster.pd_calls().list_shards;

    client.put("x", "2").await.unwrap();
    let received = cluster.received_since(since);
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!((received[0].shard, received[0].routing_error), (ShardId(2), Some(ErrorCode::EpochMismatch)));
    assert_eq!((received[1].shard, received[1].node, received[1].routing_error), (ShardId(3), NodeId(2), None));
    assert!(cluster.pd_calls().locate >= 1, "the PD was asked");
    assert_eq!(cluster.pd_calls().list_shards, list_before, "one Locate, not a whole listing");

    // Both halves are now cached at the new epoch: no more routing errors.
    let shards = client.cached_shards();
    assert_eq!(shards.iter().map(|r| r.descriptor.id.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(shards[1].descriptor.range, KeyRange::new("m", "t"));
    let since = cluster.received_count();
    client.put("p", "3").await.unwrap();
    assert_eq!(client.get("x").await.unwrap().unwrap().value, b"2");
    assert!(cluster.received_since(since).iter().all(|r| r.routing_error.is_none()));
}

#[tokio::test]
async fn scans_cross_shards_in_order_without_repeats_while_the_map_changes() {
    let cluster = start_cluster().await;
    let client = connect(&cluster).await;
    let mut keys: Vec<String> =
        (0..13).map(|i| format!("a{i:02}")).chain((0..11).map(|i| format!("p{i:02}"))).collect();
    keys.push("m".into());
    client.batch_put(keys.iter().map(|k| (k.clone(), "{}"))).await.unwrap();
    keys.sort();

    // Plain scans: whole range, a window, a prefix, a limit, an empty range.
    let all: Vec<_> = client.scan(KeyRange::full()).try_collect().await.unwrap();
    assert_eq!(keys_of(&all), keys);
    let window: Vec<_> = client.scan(KeyRange::new("a05", "p03")).try_collect().await.unwrap();
    assert_eq!(keys_of(&window), keys[5..17]);
    let p: Vec<_> = client.scan_prefix("p").try_collect().await.unwrap();
    assert_eq!(keys_of(&p), keys.iter().filter(|k| k.starts_with('p')).cloned().collect::<Vec<_>>());
    let options = ScanOptions { limit: Some(7), page_docs: 3 };
    let limited: Vec<_> = client.scan_with(KeyRange::full(), options).try_collect().await.unwrap();
    assert_eq!(keys_of(&limited), keys[..7]);
    assert_eq!(client.scan_prefix("q").count().await, 0);

    // The map changes mid-scan: shard 1 splits ahead of the cursor (unannounced), and
    // shard 2's leader moves (announced).
    let mut stream = client.scan_with(KeyRange::full(), ScanOptions { limit: None, page_docs: 3 });
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(stream.next().await.unwrap().unwrap());
    }
    cluster.split(1, b"a08", 3);
    cluster.move_leader(2, 2);
    cluster.publish(&[2], &[]);
    while let Some(doc) = stream.next().await {
        seen.push(doc.unwrap());
    }
    assert_eq!(keys_of(&seen), keys, "every key once, in order");

    // Now a split behind the cursor: shard 2 = [m, +inf) splits at "p02" after the scan
    // passed it, so the cursor's cached route is stale.
    let mut stream = client.scan_with(KeyRange::prefix(b"p"), ScanOptions { limit: None, page_docs: 2 });
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(stream.next().await.unwrap().unwrap());
    }
    cluster.split(2, b"p02", 4);
    cluster.move_leader(4, 1);
    let since = cluster.received_count();
    while let Some(doc) = stream.next().await {
        seen.push(doc.unwrap());
    }
    assert_eq!(keys_of(&seen), keys.iter().filter(|k| k.starts_with('p')).cloned().collect::<Vec<_>>());
    let errors: Vec<_> = cluster.received_since(since).into_iter().filter_map(|r| r.routing_error).collect();
    assert!(errors.contains(&ErrorCode::EpochMismatch), "the stale route was refreshed: {errors:?}");
}

#[tokio::test]
async fn batches_fan_out_one_request_per_shard_and_keep_the_order() {
    let cluster = four_shards(1).await;
    let client = connect(&cluster).await;
    let items = [("z1", "1"), ("a1", "2"), ("n1", "3"), ("g1", "4"), ("a2", "5"), ("z2", "6"), ("n2", "7")];
    let versions = client.batch_put(items).await.unwrap();
    assert_eq!(versions.len(), items.len());
    // Items of one shard share the version of their one atomic write.
    assert_eq!(versions[0], versions[5]);
    assert_eq!(versions[1], versions[4]);
    assert_eq!(versions[2], versions[6]);
    assert!(versions.iter().all(|v| *v > 0));
    let received = cluster.received_since(0);
    assert_eq!(received.len(), 4, "one request per shard: {received:?}");
    let mut shards: Vec<u64> = received.iter().map(|r| r.shard.0).collect();
    shards.sort();
    assert_eq!(shards, [1, 2, 3, 4]);
    assert!(received.iter().all(|r| r.op == "batch_put" && r.routing_error.is_none()));

    let asked = ["n2", "missing", "a1", "z2", "g1", "a1"];
    let since = cluster.received_count();
    let docs = client.batch_get(asked).await.unwrap();
    let values: Vec<Option<String>> =
        docs.iter().map(|d| d.as_ref().map(|d| String::from_utf8(d.value.clone()).unwrap())).collect();
    let expected = [Some("7"), None, Some("2"), Some("6"), Some("4"), Some("2")];
    assert_eq!(values, expected.map(|v| v.map(String::from)));
    assert_eq!(docs[0].as_ref().unwrap().version, versions[6]);
    // Shards 3 (n2, missing), 1 (a1 twice), 4 (z2) and 2 (g1): one request each.
    assert_eq!(cluster.received_since(since).len(), 4);

    // Shard 4 = [t, +inf) splits at "z2" unannounced: the batch is regrouped.
    cluster.split(4, b"z2", 5);
    cluster.move_leader(5, 3);
    let docs = client.batch_get(["z1", "z2", "a1"]).await.unwrap();
    let values: Vec<&[u8]> = docs.iter().map(|d| d.as_ref().unwrap().value.as_slice()).collect();
    assert_eq!(values, [&b"1"[..], b"6", b"2"]);
    let versions = client.batch_put([("z1", "8"), ("z3", "9")]).await.unwrap();
    assert_ne!(versions[0], versions[1], "z1 and z3 are now in different shards");
    assert_eq!(client.get("z3").await.unwrap().unwrap().value, b"9");
    assert!(client.batch_get(Vec::<String>::new()).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_write_retried_after_unavailable_keeps_its_session_seq() {
    let cluster = start_cluster().await;
    let client = connect(&cluster).await;
    client.put("k", "0").await.unwrap();
    let (applies_before, seen_before) = {
        let mut st = cluster.st();
        st.fail_before_apply = 1;
        st.fail_after_apply = 2;
        (st.applies, st.sessions_seen.len())
    };
    let version = client.put("k", "1").await.unwrap();
    {
        let st = cluster.st();
        assert_eq!(st.applies, applies_before + 1, "the retries were deduplicated");
        assert_eq!(st.data[&b"k".to_vec()], (b"1".to_vec(), version), "the retry returned the first apply's version");
        let sessions = &st.sessions_seen[seen_before..];
        assert_eq!(sessions.len(), 4, "failed before apply, applied and failed twice, answered: {sessions:?}");
        assert!(sessions.iter().all(|s| s.seq == sessions[0].seq), "one seq across retries: {sessions:?}");
        assert!(sessions.iter().all(|s| s.client_id == client.client_id() && s.acked_below <= s.seq));
    }

    // The same for one shard's part of a batch.
    let (applies_before, seen_before) = {
        let mut st = cluster.st();
        st.fail_after_apply = 1;
        (st.applies, st.sessions_seen.len())
    };
    let versions = client.batch_put([("a", "1"), ("b", "2")]).await.unwrap();
    let st = cluster.st();
    assert_eq!(st.applies, applies_before + 1);
    let sessions = &st.sessions_seen[seen_before..];
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].seq, sessions[1].seq);
    assert_eq!(st.data[&b"b".to_vec()].1, versions[1]);
}

#[tokio::test]
async fn a_hint_naming_a_node_that_just_failed_is_not_followed_at_once() {
    // Shard 1 = ["", m) on nodes 1-3, led by node 1 per the PD and per its followers.
    // Node 1 dies; its followers keep naming it until, four requests later, the first
    // live replica asked wins the election.
    let cluster = start(Spec { nodes: 3, splits: vec![b"m"], pd_members: 1 }).await;
    cluster.move_leader(1, 1);
    let client = connect(&cluster).await;
    cluster.kill_node(1);
    cluster.elect_after(1, 4);
    let since = cluster.received_count();

    let result = client.put("a", "1").await;
    let received = cluster.received_since(since);
    assert!(received.iter().all(|r| r.shard == ShardId(1) && r.op == "put"), "{received:?}");
    // (node, answer) of every attempt.
    let attempts: Vec<_> = received.iter().map(|r| (r.node, r.routing_error)).collect();
    let (dead, unavailable, not_leader) = (NodeId(1), Some(ErrorCode::Unavailable), Some(ErrorCode::NotLeader));
    assert!(attempts.len() >= 3, "{attempts:?}");
    // The cached leader is dead; a follower names it.
    assert_eq!(attempts[0], (dead, unavailable), "{attempts:?}");
    assert!(attempts[1].0 != dead && attempts[1].1 == not_leader, "{attempts:?}");
    // That hint names the node that just failed: another replica is asked, not node 1.
    assert!(attempts[2].0 != dead, "the hint to the node that just failed was followed at once: {attempts:?}");
    assert_eq!(attempts[2].1, not_leader, "{attempts:?}");
    assert_eq!(attempts.len(), 5, "{attempts:?}");
    // A second hint to it is followed (the failure may have been passing); it is still
    // dead, so a live replica is asked next, after the election: it leads now.
    assert_eq!(attempts[3], (dead, unavailable), "{attempts:?}");
    assert!(attempts[4].0 != dead && attempts[4].1.is_none(), "{attempts:?}");
    result.expect("the put succeeds on the new leader");
    assert_eq!(cluster.leader_of(ShardId(1)), attempts[4].0);
    assert_eq!(client.get("a").await.unwrap().unwrap().value, b"1");
}

#[tokio::test]
async fn gives_up_with_the_last_cause_when_attempts_or_time_run_out() {
    let cluster = start_cluster().await;
    let client = connect(&cluster).await;
    cluster.st().fail_before_apply = 1000;
    let err = client.with_max_attempts(3).put("k", "1").await.unwrap_err();
    let Error::Unavailable(message) = &err else { panic!("{err:?}") };
    assert!(message.contains("3 attempt(s)") && message.contains("injected before apply"), "{message}");
    assert_eq!(cluster.st().applies, 0);

    let short = client.with_operation_timeout(Duration::from_millis(200)).with_max_attempts(u32::MAX);
    let err = short.put("k", "1").await.unwrap_err();
    assert!(matches!(&err, Error::DeadlineExceeded(m) if m.contains("injected before apply")), "{err:?}");

    // A routing error that may not be retried is reported as Unavailable too. A fresh
    // client caches node 2 as shard 1's leader; the leadership then moves unannounced.
    cluster.st().fail_before_apply = 0;
    let client = connect(&cluster).await;
    cluster.move_leader(1, 1);
    let err = client.with_max_attempts(1).put("a", "1").await.unwrap_err();
    assert!(matches!(&err, Error::Unavailable(m) if m.contains("NOT_LEADER")), "{err:?}");
}

#[tokio::test]
async fn fails_over_when_the_first_pd_member_is_dead() {
    let cluster = start_cluster().await;
    let endpoints = vec![dead_addr().await, cluster.pd_addrs[0].clone()];
    let client = Client::connect_with(endpoints, fast_config()).await.expect("the second member answers");
    assert_eq!(client.cached_shards().len(), 2);
    client.put("a", "1").await.unwrap();
    assert_eq!(client.get("a").await.unwrap().unwrap().value, b"1");
    wait_until("the watch subscribed through the live member", || cluster.open_watchers() == 1).await;
}

#[tokio::test]
async fn the_watch_moves_to_another_member_when_one_goes_away() {
    let cluster = start(Spec { nodes: 2, splits: vec![b"m"], pd_members: 2 }).await;
    let client = connect(&cluster).await;
    wait_until("the watch is on member 0", || {
        let watches = cluster.st().pd_calls[0].watch;
        watches == 1 && cluster.open_watchers() == 1
    })
    .await;
    cluster.kill_pd(0);
    // Shard 2's leader moves from node 1 to node 2 while the client is re-subscribing.
    cluster.move_leader(2, 2);
    let revision = cluster.publish(&[2], &[]);
    wait_until("the client caught up through member 1", || client.shard_map_revision() == revision).await;
    assert!(cluster.st().pd_calls[1].watch >= 1);
    let since = cluster.received_count();
    client.put("x", "1").await.unwrap();
    let received = cluster.received_since(since);
    assert_eq!(received.len(), 1, "straight to the new leader: {received:?}");
    assert_eq!((received[0].node, received[0].routing_error), (NodeId(2), None));
    // Operations that need the PD use the live member too.
    assert_eq!(client.refresh_shard_map().await.unwrap(), revision);
}

#[tokio::test]
async fn a_watch_event_updates_the_cache_without_asking_the_pd() {
    let cluster = start_cluster().await;
    let client = connect(&cluster).await;
    wait_until("the watch subscribed", || cluster.open_watchers() == 1).await;
    let before = cluster.pd_calls();

    cluster.move_leader(1, 1);
    cluster.split(2, b"t", 3);
    cluster.move_leader(3, 2);
    let revision = cluster.publish(&[1, 2, 3], &[]);
    wait_until("the event was applied", || client.shard_map_revision() == revision).await;
    let shards = client.cached_shards();
    assert_eq!(shards.iter().map(|r| r.descriptor.id.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(shards[0].leader.as_ref().map(|l| l.0), Some(NodeId(1)));

    let since = cluster.received_count();
    client.put("a", "1").await.unwrap();
    client.put("x", "2").await.unwrap();
    let received = cluster.received_since(since);
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.routing_error.is_none()), "{received:?}");
    assert_eq!((received[1].shard, received[1].node), (ShardId(3), NodeId(2)));
    let after = cluster.pd_calls();
    assert_eq!((after.list_shards, after.locate), (before.list_shards, before.locate), "no ListShards, no Locate");
}

#[tokio::test]
async fn the_watch_stops_with_the_last_clone_or_on_shutdown() {
    let cluster = start_cluster().await;
    let client = connect(&cluster).await;
    let clone = client.clone();
    wait_until("the watch subscribed", || cluster.open_watchers() == 1).await;
    drop(client);
    clone.put("a", "1").await.unwrap();
    assert_eq!(cluster.open_watchers(), 1, "a clone keeps the watch");
    drop(clone);
    wait_until("the watch stream was closed", || cluster.open_watchers() == 0).await;

    let client = connect(&cluster).await;
    wait_until("the watch subscribed", || cluster.open_watchers() == 1).await;
    client.shutdown().await;
    wait_until("the watch stream was closed", || cluster.open_watchers() == 0).await;
    // Operations still work after shutdown; routes come from the cache and the PD.
    assert_eq!(client.get("a").await.unwrap().unwrap().value, b"1");
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Account {
    owner: String,
    balance: i64,
}

#[tokio::test]
async fn typed_errors_and_json_helpers() {
    let cluster = start_cluster().await;
    let client = connect(&cluster).await;

    let v1 = client.put_if_version("acct:1", r#"{"owner":"ada","balance":5}"#, 0).await.unwrap();
    match client.put_if_version("acct:1", "{}", 0).await {
        Err(Error::ConditionFailed { current_version }) => assert_eq!(current_version, v1),
        other => panic!("expected ConditionFailed, got {other:?}"),
    }
    let stale = client.put_if_version("acct:1", "{}", v1 + 100).await.unwrap_err();
    assert_eq!(stale.current_version(), Some(v1));
    assert!(!stale.is_retryable());

    let Versioned { value, version } = client.get_json_versioned::<Account>("acct:1").await.unwrap().unwrap();
    assert_eq!((value.owner.as_str(), value.balance, version), ("ada", 5, v1));
    let updated = Account { owner: "ada".into(), balance: 7 };
    let v2 = client.put_json_if_version("acct:1", &updated, version).await.unwrap();
    assert!(matches!(
        client.put_json_if_version("acct:1", &updated, version).await,
        Err(Error::ConditionFailed { current_version }) if current_version == v2
    ));
    assert_eq!(client.get_json::<Account>("acct:1").await.unwrap(), Some(updated));
    assert_eq!(client.get_json::<Account>("acct:404").await.unwrap(), None);

    client.put("acct:2", "[1,2]").await.unwrap();
    let err = client.get_json::<Account>("acct:2").await.unwrap_err();
    assert!(matches!(&err, Error::Json { key, .. } if key == "acct:2"), "{err:?}");

    assert!(matches!(
        client.delete_if_version("acct:1", v1).await,
        Err(Error::ConditionFailed { current_version }) if current_version == v2
    ));
    assert!(client.delete_if_version("acct:1", v2).await.unwrap());
    assert!(!client.delete("acct:1").await.unwrap());
    assert!(client.delete("acct:2").await.unwrap());
}

#[tokio::test]
async fn the_pd_client_reports_the_cluster() {
    let cluster = four_shards(1).await;
    let client = connect(&cluster).await;
    let status = client.pd().cluster(0).await.unwrap();
    assert_eq!((status.nodes.len(), status.shards.len(), status.cluster_id), (3, 4, 1));
    assert_eq!(cluster.pd_calls().get_cluster, 1);
    let config = ClientConfig { max_attempts: 0, ..fast_config() };
    assert!(matches!(Client::connect_with(cluster.pd_list(), config).await, Err(Error::InvalidArgument(_))));
}
