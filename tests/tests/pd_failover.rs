//! SIGKILL of the placement driver leader's process while clients run: a new
//! PD leader serves routes within a few election timeouts, and the running
//! `cairn-client` users see no failed call (failover shows only as retries).
//! Every acknowledged write is readable afterwards.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::{Client, ClientConfig};
use cairn_tests::wait_until;

const WRITERS: usize = 8;
const READERS: usize = 4;
/// Raft election timeouts of the test config are 600-1200 ms; "a few" of them.
const PD_FAILOVER_DEADLINE: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_pd_leader_while_clients_run() -> anyhow::Result<()> {
    let mut cluster = common::start(3, 4).await?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut done: BTreeMap<String, String> = BTreeMap::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{:02x}/w{w}/{n}", (n * 29 + w as u64 * 7) % 256);
                let value = format!(r#"{{"w":{w},"n":{n}}}"#);
                client.put(&key, &value).await.with_context(|| format!("put {key}"))?;
                acked.fetch_add(1, Ordering::Relaxed);
                done.insert(key, value);
                n += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (client, stop) = (client.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("{:02x}/w{}/0", (r * 64) % 256, r % WRITERS);
                client.get(&key).await.with_context(|| format!("get {key}"))?;
                reads += 1;
            }
            anyhow::Ok(reads)
        }));
    }

    wait_until("500 acknowledged writes", Duration::from_secs(60), || {
        let n = acked.load(Ordering::Relaxed);
        async move { (n >= 500).then_some(()) }
    })
    .await?;
    let pd = cluster.pd_client()?;
    let before = pd.cluster(0).await?;
    let (leader_id, _) = before.pd_leader.clone().context("a PD leader")?;
    let victim = cluster.nodes.iter().position(|n| n.id == leader_id).context("the PD leader is a node")?;
    let acked_at_kill = acked.load(Ordering::Relaxed);
    cluster.kill(victim)?;
    let killed = Instant::now();

    // A new PD leader answers routing questions (through any surviving member).
    let survivor = cluster.addr((victim + 1) % 3);
    let survivor_pd = cairn_client::PdClient::new([survivor.as_str()], ClientConfig::default())?;
    let new_leader = wait_until("a new PD leader serving routes", PD_FAILOVER_DEADLINE, || async {
        let status = survivor_pd.cluster(0).await.ok()?;
        let (id, _) = status.pd_leader?;
        if id == leader_id {
            return None;
        }
        survivor_pd.locate(b"user:1").await.ok()?;
        Some(id)
    })
    .await?;
    let failover = killed.elapsed();
    println!("killed PD leader node {leader_id}; node {new_leader} serves routes after {failover:?}");

    // The clients keep going: more writes are acknowledged after the kill.
    wait_until("500 more acknowledged writes", Duration::from_secs(60), || {
        let n = acked.load(Ordering::Relaxed);
        async move { (n >= acked_at_kill + 500).then_some(()) }
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    let mut written = BTreeMap::new();
    for w in writers {
        written.extend(w.await.context("writer panicked")??);
    }
    let mut reads = 0;
    for r in readers {
        reads += r.await.context("reader panicked")??;
    }
    println!("{} writes and {reads} reads, none failed", written.len());

    for (key, value) in &written {
        let doc = client.get(key).await?.with_context(|| format!("{key} lost"))?;
        anyhow::ensure!(doc.value == value.as_bytes(), "{key}: read {:?}", String::from_utf8_lossy(&doc.value));
    }
    let status = pd.cluster(0).await?;
    anyhow::ensure!(status.shards.len() == 4, "{status:?}");
    client.shutdown().await;
    cluster.finish();
    Ok(())
}
