//! `cairn playground`: a local cluster as child processes of one command.
//!
//! Until the placement driver exists, the nodes use the static bootstrap. The
//! data directory is reused on the next start; `playground.json` lists the
//! nodes. A child killed from outside stays dead; Ctrl-C stops every child with
//! SIGTERM and waits for it.

use std::path::PathBuf;
use std::process::Stdio;
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
    #[arg(long, default_value_t = 8)]
    pub initial_shards: u32,
}

#[derive(Serialize)]
struct PlaygroundNode {
    id: u64,
    pid: u32,
    addr: String,
    data_dir: PathBuf,
    log: PathBuf,
}

#[derive(Serialize)]
struct PlaygroundFile {
    nodes: Vec<PlaygroundNode>,
}

pub async fn run(args: PlaygroundArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 1 && args.nodes <= 50, "--nodes must be between 1 and 50");
    let exe = std::env::current_exe().context("locating the cairn binary")?;
    std::fs::create_dir_all(&args.data_dir)?;
    let addrs: Vec<String> = (0..args.nodes).map(|i| format!("127.0.0.1:{}", args.base_port + i as u16)).collect();
    let members = addrs.iter().enumerate().map(|(i, a)| format!("{}={a}", i + 1)).collect::<Vec<_>>().join(",");
    let mut children = Vec::new();
    let mut listed = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let id = i as u64 + 1;
        let dir = args.data_dir.join(format!("node-{id}"));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("node.log");
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let child = tokio::process::Command::new(&exe)
            .args(["server", "--node-id", &id.to_string(), "--listen", addr])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--initial-members", &members, "--initial-shards", &args.initial_shards.to_string()])
            .stdout(Stdio::from(log_file.try_clone()?))
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting node {id}"))?;
        let pid = child.id().unwrap_or(0);
        listed.push(PlaygroundNode { id, pid, addr: addr.clone(), data_dir: dir, log });
        children.push((id, child));
    }
    let file = args.data_dir.join("playground.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&PlaygroundFile { nodes: listed })?)?;
    println!(
        "cairn playground: {} nodes, {} shards; data in {}",
        args.nodes,
        args.initial_shards,
        args.data_dir.display()
    );
    for (i, a) in addrs.iter().enumerate() {
        println!("  node {} at {a}", i + 1);
    }
    println!("try:");
    println!("  cargo run --release --bin cairnctl -- put user:1 '{{\"name\":\"ada\"}}'");
    println!("  cargo run --release --bin cairnctl -- get user:1");
    println!("  cargo run --release --bin cairnctl -- shards");
    println!("Ctrl-C stops every node.");

    let mut waits = Vec::new();
    for (id, mut child) in children {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        waits.push((tx, tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => {
                    println!("node {id} exited: {}", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
                }
                _ = rx => {
                    if let Some(pid) = child.id() {
                        // SIGTERM: the node flushes and exits 0.
                        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
                    }
                    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
                        Ok(_) => {}
                        Err(_) => {
                            let _ = child.kill().await;
                        }
                    }
                }
            }
        })));
    }
    tokio::signal::ctrl_c().await?;
    println!("stopping...");
    for (tx, handle) in waits {
        let _ = tx.send(());
        let _ = handle.await;
    }
    Ok(())
}
