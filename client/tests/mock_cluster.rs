//! `DirectClient` against an in-process mock cluster (see `mock/mod.rs`): two gRPC nodes
//! sharing one perfectly replicated state machine, with two shards split at "m". The mock
//! checks routes the way a real node must (shard, epoch, leadership, key range) and can
//! inject failures, so these tests cover the client's redirect, refresh, retry,
//! deduplication and scan walk.

mod mock;

use cairn_client::{ClientConfig, DirectClient};
use cairn_proto::{ApiError, NodeId, ShardId};
use mock::{fast_config, start_cluster};

#[tokio::test]
async fn reads_and_writes_route_to_each_shards_leader() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();

    let v1 = client.put(b"apple", b"{\"a\":1}", None).await.unwrap();
    let v2 = client.put(b"zebra", b"[1,2]", Some(0)).await.unwrap();
    assert!(v2 > v1);
    let doc = client.get(b"apple").await.unwrap().expect("apple exists");
    assert_eq!((doc.value.as_slice(), doc.version), (&b"{\"a\":1}"[..], v1));
    assert_eq!(client.get(b"nothing").await.unwrap(), None);

    // Compare-and-set failures are returned, not retried.
    let err = client.put(b"zebra", b"{}", Some(0)).await.unwrap_err();
    assert_eq!(err, ApiError::ConditionFailed { current_version: v2 });

    let (deleted, _) = client.delete(b"zebra", None).await.unwrap();
    assert!(deleted);
    let (deleted, _) = client.delete(b"zebra", None).await.unwrap();
    assert!(!deleted);

    let shards = client.shards().await.unwrap();
    assert_eq!(shards.iter().map(|s| s.descriptor.id).collect::<Vec<_>>(), [ShardId(1), ShardId(2)]);

    // Every session carried this client's id, and acked_below never passed its seq.
    let st = cluster.state.lock().unwrap();
    assert!(st.sessions_seen.iter().all(|s| s.client_id == client.client_id() && s.acked_below <= s.seq));
}

#[tokio::test]
async fn follows_leader_hints_when_the_list_names_no_leader() {
    let cluster = start_cluster().await;
    cluster.state.lock().unwrap().hide_leaders = true;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();
    // Shard 1 is led by node 2; the first attempt goes to node 1 and is redirected.
    client.put(b"a", b"1", None).await.unwrap();
    assert_eq!(cluster.state.lock().unwrap().requests, 2, "one redirect");
    // The hint is cached: the read goes straight to the leader.
    assert_eq!(client.get(b"a").await.unwrap().unwrap().value, b"1");
    assert_eq!(cluster.state.lock().unwrap().requests, 3);
}

#[tokio::test]
async fn refreshes_after_an_epoch_change_and_a_leader_move() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[1].clone(), fast_config()).unwrap();
    client.put(b"x", b"1", None).await.unwrap();
    {
        let mut st = cluster.state.lock().unwrap();
        st.shards[1].epoch.conf_ver += 1;
        st.leaders.insert(ShardId(2), NodeId(2));
    }
    client.put(b"x", b"2", None).await.unwrap();
    assert_eq!(client.get(b"x").await.unwrap().unwrap().value, b"2");
    let shards = client.shards().await.unwrap();
    assert_eq!(shards[1].descriptor.epoch.conf_ver, 2);
}

#[tokio::test]
async fn a_retried_write_is_applied_once() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();
    client.put(b"k", b"0", None).await.unwrap();
    let applies_before = cluster.state.lock().unwrap().applies;
    {
        let mut st = cluster.state.lock().unwrap();
        st.fail_before_apply = 1;
        st.fail_after_apply = 2;
    }
    let version = client.put(b"k", b"1", None).await.unwrap();
    let st = cluster.state.lock().unwrap();
    assert_eq!(st.applies, applies_before + 1, "the retries were deduplicated");
    assert_eq!(st.data[&b"k".to_vec()].1, version, "the retry returned the first apply's version");
    let last: Vec<_> = st.sessions_seen.iter().rev().take(4).collect();
    assert!(last.iter().all(|s| s.seq == last[0].seq), "one seq across retries: {last:?}");
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let cluster = start_cluster().await;
    let config = ClientConfig { max_attempts: 3, ..fast_config() };
    let client = DirectClient::new(cluster.addrs[0].clone(), config).unwrap();
    client.shards().await.unwrap();
    cluster.state.lock().unwrap().fail_before_apply = 100;
    let err = client.put(b"k", b"1", None).await.unwrap_err();
    // The leader failed; the client then tried its replicas, which pointed back at it.
    assert!(err.is_retryable(), "{err:?}");
    let st = cluster.state.lock().unwrap();
    assert_eq!(st.requests, 3);
    assert_eq!(st.applies, 0);
}

#[tokio::test]
async fn scans_walk_pages_and_shards_in_key_order() {
    let cluster = start_cluster().await;
    let client = DirectClient::new(cluster.addrs[0].clone(), fast_config()).unwrap();
    let mut keys: Vec<String> =
        (0..13).map(|i| format!("a{i:02}")).chain((0..11).map(|i| format!("p{i:02}"))).collect();
    keys.push("m".into());
    for k in &keys {
        client.put(k.as_bytes(), b"{}", None).await.unwrap();
    }
    keys.sort();
    let scanned = |docs: Vec<cairn_proto::Document>| -> Vec<String> {
        docs.into_iter().map(|d| String::from_utf8(d.key).unwrap()).collect()
    };

    assert_eq!(scanned(client.scan_range(b"", b"", 1000).await.unwrap()), keys);
    assert_eq!(scanned(client.scan_range(b"", b"", 7).await.unwrap()), keys[..7]);
    assert_eq!(scanned(client.scan_range(b"a05", b"p03", 1000).await.unwrap()), keys[5..17]);
    let p: Vec<String> = keys.iter().filter(|k| k.starts_with('p')).cloned().collect();
    assert_eq!(scanned(client.scan_prefix(b"p", 1000).await.unwrap()), p);
    assert!(client.scan_prefix(b"q", 10).await.unwrap().is_empty());
    assert!(client.scan_range(b"", b"", 0).await.unwrap().is_empty());
}
