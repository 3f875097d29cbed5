//! `cairn-client` against a real (in-process) cluster while shard leaders move:
//! 16 tasks write through `Client`; leaders are transferred again and again;
//! no call may fail to the caller and every acknowledged write must be
//! readable afterwards with the value written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_proto::{KeyRange, NodeId, OperatorKind, ShardId};
use cairn_tests::{TestCluster, wait_until};
use futures::StreamExt;

const WRITERS: usize = 16;
const SHARDS: u32 = 4;
const TRANSFERS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_transfers_under_16_writers_fail_no_call() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, SHARDS).await?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    let stop = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked: BTreeMap<String, (String, u64)> = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Keys spread over the whole key space, so every shard sees writes.
                let key = format!("{:02x}-w{w}-{n}", (n * 37 + w as u64 * 11) % 256);
                let value = format!(r#"{{"writer":{w},"n":{n}}}"#);
                let version = client.put(&key, &value).await.map_err(|e| anyhow::anyhow!("put {key}: {e}"))?;
                acked.insert(key, (value, version));
                n += 1;
            }
            anyhow::Ok(acked)
        }));
    }

    // Move every shard's leader around while the writers run, through the PD
    // (its own leader balancing may move leaders too; one operator per shard).
    let pd = cluster.pd_client()?;
    let mut transfers = 0;
    for round in 0..TRANSFERS {
        let shard = ShardId(1 + (round as u64 % SHARDS as u64));
        let current =
            wait_until("a leader", Duration::from_secs(20), || async { cluster.leaders().get(&shard).copied() })
                .await?;
        let node = cluster.running().find(|n| n.id() == current).expect("the leader runs");
        let replica = node.shared.registry.get(shard).expect("the leader hosts the shard");
        let target =
            replica.descriptor().replicas.iter().map(|r| r.node).find(|id| *id != current).expect("another voter");
        // Let some writes land under the current leader first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let kind = OperatorKind::TransferLeader { to: target };
        let op = wait_until("the PD to take the transfer", Duration::from_secs(20), || async {
            match pd.create_operator(shard, kind.clone()).await {
                Ok(op) => Some(op),
                Err(e) if e.to_string().contains("busy") => None,
                Err(e) => panic!("transfer refused: {e}"),
            }
        })
        .await?;
        let done = format!("operator {} on shard {shard} ({kind}) done", op.id);
        wait_until("the transfer to take effect", Duration::from_secs(20), || async {
            pd.cluster(64).await.ok()?.events.iter().any(|e| e.message == done).then_some(())
        })
        .await?;
        transfers += 1;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = BTreeMap::new();
    for w in writers {
        acked.extend(w.await??);
    }
    assert_eq!(transfers, TRANSFERS);
    assert!(acked.len() >= WRITERS * 4, "the writers made progress: {} writes", acked.len());

    // Every acknowledged write reads back with its value and version.
    for (key, (value, version)) in &acked {
        let doc = client.get(key).await?.unwrap_or_else(|| panic!("{key} lost"));
        assert_eq!((doc.value.as_slice(), doc.version), (value.as_bytes(), *version), "{key}");
    }
    // And a scan across all shards sees exactly the written keys, in order, once.
    let scanned: Vec<String> = client
        .scan(KeyRange::full())
        .map(|d| d.map(|d| String::from_utf8(d.key).expect("utf-8 keys")))
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    assert_eq!(scanned, acked.keys().cloned().collect::<Vec<_>>());
    let leaders: Vec<NodeId> = cluster.leaders().values().copied().collect();
    println!("{} writes acknowledged over {TRANSFERS} leader transfers; leaders now {leaders:?}", acked.len());
    client.shutdown().await;
    cluster.shutdown().await;
    Ok(())
}
