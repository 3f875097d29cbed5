//! Crashes that lose unsynced writes (RFC 006): every node's database loses
//! whatever was written but not yet synced when its node crashes, as a disk
//! losing power would. While 8 processes read, write and compare-and-set
//! through routed clients, nodes crash one at a time, then all three at once,
//! and restart. Writes are acknowledged only once a majority has synced them,
//! and applies that ride on later syncs are replayed from the log, so the
//! history must stay linearizable: no acknowledged write lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cairn_client::{Client, ClientConfig};
use cairn_node::node::DB_FILE;
use cairn_tests::TestCluster;
use cairn_tests::chaos::linear;
use cairn_tests::chaos::register::{self, RegisterWorkload};
use cairn_tests::chaos::{Outcome, Recorder, Verdict};

const SEED: u64 = 33;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_when_crashes_lose_unsynced_writes() -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter("cairn_node=warn,openraft=error").with_test_writer().try_init();
    let mut cluster = TestCluster::start_with(3, 2, |c| {
        cairn_node::test_hooks::lose_unsynced_writes(&c.data_dir.join(DB_FILE));
    })
    .await?;
    let client = Client::connect_with(cluster.pd_endpoints(), ClientConfig::default()).await?;
    let recorder = Arc::new(Recorder::new());
    let stop = Arc::new(AtomicBool::new(false));
    let workload = RegisterWorkload { keys: 6, processes: 8, seed: SEED, ops_per_key: 1_000 };
    let running = tokio::spawn(register::run(client.clone(), workload, recorder.clone(), stop.clone()));

    let mut crashes = Vec::new();
    for i in [0, 2, 1] {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.crash(i).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        cluster.restart(i).await?;
        crashes.push(format!("node index {i}"));
    }
    // All at once: only what each node synced survives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..3 {
        cluster.crash(i).await;
    }
    for i in 0..3 {
        cluster.restart(i).await?;
    }
    crashes.push("all three at once".into());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    running.await?;

    // One more read of every key, now that everything is up.
    let history = recorder.history();
    let keys: std::collections::BTreeSet<String> = history.iter().map(|o| o.key.clone()).collect();
    for key in keys {
        let id = recorder.invoke(u64::MAX, &key, linear::RegIn::Read);
        let doc = client.get(&key).await?;
        let (value, version) = match doc {
            Some(d) => (register::decode_value(&d.value), d.version),
            None => (None, 0),
        };
        recorder.complete(id, Outcome::Ok, Some(linear::RegOut::Read { value, version }));
    }
    let history = recorder.history();
    let (report, ok) = linear::check_and_print(SEED, &history, &crashes.join(", "));
    assert!(ok >= 200, "the workload made progress");
    assert_eq!(report.verdict, Verdict::Valid);
    Ok(())
}
