//! `cairn playground`: a local cluster as child processes of one command.
//!
//! Every node hosts shard replicas; the first three are also the placement
//! driver's members (`--initial-pd`), the others join with `--pd`. The data
//! directory is reused on the next start; `playground.json` lists the nodes
//! (id, pid, address, data directory, log). A child killed from outside stays
//! dead (it is reported, never restarted); Ctrl-C (or SIGTERM, SIGHUP), at any
//! moment including start-up, stops every child with SIGTERM, waits for it and
//! removes the listing.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug, Clone)]
pub struct PlaygroundArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    #[arg(long, default_value = "./cairn-data")]
    pub data_dir: PathBuf,
    /// The first node listens on 127.0.0.1:BASE_PORT, the next on BASE_PORT+1, ...
    #[arg(long, default_value_t = 7700)]
    pub base_port: u16,
    /// Shards the PD creates when the cluster is new (ignored for an existing data dir).
    #[arg(long, default_value_t = 8)]
    pub initial_shards: u32,
}

/// Members of the placement driver in a playground.
const PD_MEMBERS: usize = 3;

#[derive(Serialize)]
struct PlaygroundNode {
    id: u64,
    pid: u32,
    addr: String,
    pd_member: bool,
    data_dir: PathBuf,
    log: PathBuf,
}

#[derive(Serialize)]
struct PlaygroundFile {
    pd: Vec<String>,
    nodes: Vec<PlaygroundNode>,
}

pub async fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1 && args.nodes <= 50, "--nodes must be between 1 and 50");
    anyhow::ensure!(
        args.base_port as u32 + args.nodes <= u16::MAX as u32,
        "--base-port leaves no room for {} nodes",
        args.nodes
    );
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    std::fs::create_dir_all(&args.data_dir)?;
    // Listen for signals before any child exists, so that a signal at any
    // moment stops the children instead of orphaning them.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let addrs: Vec<String> = (0..args.nodes).map(|i| format!("127.0.0.1:{}", args.base_port + i as u16)).collect();
    let pd_addrs: Vec<String> = addrs.iter().take(PD_MEMBERS).cloned().collect();
    let initial_pd = pd_addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    let mut listed = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let dir = args.data_dir.join(format!("node-{}", i + 1));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("node.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut command = tokio::process::Command::new(&exe);
        command.args(["server", "--listen", addr]).arg("--data-dir").arg(&dir).args(["--pd", &pd_addrs.join(",")]);
        let pd_member = i < PD_MEMBERS;
        if pd_member {
            command.args(["--initial-pd", &initial_pd, "--initial-shards", &args.initial_shards.to_string()]);
            // A playground is for trying things: repair after 30 s, not 30 min.
            command.args(["--max-node-down-time", "30s"]);
        }
        let child = command
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=error,h2=warn".into()))
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {}", i + 1))?;
        let pid = child.id().unwrap_or(0);
        listed.push(PlaygroundNode { id: 0, pid, addr: addr.clone(), pd_member, data_dir: dir, log });
        children.push((addr.clone(), child));
    }
    // Watch the children from the start: a node that dies (during start-up or
    // later) is reported at once and never restarted.
    let ids: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut waits = Vec::new();
    for (addr, child) in children {
        waits.push(watch_child(addr, child, ids.clone()));
    }
    println!(
        "cairn playground: {} nodes ({} PD members); data in {}",
        args.nodes,
        pd_addrs.len(),
        args.data_dir.display()
    );
    println!("waiting for the cluster (logs: {}/node-*/node.log) ...", args.data_dir.display());
    let ready = tokio::select! {
        ready = wait_ready(&pd_addrs, &addrs) => ready,
        _ = int.recv() => return stop(waits, None).await,
        _ = term.recv() => return stop(waits, None).await,
        _ = hup.recv() => return stop(waits, None).await,
    };
    match &ready {
        Ok(status) => {
            let mut known = ids.lock().expect("ids lock");
            for node in &mut listed {
                node.id = status.nodes.iter().find(|n| n.addr == node.addr).map(|n| n.id.0).unwrap_or(0);
                known.insert(node.addr.clone(), node.id);
            }
            println!(
                "ready: {} nodes up, {} shards, PD leader node {}",
                status.nodes.iter().filter(|n| n.state == cairn_proto::NodeState::Up).count(),
                status.shards.len(),
                status.pd_leader.as_ref().map(|(id, _)| id.to_string()).unwrap_or_else(|| "?".into())
            );
        }
        Err(e) => println!("the cluster is not ready yet ({e}); see the node logs"),
    }
    let file = args.data_dir.join("playground.json");
    let contents = PlaygroundFile { pd: pd_addrs.clone(), nodes: listed };
    std::fs::write(&file, serde_json::to_vec_pretty(&contents)?)?;
    for n in &contents.nodes {
        let role = if n.pd_member { "  (PD member)" } else { "" };
        println!("  node {} at {}  pid {}{role}", n.id, n.addr, n.pid);
    }
    println!("PD address: {} (any node's address also works)", pd_addrs.join(","));
    println!("nodes are listed in {}", file.display());
    println!("try:");
    println!("  cargo run --release --bin cairnctl -- put user:1 '{{\"name\":\"ada\"}}'");
    println!("  cargo run --release --bin cairnctl -- get user:1");
    println!("  cargo run --release --bin cairnctl -- status");
    println!("  cargo run --release --bin cairnctl -- shards");
    println!("  cargo run --release --bin cairnctl -- rebalance status");
    let next_port = args.base_port as u32 + args.nodes + 10;
    println!(
        "  cargo run --release -- server --pd {} --listen 127.0.0.1:{next_port} --data-dir {}/node-extra  # add a node",
        pd_addrs[0],
        args.data_dir.display()
    );
    println!("  CAIRN_PD={} cargo run --release -p cairn-client --example typed_documents", pd_addrs[0]);
    println!("Ctrl-C stops every node.");

    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
    stop(waits, Some(&file)).await
}

type ChildWatch = (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>);

/// Reports the child's exit, or stops it (SIGTERM, then SIGKILL after 15 s)
/// when told to.
fn watch_child(addr: String, mut child: tokio::process::Child, ids: Arc<Mutex<HashMap<String, u64>>>) -> ChildWatch {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => {
                let id = ids.lock().expect("ids lock").get(&addr).copied();
                let name = id.map(|id| format!("node {id} ({addr})")).unwrap_or_else(|| format!("the node at {addr}"));
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                println!("{name} exited: {status}; it stays down until the playground is restarted");
            }
            _ = rx => {
                if let Some(pid) = child.id() {
                    // SIGTERM: the node flushes and exits 0.
                    let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
                }
                if tokio::time::timeout(Duration::from_secs(15), child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
        }
    });
    (tx, handle)
}

/// Stops every child and waits for it; removes the (now stale) listing.
async fn stop(waits: Vec<ChildWatch>, listing: Option<&std::path::Path>) -> anyhow::Result<()> {
    println!("stopping...");
    let handles: Vec<_> = waits
        .into_iter()
        .map(|(tx, handle)| {
            let _ = tx.send(());
            handle
        })
        .collect();
    for handle in handles {
        let _ = handle.await;
    }
    if let Some(path) = listing {
        let _ = std::fs::remove_file(path);
    }
    println!("stopped");
    Ok(())
}

/// Waits until every node has registered and every shard has a leader, or a
/// minute has passed (the playground then keeps running: the logs say why).
async fn wait_ready(pd: &[String], addrs: &[String]) -> anyhow::Result<cairn_proto::ClusterStatus> {
    let config = cairn_client::ClientConfig {
        request_timeout: Duration::from_secs(2),
        operation_timeout: Duration::from_secs(4),
        ..Default::default()
    };
    let client = cairn_client::PdClient::new(pd, config)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::from("no answer from the PD");
    while tokio::time::Instant::now() < deadline {
        match client.cluster(0).await {
            Ok(status) => {
                let registered = addrs.iter().all(|a| status.nodes.iter().any(|n| &n.addr == a));
                let led = status.shards.iter().all(|s| s.route.leader.is_some());
                if registered && !status.shards.is_empty() && led {
                    return Ok(status);
                }
                last = format!(
                    "{} of {} nodes registered, {} shards",
                    status.nodes.len(),
                    addrs.len(),
                    status.shards.len()
                );
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    anyhow::bail!("{last}")
}
