//! `cairn playground` as a user runs it: one command that starts a local
//! cluster of child processes, lists them in `playground.json`, reports a
//! child killed from outside without restarting it, stops every child on
//! SIGINT/SIGTERM and exits 0, and finds its cluster again in the same data
//! directory on the next start.
//!
//! The playground picks its ports itself (`--base-port`), so the test looks for
//! a run of free loopback ports below the OS's ephemeral range. No process
//! outlives the test: the fixture's drop (also while unwinding from a panic)
//! SIGKILLs the playground and every `server` process whose command line names
//! the test's temporary directory. A failed test keeps that directory and
//! prints the playground's output and the node logs; `CAIRN_TEST_KEEP_DATA`
//! keeps it after a passed test too.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::{Client, ClientConfig, PdClient};
use cairn_proto::NodeState;
use cairn_tests::wait_until;
use common::NODE_BIN;
use serde::Deserialize;

const NODES: u16 = 4;
const SHARDS: usize = 4;
/// The playground's nodes 1-3 are the placement driver's members.
const PD_MEMBERS: usize = 3;
/// Liveness bound for a playground to list a ready cluster (its own readiness
/// wait gives up after 60 s; nodes use the default Raft timings).
const READY_DEADLINE: Duration = Duration::from_secs(90);
/// Liveness bound for the playground to stop every node and exit.
const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Liveness bound for cluster-level conditions (status, writes after a kill).
const CLUSTER_DEADLINE: Duration = Duration::from_secs(30);
/// How long a killed node must stay dead to show that nothing restarts it.
const NO_RESTART_WATCH: Duration = Duration::from_secs(3);
/// Base ports are drawn from here: below Linux's ephemeral range (32768-60999),
/// so outgoing connections of other tests do not take them meanwhile.
const BASE_PORT_RANGE: std::ops::Range<u16> = 20_000..32_000;
const BASE_PORT_ATTEMPTS: usize = 20;
/// Lines of each node's log printed when the test fails.
const LOG_TAIL_LINES_MAX: usize = 80;

/// `playground.json`, as the playground writes it.
#[derive(Debug, Deserialize)]
struct PlaygroundFile {
    pd: Vec<String>,
    nodes: Vec<ListedNode>,
}

#[derive(Debug, Deserialize)]
struct ListedNode {
    id: u64,
    pid: u32,
    addr: String,
    pd_member: bool,
    data_dir: PathBuf,
    log: PathBuf,
}

/// A running `cairn-test-node server` process found in /proc.
#[derive(Debug)]
struct Server {
    pid: u32,
    ppid: u32,
    listen: String,
}

/// The `server` processes whose command line names `dir` (zombies have an
/// empty command line and are not listed).
fn servers_in(dir: &Path) -> Vec<Server> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !args.iter().any(|a| a == "server") || !args.iter().any(|a| a.contains(&needle)) {
            continue;
        }
        let listen = args.windows(2).find(|w| w[0] == "--listen").map(|w| w[1].clone()).unwrap_or_default();
        out.push(Server { pid, ppid: parent_pid(pid).unwrap_or(0), listen });
    }
    out
}

/// The parent of `pid`, from /proc/<pid>/stat (the fields after the command
/// name, which is in parentheses and may contain spaces).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status =
        Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status().context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed: {status}");
    Ok(())
}

/// Whether all `NODES` ports from `base` can be bound on loopback right now.
fn ports_free(base: u16) -> bool {
    let listeners: Result<Vec<TcpListener>, _> =
        (0..NODES).map(|i| TcpListener::bind(("127.0.0.1", base + i))).collect();
    listeners.is_ok()
}

fn pick_base_port() -> anyhow::Result<u16> {
    for _ in 0..BASE_PORT_ATTEMPTS {
        let base = rand::random_range(BASE_PORT_RANGE);
        if ports_free(base) {
            return Ok(base);
        }
    }
    anyhow::bail!("no {NODES} consecutive free loopback ports in {BASE_PORT_RANGE:?} after {BASE_PORT_ATTEMPTS} tries")
}

/// Occurrences of `needle` in the file at `path` (0 if it cannot be read).
fn count_in_file(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path).map(|s| s.matches(needle).count()).unwrap_or(0)
}

/// One run of `cairn playground`, its stdout and stderr read on threads into
/// one shared list of lines, so the pipes never fill.
struct Playground {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Playground {
    fn start(data_dir: &Path, base_port: u16) -> anyhow::Result<Playground> {
        let mut child = Command::new(NODE_BIN)
            .arg("playground")
            .args(["--nodes", &NODES.to_string(), "--initial-shards", &SHARDS.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--base-port", &base_port.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {NODE_BIN} playground"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().context("piped stdout")?;
        let stderr = child.stderr.take().context("piped stderr")?;
        for (stream, prefix) in
            [(Box::new(stdout) as Box<dyn std::io::Read + Send>, ""), (Box::new(stderr), "stderr: ")]
        {
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    println!("playground| {prefix}{line}");
                    output.lock().expect("no reader panics holding the lock").push(format!("{prefix}{line}"));
                }
            });
        }
        println!("started playground pid {} on base port {base_port}", child.id());
        Ok(Playground { child, output })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn output(&self) -> Vec<String> {
        self.output.lock().expect("no reader panics holding the lock").clone()
    }

    fn printed(&self, needle: &str) -> bool {
        self.output.lock().expect("no reader panics holding the lock").iter().any(|l| l.contains(needle))
    }

    /// Waits until stdout contains `needle`; fails at once if the playground exits.
    async fn wait_printed(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("the playground to print {needle:?}");
        let waited = wait_until(&what, timeout, || {
            let result = if self.printed(needle) {
                Some(Ok(()))
            } else {
                match self.child.try_wait() {
                    Ok(Some(status)) => Some(Err(anyhow::anyhow!("the playground exited with {status}"))),
                    Ok(None) => None,
                    Err(e) => Some(Err(e.into())),
                }
            };
            async move { result }
        })
        .await?;
        waited.with_context(|| format!("waiting for {needle:?}; output so far:\n{}", self.output().join("\n")))
    }

    /// Waits until the playground has written `playground.json` (it prints
    /// where after writing it) and reads it.
    async fn wait_listed(&mut self, data_dir: &Path) -> anyhow::Result<PlaygroundFile> {
        self.wait_printed("nodes are listed in", READY_DEADLINE).await?;
        let path = data_dir.join("playground.json");
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", String::from_utf8_lossy(&bytes)))
    }

    async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = &mut self.child;
        wait_until("the playground to exit", timeout, || {
            let polled = child.try_wait();
            async move { polled.ok().flatten() }
        })
        .await
    }
}

/// The test's temporary directory and the current playground. Dropping it
/// SIGKILLs every process the test started; a failed test keeps the directory
/// and prints the playground's output and the tail of every node log.
struct Fixture {
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    playground: Option<Playground>,
    succeeded: bool,
}

impl Fixture {
    fn new() -> anyhow::Result<Fixture> {
        let dir = tempfile::Builder::new().prefix("cairn-playground-").tempdir()?;
        let data_dir = dir.path().join("data");
        Ok(Fixture { dir: Some(dir), data_dir, playground: None, succeeded: false })
    }

    fn playground(&mut self) -> &mut Playground {
        self.playground.as_mut().expect("a playground is running")
    }

    fn kill_everything(&mut self) {
        for server in servers_in(&self.data_dir) {
            let _ = send_signal(server.pid, "KILL");
        }
        if let Some(mut playground) = self.playground.take() {
            let _ = playground.child.kill();
            let _ = playground.child.wait();
            if !self.succeeded {
                eprintln!("===== playground output =====\n{}", playground.output().join("\n"));
            }
        }
    }

    fn log_tail(path: &Path) -> String {
        let Ok(text) = std::fs::read_to_string(path) else {
            return format!("(no log at {})", path.display());
        };
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES_MAX)..].join("\n")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill_everything();
        let keep = std::env::var_os("CAIRN_TEST_KEEP_DATA").is_some();
        let Some(mut dir) = self.dir.take() else {
            return;
        };
        if self.succeeded {
            if keep {
                dir.disable_cleanup(true);
                println!("CAIRN_TEST_KEEP_DATA: playground data and logs kept in {}", dir.path().display());
            }
            return;
        }
        dir.disable_cleanup(true);
        eprintln!("===== test failed; playground data and logs kept in {} =====", dir.path().display());
        for i in 1..=NODES {
            let log = self.data_dir.join(format!("node-{i}")).join("node.log");
            eprintln!("===== last {LOG_TAIL_LINES_MAX} lines of {} =====\n{}", log.display(), Self::log_tail(&log));
        }
    }
}

/// Checks a fresh `playground.json` against the ports, the running processes
/// and the playground's pid: ids 1..=4 in port order, nodes 1-3 PD members,
/// every pid a running `server` child of the playground on its listed address.
fn check_listing(file: &PlaygroundFile, base_port: u16, playground_pid: u32, data_dir: &Path) -> anyhow::Result<()> {
    let addrs: Vec<String> = (0..NODES).map(|i| format!("127.0.0.1:{}", base_port + i)).collect();
    anyhow::ensure!(file.pd == addrs[..PD_MEMBERS], "PD addresses {:?}, expected {:?}", file.pd, &addrs[..PD_MEMBERS]);
    anyhow::ensure!(file.nodes.len() == NODES as usize, "{} nodes listed: {file:?}", file.nodes.len());
    let servers = servers_in(data_dir);
    for (i, node) in file.nodes.iter().enumerate() {
        anyhow::ensure!(node.addr == addrs[i], "node {} at {}, expected {}", i + 1, node.addr, addrs[i]);
        anyhow::ensure!(node.id == i as u64 + 1, "node at {} has id {}, expected {}", node.addr, node.id, i + 1);
        anyhow::ensure!(node.pd_member == (i < PD_MEMBERS), "node {}: pd_member {}", node.id, node.pd_member);
        anyhow::ensure!(node.data_dir.starts_with(data_dir), "node {} data dir {}", node.id, node.data_dir.display());
        anyhow::ensure!(node.log.exists(), "node {} log {} does not exist", node.id, node.log.display());
        let server = servers.iter().find(|s| s.pid == node.pid).with_context(|| {
            format!("node {} pid {} is not a running server; running: {servers:?}", node.id, node.pid)
        })?;
        anyhow::ensure!(
            server.listen == node.addr,
            "pid {} listens on {}, listed at {}",
            node.pid,
            server.listen,
            node.addr
        );
        anyhow::ensure!(
            server.ppid == playground_pid,
            "node {} pid {} is a child of {}, not of the playground {playground_pid}",
            node.id,
            node.pid,
            server.ppid
        );
    }
    Ok(())
}

/// Waits until the PD reports `up` nodes up, `SHARDS` shards and none under-replicated.
async fn wait_cluster_healthy(pd: &PdClient, up: usize) -> anyhow::Result<cairn_proto::ClusterStatus> {
    let waited = wait_until("a healthy cluster status", CLUSTER_DEADLINE, || async {
        let status = pd.cluster(0).await.ok()?;
        let nodes_up = status.nodes.iter().filter(|n| n.state == NodeState::Up).count();
        (nodes_up == up && status.shards.len() == SHARDS && status.under_replicated() == 0).then_some(status)
    })
    .await;
    match waited {
        Ok(status) => Ok(status),
        Err(e) => Err(e.context(format!("last status: {:#?}", pd.cluster(0).await))),
    }
}

/// Keys spread over the 4 evenly cut ranges of the key space (the first byte
/// picks the shard), so every shard takes writes.
fn spread_keys(tag: &str, per_shard: usize) -> Vec<Vec<u8>> {
    let mut keys = Vec::new();
    for first in [0x10u8, 0x50, 0x90, 0xd0] {
        for n in 0..per_shard {
            let mut key = vec![first];
            key.extend_from_slice(format!("/{tag}/{n}").as_bytes());
            keys.push(key);
        }
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_start_kill_stop_restart() -> anyhow::Result<()> {
    let test_started = Instant::now();
    let mut fx = Fixture::new()?;
    let data_dir = fx.data_dir.clone();
    let base_port = pick_base_port()?;
    let addrs: Vec<String> = (0..NODES).map(|i| format!("127.0.0.1:{}", base_port + i)).collect();

    // 1-2. Start; the listing names a ready cluster of our processes.
    fx.playground = Some(Playground::start(&data_dir, base_port)?);
    let first = fx.playground().wait_listed(&data_dir).await?;
    println!("listed after {:?}: {first:#?}", test_started.elapsed());
    anyhow::ensure!(fx.playground().printed("ready: 4 nodes up, 4 shards"), "no ready line");
    let playground_pid = fx.playground().pid();
    check_listing(&first, base_port, playground_pid, &data_dir)?;

    // 3. The cluster serves documents and the PD sees every node and shard.
    let client = Client::connect(addrs[0].as_str()).await?;
    let doc_key = "playground/doc";
    let doc_value = r#"{"name":"ada"}"#;
    client.put(doc_key, doc_value).await.context("put before the kill")?;
    let doc = client.get(doc_key).await?.context("the document just written")?;
    anyhow::ensure!(doc.value == doc_value.as_bytes(), "read {:?}", String::from_utf8_lossy(&doc.value));
    let pd = PdClient::new(
        [addrs[0].as_str()],
        ClientConfig { request_timeout: Duration::from_secs(2), ..Default::default() },
    )?;
    let status = wait_cluster_healthy(&pd, NODES as usize).await?;
    println!("status: {} nodes, {} shards, PD leader {:?}", status.nodes.len(), status.shards.len(), status.pd_leader);

    // 4. SIGKILL node 4 (not a PD member): reported, never restarted, and the
    // other three keep a majority of every shard.
    let victim = &first.nodes[3];
    anyhow::ensure!(!victim.pd_member, "node 4 is not a PD member");
    send_signal(victim.pid, "KILL")?;
    fx.playground().wait_printed("node 4 (", CLUSTER_DEADLINE).await?;
    println!(
        "playground reported the kill: {:?}",
        fx.playground().output().iter().find(|l| l.contains("node 4 (") && l.contains(" exited: "))
    );
    // Sleeping only to show that something does not happen: a restart.
    tokio::time::sleep(NO_RESTART_WATCH).await;
    let servers = servers_in(&data_dir);
    anyhow::ensure!(
        !servers.iter().any(|s| s.pid == victim.pid || s.listen == victim.addr),
        "node 4 runs again after its kill: {servers:?}"
    );
    anyhow::ensure!(servers.len() == PD_MEMBERS, "expected nodes 1-3 still running: {servers:?}");
    anyhow::ensure!(fx.playground().child.try_wait()?.is_none(), "the playground exited after a child's kill");
    let after_kill = spread_keys("after-kill", 5);
    for (n, key) in after_kill.iter().enumerate() {
        client.put(key, format!(r#"{{"n":{n}}}"#)).await.with_context(|| format!("put {key:?} after the kill"))?;
    }
    for (n, key) in after_kill.iter().enumerate() {
        let doc = client.get(key).await?.with_context(|| format!("{key:?} lost"))?;
        anyhow::ensure!(doc.value == format!(r#"{{"n":{n}}}"#).as_bytes(), "{key:?}: {:?}", doc.value);
    }
    println!("{} writes after the kill, all readable", after_kill.len());
    client.shutdown().await;

    // 5. SIGINT: every child gets SIGTERM, shuts down cleanly, and the
    // playground exits 0.
    send_signal(playground_pid, "INT")?;
    let status = fx.playground().wait_exit(STOP_DEADLINE).await?;
    anyhow::ensure!(status.success(), "the playground exited with {status} after SIGINT");
    anyhow::ensure!(fx.playground().printed("stopping..."), "no stopping line");
    let left = servers_in(&data_dir);
    anyhow::ensure!(left.is_empty(), "nodes outlive the playground: {left:?}");
    for node in &first.nodes[..PD_MEMBERS] {
        let clean = count_in_file(&node.log, "SIGTERM: shutting down");
        anyhow::ensure!(clean == 1, "node {} log shows {clean} SIGTERM shutdowns", node.id);
    }
    println!("stopped by SIGINT after {:?}", test_started.elapsed());

    // 6. Restart on the same data directory: same ids at the same addresses
    // (node 4 included), and the documents are still there.
    wait_until("the playground's ports to be free", STOP_DEADLINE, || {
        let free = ports_free(base_port);
        async move { free.then_some(()) }
    })
    .await?;
    fx.playground = Some(Playground::start(&data_dir, base_port)?);
    let second = fx.playground().wait_listed(&data_dir).await?;
    println!("listed again after {:?}: {second:#?}", test_started.elapsed());
    let playground_pid = fx.playground().pid();
    check_listing(&second, base_port, playground_pid, &data_dir)?;
    let ids = |f: &PlaygroundFile| f.nodes.iter().map(|n| (n.addr.clone(), n.id)).collect::<Vec<_>>();
    anyhow::ensure!(ids(&first) == ids(&second), "ids changed: {:?} -> {:?}", ids(&first), ids(&second));
    let client = Client::connect(addrs[0].as_str()).await?;
    let doc = client.get(doc_key).await?.context("the first document is gone after the restart")?;
    anyhow::ensure!(doc.value == doc_value.as_bytes(), "read {:?}", String::from_utf8_lossy(&doc.value));
    for key in &after_kill {
        client.get(key).await?.with_context(|| format!("{key:?} is gone after the restart"))?;
    }
    client.shutdown().await;

    send_signal(playground_pid, "TERM")?;
    let status = fx.playground().wait_exit(STOP_DEADLINE).await?;
    anyhow::ensure!(status.success(), "the playground exited with {status} after SIGTERM");
    let left = servers_in(&data_dir);
    anyhow::ensure!(left.is_empty(), "nodes outlive the playground: {left:?}");
    for node in &second.nodes {
        let expected = if node.id == 4 { 1 } else { 2 };
        let clean = count_in_file(&node.log, "SIGTERM: shutting down");
        anyhow::ensure!(clean == expected, "node {} log shows {clean} SIGTERM shutdowns, expected {expected}", node.id);
    }
    println!("whole test took {:?}", test_started.elapsed());
    fx.succeeded = true;
    Ok(())
}

/// SIGTERM while the playground still waits for its new cluster to be ready
/// (a fresh cluster needs at least one election timeout, 1-2 s by default):
/// the playground must still stop every node and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn playground_sigterm_while_waiting_for_the_cluster() -> anyhow::Result<()> {
    let mut fx = Fixture::new()?;
    let data_dir = fx.data_dir.clone();
    let base_port = pick_base_port()?;
    fx.playground = Some(Playground::start(&data_dir, base_port)?);
    // The playground prints this line after it has spawned every node.
    fx.playground().wait_printed("waiting for the cluster", READY_DEADLINE).await?;
    let listed_before_signal = data_dir.join("playground.json").exists();
    let spawned = servers_in(&data_dir);
    println!("{} nodes running; playground.json written already: {listed_before_signal}", spawned.len());
    let playground_pid = fx.playground().pid();
    send_signal(playground_pid, "TERM")?;
    let status = fx.playground().wait_exit(STOP_DEADLINE).await?;
    let left = servers_in(&data_dir);
    anyhow::ensure!(
        status.success(),
        "the playground exited with {status} after SIGTERM; nodes left running: {left:?}"
    );
    anyhow::ensure!(left.is_empty(), "nodes outlive the playground: {left:?}");
    fx.succeeded = true;
    Ok(())
}
