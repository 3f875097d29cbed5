//! A cluster of real `cairn server` processes, for process-level tests and the
//! `chaos` command (which pass the server binary to use).
//!
//! Each node runs the server binary with its own data directory, log file and
//! TOML config inside one temporary directory, on loopback ports picked by the
//! OS. The first three nodes are the placement driver's members (ids 1-3);
//! the others register with the PD and get their ids from it. The nodes can be killed with SIGKILL,
//! stopped with SIGTERM and restarted on the same flags and data directory.
//!
//! Invariants:
//! - No child outlives the cluster: dropping it (also while unwinding from a
//!   panic) SIGKILLs every node still running and reaps it.
//! - A cluster dropped without [`ProcessCluster::finish`] is a failed test: it
//!   prints the tail of every node's log and keeps the temporary directory, so
//!   the full logs and data can be inspected.
//! - Every wait has a deadline ([`wait_until`]); a node that exits on its own
//!   while we wait for it fails the wait at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::wait_until;
use anyhow::Context;
use cairn_client::{ClientConfig, DirectClient, NodeClient, PdClient};
use cairn_proto::{NodeId, RaftRole, ShardId, ShardStatus};

/// Raft timings for tests: quick elections, still safe on a loaded 2-core
/// machine. Same values as `cairn_tests::cluster::test_raft_settings`.
pub const TEST_CONFIG_TOML: &str = "\
[raft]
heartbeat-interval-ms = 100
election-timeout-min-ms = 600
election-timeout-max-ms = 1200
";

/// `TEST_CONFIG_TOML` plus a quick PD heartbeat, which belongs at the top level.
fn with_pd_heartbeat(config_toml: &str) -> String {
    format!("heartbeat-interval-ms = 200\n{config_toml}")
}

/// The first nodes of a cluster are the placement driver's members.
pub const PD_MEMBERS: usize = 3;

/// Lines of each node's log printed when a test fails.
const LOG_TAIL_LINES_MAX: usize = 120;

/// The deadline of one admin RPC made while polling; a node that cannot answer
/// a shard listing in this long counts as not ready yet.
const POLL_RPC_TIMEOUT: Duration = Duration::from_secs(2);

/// One node of the cluster: its fixed identity and, while running, its process.
pub struct ProcNode {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// The network namespace the node runs in (`ip netns exec`), if any.
    pub netns: Option<String>,
    child: Option<Child>,
    /// How many times this node has been started (for the log file).
    starts: u32,
}

impl ProcNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

pub struct ProcessCluster {
    /// The server binary (`cairn` or `cairn-test-node`).
    bin: PathBuf,
    /// `None` only after drop handed it over.
    dir: Option<tempfile::TempDir>,
    config_path: PathBuf,
    /// `--initial-pd` of the PD members.
    members: String,
    /// `--pd` of every node.
    pd: String,
    shards: u32,
    pub nodes: Vec<ProcNode>,
    succeeded: bool,
}

/// A port that was free a moment ago. The listener is dropped before the node
/// binds it; on loopback the OS does not hand out the same ephemeral port again
/// that soon, so the race with other processes is theoretical.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

impl ProcessCluster {
    /// Starts `n` nodes hosting `shards` shards, each replicated on every node,
    /// and waits until every shard has a leader.
    pub async fn start(bin: &Path, n: usize, shards: u32) -> anyhow::Result<ProcessCluster> {
        Self::start_with_config(bin, n, shards, TEST_CONFIG_TOML).await
    }

    /// Like [`start`](Self::start), with `config_toml` as every node's config file.
    pub async fn start_with_config(
        bin: &Path,
        n: usize,
        shards: u32,
        config_toml: &str,
    ) -> anyhow::Result<ProcessCluster> {
        let mut cluster = Self::launch(bin, n, shards, config_toml).await?;
        cluster.wait_for_leaders(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Starts the nodes and learns their ids, without waiting for leaders
    /// (with more nodes than the replication factor, not every node hosts
    /// every shard, so [`wait_for_leaders`](Self::wait_for_leaders) does not
    /// apply: ask the PD instead).
    pub async fn launch(bin: &Path, n: usize, shards: u32, config_toml: &str) -> anyhow::Result<ProcessCluster> {
        let places = (0..n).map(|_| Ok((free_port()?, None))).collect::<anyhow::Result<Vec<_>>>()?;
        Self::launch_at(bin, places, shards, config_toml).await
    }

    /// Like [`launch`](Self::launch), one node per `(address, network
    /// namespace)`; a node with a namespace runs under `ip netns exec`.
    pub async fn launch_at(
        bin: &Path,
        places: Vec<(SocketAddr, Option<String>)>,
        shards: u32,
        config_toml: &str,
    ) -> anyhow::Result<ProcessCluster> {
        let n = places.len();
        let dir = tempfile::Builder::new().prefix("cairn-proc-").tempdir()?;
        let config_path = dir.path().join("node.toml");
        std::fs::write(&config_path, with_pd_heartbeat(config_toml))?;
        let mut nodes = Vec::new();
        for (i, (addr, netns)) in places.into_iter().enumerate() {
            // PD members have fixed ids; the others learn theirs from the PD.
            let id = if i < PD_MEMBERS { i as u64 + 1 } else { 0 };
            let node_dir = dir.path().join(format!("node-{}", i + 1));
            nodes.push(ProcNode {
                id: NodeId(id),
                addr,
                data_dir: node_dir.join("data"),
                log_path: node_dir.join("node.log"),
                netns,
                child: None,
                starts: 0,
            });
            std::fs::create_dir_all(&node_dir)?;
        }
        let pd_members = &nodes[..n.min(PD_MEMBERS)];
        let members = pd_members.iter().map(|n| format!("{}={}", n.id, n.addr)).collect::<Vec<_>>().join(",");
        let pd = pd_members.iter().map(|n| n.addr.to_string()).collect::<Vec<_>>().join(",");
        let mut cluster = ProcessCluster {
            bin: bin.to_path_buf(),
            dir: Some(dir),
            config_path,
            members,
            pd,
            shards,
            nodes,
            succeeded: false,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.resolve_ids().await?;
        Ok(cluster)
    }

    /// Learns the ids the PD gave the nodes that are not PD members.
    async fn resolve_ids(&mut self) -> anyhow::Result<()> {
        if self.nodes.iter().all(|n| n.id.0 != 0) {
            return Ok(());
        }
        let pd = self.pd_client()?;
        let addrs: Vec<String> = self.nodes.iter().map(|n| n.addr.to_string()).collect();
        let status = wait_until("every node to register", Duration::from_secs(60), || async {
            let status = pd.cluster(0).await.ok()?;
            addrs.iter().all(|a| status.nodes.iter().any(|n| &n.addr == a)).then_some(status)
        })
        .await?;
        for node in &mut self.nodes {
            let addr = node.addr.to_string();
            node.id = status.nodes.iter().find(|n| n.addr == addr).map(|n| n.id).context("registered")?;
        }
        Ok(())
    }

    /// A client of the placement driver (its members' addresses).
    pub fn pd_client(&self) -> anyhow::Result<PdClient> {
        let config = ClientConfig { request_timeout: POLL_RPC_TIMEOUT, ..ClientConfig::default() };
        Ok(PdClient::from_list(&self.pd, config)?)
    }

    /// The PD members' addresses, comma separated.
    pub fn pd_endpoints(&self) -> &str {
        &self.pd
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the directory lives as long as the cluster").path()
    }

    pub fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.to_string()
    }

    /// Starts node `i` with its flags and data directory; its output is
    /// appended to its log file.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        anyhow::ensure!(node.child.is_none(), "node {} is already running", node.id);
        node.starts += 1;
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&node.log_path)?;
        use std::io::Write;
        writeln!(log, "===== test harness: start #{} of node {} =====", node.starts, node.id)?;
        let mut command = match &node.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        command
            .arg("server")
            .arg("--config")
            .arg(&self.config_path)
            .args(["--listen", &node.addr.to_string()])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(["--pd", &self.pd]);
        if i < PD_MEMBERS {
            command.args(["--initial-pd", &self.members, "--initial-shards", &self.shards.to_string()]);
        }
        let child = command
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("CAIRN_NODE_LOG")
                    .unwrap_or_else(|_| "info,openraft=warn,h2=warn,tower=warn,hyper=warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("starting node {} ({})", node.id, self.bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        let mut child = node.child.take().with_context(|| format!("node {} is not running", node.id))?;
        // `Child::kill` sends SIGKILL on Unix.
        child.kill().with_context(|| format!("killing node {}", node.id))?;
        child.wait()?;
        Ok(())
    }

    /// SIGSTOPs node `i` (a paused process: connections stay open, nothing answers).
    pub fn pause(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "STOP")
    }

    /// SIGCONTs node `i` after [`pause`](Self::pause).
    pub fn resume(&self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "CONT")
    }

    fn signal(&self, i: usize, signal: &str) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let pid = node.pid().with_context(|| format!("node {} is not running", node.id))?;
        crate::acceptance::procs::signal(pid, signal)
    }

    /// Keeps the directory (data, logs, and whatever a caller wrote there)
    /// after the cluster is dropped, without printing the logs; returns it.
    pub fn keep(mut self) -> PathBuf {
        self.succeeded = true;
        let mut dir = self.dir.take().expect("the directory lives as long as the cluster");
        dir.disable_cleanup(true);
        dir.path().to_path_buf()
    }

    /// Sends SIGTERM to node `i` without waiting for it to exit.
    pub fn sigterm(&self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let pid = node.pid().with_context(|| format!("node {} is not running", node.id))?;
        let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().context("running kill -TERM")?;
        anyhow::ensure!(status.success(), "kill -TERM {pid} failed: {status}");
        Ok(())
    }

    /// Waits until node `i` has exited, up to `timeout`, and returns its exit
    /// status. The node counts as stopped afterwards.
    pub async fn wait_exit(&mut self, i: usize, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let node = &mut self.nodes[i];
        let what = format!("node {} to exit", node.id);
        let child = node.child.as_mut().with_context(|| format!("node {} is not running", node.id))?;
        let status = wait_until(&what, timeout, || {
            let polled = child.try_wait();
            async move { polled.ok().flatten() }
        })
        .await?;
        node.child = None;
        Ok(status)
    }

    /// Sends SIGTERM to every running node, then waits for all of them to exit
    /// within `timeout`; returns each node's exit status.
    pub async fn terminate_all(&mut self, timeout: Duration) -> anyhow::Result<Vec<(NodeId, ExitStatus)>> {
        let running: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].is_running()).collect();
        for &i in &running {
            self.sigterm(i)?;
        }
        let mut out = Vec::new();
        for i in running {
            let status = self.wait_exit(i, timeout).await?;
            out.push((self.nodes[i].id, status));
        }
        Ok(out)
    }

    /// Fails if a node we think is running has exited on its own.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            let Some(child) = node.child.as_mut() else {
                continue;
            };
            if let Some(status) = child.try_wait()? {
                node.child = None;
                anyhow::bail!("node {} exited unexpectedly: {status} (log: {})", node.id, node.log_path.display());
            }
        }
        Ok(())
    }

    pub fn node_client(&self, i: usize) -> anyhow::Result<NodeClient> {
        let config = ClientConfig { request_timeout: POLL_RPC_TIMEOUT, ..ClientConfig::default() };
        Ok(NodeClient::new(&self.addr(i), &config)?)
    }

    /// A routing client seeded with the first running node.
    pub fn client(&self, config: ClientConfig) -> anyhow::Result<DirectClient> {
        let i = (0..self.nodes.len()).find(|i| self.nodes[*i].is_running()).context("no node is running")?;
        Ok(DirectClient::new(self.addr(i), config)?)
    }

    /// A short-deadline client of every running node, with its index and id.
    pub fn running_clients(&self) -> anyhow::Result<Vec<(usize, NodeId, NodeClient)>> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .map(|i| Ok((i, self.nodes[i].id, self.node_client(i)?)))
            .collect()
    }

    /// The ids of all nodes, by index.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The shard list of every running node, by node index; fails if a node
    /// does not answer or has exited.
    pub async fn list_all(&mut self) -> anyhow::Result<BTreeMap<usize, Vec<ShardStatus>>> {
        self.check_alive()?;
        list_nodes(self.running_clients()?).await
    }

    /// Waits until `check` returns `Some` for the shard lists of all running
    /// nodes, up to `timeout`. A node that exits meanwhile fails the wait at
    /// once; on timeout the error carries the last listing.
    pub async fn wait_for_listing<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&BTreeMap<usize, Vec<ShardStatus>>) -> Option<T>,
    ) -> anyhow::Result<T> {
        let check = &check;
        let waited = wait_until(what, timeout, || {
            let ready = self.check_alive().and_then(|()| self.running_clients());
            async move {
                let clients = match ready {
                    Ok(clients) => clients,
                    Err(e) => return Some(Err(e)),
                };
                let lists = list_nodes(clients).await.ok()?;
                check(&lists).map(Ok)
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(timed_out) => {
                let lists = self.list_all().await;
                Err(timed_out.context(format!("last shard listing: {lists:#?}")))
            }
        }
    }

    /// Waits until every shard has a leader among the running nodes that all
    /// running nodes agree on; returns shard -> leader node index.
    pub async fn wait_for_leaders(&mut self, timeout: Duration) -> anyhow::Result<BTreeMap<ShardId, usize>> {
        let (shards, ids) = (self.shards, self.ids());
        self.wait_for_listing("a leader of every shard", timeout, |lists| agreed_leaders(shards, &ids, lists)).await
    }

    /// The index of the running node that leads the most shards, and how many.
    pub async fn busiest_leader(&mut self) -> anyhow::Result<(usize, usize)> {
        let leaders = self.wait_for_leaders(Duration::from_secs(30)).await?;
        let (i, count) = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .map(|i| (i, leaders.values().filter(|&&l| l == i).count()))
            .max_by_key(|&(_, count)| count)
            .context("no node is running")?;
        Ok((i, count))
    }

    /// Marks the test as passed: the directory is removed and no logs are
    /// printed, unless `CAIRN_TEST_KEEP_DATA` is set.
    pub fn finish(mut self) {
        self.succeeded = true;
        if std::env::var_os("CAIRN_TEST_KEEP_DATA").is_some()
            && let Some(mut dir) = self.dir.take()
        {
            dir.disable_cleanup(true);
            println!("CAIRN_TEST_KEEP_DATA: node data and logs kept in {}", dir.path().display());
        }
    }

    /// The last lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines_max: usize) -> String {
        let path = &self.nodes[i].log_path;
        let Ok(file) = File::open(path) else {
            return format!("(no log at {})", path.display());
        };
        let mut tail = std::collections::VecDeque::new();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            if tail.len() == lines_max {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        tail.into_iter().collect::<Vec<_>>().join("\n")
    }

    /// Lines of every node's log that contain any of `needles`, with the node id.
    pub fn grep_logs(&self, needles: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for node in &self.nodes {
            let Ok(file) = File::open(&node.log_path) else {
                continue;
            };
            for line in BufReader::new(file).lines().map_while(Result::ok) {
                if needles.iter().any(|n| line.contains(n)) {
                    out.push(format!("node {}: {line}", node.id));
                }
            }
        }
        out
    }
}

/// The shard list of each node, asked concurrently.
pub async fn list_nodes(
    clients: Vec<(usize, NodeId, NodeClient)>,
) -> anyhow::Result<BTreeMap<usize, Vec<ShardStatus>>> {
    let lists = futures::future::try_join_all(clients.into_iter().map(|(i, id, client)| async move {
        let (answered, shards) =
            client.list_shards().await.with_context(|| format!("listing the shards of node {id}"))?;
        anyhow::ensure!(answered == id, "node {id} at {} says it is node {answered}", client.addr());
        Ok((i, shards))
    }))
    .await?;
    Ok(lists.into_iter().collect())
}

/// Shard -> node index of the leader, when every listed node hosts all
/// `shards` shards, every shard has a listed node that says it leads, and
/// every listed node names that node as the leader. `None` otherwise.
/// `ids[i]` is the id of the node at index `i`.
pub fn agreed_leaders(
    shards: u32,
    ids: &[NodeId],
    lists: &BTreeMap<usize, Vec<ShardStatus>>,
) -> Option<BTreeMap<ShardId, usize>> {
    let mut leaders = BTreeMap::new();
    for (&i, statuses) in lists {
        for s in statuses.iter().filter(|s| s.role == RaftRole::Leader) {
            leaders.insert(s.descriptor.id, i);
        }
    }
    let all_agree = lists.values().all(|statuses| {
        statuses.len() == shards as usize
            && statuses.iter().all(|s| leaders.get(&s.descriptor.id).is_some_and(|&l| s.leader == Some(ids[l])))
    });
    (all_agree && leaders.len() == shards as usize).then_some(leaders)
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if self.succeeded {
            return;
        }
        let Some(mut dir) = self.dir.take() else {
            return;
        };
        dir.disable_cleanup(true);
        eprintln!("===== test failed; node data and full logs kept in {} =====", dir.path().display());
        for i in 0..self.nodes.len() {
            eprintln!(
                "===== last {LOG_TAIL_LINES_MAX} lines of node {} ({}) =====\n{}",
                self.nodes[i].id,
                self.nodes[i].log_path.display(),
                self.log_tail(i, LOG_TAIL_LINES_MAX)
            );
        }
    }
}
